"""The ``kmsg-analytics`` command line: one subcommand per job (``kmsg-analytics --help``)."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from ._cli_admin import add_admin_parsers
from ._cli_gateways import add_check_gateways_parser, add_poll_arguments
from ._cli_gateways import cmd_poll as cmd_poll_gateways
from ._cli_io import add_export_parser, add_import_parser
from ._cli_report import add_report_parser
from ._errors import KmsgAnalyticsError

if TYPE_CHECKING:
    from ._service import DeliveryTrackingService

__all__ = ["main"]

DEFAULT_LAKE = Path("data") / "lake"


def _since(text: str) -> timedelta:
    m = re.fullmatch(r"(\d+)\s*([hdw])", text.strip())
    if not m:
        msg = f"--since {text!r}: expected a number and a unit, such as 30d, 12h or 2w"
        raise argparse.ArgumentTypeError(msg)
    n, unit = int(m[1]), m[2]
    return {"h": timedelta(hours=n), "d": timedelta(days=n), "w": timedelta(weeks=n)}[unit]


def _print_frame(title: str, frame: pl.DataFrame) -> None:
    print(f"\n{title}")
    with pl.Config(tbl_rows=50, tbl_hide_dataframe_shape=True, fmt_str_lengths=40):
        print(frame)


def _open_lake(path: Path):  # type: ignore[no-untyped-def]
    from ._lake import ParquetTrackingStore

    if not (path / "_lake.json").exists():
        msg = f"no lake at {path}: run `kmsg-analytics demo --lake {path}` to build one"
        raise KmsgAnalyticsError(msg)
    return ParquetTrackingStore(path)


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: a demo lake of history, a batch of sends polled to completion, a summary."""
    from ._providers import ApiFailoverConfig
    from ._records import RecordFilter
    from ._runner import poll_until_stopped
    from ._service import DeliveryTrackingService
    from ._simulated import SimulatedClock, SimulatedProvider, demo_sends
    from ._synthetic import DEFAULT_END, build_demo_lake

    started = time.perf_counter()
    print(f"1/4 building a demo lake of {args.n:,} messages (seed {args.seed}) at {args.lake}")
    store = build_demo_lake(args.lake, n=args.n, seed=args.seed, end=DEFAULT_END)
    clock = SimulatedClock(DEFAULT_END)
    gateways = [SimulatedProvider(pid, seed=args.seed, clock=clock) for pid in ("solapi", "iwinv")]
    svc = DeliveryTrackingService(
        gateways,
        store=store,
        clock=clock,
        api_failover=ApiFailoverConfig(gateways[1].send_fallback),
    )
    try:
        print(f"2/4 recording {args.sends:,} sends through the simulated gateways")
        pairs = demo_sends(
            gateways, args.sends, start=clock(), seed=args.seed, every=timedelta(milliseconds=200)
        )
        svc.record_sends(pairs)
        print("3/4 polling them to completion on a simulated clock (a run per simulated minute)")
        total = poll_until_stopped(svc, interval=60, until_idle=True, out=_every(10))
        print(f"    all runs: {total.summary_line()}")
        store.compact()
        print("4/4 summary")
        everything = RecordFilter()
        _print_frame(
            "messages by provider and status",
            store.count_by(everything, ["provider_id", "status"]).collect(),
        )
        _print_frame(
            "failures by provider status code",
            store.count_by(
                RecordFilter(status="FAILED"), ["provider_id", "provider_status_code"]
            ).collect(),
        )
        _print_summary(svc, args)
        took = time.perf_counter() - started
        print(f"\n{store.count_records(everything):,} messages in {args.lake} ({took:.1f} s)")
    finally:
        svc.close()
    return 0


def _every(n: int) -> Callable[[str], None]:
    """A progress printer that shows every ``n``-th line (and the closing one)."""
    seen = [0]

    def out(line: str) -> None:
        seen[0] += 1
        if seen[0] % n == 1 or n == 1 or not line.startswith("["):
            print("   ", line, flush=True)

    return out


