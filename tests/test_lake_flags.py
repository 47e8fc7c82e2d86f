"""The gateway flag of the folded state gives the answers the gateway ids give.

Folded files (``current/`` and ``open/``) carry ``has_gateway_id`` beside the lake's
columns (``CURRENT_SCHEMA``) so that metrics count one bit per record instead of
decoding every gateway id. Whatever holds the records (the in-memory store, a lake not
yet folded, folded, a lake of the older format without the flag, one half upgraded, one
upgraded by ``compact()``), summaries and counts must be the same, and the same as a
plain-Python count over the current records. Record frames never show the flag.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from kmsg_analytics import InMemoryTrackingStore, ParquetTrackingStore, RecordFilter
from kmsg_analytics import _metrics as m
from kmsg_analytics._analytics import DeliveryAnalytics
from kmsg_analytics._schema import (
    CURRENT_SCHEMA,
    FORMAT_VERSION,
    GATEWAY_FLAG,
    SNAPSHOT_SCHEMA,
    with_gateway_flag,
)
from kmsg_analytics._synthetic import load_snapshots, synthetic_snapshots

KEY = "test-key-123"
START, END = datetime(2020, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)
N = 600


@pytest.fixture(scope="module")
def snapshots() -> pl.DataFrame:
    frame = synthetic_snapshots(N, seed=7, hash_key=KEY, days=20, open_fraction=0.05)
    # some gateway ids are empty on the final state too (accepted nowhere, yet polled)
    return frame.with_columns(
        pl.when(pl.col("message_id").str.ends_with("3"))
        .then(pl.lit(""))
        .otherwise(pl.col("provider_message_id"))
        .alias("provider_message_id")
    )


def lake(path: Path, snapshots: pl.DataFrame) -> ParquetTrackingStore:
    store = ParquetTrackingStore(path, hash_key=KEY, numbers="hashed", compact_rows=1 << 40)
    load_snapshots(store, snapshots)
    return store


def folded_files(root: Path) -> list[Path]:
    files = sorted((root / "current").glob("requested_date=*/part-0.parquet"))
    return [*files, root / "open" / "part-0.parquet"]


def make_old_format(root: Path) -> None:
    """Make a folded lake what the older kmsg-analytics wrote: no flag, format 1."""
    for path in folded_files(root):
        with pq.ParquetFile(path) as pf:
            table = pf.read()
        pq.write_table(table.drop_columns([GATEWAY_FLAG]), path, compression="zstd")
    manifest = json.loads((root / "_lake.json").read_text())
    manifest["format_version"] = 1
    manifest.pop("current_extra_columns", None)
    (root / "_lake.json").write_text(json.dumps(manifest))


def carries_flag(path: Path) -> bool:
    return GATEWAY_FLAG in pq.read_schema(path).names


def answers(store: Any) -> dict[str, Any]:
    """Everything the flag could change: summaries, rates, counts, records."""
    an = DeliveryAnalytics(store)
    s = an.summary(START, END, include_by_provider=True, include_by_type=True, by="status")
    assert s.by_provider is not None
    assert s.by_type is not None
    return {
        "metrics": s.metrics,
        "by_provider": {k: v.metrics for k, v in sorted(s.by_provider.items())},
        "by_type": {k: v.metrics for k, v in sorted(s.by_type.items())},
        "breakdown": s.breakdown,
        "rates": an.rates(START, END, every="1d", by="provider_id", definition="reached"),
        "count_by": store.count_by(RecordFilter(), ["provider_id", "status"]).collect(),
        "count": store.count_records(RecordFilter(status="DELIVERED")),
        "records": store.list_records(RecordFilter(), 10_000, order_by="requested_at")
        .collect()
        .sort("message_id"),
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert a[key].keys() == b[key].keys(), key
            for k in a[key]:
                assert_frame_equal(a[key][k], b[key][k])
        elif isinstance(a[key], pl.DataFrame):
            assert_frame_equal(a[key], b[key])
        else:
            assert a[key] == b[key], key


def reached_by_hand(store: InMemoryTrackingStore) -> tuple[int, int]:
    """The ``reached`` rate's counts over the current records, in plain Python."""
    rows = store.current().select("status", "provider_message_id").collect().rows()
    den = [s for s, gid in rows if gid and s != "CANCELLED"]
    return sum(s == "DELIVERED" for s in den), len(den)


