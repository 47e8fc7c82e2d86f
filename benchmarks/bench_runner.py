"""Benchmark the polling runner and its speed targets.

Usage::

    python benchmarks/bench_runner.py [--n 10000] [--latency-ms 20] [--concurrency 50]
        [--lake-size 1000000] [--write-rows 200] [--repeat 3] [--work DIR] [--out FILE]

Measures, each as the median of ``--repeat`` runs:

1. **One run over ``--n`` due messages** with an ``async`` provider that answers after
   ``--latency-ms`` (``asyncio.sleep``), ``concurrency=--concurrency``, on a Parquet lake
   holding just those messages (compacted, so they sit in the open set as in a lake
   that has been running) and on the in-memory store. Target: at most 1.25x the ideal
   ``n / concurrency x latency`` (10,000 / 50 x 20 ms = 4 s).
2. **The runner's own work per checked message**: the same run with a provider that
   answers at once (0 ms), divided by ``n``. Everything the runner does is in it:
   taking the due list, building queries, applying answers, the terminal-state guard
   and the snapshot write. Target: under 0.2 ms.
3. **One run's snapshot write of ``--write-rows`` messages on a lake of
   ``--lake-size`` records** (generated, 90 days, 1% open, compacted):
   ``store.append_snapshots(records, kind="poll")`` as a run calls it, and a whole
   ``run_once`` of that many due messages with a 0 ms provider. Target: the write under
   20 ms however large the lake.

Lakes are built once under ``--work`` (kept between invocations) and copied for each
measured run, so every run starts from the same state. A warm-up run in the same
process pays the one-time costs (DuckDB connection, imports) before anything is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from kmsg_analytics import (
    DeliveryTrackingService,
    InMemoryTrackingStore,
    ParquetTrackingStore,
)
from kmsg_analytics._providers import DeliveryStatusQuery, DeliveryStatusResult, PollingConfig
from kmsg_analytics._schema import SNAPSHOT_SCHEMA, records_to_table

KEY = "bench-key-0123456789"
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Gateway:
    """Answers DELIVERED after ``latency`` seconds (``asyncio.sleep``; none at 0)."""

    def __init__(self, provider_id: str, latency: float) -> None:
        self.id = provider_id
        self.latency = latency

    async def get_delivery_status(self, query: DeliveryStatusQuery) -> DeliveryStatusResult:
        if self.latency:
            await asyncio.sleep(self.latency)
        return DeliveryStatusResult(
            self.id, query.provider_message_id, "DELIVERED", status_code="4000", delivered_at=NOW
        )


_PROVIDERS = ("solapi", "iwinv", "aligo")
_TYPES = ("ALIMTALK", "SMS", "LMS", "MMS")


def records(n: int, *, seed: int, end: datetime, days: float, open_every: int) -> pl.DataFrame:
    """``n`` tracking records requested over ``days`` days before ``end``, oldest first.

    Every ``open_every``-th one is still ``SENT`` and due at ``end`` (the rest are
    delivered or failed). Numbers are given as hash and mask only.
    """
    i = pl.int_range(n, dtype=pl.Int64)
    step_us = int(days * 86_400_000_000 / max(n, 1))
    start = end - timedelta(days=days)
    mix = (i * 2_654_435_761 + seed) % 1_000_003
    open_ = (i % open_every) == 0
    requested = pl.lit(start) + pl.duration(microseconds=i * step_us)
    frame = pl.select(
        message_id=pl.format("bench-{}-{}", pl.lit(seed), i),
        provider_id=pl.lit(pl.Series(_PROVIDERS)).gather(i % len(_PROVIDERS)),
        provider_message_id=pl.format("G{}-{}", pl.lit(seed), i),
        type=pl.lit(pl.Series(_TYPES)).gather(mix % len(_TYPES)),
        to_hash=pl.format("{}", mix).str.pad_start(64, "0"),
        to_masked=pl.format("010****{}", (mix % 10_000).cast(pl.String).str.pad_start(4, "0")),
        requested_at=requested,
        status=pl.when(open_)
        .then(pl.lit("SENT"))
        .when(mix % 20 == 0)
        .then(pl.lit("FAILED"))
        .otherwise(pl.lit("DELIVERED")),
        attempt_count=pl.when(open_).then(0).otherwise(2).cast(pl.Int32),
        next_check_at=pl.when(open_).then(pl.lit(end - timedelta(seconds=1))).otherwise(requested),
    )
    return frame.with_columns(status_updated_at=pl.col("requested_at"))


def due_records(n: int, seed: int = 1) -> pl.DataFrame:
    """``n`` open records requested in the hour before NOW, all due at NOW."""
    return records(n, seed=seed, end=NOW - timedelta(minutes=1), days=1 / 24, open_every=1)


def service(store: Any, latency: float, concurrency: int, batch: int) -> DeliveryTrackingService:
    # a long tracking window: the large lake's open records (spread over 90 days) are all asked
    polling = PollingConfig(
        batch_size=batch,
        concurrency=concurrency,
        check_timeout_ms=None,
        max_tracking_duration_ms=400 * 86_400_000,
    )
    gateways = [Gateway(p, latency) for p in _PROVIDERS]
    return DeliveryTrackingService(gateways, store=store, polling=polling, clock=lambda: NOW)


def build_lake(path: Path, frame: pl.DataFrame) -> None:
    marker = path / "_built"
    fingerprint = ",".join(SNAPSHOT_SCHEMA.names)  # rebuilt when the lake's columns change
    if marker.exists() and marker.read_text() == fingerprint:
        return
    shutil.rmtree(path, ignore_errors=True)
    started = time.perf_counter()
    store = ParquetTrackingStore(path, hash_key=KEY)
    svc = service(store, 0.0, 1, 1)
    for lo in range(0, frame.height, 250_000):
        svc.load_records(frame.slice(lo, 250_000))
        store.compact(history=False)
    store.compact()
    svc.close()
    marker.write_text(fingerprint)
    log(f"  built {path.name}: {frame.height:,} records in {time.perf_counter() - started:.1f}s")


def copy_lake(template: Path, scratch: Path) -> Path:
    """A private copy of a built lake: hard links (the store replaces files, never edits them)."""
    target = Path(tempfile.mkdtemp(dir=scratch)) / "lake"
    shutil.copytree(template, target, copy_function=os.link)
    return target


def warm_up(scratch: Path) -> None:
    lake = Path(tempfile.mkdtemp(dir=scratch)) / "lake"
    with service(ParquetTrackingStore(lake, hash_key=KEY), 0.0, 4, 100) as svc:
        svc.load_records(due_records(50, seed=99))
        svc.run_once()
    with service(InMemoryTrackingStore(hash_key=KEY), 0.0, 4, 100) as svc:
        svc.load_records(due_records(50, seed=99))
        svc.run_once()


def timed_run(store: Any, latency: float, concurrency: int, n: int) -> dict[str, Any]:
    with service(store, latency, concurrency, n) as svc:
        started, cpu = time.perf_counter(), time.process_time()
        report = svc.run_once()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert report.checked == n, report
    assert report.written == n, report
    assert not report.errors_by_code, report
    return {"wall": wall, "cpu": cpu, "phases": dict(report.phases)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of wall time, process CPU time (all threads) and each phase of the runs."""
    walls = [r["wall"] for r in runs]
    phases = {
        k: statistics.median(r["phases"].get(k, 0.0) for r in runs) for k in runs[0]["phases"]
    }
    return {
        "median_s": statistics.median(walls),
        "runs_s": walls,
        "cpu_s": statistics.median(r["cpu"] for r in runs),
        "phases_s": phases,
    }


