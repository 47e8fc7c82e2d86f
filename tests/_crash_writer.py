"""A writer process for the durability tests (run as a script, never imported by pytest).

It opens a :class:`ParquetTrackingStore` on the lake given on the command line and
records sends in a loop: mostly single ``record_send`` calls, sometimes a
``record_sends`` batch and sometimes a ``compact()``. Each message id is printed
(and stdout flushed) only *after* the call that recorded it returned, so every id the
parent reads was acknowledged. Lines starting with ``#`` are progress markers
(``#compact``, ``#folding ...``, ``#merging history ...``, ``#compacted``, ``#done``).

Usage::

    python _crash_writer.py LAKE --seed 1 --prefix a [--count N] [--self-kill] ...

With ``--count 0`` (the default) it writes until it is killed. With ``--self-kill`` it
SIGKILLs itself after ``--count`` writes (no ``close()``, no ``atexit``), leaving its
write-ahead log behind.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from kmsg_analytics import DeliveryTrackingService, ParquetTrackingStore

HASH_KEY = "test-key-123"
BASE = datetime(2026, 11, 1, tzinfo=UTC)


class Gateway:
    """A provider that only has an id (recording needs nothing else)."""

    id = "solapi"


def pair(message_id: str, rng: random.Random, days: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A k-msg-shaped (context, result) of one send, requested on one of ``days`` days."""
    requested = BASE + timedelta(days=rng.randrange(days), seconds=rng.randrange(86_400))
    number = f"010-{rng.randrange(10_000):04d}-{rng.randrange(10_000):04d}"
    kind = rng.choice(["SMS", "LMS", "ALIMTALK"])
    context = {
        "messageId": message_id,
        "timestamp": requested.isoformat(),
        "options": {"type": kind, "to": number, "from": "02-123-4567"},
    }
    result = {
        "messageId": message_id,
        "providerId": "solapi",
        "providerMessageId": f"G-{message_id}" if rng.random() > 0.05 else "",
        "type": kind,
        "to": number,
    }
    return context, result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("lake")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default="m")
    parser.add_argument("--count", type=int, default=0, help="writes before stopping (0: forever)")
    parser.add_argument("--days", type=int, default=20, help="requested days spread over")
    parser.add_argument("--flush-rows", type=int, default=0, help="0: chosen from the seed")
    parser.add_argument("--flush-seconds", type=float, default=0.0, help="0: chosen from the seed")
    parser.add_argument("--compact-rows", type=int, default=400)
    parser.add_argument("--p-batch", type=float, default=0.12)
    parser.add_argument("--p-compact", type=float, default=0.01)
    parser.add_argument("--self-kill", action="store_true")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    store = ParquetTrackingStore(
        args.lake,
        hash_key=HASH_KEY,
        flush_rows=args.flush_rows or rng.choice([5, 37, 150]),
        flush_seconds=args.flush_seconds or rng.choice([0.02, 0.3, 30.0]),
        compact_rows=args.compact_rows,
    )
    svc = DeliveryTrackingService([Gateway()], store=store)
    out = sys.stdout

    def progress(step: str) -> None:
        out.write(f"#{step}\n")
        out.flush()

    written: list[str] = []
    sent: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    n = 0
    while args.count == 0 or n < args.count:
        r = rng.random()
        if r < args.p_compact:
            progress("compact")
            store.compact(progress=progress)
            progress("compacted")
            continue
        if r < args.p_compact + args.p_batch:
            size = rng.randint(2, 40)
            if args.count:
                size = min(size, args.count - n)
            ids = [f"{args.prefix}-{n + k:07d}" for k in range(size)]
            batch = [pair(i, rng, args.days) for i in ids]
            svc.record_sends(batch)
            out.write("".join(f"{i}\n" for i in ids))
            out.flush()
            sent.update(zip(ids, batch, strict=True))
            written.extend(ids)
            n += size
            continue
        if sent and rng.random() < 0.05:
            # the same send recorded again (k-msg records on "queued", then on "success")
            mid = rng.choice(written)
            context, result = sent[mid]
        else:
            mid = f"{args.prefix}-{n:07d}"
            context, result = sent[mid] = pair(mid, rng, args.days)
            written.append(mid)
        svc.record_send(context, result)
        out.write(f"{mid}\n")
        out.flush()
        n += 1
    if args.self_kill:
        os.kill(os.getpid(), signal.SIGKILL)
    svc.close()
    progress("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
