"""Bulk loads and the windowed fold: ``bulk()``, batch row groups, folds in windows.

Every test builds a small lake in ``tmp_path`` through the public API (or
``append_table`` with rows from ``frame_to_table``, as ``load_records`` does) and
compares the answers with the in-memory store or with a fold done in one piece. The
sizes that decide how files are cut (``_FOLD_WINDOW_ROWS``, ``_GROUP_MIN_ROWS``,
``_BIG_FILE_ROWS``) are turned down so that a few rows exercise them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

import kmsg_analytics._lake as lake_module
from kmsg_analytics import (
    DeliveryTrackingService,
    InMemoryTrackingStore,
    ParquetTrackingStore,
    RecordFilter,
)
from kmsg_analytics._loading import frame_to_table
from kmsg_analytics._store import TrackingStore
from tests._helpers import Gateway, send_pair

KEY = "test-key-123"
BASE = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def records(
    ids: Sequence[str], days: Sequence[int], status: str | Sequence[str] = "SENT"
) -> pl.DataFrame:
    """A frame of records as ``load_records`` takes them: message ``i`` on day ``days[i]``."""
    statuses = [status] * len(ids) if isinstance(status, str) else list(status)
    return pl.DataFrame(
        {
            "message_id": list(ids),
            "provider_id": "solapi",
            "type": "SMS",
            "to": "010-1234-5678",
            "requested_at": [BASE + timedelta(days=d, minutes=i) for i, d in enumerate(days)],
            "status": statuses,
        }
    )


def load(store: TrackingStore, frame: pl.DataFrame) -> None:
    store.append_table(frame_to_table(frame, store.hash_key, keep_numbers=False), kind="load")


def current_rows(store: ParquetTrackingStore) -> pl.DataFrame:
    """The lake's current state as its files hold it, one row per message, by id."""
    return (
        store.current()
        .select("message_id", "status", "requested_at", "seq", "requested_date")
        .collect()
        .sort("message_id")
    )


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[ParquetTrackingStore]:
    store = ParquetTrackingStore(
        tmp_path / "lake", hash_key=KEY, compact_rows=5, flush_rows=2, flush_seconds=3600
    )
    yield store
    store.close()


# --------------------------------------------------------------------------- bulk()


def test_bulk_folds_once_when_the_block_ends(lake: ParquetTrackingStore) -> None:
    with lake.bulk() as same:
        assert same is lake
        for batch in range(4):  # each batch alone reaches compact_rows=5
            ids = [f"b{batch}-{i}" for i in range(6)]
            load(lake, records(ids, [i % 3 for i in range(6)]))
            assert lake.stats()["watermark"] == 0  # published, not folded
            assert lake.count_records(RecordFilter()) == 6 * (batch + 1)  # yet answered
            assert lake._cache_rows.is_empty()  # read for the query, not kept
    stats = lake.stats()
    assert stats["watermark"] == stats["seq"] == 24
    assert stats["current_files"] == 3
    assert lake.count_records(RecordFilter()) == 24


def test_single_sends_do_not_fold_inside_bulk(lake: ParquetTrackingStore) -> None:
    svc = DeliveryTrackingService([Gateway()], store=lake)
    with lake.bulk():
        for i in range(12):  # flush_rows=2: six published batches, compact_rows=5
            svc.record_send(*send_pair(f"s{i}", BASE + timedelta(hours=i)))
        assert lake.stats()["watermark"] == 0
    assert lake.stats()["watermark"] == lake.stats()["seq"] == 12