@pytest.fixture(scope="module")
def reference(snapshots: pl.DataFrame) -> tuple[dict[str, Any], tuple[int, int]]:
    mem = InMemoryTrackingStore(hash_key=KEY, numbers="hashed")
    load_snapshots(mem, snapshots)
    return answers(mem), reached_by_hand(mem)


def test_every_state_of_the_lake_answers_alike(
    tmp_path: Path, snapshots: pl.DataFrame, reference: tuple[dict[str, Any], tuple[int, int]]
) -> None:
    expected, (num, den) = reference
    assert 0 < num < den < N
    reached = expected["metrics"].filter(pl.col("rate") == "reached")
    assert reached.select("numerator", "denominator").row(0) == (num, den)

    store = lake(tmp_path / "lake", snapshots)
    assert_same(answers(store), expected)  # merge-on-read: nothing folded
    store.compact()
    root = tmp_path / "lake"
    assert all(carries_flag(p) for p in folded_files(root))
    assert_same(answers(store), expected)  # folded: the flag is read
    # the flag is what the gateway id says, row by row
    flags = store.current().select(pl.col(GATEWAY_FLAG) == (pl.col("provider_message_id") != ""))
    assert flags.collect().to_series().all()
    store.close()

    make_old_format(root)
    old = ParquetTrackingStore(root, hash_key=KEY, numbers="hashed", compact_rows=1 << 40)
    assert not any(carries_flag(p) for p in folded_files(root))
    assert_same(answers(old), expected)  # the older format: the flag computed
    assert old.current().collect_schema().names()[-2:] == [GATEWAY_FLAG, "requested_date"]
    old.close()


def test_an_older_lake_keeps_its_format_until_compact_upgrades_it(
    tmp_path: Path, snapshots: pl.DataFrame
) -> None:
    root = tmp_path / "lake"
    # the messages of the first days folded by the older format, the rest loaded afterwards
    day = pl.col("requested_at").dt.date()
    middle = snapshots.select(day.median()).item()
    first = snapshots.filter(day <= middle)
    store = lake(root, first)
    store.compact(history=False)
    store.close()
    make_old_format(root)
    mem = InMemoryTrackingStore(hash_key=KEY, numbers="hashed")
    load_snapshots(mem, snapshots)
    expected = answers(mem)

    store = ParquetTrackingStore(root, hash_key=KEY, numbers="hashed", compact_rows=1 << 40)
    load_snapshots(store, snapshots.filter(day > middle))
    assert_same(answers(store), expected)  # old files and new snapshots (merge-on-read)
    # a fold (automatic, or a bulk load's) writes what the older format has: every
    # folded file of the lake keeps the same columns, and older readers still read it
    store.compact(history=False)
    assert json.loads((root / "_lake.json").read_text())["format_version"] == 1
    assert not any(carries_flag(p) for p in folded_files(root))
    assert_same(answers(store), expected)
    # a full compaction upgrades: every folded file gets the flag, the lake format 2
    store.compact()
    assert json.loads((root / "_lake.json").read_text())["format_version"] == FORMAT_VERSION
    assert all(carries_flag(p) for p in folded_files(root))
    assert_same(answers(store), expected)
    assert store.compact().snapshot_rows == 0  # nothing left to do
    store.close()


def test_a_lake_stopped_half_way_through_its_upgrade_answers_alike(
    tmp_path: Path, snapshots: pl.DataFrame, reference: tuple[dict[str, Any], tuple[int, int]]
) -> None:
    root = tmp_path / "lake"
    store = lake(root, snapshots)
    store.compact()
    store.close()
    files = folded_files(root)
    for path in files[::2]:  # every other folded file as the older format wrote it
        with pq.ParquetFile(path) as pf:
            table = pf.read()
        pq.write_table(table.drop_columns([GATEWAY_FLAG]), path, compression="zstd")
    marks = [carries_flag(p) for p in files]
    assert any(marks)
    assert not all(marks)
    store = ParquetTrackingStore(root, hash_key=KEY, numbers="hashed", compact_rows=1 << 40)
    assert_same(answers(store), reference[0])
    store.close()


