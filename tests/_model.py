"""A plain-Python reference model of the tracking semantics, for the contract and property tests.

It knows nothing of the stores: a list of snapshots in write order, the precedence
rule that picks each message's current state, and the queries written as loops and
sorts over dicts. Nothing here imports kmsg_analytics or polars, so a bug shared by
the library's query code cannot hide in the model too.

A *record* is a dict with the tracking record's field names; times are aware UTC
datetimes, ``last_error`` is ``None`` or ``{"code": ..., "message": ...}``,
``metadata`` a dict and ``raw`` any JSON value. A *snapshot* is a record plus
``kind`` (``send``, ``poll``, ``load`` or ``patch``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "DELIVERY_STATUSES",
    "POLLABLE_STATUSES",
    "RECORD_FIELDS",
    "TEST_KEY",
    "TIME_BUCKETS",
    "TrackingModel",
    "as_model_record",
    "bucket_start",
    "hash_number",
    "mask_number",
    "normalize_number",
]

#: The number-hash key every test store is opened with (no key file needed).
TEST_KEY = "test-key-123"

DELIVERY_STATUSES = ("PENDING", "SENT", "DELIVERED", "FAILED", "CANCELLED", "UNKNOWN")
POLLABLE_STATUSES = ("PENDING", "SENT")
SNAPSHOT_KINDS = ("send", "poll", "load", "patch")

#: The tracking record's fields (the columns of ``list_records``), in no particular order.
RECORD_FIELDS = (
    "message_id", "provider_id", "provider_message_id", "type",
    "to", "from_", "to_hash", "to_masked", "from_hash", "from_masked",
    "requested_at", "scheduled_at", "status", "provider_status_code", "provider_status_message",
    "sent_at", "delivered_at", "failed_at", "status_updated_at", "attempt_count",
    "last_checked_at", "next_check_at", "last_error", "raw", "metadata",
    "retention_class", "retention_bucket_ym",
)  # fmt: skip

_LIST_FILTERS = (
    "message_id",
    "provider_id",
    "provider_message_id",
    "type",
    "status",
    "to_hash",
    "from_hash",
)
_RANGE_FILTERS = {
    "requested_at_from": ("requested_at", "ge"),
    "requested_at_to": ("requested_at", "le"),
    "status_updated_at_from": ("status_updated_at", "ge"),
    "status_updated_at_to": ("status_updated_at", "le"),
}
TIME_BUCKETS = {
    "requested_at_hour": "hour",
    "requested_at_day": "day",
    "requested_at_week": "week",
    "requested_at_month": "month",
}
_GROUP_FIELDS = ("provider_id", "type", "status", "provider_status_code", "retention_class")
_SEPARATORS = re.compile(r"[\s\-().]")


# --------------------------------------------------------------------------- numbers and times


def normalize_number(text: str) -> str:
    """Canonical digits of a Korean number: separators dropped, ``+82`` becomes a leading 0."""
    digits = _SEPARATORS.sub("", text)
    if digits.startswith("+82"):
        rest = digits[3:]
        digits = rest if rest.startswith("0") else "0" + rest
    if not digits.isdigit():
        msg = f"not a number the model understands: {text!r}"
        raise ValueError(msg)
    return digits


def hash_number(text: str, key: str = TEST_KEY) -> str:
    """HMAC-SHA256 (hex) of the canonical digits of ``text``."""
    return hmac.new(key.encode(), normalize_number(text).encode(), hashlib.sha256).hexdigest()


def mask_number(text: str) -> str:
    """``010****5678``: first three and last four digits kept (all masked when 7 or fewer)."""
    digits = normalize_number(text)
    if len(digits) <= 7:
        return "*" * len(digits)
    return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]


def utc(moment: datetime) -> datetime:
    """An aware UTC datetime (naive means UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def bucket_start(moment: datetime, unit: str) -> datetime:
    """Start (UTC) of the hour, day, week (Monday) or month holding ``moment``."""
    moment = utc(moment)
    if unit == "hour":
        return datetime(moment.year, moment.month, moment.day, moment.hour, tzinfo=UTC)
    day = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    if unit == "day":
        return day
    if unit == "week":
        return day - timedelta(days=day.isoweekday() - 1)
    if unit == "month":
        return datetime(moment.year, moment.month, 1, tzinfo=UTC)
    msg = f"unknown bucket {unit!r}"
    raise ValueError(msg)


def _values(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _null_last(value: Any) -> tuple[bool, Any]:
    return (value is None, "" if value is None else value)


# --------------------------------------------------------------------------- the model


class TrackingModel:
    """Snapshots in write order and the queries over their current state.

    Examples
    --------
    >>> t = datetime(2026, 3, 2, tzinfo=UTC)
    >>> m = TrackingModel()
    >>> base = {"message_id": "a", "status": "SENT", "requested_at": t}
    >>> m.add("send", base)
    >>> m.add("poll", {**base, "status": "DELIVERED"})
    >>> m.add("send", base)
    >>> m.current()["a"]["status"]
    'DELIVERED'
    """

    def __init__(self, hash_key: str = TEST_KEY) -> None:
        self.hash_key = hash_key
        self.snapshots: list[dict[str, Any]] = []

    def add(self, kind: str, record: Mapping[str, Any]) -> None:
        """Append one snapshot of ``kind``."""
        if kind not in SNAPSHOT_KINDS:
            msg = f"unknown snapshot kind {kind!r}"
            raise ValueError(msg)
        self.snapshots.append({**record, "kind": kind})

    def add_many(self, kind: str, records: Iterable[Mapping[str, Any]]) -> None:
        """Append snapshots of one ``kind`` in order."""
        for record in records:
            self.add(kind, record)

    def patch(self, message_id: str, changes: Mapping[str, Any]) -> dict[str, Any] | None:
        """A ``patch`` snapshot: the current record with ``changes`` (``None`` if unknown)."""
        record = self.current().get(message_id)
        if record is None:
            return None
        updated = {**record, **changes}
        self.add("patch", updated)
        return updated

    # ------------------------------------------------------------------ state

    def current(self) -> dict[str, dict[str, Any]]:
        """Each message's current record.

        The snapshot with the highest sequence number wins, except that a ``send``
        snapshot never replaces a current state of another kind. Stated the other way
        round: the latest non-``send`` snapshot if the message has one, else its
        latest ``send`` snapshot.
        """
        latest_send: dict[str, dict[str, Any]] = {}
        latest_other: dict[str, dict[str, Any]] = {}
        for snap in self.snapshots:
            target = latest_send if snap["kind"] == "send" else latest_other
            target[snap["message_id"]] = snap
        out: dict[str, dict[str, Any]] = {}
        for message_id in {**latest_send, **latest_other}:
            snap = latest_other.get(message_id) or latest_send[message_id]
            out[message_id] = {k: v for k, v in snap.items() if k != "kind"}
        return out

    def records(self) -> list[dict[str, Any]]:
        """Current records ordered by message id."""
        current = self.current()
        return [current[k] for k in sorted(current)]

    def get(self, message_id: str) -> dict[str, Any] | None:
        """The current record of one message, or ``None``."""
        return self.current().get(message_id)

    # ------------------------------------------------------------------ queries

    def matches(self, record: Mapping[str, Any], flt: Mapping[str, Any]) -> bool:
        """Whether ``record`` passes every constraint of ``flt`` (``None`` = unconstrained)."""
        for name in _LIST_FILTERS:
            wanted = flt.get(name)
            if wanted is not None and record.get(name) not in _values(wanted):
                return False
        for name, column in (("to", "to_hash"), ("from_", "from_hash")):
            wanted = flt.get(name)
            if wanted is None:
                continue
            hashes = {hash_number(v, self.hash_key) for v in _values(wanted)}
            if record.get(column) not in hashes:
                return False
        for name, (column, op) in _RANGE_FILTERS.items():
            bound = flt.get(name)
            if bound is None:
                continue
            value = record[column]
            if op == "ge" and not value >= utc(bound):
                return False
            if op == "le" and not value <= utc(bound):
                return False
        return True

    def filter(self, flt: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Current records matching ``flt``, ordered by message id."""
        flt = flt or {}
        return [r for r in self.records() if self.matches(r, flt)]

    def list_records(
        self,
        flt: Mapping[str, Any] | None = None,
        limit: int = 100,
        offset: int = 0,
        order_by: str = "requested_at",
        order_direction: str = "desc",
    ) -> list[dict[str, Any]]:
        """Matching records ordered by ``order_by`` (then message id ascending), paged."""
        if order_by not in ("requested_at", "status_updated_at"):
            msg = f"bad order_by {order_by!r}"
            raise ValueError(msg)
        if order_direction not in ("asc", "desc"):
            msg = f"bad order_direction {order_direction!r}"
            raise ValueError(msg)
        if limit <= 0:
            return []
        rows = self.filter(flt)  # already by message id; the sort below is stable
        rows.sort(key=lambda r: r[order_by], reverse=order_direction == "desc")
        start = max(0, offset)
        return rows[start : start + limit]

    def count_records(self, flt: Mapping[str, Any] | None = None) -> int:
        """How many current records match ``flt``."""
        return len(self.filter(flt))

    def count_by(
        self, flt: Mapping[str, Any] | None, group_by: Sequence[str]
    ) -> list[dict[str, Any]]:
        """One row per group (group fields + ``count``), sorted by the groups, nulls last."""
        names: list[str] = []
        for name in group_by:
            if name not in _GROUP_FIELDS and name not in TIME_BUCKETS:
                msg = f"bad group field {name!r}"
                raise ValueError(msg)
            if name not in names:
                names.append(name)
        if not names:
            return []
        counts: dict[tuple[Any, ...], int] = {}
        for record in self.filter(flt):
            key = tuple(
                bucket_start(record["requested_at"], TIME_BUCKETS[n])
                if n in TIME_BUCKETS
                else record.get(n)
                for n in names
            )
            counts[key] = counts.get(key, 0) + 1
        keys = sorted(counts, key=lambda k: tuple(_null_last(v) for v in k))
        return [{**dict(zip(names, key, strict=True)), "count": counts[key]} for key in keys]

    def list_due(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        """Pollable records whose next check is at or before ``now``, earliest first."""
        if limit <= 0:
            return []
        now = utc(now)
        due = [
            r
            for r in self.records()
            if r["status"] in POLLABLE_STATUSES and r["next_check_at"] <= now
        ]
        due.sort(key=lambda r: r["next_check_at"])
        return due[:limit]


# --------------------------------------------------------------------------- reading store output


def as_model_record(value: Any) -> dict[str, Any]:
    """A store's answer in model form: a ``list_records`` row or a ``TrackingRecord``.

    Rows carry ``metadata``/``raw`` as JSON text and ``last_error`` as a struct; records
    carry a ``TrackingError``. Both become the model's plain values.
    """
    if is_dataclass(value) and not isinstance(value, type):
        row = {name: getattr(value, name) for name in RECORD_FIELDS}
        err = row["last_error"]
        row["last_error"] = None if err is None else {"code": err.code, "message": err.message}
        row["metadata"] = dict(row["metadata"])
        return row
    row = {name: value[name] for name in RECORD_FIELDS}
    if isinstance(row["metadata"], str):
        row["metadata"] = json.loads(row["metadata"])
    if isinstance(row["raw"], str):
        row["raw"] = json.loads(row["raw"])
    if row["last_error"] is not None:
        row["last_error"] = {
            "code": row["last_error"]["code"],
            "message": row["last_error"]["message"],
        }
    return row
