"""Benchmark the cost of sealed numbers: encrypted lakes against hashed and plain ones.

Usage::

    python benchmarks/bench_privacy.py --sends 20000 --rows 1000000 [--k 5] [--out r.json]

Three lakes differ only in how numbers are kept at rest (``numbers="encrypted"``,
``"hashed"``, ``"plain"``). Writes: ``--sends`` single ``record_send`` calls per lake
(each to a distinct number, so the cipher's cache never helps), in ``--k`` blocks run
round-robin across the three lakes (the order rotates each round), timed to the
acknowledgement and to publication (the block ends with ``flush()``); then
``record_sends`` batches the same way. Queries: three lakes of ``--rows`` records
loaded through ``load_records`` and compacted, then ``count_by``, ``list_records`` with
a ``to=`` filter, ``get_record`` and (encrypted only) ``get_record`` plus
``reveal_numbers``, each warmed once and run ``--k`` times round-robin. Medians are
reported with the ratio of the encrypted lake to the plain and the hashed one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import polars as pl

from kmsg_analytics import DeliveryTrackingService, ParquetTrackingStore, RecordFilter
from kmsg_analytics._store import NumberStorage
from kmsg_analytics._synthetic import DEFAULT_END, PROVIDER_IDS, synthetic_records

HASH_KEY = "bench-key-0123456789"
ENC_KEYS = {"bench": bytes(range(32)), "old": bytes(range(32, 64))}
MODES = ("encrypted", "hashed", "plain")
START = datetime(2026, 5, 1, tzinfo=UTC)


class Gateway:
    """A provider that can only be named."""

    def __init__(self, provider_id: str) -> None:
        self.id = provider_id


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def service(lake: Path, mode: str) -> DeliveryTrackingService:
    store = ParquetTrackingStore(
        lake,
        hash_key=HASH_KEY,
        numbers=cast(NumberStorage, mode),
        keys=ENC_KEYS,
        compact_rows=10**12,
    )
    return DeliveryTrackingService([Gateway(p) for p in PROVIDER_IDS], store=store)


def number(i: int) -> str:
    """A distinct mobile number per ``i`` (a fixed odd multiplier scatters them)."""
    return f"010{(i * 7_654_321 + 1_234_567) % 100_000_000:08d}"


def pair(i: int) -> tuple[dict[str, Any], dict[str, Any]]:
    to = number(i)
    mid = f"bench-{i:09d}"
    ctx = {
        "messageId": mid,
        "timestamp": (START + timedelta(seconds=i)).isoformat(),
        "options": {"type": "SMS", "to": to, "from": "02-123-4567"},
    }
    res = {"messageId": mid, "providerId": "solapi", "providerMessageId": f"G{i}",
           "type": "SMS", "to": to}  # fmt: skip
    return ctx, res


def rotate(items: tuple[str, ...], r: int) -> list[str]:
    r %= len(items)
    return list(items[r:] + items[:r])


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 3)


# =========================================================================== writes


def bench_writes(work: Path, sends: int, k: int) -> dict[str, Any]:
    """``record_send`` and ``record_sends`` per lake, in round-robin blocks."""
    svcs = {m: service(work / f"send-{m}", m) for m in MODES}
    block = max(1, sends // k)
    ack: dict[str, list[float]] = {m: [] for m in MODES}
    published: dict[str, list[float]] = {m: [] for m in MODES}
    batch: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        for m in MODES:  # warm up: imports, the WAL file, the backend
            for i in range(50):
                svcs[m].record_send(*pair(10**8 + i))
            svcs[m].store.flush()  # type: ignore[attr-defined]
        base = 0
        for r in range(k):
            pairs = [pair(base + i) for i in range(block)]
            base += block
            for m in rotate(MODES, r):
                svc = svcs[m]
                t0 = time.perf_counter()
                for ctx, res in pairs:
                    svc.record_send(ctx, res)
                t1 = time.perf_counter()
                svc.store.flush()  # type: ignore[attr-defined]
                t2 = time.perf_counter()
                ack[m].append((t1 - t0) / block)
                published[m].append((t2 - t0) / block)
            log(f"  record_send round {r + 1}/{k}: {block:,} sends per lake")
        for r in range(k):
            pairs = [pair(2 * 10**8 + base + i) for i in range(block)]
            base += block
            for m in rotate(MODES, r):
                t0 = time.perf_counter()
                svcs[m].record_sends(pairs)
                batch[m].append((time.perf_counter() - t0) / block)
            log(f"  record_sends round {r + 1}/{k}: {block:,} pairs per lake")
    finally:
        for svc in svcs.values():
            svc.close()

    def row(name: str, times: dict[str, list[float]]) -> dict[str, Any]:
        us = {m: round(statistics.median(times[m]) * 1e6, 2) for m in MODES}
        return {"operation": name, "unit": "µs per send", **us, **ratios(us)}

    return {
        "block": block,
        "rows": [
            row("record_send (acknowledged)", ack),
            row("record_send (+ publish)", published),
            row("record_sends (batch)", batch),
        ],
    }


def ratios(values: dict[str, float]) -> dict[str, float]:
    enc = values["encrypted"]
    return {
        "enc/plain": round(enc / values["plain"], 3) if values.get("plain") else float("nan"),
        "enc/hashed": round(enc / values["hashed"], 3) if values.get("hashed") else float("nan"),
    }


def bench_cipher(n: int, k: int) -> list[dict[str, Any]]:
    """The cipher alone: sealing and opening distinct numbers, hashing them for comparison."""
    from kmsg_analytics._crypto import NumberCipher, StaticKeyProvider
    from kmsg_analytics._phone import HashKey

    key = HashKey(HASH_KEY)
    seal_t: list[float] = []
    open_t: list[float] = []
    hash_t: list[float] = []
    for r in range(k):
        cipher = NumberCipher(StaticKeyProvider(ENC_KEYS))  # a cold cache each round
        nums = [number(3 * 10**8 + r * n + i) for i in range(n)]
        t0 = time.perf_counter()
        envs = [cipher.seal(x, "to") for x in nums]
        t1 = time.perf_counter()
        for env in envs:
            cipher.open(env, "to")
        t2 = time.perf_counter()
        for x in nums:
            key.hash_normalized(x)
        t3 = time.perf_counter()
        seal_t.append((t1 - t0) / n)
        open_t.append((t2 - t1) / n)
        hash_t.append((t3 - t2) / n)
    unit = "µs per number"
    nan = float("nan")
    return [
        {"operation": f"{name} (alone)", "unit": unit, "encrypted": us, "hashed": nan,
         "plain": nan, "enc/plain": nan, "enc/hashed": nan}
        for name, us in (
            ("NumberCipher.seal", round(statistics.median(seal_t) * 1e6, 2)),
            ("NumberCipher.open", round(statistics.median(open_t) * 1e6, 2)),
            ("HashKey.hash_normalized", round(statistics.median(hash_t) * 1e6, 2)),
        )
    ]  # fmt: skip


# =========================================================================== queries


def build_query_lakes(work: Path, rows: int, chunk: int, seed: int) -> dict[str, Any]:
    """Three lakes of ``rows`` records each, loaded in chunks and compacted."""
    info: dict[str, Any] = {}
    svcs = {m: service(work / f"query-{m}", m) for m in MODES}
    load_s = {m: 0.0 for m in MODES}
    try:
        for lo in range(0, rows, chunk):
            hi = min(lo + chunk, rows)
            frame = synthetic_records(
                rows, seed=seed, hash_key=HASH_KEY, with_numbers=True, start=lo, stop=hi
            )
            for m in rotate(MODES, lo // chunk):
                t0 = time.perf_counter()
                svcs[m].load_records(frame)
                load_s[m] += time.perf_counter() - t0
                svcs[m].store.compact(history=False)  # type: ignore[attr-defined]
            log(f"  loaded {hi:,}/{rows:,} records into each lake")
        for m in MODES:
            svcs[m].store.compact()  # type: ignore[attr-defined]
    finally:
        for svc in svcs.values():
            svc.close()
    us = {m: round(load_s[m] / rows * 1e6, 3) for m in MODES}
    info["load_records"] = {
        "operation": "load_records (bulk)", "unit": "µs per record", **us, **ratios(us)
    }  # fmt: skip
    info["bytes"] = {
        m: sum(p.stat().st_size for p in (work / f"query-{m}").rglob("*.parquet")) for m in MODES
    }
    return info


def bench_queries(work: Path, rows: int, k: int, seed: int) -> list[dict[str, Any]]:
    svcs = {m: service(work / f"query-{m}", m) for m in MODES}
    try:
        sample = synthetic_records(
            rows, seed=seed, hash_key=HASH_KEY, with_numbers=True, start=rows // 2,
            stop=rows // 2 + 200,
        )  # fmt: skip
        ids = sample.get_column("message_id").to_list()
        tos = sample.get_column("to").to_list()
        week = RecordFilter(requested_at_from=DEFAULT_END - timedelta(days=7))

        def reveal(svc: DeliveryTrackingService, i: int) -> object:
            rec = svc.get_record(ids[i % len(ids)])
            assert rec is not None
            return svc.store.reveal_numbers(rec)  # type: ignore[attr-defined]

        ops: dict[str, Callable[[DeliveryTrackingService, int], object]] = {
            "count_by provider,status (all)": lambda s, i: s.count_by(
                group_by=["provider_id", "status"]
            ).collect(),
            "count_by provider,status (last 7 days)": lambda s, i: s.count_by(
                week, ["provider_id", "status"]
            ).collect(),
            "list_records to=number": lambda s, i: s.list_records(
                to=tos[i % len(tos)], limit=100
            ).collect(),
            "list_records limit=1000": lambda s, i: s.list_records(limit=1000).collect(),
            "get_record": lambda s, i: s.get_record(ids[i % len(ids)]),
            "get_record + reveal_numbers": reveal,
        }
        # sanity: the same answers from every lake (masks, never numbers)
        for name, op in ops.items():
            if name.startswith("get_record +"):
                continue
            answers = [op(svcs[m], 0) for m in MODES]
            frames = [
                a.drop("to", "from_", strict=False) for a in answers if isinstance(a, pl.DataFrame)
            ]
            assert all(f.equals(frames[0]) for f in frames), name
        assert svcs["encrypted"].get_record(ids[0]).to is None  # type: ignore[union-attr]
        assert reveal(svcs["encrypted"], 0) == reveal(svcs["plain"], 0)
        out = []
        for name, op in ops.items():
            times: dict[str, list[float]] = {m: [] for m in MODES}
            for m in MODES:
                op(svcs[m], 1)  # warm-up
            for r in range(k):
                for m in rotate(MODES, r):
                    t0 = time.perf_counter()
                    op(svcs[m], r + 2)
                    times[m].append(time.perf_counter() - t0)
            ms = {m: median_ms(times[m]) for m in MODES}
            out.append({"operation": name, "unit": "ms", **ms, **ratios(ms)})
            log(f"  {name}: {ms}")
        return out
    finally:
        for svc in svcs.values():
            svc.close()


# =========================================================================== main


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'operation':<42}{'unit':>14}" + "".join(f"{m:>11}" for m in MODES)
    head += f"{'enc/plain':>11}{'enc/hashed':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"{r[m]:>11,.2f}" for m in MODES)
        lines.append(
            f"{r['operation']:<42}{r['unit']:>14}{cells}{r['enc/plain']:>11.3f}"
            f"{r['enc/hashed']:>11.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends", type=int, default=20_000, help="record_send calls per lake")
    parser.add_argument("--rows", type=int, default=1_000_000, help="records per query lake")
    parser.add_argument("--chunk", type=int, default=250_000, help="records loaded at a time")
    parser.add_argument("--k", type=int, default=5, help="timed rounds (medians reported)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="where the lakes go")
    parser.add_argument("--keep", action="store_true", help="keep the lakes")
    parser.add_argument("--skip-writes", action="store_true")
    parser.add_argument("--skip-queries", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-privacy-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "sends": args.sends,
        "rows": args.rows,
        "k": args.k,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    rows: list[dict[str, Any]] = []
    try:
        cipher_rows = bench_cipher(min(args.sends, 20_000), args.k)
        result["cipher"] = cipher_rows
        rows.extend(cipher_rows)
        if not args.skip_writes:
            log(f"writes: {args.sends:,} sends per lake in {args.k} round-robin blocks")
            writes = bench_writes(work, args.sends, args.k)
            result["writes"] = writes
            rows.extend(writes["rows"])
        if not args.skip_queries:
            log(f"queries: building three lakes of {args.rows:,} records")
            t0 = time.perf_counter()
            built = build_query_lakes(work, args.rows, args.chunk, args.seed)
            result["build"] = {**built, "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(built["load_records"])
            queries = bench_queries(work, args.rows, args.k, args.seed)
            result["queries"] = queries
            rows.extend(queries)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(table(rows))
    if "build" in result:
        sizes = ", ".join(f"{m} {b / 2**20:,.1f} MiB" for m, b in result["build"]["bytes"].items())
        print(f"\nlake files on disk: {sizes}")
    print(f"total {result['seconds']} s")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
