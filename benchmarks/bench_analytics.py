"""Benchmark DeliveryAnalytics against hand-written Polars queries on the same lake files.

Usage::

    python benchmarks/bench_analytics.py --n 1000000 [--k 5] [--work DIR [--reuse]] [--out r.json]

Builds a compacted lake of ``--n`` synthetic messages over 90 days
(:func:`kmsg_analytics._synthetic.synthetic_records`, loaded in chunks through
``store.append_table`` and folded with ``compact()``), then times, each as the median
of ``--k`` runs after one warm-up:

* ``summary``: k-msg's ``getSummary`` over the 90 days with both breakdowns (target
  under 0.5 s at 10M). Baseline: one ``group_by(provider, type, status).len()`` over
  the ``current/`` files, the least work that answers the same question.
* ``series``: a 90-day daily delivery-rate series per provider (target under 0.5 s).
  Baseline: ``group_by(day, provider, status).len()``.
* ``latency``: p50/p90/p95/p99 per provider and type (target under 1.5 s). Ours
  computes three segments naively plus the Kaplan-Meier estimate; the baseline only
  the requested-to-delivered quantiles of delivered messages.

Prints our time, the baseline's, their ratio and the target; checks that both give
the same counts.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

from kmsg_analytics import ParquetTrackingStore
from kmsg_analytics._analytics import DeliveryAnalytics
from kmsg_analytics._schema import POLARS_SCHEMA, SNAPSHOT_SCHEMA

KEY = "bench-key-0123456789"
DAYS = 90
TARGETS = {"summary": 0.5, "series": 0.5, "latency": 1.5}  # seconds, at 10M messages


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def synthetic_frame(n: int, seed: int, start: int, stop: int) -> pl.DataFrame:
    """Rows ``start:stop`` of ``n`` synthetic messages (the shared generator if present)."""
    try:
        from kmsg_analytics._synthetic import synthetic_records
    except ImportError:  # pragma: no cover - before the generator existed
        return _fallback_frame(n, seed, start, stop)
    return synthetic_records(n, seed=seed, hash_key=KEY, days=DAYS, start=start, stop=stop)


def _fallback_frame(n: int, seed: int, start: int, stop: int) -> pl.DataFrame:
    """A small stand-in generator: uniform times, fixed shares (used only without _synthetic)."""
    from datetime import UTC, datetime

    end = datetime(2026, 11, 1, tzinfo=UTC)
    i = pl.int_range(start, stop, dtype=pl.Int64)
    u = (i.hash(seed) % 10_000).cast(pl.Float64) / 10_000
    req = pl.lit(end - timedelta(days=DAYS)) + pl.duration(
        microseconds=i * (DAYS * 86_400_000_000 // n)
    )
    status = (
        pl.when(u < 0.88).then(pl.lit("DELIVERED")).when(u < 0.94).then(pl.lit("FAILED"))
        .when(u < 0.96).then(pl.lit("UNKNOWN")).when(u < 0.97).then(pl.lit("CANCELLED"))
        .otherwise(pl.lit("SENT"))
    )  # fmt: skip
    delay = pl.duration(microseconds=(u * 600_000_000).cast(pl.Int64))
    return pl.select(
        message_id=pl.format("m{}", i),
        provider_id=pl.lit(["solapi", "nhn", "iwinv", "kakao-biz", "aligo"]).list.get(
            (i % 5).cast(pl.Int32)
        ),
        provider_message_id=pl.format("G{}", i),
        type=pl.lit(["ALIMTALK", "SMS", "LMS"]).list.get((i % 3).cast(pl.Int32)),
        to_hash=pl.format("{}", i.hash(1)),
        to_masked=pl.lit("010****0000"),
        requested_at=req,
        status=status,
        sent_at=req + delay / 10,
        delivered_at=pl.when(status == "DELIVERED").then(req + delay),
        status_updated_at=req + delay,
        next_check_at=req + delay,
    )


def to_lake_table(frame: pl.DataFrame) -> Any:
    """Synthetic records in lake form (the columns of SNAPSHOT_SCHEMA)."""
    frame = frame.with_columns(
        pl.lit(0, pl.Int64).alias("seq"),
        pl.lit("load").alias("snapshot_kind"),
        pl.col("status_updated_at").alias("recorded_at"),
    )
    cols = [
        (pl.col(name) if name in frame.columns else pl.lit(None)).cast(dtype).alias(name)
        for name, dtype in POLARS_SCHEMA.items()
    ]
    out = frame.select(cols).with_columns(
        pl.col("metadata").fill_null("{}"),
        pl.col("attempt_count").fill_null(0),
        pl.col("retention_class").fill_null("telecomMetadata"),
        (pl.col("requested_at").dt.year() * 100 + pl.col("requested_at").dt.month())
        .cast(pl.Int32)
        .alias("retention_bucket_ym"),
    )
    return out.to_arrow().cast(SNAPSHOT_SCHEMA)


def build(lake: Path, n: int, seed: int, chunk: int) -> float:
    started = time.perf_counter()
    store = ParquetTrackingStore(lake, hash_key=KEY, compact_rows=1 << 62)  # fold once, at the end
    try:
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            store.append_table(to_lake_table(synthetic_frame(n, seed, lo, hi)), kind="load")
            log(f"  loaded {hi:,}/{n:,} messages ({time.perf_counter() - started:.0f} s)")
        report = store.compact(history=False)
        log(f"  folded {report.snapshot_rows:,} rows into {report.partitions_rewritten} partitions")
    finally:
        store.close()
    return time.perf_counter() - started


# --------------------------------------------------------------------------- the hand-written baselines


def scan_current(lake: Path) -> pl.LazyFrame:
    return pl.scan_parquet(
        str(lake / "current" / "**" / "*.parquet"),
        hive_partitioning=True,
        hive_schema={"requested_date": pl.Date},
    )


def window_filter(lake: Path, start: Any, end: Any) -> pl.LazyFrame:
    return scan_current(lake).filter(
        pl.col("requested_date").is_between(start.date(), end.date()),
        pl.col("requested_at").is_between(start, end),
    )


def hand_summary(lake: Path, start: Any, end: Any) -> pl.DataFrame:
    return window_filter(lake, start, end).group_by("provider_id", "type", "status").len().collect()


def hand_series(lake: Path, start: Any, end: Any) -> pl.DataFrame:
    return (
        window_filter(lake, start, end)
        .group_by(pl.col("requested_at").dt.truncate("1d").alias("day"), "provider_id", "status")
        .len()
        .collect()
    )


def hand_latency(lake: Path, start: Any, end: Any) -> pl.DataFrame:
    d = (
        (pl.col("delivered_at") - pl.col("requested_at"))
        .dt.total_microseconds()
        .clip(lower_bound=0)
    )
    ordered = d.sort()
    n = pl.len().cast(pl.Int64)
    return (  # the same percentile definition: the ceil(n*p)-th smallest value
        window_filter(lake, start, end)
        .filter(pl.col("delivered_at").is_not_null())
        .group_by("provider_id", "type")
        .agg(
            *(
                ordered.get((n * p + 999) // 1000 - 1).alias(f"p{p // 10}")
                for p in (500, 900, 950, 990)
            )
        )
        .collect()
    )


# --------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any], k: int) -> tuple[float, Any]:
    result = fn()  # warm-up (and the answer checked below)
    runs = []
    for _ in range(k):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=1_000_000, help="messages in the lake")
    p.add_argument("--k", type=int, default=5, help="timed runs per operation (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=500_000, help="messages per loaded chunk")
    p.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    p.add_argument("--reuse", action="store_true", help="reuse the lake built in --work before")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-analytics-"))
    lake = work / f"lake-{args.n}"
    built = None
    if not (args.reuse and (lake / "_lake.json").exists()):
        if lake.exists():
            shutil.rmtree(lake)
        log(f"building a lake of {args.n:,} messages in {lake}")
        built = build(lake, args.n, args.seed, args.chunk)
    try:
        an = DeliveryAnalytics(lake, hash_key=KEY)
        hi = an.store.current().select(pl.col("requested_at").max()).collect().item()
        start, end = hi - timedelta(days=DAYS), hi
        log(f"window {start} .. {end}")
        ops: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
            "summary": (
                lambda: an.summary(start, end, include_by_provider=True, include_by_type=True),
                lambda: hand_summary(lake, start, end),
            ),
            "series": (
                lambda: an.rates(start, end, every="1d", by="provider_id"),
                lambda: hand_series(lake, start, end),
            ),
            "latency": (
                lambda: an.latency(start, end, by=["provider_id", "type"]),
                lambda: hand_latency(lake, start, end),
            ),
        }
        rows = []
        for name, (ours_fn, base_fn) in ops.items():
            ours, ours_result = timed(ours_fn, args.k)
            base, base_result = timed(base_fn, args.k)
            check = _check(name, ours_result, base_result)
            rows.append({"op": name, "ours_s": ours, "baseline_s": base, "ratio": ours / base,
                         "target_s": TARGETS[name], "check": check})  # fmt: skip
            log(f"  {name}: ours {ours:.3f} s, baseline {base:.3f} s, {check}")
        an.close()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nDeliveryAnalytics at {args.n:,} messages ({DAYS} days; median of {args.k} runs)")
    if built is not None:
        print(f"lake built in {built:.0f} s")
    print(
        f"{'operation':<10} {'ours':>9} {'baseline':>9} {'ratio':>6}  {'target (10M)':>12}  check"
    )
    for r in rows:
        print(f"{r['op']:<10} {r['ours_s']:>8.3f}s {r['baseline_s']:>8.3f}s {r['ratio']:>6.2f}  "
              f"{'< ' + format(r['target_s'], 'g') + ' s':>12}  {r['check']}")  # fmt: skip
    print(f"peak RSS of this process: {peak:,.0f} MB")
    if args.out:
        args.out.write_text(
            json.dumps({"n": args.n, "k": args.k, "results": rows, "peak_rss_mb": peak}, indent=2)
        )
    return 0


def _check(name: str, ours: Any, base: pl.DataFrame) -> str:
    """Do both sides count the same messages?"""
    if name == "summary":
        ok = ours.total == base.get_column("len").sum()
        ok = ok and all(
            ours.by_status[s] == base.filter(pl.col("status") == s).get_column("len").sum()
            for s in ours.by_status
        )
    elif name == "series":
        ok = ours.get_column("total").sum() == base.get_column("len").sum()
        ok = (
            ok
            and ours.get_column("numerator").sum()
            == base.filter(pl.col("status") == "DELIVERED").get_column("len").sum()
        )
    else:  # ours floors durations to whole seconds: the floor of the exact percentile
        naive = ours.table.filter(
            (pl.col("method") == "finished_only") & (pl.col("segment") == "requested_to_delivered")
        )
        merged = naive.join(base, on=["provider_id", "type"])
        ok = merged.height == base.height
        for p in ("p50", "p90", "p95", "p99"):
            ours_us = (merged.get_column(f"{p}_s") * 1e6).round().cast(pl.Int64)
            floored = (merged.get_column(p) // 1_000_000) * 1_000_000
            ok = ok and ours_us.equals(floored, check_names=False)
    return "same answer" if ok else "MISMATCH"


if __name__ == "__main__":
    raise SystemExit(main())
