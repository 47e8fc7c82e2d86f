"""Benchmark ``import_kmsg_table``: a k-msg SQLite table into a new lake, then re-imports.

Usage::

    python benchmarks/bench_import.py --n 1000000 [--split] [--work DIR --keep] [--out r.json]
    python benchmarks/bench_import.py --n 1000000 --work DIR --reuse   # table kept before
    python benchmarks/bench_import.py ... --compare-src DIR  # also the import of another tree

Builds ``--n`` rows of k-msg's default SQLite layout (``ddl-sqlite.sql`` of the k-msg
fixtures, its indexes included) from :mod:`kmsg_analytics._synthetic`: epoch-millisecond
times, ``metadata`` and ``last_error`` as k-msg's JSON text (camelCase keys), about 2% of
numbers hyphenated as given, about 1% of messages still open. Then, each step in a
fresh worker process (wall seconds, the worker's CPU seconds, and its peak RSS as its
own ``VmHWM``, interpreter and imports included):

* baseline: plain ``sqlite3`` ``fetchall`` of the same columns turned into a ``pyarrow``
  table, then ``polars`` ``write_parquet`` of it;
* import: ``import_kmsg_table(url, new lake)``, end to end (open, read, convert, append,
  bookkeeping, close); its wall seconds start after the worker imported
  :mod:`kmsg_analytics._kmsg_import` (its CPU seconds and peak RSS cover the whole worker);
* the command: ``python -m kmsg_analytics import sqlite:///... --lake NEW`` timed from
  outside, start-up included (the issue's figure: the whole command, with its progress
  lines), wall and CPU seconds and peak RSS of the process;
* with ``--compare-src DIR``, first the same import (and the same command) with the
  ``kmsg_analytics`` package found in ``DIR`` (e.g. ``git archive HEAD kmsg_analytics |
  tar -x -C DIR``): before and after a change, in the same run;
* with ``--split``, the two halves of it alone: our read + convert of every row with
  nothing appended (then, one thread each, the read alone and the conversion alone),
  and the lake: the rows the import wrote, streamed from its history in 50,000-row
  batches into a new lake through ``ParquetTrackingStore.append_table`` inside
  ``bulk()``, as the first import appends them, and the fold at its end;
* re-import with nothing written;
* re-import after k-msg-like writes to ``--changed`` of the rows: a poll of every open
  message (``attempt_count + 1``, ``last_checked_at = now``, about 70% reaching
  ``DELIVERED``/``FAILED`` with ``status_updated_at = now``) and new sends for the rest.

Every worker runs with compiled bytecode, as an installed package has it: cached in the
work directory (``PYTHONPYCACHEPREFIX``, filled by an untimed import of 1,000 rows first)
even where ``PYTHONDONTWRITEBYTECODE`` is set, which would otherwise make each worker
compile every module it loads (``--no-bytecode-cache`` measures that way).

Figures are seconds and rates with ratios to the baseline measured in the same run, and
the load average: the machine is shared, so absolute times move with others' work while
the ratios (CPU ones most) move less. Run it when the machine is otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

HASH_KEY = "bench-key-0123456789"
TABLE = "kmsg_delivery_tracking"
COLUMNS = [
    "message_id", "provider_id", "provider_message_id", "type", "to", "from", "status",
    "provider_status_code", "provider_status_message", "sent_at", "delivered_at", "failed_at",
    "requested_at", "scheduled_at", "status_updated_at", "attempt_count", "last_checked_at",
    "next_check_at", "last_error", "metadata",
]  # fmt: skip
TIMES = [
    "sent_at", "delivered_at", "failed_at", "requested_at", "scheduled_at",
    "status_updated_at", "last_checked_at", "next_check_at",
]  # fmt: skip
INTEGER = {*TIMES, "attempt_count"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ddl_path() -> Path:
    """k-msg's own SQLite table definition (kept with the test fixtures)."""
    return Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "kmsg" / "ddl-sqlite.sql"


# =========================================================================== the table


def _camel(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k): _camel(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_camel(v) for v in value]
    return value