def test_an_error_in_bulk_keeps_the_batches_for_the_next_fold(tmp_path: Path) -> None:
    path = tmp_path / "lake"
    store = ParquetTrackingStore(path, hash_key=KEY, compact_rows=5)

    def import_that_fails() -> None:
        with store.bulk():
            load(store, records([f"e{i}" for i in range(6)], [0, 1, 2, 0, 1, 2]))
            load(store, records([f"f{i}" for i in range(6)], [3, 3, 3, 4, 4, 4]))
            msg = "source went away"
            raise RuntimeError(msg)

    with pytest.raises(RuntimeError, match="source went away"):
        import_that_fails()
    assert store.stats()["watermark"] == 0
    assert store.stats()["seq"] == 12
    store.close()
    again = ParquetTrackingStore(path, hash_key=KEY)  # acknowledged: durable
    assert again.count_records(RecordFilter()) == 12
    report = again.compact()
    assert report.snapshot_rows == 12
    assert again.stats()["watermark"] == 12
    assert again.count_records(RecordFilter(status="SENT")) == 12
    again.close()


def test_nested_bulk_folds_only_at_the_outermost_end(lake: ParquetTrackingStore) -> None:
    with lake.bulk():
        with lake.bulk():
            load(lake, records([f"n{i}" for i in range(6)], [0] * 6))
        assert lake.stats()["watermark"] == 0
        load(lake, records([f"o{i}" for i in range(6)], [1] * 6))
    assert lake.stats()["watermark"] == 12


def test_compact_inside_bulk_still_folds(lake: ParquetTrackingStore) -> None:
    with lake.bulk():
        load(lake, records([f"c{i}" for i in range(6)], [0] * 6))
        lake.compact(history=False)
        assert lake.stats()["watermark"] == 6
        load(lake, records([f"d{i}" for i in range(6)], [1] * 6))
    assert lake.stats()["watermark"] == 12


def test_bulk_reports_the_final_fold(lake: ParquetTrackingStore) -> None:
    lines: list[str] = []
    with lake.bulk(progress=lines.append):
        load(lake, records([f"p{i}" for i in range(6)], [0, 1, 2, 0, 1, 2]))
    assert [line.split(" (")[1] for line in lines] == ["1/3)", "2/3)", "3/3)"]


# --------------------------------------------------------------------------- batch files


def test_a_batch_holds_one_row_group_per_requested_day(
    lake: ParquetTrackingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lake_module, "_GROUP_MIN_ROWS", 2)
    days = [2, 0, 1, 0, 2, 1, 0]  # not in requested order
    ids = [f"g{i}" for i in range(len(days))]
    load(lake, records(ids, days))
    (path,) = (lake.paths.root / "history").rglob("*.parquet")
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 3
    at = meta.schema.to_arrow_schema().get_field_index("requested_at")
    spans = [
        (meta.row_group(i).column(at).statistics.min, meta.row_group(i).column(at).statistics.max)
        for i in range(3)
    ]
    assert [lo.date() for lo, _ in spans] == [hi.date() for _, hi in spans]
    # rows are numbered in the order given, stored in requested order
    stored = pl.read_parquet(path).select("message_id", "seq")
    assert stored.sort("seq").get_column("message_id").to_list() == ids
    assert pq.read_schema(path).field("message_id").type == "string"


def test_the_last_of_two_rows_of_one_message_in_a_load_wins(tmp_path: Path) -> None:
    memory = InMemoryTrackingStore(hash_key=KEY)
    store = ParquetTrackingStore(tmp_path / "lake", hash_key=KEY)
    frame = records(["m", "m", "k"], [3, 1, 2], ["SENT", "DELIVERED", "SENT"])
    for each in (store, memory):
        load(each, frame)
    expected = memory.get("m")
    assert expected is not None
    assert expected.status == "DELIVERED"
    for _ in range(2):  # merged on read, then folded
        got = store.get("m")
        assert got is not None
        assert (got.status, got.requested_at) == (expected.status, expected.requested_at)
        assert store.count_records(RecordFilter()) == 2
        store.compact()
    store.close()


# --------------------------------------------------------------------------- the fold


def _history(svc: DeliveryTrackingService, store: ParquetTrackingStore) -> None:
    """Sends over five days, polls, and resends that move messages to other days."""
    for i in range(20):
        svc.record_send(*send_pair(f"w{i:02d}", BASE + timedelta(days=i % 5, minutes=i)))
    store.flush()
    store.compact(history=False)
    load(store, records([f"w{i:02d}" for i in range(0, 20, 3)], [4, 4, 0, 1, 2, 3, 0]))
    for i in (1, 7):  # resent on another day: the message moves there
        svc.record_send(*send_pair(f"w{i:02d}", BASE + timedelta(days=6, hours=i)))
    svc.record_send(*send_pair("w01", BASE + timedelta(days=2, hours=5)))  # and back
    store.flush()


