"""Shared fixtures: every tracking store variant, a service over it, a fixed clock.

``store`` is parametrized over ``memory``, ``parquet``, ``parquet-compacted``,
``parquet-polars``, ``s3`` and ``s3-compacted``. The ``-compacted`` variants and
``parquet-polars`` (a lake whose files Ibis's Polars backend writes and merges instead
of DuckDB and pyarrow) fold their snapshots (``compact()``) whenever a test calls
``checkpoint()``, so the same test also runs against merge-on-read over a compacted
current state; ``checkpoint()`` does nothing for the others. The ``s3`` variants are
object lakes in moto's S3 server on 127.0.0.1 (one server per test session, each lake
under its own prefix), reached over HTTP.
``local_store`` is only the first two: for tests that need no object lake.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ibis
import pytest

from kmsg_analytics import DeliveryTrackingService, InMemoryTrackingStore, ParquetTrackingStore
from kmsg_analytics._objectlake import ObjectLakeStore
from tests._helpers import Gateway
from tests._model import TEST_KEY
from tests._s3server import shared_server, stop_shared_server

STORE_KINDS = ("memory", "parquet", "parquet-compacted", "parquet-polars", "s3", "s3-compacted")
#: The variants whose ``checkpoint()`` folds the lake.
COMPACTED_KINDS = ("parquet-compacted", "parquet-polars", "s3-compacted")
#: :data:`STORE_KINDS` as fixture parameters: the second S3 variant is marked slow (every
#: request is an HTTP round trip to moto); it still runs in CI.
STORE_PARAMS = [
    pytest.param(kind, marks=pytest.mark.slow) if kind == "s3-compacted" else kind
    for kind in STORE_KINDS
]

#: The clock's time in every service fixture (a Monday, 09:00 UTC).
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

PROVIDER_IDS = ("solapi", "iwinv", "aligo")

#: What the ``store`` fixture yields.
AnyStore = InMemoryTrackingStore | ParquetTrackingStore | ObjectLakeStore
#: A store that can fold (``compact()``).
Lake = ParquetTrackingStore | ObjectLakeStore


def make_store(kind: str, path: Path) -> AnyStore:
    """A fresh store of ``kind`` (local lakes at ``path``), keyed with :data:`TEST_KEY`."""
    if kind == "memory":
        return InMemoryTrackingStore(hash_key=TEST_KEY)
    if kind in ("parquet", "parquet-compacted"):
        return ParquetTrackingStore(path, hash_key=TEST_KEY)
    if kind == "parquet-polars":  # every file written (and merged) through another Ibis backend
        return ParquetTrackingStore(path, backend=ibis.polars.connect(), hash_key=TEST_KEY)
    if kind in ("s3", "s3-compacted"):
        server = shared_server()
        return ObjectLakeStore(
            server.new_url(), storage_options=server.options(), hash_key=TEST_KEY
        )
    msg = f"unknown store kind {kind!r}"
    raise ValueError(msg)


def reopen(lake: Lake) -> Lake:
    """Another store over the same lake (a new process would open it so)."""
    if isinstance(lake, ObjectLakeStore):
        return ObjectLakeStore(
            lake.url, storage_options=shared_server().options(), hash_key=TEST_KEY
        )
    return ParquetTrackingStore(lake.paths.root, hash_key=TEST_KEY)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_shared_server()


class FixedClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture(params=STORE_PARAMS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(store_kind: str, tmp_path: Path) -> Iterator[AnyStore]:
    s = make_store(store_kind, tmp_path / "lake")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(params=["memory", "parquet"])
def local_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[InMemoryTrackingStore | ParquetTrackingStore]:
    """An in-memory store, then a lake in ``tmp_path`` (for tests that need no object lake)."""
    s = make_store(str(request.param), tmp_path / "lake")
    assert isinstance(s, InMemoryTrackingStore | ParquetTrackingStore)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def checkpoint(store: AnyStore, store_kind: str) -> Callable[[], None]:
    """Call between writes: folds the lake for ``parquet-compacted``, a no-op otherwise."""

    def _checkpoint() -> None:
        if store_kind in COMPACTED_KINDS:
            assert isinstance(store, ParquetTrackingStore | ObjectLakeStore)
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
