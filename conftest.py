"""Test-wide settings: fixed keys, so no test or doctest creates key files in the home folder."""

from __future__ import annotations

import os

os.environ.setdefault("KMSG_ANALYTICS_KEY", "test:" + "5a" * 32)
os.environ.setdefault("KMSG_ANALYTICS_HASH_KEY", "kmsg-analytics-test-hash-key")
