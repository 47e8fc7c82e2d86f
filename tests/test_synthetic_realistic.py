"""Polled-looking synthetic histories: snapshots recorded at their request time plus delays."""

from __future__ import annotations

import importlib.util
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import polars as pl
from polars.testing import assert_frame_equal

from kmsg_analytics import ParquetTrackingStore
from kmsg_analytics._schema import RECORD_COLUMNS
from kmsg_analytics._synthetic import synthetic_records, synthetic_snapshots
from kmsg_analytics._synthetic_snapshots import with_recorded_at

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_analytics.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_analytics_under_test", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_recorded_times_follow_the_polling_schedule() -> None:
    snaps = with_recorded_at(synthetic_snapshots(3000, seed=4, hash_key="test-key-123"))
    assert snaps.drop("recorded_at").equals(
        synthetic_snapshots(3000, seed=4, hash_key="test-key-123")
    )
    late = (pl.col("recorded_at") - pl.col("requested_at")).dt.total_microseconds()
    sends = snaps.filter(pl.col("step") == 0)
    assert (sends.select(late == 300_000).to_series()).all()
    polls = snaps.filter(pl.col("step") > 0)
    assert (polls.select(late >= 30_000_000).to_series()).all()
    # a poll is recorded when it was checked, never before the status it saw changed
    assert (polls.select(pl.col("recorded_at") >= pl.col("status_updated_at")).to_series()).all()
    # each message's snapshots in the order of their steps
    in_order = pl.col("recorded_at").sort_by("step").is_sorted()
    assert snaps.group_by("message_id").agg(in_order).get_column("recorded_at").all()
    # realistic delays: most finals within minutes, a tail of hours
    finals = snaps.filter(pl.col("step") == 2).select(late.alias("us")).to_series()
    minute, hour = 60_000_000, 3_600_000_000
    assert 0.5 < (finals <= 5 * minute).mean() < 0.98  # type: ignore[operator]
    assert 0.002 < (finals > hour).mean() < 0.2  # type: ignore[operator]


def test_build_realistic_lake(tmp_path: Path) -> None:
    bench = _bench()
    n, seed = 500, 3
    lake = tmp_path / "lake"
    bench.build_realistic(lake, n, seed, 180)
    store = ParquetTrackingStore(lake, hash_key=bench.KEY)
    try:
        current = store.current().select(RECORD_COLUMNS).collect().sort("message_id")
        history = store.history().collect()
    finally:
        store.close()
    expected = (
        synthetic_records(n, seed=seed, hash_key=bench.KEY, days=bench.DAYS)
        .with_columns(to=pl.lit(None, pl.String), from_=pl.lit(None, pl.String))
        .select(RECORD_COLUMNS)
        .sort("message_id")
    )
    assert_frame_equal(current, expected)
    # every snapshot keeps its own recorded time and kind
    snaps = with_recorded_at(synthetic_snapshots(n, seed=seed, hash_key=bench.KEY, days=bench.DAYS))
    keys = ["message_id", "recorded_at", "snapshot_kind", "status"]
    assert_frame_equal(
        history.select(keys).sort(keys), snaps.select(keys).sort(keys), check_dtypes=False
    )
    # written in recorded order within each loaded chunk: seq follows recorded_at
    assert history.get_column("recorded_at").n_unique() > n
    first_seq = int(history.get_column("seq").min())  # type: ignore[arg-type]
    first_chunk = history.filter(pl.col("seq") <= first_seq + 200)
    assert first_chunk.sort("seq").get_column("recorded_at").is_sorted()
    spread = history.select((pl.col("recorded_at") - pl.col("requested_at")).max()).item()
    assert spread > timedelta(hours=1)