def kmsg_rows(n: int, start: int, stop: int) -> pl.DataFrame:
    """Rows ``start:stop`` of ``n`` synthetic messages in k-msg's SQLite encoding."""
    from kmsg_analytics._synthetic import synthetic_records

    recs = synthetic_records(
        n, seed=7, hash_key=HASH_KEY, with_numbers=True, start=start, stop=stop
    )
    metas = recs.get_column("metadata").unique().to_list()
    camel = {
        m: None
        if m == "{}"
        else json.dumps(_camel(json.loads(m)), ensure_ascii=False, separators=(",", ":"))
        for m in metas
    }
    i = pl.int_range(pl.len()) + start
    to = pl.col("to")
    frame = recs.with_columns(
        *[pl.col(c).dt.epoch("ms").alias(c) for c in TIMES],
        pl.col("metadata").replace_strict(camel, return_dtype=pl.String),
        pl.when(pl.col("last_error").is_not_null())
        .then(pl.col("last_error").struct.json_encode())
        .alias("last_error"),
        pl.when(i % 50 == 0)  # about 2% of numbers as given, hyphenated
        .then(to.str.slice(0, 3) + "-" + to.str.slice(3, 4) + "-" + to.str.slice(7))
        .otherwise(to)
        .alias("to"),
        pl.col("from_").alias("from"),
        pl.col("provider_message_id").fill_null(""),
    )
    return frame.select(COLUMNS)


def build_table(path: Path, n: int, chunk: int = 200_000) -> float:
    started = time.perf_counter()
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path)
    con.executescript(ddl_path().read_text(encoding="utf-8"))
    names = ", ".join(f'"{c}"' for c in COLUMNS)
    marks = ", ".join("?" for _ in COLUMNS)
    for start in range(0, n, chunk):
        frame = kmsg_rows(n, start, min(n, start + chunk))
        con.executemany(f"INSERT INTO {TABLE} ({names}) VALUES ({marks})", frame.iter_rows())
        con.commit()
    con.close()
    return time.perf_counter() - started


