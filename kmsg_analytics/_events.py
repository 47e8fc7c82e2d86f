"""Delivery reports pushed by gateways (webhooks) or forwarded by a k-msg app, as snapshots."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import polars as pl

from ._errors import InvalidRecordError
from ._records import (
    TERMINAL_STATUSES,
    RecordFilter,
    TrackingRecord,
    coerce_id,
    coerce_optional_time,
    coerce_status,
    coerce_text,
    pick,
)
from ._schema import FULL_RECORD_COLUMNS, row_to_record
from ._store import TrackingStore

__all__ = ["DeliveryEvent", "IngestReport", "apply_events", "coerce_event"]


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """One delivery report: which message, its new status, the gateway's code and text."""

    message_id: str
    status: str
    status_code: str | None = None
    status_message: str | None = None
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What :meth:`DeliveryTrackingService.ingest_events` did."""

    received: int
    applied: int
    ignored_terminal: int
    unknown_message_ids: tuple[str, ...]

    def __repr__(self) -> str:
        return (
            f"IngestReport(received={self.received}, applied={self.applied}, "
            f"ignored_terminal={self.ignored_terminal}, unknown={len(self.unknown_message_ids)})"
        )


def coerce_event(value: object, index: int = 0) -> DeliveryEvent:
    """A :class:`DeliveryEvent` from our dataclass or a mapping (snake or camelCase)."""
    if isinstance(value, DeliveryEvent):
        data: Mapping[str, Any] = {
            "message_id": value.message_id,
            "status": value.status,
            "status_code": value.status_code,
            "status_message": value.status_message,
            "at": value.at,
        }
    elif isinstance(value, Mapping):
        data = value
    else:
        raise InvalidRecordError(f"events[{index}]", value, "a DeliveryEvent or a mapping")
    name = f"events[{index}]"
    return DeliveryEvent(
        message_id=coerce_id(pick(data, "message_id"), f"{name}.message_id"),
        status=coerce_status(pick(data, "status"), f"{name}.status"),
        status_code=coerce_text(pick(data, "status_code", "code"), f"{name}.status_code"),
        status_message=coerce_text(
            pick(data, "status_message", "message"), f"{name}.status_message"
        ),
        at=coerce_optional_time(pick(data, "at", "time", "timestamp"), f"{name}.at"),
    )


def apply_events(
    store: TrackingStore, events: Iterable[object], now: datetime
) -> tuple[list[TrackingRecord], IngestReport]:
    """The snapshots a batch of events makes, with the polling rules (no terminal regression).

    Every event is validated before anything is looked up; events for one message
    apply in order. Events for messages the store does not know are counted, not created.
    """
    if isinstance(events, str | bytes | Mapping) or not isinstance(events, Iterable):
        raise InvalidRecordError("events", events, "an iterable of events (mappings)")
    batch = [coerce_event(e, i) for i, e in enumerate(events)]
    if not batch:
        return [], IngestReport(0, 0, 0, ())
    ids = sorted({e.message_id for e in batch})
    rows = (
        store.current(RecordFilter(message_id=ids))
        .filter(pl.col("message_id").is_in(ids))
        .select(FULL_RECORD_COLUMNS)
        .collect()
        .to_dicts()
    )
    state: dict[str, TrackingRecord] = {r["message_id"]: row_to_record(r) for r in rows}
    changed: dict[str, TrackingRecord] = {}
    unknown: list[str] = []
    ignored = 0
    for event in batch:
        record = state.get(event.message_id)
        if record is None:
            unknown.append(event.message_id)
            continue
        if record.status in TERMINAL_STATUSES:
            ignored += 1
            continue
        at = event.at or now
        changes: dict[str, Any] = {"status": event.status, "last_error": None}
        if event.status != record.status:
            changes["status_updated_at"] = at
        if event.status_code:
            changes["provider_status_code"] = event.status_code
        if event.status_message:
            changes["provider_status_message"] = event.status_message
        stamp = {"SENT": "sent_at", "DELIVERED": "delivered_at", "FAILED": "failed_at"}
        if event.status in stamp:
            changes[stamp[event.status]] = at
        record = replace(record, **changes)
        state[event.message_id] = changed[event.message_id] = record
    report = IngestReport(len(batch), len(changed), ignored, tuple(dict.fromkeys(unknown)))
    return list(changed.values()), report
