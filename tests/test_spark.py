"""The report through Ibis (Spark local[2], DuckDB) gives the Polars numbers on the same lake.

One lake of a million synthetic messages (about 2.2 snapshots each), folded, then
given snapshots past the watermark that the readers must merge: polls of open
messages, sends that must not beat a polled state, and re-sends that move a message
to another requested day. :class:`DeliveryAnalytics` (Polars, merge-on-read) is the
reference; :func:`ibis_report` and :func:`ibis_rate_table` over :func:`lake_table`
must give the same counts exactly and the same rates within 1e-12.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from kmsg_analytics import ParquetTrackingStore
from kmsg_analytics._analytics import DeliveryAnalytics, DeliverySummary
from kmsg_analytics._distributed import (
    LAKE_COLUMNS,
    fetch,
    ibis_report,
    lake_files,
    lake_table,
    spark_backend,
)
from kmsg_analytics._loading import frame_to_table
from kmsg_analytics._metrics import RATES, ibis_rate_table, polars_rate_table
from kmsg_analytics._synthetic import (
    DEFAULT_END,
    load_snapshots,
    synthetic_poll_updates,
    synthetic_snapshots,
)

KEY = "test-key-123"
N = 1_000_000
START = DEFAULT_END - timedelta(days=91)
END = DEFAULT_END
WEEK = (END - timedelta(days=7), END)
SUMMARY_ARGS: dict[str, Any] = {
    "by": ["provider_id", "status"],
    "include_by_provider": True,
    "include_by_type": True,
}
TOL = 1e-12

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java 17+")


# --------------------------------------------------------------------------- lakes


def _after_fold(store: ParquetTrackingStore, n_polls: int) -> None:
    """Snapshots past the watermark: polls, sends that must lose, re-sends that move."""
    current = pl.read_parquet(store.paths.open_file()).drop("requested_date", "to", "from_")
    polls = synthetic_poll_updates(current.head(n_polls), now=DEFAULT_END, seed=5)
    keep = [c for c in polls.columns if c not in ("seq", "snapshot_kind", "recorded_at")]
    store.append_table(
        frame_to_table(polls.select(keep), store.hash_key, keep_numbers=False), kind="poll"
    )
    folded = store.current().drop("requested_date", "to", "from_")
    # a late send of a delivered message: a send never replaces a polled state
    late = (
        folded.filter(pl.col("status") == "DELIVERED")
        .head(max(1, n_polls // 10))
        .collect()
        .with_columns(status=pl.lit("SENT"), delivered_at=None)
    )
    # a message that only ever had a send, sent again a day later: it moves a day
    again = (
        folded.filter(pl.col("snapshot_kind") == "send")
        .head(max(1, n_polls // 10))
        .collect()
        .with_columns(pl.col("requested_at") + timedelta(days=1))
    )
    for frame in (late, again):
        table = frame_to_table(frame.select(keep), store.hash_key, keep_numbers=False)
        store.append_table(table, kind="send")


def build_lake(path: Path, n: int, *, chunk: int, n_polls: int) -> Path:
    """``n`` messages loaded in chunks and folded, then snapshots left past the watermark."""
    store = ParquetTrackingStore(path, hash_key=KEY, compact_rows=10**12)
    for lo in range(0, n, chunk):
        snaps = synthetic_snapshots(n, seed=5, hash_key=KEY, start=lo, stop=min(n, lo + chunk))
        load_snapshots(store, snaps)
    store.compact(history=False)
    _after_fold(store, n_polls)
    store.close()
    return path


@pytest.fixture(scope="module")
def big_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lake(tmp_path_factory.mktemp("spark") / "lake", N, chunk=250_000, n_polls=20_000)


@pytest.fixture(scope="module")
def polars_side(big_lake: Path) -> Iterator[DeliveryAnalytics]:
    with DeliveryAnalytics(big_lake, hash_key=KEY) as an:
        yield an


@pytest.fixture(scope="module")
def spark(big_lake: Path) -> Iterator[Any]:
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java 17+ (.ci/run installs openjdk-17-jre-headless)")
    con = spark_backend(master="local[2]", shuffle_partitions=2, driver_memory="1g")
    yield con
    con._session.stop()


# --------------------------------------------------------------------------- comparing


def assert_same(got: pl.DataFrame, want: pl.DataFrame) -> None:
    """Same columns, rows and dtypes; non-float columns exactly equal, floats within TOL."""
    assert got.columns == want.columns
    assert got.height == want.height
    floats = [c for c, t in want.schema.items() if t.is_float()]
    others = [c for c in want.columns if c not in floats]
    assert got.select(others).equals(want.select(others)), (got, want)
    for c in floats:
        a, b = got.get_column(c), want.get_column(c)
        assert a.is_null().equals(b.is_null()), c
        diff = (a - b).abs().max()
        assert diff is None or float(diff) <= TOL, (c, diff)  # type: ignore[arg-type]


def assert_same_summary(got: DeliverySummary, want: DeliverySummary) -> None:
    assert got.total == want.total
    assert got.by_status == want.by_status
    for name in ("delivered_of_total_pct", "failed_of_total_pct", "delivered_of_finalized_pct"):
        assert abs(getattr(got.rates, name) - getattr(want.rates, name)) <= TOL, name
    assert_same(got.metrics, want.metrics)
    assert_same(got.to_polars(), want.to_polars())
    for a, b in ((got.by_provider, want.by_provider), (got.by_type, want.by_type)):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert sorted(a) == sorted(b)
            for key in a:
                assert_same_summary(a[key], b[key])


def _utc(frame: pl.DataFrame) -> pl.DataFrame:
    """Bucket starts as UTC microseconds (engines return naive or aware timestamps)."""
    col = pl.col("bucket_start")
    dtype = frame.schema["bucket_start"]
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
        col = col.dt.replace_time_zone("UTC")
    ints = [c for c, t in frame.schema.items() if t.is_integer()]
    return frame.with_columns(
        col.dt.convert_time_zone("UTC").dt.cast_time_unit("us"), pl.col(ints).cast(pl.Int64)
    )


def check_engine(con: Any, lake: Path, an: DeliveryAnalytics, *, filters: bool = True) -> None:
    """The engine's summary (filtered too) and rate table equal the Polars ones."""
    assert_same_summary(
        ibis_report(con, lake, START, END, **SUMMARY_ARGS), an.summary(START, END, **SUMMARY_ARGS)
    )
    if filters:  # backend-neutral Ibis filters; Spark skips them to save a query
        narrow: dict[str, Any] = {"provider_id": ["solapi", "iwinv"], "type": "SMS", "by": "type"}
        assert_same_summary(ibis_report(con, lake, *WEEK, **narrow), an.summary(*WEEK, **narrow))
    rates = list(RATES.values())
    got = fetch(
        con,
        ibis_rate_table(
            lake_table(con, lake), START, END, by=["provider_id"], every="1d", rates=rates
        ),
    )
    want = polars_rate_table(
        an.store.current(), START, END, by=["provider_id"], every="1d", rates=rates
    ).collect()
    assert_same(_utc(got).select(want.columns), _utc(want))