def kmsg_writes(path: Path, n: int, share: float) -> dict[str, int]:
    """What k-msg writes over a while: a poll of every open message, and new sends."""
    wanted = max(1, round(n * share))
    now = int(time.time() * 1000)
    con = sqlite3.connect(path)
    open_ids = [
        r[0]
        for r in con.execute(
            f"SELECT message_id FROM {TABLE} WHERE status IN ('SENT', 'PENDING') "
            f"ORDER BY next_check_at LIMIT {wanted}"
        )
    ]
    done = []
    still = []
    for k, mid in enumerate(open_ids):
        if k % 10 < 7:  # reached a result
            status, code, text = (
                ("FAILED", "3018", "단말기 전원 꺼짐")
                if k % 20 == 0
                else ("DELIVERED", "4000", "수신완료")
            )
            at = "failed_at" if status == "FAILED" else "delivered_at"
            done.append((status, code, text, now - 5_000, now, now, now, mid, at))
        else:
            still.append((now, now + 600_000, mid))
    for status, code, text, when, updated, checked, nxt, mid, at in done:
        con.execute(
            f"UPDATE {TABLE} SET status = ?, provider_status_code = ?, "
            f"provider_status_message = ?, {at} = ?, status_updated_at = ?, "
            "attempt_count = attempt_count + 1, last_checked_at = ?, next_check_at = ? "
            "WHERE message_id = ?",
            (status, code, text, when, updated, checked, nxt, mid),
        )
    con.executemany(
        f"UPDATE {TABLE} SET attempt_count = attempt_count + 1, last_checked_at = ?, "
        "next_check_at = ? WHERE message_id = ?",
        still,
    )
    sends = wanted - len(open_ids)
    if sends > 0:
        fresh = kmsg_rows(n + sends, n, n + sends).with_columns(
            pl.format("new-{}", pl.col("message_id")).alias("message_id"),
            pl.lit("SENT").alias("status"),
            pl.lit(None, pl.String).alias("provider_status_code"),
            pl.lit(None, pl.String).alias("provider_status_message"),
            *[pl.lit(None, pl.Int64).alias(c) for c in ("sent_at", "delivered_at", "failed_at")],
            pl.lit(now).alias("requested_at"),
            pl.lit(now).alias("status_updated_at"),
            pl.lit(0).alias("attempt_count"),
            pl.lit(None, pl.Int64).alias("last_checked_at"),
            pl.lit(now + 30_000).alias("next_check_at"),
            pl.lit(None, pl.String).alias("last_error"),
        )
        names = ", ".join(f'"{c}"' for c in COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        con.executemany(f"INSERT INTO {TABLE} ({names}) VALUES ({marks})", fresh.iter_rows())
    con.commit()
    con.close()
    return {"polled": len(open_ids), "status_changed": len(done), "sends": max(0, sends)}


# =========================================================================== workers


def peak_rss_mb() -> float:
    """This process's peak resident set size (``VmHWM``; it starts afresh at ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def work_baseline(db: Path, work: Path) -> dict[str, Any]:
    import pyarrow as pa

    started = time.perf_counter()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    names = ", ".join(f'"{c}"' for c in COLUMNS)
    rows = con.execute(f"SELECT {names} FROM {TABLE}").fetchall()
    con.close()
    table = pa.table(
        {
            c: pa.array(v, type=pa.int64() if c in INTEGER else pa.string())
            for c, v in zip(COLUMNS, zip(*rows, strict=True), strict=True)
        }
    )
    del rows
    fetched = time.perf_counter()
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    out = work / "baseline.parquet"
    frame.write_parquet(out)
    written = time.perf_counter()
    out.unlink()
    return {
        "rows": table.num_rows,
        "fetch_s": fetched - started,
        "write_s": written - fetched,
        "seconds": written - started,
    }


def work_import(db: Path, lake: Path) -> dict[str, Any]:
    from kmsg_analytics._kmsg_import import import_kmsg_table

    started = time.perf_counter()
    report = import_kmsg_table(f"sqlite:///{db}", lake, hash_key=HASH_KEY)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "rows": report.rows_read,
        "fetched": report.fetched,
        "new": report.new,
        "changed": report.changed,
        "unchanged": report.unchanged,
        "stale": report.stale,
        "skipped": report.skipped,
        "summary": report.summary(),
    }


def work_read_convert(db: Path) -> dict[str, Any]:
    """Our share without the lake: read and convert every row, append nothing.

    Then, each alone (one thread, CPU seconds of this process): the read, and the
    conversion of the chunks read (held in memory for it).
    """
    from kmsg_analytics._kmsg_convert import Converter, NumberHasher, canonical
    from kmsg_analytics._kmsg_source import KmsgSource, Prefetch
    from kmsg_analytics._phone import HashKey

    def converter() -> Converter:
        hasher = NumberHasher(HashKey(HASH_KEY))
        return Converter(timestamps="auto", hasher=hasher, keep_numbers=False)

    def prepared(chunk: pl.DataFrame) -> pl.DataFrame:
        raw = canonical(chunk, source.columns)
        return raw.with_columns(__fp=raw.hash_rows(), __i=pl.int_range(pl.len(), dtype=pl.UInt32))

    started, cpu = time.perf_counter(), time.process_time()
    source = KmsgSource.open(f"sqlite:///{db}", TABLE, None, "auto")
    conv = converter()
    rows = 0
    with Prefetch(source.chunks(50_000), depth=1) as chunks:
        for chunk in chunks:
            good, _bad = conv.convert(prepared(chunk))
            rows += good.num_rows
    source.close()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    # the read alone (a second pass over the same pages), then the conversion alone
    source = KmsgSource.open(f"sqlite:///{db}", TABLE, None, "auto")
    mark, mark_cpu = time.perf_counter(), time.process_time()
    held = [prepared(chunk) for chunk in source.chunks(50_000)]
    read_s, read_cpu = time.perf_counter() - mark, time.process_time() - mark_cpu
    source.close()
    conv = converter()
    mark, mark_cpu = time.perf_counter(), time.process_time()
    for raw in held:
        conv.convert(raw)
    convert_s, convert_cpu = time.perf_counter() - mark, time.process_time() - mark_cpu
    return {
        "rows": int(rows),
        "seconds": seconds,
        "pass_cpu_s": cpu,
        "read_s": read_s,
        "read_cpu_s": read_cpu,
        "convert_s": convert_s,
        "convert_cpu_s": convert_cpu,
    }


def work_lake_append(lake: Path, target: Path) -> dict[str, Any]:
    """The lake's share: the rows the import wrote, appended again as the import does.

    The history files of ``lake`` are streamed in 50,000-row batches (one batch per
    chunk, like the import) into a new lake through ``append_table`` inside the store's
    ``bulk()`` block, whose end folds them once (as a first import does).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kmsg_analytics import ParquetTrackingStore
    from kmsg_analytics._schema import SNAPSHOT_SCHEMA

    files = sorted((lake / "history").glob("*/*.parquet"))
    started = time.perf_counter()
    store = ParquetTrackingStore(target, hash_key=HASH_KEY)
    rows = 0
    with store.bulk():
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=50_000):
                table = pa.Table.from_batches([batch]).select(SNAPSHOT_SCHEMA.names)
                store.append_table(table.cast(SNAPSHOT_SCHEMA), kind="load")
                rows += table.num_rows
        appended = time.perf_counter()
    folded = time.perf_counter()
    store.close()
    return {
        "rows": rows,
        "seconds": time.perf_counter() - started,
        "append_s": appended - started,
        "fold_s": folded - appended,
    }


