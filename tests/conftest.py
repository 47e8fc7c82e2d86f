"""Shared fixtures: every tracking store variant, a service over it, a fixed clock.

``store`` is parametrized over ``memory``, ``parquet`` and ``parquet-compacted``; the
last one is a Parquet lake that folds its snapshots (``compact()``) whenever a test
calls ``checkpoint()``, so the same test also runs against merge-on-read over a
compacted current state. ``checkpoint()`` does nothing for the other variants.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kmsg_analytics import DeliveryTrackingService, InMemoryTrackingStore, ParquetTrackingStore
from tests._model import TEST_KEY

STORE_KINDS = ("memory", "parquet", "parquet-compacted")

#: The clock's time in every service fixture (a Monday, 09:00 UTC).
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

PROVIDER_IDS = ("solapi", "iwinv", "aligo")

#: What the ``store`` fixture yields.
AnyStore = InMemoryTrackingStore | ParquetTrackingStore


def make_store(kind: str, path: Path) -> AnyStore:
    """A fresh store of ``kind`` (Parquet ones at ``path``), keyed with :data:`TEST_KEY`."""
    if kind == "memory":
        return InMemoryTrackingStore(hash_key=TEST_KEY)
    if kind in ("parquet", "parquet-compacted"):
        return ParquetTrackingStore(path, hash_key=TEST_KEY)
    msg = f"unknown store kind {kind!r}"
    raise ValueError(msg)


class Gateway:
    """A provider that can only be named (recording and queries never call it)."""

    def __init__(self, provider_id: str) -> None:
        self.id = provider_id


class FixedClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(store_kind: str, tmp_path: Path) -> Iterator[AnyStore]:
    s = make_store(store_kind, tmp_path / "lake")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def checkpoint(store: AnyStore, store_kind: str) -> Callable[[], None]:
    """Call between writes: folds the lake for ``parquet-compacted``, a no-op otherwise."""

    def _checkpoint() -> None:
        if store_kind == "parquet-compacted":
            assert isinstance(store, ParquetTrackingStore)
            store.compact()

    return _checkpoint


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def service(store: AnyStore, clock: FixedClock) -> Iterator[DeliveryTrackingService]:
    svc = DeliveryTrackingService([Gateway(p) for p in PROVIDER_IDS], store=store, clock=clock)
    try:
        yield svc
    finally:
        svc.close()