def test_record_frames_never_show_the_flag(tmp_path: Path, snapshots: pl.DataFrame) -> None:
    store = lake(tmp_path / "lake", snapshots.head(200))
    store.compact()
    listed = store.list_records(RecordFilter(), 5).collect()
    assert GATEWAY_FLAG not in listed.columns
    some = listed.get_column("message_id")[0]
    record = store.get(some)
    assert record is not None
    assert not hasattr(record, GATEWAY_FLAG)
    assert store.count_by(RecordFilter(), ["status"]).collect().columns == ["status", "count"]
    assert GATEWAY_FLAG not in store.history().collect_schema().names()
    store.close()


def test_other_engines_read_the_folded_files_as_they_lie(
    tmp_path: Path, snapshots: pl.DataFrame
) -> None:
    store = lake(tmp_path / "lake", snapshots)
    store.compact()
    current = str(tmp_path / "lake" / "current")
    table = pq.read_table(current)  # pyarrow, hive-partitioned
    assert table.num_rows == N
    assert len(table.column("message_id").unique()) == N
    assert table.schema.names[: len(CURRENT_SCHEMA)] == CURRENT_SCHEMA.names
    frame = pl.scan_parquet(f"{current}/**/*.parquet", hive_partitioning=True).collect()
    assert frame.height == N
    assert frame.get_column("message_id").n_unique() == N
    store.close()


# --------------------------------------------------------------------------- the reduce step


record_st = st.tuples(
    st.sampled_from(("a", "b")),
    st.sampled_from(("SENT", "DELIVERED", "FAILED", "CANCELLED", "UNKNOWN")),
    st.sampled_from(("", "g1", "g2", None)),
    st.sampled_from((None, "TRACKING_TIMEOUT", "X")),
)


def frame_of(rows: Sequence[tuple[str, str, str | None, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "provider_id": [r[0] for r in rows],
            "status": [r[1] for r in rows],
            "provider_message_id": [r[2] for r in rows],
            "last_error": [None if r[3] is None else {"code": r[3]} for r in rows],
        },
        schema={
            "provider_id": pl.String,
            "status": pl.String,
            "provider_message_id": pl.String,
            "last_error": pl.Struct({"code": pl.String}),
        },
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(record_st, max_size=40), st.booleans())
def test_a_stored_flag_reduces_like_the_gateway_ids(
    rows: list[tuple[str, str, str | None, str | None]], grouped: bool
) -> None:
    frame = frame_of(rows)
    flagged = pl.from_arrow(with_gateway_flag(frame.to_arrow()))
    assert isinstance(flagged, pl.DataFrame)
    keys = ["provider_id"] if grouped else []
    rates = tuple(m.RATES.values())
    aggs = m.polars_aggregations(m.COUNTS, rates, weight=m.WEIGHT)

    def counts(f: pl.DataFrame) -> pl.DataFrame:
        reduced = m.polars_reduce(f.lazy(), keys, m.metric_columns(m.COUNTS, rates)).collect()
        return reduced.group_by(keys).agg(aggs).sort(keys) if keys else reduced.select(aggs)

    expected = counts(frame)
    assert_frame_equal(counts(flagged), expected)
    if not keys and rows:
        den = [s for _, s, gid, _ in rows if gid and s != "CANCELLED"]
        assert expected.get_column("reached_den").item() == len(den)
        assert expected.get_column("reached_num").item() == den.count("DELIVERED")


def test_the_folded_schema_is_the_lake_schema_and_the_flag() -> None:
    assert CURRENT_SCHEMA.names == [*SNAPSHOT_SCHEMA.names, GATEWAY_FLAG]
    assert CURRENT_SCHEMA.field(GATEWAY_FLAG).type == pa.bool_()
    assert not CURRENT_SCHEMA.field(GATEWAY_FLAG).nullable
