"""The lake's files as other tools see them: layout, schemas, engines, pruning, format guards.

Every test builds a small lake in ``tmp_path`` through the public API and then looks
at the directory itself: the partition folders, each Parquet file's schema, and what
DuckDB, pyarrow and Polars read from each dataset without any help from us.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from kmsg_analytics import (
    SNAPSHOT_SCHEMA,
    DeliveryTrackingService,
    HashKey,
    InMemoryTrackingStore,
    LakeError,
    LakeFormatError,
    ParquetTrackingStore,
    RecordFilter,
)
from kmsg_analytics._schema import CURRENT_SCHEMA, FORMAT_VERSION, POLARS_SCHEMA, RECORD_COLUMNS
from tests import _helpers
from tests._helpers import Gateway

KEY = "test-key-123"
BASE = datetime(2026, 11, 1, 1, 0, tzinfo=UTC)
DAYS = [(BASE + timedelta(days=d)).date() for d in range(4)]
NUMBER = _helpers.NUMBER
SCHEMA_COLUMNS = [(f.name, f.type) for f in SNAPSHOT_SCHEMA]
CURRENT_COLUMNS = [(f.name, f.type) for f in CURRENT_SCHEMA]
TOP_LEVEL = {"history", "current", "open", "_staging", "_wal", "_lake.json", "_state.json", "_lock"}


def send_pair(
    message_id: str, requested: datetime, *, kind: str = "SMS", pmid: str = "G"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A k-msg-shaped (context, result) pair of one send (all with provider message id "G")."""
    return _helpers.send_pair(message_id, requested, kind=kind, pmid=pmid, sender="02-123-4567")


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def store(lake_dir: Path) -> Iterator[ParquetTrackingStore]:
    lake = ParquetTrackingStore(lake_dir, hash_key=KEY, flush_seconds=3600)
    yield lake
    lake.close()


@pytest.fixture
def svc(store: ParquetTrackingStore) -> DeliveryTrackingService:
    return DeliveryTrackingService([Gateway()], store=store)


#: messages and snapshots written by :func:`populate`
N_MESSAGES = 15
N_SNAPSHOTS = 18


def populate(svc: DeliveryTrackingService, store: ParquetTrackingStore) -> None:
    """Three kinds of writes over four requested days, published as four history files."""
    # a batch of 12 messages, 8 hours apart (days 0..3)
    batch = [send_pair(f"m{i:02d}", BASE + timedelta(hours=8 * i)) for i in range(12)]
    batch[5] = send_pair("m05", BASE + timedelta(hours=40), kind="ALIMTALK", pmid="")
    assert svc.record_sends(batch) == 12
    # single sends: three new messages and the same send of m00 recorded again
    for i in range(3):
        svc.record_send(*send_pair(f"n{i}", BASE + timedelta(days=i, hours=3)))
    svc.record_send(*batch[0])
    store.flush()
    # polling reached DELIVERED for m01
    m01 = svc.get_record("m01")
    assert m01 is not None
    delivered = BASE + timedelta(hours=9)
    store.append_snapshots(
        [replace(m01, status="DELIVERED", delivered_at=delivered, status_updated_at=delivered)],
        kind="poll",
    )
    # a late re-record of m01's send must not move it back to SENT
    svc.record_send(*batch[1])
    store.flush()


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def columns_of(path: Path) -> list[tuple[str, pa.DataType]]:
    return [(f.name, f.type) for f in pq.read_schema(path)]


def store_answer(svc: DeliveryTrackingService) -> pl.DataFrame:
    """The store's current records, one per message, sorted by id."""
    return svc.list_records(limit=10_000, order_by="requested_at").collect().sort("message_id")


def as_records(frame: pl.DataFrame) -> pl.DataFrame:
    """A frame read by another engine, in the store's columns and dtypes, sorted by id."""
    return (
        frame.select(RECORD_COLUMNS)
        .cast({n: POLARS_SCHEMA[n] for n in RECORD_COLUMNS})
        .sort("message_id")
    )


