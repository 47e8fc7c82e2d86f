"""Benchmark DeliveryAnalytics against hand-written Polars queries on the same lake files.

Usage::

    python benchmarks/bench_analytics.py --n 1000000 [--k 5] [--work DIR [--reuse]] [--out r.json]
    python benchmarks/bench_analytics.py --lake /tmp/scale/n10m/lake [--k 3] [--out r.json]
    python benchmarks/bench_analytics.py --lake /tmp/scale/n10m/lake --only latency
    python benchmarks/bench_analytics.py --realistic --n 10000000 --work DIR --build-only
    python benchmarks/bench_analytics.py --realistic --n 10000000 --work DIR --reuse --ops report

Builds a compacted lake of ``--n`` synthetic messages over 90 days
(:func:`kmsg_analytics._synthetic.synthetic_records`, loaded in chunks through
``store.append_table`` and folded with ``compact()``), or uses the lake given with
``--lake`` (only read: it is hard-linked into a scratch directory first). A lake built
in one load has every snapshot recorded at the load time, which leaves the report's rate
maturity little to do; ``--realistic`` builds one whose history looks polled instead
(``build_realistic``: sends, then polls, each recorded at its request time plus the
polling delays). Each operation
runs in a fresh process, once cold and then ``--k`` times warm (the median is reported),
and so does its baseline, each with its peak RSS and the load average around it:

* ``summary``: k-msg's ``getSummary`` over the 90 days with both breakdowns (target
  under 0.5 s at 10M). Baseline: one ``group_by(provider, type, status).len()`` over
  the ``current/`` files, the least work that answers the same question.
* ``series``: a 90-day daily delivery-rate series per provider (target under 0.5 s).
  Baseline: ``group_by(day, provider, status).len()``.
* ``latency``: p50/p90/p95/p99 per provider and type (target under 1.5 s). Ours
  computes three segments naively plus the Kaplan-Meier estimate; the baseline only
  the requested-to-delivered quantiles of delivered messages.
* ``report``: the full HTML report of the 90 days (``build_report``, what
  ``kmsg-analytics report --since 90d`` runs, after the command's ``skip_slow_imports``;
  target under 15 s and 1.5 GB at 10M), run once per process (``--k`` processes).
  Baseline: the three baselines above plus the
  least history work of its rate maturity (the number of distinct messages among the
  snapshots), in one process.

Prints our time, the baseline's, their ratio, both peak RSS and the target; checks
that both give the same counts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from kmsg_analytics import ParquetTrackingStore
from kmsg_analytics._analytics import DeliveryAnalytics
from kmsg_analytics._schema import POLARS_SCHEMA, SNAPSHOT_SCHEMA

KEY = "bench-key-0123456789"
DAYS = 90
TARGETS = {"summary": 0.5, "series": 0.5, "latency": 1.5, "report": 15.0}  # s, at 10M
REPORT_RSS_MB = 1536  # the report's peak memory target at 10M


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


def build_realistic(lake: Path, n: int, seed: int, chunk: int) -> float:
    """A lake whose history looks polled: each snapshot recorded when a service would have.

    Each message gets its send, then 0-2 poll snapshots (about 2.2 per message, about 1%
    still open at the end) from :func:`~kmsg_analytics._synthetic_snapshots.synthetic_snapshots`,
    recorded at ``requested_at`` plus the delays of the polling schedule
    (:func:`~kmsg_analytics._synthetic_snapshots.with_recorded_at`: seconds to minutes for
    most, hours for a tail). Messages are loaded ``chunk`` at a time, their snapshots in
    recorded order (one batch per chunk, so ``seq`` follows ``recorded_at``), then folded.
    """
    from kmsg_analytics._loading import frame_to_table
    from kmsg_analytics._synthetic_snapshots import synthetic_snapshots, with_recorded_at

    started = time.perf_counter()
    store = ParquetTrackingStore(lake, hash_key=KEY, compact_rows=1 << 62)  # fold once, at the end
    rows = 0
    try:
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            snaps = with_recorded_at(
                synthetic_snapshots(n, seed=seed, hash_key=KEY, days=DAYS, start=lo, stop=hi)
            ).sort("recorded_at", "step")
            table = frame_to_table(
                snaps.drop("step", "snapshot_kind", "recorded_at"),
                store.hash_key,
                keep_numbers=False,
            )
            for name in ("snapshot_kind", "recorded_at"):
                i = SNAPSHOT_SCHEMA.get_field_index(name)
                column = snaps.get_column(name).to_arrow().cast(SNAPSHOT_SCHEMA.field(i).type)
                table = table.set_column(i, SNAPSHOT_SCHEMA.field(i), column)
            _append_recorded(store, table)
            rows += table.num_rows
            log(f"  loaded {hi:,}/{n:,} messages, {rows:,} snapshots "
                f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
        report = store.compact(history=False)
        log(f"  folded {report.snapshot_rows:,} rows into {report.partitions_rewritten} partitions")
    finally:
        store.close()
    return time.perf_counter() - started


def _append_recorded(store: ParquetTrackingStore, table: Any) -> None:
    """``store.append_table(table)`` keeping each row's own ``recorded_at`` and kind.

    ``append_table`` stamps a whole batch with one time and kind (a bulk load's); a live
    lake's rows are stamped one by one as the service writes them. This publishes the
    batch the way ``append_table`` does, without the stamp (the store's own steps).
    """
    from kmsg_analytics._lakefs import writer_lock

    with store._mutex:
        store.flush()
        with writer_lock(store.paths):
            state = store._recover()
            state = store._publish_locked(table, None, state, keep_cache=True)
        store._maybe_compact(state)


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


def hand_history(lake: Path, start: Any, end: Any) -> int:
    """The least work of the report's rate maturity: distinct messages among the snapshots."""
    files = [str(p) for p in sorted((lake / "history").glob("*/*.parquet"))]
    frame = pl.scan_parquet(files, hive_partitioning=False).filter(
        pl.col("requested_at").is_between(start, end)
    )
    return int(frame.select(pl.col("message_id").n_unique()).collect().item())


def hand_report(lake: Path, start: Any, end: Any) -> tuple[Any, ...]:
    return (
        hand_summary(lake, start, end),
        hand_series(lake, start, end),
        hand_latency(lake, start, end),
        hand_history(lake, start, end),
    )


# --------------------------------------------------------------------------- one process


def _window(lake: Path) -> tuple[datetime, datetime]:
    hi = scan_current(lake).select(pl.col("requested_at").max()).collect().item()
    return hi - timedelta(days=DAYS), hi


def worker(op: str, side: str, lake: Path, k: int, out: Path) -> None:
    """Run one operation (``side`` ours or baseline) cold, then ``k`` times warm; write JSON."""
    started = time.perf_counter()
    an = DeliveryAnalytics(lake, hash_key=KEY) if side == "ours" else None
    start, end = _window(lake)
    setup = time.perf_counter() - started
    fns: dict[tuple[str, str], Callable[[], Any]] = {
        ("summary", "ours"): lambda: an.summary(  # type: ignore[union-attr]
            start, end, include_by_provider=True, include_by_type=True
        ),
        ("summary", "baseline"): lambda: hand_summary(lake, start, end),
        ("series", "ours"): lambda: an.rates(start, end, every="1d", by="provider_id"),  # type: ignore[union-attr]
        ("series", "baseline"): lambda: hand_series(lake, start, end),
        ("latency", "ours"): lambda: an.latency(start, end, by=["provider_id", "type"]),  # type: ignore[union-attr]
        ("latency", "baseline"): lambda: hand_latency(lake, start, end),
        ("report", "ours"): lambda: _report(an, start, end, out.with_suffix(".html")),
        ("report", "baseline"): lambda: hand_report(lake, start, end),
    }
    fn = fns[(op, side)]
    load = os.getloadavg()
    c0, t0 = time.process_time(), time.perf_counter()
    answer = fn()
    cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
    warm, warm_cpu = [], []
    for _ in range(k if op != "report" else 0):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
        warm_cpu.append(time.process_time() - c0)
    result = {
        "op": op,
        "side": side,
        "setup_s": setup,
        "cold_s": cold,
        "cold_cpu_s": cold_cpu,
        "warm_s": statistics.median(warm) if warm else None,
        "warm_cpu_s": statistics.median(warm_cpu) if warm_cpu else None,
        "warm_runs": warm,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_before": load,
        "load_after": os.getloadavg(),
    }
    if op == "report" and side == "ours":
        result["steps"] = answer
    else:
        result["answer"] = _digest(op, side, answer)
    out.write_text(json.dumps(result))


def _report(an: Any, start: datetime, end: datetime, out: Path) -> dict[str, float]:
    from kmsg_analytics._cli_report import skip_slow_imports
    from kmsg_analytics._report import build_report

    skip_slow_imports()  # what the ``report`` command does first, in its own process
    report = build_report(an, out=out, start=start, end=end, format="html")
    return {k: round(v, 3) for k, v in report.timings.items()}


def _digest(op: str, side: str, answer: Any) -> Any:
    """What ``_check`` compares, as JSON."""
    if op == "summary":
        if side == "ours":
            return {"total": answer.total, "by_status": answer.by_status}
        return answer.group_by("status").agg(pl.col("len").sum()).rows()
    if op == "series":
        if side == "ours":
            return [
                int(answer.get_column("total").sum()),
                int(answer.get_column("numerator").sum()),
            ]
        delivered = answer.filter(pl.col("status") == "DELIVERED").get_column("len").sum()
        return [int(answer.get_column("len").sum()), int(delivered)]
    if op == "latency":
        if side == "ours":
            naive = answer.table.filter(
                (pl.col("method") == "finished_only")
                & (pl.col("segment") == "requested_to_delivered")
            )
            return naive.select("provider_id", "type", "p50_s", "p90_s", "p95_s", "p99_s").rows()
        return answer.rows()
    return None


def run_op(op: str, side: str, lake: Path, k: int, scratch: Path) -> dict[str, Any]:
    """``worker`` in a fresh interpreter (so peak RSS and the cold run are this op's own)."""
    out = scratch / f"{op}-{side}.json"
    cmd = [sys.executable, __file__, "_worker", op, side, str(lake), str(k), str(out)]
    subprocess.run(cmd, check=True)
    return dict(json.loads(out.read_text()))


def _check(op: str, ours: dict[str, Any], base: dict[str, Any]) -> str:
    """Do both sides count the same messages?"""
    a: Any = ours.get("answer")
    b: Any = base.get("answer")
    if op == "summary":
        statuses = dict(b)
        ok = a["total"] == sum(statuses.values()) and all(
            n == statuses.get(s, 0) for s, n in a["by_status"].items()
        )
    elif op == "series":
        ok = a == b
    elif op == "latency":  # ours floors durations to whole seconds: the floor of the exact one
        exact = {(r[0], r[1]): r[2:] for r in b}
        ok = len(a) == len(exact) and all(
            [None if v is None else round(v * 1e6) for v in r[2:]]
            == [v // 1_000_000 * 1_000_000 for v in exact[(r[0], r[1])]]
            for r in a
        )
    else:
        return "-"
    return "same answer" if ok else "MISMATCH"


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in and args_in[0] == "_worker":
        op, side, where, k, out = args_in[1:6]
        worker(op, side, Path(where), int(k), Path(out))
        return 0
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=1_000_000, help="messages in the lake")
    p.add_argument("--k", type=int, default=5, help="warm runs per operation (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=500_000, help="messages per loaded chunk")
    p.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    p.add_argument("--reuse", action="store_true", help="reuse the lake built in --work before")
    p.add_argument(
        "--realistic",
        action="store_true",
        help="build a lake whose history looks polled: each snapshot recorded at its request "
        "time plus the polling delays (see build_realistic), not all at the load time",
    )
    p.add_argument("--build-only", action="store_true", help="build the lake, run nothing")
    p.add_argument("--lake", type=Path, help="benchmark this lake (only read) instead of building")
    p.add_argument(
        "--ops", default="summary,series,latency,report", help="comma-separated operations"
    )
    p.add_argument(
        "--only", choices=sorted(TARGETS), help="run only this operation (instead of --ops)"
    )
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(args_in)

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-analytics-"))
    built = None
    if args.lake is not None:
        lake = work / "lake"
        if lake.exists():
            shutil.rmtree(lake)
        shutil.copytree(args.lake, lake, copy_function=os.link)  # hard links: nothing copied
    else:
        lake = work / (f"real-{args.n}" if args.realistic else f"lake-{args.n}")
        if not (args.reuse and (lake / "_lake.json").exists()):
            if lake.exists():
                shutil.rmtree(lake)
            how = "a polled-looking history" if args.realistic else "one load"
            log(f"building a lake of {args.n:,} messages ({how}) in {lake}")
            maker = build_realistic if args.realistic else build
            built = maker(lake, args.n, args.seed, args.chunk)
    if args.build_only:
        print(f"lake at {lake}" + ("" if built is None else f", built in {built:.0f} s"))
        return 0
    scratch = work / "results"
    scratch.mkdir(exist_ok=True)
    rows = []
    try:
        for op in [args.only] if args.only else args.ops.split(","):
            k = args.k
            ours_runs = [run_op(op, "ours", lake, k, scratch)]
            if op == "report":  # one run per process: the report is its own warm-up
                ours_runs += [run_op(op, "ours", lake, k, scratch) for _ in range(max(k - 1, 0))]
            base = run_op(op, "baseline", lake, k, scratch)
            ours = ours_runs[0]
            ours_s = (
                statistics.median(r["cold_s"] for r in ours_runs)
                if op == "report"
                else ours["warm_s"]
            )
            base_s = base["cold_s"] if op == "report" else base["warm_s"]
            row = {
                "op": op,
                "ours_s": ours_s,
                "ours_cold_s": ours["cold_s"],
                "baseline_s": base_s,
                "ratio": ours_s / base_s,
                "target_s": TARGETS[op],
                "ours_peak_rss_mb": max(r["peak_rss_mb"] for r in ours_runs),
                "baseline_peak_rss_mb": base["peak_rss_mb"],
                "load": [ours["load_before"][0], base["load_after"][0]],
                "check": _check(op, ours, base),
                "ours": ours_runs,
                "baseline": base,
            }
            rows.append(row)
            log(
                f"  {op}: ours {ours_s:.3f} s (cold {ours['cold_s']:.3f}), baseline "
                f"{base_s:.3f} s, {row['check']}"
            )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    source = str(args.lake) if args.lake else f"{args.n:,} synthetic messages"
    print(f"\nDeliveryAnalytics on {source} ({DAYS} days; fresh process per operation)")
    if built is not None:
        print(f"lake built in {built:.0f} s")
    print(
        f"{'operation':<9} {'ours':>8} {'cold':>8} {'baseline':>9} {'ratio':>6} "
        f"{'target':>7} {'RSS ours':>9} {'RSS base':>9} {'load':>10}  check"
    )
    for r in rows:
        target = f"<{r['target_s']:g}s"
        load = f"{r['load'][0]:.1f}-{r['load'][1]:.1f}"
        print(f"{r['op']:<9} {r['ours_s']:>7.3f}s {r['ours_cold_s']:>7.3f}s "
              f"{r['baseline_s']:>8.3f}s {r['ratio']:>6.2f} {target:>7} "
              f"{r['ours_peak_rss_mb']:>7.0f}MB {r['baseline_peak_rss_mb']:>7.0f}MB "
              f"{load:>10}  {r['check']}")  # fmt: skip
    report = next((r for r in rows if r["op"] == "report"), None)
    if report is not None:
        steps = report["ours"][0].get("steps", {})
        print("report steps (first run): " + ", ".join(f"{k} {v:.2f}s" for k, v in steps.items()))
        print(f"report peak RSS target: {REPORT_RSS_MB} MB")
    if args.out:
        args.out.write_text(json.dumps({"source": source, "k": args.k, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