# --------------------------------------------------------------------------- the million


@pytest.mark.slow
def test_the_lake_has_a_million_messages_and_a_delta(big_lake: Path) -> None:
    files = lake_files(big_lake)
    assert files.current
    assert files.delta
    assert files.watermark > 0
    with ParquetTrackingStore(big_lake, hash_key=KEY) as store:
        assert store.current().select(pl.len()).collect().item() == N


@pytest.mark.slow
@needs_java
def test_spark_gives_the_polars_numbers(
    spark: Any, big_lake: Path, polars_side: DeliveryAnalytics
) -> None:
    check_engine(spark, big_lake, polars_side, filters=False)


@pytest.mark.slow
def test_duckdb_through_ibis_gives_the_polars_numbers(
    big_lake: Path, polars_side: DeliveryAnalytics
) -> None:
    import ibis

    con = ibis.duckdb.connect(threads=2)
    con.raw_sql("SET TimeZone = 'UTC'")
    check_engine(con, big_lake, polars_side)
    con.disconnect()


# --------------------------------------------------------------------------- small lakes (fast)


def test_lake_table_follows_the_store_in_every_state(tmp_path: Path) -> None:
    import ibis

    con = ibis.duckdb.connect(threads=1)
    con.raw_sql("SET TimeZone = 'UTC'")
    store = ParquetTrackingStore(tmp_path / "lake", hash_key=KEY, compact_rows=10**12)

    def check() -> None:
        want = store.current().select(LAKE_COLUMNS).sort("message_id").collect()
        got = fetch(con, lake_table(con, store)).sort("message_id")
        assert got.height == want.height
        assert got.select("message_id", "seq", "status").equals(
            want.select("message_id", "seq", "status")
        )
        with DeliveryAnalytics(store) as an:
            assert_same_summary(
                ibis_report(con, store, START, END, **SUMMARY_ARGS),
                an.summary(START, END, **SUMMARY_ARGS),
            )

    check()  # empty
    load_snapshots(store, synthetic_snapshots(3_000, seed=9, hash_key=KEY))
    check()  # nothing folded: everything is past the watermark
    store.compact(history=False)
    assert not lake_files(store).delta
    check()  # folded: current/ alone
    _after_fold(store, 200)
    check()  # polls, losing sends and moves past the watermark
    store.close()


