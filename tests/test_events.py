"""ingest_events: delivery reports applied with the polling rules, on both stores."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kmsg_analytics import (
    DeliveryEvent,
    DeliveryTrackingService,
    InMemoryTrackingStore,
    InvalidRecordError,
    ParquetTrackingStore,
)

T0 = datetime(2026, 11, 1, 9, tzinfo=UTC)
KEY = "test-key-123"


class Gateway:
    id = "solapi"


@pytest.fixture(params=["memory", "parquet"])
def svc(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DeliveryTrackingService]:
    store = (
        InMemoryTrackingStore(hash_key=KEY)
        if request.param == "memory"
        else ParquetTrackingStore(tmp_path / "lake", hash_key=KEY)
    )
    service = DeliveryTrackingService(
        [Gateway()], store=store, clock=lambda: T0 + timedelta(hours=1)
    )
    for i in range(3):
        options = {"type": "SMS", "to": "01012345678"}
        result = {"providerId": "solapi", "providerMessageId": f"G{i}", "type": "SMS"}
        service.record_send(
            {"messageId": f"m{i}", "timestamp": T0, "options": options},
            {"messageId": f"m{i}", "to": "01012345678", **result},
        )
    try:
        yield service
    finally:
        service.close()


def test_events_apply_in_order_and_stamp_times(svc: DeliveryTrackingService) -> None:
    at = T0 + timedelta(minutes=5)
    report = svc.ingest_events(
        [
            DeliveryEvent("m0", "SENT", at=at - timedelta(minutes=1)),
            {"messageId": "m0", "status": "DELIVERED", "code": "4000", "at": at.isoformat()},
            {
                "message_id": "m1",
                "status": "FAILED",
                "status_code": "3104",
                "status_message": "카카오톡 미사용자",
            },
        ]
    )
    assert (report.received, report.applied, report.ignored_terminal) == (3, 2, 0)
    m0, m1 = svc.get_record("m0"), svc.get_record("m1")
    assert m0 is not None
    assert m1 is not None
    assert (m0.status, m0.provider_status_code, m0.delivered_at) == ("DELIVERED", "4000", at)
    assert m0.sent_at == at - timedelta(minutes=1)
    assert (m1.status, m1.provider_status_message) == ("FAILED", "카카오톡 미사용자")
    assert m1.failed_at == T0 + timedelta(hours=1)  # no time given: the service clock
    assert svc.count_records(status="SENT") == 1


def test_terminal_status_is_never_replaced(svc: DeliveryTrackingService) -> None:
    svc.ingest_events([{"messageId": "m2", "status": "DELIVERED"}])
    report = svc.ingest_events(
        [{"messageId": "m2", "status": "SENT"}, {"messageId": "m2", "status": "FAILED"}]
    )
    assert (report.applied, report.ignored_terminal) == (0, 2)
    record = svc.get_record("m2")
    assert record is not None
    assert record.status == "DELIVERED"


def test_unknown_messages_are_counted_not_created(svc: DeliveryTrackingService) -> None:
    report = svc.ingest_events([{"messageId": "nope", "status": "DELIVERED"}])
    assert report.unknown_message_ids == ("nope",)
    assert svc.get_record("nope") is None
    assert svc.count_records() == 3


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"messageId": "m0", "status": "READ"}, "events[1].status"),
        ({"status": "DELIVERED"}, "events[1].message_id"),
        ({"messageId": "m0", "status": "DELIVERED", "at": "yesterday"}, "events[1].at"),
        ("m0 delivered", "events[1]"),
    ],
)
def test_bad_events_write_nothing(svc: DeliveryTrackingService, event: object, field: str) -> None:
    before = svc.count_by(group_by="status").collect()
    with pytest.raises(InvalidRecordError, match=field.replace("[", r"\[").replace("]", r"\]")):
        svc.ingest_events([{"messageId": "m0", "status": "DELIVERED"}, event])
    assert svc.count_by(group_by="status").collect().equals(before)