def work_warm(db: Path, work: Path) -> dict[str, Any]:
    """Import the first rows of the table into a scratch lake: every module used is loaded.

    Run untimed before the timed steps, so that their modules' bytecode is compiled and
    cached (in ``PYTHONPYCACHEPREFIX``) as in an installed package.
    """
    small, lake = work / "warm.sqlite", work / "warm-lake"
    small.unlink(missing_ok=True)
    shutil.rmtree(lake, ignore_errors=True)
    con = sqlite3.connect(small)
    con.execute("ATTACH DATABASE ? AS src", (f"file:{db}?mode=ro",))
    (ddl,) = con.execute(
        "SELECT sql FROM src.sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
    ).fetchone()
    con.execute(ddl)
    con.execute(f"INSERT INTO {TABLE} SELECT * FROM src.{TABLE} LIMIT 1000")
    con.commit()
    con.close()
    result = work_import(small, lake)
    import kmsg_analytics.cli  # noqa: F401  (the command's own modules, for run_cli)

    small.unlink()
    shutil.rmtree(lake, ignore_errors=True)
    return result


def worker(args: argparse.Namespace) -> None:
    work = Path(args.work)
    db = work / "kmsg.sqlite"
    if args.op == "warm":
        result = work_warm(db, work)
    elif args.op == "baseline":
        result = work_baseline(db, work)
    elif args.op == "import":
        result = work_import(db, work / "lake")
    elif args.op == "import_other":  # run with PYTHONPATH on another source tree
        shutil.rmtree(work / "lake-other", ignore_errors=True)
        result = work_import(db, work / "lake-other")
        shutil.rmtree(work / "lake-other", ignore_errors=True)
    elif args.op == "read_convert":
        result = work_read_convert(db)
    elif args.op == "lake_append":
        shutil.rmtree(work / "lake-append", ignore_errors=True)
        result = work_lake_append(work / "lake", work / "lake-append")
        shutil.rmtree(work / "lake-append", ignore_errors=True)
    else:
        raise SystemExit(f"unknown worker {args.op}")
    result["vm_hwm_mb"] = peak_rss_mb()
    print(json.dumps(result))


#: Where the workers keep compiled bytecode (``None``: as the environment says).
PYCACHE: dict[str, Path | None] = {"dir": None}


def run_worker(op: str, work: Path, *, src: Path | None = None) -> dict[str, Any]:
    """One step in a fresh process: its result, CPU seconds (user + system) and load.

    ``src``: a directory holding another ``kmsg_analytics`` package, imported instead
    of this one (e.g. ``git archive HEAD kmsg_analytics | tar -x -C DIR``). With a
    bytecode cache (the default), the worker reads and writes compiled modules there even
    where ``PYTHONDONTWRITEBYTECODE`` is set, as an installed package has them.
    """
    load_before = os.getloadavg()[0]
    cmd = [sys.executable, __file__, "_worker", "--op", op, "--work", str(work)]
    env = _worker_env(src)
    out_path = work / f".{op}.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env)
        _pid, status, usage = os.wait4(proc.pid, 0)
        stderr = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"worker {op} failed:\n{stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out_path.read_text().strip().splitlines()[-1])
    out_path.unlink()
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    result["load_avg"] = round((load_before + os.getloadavg()[0]) / 2, 2)
    return result


