"""The ``import`` and ``export`` commands of ``kmsg-analytics`` (wired in by :mod:`.cli`).

``kmsg-analytics import URL --lake PATH`` appends k-msg's tracking table to a lake (only
what is new or changed since the last import); ``kmsg-analytics export --lake PATH
--format parquet|csv|jsonl`` writes the current records or the history out, numbers
masked unless asked otherwise, or ``--to sqlite:///file`` in k-msg's own table layout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["add_export_parser", "add_import_parser", "cmd_export", "cmd_import"]

_DEFAULT_LAKE = Path("data") / "lake"


def _column_map(text: str) -> dict[str, str]:
    """``--column-map``: a JSON object or ``messageId=id,status=state``."""
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as err:
            msg = f"--column-map {text!r}: not a JSON object ({err})"
            raise argparse.ArgumentTypeError(msg) from err
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            msg = f"--column-map {text!r}: expected an object of column names"
            raise argparse.ArgumentTypeError(msg)
        return data
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            msg = f"--column-map item {item!r}: expected key=column, such as messageId=id"
            raise argparse.ArgumentTypeError(msg)
        out[key.strip()] = value.strip()
    return out


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        msg = f"{text!r}: expected a whole number >= 1"
        raise argparse.ArgumentTypeError(msg)
    return value


class _Progress:
    """Progress lines on stderr, at most one a second (and the last one)."""

    def __init__(self) -> None:
        self.last = 0.0
        self.started = time.perf_counter()

    def __call__(self, done: int, total: int | None) -> None:
        now = time.perf_counter()
        if now - self.last < 1.0 and done != total:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        share = f" ({done / total:.0%})" if total else ""
        of = f" / {total:,}" if total is not None else ""
        print(f"  {done:,}{of} rows{share}, {rate:,.0f} rows/s", file=sys.stderr, flush=True)


def add_import_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``import`` to the subcommands of ``kmsg-analytics``."""
    p: argparse.ArgumentParser = sub.add_parser(
        "import",
        help="append k-msg's tracking table (SQLite, PostgreSQL, MySQL) to a lake",
        description=(
            "Read k-msg's delivery-tracking table through Ibis and append a snapshot for "
            "every message that is new or changed since the last import. Rows that cannot "
            "be read are reported and skipped (--strict: fail, writing nothing)."
        ),
    )
    p.add_argument(
        "url",
        help="sqlite:///abs/path.sqlite, postgresql://user:pw@host:5432/db or mysql://...",
    )
    p.add_argument("--lake", type=Path, default=_DEFAULT_LAKE, help="the lake (created if missing)")
    p.add_argument("--table", default="kmsg_delivery_tracking", help="k-msg's tableName")
    p.add_argument(
        "--column-map",
        type=_column_map,
        default=None,
        help="k-msg's columnMap overrides: JSON or messageId=id,status=state",
    )
    p.add_argument(
        "--timestamps",
        choices=["auto", "epoch_ms", "date"],
        default="auto",
        help="k-msg's typeStrategy.timestamp: epoch_ms (bigint/integer) or date (default: auto)",
    )
    p.add_argument("--strict", action="store_true", help="fail on the first unreadable row")
    p.add_argument(
        "--full",
        action="store_true",
        help="read and compare every row, not only those written since the last import",
    )
    p.add_argument("--chunk-rows", type=_positive, default=50_000, help="rows per chunk")
    p.add_argument(
        "--show-errors", type=int, default=20, help="unreadable rows to list (default 20)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_import)
    return p


def cmd_import(args: argparse.Namespace) -> int:
    """Run ``kmsg-analytics import``; returns the exit code."""
    from ._kmsg_import import import_kmsg_table

    report = import_kmsg_table(
        args.url,
        args.lake,
        table=args.table,
        column_map=args.column_map,
        timestamps=args.timestamps,
        strict=args.strict,
        full=args.full,
        chunk_rows=args.chunk_rows,
        progress=None if args.quiet else _Progress(),
    )
    print(report.summary())
    if report.skipped:
        shown = report.errors[: max(args.show_errors, 0)]
        print(f"{report.skipped:,} rows could not be read and were skipped:", file=sys.stderr)
        for err in shown:
            print(f"  {err}", file=sys.stderr)
        if report.skipped > len(shown):
            print(f"  ... and {report.skipped - len(shown):,} more", file=sys.stderr)
    return 0


def add_export_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``export`` to the subcommands of ``kmsg-analytics``."""
    p: argparse.ArgumentParser = sub.add_parser(
        "export",
        help="write a lake's records to parquet/csv/jsonl, or to k-msg's table layout",
        description=(
            "Write the current records (or with --history every snapshot) to a file, one "
            "file per partition with --partitioned, numbers masked unless --numbers says "
            "otherwise; or with --to sqlite:///file into k-msg's own table layout."
        ),
    )
    p.add_argument("--lake", type=Path, default=_DEFAULT_LAKE)
    p.add_argument("--format", choices=["parquet", "csv", "jsonl"], default=None)
    p.add_argument("--out", type=Path, default=None, help="file (or directory with --partitioned)")
    p.add_argument("--history", action="store_true", help="every snapshot, not the current state")
    p.add_argument(
        "--numbers",
        choices=["masked", "hashed", "plain"],
        default=None,
        help="masked (default for files), hashed (default for --to) or plain",
    )
    p.add_argument("--partitioned", action="store_true", help="one file per day")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--to", default=None, help="sqlite:///file.sqlite: k-msg's table layout")
    p.add_argument("--table", default="kmsg_delivery_tracking", help="table name for --to")
    p.add_argument(
        "--if-exists", choices=["fail", "replace", "append"], default="fail", help="for --to"
    )
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``kmsg-analytics export``; returns the exit code."""
    from ._export import export_kmsg_table, export_records

    def say(line: str) -> None:
        print(f"  {line}", file=sys.stderr, flush=True)

    if args.to is not None:
        if args.history or args.partitioned or args.out is not None:
            print(
                "kmsg-analytics export: --to writes k-msg's table of current records; "
                "--history, --partitioned and --out are for files",
                file=sys.stderr,
            )
            return 2
        report = export_kmsg_table(
            args.lake,
            args.to,
            table=args.table,
            numbers=args.numbers or "hashed",
            if_exists=args.if_exists,
            progress=say,
        )
    else:
        fmt = args.format
        out = args.out
        if out is None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            what = "history" if args.history else "current"
            suffix = "" if args.partitioned else f".{fmt or 'parquet'}"
            out = Path(f"kmsg-{what}-{stamp}{suffix}")
            fmt = fmt or "parquet"
        report = export_records(
            args.lake,
            out,
            format=fmt,
            what="history" if args.history else "current",
            numbers=args.numbers or "masked",
            partitioned=args.partitioned,
            overwrite=args.overwrite,
            progress=say,
        )
    print(report.summary())
    return 0
