"""Benchmark the real gateway clients: status checks per second through one runner.

Usage::

    python benchmarks/bench_gateways.py [--n 6000] [--latency-ms 20] [--concurrency 64]
        [--rate 1200] [--burst 10] [--capped-rate 500] [--capped-n 2000] [--out FILE]

The fake SOLAPI and IWINV servers of ``tests/_fake_gateways.py`` run in a process of
their own (``http.server``, HTTP/1.1 keep-alive, a thread per connection), answering
each request after ``--latency-ms``; SOLAPI requests are signed and verified as the real
one does. For each gateway:

1. **Throughput.** A Parquet lake holds ``--n`` due messages of that gateway; one
   ``run_once`` with ``batch_size=n`` and ``concurrency=--concurrency`` checks them all
   through :class:`SolapiProvider` / :class:`IwinvProvider` (AlimTalk history), whose
   rate limit is ``--rate`` requests/s with a bucket of ``--burst``. Reported: checks per
   second of the whole run (due list, checks, guard, snapshot write) and of the checks
   phase alone. Target: >= 1,000 checks/s.
2. **The rate limit.** The server's arrival times of that run, and of a second run of
   ``--capped-n`` messages limited to ``--capped-rate``/s (below what the run could do):
   the largest number of requests that arrived in any 1 s window, against the limit's
   bound ``rate + burst``, and the mean rate. Target: never above the bound.

A warm-up run in a small lake first pays the one-time costs (the lake's first write,
imports). Every check must answer ``DELIVERED``; the benchmark fails otherwise.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kmsg_analytics import DeliveryTrackingService, ParquetTrackingStore  # noqa: E402
from kmsg_analytics._gateways import HttpSettings, IwinvProvider, SolapiProvider  # noqa: E402
from kmsg_analytics._providers import (  # noqa: E402
    DeliveryStatusQuery,
    DeliveryStatusResult,
    PollingConfig,
)
from tests._fake_gateways import IWINV_KEY, SOLAPI_KEY, SOLAPI_SECRET  # noqa: E402

KEY = "bench-key-0123456789"
GATEWAYS = ("solapi", "iwinv")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class FakeServers:
    """The fake gateways in a subprocess; ``arrivals()`` gives their request times."""

    def __init__(self, latency_ms: float, messages: int, server: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests._fake_gateways",
                "--latency-ms",
                str(latency_ms),
                "--messages",
                str(messages),
                "--server",
                server,
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.urls: dict[str, str] = json.loads(self.proc.stdout.readline())

    def _ask(self, command: str) -> Any:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def reset(self) -> None:
        self._ask("reset")

    def arrivals(self) -> dict[str, list[float]]:
        return self._ask("arrivals")  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


class Instant:
    """An ``async`` provider answering DELIVERED at once, in process: the runner's and the
    lake's share of a check, without HTTP."""

    _clients: tuple[Any, ...] = ()
    requests_sent = 0

    def __init__(self, provider_id: str) -> None:
        self.id = provider_id

    async def get_delivery_status(self, query: DeliveryStatusQuery) -> DeliveryStatusResult:
        return DeliveryStatusResult(self.id, query.provider_message_id, "DELIVERED")

    def close(self) -> None:
        pass


def provider(gateway: str, urls: dict[str, str], settings: HttpSettings) -> Any:
    if gateway == "instant":
        return Instant("solapi")
    if gateway == "solapi":
        return SolapiProvider(SOLAPI_KEY, SOLAPI_SECRET, base_url=urls["solapi"], http=settings)
    return IwinvProvider(IWINV_KEY, base_url=urls["iwinv"] + "/alimtalk", http=settings)


def sends(gateway: str, n: int, offset: int, requested: datetime) -> list[tuple[Any, Any]]:
    """``n`` sends of the preloaded messages ``offset..offset+n`` (due now)."""
    out = []
    for i in range(offset, offset + n):
        pmid = f"M{i:08d}" if gateway != "iwinv" else str(100_000 + i)
        kind = "SMS" if gateway != "iwinv" else "ALIMTALK"
        provider_id = "iwinv" if gateway == "iwinv" else "solapi"
        mid = f"{gateway}-{i}"
        out.append(
            (
                {"message_id": mid, "timestamp": requested, "options": {"type": kind, "to": "01012345678"}},
                {"message_id": mid, "provider_id": provider_id, "provider_message_id": pmid, "type": kind,
                 "to": "01012345678"},
            )
        )  # fmt: skip
    return out


