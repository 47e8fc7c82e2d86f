"""``python -m kmsg_analytics``: the same command line as ``kmsg-analytics``."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