@pytest.mark.parametrize(("window", "runs"), [(1, 256), (7, 256), (10_000, 256), (7, 0)])
def test_a_fold_in_windows_equals_the_fold_in_one_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int, runs: int
) -> None:
    """Any window size gives the same files; ``runs=0`` sorts each window by day first."""
    answers = []
    for name, rows in (("whole", 10**9), ("windows", window)):
        monkeypatch.setattr(lake_module, "_FOLD_WINDOW_ROWS", rows)
        monkeypatch.setattr(lake_module, "_MAX_RUNS_PER_DAY", runs if name == "windows" else 256)
        store = ParquetTrackingStore(tmp_path / name, hash_key=KEY, compact_rows=10**9)
        _history(DeliveryTrackingService([Gateway()], store=store), store)
        before = current_rows(store)
        store.compact(history=False)
        after = current_rows(store)
        assert_frame_equal(after, before)  # merge-on-read already gave the folded answer
        assert after.get_column("message_id").is_unique().all()
        answers.append(after)
        store.close()
    assert_frame_equal(answers[1], answers[0])


def test_moved_messages_leave_their_old_day_in_current_and_open(tmp_path: Path) -> None:
    memory = DeliveryTrackingService([Gateway()], store=InMemoryTrackingStore(hash_key=KEY))
    store = ParquetTrackingStore(tmp_path / "lake", hash_key=KEY, compact_rows=10**9)
    svc = DeliveryTrackingService([Gateway()], store=store)
    for service, each in ((svc, store), (memory, memory.store)):
        for i in range(20):
            service.record_send(*send_pair(f"w{i:02d}", BASE + timedelta(days=i % 5, minutes=i)))
        if each is store:
            store.flush()
            store.compact(history=False)
        load(each, records([f"w{i:02d}" for i in range(0, 20, 3)], [4, 4, 0, 1, 2, 3, 0]))
        for i in (1, 7):
            service.record_send(*send_pair(f"w{i:02d}", BASE + timedelta(days=6, hours=i)))
    store.compact()
    files = pl.read_parquet(
        store.paths.root / "current" / "**" / "*.parquet", hive_partitioning=True
    )
    assert files.get_column("message_id").is_unique().all()
    moved = files.filter(pl.col("message_id").is_in(["w01", "w07"]))
    assert moved.get_column("requested_date").to_list() == [(BASE + timedelta(days=6)).date()] * 2
    want = memory.count_by(group_by=["status"]).collect()
    assert_frame_equal(svc.count_by(group_by=["status"]).collect(), want)
    open_ids = pl.read_parquet(store.paths.open_file()).get_column("message_id")
    assert open_ids.is_unique().all()
    assert sorted(open_ids) == sorted(
        r.message_id for r in memory.store.list_due(BASE + timedelta(days=30), 100)
    )
    store.close()


def test_history_files_with_many_rows_are_not_merged(
    lake: ParquetTrackingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lake_module, "_BIG_FILE_ROWS", 6)
    load(lake, records([f"big{i}" for i in range(8)], [0] * 8))
    big = {p.name for p in (lake.paths.root / "history").rglob("*.parquet")}
    for batch in range(2):
        load(lake, records([f"s{batch}{i}" for i in range(2)], [1, 2]))
    lake.compact()
    names = {p.name for p in (lake.paths.root / "history").rglob("*.parquet")}
    assert big <= names  # untouched
    assert len(names) == 2  # the two small batches became one file
    assert lake.history().select(pl.len()).collect().item() == 12