def duckdb_read(pattern: Path) -> pl.DataFrame:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        rel = con.sql(
            "SELECT * FROM read_parquet($p, hive_partitioning = true)",
            params={"p": str(pattern)},
        )
        out = rel.pl()
        assert isinstance(out, pl.DataFrame)
        return out
    finally:
        con.close()


def pyarrow_read(folder: Path, partition: str) -> pl.DataFrame:
    part = ds.partitioning(pa.schema([(partition, pa.date32())]), flavor="hive")
    table = ds.dataset(folder, format="parquet", partitioning=part).to_table()
    out = pl.from_arrow(table)
    assert isinstance(out, pl.DataFrame)
    return out


def polars_read(folder: Path) -> pl.DataFrame:
    return pl.scan_parquet(folder / "**" / "*.parquet", hive_partitioning=True).collect()


def read_dataset(engine: str, folder: Path, partition: str) -> pl.DataFrame:
    if engine == "duckdb":
        return duckdb_read(folder / "**" / "*.parquet")
    if engine == "pyarrow":
        return pyarrow_read(folder, partition)
    return polars_read(folder)


ENGINES = ["duckdb", "pyarrow", "polars"]


# --------------------------------------------------------------------------- layout


def test_layout_of_a_compacted_lake(
    svc: DeliveryTrackingService, store: ParquetTrackingStore, lake_dir: Path
) -> None:
    populate(svc, store)
    store.compact()
    store.close()

    assert {p.name for p in lake_dir.iterdir()} <= TOP_LEVEL
    for sub in ("history", "current", "open"):
        assert (lake_dir / sub).is_dir()

    history_dirs = sorted((lake_dir / "history").iterdir())
    assert history_dirs
    for folder in history_dirs:
        m = re.fullmatch(r"ingest_date=(\d{4}-\d{2}-\d{2})", folder.name)
        assert m, folder
        date.fromisoformat(m[1])
        files = list(folder.iterdir())
        assert files
        assert all(f.suffix == ".parquet" and f.is_file() for f in files), files

    current_dirs = sorted((lake_dir / "current").iterdir())
    assert [d.name for d in current_dirs] == [f"requested_date={d.isoformat()}" for d in DAYS]
    for folder in current_dirs:
        assert [f.name for f in folder.iterdir()] == ["part-0.parquet"]

    assert [f.name for f in (lake_dir / "open").iterdir()] == ["part-0.parquet"]

    manifest = json.loads((lake_dir / "_lake.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["hash_key_id"] == HashKey(KEY).key_id
    # the key itself is never written anywhere in the lake's small files
    for small in lake_dir.glob("_*.json"):
        assert KEY not in small.read_text()

    # nothing left in the working folders after a clean close
    assert list((lake_dir / "_staging").iterdir()) == []
    assert list((lake_dir / "_wal").iterdir()) == []


def test_numbers_are_not_stored_in_clear(
    svc: DeliveryTrackingService, store: ParquetTrackingStore, lake_dir: Path
) -> None:
    populate(svc, store)
    store.compact()
    for path in parquet_files(lake_dir):
        table = pq.read_table(path, columns=["to", "from_", "to_masked", "to_hash"])
        assert table.column("to").null_count == table.num_rows, path
        assert table.column("from_").null_count == table.num_rows, path
        assert set(table.column("to_masked").to_pylist()) == {"010****5678"}
        assert set(table.column("to_hash").to_pylist()) == {HashKey(KEY).hash_number(NUMBER)}


def test_every_file_has_the_snapshot_columns(
    svc: DeliveryTrackingService, store: ParquetTrackingStore, lake_dir: Path
) -> None:
    populate(svc, store)
    before = parquet_files(lake_dir / "history")
    assert len(before) >= 3
    for path in before:
        assert columns_of(path) == SCHEMA_COLUMNS, path
    store.compact()
    for path in parquet_files(lake_dir / "history"):
        assert columns_of(path) == SCHEMA_COLUMNS, path
    # the folded state adds the gateway flag after the snapshot columns (CURRENT_SCHEMA)
    for path in parquet_files(lake_dir / "current"):
        assert columns_of(path) == CURRENT_COLUMNS, path
    # open/ is not hive-partitioned, so it carries its requested_date as a column
    assert columns_of(lake_dir / "open" / "part-0.parquet") == [
        *CURRENT_COLUMNS,
        ("requested_date", pa.date32()),
    ]


# --------------------------------------------------------------------------- other engines


@pytest.mark.parametrize("engine", ENGINES)
def test_engines_read_current_as_the_store_answers(
    engine: str, svc: DeliveryTrackingService, store: ParquetTrackingStore, lake_dir: Path
) -> None:
    populate(svc, store)
    store.compact()
    expected = store_answer(svc)
    assert expected.height == N_MESSAGES
    assert expected.filter(pl.col("message_id") == "m01").item(0, "status") == "DELIVERED"
    assert expected.filter(pl.col("message_id") == "m05").item(0, "status") == "UNKNOWN"

    got = read_dataset(engine, lake_dir / "current", "requested_date")
    assert got.height == N_MESSAGES
    assert got.get_column("message_id").n_unique() == N_MESSAGES
    assert got.schema["requested_date"] == pl.Date
    assert (
        got["requested_date"] == got["requested_at"].dt.convert_time_zone("UTC").dt.date()
    ).all()
    assert_frame_equal(as_records(got), expected)


@pytest.mark.parametrize("engine", ENGINES)
def test_engines_read_every_snapshot_once_from_history(
    engine: str, svc: DeliveryTrackingService, store: ParquetTrackingStore, lake_dir: Path
) -> None:
    populate(svc, store)
    store.compact()
    got = read_dataset(engine, lake_dir / "history", "ingest_date")
    assert got.height == N_SNAPSHOTS
    assert got.get_column("seq").sort().to_list() == list(range(1, N_SNAPSHOTS + 1))
    assert got.get_column("message_id").n_unique() == N_MESSAGES
    assert got.schema["ingest_date"] == pl.Date
    kinds = got.group_by("snapshot_kind").len().sort("snapshot_kind")
    assert dict(kinds.iter_rows()) == {"poll": 1, "send": N_SNAPSHOTS - 1}
    # the store's own view of the history is the same set of rows
    own = store.history().collect().sort("seq")
    assert_frame_equal(
        got.select(own.columns).cast(dict(own.schema)).sort("seq"),  # type: ignore[arg-type]
        own,
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_engines_read_the_open_set(
    engine: str, svc: DeliveryTrackingService, store: ParquetTrackingStore, lake_dir: Path
) -> None:
    populate(svc, store)
    store.compact()
    path = lake_dir / "open" / "part-0.parquet"
    if engine == "duckdb":
        got = duckdb_read(path)
    elif engine == "pyarrow":
        got = pl.from_arrow(pq.read_table(path))  # type: ignore[assignment]
    else:
        got = pl.read_parquet(path)
    expected = store_answer(svc).filter(pl.col("status").is_in(["PENDING", "SENT"]))
    assert_frame_equal(as_records(got), expected)


# --------------------------------------------------------------------------- compaction


def test_compaction_keeps_history_and_merges_files(
    svc: DeliveryTrackingService, store: ParquetTrackingStore, lake_dir: Path
) -> None:
    populate(svc, store)
    history = lake_dir / "history"
    files_before = parquet_files(history)
    assert len(files_before) >= 3
    rows_before = polars_read(history).sort("seq")
    answer_before = store_answer(svc)

    report = store.compact()
    assert report.history_files_before == len(files_before)
    assert report.history_files_after == len(list(history.iterdir()))  # one file per day
    for folder in history.iterdir():
        assert len(list(folder.iterdir())) == 1
    assert_frame_equal(polars_read(history).sort("seq"), rows_before)
    assert_frame_equal(store_answer(svc), answer_before)

    # a second compaction changes nothing a reader can see
    current_before = polars_read(lake_dir / "current").sort("message_id")
    store.compact()
    assert_frame_equal(polars_read(history).sort("seq"), rows_before)
    assert_frame_equal(polars_read(lake_dir / "current").sort("message_id"), current_before)
    assert_frame_equal(store_answer(svc), answer_before)


def test_rewritten_message_keeps_one_current_row(
    svc: DeliveryTrackingService, store: ParquetTrackingStore, lake_dir: Path
) -> None:
    """A message recorded again with another requested time stays one record.

    The in-memory store answers with the latest snapshot; the lake must agree, before
    and after compaction, and its ``current/`` must hold the message once.
    """
    memory = DeliveryTrackingService([Gateway()], store=InMemoryTrackingStore(hash_key=KEY))
    first, second = send_pair("x1", BASE), send_pair("x1", BASE + timedelta(days=2))
    for service in (svc, memory):
        service.record_send(*first)
    store.compact()
    for service in (svc, memory):
        service.record_send(*second)

    expected = memory.get_record("x1")
    assert expected is not None
    assert svc.count_records() == memory.count_records() == 1
    got = svc.get_record("x1")
    assert got is not None
    assert got.requested_at == expected.requested_at

    store.compact()
    assert svc.count_records() == 1
    assert polars_read(lake_dir / "current").get_column("message_id").to_list() == ["x1"]


# --------------------------------------------------------------------------- pruning


def _corrupt(path: Path) -> None:
    path.write_bytes(b"PAR1 this is not a parquet file any more PAR1")


def _day_window(day: date) -> dict[str, Any]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return {
        "requested_at_from": start,
        "requested_at_to": start + timedelta(days=1, microseconds=-1),
    }


def _check_window(
    svc: DeliveryTrackingService, lake_dir: Path, day: date, answer: pl.DataFrame
) -> None:
    window = _day_window(day)
    in_window = answer.filter(pl.col("requested_at").dt.date() == day)
    assert 0 < in_window.height < answer.height
    assert svc.count_records(**window) == in_window.height
    listed = svc.list_records(limit=100, **window).collect().sort("message_id")
    assert_frame_equal(listed, in_window)
    by_status = svc.count_by(group_by="status", **window).collect()
    assert by_status.get_column("count").sum() == in_window.height

    # a send not yet compacted, on the same day, is merged in without touching other days
    svc.record_send(*send_pair("late", window["requested_at_from"] + timedelta(hours=1)))
    assert svc.count_records(**window) == in_window.height + 1

    # and plain Polars prunes the same way on the files as they lie
    scan = pl.scan_parquet(
        lake_dir / "current" / "**" / "*.parquet",
        hive_partitioning=True,
        schema=pl.Schema(CURRENT_SCHEMA),  # the folded state's columns: the lake's and the flag
        hive_schema={"requested_date": pl.Date},
    )
    assert scan.filter(pl.col("requested_date") == day).collect().height == in_window.height


def test_requested_window_reads_only_its_partitions(
    svc: DeliveryTrackingService, store: ParquetTrackingStore, lake_dir: Path
) -> None:
    populate(svc, store)
    store.compact()
    answer = store_answer(svc)
    # the days after the window are now unreadable
    for other in DAYS[2:]:
        _corrupt(lake_dir / "current" / f"requested_date={other.isoformat()}" / "part-0.parquet")
    with pytest.raises((pl.exceptions.PolarsError, OSError, LakeError)):
        svc.count_records()
    _check_window(svc, lake_dir, DAYS[1], answer)


def test_requested_window_needs_no_other_partition(
    svc: DeliveryTrackingService, store: ParquetTrackingStore, lake_dir: Path
) -> None:
    """Not even the first file: the lake knows its schema, so a scan need not open it."""
    populate(svc, store)
    store.compact()
    answer = store_answer(svc)
    day = DAYS[2]
    for other in DAYS:
        if other != day:
            _corrupt(
                lake_dir / "current" / f"requested_date={other.isoformat()}" / "part-0.parquet"
            )
    _check_window(svc, lake_dir, day, answer)


# --------------------------------------------------------------------------- format guards


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "_lock"
    }


def test_another_hash_key_is_refused(
    svc: DeliveryTrackingService, store: ParquetTrackingStore, lake_dir: Path
) -> None:
    populate(svc, store)
    store.close()
    before = _files(lake_dir)
    with pytest.raises(LakeFormatError, match="key"):
        ParquetTrackingStore(lake_dir, hash_key="another-key-456")
    assert _files(lake_dir) == before
    with ParquetTrackingStore(lake_dir, hash_key=KEY) as again:
        assert again.count_records(RecordFilter()) == N_MESSAGES


def test_newer_format_version_is_refused(store: ParquetTrackingStore, lake_dir: Path) -> None:
    store.close()
    manifest_path = lake_dir / "_lake.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(LakeFormatError, match=str(FORMAT_VERSION + 1)):
        ParquetTrackingStore(lake_dir, hash_key=KEY)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"format": "something-else", "format_version": 1}', LakeFormatError),
        ('{"format": "kmsg-analytics-lake", "format_version": "1"}', LakeFormatError),
        ("[1, 2, 3]", LakeError),
        ("{not json", LakeError),
    ],
)
def test_a_foreign_manifest_is_refused(
    store: ParquetTrackingStore, lake_dir: Path, text: str, error: type[Exception]
) -> None:
    store.close()
    (lake_dir / "_lake.json").write_text(text)
    with pytest.raises(error):
        ParquetTrackingStore(lake_dir, hash_key=KEY)