def bench_run(args: argparse.Namespace, scratch: Path, template: Path) -> dict[str, Any]:
    n, c = args.n, args.concurrency
    latency = args.latency_ms / 1000
    ideal = n / c * latency
    frame = due_records(n)
    out: dict[str, Any] = {
        "n": n,
        "concurrency": c,
        "latency_ms": args.latency_ms,
        "ideal_s": ideal,
    }
    for kind in ("parquet", "memory"):
        for label, lat in (("provider", latency), ("zero", 0.0)):
            runs = []
            for _ in range(args.repeat):
                if kind == "parquet":
                    store: Any = ParquetTrackingStore(copy_lake(template, scratch), hash_key=KEY)
                    # a runner opens its store's DuckDB connection once for its whole life;
                    # a run is timed as it is in steady state, without the ~40 ms connect
                    assert store.backend is not None
                else:
                    store = InMemoryTrackingStore(hash_key=KEY)
                    DeliveryTrackingService([Gateway("solapi", 0)], store=store).load_records(frame)
                runs.append(timed_run(store, lat, c, n))
            summary = summarize(runs)
            head = f"  {kind}: {n:,} due, "
            if label == "provider":
                summary["ratio_to_ideal"] = summary["median_s"] / ideal
                log(
                    f"{head}{args.latency_ms:g} ms provider: {summary['median_s']:.2f}s = "
                    f"{summary['ratio_to_ideal']:.3f}x the ideal {ideal:.2f}s "
                    f"(CPU {summary['cpu_s']:.2f}s)  {_fmt(summary)}"
                )
            else:
                summary["per_message_ms"] = summary["median_s"] / n * 1000
                summary["cpu_per_message_ms"] = summary["cpu_s"] / n * 1000
                own = sum(summary["phases_s"].get(k, 0.0) for k in ("checks", "guard"))
                summary["runner_only_per_message_ms"] = own / n * 1000
                log(
                    f"{head}0 ms provider: {summary['median_s']:.3f}s = "
                    f"{summary['per_message_ms']:.4f} ms per message (CPU "
                    f"{summary['cpu_per_message_ms']:.4f} ms; checks+guard "
                    f"{summary['runner_only_per_message_ms']:.4f} ms)  {_fmt(summary)}"
                )
            out[f"{kind}_{label}"] = summary
    return out


