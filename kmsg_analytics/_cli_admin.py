"""The ``doctor``, ``retention`` and ``keys`` commands of ``kmsg-analytics`` (see :mod:`.cli`).

``kmsg-analytics doctor --lake PATH [--repair]`` checks every file of a lake and exits
0 when it is healthy, 1 when problems remain. ``kmsg-analytics retention plan|apply
--lake PATH`` shows, then removes, what is past its retention. ``kmsg-analytics keys
rotate --lake PATH [--check]`` re-seals encrypted numbers with the current key (or,
with ``--check``, counts them per key id).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["add_admin_parsers", "cmd_doctor", "cmd_keys", "cmd_retention"]

_DEFAULT_LAKE = Path("data") / "lake"


def _override(text: str) -> tuple[str, float]:
    """``--tenant-override opsLogs=30``."""
    from ._records import RETENTION_CLASSES

    cls, sep, value = text.partition("=")
    cls = cls.strip()
    try:
        days = float(value.strip().replace("_", ""))
    except ValueError:
        days = float("nan")
    if not sep or cls not in RETENTION_CLASSES or days != days:
        msg = (
            f"--tenant-override {text!r}: expected CLASS=DAYS with CLASS one of "
            f"{', '.join(RETENTION_CLASSES)}, such as opsLogs=30"
        )
        raise argparse.ArgumentTypeError(msg)
    return cls, int(days) if days.is_integer() else days


def _moment(text: str) -> datetime:
    from ._records import coerce_time

    try:
        return coerce_time(text, "--now")
    except ValueError as err:
        msg = f"--now {text!r}: expected an ISO time such as 2026-03-01T00:00:00Z"
        raise argparse.ArgumentTypeError(msg) from err


def _available_hash_key() -> str | None:
    """The hash key from the environment or an existing key file (never creates one)."""
    from ._phone import HASH_KEY_ENV, _default_key_file

    if os.environ.get(HASH_KEY_ENV):
        return os.environ[HASH_KEY_ENV]
    path = _default_key_file()
    return path.read_text().strip() if path.exists() else None


def _available_keys() -> Any:
    """Encryption keys from the environment or an existing key file (never creates one)."""
    try:
        from ._crypto import KEY_ENV, default_key_file, resolve_key_provider
    except ImportError:  # pragma: no cover - encryption not built in
        return None
    if os.environ.get(KEY_ENV):
        return resolve_key_provider(None)
    path = default_key_file()
    return path if path.exists() else None


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check a lake (and repair it with ``--repair``); 0 when healthy, 1 otherwise."""
    from ._doctor import check_lake
    from ._errors import KmsgAnalyticsError

    if not Path(args.lake).is_dir():
        msg = f"no lake at {args.lake}"
        raise KmsgAnalyticsError(msg)
    key = _available_hash_key()
    note = None
    if key is not None:
        from ._lakefs import read_json
        from ._phone import HashKey

        lake_key = read_json(Path(args.lake) / "_lake.json", {}).get("hash_key_id")
        if lake_key is not None and HashKey(key).key_id != lake_key:
            note = (
                f"note: the number-hash key here (id {HashKey(key).key_id}) is not this lake's "
                f"(id {lake_key}); set KMSG_ANALYTICS_HASH_KEY to the lake's key to check it "
                "and to publish dead writers' logs"
            )
            key = None
    report = check_lake(args.lake, hash_key=key, repair=args.repair)
    print(report)
    if note:
        print(note)
    keys = _available_keys()
    if keys is not None and report.key_ids:
        from ._crypto import resolve_key_provider

        unknown = sorted(set(report.key_ids) - set(resolve_key_provider(keys).kids()))
        if unknown:
            print(
                f"note: numbers sealed with key ids {', '.join(unknown)} cannot be decrypted "
                "with the keys here ($KMSG_ANALYTICS_KEY or the key file); analytics do not "
                "need them"
            )
    return 0 if report.ok else 1


def _policy(args: argparse.Namespace) -> Any:
    from ._retention import RetentionPolicy

    return RetentionPolicy(
        preset=args.preset,
        tenant_override_days=dict(args.tenant_override or []),
        tenant_id=args.tenant_id,
    )


