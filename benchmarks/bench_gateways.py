"""Benchmark the real gateway clients: status checks per second through one runner.

Usage::

    python benchmarks/bench_gateways.py [--n 6000] [--latency-ms 20] [--concurrency 64]
        [--rate 1200] [--burst 10] [--capped-rate 500] [--capped-n 2000]
        [--solapi-batch 100] [--only GATEWAY] [--out FILE]

The fake SOLAPI and IWINV servers of ``tests/_fake_gateways.py`` run in a process of
their own (an ``asyncio`` server per fake: requests framed by a protocol, each answer
written by a timer ``--latency-ms`` later), answering as the real ones do; SOLAPI
requests are signed and every signature is verified. For each gateway:

1. **Throughput.** A Parquet lake holds ``--n`` due messages of that gateway; one
   ``run_once`` with ``batch_size=n`` and ``concurrency=--concurrency`` checks them all
   through :class:`SolapiProvider` (``batch_size=--solapi-batch``: the checks running
   at once share a ``messageIds`` request) / :class:`IwinvProvider` (AlimTalk history,
   one request per check), whose rate limit is ``--rate`` requests/s with a bucket of
   ``--burst``. Reported: checks per second of the whole run (due list, checks, guard,
   snapshot write) and of the checks phase alone, and this process's CPU per check
   split into the client's share and the runner's and lake's (measured by the same
   runs with an in-process provider that answers at once). Target: >= 1,000 checks/s.
2. **The rate limit.** The times the limiter let requests out (each request is written
   as its token is taken) in that run, and in a second run of ``--capped-n`` messages
   limited to ``--capped-rate``/s (below what the run could do): the largest number of
   requests in any 1 s window, against the limit's bound ``rate + burst``. Target:
   never above. The server's arrival times are shown too; they are stamped when the
   fake gets to read a request, so a descheduled server can see a few more together.

``solapi1`` is SOLAPI with batching off (one id per request), for comparison: like
IWINV it is then bound by the rate limit. A warm-up run in a small lake first pays the
one-time costs (the lake's first write, imports). Every check must answer
``DELIVERED``; the benchmark fails otherwise.
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
GATEWAYS = ("solapi", "iwinv", "solapi1")
TARGETS = ("solapi", "iwinv")  # the configured gateways; solapi1 is for comparison


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

    def cpu(self) -> float:
        """CPU seconds the fake servers' process has used."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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


def provider(gateway: str, urls: dict[str, str], settings: HttpSettings, batch: int) -> Any:
    if gateway == "instant":
        return Instant("solapi")
    if gateway in ("solapi", "solapi1"):
        size = 1 if gateway == "solapi1" else batch
        return SolapiProvider(
            SOLAPI_KEY, SOLAPI_SECRET, base_url=urls["solapi"], http=settings, batch_size=size
        )
    return IwinvProvider(IWINV_KEY, base_url=urls["iwinv"] + "/alimtalk", http=settings)


def server_of(gateway: str) -> str:
    return "iwinv" if gateway == "iwinv" else "solapi"


