"""The ``poll`` and ``check-gateways`` commands of ``kmsg-analytics`` (wired in by :mod:`.cli`).

``kmsg-analytics check-gateways --config gateways.toml`` asks every configured gateway
endpoint one cheap, authenticated question and prints whether it is reachable and
accepts the credentials (exit status 1 when one does not).

``kmsg-analytics poll --lake PATH --config gateways.toml`` polls the real gateways for
the lake's open messages until Ctrl-C/SIGTERM (one progress line per run). It first
runs the same check and refuses to start when a gateway rejects its credentials:
polling with a bad key would finalise every checked message as ``UNKNOWN``. Open
messages of providers that are not configured are left alone (kept polling by
backoff as ``UNSUPPORTED_PROVIDER``), never finalised as ``PROVIDER_NOT_FOUND``.

Without ``--config`` the settings come from environment variables (``SOLAPI_API_KEY``,
``SOLAPI_API_SECRET``, ``IWINV_API_KEY``, ...; see :mod:`._gateways.config`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import KmsgAnalyticsError

if TYPE_CHECKING:
    from ._gateways import GatewayCheck, GatewaysConfig
    from ._gateways.iwinv import IwinvProvider
    from ._gateways.solapi import SolapiProvider

__all__ = [
    "add_check_gateways_parser",
    "add_gateway_parsers",
    "add_poll_arguments",
    "check_gateways",
    "cmd_check_gateways",
    "cmd_poll",
]

_DEFAULT_LAKE = Path("data") / "lake"


class _Unconfigured:
    """A provider without a gateway: the runner keeps its records polling by backoff."""

    def __init__(self, provider_id: str) -> None:
        self.id = provider_id


def add_gateway_parsers(sub: Any) -> None:
    """Add ``poll`` and ``check-gateways`` to the subcommands of ``kmsg-analytics``."""
    poll: argparse.ArgumentParser = sub.add_parser(
        "poll",
        help="poll SOLAPI/IWINV for the delivery status of a lake's open messages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_poll_arguments(poll)
    add_check_gateways_parser(sub)


def add_poll_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``poll`` (for a ``poll`` parser defined elsewhere)."""
    parser.add_argument("--lake", type=Path, default=_DEFAULT_LAKE, help="the lake to poll")
    parser.add_argument(
        "--config", type=Path, default=None, help="gateways.toml (default: environment variables)"
    )
    parser.add_argument(
        "--interval", type=float, default=None, help="seconds between runs (default: interval_ms)"
    )
    parser.add_argument("--max-runs", type=int, default=None, help="stop after this many runs")
    parser.add_argument(
        "--until-idle", action="store_true", help="stop once no open message is left"
    )
    parser.add_argument(
        "--skip-check", action="store_true", help="start without checking the gateways first"
    )
    parser.set_defaults(func=cmd_poll)


def add_check_gateways_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``check-gateways``."""
    p: argparse.ArgumentParser = sub.add_parser(
        "check-gateways",
        help="check that each configured gateway is reachable and accepts its credentials",
    )
    p.add_argument(
        "--config", type=Path, default=None, help="gateways.toml (default: environment variables)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check_gateways)
    return p


def _load(path: Path | None) -> GatewaysConfig:
    from ._gateways import load_gateways_config

    config = load_gateways_config(path)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not config.configured:
        where = f"{path}" if path is not None else "the environment"
        msg = (
            f"no gateway is configured in {where}: add a [solapi] or [iwinv] section with "
            "credentials, or set SOLAPI_API_KEY/SOLAPI_API_SECRET or IWINV_API_KEY"
        )
        raise KmsgAnalyticsError(msg)
    return config


def check_gateways(providers: Sequence[SolapiProvider | IwinvProvider]) -> list[GatewayCheck]:
    """Check every provider's endpoints at once; returns one :class:`GatewayCheck` each."""
    import asyncio  # here, not at the top: every other command starts without it

    async def run() -> list[GatewayCheck]:
        outcomes: list[Any] = await asyncio.gather(*(p.check() for p in providers))
        checks: list[GatewayCheck] = []
        for outcome in outcomes:
            checks.extend(outcome if isinstance(outcome, list) else [outcome])
        for provider in providers:
            await provider.aclose()
        return checks

    return asyncio.run(run())


def _print_report(checks: Sequence[GatewayCheck], source: str) -> None:
    print(f"gateways from {source}")
    for check in checks:
        print("  " + check.line())
    failed = sum(not c.ok and not c.skipped for c in checks)
    print(f"{len(checks) - failed} of {len(checks)} endpoints ok")


def cmd_check_gateways(args: argparse.Namespace) -> int:
    """Check each configured gateway endpoint and print the report."""
    config = _load(args.config)
    providers = config.build_providers()
    try:
        checks = check_gateways(providers)
    finally:
        for provider in providers:
            provider.close()
    if args.json:
        print(json.dumps([c.to_dict() for c in checks], ensure_ascii=False, indent=2))
    else:
        _print_report(checks, config.source)
    return 0 if all(c.ok or c.skipped for c in checks) else 1


def cmd_poll(args: argparse.Namespace) -> int:
    """Poll the configured gateways for the lake's open messages until stopped."""
    from ._lake import ParquetTrackingStore
    from ._records import POLLABLE_STATUSES, RecordFilter
    from ._runner import poll_until_stopped
    from ._service import DeliveryTrackingService

    config = _load(args.config)
    if not (args.lake / "_lake.json").exists():
        msg = f"no lake at {args.lake}: record sends into it, or build one with `demo`"
        raise KmsgAnalyticsError(msg)
    providers = config.build_providers()
    try:
        if not args.skip_check:
            checks = check_gateways(providers)
            _print_report(checks, config.source)
            refused = [c for c in checks if not c.ok and c.code == "AUTHENTICATION_FAILED"]
            if refused:
                names = ", ".join(c.gateway for c in refused)
                print(
                    f"not polling: {names} refused the credentials, and polling would finalise "
                    "their messages as UNKNOWN; fix the configuration (or pass --skip-check)",
                    file=sys.stderr,
                )
                return 1
        store = ParquetTrackingStore(args.lake)
        try:
            configured = set(config.configured)
            open_ids = (
                store.count_by(RecordFilter(status=list(POLLABLE_STATUSES)), ["provider_id"])
                .collect()
                .get_column("provider_id")
                .to_list()
            )
            others = sorted(str(p) for p in open_ids if p is not None and p not in configured)
            if others:
                print(
                    f"note: open messages of {', '.join(others)} have no configured gateway; "
                    "they are left polling by backoff (UNSUPPORTED_PROVIDER)",
                    file=sys.stderr,
                )
            all_providers: list[Any] = [*providers, *(_Unconfigured(p) for p in others)]
            service = DeliveryTrackingService(all_providers, store=store, polling=config.polling)
            try:
                total = poll_until_stopped(
                    service,
                    interval=args.interval,
                    max_runs=args.max_runs,
                    until_idle=args.until_idle,
                )
            finally:
                for provider in providers:
                    provider.close()
                service.stop()
        finally:
            store.close()
    finally:
        for provider in providers:
            provider.close()
    print(f"total: {total.summary_line()}")
    return 0