def test_lake_table_loses_nothing_to_a_fold_after_the_files_were_listed(
    tmp_path: Path,
) -> None:
    """The files are listed, then a patch is folded before the engine reads them.

    a was folded (watermark w); b waits past w. The fold rewrites a's day with a's new
    row (seq past w, not in the listed delta): it must stand in for the row it replaced.
    """
    import ibis

    from kmsg_analytics import DeliveryTrackingService
    from tests._helpers import Gateway, send_pair

    con = ibis.duckdb.connect(threads=1)
    store = ParquetTrackingStore(tmp_path / "lake", hash_key=KEY, compact_rows=10**12)
    svc = DeliveryTrackingService([Gateway()], store=store)
    svc.record_send(*send_pair("a", START + timedelta(days=1)))
    store.compact(history=False)
    svc.record_send(*send_pair("b", START + timedelta(days=2)))
    store.flush()
    files = lake_files(store)
    assert files.delta
    store.patch("a", {"status": "FAILED"})
    store.compact(history=False)
    got = fetch(con, lake_table(con, files)).sort("message_id")
    assert got.get_column("message_id").to_list() == ["a", "b"]
    assert got.get_column("status").to_list()[0] == "FAILED"
    store.close()


def test_report_arguments_are_checked(tmp_path: Path) -> None:
    import ibis

    from kmsg_analytics import InvalidRecordError, LakeError

    con = ibis.duckdb.connect(threads=1)
    with pytest.raises(LakeError, match="no kmsg-analytics lake"):
        ibis_report(con, tmp_path, START, END)
    ParquetTrackingStore(tmp_path / "lake", hash_key=KEY).close()
    with pytest.raises(InvalidRecordError, match="min_n"):
        ibis_report(con, tmp_path / "lake", START, END, min_n=0)
    with pytest.raises(InvalidRecordError, match="by"):
        ibis_report(con, tmp_path / "lake", START, END, by="nope")
    with pytest.raises(InvalidRecordError, match="start"):
        ibis_report(con, tmp_path / "lake", END, START)
    with pytest.raises(InvalidRecordError, match="columns"):
        lake_table(con, tmp_path / "lake", columns=["nope"])
    assert lake_files(tmp_path / "lake").delta == ()