def _print_summary(svc: DeliveryTrackingService, args: argparse.Namespace) -> None:
    """Delivery rates of the demo lake (and charts, where the notebook extra is installed)."""
    try:
        from ._analytics import DeliveryAnalytics
    except ImportError:  # pragma: no cover - analytics ships with the core
        return
    from ._synthetic import DEFAULT_END

    analytics = DeliveryAnalytics(svc)
    start = DEFAULT_END - timedelta(days=90)
    end = DEFAULT_END + timedelta(days=2)
    summary = analytics.summary(start, end, include_by_provider=True)
    _print_frame("delivery summary (k-msg getSummary)", summary.to_polars())
    from ._report import charts_for_demo

    charts_for_demo(analytics, Path(args.lake).parent / "charts", formats=("png",))


def cmd_stats(args: argparse.Namespace) -> int:
    """Print file and row counts of a lake."""
    store = _open_lake(args.lake)
    try:
        for key, value in store.stats().items():
            print(f"{key:>16}: {value:,}")
    finally:
        store.close()
    return 0


def cmd_count_by(args: argparse.Namespace) -> int:
    """Print count_by over the current records of a lake."""
    from ._records import RecordFilter

    store = _open_lake(args.lake)
    try:
        flt = RecordFilter()
        if args.since is not None:
            flt = RecordFilter(requested_at_from=datetime.now(UTC) - args.since)
        groups = [g.strip() for g in args.group_by.split(",") if g.strip()]
        _print_frame(f"count by {', '.join(groups)}", store.count_by(flt, groups).collect())
    finally:
        store.close()
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    """Fold snapshots into the current state and merge small history files."""
    store = _open_lake(args.lake)
    try:
        report = store.compact(progress=lambda line: print(line, file=sys.stderr, flush=True))
        print(
            f"folded {report.snapshot_rows:,} rows into {report.partitions_rewritten} partitions; "
            f"history files {report.history_files_before} -> {report.history_files_after} "
            f"in {report.seconds:.2f} s"
        )
    finally:
        store.close()
    return 0


def _poll(args: argparse.Namespace) -> int:
    return cmd_poll_simulated(args) if args.simulated else cmd_poll_gateways(args)


def cmd_poll_simulated(args: argparse.Namespace) -> int:
    """Poll a lake with the simulated gateways until interrupted (Ctrl-C or SIGTERM)."""
    from ._runner import poll_until_stopped
    from ._service import DeliveryTrackingService
    from ._simulated import SimulatedProvider

    store = _open_lake(args.lake)
    gateways = [
        SimulatedProvider(pid, adopt_unknown=True) for pid in ("solapi", "iwinv", "aligo", "nhn")
    ]
    svc = DeliveryTrackingService(gateways, store=store)
    try:
        total = poll_until_stopped(svc, interval=args.interval, max_runs=args.max_runs)
        print(f"stopped; all runs: {total.summary_line()}")
    finally:
        svc.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kmsg-analytics``."""
    parser = argparse.ArgumentParser(prog="kmsg-analytics", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the main job: demo lake, sends polled, summary")
    demo.add_argument("--lake", type=Path, default=DEFAULT_LAKE)
    demo.add_argument("--n", type=int, default=20_000, help="messages of history (default 20,000)")
    demo.add_argument("--sends", type=int, default=2_000, help="new sends to poll (default 2,000)")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=cmd_demo)

    stats = sub.add_parser("stats", help="file and row counts of a lake")
    stats.add_argument("--lake", type=Path, default=DEFAULT_LAKE)
    stats.set_defaults(func=cmd_stats)

    cb = sub.add_parser("count-by", help="count current records by fields")
    cb.add_argument("--lake", type=Path, default=DEFAULT_LAKE)
    cb.add_argument("--group-by", default="provider_id,status")
    cb.add_argument(
        "--since", type=_since, default=None, help="only messages requested in the last e.g. 30d"
    )
    cb.set_defaults(func=cmd_count_by)

    poll = sub.add_parser("poll", help="poll a lake's open messages until Ctrl-C/SIGTERM")
    add_poll_arguments(poll)  # the real SOLAPI/IWINV clients from --config or the environment
    poll.add_argument("--simulated", action="store_true", help="use the simulated gateways instead")
    poll.set_defaults(func=_poll)
    add_check_gateways_parser(sub)

    compact = sub.add_parser("compact", help="fold snapshots and merge small files")
    compact.add_argument("--lake", type=Path, default=DEFAULT_LAKE)
    compact.set_defaults(func=cmd_compact)

    add_import_parser(sub)
    add_export_parser(sub)
    add_report_parser(sub)
    add_admin_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KmsgAnalyticsError as err:
        print(f"kmsg-analytics: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
