"""Measure the lake at one size for docs/scaling.md: files, bytes, compaction, queries, memory.

Usage::

    python benchmarks/bench_scale.py --n 10000000 --work /tmp/scale/n10m --out scale-10m.json
    python benchmarks/bench_scale.py --n 10000000 --work /tmp/scale/n10m --reuse --spark

Builds the lake as ``bench_lake.py`` does (chunked loads folded after each chunk, a final
``compact()``, and a copy with an uncompacted poll delta), each chunk in a fresh process
(``--one-process``: ``bench_lake.py``'s build itself), unless ``--reuse`` finds one in
``--work``. Then it reads the layout (files, bytes, rows and the size of
the requested-day partitions), times the store's queries and the analytics report each
in a fresh process (peak RSS included; for Spark the JVM's too), folds the poll delta
(the cost of one compaction cycle) and, unless ``--no-full-compact``, times a full
compaction of the history as loaded. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from kmsg_analytics import ParquetTrackingStore
from kmsg_analytics._loading import frame_to_table
from kmsg_analytics._synthetic import synthetic_poll_updates

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_lake  # the build and the workers of the lake benchmark

WINDOW = (bench_lake.END - timedelta(days=91), bench_lake.END)
_DAY_US = 86_400_000_000
#: The timestamps a replicated copy moves (``recorded_at`` stays: it places the history file).
_MOVED = (
    "requested_at", "scheduled_at", "sent_at", "delivered_at", "failed_at",
    "status_updated_at", "last_checked_at", "next_check_at",
)  # fmt: skip


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# =========================================================================== layout


def dataset_stats(folder: Path) -> dict[str, Any]:
    """Files, bytes, rows and row groups of the Parquet files under ``folder``."""
    files = sorted(folder.rglob("*.parquet"))
    sizes, rows, groups = [], [], 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        sizes.append(f.stat().st_size)
        rows.append(meta.num_rows)
        groups += meta.num_row_groups
    out: dict[str, Any] = {
        "files": len(files),
        "bytes": sum(sizes),
        "rows": sum(rows),
        "row_groups": groups,
    }
    if files:
        out.update(
            file_bytes_min=min(sizes),
            file_bytes_median=statistics.median(sizes),
            file_bytes_max=max(sizes),
            file_rows_median=statistics.median(rows),
            file_rows_max=max(rows),
        )
    return out


def layout(work: Path) -> dict[str, Any]:
    lake = work / "lake"
    out = {name: dataset_stats(lake / name) for name in ("history", "current", "open")}
    delta = work / "lake_delta"
    if delta.exists():
        out["delta_files"] = len(bench_lake.delta_files(delta))
    return out


# =========================================================================== build


def chunk_worker(lake: Path, n: int, lo: int, hi: int, seed: int) -> dict[str, Any]:
    """Load and fold one chunk of messages in this (fresh) process."""
    from kmsg_analytics._synthetic import load_snapshots, synthetic_snapshots

    store = ParquetTrackingStore(lake, hash_key=bench_lake.KEY, compact_rows=10**12)
    t0 = time.perf_counter()
    snaps = synthetic_snapshots(n, seed=seed, hash_key=bench_lake.KEY, start=lo, stop=hi)
    t1 = time.perf_counter()
    rows = load_snapshots(store, snaps)
    t2 = time.perf_counter()
    store.compact(history=False)
    t3 = time.perf_counter()
    store.close()
    return {"rows": rows, "gen": t1 - t0, "load": t2 - t1, "fold": t3 - t2}


def build_per_process(work: Path, n: int, chunk: int, seed: int, delta_rows: int) -> None:
    """The lake ``bench_lake.build`` makes, with each chunk loaded in its own process.

    One writer process's memory grows with every chunk it loads (about 1.8 GB per
    million messages here: a 2M-message-chunk build in one process was killed by the
    OOM killer at 6M), so each chunk runs in a fresh process. Then, as in
    ``bench_lake.build``: the final ``compact()`` and the copy with a poll delta
    (``lake_delta``); the history is not set aside (no full-compaction run).
    """
    lake = work / "lake"
    if lake.exists():
        shutil.rmtree(lake)
    chunks = []
    started = time.perf_counter()
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        cmd = [sys.executable, __file__, "_chunk", str(lake), str(n), str(lo), str(hi), str(seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        chunks.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        c = chunks[-1]
        log(f"  chunk {lo:,}-{hi:,}: gen {c['gen']:.1f}s load {c['load']:.1f}s "
            f"fold {c['fold']:.1f}s peak RSS {c['vm_hwm_mb']:.0f} MB")  # fmt: skip
    loaded = time.perf_counter() - started
    rows = sum(c["rows"] for c in chunks)
    load_s = sum(c["load"] for c in chunks)
    fold_s = sum(c["fold"] for c in chunks)
    info = {
        "messages": n,
        "snapshot_rows": rows,
        "chunk": chunk,
        "chunks_seconds": round(loaded, 1),
        "generate_seconds": round(sum(c["gen"] for c in chunks), 1),
        "load_seconds": round(load_s, 1),
        "load_rows_per_s": round(rows / load_s),
        "incremental_fold_seconds": round(fold_s, 1),
        "incremental_fold_s_per_1m_rows": round(fold_s / rows * 1e6, 3),
        "chunk_peak_rss_mb": round(max(c["vm_hwm_mb"] for c in chunks)),
        "chunk_fold_seconds": [round(c["fold"], 1) for c in chunks],
    }
    t0 = time.perf_counter()
    store = ParquetTrackingStore(lake, hash_key=bench_lake.KEY, compact_rows=10**12)
    store.compact()
    store.close()
    info["final_compact_seconds"] = round(time.perf_counter() - t0, 1)
    info["build_seconds"] = round(time.perf_counter() - started, 1)
    add_poll_delta(work, seed, delta_rows, info)


def replicate(
    src_work: Path, work: Path, times: int, seed: int, delta_rows: int, *, history: bool
) -> None:
    """A lake of ``times`` copies of the lake built in ``src_work``, then the poll delta.

    Copy ``k`` gets its own message ids (suffix ``-r<k>``) and its own sequence range
    (``seq + k * S``, S the source's last ``seq``); every current day then holds ``times``
    as many messages, sorted by ``requested_at`` as a fold writes them. This is how the
    100M lake is made: the generator and the chunked loads would take about 1.5 hours
    of this machine, and they are measured at 10M already. Without ``history`` only the
    source's history files are linked in: they and the copies' snapshots lie below the
    watermark, where no measured query or fold reads, so the copies' history (``times``
    the source's bytes) is left out to save the hour its rewrite takes.
    """
    import duckdb

    src, lake = src_work / "lake", work / "lake"
    if lake.exists():
        shutil.rmtree(lake)
    lake.mkdir(parents=True)
    state = json.loads((src / "_state.json").read_text())
    span = int(state["seq"])
    assert int(state["watermark"]) == span, "replicate a fully folded lake"
    source = json.loads((src_work / "build.json").read_text())
    con = duckdb.connect(config={"threads": 2, "preserve_insertion_order": False})
    options = "FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1"

    def copy(path: Path, k: int) -> str:
        source = f"read_parquet('{path}', hive_partitioning = false)"
        if k == 0:
            return f"SELECT * FROM {source}"
        # Copy k moves each message to another time of the same requested day (every
        # timestamp by the same amount, so durations hold) and gives it its own ids and
        # number hashes: copies do not sit side by side as duplicates that compress away.
        t, d = "epoch_us(requested_at)", f"(epoch_us(requested_at) // {_DAY_US}) * {_DAY_US}"
        offset = f"{k * _DAY_US // 10} + CAST(hash(message_id) % 600000000 AS BIGINT)"
        delta = f"to_microseconds(({d} + (({t} - {d} + {offset}) % {_DAY_US})) - {t})"
        moved = ", ".join(f"{c} + {delta} AS {c}" for c in _MOVED)
        hashes = ", ".join(f"sha256({c} || '{k}') AS {c}" for c in ("to_hash", "from_hash"))
        return (
            f"SELECT * REPLACE (seq + {k * span} AS seq, message_id || '-r{k}' AS message_id, "
            f"provider_message_id || '-r{k}' AS provider_message_id, {hashes}, {moved}) "
            f"FROM {source}"
        )

    started = time.perf_counter()
    for name in ("current", "open"):
        for f in sorted((src / name).rglob("*.parquet")):
            out = lake / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            union = " UNION ALL ".join(copy(f, k) for k in range(times))
            order = "requested_at" if name == "current" else "next_check_at"
            con.execute(f"COPY ({union} ORDER BY {order}, message_id) TO '{out}' ({options})")
        log(f"  {name}/ replicated ({time.perf_counter() - started:.0f} s)")
    for f in sorted((src / "history").rglob("*.parquet")):
        prefix, lo, hi, *rest = f.stem.split("-")
        if not history:  # below the watermark: no measured operation reads it
            out = lake / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            os.link(f, out)
            continue
        for k in range(times):
            shifted = "-".join([prefix, f"{int(lo) + k * span:020d}", f"{int(hi) + k * span:020d}"])
            out = lake / f.parent.relative_to(src) / ("-".join([shifted, *rest]) + ".parquet")
            out.parent.mkdir(parents=True, exist_ok=True)
            con.execute(f"COPY ({copy(f, k)}) TO '{out}' ({options})")
    log(f"  history/ replicated ({time.perf_counter() - started:.0f} s)")
    shutil.copy2(src / "_lake.json", lake / "_lake.json")
    state.update(seq=span * times, watermark=span * times, last_wal=None)
    (lake / "_state.json").write_text(json.dumps(state, indent=1, sort_keys=True))
    info = {
        "messages": source["messages"] * times,
        "snapshot_rows": source["snapshot_rows"] * times,
        "replicated_from": str(src_work),
        "replicated_times": times,
        "replicate_seconds": round(time.perf_counter() - started, 1),
        "history_replicated": history,
        "source_build": source,
    }
    add_poll_delta(work, seed, delta_rows, info)


def add_poll_delta(work: Path, seed: int, delta_rows: int, info: dict[str, Any]) -> None:
    """``lake_delta``: the lake (hard links) plus one poll of each open message, not folded."""
    lake = work / "lake"
    open_path = lake / "open" / "part-0.parquet"
    info["open"] = pl.scan_parquet(open_path).select(pl.len()).collect().item()
    delta_lake = work / "lake_delta"
    if delta_lake.exists():
        shutil.rmtree(delta_lake)
    bench_lake.link_tree(lake, delta_lake)
    open_records = pl.read_parquet(open_path).drop("requested_date", "to", "from_")
    if open_records.height > delta_rows:  # a uniform sample of the open messages
        open_records = open_records.sample(delta_rows, seed=seed)
    polls = synthetic_poll_updates(open_records, now=bench_lake.END, seed=seed)
    polls = polls.select(
        [c for c in polls.columns if c not in ("seq", "snapshot_kind", "recorded_at")]
    )
    store = ParquetTrackingStore(delta_lake, hash_key=bench_lake.KEY, compact_rows=10**12)
    size = max(1, -(-polls.height // 50))
    for lo in range(0, polls.height, size):
        table = frame_to_table(polls.slice(lo, size), store.hash_key, keep_numbers=False)
        store.append_table(table, kind="poll")
    store.close()
    info["delta_rows"] = polls.height
    (work / "build.json").write_text(json.dumps(info))


# =========================================================================== workers


def child_hwm_mb() -> float:
    """Peak RSS of this process's children still alive (the Spark JVM), in MB."""
    total = 0.0
    me = os.getpid()
    try:
        kids = Path(f"/proc/{me}/task/{me}/children").read_text().split()
    except OSError:
        return 0.0
    for pid in kids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def worker(op: str, work: Path, k: int) -> dict[str, Any]:
    """Run ``op`` once cold and ``k`` times warm in this (fresh) process."""
    from kmsg_analytics._analytics import DeliveryAnalytics

    lake = work / "lake"
    closers: list[Any] = []
    started = time.perf_counter()
    if op in ("summary", "rates"):
        an = DeliveryAnalytics(lake, hash_key=bench_lake.KEY)
        closers.append(an.close)
        if op == "summary":

            def fn() -> Any:
                return an.summary(*WINDOW, by="provider_id").total

        else:

            def fn() -> Any:
                return an.rates(*WINDOW, every="1d", by="provider_id").height

    elif op in ("spark_summary", "duckdb_summary"):
        from kmsg_analytics._distributed import ibis_report, spark_backend

        if op == "spark_summary":
            con = spark_backend(driver_memory="4g")
            closers.append(con._session.stop)
        else:
            import ibis

            con = ibis.duckdb.connect(threads=2)
            closers.append(con.disconnect)

        def fn() -> Any:
            return ibis_report(con, lake, *WINDOW, by="provider_id").total

    elif op == "compact_delta":
        # one compaction cycle: fold the poll delta of a copy of lake_delta
        copy = work / "lake_delta_fold"
        if copy.exists():
            shutil.rmtree(copy)
        bench_lake.link_tree(work / "lake_delta", copy)
        store = ParquetTrackingStore(copy, hash_key=bench_lake.KEY, compact_rows=10**12)

        def fn() -> Any:
            return store.compact(history=False).snapshot_rows

        setup = time.perf_counter() - started
        t0 = time.perf_counter()
        rows = fn()
        took = time.perf_counter() - t0
        store.close()
        shutil.rmtree(copy, ignore_errors=True)
        return {"cold": took, "times": [], "rows": rows, "setup": setup}
    else:
        msg = f"unknown op {op}"
        raise ValueError(msg)
    setup = time.perf_counter() - started
    t0 = time.perf_counter()
    answer = fn()
    cold = time.perf_counter() - t0
    times = []
    for _ in range(k):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    jvm = child_hwm_mb()
    for close in closers:
        close()
    return {"cold": cold, "times": times, "answer": answer, "setup": setup, "jvm_hwm_mb": jvm}


def run_own(op: str, work: Path, k: int) -> dict[str, Any]:
    """One of this file's operations in a fresh process; adds its peak RSS."""
    cmd = [sys.executable, __file__, "_worker", op, str(work), str(k)]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = result.pop("vm_hwm_mb")
    result["process_seconds"] = wall
    result["load_avg"] = round((load_before + os.getloadavg()[0]) / 2, 2)
    return result


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    out = dict(result)
    times = result.get("times") or []
    out["median_s"] = statistics.median(times) if times else result.get("cold")
    return out


# =========================================================================== driver


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_chunk":
        lake, n, lo, hi, seed = Path(argv[1]), *map(int, argv[2:6])
        result = chunk_worker(lake, n, lo, hi, seed)
        result["vm_hwm_mb"] = bench_lake.peak_rss_mb()
        print(json.dumps(result))
        return 0
    if argv and argv[0] == "_worker":
        op, work, k = argv[1], Path(argv[2]), int(argv[3])
        result = worker(op, work, k)
        result["vm_hwm_mb"] = bench_lake.peak_rss_mb()
        print(json.dumps(result, default=str))
        return 0
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=10_000_000, help="messages in the lake")
    p.add_argument("--work", type=Path, required=True, help="working directory (kept)")
    p.add_argument("--reuse", action="store_true", help="reuse the lake built in --work")
    p.add_argument("--chunk", type=int, default=1_000_000, help="messages per loaded chunk")
    p.add_argument(
        "--one-process", action="store_true", help="build with bench_lake.py's build as is"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--delta-rows", type=int, default=100_000, help="cap on poll snapshots")
    p.add_argument("--k", type=int, default=3, help="warm runs per query (median)")
    p.add_argument("--spark", action="store_true", help="also time the report on Spark local[2]")
    p.add_argument("--no-full-compact", action="store_true", help="skip the full compaction")
    p.add_argument("--rss-limit-mb", type=int, default=16_000, help="kill a worker above this")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument(
        "--replicate", type=Path, help="build the lake as --times copies of the one in this --work"
    )
    p.add_argument("--times", type=int, default=10, help="copies for --replicate")
    p.add_argument(
        "--replicate-history", action="store_true", help="with --replicate: copy history too"
    )
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    info_path = a.work / "build.json"
    if not (a.reuse and info_path.exists()):
        log(f"building a lake of {a.n:,} messages in {a.work} ...")
        if a.replicate:
            replicate(
                a.replicate, a.work, a.times, a.seed, a.delta_rows, history=a.replicate_history
            )
        elif a.one_process:
            cmd = [sys.executable, bench_lake.__file__, "_build", str(a.work), str(a.n),
                   str(a.chunk), str(a.seed), str(a.delta_rows)]  # fmt: skip
            subprocess.run(cmd, check=True)
        else:
            build_per_process(a.work, a.n, a.chunk, a.seed, a.delta_rows)
    build = json.loads(info_path.read_text())
    report: dict[str, Any] = {"n": build["messages"], "build": build, "layout": layout(a.work)}
    log(json.dumps(report["layout"]))
    queries: dict[str, Any] = {}
    for op in ("count_by", "count_by_7d", "count_by_delta", "list_due"):
        log(f"query {op}")
        queries[op] = summarize(bench_lake.run_worker(op, "ours", a.work, a.k, {}, a.rss_limit_mb))
    ops = ["summary", "rates", "duckdb_summary", *(["spark_summary"] if a.spark else [])]
    for op in ops:
        log(f"query {op}")
        queries[op] = summarize(run_own(op, a.work, a.k))
    report["queries"] = queries
    log("compact the poll delta")
    report["compact_delta"] = run_own("compact_delta", a.work, 0)
    if not a.no_full_compact and (a.work / "history_as_loaded").exists():
        log("full compaction of the history as loaded")
        report["compact_full"] = summarize(
            bench_lake.run_worker("compact", "ours", a.work, 1, {}, a.rss_limit_mb)
        )
    report["cpus"] = os.cpu_count()
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