def sends(gateway: str, n: int, offset: int, requested: datetime) -> list[tuple[Any, Any]]:
    """``n`` sends of the preloaded messages ``offset..offset+n`` (due now)."""
    out = []
    for i in range(offset, offset + n):
        pmid = f"M{i:08d}" if gateway != "iwinv" else str(100_000 + i)
        kind = "SMS" if gateway != "iwinv" else "ALIMTALK"
        provider_id = server_of(gateway)
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
    servers: FakeServers,
    scratch: Path,
    *,
    n: int,
    offset: int,
    concurrency: int,
    rate: float,
    burst: int,
    batch: int,
) -> dict[str, Any]:
    """Record ``n`` due sends in a new lake and check them all in one ``run_once``."""
    lake = Path(tempfile.mkdtemp(dir=scratch)) / "lake"
    settings = HttpSettings(
        timeout=10.0, rate_limit=rate, burst=burst, max_connections=concurrency, max_retries=0
    )
    polling = PollingConfig(batch_size=n, concurrency=concurrency, check_timeout_ms=60_000)
    requested = datetime.now(UTC) - timedelta(minutes=10)
    gw = provider(gateway, servers.urls, settings, batch)
    sent_at = record_tokens(gw)
    store = ParquetTrackingStore(lake, hash_key=KEY)
    svc = DeliveryTrackingService([gw], store=store, polling=polling)
    try:
        svc.record_sends(sends(gateway, n, offset, requested))
        server_cpu = servers.cpu()
        started, cpu = time.perf_counter(), time.process_time()
        report = svc.run_once()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        server_cpu = servers.cpu() - server_cpu
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
        "server_cpu_us_per_check": server_cpu / n * 1e6,
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
    parser.add_argument("--solapi-batch", type=int, default=100, help="SOLAPI ids per request")
    parser.add_argument("--server", choices=("asyncio", "threads"), default="asyncio")
    parser.add_argument("--only", choices=GATEWAYS, default=None, help="benchmark one gateway only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    gateways = [args.only] if args.only else list(GATEWAYS)

    total = 200 + args.n + args.capped_n
    log(f"starting the fake gateways ({args.latency_ms:g} ms per answer, {total:,} messages each)")
    servers = FakeServers(args.latency_ms, total, args.server)
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    common = {"concurrency": args.concurrency, "burst": args.burst, "batch": args.solapi_batch}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            scratch = Path(tmp)
            log("instant in-process provider (the runner's and the lake's share of a check)")
            one_run("instant", servers, scratch, n=200, offset=0, rate=args.rate, **common)
            results["instant"] = one_run(
                "instant", servers, scratch, n=args.n, offset=0, rate=args.rate, **common
            )
            results["instant"].pop("sent_at")
            for gateway in gateways:
                log(f"{gateway}: warm-up")
                one_run(gateway, servers, scratch, n=200, offset=0, rate=args.rate, **common)
                servers.reset()
                log(f"{gateway}: {args.n:,} checks at concurrency {args.concurrency}, "
                    f"rate limit {args.rate:g}/s")  # fmt: skip
                runs = {}
                plan = [("throughput", args.n, 200, args.rate)]
                if gateway != "solapi1":
                    plan.append(("capped", args.capped_n, 200 + args.n, args.capped_rate))
                for name, n, offset, rate in plan:
                    if name == "capped":
                        log(f"{gateway}: {n:,} checks capped at {rate:g}/s")
                    run = one_run(
                        gateway, servers, scratch, n=n, offset=offset, rate=rate, **common
                    )
                    run["limit"] = window_stats(run.pop("sent_at"), rate, args.burst)
                    arrived = servers.arrivals()[server_of(gateway)]
                    run["arrivals"] = window_stats(arrived, rate, args.burst)
                    servers.reset()
                    runs[name] = run
                results[gateway] = runs
    finally:
        servers.close()
    load = os.getloadavg()
    results["load_average"] = load
    ok = report(results, gateways, args)
    print(f"target: >= 1,000 checks/s for {' and '.join(TARGETS)}, never above the bound.  "
          f"load average {load[0]:.1f} on {os.cpu_count()} cores: {'PASS' if ok else 'FAIL'}")  # fmt: skip
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


def report(results: dict[str, Any], gateways: list[str], args: argparse.Namespace) -> bool:
    """Print the table; whether every target was met."""
    base = results["instant"]
    runner_us = base["cpu_us_per_check"]
    print()
    print(f"{'gateway':<8} {'run':<10} {'checks':>6} {'reqs':>5} {'wall s':>6} {'checks/s':>8} "
          f"{'phase/s':>7} {'cpu us':>6} {'client':>6} {'srv us':>6} {'sent/s':>6} "
          f"{'max 1s':>6} {'bound':>5} {'srv 1s':>6}  limit")  # fmt: skip
    ok = True
    for gateway in gateways:
        for name, r in results[gateway].items():
            lim, srv = r["limit"], r["arrivals"]
            ok &= lim["respected"]
            if name == "throughput" and gateway in TARGETS:
                ok &= r["checks_per_s"] >= 1000
            print(
                f"{gateway:<8} {name:<10} {r['n']:>6,} {r['requests']:>5,} {r['wall_s']:>6.2f} "
                f"{r['checks_per_s']:>8,.0f} {r['checks_phase_per_s']:>7,.0f} "
                f"{r['cpu_us_per_check']:>6,.0f} {r['cpu_us_per_check'] - runner_us:>6,.0f} "
                f"{r['server_cpu_us_per_check']:>6,.0f} {lim['mean_rate']:>6,.0f} "
                f"{lim['max_in_1s']:>6,} {lim['bound_1s']:>5,.0f} {srv['max_in_1s']:>6,}  "
                f"{'respected' if lim['respected'] else 'EXCEEDED'}"
            )
    print(
        f"{'instant':<8} {'no HTTP':<10} {base['n']:>6,} {0:>5} {base['wall_s']:>6.2f} "
        f"{base['checks_per_s']:>8,.0f} {base['checks_phase_per_s']:>7,.0f} {runner_us:>6,.0f}"
    )
    print(
        "\nchecks/s: the whole run_once (due list, checks, guard, write); phase/s: the checks"
        "\nphase; reqs: HTTP requests; cpu us: this process's CPU per check (runner, lake and"
        "\nHTTP client); client: cpu us less the instant run's (the client's share); srv us:"
        "\nthe fake servers' CPU per check; sent/s and max 1s: requests the rate limiter let"
        "\nout (mean, most in any 1 s window) against bound = rate + burst; srv 1s: most"
        "\narrivals the server saw in any 1 s window (by its clock when it got to read them:"
        "\na busy server stamps late ones together); instant: the same run with an in-process"
        "\nprovider that answers at once. SOLAPI asks up to"
        f" {args.solapi_batch} ids per request; solapi1 is SOLAPI"
        "\nwith one id per request, for comparison (not a target)."
    )
    return ok


if __name__ == "__main__":
    sys.exit(main())