def _fmt(summary: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in summary["phases_s"].items()) + ")"


def bench_write(args: argparse.Namespace, scratch: Path, big: Path) -> dict[str, Any]:
    rows = args.write_rows
    lake = copy_lake(big, scratch)
    store = ParquetTrackingStore(lake, hash_key=KEY)
    due = store.list_due(NOW + timedelta(days=30), rows * (args.repeat + 2))
    assert len(due) >= rows, f"only {len(due)} open records in the lake"
    writes, cpus, baselines = [], [], []
    for i in range(args.repeat + 2):  # the first two are warm-up
        batch = [
            replace(
                r,
                status="DELIVERED",
                attempt_count=r.attempt_count + 1,
                last_checked_at=NOW,
                next_check_at=NOW,
            )
            for r in (due[(i * rows + j) % len(due)] for j in range(rows))
        ]
        started, cpu = time.perf_counter(), time.process_time()
        store.append_snapshots(batch, kind="poll", recorded_at=int(NOW.timestamp() * 1_000_000))
        writes.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
        # baseline, same rows, same run: the batch as an Arrow table written by pyarrow
        started = time.perf_counter()
        table = records_to_table(batch, kind="poll", recorded_at=0)
        pq.write_table(table, scratch / f"baseline-{i}.parquet", compression="zstd")
        baselines.append(time.perf_counter() - started)
    records = store.stats()
    store.close()
    write_ms = statistics.median(writes[2:]) * 1000
    cpu_ms = statistics.median(cpus[2:]) * 1000
    base_ms = statistics.median(baselines[2:]) * 1000
    log(
        f"  lake of {args.lake_size:,} records: append_snapshots of {rows} = {write_ms:.1f} ms "
        f"(CPU {cpu_ms:.1f} ms; runs {', '.join(f'{w * 1000:.1f}' for w in writes[2:])} ms); "
        f"pyarrow write of the same rows {base_ms:.1f} ms = {write_ms / base_ms:.2f}x"
    )
    runs = []
    for _ in range(args.repeat):
        store = ParquetTrackingStore(copy_lake(big, scratch), hash_key=KEY)
        assert store.backend is not None  # connected once for the runner's life, as above
        with service(store, 0.0, 50, rows) as svc:
            started, cpu = time.perf_counter(), time.process_time()
            report = svc.run_once()
            runs.append(
                {
                    "wall": time.perf_counter() - started,
                    "cpu": time.process_time() - cpu,
                    "phases": dict(report.phases),
                }
            )
        assert report.written == rows, report
    whole = summarize(runs)
    log(
        f"  lake of {args.lake_size:,} records: run_once of {rows} due (0 ms provider) = "
        f"{whole['median_s'] * 1000:.1f} ms (CPU {whole['cpu_s'] * 1000:.1f} ms)  {_fmt(whole)}"
    )
    return {
        "rows": rows,
        "lake_records": args.lake_size,
        "append_ms": write_ms,
        "append_cpu_ms": cpu_ms,
        "append_runs_ms": [w * 1000 for w in writes[2:]],
        "baseline_pyarrow_ms": base_ms,
        "ratio_to_baseline": write_ms / base_ms,
        "run_once": whole,
        "lake_stats": records,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--lake-size", type=int, default=1_000_000)
    parser.add_argument("--write-rows", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "kmsg-bench-runner"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--skip-write", action="store_true", help="skip the large-lake write benchmark"
    )
    parser.add_argument("--skip-run", action="store_true", help="skip the 10,000-due run")
    parser.add_argument(
        "--big-lake",
        type=Path,
        help="time the write on this lake (hash key as here, open records) instead of building one",
    )
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=args.work, prefix="scratch-"))
    try:
        log("building lakes")
        due_lake = args.work / f"due-{args.n}"
        build_lake(due_lake, due_records(args.n))
        big = args.big_lake or args.work / f"lake-{args.lake_size}"
        if args.big_lake:
            current = pl.scan_parquet(big / "current" / "**" / "*.parquet", hive_partitioning=False)
            args.lake_size = current.select(pl.len()).collect().item()
        elif not args.skip_write:
            build_lake(
                big,
                records(args.lake_size, seed=3, end=NOW, days=90, open_every=100),
            )
        warm_up(scratch)
        log("one run")
        machine: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
        machine["load_before"] = os.getloadavg()[0]
        result: dict[str, Any] = {"machine": machine, "at": datetime.now(UTC).isoformat()}
        if not args.skip_run:
            result["run"] = bench_run(args, scratch, due_lake)
        if not args.skip_write:
            log("snapshot write on a large lake")
            result["write"] = bench_write(args, scratch, big)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["machine"]["load_after"] = os.getloadavg()[0]
    before, after = result["machine"]["load_before"], result["machine"]["load_after"]
    log(f"load average (1 min) before / after: {before:.1f} / {after:.1f}")
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