def _first_history(svc: DeliveryTrackingService, store: TrackingStore) -> None:
    """Sends, a load and resends over seven days, nothing folded: a first fold's input."""
    for i in range(20):
        svc.record_send(*send_pair(f"w{i:02d}", BASE + timedelta(days=i % 5, minutes=i)))
    load(store, records([f"w{i:02d}" for i in range(0, 20, 3)], [4, 4, 0, 1, 2, 3, 0]))
    for i in (1, 7):  # resent on another day: the message moves there
        svc.record_send(*send_pair(f"w{i:02d}", BASE + timedelta(days=6, hours=i)))
    svc.record_send(*send_pair("w01", BASE + timedelta(days=2, hours=5)))  # and back


@pytest.mark.parametrize("window", [1, 7, 10**9])
def test_a_first_fold_into_an_empty_lake_places_moved_messages_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    """No ``current/`` yet: messages on several days (one window or several) fold once."""
    monkeypatch.setattr(lake_module, "_FOLD_WINDOW_ROWS", window)
    memory = DeliveryTrackingService([Gateway()], store=InMemoryTrackingStore(hash_key=KEY))
    _first_history(memory, memory.store)
    store = ParquetTrackingStore(tmp_path / "lake", hash_key=KEY, compact_rows=10**9)
    svc = DeliveryTrackingService([Gateway()], store=store)
    with store.bulk():
        _first_history(svc, store)
        store.flush()
        before = current_rows(store)  # merge-on-read
    assert store.stats()["watermark"] == store.stats()["seq"]  # folded, from nothing
    files = pl.read_parquet(
        store.paths.root / "current" / "**" / "*.parquet", hive_partitioning=True
    )
    assert files.get_column("message_id").is_unique().all()
    assert_frame_equal(current_rows(store), before)
    cols = ("message_id", "status", "requested_at", "provider_message_id")
    want = memory.list_records().select(cols).collect().sort("message_id")
    assert_frame_equal(svc.list_records().select(cols).collect().sort("message_id"), want)
    moved = files.filter(pl.col("message_id").is_in(["w01", "w07"])).sort("message_id")
    assert moved.get_column("requested_date").to_list() == [
        (BASE + timedelta(days=2)).date(),
        (BASE + timedelta(days=6)).date(),
    ]
    store.close()


# --------------------------------------------------------------------------- two encoders


def test_a_large_batch_is_published_as_two_files_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two halves by seq, each in requested order; files already there keep their inodes."""
    monkeypatch.setattr(lake_module, "_SPLIT_ROWS", 6)
    memory = InMemoryTrackingStore(hash_key=KEY)
    store = ParquetTrackingStore(tmp_path / "lake", hash_key=KEY, compact_rows=10**9)
    first = records([f"a{i}" for i in range(3)], [0, 1, 2])  # small: one file
    second = records([f"b{i}" for i in range(9)], [3, 0, 2, 1, 0, 4, 2, 1, 3])
    for each in (store, memory):
        load(each, first)
    before = {f.path.name: f.path.stat().st_ino for f in store.paths.history_files()}
    for each in (store, memory):
        load(each, second)
    files = store.paths.history_files()
    assert [(f.lo, f.hi) for f in files] == [(1, 3), (4, 7), (8, 12)]
    assert {f.path.name: f.path.stat().st_ino for f in files[:1]} == before
    for f in files[1:]:
        table = pq.read_table(f.path)
        at = table.column("requested_at").to_pylist()
        assert at == sorted(at)  # each half in requested order (a row group per day)
        assert sorted(table.column("seq").to_pylist()) == list(range(f.lo, f.hi + 1))
    assert not list(store.paths.staging.iterdir())  # no debris
    want = memory.list_records(RecordFilter(), 100).collect().sort("message_id")
    assert_frame_equal(store.list_records(RecordFilter(), 100).collect().sort("message_id"), want)
    store.compact()
    assert_frame_equal(store.list_records(RecordFilter(), 100).collect().sort("message_id"), want)
    store.close()
    reopened = ParquetTrackingStore(tmp_path / "lake", hash_key=KEY)
    assert reopened.count_records(RecordFilter()) == 12
    reopened.close()