def one_run(
    gateway: str,
    urls: dict[str, str],
    scratch: Path,
    *,
    n: int,
    offset: int,
    concurrency: int,
    rate: float,
    burst: int,
) -> dict[str, Any]:
    """Record ``n`` due sends in a new lake and check them all in one ``run_once``."""
    lake = Path(tempfile.mkdtemp(dir=scratch)) / "lake"
    settings = HttpSettings(
        timeout=10.0, rate_limit=rate, burst=burst, max_connections=concurrency, max_retries=0
    )
    polling = PollingConfig(batch_size=n, concurrency=concurrency, check_timeout_ms=60_000)
    requested = datetime.now(UTC) - timedelta(minutes=10)
    gw = provider(gateway, urls, settings)
    sent_at = record_tokens(gw)
    store = ParquetTrackingStore(lake, hash_key=KEY)
    svc = DeliveryTrackingService([gw], store=store, polling=polling)
    try:
        svc.record_sends(sends(gateway, n, offset, requested))
        started, cpu = time.perf_counter(), time.process_time()
        report = svc.run_once()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        delivered = svc.count_records(status="DELIVERED")
    finally:
        gw.close()
        svc.close()
    if report.checked != n or report.errors_by_code or delivered != n:
        msg = f"{gateway}: checked {report.checked}/{n}, delivered {delivered}, errors {report.errors_by_code}"
        raise SystemExit(msg)
    checks_s = report.phases.get("checks", wall)
    return {
        "sent_at": sent_at,
        "n": n,
        "wall_s": wall,
        "checks_per_s": n / wall,
        "cpu_us_per_check": cpu / n * 1e6,
        "checks_phase_s": checks_s,
        "checks_phase_per_s": n / checks_s,
        "phases_s": dict(report.phases),
        "requests": gw.requests_sent,
    }


def record_tokens(gw: Any) -> list[float]:
    """Wall-clock times at which the provider's rate limiter let a request go out."""
    times: list[float] = []
    for client in gw._clients:
        limiter = client.limiter
        take = limiter.try_take

        def timed(take: Any = take) -> float:
            wait: float = take()
            if wait == 0.0:
                times.append(time.time())
            return wait

        limiter.try_take = timed
    return times