def _worker_env(src: Path | None) -> dict[str, str]:
    """The environment of a timed process: ``src`` first on the path, bytecode cached."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])
    cache = PYCACHE["dir"]
    if cache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def run_cli(work: Path, *, src: Path | None = None) -> dict[str, Any]:
    """``kmsg-analytics import`` of the table into a new lake, timed whole from outside.

    Wall seconds from before the process starts to its exit, its CPU seconds (user +
    system, every thread) and peak RSS (``ru_maxrss`` of the process); the lake is
    removed after.
    """
    lake = work / "lake-cli"
    shutil.rmtree(lake, ignore_errors=True)
    env = _worker_env(src)
    env["KMSG_ANALYTICS_HASH_KEY"] = HASH_KEY
    url = f"sqlite:///{work / 'kmsg.sqlite'}"
    cmd = [sys.executable, "-m", "kmsg_analytics", "import", url, "--lake", str(lake)]
    out_path, err_path = work / ".cli.out", work / ".cli.err"
    load_before = os.getloadavg()[0]
    with open(out_path, "w") as out, open(err_path, "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    shutil.rmtree(lake, ignore_errors=True)
    text, errors = out_path.read_text(), err_path.read_text()
    out_path.unlink()
    err_path.unlink()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"kmsg-analytics import failed:\n{errors[-3000:]}")
    return {
        "seconds": seconds,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "vm_hwm_mb": usage.ru_maxrss / 1024,
        "summary": text.strip().splitlines()[-1] if text.strip() else "",
        "load_avg": round((load_before + os.getloadavg()[0]) / 2, 2),
    }


# =========================================================================== driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of rows k-msg writes")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--reuse", action="store_true", help="use the table kept in --work")
    parser.add_argument("--split", action="store_true", help="also time read+convert and the lake")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run the workers without the bytecode cache kept in the work directory "
        "(with PYTHONDONTWRITEBYTECODE set, each worker then compiles every module it loads)",
    )
    parser.add_argument(
        "--compare-src",
        type=Path,
        action="append",
        default=[],
        help="also time the first import with the kmsg_analytics package in this directory "
        "(repeatable)",
    )
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-import-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "kmsg.sqlite"
    kept = work / "kmsg.kept.sqlite"
    results: dict[str, Any] = {"n": args.n, "cpus": os.cpu_count()}
    try:
        if args.reuse and kept.is_file():  # the table as built, before a last run's writes
            shutil.copyfile(kept, db)
        else:
            log(f"building {args.n:,} k-msg rows in {db} ...")
            results["build_s"] = build_table(db, args.n)
            log(f"  built in {results['build_s']:.1f} s")
            if args.keep or args.reuse:
                shutil.copyfile(db, kept)
        shutil.rmtree(work / "lake", ignore_errors=True)
        if not args.no_bytecode_cache:  # compiled once, untimed, as an installed package is
            PYCACHE["dir"] = work / ".pycache"
            for src in [None, *args.compare_src]:
                run_worker("warm", work, src=None if src is None else src.resolve())
        results["bytecode_cache"] = PYCACHE["dir"] is not None
        results["load_start"] = os.getloadavg()
        base = run_worker("baseline", work)
        log(f"baseline: fetch {base['fetch_s']:.2f} s, write_parquet {base['write_s']:.2f} s")
        results["import_other"] = []
        for src in args.compare_src:
            other = run_worker("import_other", work, src=src.resolve())
            other["src"] = str(src)
            results["import_other"].append(other)
            log(f"import ({src}): {other['summary']}")
        first = run_worker("import", work)
        log(f"import: {first['summary']}")
        results["cli_other"] = []
        for src in args.compare_src:
            other = run_cli(work, src=src.resolve())
            other["src"] = str(src)
            results["cli_other"].append(other)
            log(f"command ({src}): {other['seconds']:.2f} s, {other['cpu_s']:.1f} CPU-s")
        results["cli"] = run_cli(work)
        log(f"command: {results['cli']['seconds']:.2f} s, {results['cli']['cpu_s']:.1f} CPU-s")
        if args.split:
            results["read_convert"] = run_worker("read_convert", work)
            log(f"read + convert alone: {results['read_convert']['seconds']:.2f} s")
            results["lake_append"] = run_worker("lake_append", work)
            log(f"lake append_table alone: {results['lake_append']['seconds']:.2f} s")
        same = run_worker("import", work)
        log(f"re-import, nothing changed: {same['summary']}")
        writes = kmsg_writes(db, args.n, args.changed)
        log(f"k-msg writes: {writes}")
        again = run_worker("import", work)
        log(f"re-import, {args.changed:.0%} written: {again['summary']}")
        results.update(
            baseline=base,
            import_=first,
            reimport_same=same,
            kmsg_writes=writes,
            reimport_changed=again,
            load_end=os.getloadavg(),
        )
    finally:
        if not args.keep and not args.reuse and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report(results, args.changed)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")


def report(r: dict[str, Any], changed: float) -> None:
    base, first = r["baseline"], r["import_"]
    base_s, base_cpu = base["seconds"], base["cpu_s"]
    n = first["rows"]
    steps: list[tuple[str, float, float | None, int | None, dict[str, Any], str]] = [
        ("baseline: sqlite3 fetchall -> pyarrow", base["fetch_s"], None, n, base, ""),
        ("baseline: polars write_parquet", base["write_s"], None, n, base, ""),
        ("baseline: both (fresh process)", base_s, base_cpu, n, base, ""),
    ]
    for o in r.get("import_other", []):
        steps.append((f"import, code in {o['src']}", o["seconds"], o["cpu_s"], n, o, ""))
    steps.append(("import into a new lake", first["seconds"], first["cpu_s"], n, first, ""))
    for o in r.get("cli_other", []):
        steps.append((f"the command, code in {o['src']}", o["seconds"], o["cpu_s"], n, o, ""))
    cli = r["cli"]
    steps.append(
        ("the command `kmsg-analytics import` (whole)", cli["seconds"], cli["cpu_s"], n, cli,
         ">= 200,000/s"),
    )  # fmt: skip
    if "read_convert" in r:
        rc, la = r["read_convert"], r["lake_append"]
        steps += [
            ("  ours without the lake: read + convert", rc["seconds"], rc["pass_cpu_s"], n, rc, ""),
            ("    the read alone", rc["read_s"], rc["read_cpu_s"], n, rc, ""),
            ("    the conversion alone", rc["convert_s"], rc["convert_cpu_s"], n, rc, ""),
            ("  the lake alone: bulk append_table + fold", la["seconds"], la["cpu_s"], n, la, ""),
            ("    of which append_table, 50k batches", la["append_s"], None, n, la, ""),
            ("    of which the fold at the end", la["fold_s"], None, n, la, ""),
        ]
    same, again = r["reimport_same"], r["reimport_changed"]
    steps += [
        ("re-import, nothing written", same["seconds"], same["cpu_s"], None, same, ""),
        (f"re-import, {changed:.0%} written by k-msg", again["seconds"], again["cpu_s"], None,
         again, "< 10 s"),
    ]  # fmt: skip
    print(f"\n{r['n']:,} rows, {r['cpus']} CPUs")
    print("| step | wall s | rows/s | wall / baseline | CPU s | CPU / baseline | peak RSS MB "
          "| load | target |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, seconds, cpu, rows, res, target in steps:
        rate = f"{rows / seconds:,.0f}" if rows else "-"
        cpu_s = f"{cpu:.1f}" if cpu is not None else "-"
        cpu_ratio = f"{cpu / base_cpu:.2f}" if cpu is not None else "-"
        rss = f"{res['vm_hwm_mb']:.0f}"
        print(
            f"| {name} | {seconds:.2f} | {rate} | {seconds / base_s:.2f} | {cpu_s} | "
            f"{cpu_ratio} | {rss} | {res['load_avg']} | {target} |"
        )
    rate = n / cli["seconds"]
    ok_rate = rate >= 200_000 and cli["vm_hwm_mb"] < 1024
    print(
        f"\nthe command: {rate:,.0f} rows/s, peak {cli['vm_hwm_mb']:.0f} MB: "
        f"{'PASS' if ok_rate else 'FAIL'}; re-import after k-msg wrote {changed:.0%}: "
        f"{again['seconds']:.2f} s, {again['fetched']:,} rows fetched: "
        f"{'PASS' if again['seconds'] < 10 else 'FAIL'}"
    )
    print(f"load average at start {r['load_start']}, at end {r['load_end']}")
    if r.get("bytecode_cache"):
        print(
            "workers ran with compiled bytecode cached in the work directory (--no-bytecode-cache)"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        p = argparse.ArgumentParser()
        p.add_argument("--op", required=True)
        p.add_argument("--work", required=True)
        worker(p.parse_args(sys.argv[2:]))
    else:
        main()
