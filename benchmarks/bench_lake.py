"""Benchmark the Parquet lake against hand-written queries on the same files.

Usage::

    python benchmarks/bench_lake.py --n 1000000 [--out results.json] [--k 5]

Builds a lake of ``--n`` synthetic messages (about 2.2 snapshots each, about 1% still
open) by loading snapshot chunks through the store and folding after each chunk, then
times every operation of the issue's target list against its baseline, each in a fresh
subprocess so that its peak RSS can be read (``os.wait4``). See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from kmsg_analytics import DeliveryTrackingService, ParquetTrackingStore
from kmsg_analytics._loading import frame_to_table
from kmsg_analytics._records import POLLABLE_STATUSES
from kmsg_analytics._schema import PRECEDENCE_OFFSET, SNAPSHOT_SCHEMA, record_to_row
from kmsg_analytics._synthetic import (
    DEFAULT_END,
    PROVIDER_IDS,
    load_snapshots,
    synthetic_poll_updates,
    synthetic_records,
    synthetic_snapshots,
)

KEY = "bench-key-0123456789"
END = DEFAULT_END
GROUPS = ["provider_id", "status"]
WEEK_FROM = END - timedelta(days=7)
HIVE = {"requested_date": pl.Date}
MB = 1024 * 1024


class Gateway:
    """A provider that can only be named."""

    def __init__(self, provider_id: str) -> None:
        self.id = provider_id


def service_over(lake: Path, **store_options: Any) -> DeliveryTrackingService:
    store = ParquetTrackingStore(lake, hash_key=KEY, **store_options)
    return DeliveryTrackingService([Gateway(p) for p in PROVIDER_IDS], store=store)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# =========================================================================== build


def build(work: Path, n: int, chunk: int, seed: int, delta_rows: int) -> dict[str, Any]:
    """Load ``n`` messages' snapshots chunk by chunk, fold after each; add the poll delta."""
    lake = work / "lake"
    if lake.exists():
        shutil.rmtree(lake)
    started = time.perf_counter()
    store = ParquetTrackingStore(lake, hash_key=KEY, compact_rows=10**12)
    gen_s = load_s = fold_s = 0.0
    rows = 0
    expected: pl.DataFrame | None = None
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        t0 = time.perf_counter()
        snaps = synthetic_snapshots(n, seed=seed, hash_key=KEY, start=lo, stop=hi)
        t1 = time.perf_counter()
        rows += load_snapshots(store, snaps)
        t2 = time.perf_counter()
        store.compact(history=False)
        t3 = time.perf_counter()
        gen_s, load_s, fold_s = gen_s + t1 - t0, load_s + t2 - t1, fold_s + t3 - t2
        final = snaps.filter(pl.col("step") == 2)
        sends = snaps.filter(pl.col("step") == 0).join(final, on="message_id", how="anti")
        counts = pl.concat([final.select(GROUPS), sends.select(GROUPS)]).group_by(GROUPS).len()
        expected = counts if expected is None else pl.concat([expected, counts])
        log(f"  chunk {lo:,}-{hi:,}: gen {t1 - t0:.1f}s load {t2 - t1:.1f}s fold {t3 - t2:.1f}s")
    # keep the history as loaded (hard links) for the full-compaction benchmark
    snapshot = work / "history_as_loaded"
    if snapshot.exists():
        shutil.rmtree(snapshot)
    for f in store.paths.history_files():
        target = snapshot / f.path.parent.name / f.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(f.path, target)
    t0 = time.perf_counter()
    store.compact()
    final_compact_s = time.perf_counter() - t0
    store.close()
    assert expected is not None
    expected = expected.group_by(GROUPS).agg(pl.col("len").sum()).sort(GROUPS)
    open_path = lake / "open" / "part-0.parquet"
    open_rows = pl.scan_parquet(open_path).select(pl.len()).collect().item()
    due = (
        pl.scan_parquet(open_path)
        .filter(pl.col("next_check_at") <= END)
        .select(pl.len())
        .collect()
        .item()
    )
    info = {
        "messages": n,
        "snapshot_rows": rows,
        "open": open_rows,
        "due_at_end": due,
        "build_seconds": round(time.perf_counter() - started, 1),
        "generate_seconds": round(gen_s, 1),
        "load_seconds": round(load_s, 1),
        "load_rows_per_s": round(rows / load_s) if load_s else None,
        "incremental_fold_seconds": round(fold_s, 1),
        "incremental_fold_s_per_1m_rows": round(fold_s / rows * 1e6, 3),
        "final_compact_seconds": round(final_compact_s, 1),
        "current_bytes": sum(p.stat().st_size for p in (lake / "current").rglob("*.parquet")),
        "history_files_as_loaded": sum(1 for _ in snapshot.rglob("*.parquet")),
    }
    expected.write_parquet(work / "expected_counts.parquet")
    # the uncompacted delta lake: a copy of the compacted lake (hard links) plus polls
    delta_lake = work / "lake_delta"
    if delta_lake.exists():
        shutil.rmtree(delta_lake)
    link_tree(lake, delta_lake)
    # to/from_ are null in a lake without numbers; frame_to_table would re-hash them
    open_records = pl.read_parquet(open_path).drop("requested_date", "to", "from_")
    polls = synthetic_poll_updates(open_records.head(delta_rows), now=END, seed=seed)
    store = ParquetTrackingStore(delta_lake, hash_key=KEY, compact_rows=10**12)
    batches = 50
    size = max(1, -(-polls.height // batches))
    for lo in range(0, polls.height, size):
        part = polls.slice(lo, size).select(
            [c for c in polls.columns if c not in ("seq", "snapshot_kind", "recorded_at")]
        )
        store.append_table(frame_to_table(part, store.hash_key, keep_numbers=False), kind="poll")
    store.close()
    info["delta_rows"] = polls.height
    info["delta_files"] = -(-polls.height // size) if polls.height else 0
    return info


def link_tree(src: Path, dst: Path) -> None:
    """Copy a directory tree, hard-linking the files (the lake never rewrites in place)."""
    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            if name == "_lock":
                continue
            if name.endswith(".json"):
                shutil.copy2(Path(root) / name, dst / rel / name)
            else:
                os.link(Path(root) / name, dst / rel / name)


def fresh_history_lake(work: Path, name: str) -> Path:
    """A lake holding the as-loaded history only (watermark 0): a full compaction's input."""
    lake = work / name
    if lake.exists():
        shutil.rmtree(lake)
    ParquetTrackingStore(lake, hash_key=KEY).close()
    snapshot = work / "history_as_loaded"
    for folder in sorted(snapshot.iterdir()):
        (lake / "history" / folder.name).mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            os.link(f, lake / "history" / folder.name / f.name)
    return lake


# =========================================================================== operations


def hand_count_by(lake: Path) -> pl.DataFrame:
    return (
        pl.scan_parquet(str(lake / "current" / "**" / "*.parquet"), hive_partitioning=True)
        .group_by(GROUPS)
        .len()
        .collect(engine="streaming")
    )


def hand_count_by_7d(lake: Path) -> pl.DataFrame:
    return (
        pl.scan_parquet(
            str(lake / "current" / "**" / "*.parquet"), hive_partitioning=True, hive_schema=HIVE
        )
        .filter(
            (pl.col("requested_date") >= WEEK_FROM.date())
            & (pl.col("requested_date") <= END.date())
            & (pl.col("requested_at") >= WEEK_FROM)
            & (pl.col("requested_at") <= END)
        )
        .group_by(GROUPS)
        .len()
        .collect(engine="streaming")
    )


def hand_list_due(lake: Path) -> pl.DataFrame:
    return (
        pl.scan_parquet(lake / "open" / "part-0.parquet")
        .filter(pl.col("status").is_in(POLLABLE_STATUSES) & (pl.col("next_check_at") <= END))
        .sort(["next_check_at", "message_id"])
        .head(200)
        .collect()
    )


def delta_files(lake: Path) -> list[str]:
    state = json.loads((lake / "_state.json").read_text())
    w = int(state["watermark"])
    out = []
    for f in sorted((lake / "history").rglob("*.parquet")):
        hi = int(f.name.split("-")[2].split(".")[0])  # b-<lo>-<hi>-<wal> or c-<lo>-<hi>
        if hi > w:
            out.append(str(f))
    return out


def hand_count_by_delta(lake: Path) -> pl.DataFrame:
    """Merge-on-read by hand: current anti-join the latest delta rows, plus those rows."""
    w = int(json.loads((lake / "_state.json").read_text())["watermark"])
    key = pl.col("seq") + pl.when(pl.col("snapshot_kind") == "send").then(0).otherwise(
        PRECEDENCE_OFFSET
    )
    delta = (
        pl.scan_parquet(delta_files(lake))
        .filter(pl.col("seq") > w)
        .select("message_id", "seq", "snapshot_kind", *GROUPS)
    )
    latest = delta.filter(key == key.max().over("message_id")).collect()
    current = pl.scan_parquet(str(lake / "current" / "**" / "*.parquet"), hive_partitioning=True)
    return (
        pl.concat(
            [
                current.join(
                    latest.lazy().select("message_id"), on="message_id", how="anti"
                ).select(GROUPS),
                latest.lazy().select(GROUPS),
            ]
        )
        .group_by(GROUPS)
        .len()
        .collect(engine="streaming")
    )


def hand_list_due_delta(lake: Path) -> pl.DataFrame:
    """listDue by hand over the open set plus the latest delta rows."""
    w = int(json.loads((lake / "_state.json").read_text())["watermark"])
    key = pl.col("seq") + pl.when(pl.col("snapshot_kind") == "send").then(0).otherwise(
        PRECEDENCE_OFFSET
    )
    columns = ["message_id", "status", "next_check_at"]
    delta = pl.scan_parquet(delta_files(lake)).filter(pl.col("seq") > w)
    latest = delta.filter(key == key.max().over("message_id")).select(columns).collect()
    open_ = pl.scan_parquet(lake / "open" / "part-0.parquet").select(columns)
    return (
        pl.concat(
            [open_.join(latest.lazy(), on="message_id", how="anti"), latest.lazy()],
        )
        .filter(pl.col("status").is_in(POLLABLE_STATUSES) & (pl.col("next_check_at") <= END))
        .sort(["next_check_at", "message_id"])
        .head(200)
        .collect()
    )


def same_counts(ours: pl.DataFrame, base: pl.DataFrame) -> bool:
    a = ours.rename({"count": "len"}) if "count" in ours.columns else ours
    a = a.select(*GROUPS, pl.col("len").cast(pl.Int64)).sort(GROUPS)
    b = base.select(*GROUPS, pl.col("len").cast(pl.Int64)).sort(GROUPS)
    return a.equals(b)


def timed(fn: Callable[[], Any], k: int) -> tuple[float, list[float], Any]:
    """Run once to warm up (returned as the cold time), then ``k`` timed runs."""
    t0 = time.perf_counter()
    result = fn()
    cold = time.perf_counter() - t0
    times = []
    for _ in range(k):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return cold, times, result


def query_fns(name: str, impl: str, work: Path) -> tuple[Callable[[], Any], Callable[[], None]]:
    """The query ``name`` as ``impl`` runs it, and what to call when done."""
    lake = work / ("lake_delta" if name.endswith("_delta") else "lake")
    if impl == "ours":
        svc = service_over(lake, compact_rows=10**12)
        fns: dict[str, Callable[[], Any]] = {
            "count_by": lambda: svc.count_by(group_by=GROUPS).collect(),
            "count_by_delta": lambda: svc.count_by(group_by=GROUPS).collect(),
            "count_by_7d": lambda: svc.count_by(
                requested_at_from=WEEK_FROM, requested_at_to=END, group_by=GROUPS
            ).collect(),
            "list_due": lambda: svc.list_due(END, 200),
            "list_due_delta": lambda: svc.list_due(END, 200),
        }
        return fns[name], svc.close
    fns = {
        "count_by": lambda: hand_count_by(lake),
        "count_by_delta": lambda: hand_count_by_delta(lake),
        "count_by_7d": lambda: hand_count_by_7d(lake),
        "list_due": lambda: hand_list_due(lake),
        "list_due_delta": lambda: hand_list_due_delta(lake),
    }
    return fns[name], lambda: None


def query_answer(name: str, impl: str, result: Any) -> dict[str, Any]:
    if name.startswith("list_due"):
        ids = (
            [r.message_id for r in result]
            if impl == "ours"
            else result.get_column("message_id").to_list()
        )
        return {"ids": ids}
    return {"counts": result.to_dicts()}


def op_query(name: str, impl: str, work: Path, k: int) -> dict[str, Any]:
    """One implementation alone (for its peak RSS), or ``both`` interleaved (for timing)."""
    impls = ["ours", "base"] if impl == "both" else [impl]
    fns = {i: query_fns(name, i, work) for i in impls}
    out: dict[str, dict[str, Any]] = {}
    for i in impls:  # warm-up, reported as the cold time
        t0 = time.perf_counter()
        result = fns[i][0]()
        out[i] = {"cold": time.perf_counter() - t0, "times": [], **query_answer(name, i, result)}
    for _ in range(k):  # round-robin: the shared machine's load hits both alike
        for i in impls:
            t0 = time.perf_counter()
            fns[i][0]()
            out[i]["times"].append(time.perf_counter() - t0)
    for i in impls:
        fns[i][1]()
    return out if impl == "both" else out[impl]


# --------------------------------------------------------------------------- writes


def send_pairs(m: int, seed: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``m`` (context, result) pairs in k-msg's JSON shape (camelCase, epoch ms)."""
    frame = synthetic_records(m, seed=seed, hash_key=KEY, with_numbers=True, end=END)
    rows = frame.select(
        "message_id",
        "provider_id",
        "provider_message_id",
        "type",
        "to",
        "from_",
        ms=pl.col("requested_at").dt.epoch("ms"),
    ).to_dicts()
    return [
        (
            {
                "messageId": r["message_id"],
                "timestamp": r["ms"],
                "options": {"type": r["type"], "to": r["to"], "from": r["from_"]},
            },
            {
                "messageId": r["message_id"],
                "providerId": r["provider_id"],
                "providerMessageId": r["provider_message_id"],
                "type": r["type"],
                "to": r["to"],
            },
        )
        for r in rows
    ]


def lake_rows(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    """The lake rows those sends become (for the plain pyarrow baseline)."""
    scratch = DeliveryTrackingService(
        [Gateway(p) for p in PROVIDER_IDS],
        store=__import__("kmsg_analytics").InMemoryTrackingStore(hash_key=KEY),
    )
    now = int(time.time() * 1e6)
    return [
        record_to_row(scratch.build_record(c, r), kind="send", recorded_at=now) for c, r in pairs
    ]


def pyarrow_write(rows: list[dict[str, Any]], path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=SNAPSHOT_SCHEMA), path, compression="zstd")


SQLITE_DDL = """
CREATE TABLE kmsg_delivery_tracking (
  message_id TEXT PRIMARY KEY, provider_id TEXT NOT NULL, provider_message_id TEXT NOT NULL,
  type TEXT NOT NULL, "to" TEXT NOT NULL, "from" TEXT, status TEXT NOT NULL,
  provider_status_code TEXT, provider_status_message TEXT, sent_at INTEGER, delivered_at INTEGER,
  failed_at INTEGER, requested_at INTEGER NOT NULL, scheduled_at INTEGER,
  status_updated_at INTEGER NOT NULL, attempt_count INTEGER NOT NULL DEFAULT 0,
  last_checked_at INTEGER, next_check_at INTEGER NOT NULL, last_error TEXT, metadata TEXT
);
CREATE INDEX idx_due ON kmsg_delivery_tracking (status, next_check_at);
CREATE INDEX idx_requested ON kmsg_delivery_tracking (requested_at);
"""
SQLITE_UPSERT = """
INSERT INTO kmsg_delivery_tracking (message_id, provider_id, provider_message_id, type, "to",
  "from", status, requested_at, status_updated_at, attempt_count, next_check_at, metadata)
VALUES (?, ?, ?, ?, ?, ?, 'SENT', ?, ?, 0, ?, ?)
ON CONFLICT(message_id) DO UPDATE SET status_updated_at = excluded.status_updated_at
"""


def sqlite_sends(pairs: list[tuple[dict[str, Any], dict[str, Any]]], path: Path) -> float:
    """k-msg's SQLite store, roughly: one upsert and one commit per send. Returns seconds."""
    con = sqlite3.connect(path)
    con.executescript(SQLITE_DDL)
    t0 = time.perf_counter()
    for c, r in pairs:
        ts = c["timestamp"]
        con.execute(
            SQLITE_UPSERT,
            (r["messageId"], r["providerId"], r["providerMessageId"], r["type"], r["to"],
             c["options"]["from"], ts, ts, ts + 30_000, "{}"),
        )  # fmt: skip
        con.commit()
    took = time.perf_counter() - t0
    con.close()
    return took


def op_write(name: str, impl: str, work: Path, k: int, args: dict[str, Any]) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    runs: list[float] = []
    extra: dict[str, Any] = {}
    try:
        if name in ("record_send", "record_sends"):
            m = args["sends"] if name == "record_send" else args["pairs"]
            pairs = send_pairs(m, seed=args["seed"] + 1)
            if impl == "ours":
                for i in range(k + 1):
                    svc = service_over(scratch / f"lake{i}")
                    t0 = time.perf_counter()
                    if name == "record_send":
                        for c, r in pairs:
                            svc.record_send(c, r)
                    else:
                        svc.record_sends(pairs)
                    took = time.perf_counter() - t0
                    t1 = time.perf_counter()
                    svc.close()
                    extra.setdefault("close_seconds", []).append(time.perf_counter() - t1)
                    runs.append(took)
            else:
                rows = lake_rows(pairs)
                for i in range(k + 1):
                    t0 = time.perf_counter()
                    pyarrow_write(rows, scratch / f"rows{i}.parquet")
                    runs.append(time.perf_counter() - t0)
                if name == "record_send":
                    few = pairs[: min(len(pairs), 300)]  # an fsync per commit: slow
                    extra["sqlite_rate"] = len(few) / sqlite_sends(few, scratch / "kmsg.sqlite")
            extra["items"] = m
        elif name in ("load_records", "load_records_numbers", "load_records_folded"):
            m = args["load_rows"]
            frame = load_frame(work, m, args["seed"] + 2, numbers=name.endswith("numbers"))
            # folded: into an empty lake with the default compact_rows, so that the load
            # folds before it returns (a first import: history batch plus current files)
            fold = {} if name.endswith("folded") else {"compact_rows": 10**12}
            for i in range(k + 1):
                if impl == "ours":
                    svc = service_over(scratch / f"lake{i}", **fold)
                    svc.init()
                    t0, c0 = time.perf_counter(), time.process_time()
                    svc.load_records(frame)
                    runs.append(time.perf_counter() - t0)
                    svc.close()
                else:
                    t0, c0 = time.perf_counter(), time.process_time()
                    frame.write_parquet(scratch / f"frame{i}.parquet")
                    runs.append(time.perf_counter() - t0)
                if i:  # CPU seconds of all threads: what the shared machine's load cannot hide
                    extra.setdefault("cpu", []).append(time.process_time() - c0)
            extra["items"] = m
        else:
            msg = f"unknown write op {name}"
            raise ValueError(msg)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"cold": runs[0], "times": runs[1:], **extra}


def load_frame(work: Path, m: int, seed: int, *, numbers: bool) -> pl.DataFrame:
    """The records to load, read from a file made once by another process.

    Generating them peaks at ~1.2 GB for 1M records (the generator's buffers), more than
    the frame holds (~0.4 GB): a worker that generated its frame would report that peak
    whatever it then did with the frame.
    """
    path = work / f"load_frame_{m}_{seed}_{int(numbers)}.parquet"
    if not path.exists():
        cmd = [sys.executable, __file__, "_frame", str(path), str(m), str(seed), str(int(numbers))]
        subprocess.run(cmd, check=True)
    return pl.read_parquet(path)


def write_frame(path: Path, m: int, seed: int, numbers: bool) -> None:
    frame = synthetic_records(m, seed=seed, hash_key=KEY, with_numbers=numbers)
    staged = path.with_suffix(".tmp")
    frame.write_parquet(staged, compression="lz4")
    os.replace(staged, path)


# --------------------------------------------------------------------------- compaction


def duckdb_compact(src: Path, out: Path) -> int:
    """DuckDB partition loop: per requested day, ``COPY (... QUALIFY ...)``; then the open set."""
    import duckdb

    files = sorted(str(p) for p in (src / "history").rglob("*.parquet"))
    con = duckdb.connect()
    con.execute("SET threads=2")
    con.execute("SET TimeZone='UTC'")
    con.execute(f"CREATE VIEW h AS SELECT * FROM read_parquet({files!r})")
    days = [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT CAST(requested_at AS DATE) FROM h ORDER BY 1"
        ).fetchall()
    ]
    written = 0
    for day in days:
        target = out / f"requested_date={day.isoformat()}"
        target.mkdir(parents=True, exist_ok=True)
        lo = datetime.combine(day, datetime.min.time(), UTC)
        con.execute(
            f"""
            COPY (
              SELECT * EXCLUDE (_k) FROM (
                SELECT *, seq + CASE WHEN snapshot_kind = 'send' THEN 0
                                     ELSE {PRECEDENCE_OFFSET} END AS _k
                FROM h WHERE requested_at >= ? AND requested_at < ?
              )
              QUALIFY row_number() OVER (PARTITION BY message_id ORDER BY _k DESC) = 1
              ORDER BY requested_at
            ) TO '{target / "part-0.parquet"}' (FORMAT parquet, COMPRESSION zstd)
            """,
            [lo, lo + timedelta(days=1)],
        )
        written += 1
    con.execute(
        f"""COPY (SELECT * FROM read_parquet('{out}/**/*.parquet', hive_partitioning = true)
        WHERE status IN ('PENDING', 'SENT')) TO '{out}_open.parquet' (FORMAT parquet)"""
    )
    con.close()
    return written


def polars_compact(src: Path, out: Path) -> int:
    """Polars per requested day: window-max dedup, ``sink_parquet``; then the open set."""
    files = sorted(str(p) for p in (src / "history").rglob("*.parquet"))
    scan = pl.scan_parquet(files)
    days = (
        scan.select(pl.col("requested_at").dt.date().unique().sort())
        .collect()
        .to_series()
        .to_list()
    )
    key = pl.col("seq") + pl.when(pl.col("snapshot_kind") == "send").then(0).otherwise(
        PRECEDENCE_OFFSET
    )
    for day in days:
        lo = datetime.combine(day, datetime.min.time(), UTC)
        target = out / f"requested_date={day.isoformat()}"
        target.mkdir(parents=True, exist_ok=True)
        (
            scan.filter(
                (pl.col("requested_at") >= lo) & (pl.col("requested_at") < lo + timedelta(days=1))
            )
            .filter(key == key.max().over("message_id"))
            .sort("requested_at")
            .sink_parquet(target / "part-0.parquet", compression="zstd")
        )
    (
        pl.scan_parquet(str(out / "**" / "*.parquet"), hive_partitioning=True)
        .filter(pl.col("status").is_in(POLLABLE_STATUSES))
        .sink_parquet(f"{out}_open.parquet")
    )
    return len(days)


def op_compact(impl: str, work: Path, k: int) -> dict[str, Any]:
    runs: list[float] = []
    extra: dict[str, Any] = {}
    for i in range(max(1, k)):  # every run starts from the same files: no warm-up run
        lake = fresh_history_lake(work, f"compact_{impl}_{i}")
        rows = sum(
            pq.ParquetFile(p).metadata.num_rows for p in (lake / "history").rglob("*.parquet")
        )
        if impl == "ours":
            store = ParquetTrackingStore(lake, hash_key=KEY, compact_rows=10**12)
            store.backend  # noqa: B018 - import Ibis and connect before the clock starts
            marks: list[tuple[float, str]] = []

            def mark(text: str, marks: list[tuple[float, str]] = marks) -> None:
                marks.append((time.perf_counter(), text))

            t0, c0 = time.perf_counter(), time.process_time()
            store.compact(progress=mark)
            took = time.perf_counter() - t0
            extra.setdefault("cpu", []).append(time.process_time() - c0)
            store.close()
            merge_at = next((t for t, text in marks if text.startswith("merging")), None)
            if merge_at is not None:
                extra.setdefault("fold_seconds", []).append(merge_at - t0)
        elif impl == "base":
            t0, c0 = time.perf_counter(), time.process_time()
            duckdb_compact(lake, work / f"compact_out_{impl}_{i}")
            took = time.perf_counter() - t0
            extra.setdefault("cpu", []).append(time.process_time() - c0)
        else:  # base2
            t0, c0 = time.perf_counter(), time.process_time()
            polars_compact(lake, work / f"compact_out_{impl}_{i}")
            took = time.perf_counter() - t0
            extra.setdefault("cpu", []).append(time.process_time() - c0)
        runs.append(took)
        shutil.rmtree(lake, ignore_errors=True)
        shutil.rmtree(work / f"compact_out_{impl}_{i}", ignore_errors=True)
        Path(f"{work / f'compact_out_{impl}_{i}'}_open.parquet").unlink(missing_ok=True)
        extra["items"] = rows
    return {"cold": runs[0], "times": runs, **extra}


def worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--op", required=True)
    p.add_argument("--impl", required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--args", default="{}")
    a = p.parse_args(argv)
    extra = json.loads(a.args)
    if a.op.startswith(("count_by", "list_due")):
        result = op_query(a.op, a.impl, a.work, a.k)
    elif a.op == "compact":
        result = op_compact(a.impl, a.work, a.k)
    else:
        result = op_write(a.op, a.impl, a.work, a.k, extra)
    result["vm_hwm_mb"] = peak_rss_mb()
    print(json.dumps(result, default=str))


def peak_rss_mb() -> float:
    """This process's peak resident set size (``VmHWM``; it starts afresh at ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# =========================================================================== driver


def run_worker(
    op: str, impl: str, work: Path, k: int, extra: dict[str, Any], rss_limit_mb: int
) -> dict[str, Any]:
    """Run one worker in a fresh process; returns its result plus ``peak_rss_mb``."""
    cmd = [
        sys.executable, __file__, "_worker", "--op", op, "--impl", impl,
        "--work", str(work), "--k", str(k), "--args", json.dumps(extra),
    ]  # fmt: skip
    out_path = work / f".{op}.{impl}.out"
    load_before = os.getloadavg()[0]
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
        killed, done = threading.Event(), threading.Event()
        sampled: list[int] = []

        def watch() -> None:  # kill a worker that would take the machine's memory
            status = Path(f"/proc/{proc.pid}/status")
            while not done.is_set():
                try:
                    text = status.read_text()
                except OSError:
                    return
                for line in text.splitlines():
                    if line.startswith("VmRSS:"):
                        sampled.append(int(line.split()[1]))
                        if sampled[-1] > rss_limit_mb * 1024:
                            killed.set()
                            proc.kill()
                            return
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _pid, status, usage = os.wait4(proc.pid, 0)
        done.set()
        proc.returncode = os.waitstatus_to_exitcode(status)
        stderr = proc.stderr.read() if proc.stderr else ""
        watcher.join(timeout=1)
    # ru_maxrss would also count the pre-exec image of this (large) parent: prefer the
    # worker's own VmHWM, else the largest VmRSS sampled while it ran
    peak = max(sampled) / 1024 if sampled else usage.ru_maxrss / 1024
    if killed.is_set():
        return {"error": f"killed above {rss_limit_mb} MB RSS", "peak_rss_mb": peak}
    if proc.returncode != 0:
        return {
            "error": stderr.strip().splitlines()[-1] if stderr else "failed",
            "peak_rss_mb": peak,
        }
    result: dict[str, Any] = json.loads(out_path.read_text().strip().splitlines()[-1])
    result["peak_rss_mb"] = result.pop("vm_hwm_mb", peak)
    result["load_avg"] = round((load_before + os.getloadavg()[0]) / 2, 2)
    out_path.unlink()
    return result


#: name, what, kind of target, target value
OPS: list[tuple[str, str, str, float]] = [
    ("count_by", "count_by(provider_id, status), compacted", "ratio", 1.3),
    ("count_by_delta", "count_by with the poll delta not compacted", "seconds", 0.75),
    ("count_by_7d", "count_by over a 7-day requested_at window", "ratio", 2.0),
    ("list_due", "list_due(now, 200)", "seconds", 0.050),
    ("list_due_delta", "list_due with the poll delta (info)", "info", 0.0),
    ("record_send", "record_send one at a time (records/s)", "rate", 20_000),
    ("record_sends", "record_sends in one call (pairs/s)", "rate", 100_000),
    ("load_records", "load_records (records/s)", "rate", 1_000_000),
    ("load_records_numbers", "load_records with to/from_ to hash (info)", "info", 0.0),
    ("load_records_folded", "load_records into an empty lake, folded (info)", "info", 0.0),
    ("compact", "compact() of the whole history (s per 1M rows)", "per_m_rows", 1.5),
]
RSS_TARGET_MB = 1024


def evaluate(
    op: str, kind: str, target: float, ours: dict[str, Any], base: dict[str, Any]
) -> dict[str, Any]:
    row: dict[str, Any] = {"op": op}
    if "error" in ours or "error" in base:
        row.update(result="ERROR", error=ours.get("error") or base.get("error"))
        row["rss_ours_mb"], row["rss_base_mb"] = ours.get("peak_rss_mb"), base.get("peak_rss_mb")
        return row
    t_ours, t_base = median(ours["times"]), median(base["times"])
    row.update(
        ours_s=t_ours,
        base_s=t_base,
        ours_cold_s=ours["cold"],
        ratio=t_ours / t_base if t_base else float("nan"),
        rss_ours_mb=ours["peak_rss_mb"],
        rss_base_mb=base["peak_rss_mb"],
        load_avg=max(ours.get("load_avg", 0), base.get("load_avg", 0)),
    )
    items = float(ours.get("items") or 0)
    row["items"] = items
    if kind == "rate":
        value = items / t_ours
        row.update(ours_rate=value, base_rate=items / t_base, ok=value >= target)
    elif kind == "per_m_rows":
        value = t_ours / items * 1e6
        row.update(ours_per_m=value, base_per_m=t_base / items * 1e6, ok=value <= target)
    elif kind == "ratio":
        row["ok"] = row["ratio"] <= target
    elif kind == "seconds":
        row["ok"] = t_ours <= target
    if "counts" in ours:
        row["check"] = same_counts(pl.DataFrame(ours["counts"]), pl.DataFrame(base["counts"]))
    if "ids" in ours:
        row["check"] = ours["ids"] == base["ids"]
    for name in ("sqlite_rate", "close_seconds", "fold_seconds"):
        if name in ours or name in base:
            row[name] = ours.get(name, base.get(name))
    if "cpu" in ours and "cpu" in base:
        row["cpu_ours_s"], row["cpu_base_s"] = median(ours["cpu"]), median(base["cpu"])
    row["rss_ok"] = ours["peak_rss_mb"] < RSS_TARGET_MB
    row["result"] = "info" if kind == "info" else ("PASS" if row.get("ok") else "FAIL")
    return row


def fmt_target(kind: str, target: float) -> str:
    return {
        "ratio": f"<= {target:g}x",
        "seconds": f"<= {target * 1000:g} ms" if target < 1 else f"<= {target:g} s",
        "rate": f">= {target:,.0f}/s",
        "per_m_rows": f"<= {target:g} s/1M",
        "info": "-",
    }[kind]


def fmt_row(row: dict[str, Any], kind: str, target: float) -> list[str]:
    def s(v: float) -> str:
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"

    if row.get("result") == "ERROR":
        return [
            row["op"],
            "ERROR",
            "",
            "",
            fmt_target(kind, target),
            "ERROR",
            str(row.get("error"))[:60],
        ]
    if kind == "rate":
        ours, base = f"{row['ours_rate']:,.0f}/s", f"{row['base_rate']:,.0f}/s"
        ratio = f"{row['base_rate'] / row['ours_rate']:.2f}x"
    elif kind == "per_m_rows":
        ours, base = f"{row['ours_per_m']:.2f} s/1M", f"{row['base_per_m']:.2f} s/1M"
        ratio = f"{row['ratio']:.2f}x"
    else:
        ours, base, ratio = s(row["ours_s"]), s(row["base_s"]), f"{row['ratio']:.2f}x"
    rss = f"{row['rss_ours_mb']:.0f} / {row['rss_base_mb']:.0f} MB"
    result = row["result"] + ("" if row["rss_ok"] else " (RSS>1GB)")
    if row.get("check") is False:
        result += " MISMATCH"
    return [row["op"], ours, base, ratio, fmt_target(kind, target), result, rss]


def print_table(rows: list[list[str]]) -> None:
    head = ["operation", "ours", "baseline", "ours/base", "target", "result", "peak RSS ours/base"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join("{:<" + str(w) + "}" for w in widths)
    print(line.format(*head))
    print(line.format(*["-" * w for w in widths]))
    for r in rows:
        print(line.format(*r))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":
        worker(argv[1:])
        return 0
    if argv and argv[0] == "_frame":
        path, m, seed, numbers = argv[1:5]
        write_frame(Path(path), int(m), int(seed), numbers == "1")
        return 0
    if argv and argv[0] == "_build":
        w, n, chunk, seed, delta_rows = argv[1:6]
        info = build(Path(w), int(n), int(chunk), int(seed), int(delta_rows))
        info["build_peak_rss_mb"] = round(peak_rss_mb())
        (Path(w) / "build.json").write_text(json.dumps(info))
        return 0
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=1_000_000, help="messages in the lake")
    p.add_argument("--k", type=int, default=5, help="timed runs per operation (median)")
    p.add_argument("--k-compact", type=int, default=2, help="runs of each compaction")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    p.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument("--reuse", action="store_true", help="reuse the lake built in --work before")
    p.add_argument("--chunk", type=int, default=250_000, help="messages per loaded chunk")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--delta-rows", type=int, default=100_000, help="cap on poll snapshots")
    p.add_argument("--sends", type=int, default=20_000, help="record_send calls per run")
    p.add_argument("--pairs", type=int, default=100_000, help="pairs per record_sends call")
    p.add_argument("--load-rows", type=int, help="records per load_records (default min(n, 1M))")
    p.add_argument("--only", help="comma-separated operations to run")
    p.add_argument("--rss-limit-mb", type=int, default=12_000, help="kill a worker above this")
    a = p.parse_args(argv)
    work = a.work or Path(tempfile.mkdtemp(prefix="kmsg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    extra = {
        "seed": a.seed,
        "sends": a.sends,
        "pairs": a.pairs,
        "load_rows": a.load_rows or min(a.n, 1_000_000),
    }
    started = time.perf_counter()
    try:
        info_path = work / "build.json"
        if a.reuse and info_path.exists():
            info = json.loads(info_path.read_text())
        else:
            log(f"building a lake of {a.n:,} messages in {work} ...")
            cmd = [sys.executable, __file__, "_build", str(work), str(a.n), str(a.chunk),
                   str(a.seed), str(a.delta_rows)]  # fmt: skip
            subprocess.run(cmd, check=True)
            info = json.loads(info_path.read_text())
        log(json.dumps(info))
        wanted = set(a.only.split(",")) if a.only else None
        results, table = [], []
        for op, what, kind, target in OPS:
            if wanted and op not in wanted:
                continue
            k = a.k_compact if op == "compact" else a.k
            log(f"{op}: {what}")
            if op.startswith(("count_by", "list_due")):
                # timing interleaved in one worker; each side alone once more for its RSS
                both = run_worker(op, "both", work, k, extra, a.rss_limit_mb)
                ours = run_worker(op, "ours", work, 1, extra, a.rss_limit_mb)
                base = run_worker(op, "base", work, 1, extra, a.rss_limit_mb)
                if "error" not in both:
                    for side, alone in (("ours", ours), ("base", base)):
                        alone.update({key: both[side][key] for key in ("cold", "times")})
                    ours["load_avg"] = base["load_avg"] = both["load_avg"]
            else:
                ours = run_worker(op, "ours", work, k, extra, a.rss_limit_mb)
                base = run_worker(op, "base", work, k, extra, a.rss_limit_mb)
            row = evaluate(op, kind, target, ours, base)
            if op == "compact":
                alt = run_worker(op, "base2", work, k, extra, a.rss_limit_mb)
                if "error" not in alt:
                    row["polars_per_m"] = median(alt["times"]) / alt["items"] * 1e6
                    row["rss_polars_mb"] = alt["peak_rss_mb"]
            if op == "count_by_delta":
                row["delta_rows"] = info.get("delta_rows")
            row.update(what=what, kind=kind, target=target)
            results.append(row)
            table.append(fmt_row(row, kind, target))
            log("   " + "  ".join(table[-1][1:]))
        print()
        print(f"kmsg-analytics lake benchmark: {a.n:,} messages, {info['snapshot_rows']:,} "
              f"snapshots, {info['open']:,} open ({info['due_at_end']:,} due), "
              f"delta {info.get('delta_rows', 0):,} rows; k={a.k}, medians")  # fmt: skip
        print_table(table)
        notes = []
        for row in results:
            if row.get("sqlite_rate"):
                notes.append(f"record_send: k-msg-like SQLite upsert+commit per send: "
                             f"{row['sqlite_rate']:,.0f}/s (reference only)")  # fmt: skip
            if row.get("polars_per_m"):
                notes.append(f"compact: polars window-max per-day sink: "
                             f"{row['polars_per_m']:.2f} s/1M rows, {row['rss_polars_mb']:.0f} MB")  # fmt: skip
            if row.get("fold_seconds"):
                notes.append(f"compact: fold part {median(row['fold_seconds']):.2f} s of "
                             f"{row['ours_s']:.2f} s (the rest merges history files)")  # fmt: skip
            if "cpu_ours_s" in row:
                per = 1e6 / float(row.get("items") or 1)
                unit = "CPU-s per 1M rows" if row["kind"] == "per_m_rows" else "CPU-s per call"
                scale = per if row["kind"] == "per_m_rows" else 1.0
                notes.append(f"{row['op']}: {unit} (all threads; load-independent) ours "
                             f"{row['cpu_ours_s'] * scale:.2f}, baseline "
                             f"{row['cpu_base_s'] * scale:.2f}")  # fmt: skip
            if "ours_cold_s" in row and row["op"].startswith(("count_by", "list_due")):
                notes.append(
                    f"{row['op']}: first call in a fresh process {row['ours_cold_s']:.3f} s"
                )
        print(f"build: {info['build_seconds']} s (generate {info['generate_seconds']} s, "
              f"load {info['load_seconds']} s = {info['load_rows_per_s']:,} rows/s, "
              f"folds {info['incremental_fold_seconds']} s = "
              f"{info['incremental_fold_s_per_1m_rows']} s/1M rows, final compact "
              f"{info['final_compact_seconds']} s; peak RSS "
              f"{info.get('build_peak_rss_mb', '?')} MB)")  # fmt: skip
        for note in notes:
            print("  " + note)
        loads = [r["load_avg"] for r in results if "load_avg" in r]
        if loads:
            print(f"  1-minute load average during the workers: {min(loads)}-{max(loads)} "
                  f"on {os.cpu_count()} CPUs (others' work inflates absolute times)")  # fmt: skip
        print(f"total {time.perf_counter() - started:.0f} s")
        if a.out:
            a.out.write_text(json.dumps({"build": info, "results": results, "args": vars(a)},
                                        default=str, indent=1))  # fmt: skip
    finally:
        if not a.keep and not a.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