def window_stats(times: list[float], rate: float, burst: int) -> dict[str, Any]:
    """The most arrivals in any 1 s window (and 100 ms), and the mean rate."""
    times = sorted(times)
    if len(times) < 2:
        return {"count": len(times)}

    def most(width: float) -> int:
        return max(bisect.bisect_right(times, t + width - 1e-9) - i for i, t in enumerate(times))

    span = times[-1] - times[0]
    max_1s = most(1.0)
    return {
        "count": len(times),
        "mean_rate": (len(times) - 1) / span if span > 0 else float("inf"),
        "max_in_1s": max_1s,
        "bound_1s": rate + burst,
        "max_in_100ms": most(0.1),
        "bound_100ms": rate * 0.1 + burst,
        "respected": max_1s <= rate + burst,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=1200.0)
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--capped-rate", type=float, default=500.0)
    parser.add_argument("--capped-n", type=int, default=2000)
    parser.add_argument("--server", choices=("asyncio", "threads"), default="asyncio")
    parser.add_argument("--only", choices=GATEWAYS, default=None, help="benchmark one gateway only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    total = 200 + args.n + args.capped_n
    log(f"starting the fake gateways ({args.latency_ms:g} ms per answer, {total:,} messages each)")
    servers = FakeServers(args.latency_ms, total, args.server)
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            scratch = Path(tmp)
            log("instant in-process provider (the runner's and the lake's share of a check)")
            one_run("instant", servers.urls, scratch, n=200, offset=0,
                    concurrency=args.concurrency, rate=args.rate, burst=args.burst)  # fmt: skip
            results["instant"] = one_run("instant", servers.urls, scratch, n=args.n, offset=0,
                                         concurrency=args.concurrency, rate=args.rate,
                                         burst=args.burst)  # fmt: skip
            results["instant"].pop("sent_at")
            for gateway in [args.only] if args.only else GATEWAYS:
                log(f"{gateway}: warm-up")
                one_run(gateway, servers.urls, scratch, n=200, offset=0,
                        concurrency=args.concurrency, rate=args.rate, burst=args.burst)  # fmt: skip
                servers.reset()
                log(f"{gateway}: {args.n:,} checks at concurrency {args.concurrency}, "
                    f"rate limit {args.rate:g}/s")  # fmt: skip
                run = one_run(gateway, servers.urls, scratch, n=args.n, offset=200,
                              concurrency=args.concurrency, rate=args.rate, burst=args.burst)  # fmt: skip
                run["limit"] = window_stats(run.pop("sent_at"), args.rate, args.burst)
                run["arrivals"] = window_stats(servers.arrivals()[gateway], args.rate, args.burst)
                servers.reset()
                log(f"{gateway}: {args.capped_n:,} checks capped at {args.capped_rate:g}/s")
                capped = one_run(gateway, servers.urls, scratch, n=args.capped_n,
                                 offset=200 + args.n, concurrency=args.concurrency,
                                 rate=args.capped_rate, burst=args.burst)  # fmt: skip
                capped["limit"] = window_stats(capped.pop("sent_at"), args.capped_rate, args.burst)
                capped["arrivals"] = window_stats(
                    servers.arrivals()[gateway], args.capped_rate, args.burst
                )
                servers.reset()
                results[gateway] = {"throughput": run, "capped": capped}
    finally:
        servers.close()
    load = os.getloadavg()

    print()
    print(f"{'gateway':<8} {'run':<10} {'checks':>6} {'wall s':>6} {'checks/s':>8} "
          f"{'phase/s':>7} {'cpu us':>6} {'sent/s':>6} {'max 1s':>6} {'bound':>5} "
          f"{'srv 1s':>6}  limit")  # fmt: skip
    ok = True
    for gateway in [args.only] if args.only else GATEWAYS:
        for name in ("throughput", "capped"):
            r = results[gateway][name]
            lim, srv = r["limit"], r["arrivals"]
            ok &= lim["respected"]
            if name == "throughput":
                ok &= r["checks_per_s"] >= 1000
            print(
                f"{gateway:<8} {name:<10} {r['n']:>6,} {r['wall_s']:>6.2f} "
                f"{r['checks_per_s']:>8,.0f} {r['checks_phase_per_s']:>7,.0f} "
                f"{r['cpu_us_per_check']:>6,.0f} {lim['mean_rate']:>6,.0f} "
                f"{lim['max_in_1s']:>6,} {lim['bound_1s']:>5,.0f} {srv['max_in_1s']:>6,}  "
                f"{'respected' if lim['respected'] else 'EXCEEDED'}"
            )
    base = results["instant"]
    print(
        f"{'instant':<8} {'no HTTP':<10} {base['n']:>6,} {base['wall_s']:>6.2f} "
        f"{base['checks_per_s']:>8,.0f} {base['checks_phase_per_s']:>7,.0f} "
        f"{base['cpu_us_per_check']:>6,.0f}"
    )
    print(
        "\nchecks/s: the whole run_once (due list, checks, guard, write); phase/s: the checks"
        "\nphase; cpu us: this process's CPU per check (runner, HTTP client, lake); sent/s and"
        "\nmax 1s: requests the rate limiter let out (mean, most in any 1 s window) against"
        "\nbound = rate + burst; srv 1s: most arrivals the server saw in any 1 s window;"
        "\ninstant: the same runs with an in-process provider that answers at once."
    )
    print(f"target: >= 1,000 checks/s per gateway, never above the bound.  load average "
          f"{load[0]:.1f} on {os.cpu_count()} cores: {'PASS' if ok else 'FAIL'}")  # fmt: skip
    results["load_average"] = load
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