# --------------------------------------------------------------------------- staging


def _junk_in_staging(lake_dir: Path) -> None:
    staging = lake_dir / "_staging"
    real = next((lake_dir / "current").rglob("*.parquet"))
    half = real.read_bytes()
    (staging / "0123456789abcdef0123456789abcdef.parquet").write_bytes(half[: len(half) // 2])
    (staging / "junk.parquet").write_bytes(b"PAR1 garbage")
    (staging / "f00d.json").write_text('{"seq": ')
    (staging / "hist-2026-11-01").mkdir()
    (staging / "hist-2026-11-01" / "c-1-2.parquet").write_bytes(b"garbage")


def test_staging_leftovers_are_cleared_on_open(
    svc: DeliveryTrackingService, store: ParquetTrackingStore, lake_dir: Path
) -> None:
    populate(svc, store)
    store.compact()
    store.close()
    _junk_in_staging(lake_dir)
    with ParquetTrackingStore(lake_dir, hash_key=KEY) as again:
        assert list((lake_dir / "_staging").iterdir()) == []
        assert again.count_records(RecordFilter()) == N_MESSAGES


def test_staging_junk_is_never_visible_to_readers(
    svc: DeliveryTrackingService, store: ParquetTrackingStore, lake_dir: Path
) -> None:
    populate(svc, store)
    store.compact()
    expected = store_answer(svc)
    _junk_in_staging(lake_dir)  # as if another writer were half-way through a file

    assert_frame_equal(store_answer(svc), expected)
    assert svc.count_records() == N_MESSAGES
    assert store.history().collect().height == N_SNAPSHOTS
    for engine in ENGINES:
        assert_frame_equal(
            as_records(read_dataset(engine, lake_dir / "current", "requested_date")), expected
        )
        assert read_dataset(engine, lake_dir / "history", "ingest_date").height == N_SNAPSHOTS
    # the next write clears them under the writer lock and publishes normally
    svc.record_send(*send_pair("after-junk", BASE))
    store.compact()
    assert list((lake_dir / "_staging").iterdir()) == []
    assert svc.count_records() == N_MESSAGES + 1