def cmd_retention(args: argparse.Namespace) -> int:
    """Show (``plan``) or remove (``apply``) what is past its retention."""
    from ._errors import KmsgAnalyticsError
    from ._retention import apply_retention, plan_retention

    if not (Path(args.lake) / "_lake.json").exists():
        msg = f"no lake at {args.lake}"
        raise KmsgAnalyticsError(msg)
    policy = _policy(args)
    if args.action == "plan":
        plan = plan_retention(args.lake, now=args.now, policy=policy)
        print("\n".join(plan.lines()))
        if plan.messages:
            print(f"run `kmsg-analytics retention apply --lake {args.lake}` to remove them")
        return 0
    result = apply_retention(
        args.lake,
        now=args.now,
        policy=policy,
        progress=lambda line: print(line, file=sys.stderr, flush=True) if args.verbose else None,
    )
    print("\n".join(result.lines()))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """Re-seal numbers with the current key (``rotate``) or count them per key id (``--check``).

    Exits 0 when every number (published or in a write-ahead log) is under the current
    key, 1 when some are not (yet), 2 on an error.
    """
    from ._crypto import KeyUnavailableError
    from ._errors import KmsgAnalyticsError
    from ._keys import key_usage, rotate_keys

    if not (Path(args.lake) / "_lake.json").exists():
        msg = f"no lake at {args.lake}"
        raise KmsgAnalyticsError(msg)
    keys = args.key_file if args.key_file is not None else _available_keys()
    if args.check or args.action == "check":
        usage = key_usage(args.lake, keys=keys)
        print("\n".join(usage.lines()))
        return 0 if usage.rotated or (usage.active_kid is None and not usage.kids) else 1
    if keys is None:
        msg = (
            "no encryption keys here: set $KMSG_ANALYTICS_KEY to 'newkid:KEY,oldkid:KEY' "
            "(the current key first) or pass --key-file"
        )
        raise KeyUnavailableError(msg)
    hash_key = _available_hash_key()
    if hash_key is None:
        msg = (
            "the lake's number-hash key is needed to open it: set KMSG_ANALYTICS_HASH_KEY "
            "(or create the key file) first"
        )
        raise KmsgAnalyticsError(msg)
    result = rotate_keys(
        args.lake,
        keys=keys,
        hash_key=hash_key,
        progress=lambda line: print(line, file=sys.stderr, flush=True) if args.verbose else None,
    )
    print("\n".join(result.lines()))
    return 0 if result.after.rotated else 1


def add_admin_parsers(sub: Any) -> None:
    """Add ``doctor``, ``retention`` and ``keys`` to the subcommands of ``kmsg-analytics``."""
    doctor: argparse.ArgumentParser = sub.add_parser(
        "doctor",
        help="check every file of a lake (exit 1 when problems are found)",
        description=(
            "Read every file of the lake and check schema, format version, sequence numbers, "
            "partitions, leftovers and key ids. --repair moves damaged files to "
            "<lake>/_quarantine/ (never deletes) and rebuilds what can be rebuilt. The hash "
            "key comes from $KMSG_ANALYTICS_HASH_KEY or the key file when there is one."
        ),
    )
    doctor.add_argument("--lake", type=Path, default=_DEFAULT_LAKE)
    doctor.add_argument(
        "--repair", action="store_true", help="quarantine damaged files and rebuild"
    )
    doctor.set_defaults(func=cmd_doctor)

    from ._retention import RETENTION_PRESETS

    retention: argparse.ArgumentParser = sub.add_parser(
        "retention",
        help="show (plan) or remove (apply) what is past its retention",
        description=(
            "Retention classes as in k-msg: a preset's days per class, replaced by a positive "
            "tenant override. apply removes the messages past retention with all their "
            "snapshots, one partition at a time, and records what it removed in "
            "<lake>/_retention/log.jsonl."
        ),
    )
    retention.add_argument("action", choices=["plan", "apply"])
    retention.add_argument("--lake", type=Path, default=_DEFAULT_LAKE)
    retention.add_argument("--preset", choices=sorted(RETENTION_PRESETS), default="kr-b2b-baseline")
    retention.add_argument(
        "--now", type=_moment, default=None, help="measure retention at this time (default: now)"
    )
    retention.add_argument(
        "--tenant-override",
        type=_override,
        action="append",
        metavar="CLASS=DAYS",
        help="days of one class, replacing the preset when positive (repeatable)",
    )
    retention.add_argument("--tenant-id", default=None)
    retention.add_argument(
        "-v", "--verbose", action="store_true", help="print each partition as it is replaced"
    )
    retention.set_defaults(func=cmd_retention)

    keys: argparse.ArgumentParser = sub.add_parser(
        "keys",
        help="re-seal encrypted numbers with the current key (rotate), or count them (--check)",
        description=(
            "rotate: re-encrypt every sealed number of the lake with the current key (the "
            "first in $KMSG_ANALYTICS_KEY or the key file), one file at a time, each replaced "
            "in one rename; the old keys must still be given. Run again to finish a rotation "
            "that was interrupted. --check (or `keys check`) only counts the numbers under "
            "each key id, and tells when an old key can be retired. Exit 0 when every number "
            "is under the current key, 1 otherwise."
        ),
    )
    keys.add_argument("action", choices=["rotate", "check"])
    keys.add_argument("--lake", type=Path, default=_DEFAULT_LAKE)
    keys.add_argument(
        "--check", action="store_true", help="count numbers per key id; change nothing"
    )
    keys.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="key file (kid:key lines, current first, owner-only) instead of the environment",
    )
    keys.add_argument(
        "-v", "--verbose", action="store_true", help="print each file as it is re-sealed"
    )
    keys.set_defaults(func=cmd_keys)
