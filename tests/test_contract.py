"""The store contract: the same questions, the same answers, from every tracking store.

Each test runs against ``memory``, ``parquet``, ``parquet-compacted``, ``s3`` and
``s3-compacted`` (see ``conftest.py``); ``checkpoint()`` folds the lake of the
``-compacted`` variants between writes, so every answer is also checked over a
compacted current state plus newer snapshots (merge-on-read), on a local disk and in
an S3 API over HTTP. Expected answers are written out by hand; the property tests in
``test_properties.py`` compare random cases with the model in ``_model.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from kmsg_analytics import (
    DeliveryTrackingService,
    FailoverOptions,
    HookContext,
    InMemoryTrackingStore,
    InvalidRecordError,
    ParquetTrackingStore,
    RecordFilter,
    SendOptions,
    SendResult,
    SendWarning,
    TrackingRecord,
)
from kmsg_analytics._objectlake import ObjectLakeStore
from tests._model import (
    RECORD_FIELDS,
    TEST_KEY,
    TrackingModel,
    as_model_record,
    hash_number,
    mask_number,
)
from tests.conftest import (
    COMPACTED_KINDS,
    NOW,
    PROVIDER_IDS,
    STORE_PARAMS,
    AnyStore,
    FixedClock,
    Gateway,
    Lake,
    make_store,
    reopen,
)

TO = "010-1234-5678"
TO_2 = "010-9876-5432"
TO_3 = "010-5555-0000"
FROM = "02-123-4567"
REQ = datetime(2026, 3, 2, 8, 59, tzinfo=UTC)
KST = timezone(timedelta(hours=9))
UTC_TS = pl.Datetime("us", "UTC")

#: The columns (and dtypes) of every ``list_records`` frame, whatever the store.
RECORD_SCHEMA: dict[str, pl.DataType] = {
    "message_id": pl.String(),
    "provider_id": pl.String(),
    "provider_message_id": pl.String(),
    "type": pl.String(),
    "to": pl.String(),
    "from_": pl.String(),
    "to_hash": pl.String(),
    "to_masked": pl.String(),
    "from_hash": pl.String(),
    "from_masked": pl.String(),
    "requested_at": UTC_TS,
    "scheduled_at": UTC_TS,
    "status": pl.String(),
    "provider_status_code": pl.String(),
    "provider_status_message": pl.String(),
    "sent_at": UTC_TS,
    "delivered_at": UTC_TS,
    "failed_at": UTC_TS,
    "status_updated_at": UTC_TS,
    "attempt_count": pl.Int32(),
    "last_checked_at": UTC_TS,
    "next_check_at": UTC_TS,
    "last_error": pl.Struct({"code": pl.String(), "message": pl.String()}),
    "raw": pl.String(),
    "metadata": pl.String(),
    "retention_class": pl.String(),
    "retention_bucket_ym": pl.Int32(),
}


# --------------------------------------------------------------------------- helpers


def context(
    message_id: str,
    *,
    at: datetime = REQ,
    type: str = "SMS",
    to: str = TO,
    from_: str | None = FROM,
    scheduled_at: datetime | None = None,
    custom_fields: dict[str, Any] | None = None,
    failover: FailoverOptions | None = None,
) -> HookContext:
    options = SendOptions(
        type=type,
        to=to,
        from_=from_,
        scheduled_at=scheduled_at,
        custom_fields=custom_fields,
        failover=failover,
    )
    return HookContext(message_id=message_id, timestamp=at, options=options)


def result(
    message_id: str,
    *,
    provider: str = "solapi",
    pmid: str | None = "",
    type: str = "SMS",
    to: str = TO,
    warnings: Sequence[SendWarning] = (),
) -> SendResult:
    return SendResult(
        message_id=message_id,
        provider_id=provider,
        provider_message_id=f"G-{message_id}" if pmid == "" else pmid,
        type=type,
        to=to,
        warnings=tuple(warnings),
    )


def send(
    service: DeliveryTrackingService,
    message_id: str,
    *,
    provider: str = "solapi",
    pmid: str | None = "",
    warnings: Sequence[SendWarning] = (),
    **ctx: Any,
) -> TrackingRecord:
    """``record_send`` of an SMS by default; ``pmid=""`` means ``G-<message_id>``."""
    type_ = ctx.get("type", "SMS")
    to = ctx.get("to", TO)
    res = result(message_id, provider=provider, pmid=pmid, type=type_, to=to, warnings=warnings)
    return service.record_send(context(message_id, **ctx), res)


def poll(store: AnyStore, message_id: str, **changes: Any) -> TrackingRecord:
    """What a status check writes: the current record with ``changes``, as a ``poll`` snapshot."""
    current = store.get(message_id)
    assert current is not None
    updated = replace(current, **changes)
    store.append_snapshots([updated], kind="poll")
    return updated


def expected_send(
    message_id: str,
    *,
    requested_at: datetime = REQ,
    status_updated_at: datetime = NOW,
    provider: str = "solapi",
    type: str = "SMS",
    to: str = TO,
    from_: str | None = FROM,
    **overrides: Any,
) -> TrackingRecord:
    """The record an unscheduled send with a provider message id must create."""
    values: dict[str, Any] = {
        "message_id": message_id,
        "provider_id": provider,
        "provider_message_id": f"G-{message_id}",
        "type": type,
        "to": None,
        "from_": None,
        "to_hash": hash_number(to),
        "to_masked": mask_number(to),
        "from_hash": None if from_ is None else hash_number(from_),
        "from_masked": None if from_ is None else mask_number(from_),
        "requested_at": requested_at,
        "scheduled_at": None,
        "status": "SENT",
        "status_updated_at": status_updated_at,
        "attempt_count": 0,
        "next_check_at": requested_at + timedelta(seconds=30),
        "last_error": None,
        "metadata": {},
        "retention_class": "telecomMetadata",
        "retention_bucket_ym": requested_at.year * 100 + requested_at.month,
    }
    values.update(overrides)
    return TrackingRecord(**values)


def ids(frame: pl.LazyFrame | pl.DataFrame) -> list[str]:
    if isinstance(frame, pl.LazyFrame):
        frame = frame.collect()
    return frame.get_column("message_id").to_list()


def due_ids(records: Sequence[TrackingRecord]) -> list[str]:
    return [r.message_id for r in records]


def assert_utc(moment: datetime | None) -> None:
    if moment is not None:
        assert moment.tzinfo is not None
        assert moment.utcoffset() == timedelta(0)


# --------------------------------------------------------------------------- recording


def test_record_send_from_dataclasses(
    service: DeliveryTrackingService, checkpoint: Callable[[], None]
) -> None:
    record = send(service, "m1")
    expected = expected_send("m1")
    assert record == expected
    checkpoint()
    stored = service.get_record("m1")
    assert stored == expected
    assert stored is not None
    for f in fields(TrackingRecord):
        value = getattr(stored, f.name)
        if isinstance(value, datetime):
            assert_utc(value)
    rows = service.list_records().collect().to_dicts()
    assert [as_model_record(r) for r in rows] == [as_model_record(expected)]


@pytest.mark.parametrize("time_format", ["iso-kst", "iso-z", "epoch-ms"])
def test_record_send_from_kmsg_json(
    service: DeliveryTrackingService, checkpoint: Callable[[], None], time_format: str
) -> None:
    scheduled = REQ + timedelta(hours=2)

    def as_json_time(moment: datetime) -> str | int:
        if time_format == "iso-kst":
            return moment.astimezone(KST).isoformat()
        if time_format == "iso-z":
            return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return int(moment.timestamp() * 1000)

    base = {"messageId": "j1", "timestamp": as_json_time(REQ)}
    opts = {
        "type": "SMS",
        "to": "+82 10-1234-5678",
        "from": "02) 123.4567",
        "customFields": {"k": 1},
    }
    res = {
        "messageId": "j1",
        "providerId": "iwinv",
        "providerMessageId": "  G-j1  ",
        "type": "SMS",
        "to": TO,
    }
    record = service.record_send({**base, "options": opts}, res)
    scheduled_opts = {**opts, "scheduledAt": as_json_time(scheduled)}
    res2 = {**res, "messageId": "j2"}
    record2 = service.record_send({**base, "messageId": "j2", "options": scheduled_opts}, res2)
    checkpoint()

    expected = expected_send("j1", provider="iwinv", metadata={"custom_fields": {"k": 1}})
    assert record == expected
    assert service.get_record("j1") == expected
    expected2 = replace(
        expected,
        message_id="j2",
        provider_message_id="G-j1",
        scheduled_at=scheduled,
        status="PENDING",
        next_check_at=scheduled + timedelta(seconds=120),
    )
    assert record2 == expected2
    assert service.get_record("j2") == expected2


def test_scheduled_send_is_pending_until_grace(
    service: DeliveryTrackingService, checkpoint: Callable[[], None]
) -> None:
    scheduled = REQ + timedelta(hours=1)
    record = send(service, "s1", scheduled_at=scheduled)
    checkpoint()
    assert record.status == "PENDING"
    assert record.scheduled_at == scheduled
    assert record.next_check_at == scheduled + timedelta(seconds=120)
    assert service.get_record("s1") == record
    assert service.count_records(status="PENDING") == 1
    due_at = scheduled + timedelta(seconds=120)
    assert due_ids(service.list_due(due_at - timedelta(microseconds=1))) == []
    assert due_ids(service.list_due(due_at)) == ["s1"]


@pytest.mark.parametrize("pmid", ["   ", None, "\t"])
def test_empty_provider_message_id_is_unknown_at_once(
    service: DeliveryTrackingService, checkpoint: Callable[[], None], pmid: str | None
) -> None:
    record = send(service, "u1", pmid=pmid)
    checkpoint()
    assert record.status == "UNKNOWN"
    assert record.provider_message_id == ""
    assert record.last_error is not None
    assert record.last_error.code == "MISSING_PROVIDER_MESSAGE_ID"
    assert record.attempt_count == 0
    assert record.is_terminal
    assert service.get_record("u1") == record
    assert service.count_records(provider_message_id="") == 1
    assert service.list_due(NOW + timedelta(days=30)) == []
    counts = service.count_by(group_by=["status"]).collect()
    assert counts.to_dicts() == [{"status": "UNKNOWN", "count": 1}]


def test_custom_fields_and_alimtalk_failover_metadata(
    service: DeliveryTrackingService, checkpoint: Callable[[], None]
) -> None:
    failover = FailoverOptions(
        enabled=True, fallback_channel="lms", fallback_content="본문", fallback_title="제목"
    )
    custom = {"campaign": "spring", "n": 3, "nested": {"a": [1, 2]}, "한글": "값"}
    warnings = [SendWarning("FAILOVER_UNSUPPORTED_PROVIDER", "no native failover")]
    alim = send(
        service, "a1", type="ALIMTALK", custom_fields=custom, failover=failover, warnings=warnings
    )
    sms = send(service, "s1", custom_fields={"campaign": "spring"})
    plain = send(service, "s2")
    checkpoint()

    assert alim.metadata["custom_fields"] == custom
    fo = alim.metadata["failover"]
    assert fo["api_attempt"] == {"attempted": False, "status": "not_attempted"}
    assert fo["request"] == {
        "enabled": True,
        "fallback_channel": "lms",
        "fallback_content": "본문",
        "fallback_title": "제목",
    }
    assert fo["send_warning_codes"] == ["FAILOVER_UNSUPPORTED_PROVIDER"]
    assert sms.metadata == {"custom_fields": {"campaign": "spring"}}
    assert plain.metadata == {}
    for record in (alim, sms, plain):
        stored = service.get_record(record.message_id)
        assert stored == record
        assert stored is not None
        assert stored.metadata == record.metadata
    by_id = {r["message_id"]: r for r in service.list_records().collect().to_dicts()}
    assert json.loads(by_id["a1"]["metadata"]) == alim.metadata
    assert json.loads(by_id["s2"]["metadata"]) == {}


def test_alimtalk_without_failover_request_still_has_attempt_marker(
    service: DeliveryTrackingService, checkpoint: Callable[[], None]
) -> None:
    record = send(service, "a1", type="ALIMTALK")
    checkpoint()
    stored = service.get_record("a1")
    assert stored is not None
    assert stored.metadata["failover"]["api_attempt"] == {
        "attempted": False,
        "status": "not_attempted",
    }
    assert stored == record


def test_repeated_record_send_is_one_record(
    service: DeliveryTrackingService, clock: FixedClock, checkpoint: Callable[[], None]
) -> None:
    send(service, "m1")
    checkpoint()
    clock.advance(seconds=5)
    second = send(service, "m1")
    send(service, "m2")
    send(service, "m1")  # a third time, same clock: identical to the second
    assert service.count_records() == 2
    assert service.count_records(message_id="m1") == 1
    assert ids(service.list_records()) == ["m1", "m2"]
    assert service.get_record("m1") == second
    assert second.status_updated_at == NOW + timedelta(seconds=5)
    checkpoint()
    assert service.count_records() == 2
    assert service.get_record("m1") == second
    assert service.count_by(group_by=["status"]).collect().to_dicts() == [
        {"status": "SENT", "count": 2}
    ]


def test_later_send_replaces_earlier_send(
    service: DeliveryTrackingService, clock: FixedClock, checkpoint: Callable[[], None]
) -> None:
    # k-msg records on "queued" (no gateway id yet) and again on "success": both are sends
    queued = send(service, "m1", pmid=None)
    assert queued.status == "UNKNOWN"
    checkpoint()
    clock.advance(seconds=1)
    success = send(service, "m1")
    assert success.status == "SENT"
    assert service.get_record("m1") == success
    checkpoint()
    assert service.get_record("m1") == success
    assert due_ids(service.list_due(NOW + timedelta(hours=1))) == ["m1"]


@pytest.mark.parametrize("fold_first", [True, False], ids=["folded-first", "same-fold"])
@pytest.mark.parametrize("how", ["send", "load", "patch"])
def test_message_moved_to_another_requested_day_is_still_one_record(
    service: DeliveryTrackingService,
    store: AnyStore,
    clock: FixedClock,
    checkpoint: Callable[[], None],
    how: str,
    fold_first: bool,
) -> None:
    """A later snapshot may carry another requested_at (a re-send with a new timestamp,
    a corrected load, a patch); the message must stay one record, at its new time,
    whether or not its first snapshot was folded before the move."""
    first = send(service, "m1", at=A)
    send(service, "m2", at=A)
    if fold_first:
        checkpoint()
    clock.advance(minutes=1)
    if how == "send":
        moved = send(service, "m1", at=D)
    elif how == "load":
        moved = replace(first, requested_at=D, status="DELIVERED", status_updated_at=clock.now)
        store.append_snapshots([moved], kind="load")
    else:
        patched = store.patch("m1", {"requested_at": D, "status": "FAILED"})
        assert patched is not None
        moved = patched
    for _ in range(2):
        assert service.get_record("m1") == moved
        assert service.count_records() == 2
        assert ids(service.list_records(order_direction="asc")) == ["m2", "m1"]
        assert service.count_records(requested_at_to=B) == 1
        assert service.count_records(message_id="m1", requested_at_to=B) == 0
        days = service.count_by(group_by=["requested_at_day"]).collect().to_dicts()
        assert days == [
            {"requested_at_day": _w(28, 2), "count": 1},
            {"requested_at_day": D, "count": 1},
        ]
        due = due_ids(service.list_due(NOW + timedelta(days=1)))
        assert due == (["m2", "m1"] if moved.status == "SENT" else ["m2"])
        checkpoint()


@pytest.mark.parametrize("kind", ["poll", "patch", "load"])
@pytest.mark.parametrize("final_status", ["DELIVERED", "SENT"])
def test_repeated_send_never_moves_back_a_polled_state(
    service: DeliveryTrackingService,
    store: AnyStore,
    clock: FixedClock,
    checkpoint: Callable[[], None],
    kind: str,
    final_status: str,
) -> None:
    first = send(service, "m1")
    send(service, "m2")
    checkpoint()
    clock.advance(minutes=1)
    changes: dict[str, Any] = {
        "status": final_status,
        "attempt_count": 1,
        "last_checked_at": clock.now,
        "status_updated_at": clock.now,
        "next_check_at": clock.now + timedelta(minutes=2),
        "provider_status_code": "0000",
    }
    if final_status == "DELIVERED":
        changes["delivered_at"] = clock.now
    polled = replace(first, **changes)
    if kind == "patch":
        patched = store.patch("m1", changes)
        assert patched == polled
    else:
        store.append_snapshots([polled], kind=kind)  # type: ignore[arg-type]
    assert service.get_record("m1") == polled
    checkpoint()
    clock.advance(minutes=1)
    send(service, "m1")  # the "success" hook, late
    assert service.get_record("m1") == polled
    service.record_sends([(context("m1"), result("m1")), (context("m3"), result("m3"))])
    assert service.get_record("m1") == polled
    checkpoint()
    assert service.get_record("m1") == polled
    assert service.count_records() == 3
    expected_status = [("SENT", 3)] if final_status == "SENT" else [(final_status, 1), ("SENT", 2)]
    got = [
        (r["status"], r["count"])
        for r in service.count_by(group_by=["status"]).collect().to_dicts()
    ]
    assert got == expected_status
    far = NOW + timedelta(days=1)
    due = due_ids(service.list_due(far))
    assert ("m1" in due) is (final_status == "SENT")
    # a later poll still wins over everything before it
    clock.advance(minutes=1)
    final = poll(store, "m1", status="FAILED", status_updated_at=clock.now, attempt_count=2)
    assert service.get_record("m1") == final
    send(service, "m1")
    checkpoint()
    assert service.get_record("m1") == final
    assert "m1" not in due_ids(service.list_due(far))


def test_get_record_of_unknown_message_is_none(
    service: DeliveryTrackingService, checkpoint: Callable[[], None]
) -> None:
    assert service.get_record("nope") is None
    send(service, "m1")
    checkpoint()
    assert service.get_record("nope") is None
    assert service.get_record("m") is None  # no prefix matching
    assert service.get_record("m1") is not None


def test_bad_input_writes_nothing(service: DeliveryTrackingService) -> None:
    with pytest.raises(InvalidRecordError, match="type"):
        service.record_send(context("x1", type="KAKAO"), result("x1"))
    with pytest.raises(InvalidRecordError, match="status"):
        service.count_records(status="DONE")
    with pytest.raises(InvalidRecordError, match=r"pairs\[1\]"):
        service.record_sends(
            [(context("x2"), result("x2")), (context("x3", type="BAD"), result("x3"))]
        )
    assert service.count_records() == 0


# --------------------------------------------------------------------------- a fixed data set

# requested_at of the sample records: a Saturday, a Sunday (twice), a Monday (twice).
A = datetime(2026, 2, 28, 23, 59, 59, 999_999, tzinfo=UTC)
B = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
C = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)  # midnight in Korea
D = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
E = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)
POLLED_AT = NOW + timedelta(minutes=1)


def populate(
    service: DeliveryTrackingService,
    store: AnyStore,
    clock: FixedClock,
    checkpoint: Callable[[], None],
) -> None:
    """Six messages (sent at NOW, m1/m2/m6 polled at NOW+1min, m3 patched).

    ======  ===  ========  ========  =====  ======  =========  =====  ====================
    id      req  provider  type      to     from    status     code   updated
    ======  ===  ========  ========  =====  ======  =========  =====  ====================
    m1      A    solapi    SMS       TO     FROM    DELIVERED  0000   POLLED_AT
    m2      B    solapi    LMS       TO_2   -       FAILED     3104   POLLED_AT
    m3      C    iwinv     ALIMTALK  TO     FROM    SENT       -      NOW (billingEvidence)
    m4      D    iwinv     SMS       TO_3   -       PENDING    -      NOW (scheduled D+1h)
    m5      E    aligo     SMS       TO_2   -       UNKNOWN    -      NOW (no gateway id)
    m6      D    solapi    SMS       TO     -       DELIVERED  0000   POLLED_AT
    ======  ===  ========  ========  =====  ======  =========  =====  ====================
    """
    send(service, "m1", at=A)
    send(service, "m2", at=B, to=TO_2, from_=None, type="LMS")
    send(service, "m3", at=C, provider="iwinv", type="ALIMTALK")
    checkpoint()
    send(
        service,
        "m4",
        at=D,
        provider="iwinv",
        to=TO_3,
        from_=None,
        scheduled_at=D + timedelta(hours=1),
    )
    send(service, "m5", at=E, provider="aligo", to=TO_2, from_=None, pmid=None)
    send(service, "m6", at=D, from_=None)
    clock.advance(minutes=1)
    poll(
        store,
        "m1",
        status="DELIVERED",
        provider_status_code="0000",
        status_updated_at=POLLED_AT,
        attempt_count=1,
    )
    checkpoint()
    poll(
        store,
        "m2",
        status="FAILED",
        provider_status_code="3104",
        status_updated_at=POLLED_AT,
        attempt_count=1,
    )
    store.patch("m3", {"retention_class": "billingEvidence"})
    poll(
        store,
        "m6",
        status="DELIVERED",
        provider_status_code="0000",
        status_updated_at=POLLED_AT,
        attempt_count=1,
    )
    send(service, "m1", at=A)  # late repeat: must not undo the poll


@pytest.fixture(scope="module", params=STORE_PARAMS)
def sample(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DeliveryTrackingService]:
    """The data set of :func:`populate` in each store variant, built once per module.

    Tests that use it only read.
    """
    kind = str(request.param)
    store = make_store(kind, tmp_path_factory.mktemp("sample") / "lake")
    clock = FixedClock(NOW)
    svc = DeliveryTrackingService([Gateway(p) for p in PROVIDER_IDS], store=store, clock=clock)

    def checkpoint() -> None:
        if isinstance(store, ParquetTrackingStore | ObjectLakeStore) and kind in COMPACTED_KINDS:
            store.compact()

    try:
        populate(svc, store, clock, checkpoint)
        yield svc
    finally:
        svc.close()


@pytest.mark.parametrize(
    ("order_by", "direction", "expected"),
    [
        ("requested_at", "desc", ["m5", "m4", "m6", "m3", "m2", "m1"]),
        ("requested_at", "asc", ["m1", "m2", "m3", "m4", "m6", "m5"]),
        ("status_updated_at", "desc", ["m1", "m2", "m6", "m3", "m4", "m5"]),
        ("status_updated_at", "asc", ["m3", "m4", "m5", "m1", "m2", "m6"]),
    ],
)
def test_list_records_order_ties_by_message_id(
    sample: DeliveryTrackingService, order_by: str, direction: str, expected: list[str]
) -> None:
    got = sample.list_records(order_by=order_by, order_direction=direction)
    assert ids(got) == expected


def test_list_records_default_order_is_newest_request_first(
    sample: DeliveryTrackingService,
) -> None:
    assert ids(sample.list_records()) == ["m5", "m4", "m6", "m3", "m2", "m1"]


@pytest.mark.parametrize(
    ("limit", "offset", "expected"),
    [
        (2, 0, ["m5", "m4"]),
        (2, 1, ["m4", "m6"]),
        (3, 4, ["m2", "m1"]),
        (100, 0, ["m5", "m4", "m6", "m3", "m2", "m1"]),
        (1, 5, ["m1"]),
        (1, 6, []),
        (10, 100, []),
        (0, 0, []),
        (-1, 0, []),
        (-5, 2, []),
    ],
)
def test_list_records_limit_and_offset(
    sample: DeliveryTrackingService, limit: int, offset: int, expected: list[str]
) -> None:
    frame = sample.list_records(limit=limit, offset=offset).collect()
    assert ids(frame) == expected
    assert frame.schema == pl.Schema(RECORD_SCHEMA)


def _frame(rows: list[tuple[Any, ...]], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=schema, orient="row")


def _w(day: int, month: int = 3, hour: int = 0) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


COUNT_BY_CASES: list[tuple[list[str], list[tuple[Any, ...]], dict[str, pl.DataType]]] = [
    (["provider_id"], [("aligo", 1), ("iwinv", 2), ("solapi", 3)], {"provider_id": pl.String()}),
    (["type"], [("ALIMTALK", 1), ("LMS", 1), ("SMS", 4)], {"type": pl.String()}),
    (
        ["status"],
        [("DELIVERED", 2), ("FAILED", 1), ("PENDING", 1), ("SENT", 1), ("UNKNOWN", 1)],
        {"status": pl.String()},
    ),
    (
        ["provider_status_code"],
        [("0000", 2), ("3104", 1), (None, 3)],
        {"provider_status_code": pl.String()},
    ),
    (
        ["retention_class"],
        [("billingEvidence", 1), ("telecomMetadata", 5)],
        {"retention_class": pl.String()},
    ),
    (
        ["requested_at_hour"],
        [(_w(28, 2, 23), 1), (_w(1), 1), (_w(1, 3, 15), 1), (_w(2), 2), (_w(2, 3, 8), 1)],
        {"requested_at_hour": UTC_TS},
    ),
    (
        ["requested_at_day"],
        [(_w(28, 2), 1), (_w(1), 2), (_w(2), 3)],
        {"requested_at_day": UTC_TS},
    ),
    (
        ["requested_at_week"],
        [(_w(23, 2), 3), (_w(2), 3)],  # weeks start on Monday (UTC)
        {"requested_at_week": UTC_TS},
    ),
    (
        ["requested_at_month"],
        [(_w(1, 2), 1), (_w(1), 5)],
        {"requested_at_month": UTC_TS},
    ),
    (
        ["provider_id", "status"],
        [
            ("aligo", "UNKNOWN", 1),
            ("iwinv", "PENDING", 1),
            ("iwinv", "SENT", 1),
            ("solapi", "DELIVERED", 2),
            ("solapi", "FAILED", 1),
        ],
        {"provider_id": pl.String(), "status": pl.String()},
    ),
    (
        ["requested_at_week", "type"],
        [
            (_w(23, 2), "ALIMTALK", 1),
            (_w(23, 2), "LMS", 1),
            (_w(23, 2), "SMS", 1),
            (_w(2), "SMS", 3),
        ],
        {"requested_at_week": UTC_TS, "type": pl.String()},
    ),
]


@pytest.mark.parametrize(
    ("group_by", "rows", "schema"), COUNT_BY_CASES, ids=[",".join(c[0]) for c in COUNT_BY_CASES]
)
def test_count_by(
    sample: DeliveryTrackingService,
    group_by: list[str],
    rows: list[tuple[Any, ...]],
    schema: dict[str, pl.DataType],
) -> None:
    got = sample.count_by(group_by=group_by)
    assert isinstance(got, pl.LazyFrame)
    expected = _frame(rows, {**schema, "count": pl.Int64()})
    assert_frame_equal(got.collect(), expected)


def test_count_by_with_filter_camel_case_and_empty_group(sample: DeliveryTrackingService) -> None:
    got = sample.count_by(
        {"providerId": ["solapi", "iwinv"]}, group_by=["providerId", "status", "status"]
    )
    expected = _frame(
        [
            ("iwinv", "PENDING", 1),
            ("iwinv", "SENT", 1),
            ("solapi", "DELIVERED", 2),
            ("solapi", "FAILED", 1),
        ],
        {"provider_id": pl.String(), "status": pl.String(), "count": pl.Int64()},
    )
    assert_frame_equal(got.collect(), expected)
    assert_frame_equal(
        sample.count_by(group_by="type", requested_at_from=D).collect(),
        _frame([("SMS", 3)], {"type": pl.String(), "count": pl.Int64()}),
    )
    empty = sample.count_by(group_by=[]).collect()
    assert empty.height == 0
    assert "count" in empty.columns
    nothing = sample.count_by(group_by=["status"], status=[]).collect()
    assert_frame_equal(nothing, _frame([], {"status": pl.String(), "count": pl.Int64()}))
    with pytest.raises(InvalidRecordError, match="group_by"):
        sample.count_by(group_by=["to_hash"])


FILTER_CASES: list[tuple[dict[str, Any], list[str]]] = [
    ({}, ["m1", "m2", "m3", "m4", "m5", "m6"]),
    ({"message_id": "m1"}, ["m1"]),
    ({"message_id": ["m1", "m3", "zzz"]}, ["m1", "m3"]),
    ({"message_id": []}, []),
    ({"message_id": "zzz"}, []),
    ({"provider_id": "solapi"}, ["m1", "m2", "m6"]),
    ({"provider_id": ["iwinv", "aligo"]}, ["m3", "m4", "m5"]),
    ({"provider_id": []}, []),
    ({"provider_message_id": "G-m3"}, ["m3"]),
    ({"provider_message_id": ""}, ["m5"]),
    ({"provider_message_id": ["G-m1", "G-m4", "nope"]}, ["m1", "m4"]),
    ({"type": "SMS"}, ["m1", "m4", "m5", "m6"]),
    ({"type": ["LMS", "ALIMTALK"]}, ["m2", "m3"]),
    ({"type": []}, []),
    ({"status": "SENT"}, ["m3"]),
    ({"status": ["PENDING", "UNKNOWN"]}, ["m4", "m5"]),
    ({"status": ["CANCELLED"]}, []),
    ({"status": []}, []),
    ({"to": TO}, ["m1", "m3", "m6"]),
    ({"to": "01012345678"}, ["m1", "m3", "m6"]),
    ({"to": "+82 10 1234 5678"}, ["m1", "m3", "m6"]),
    ({"to": "+82-010-1234-5678"}, ["m1", "m3", "m6"]),
    ({"to": "(010) 1234.5678"}, ["m1", "m3", "m6"]),
    ({"to": [TO_2, "+82 10 5555 0000"]}, ["m2", "m4", "m5"]),
    ({"to": "010-0000-0000"}, []),
    ({"to": []}, []),
    ({"to_hash": hash_number(TO)}, ["m1", "m3", "m6"]),
    ({"to_hash": [hash_number(TO_2), "feed"]}, ["m2", "m5"]),
    ({"to_hash": []}, []),
    ({"from_": FROM}, ["m1", "m3"]),
    ({"from_": "+82 2 123 4567"}, ["m1", "m3"]),
    ({"from_": ["021234567", TO]}, ["m1", "m3"]),
    ({"from_": []}, []),
    ({"from_hash": hash_number(FROM)}, ["m1", "m3"]),
    ({"from_hash": [hash_number(FROM), hash_number(TO)]}, ["m1", "m3"]),
    ({"requested_at_from": D}, ["m4", "m5", "m6"]),
    ({"requested_at_from": D - timedelta(microseconds=1)}, ["m4", "m5", "m6"]),
    ({"requested_at_from": D + timedelta(microseconds=1)}, ["m5"]),
    ({"requested_at_to": B}, ["m1", "m2"]),
    ({"requested_at_to": B - timedelta(microseconds=1)}, ["m1"]),
    ({"requested_at_from": B, "requested_at_to": C}, ["m2", "m3"]),
    ({"requested_at_from": A, "requested_at_to": A}, ["m1"]),
    ({"requested_at_from": E, "requested_at_to": E}, ["m5"]),
    ({"requested_at_from": C, "requested_at_to": B}, []),
    ({"requested_at_from": D.astimezone(KST)}, ["m4", "m5", "m6"]),  # 09:00 in Korea
    ({"requested_at_to": C.astimezone(KST)}, ["m1", "m2", "m3"]),
    ({"requested_at_from": D.replace(tzinfo=None)}, ["m4", "m5", "m6"]),  # naive means UTC
    ({"requested_at_from": "2026-03-02T09:00:00+09:00"}, ["m4", "m5", "m6"]),
    ({"requested_at_to": int(B.timestamp() * 1000)}, ["m1", "m2"]),
    ({"status_updated_at_from": POLLED_AT}, ["m1", "m2", "m6"]),
    ({"status_updated_at_to": NOW}, ["m3", "m4", "m5"]),
    ({"status_updated_at_from": NOW, "status_updated_at_to": NOW}, ["m3", "m4", "m5"]),
    ({"status_updated_at_to": NOW - timedelta(microseconds=1)}, []),
    ({"provider_id": "solapi", "status": "DELIVERED", "requested_at_to": D}, ["m1", "m6"]),
    ({"to": TO, "type": ["SMS"], "status_updated_at_from": POLLED_AT}, ["m1", "m6"]),
    ({"to": TO, "from_": FROM, "provider_id": "iwinv"}, ["m3"]),
]


@pytest.mark.parametrize(("flt", "expected"), FILTER_CASES)
def test_filters(sample: DeliveryTrackingService, flt: dict[str, Any], expected: list[str]) -> None:
    got = ids(sample.list_records(limit=100, order_by="requested_at", order_direction="asc", **flt))
    assert sorted(got) == expected
    assert sample.count_records(**flt) == len(expected)
    assert sorted(ids(sample.list_records(flt))) == expected  # a mapping works too
    grouped = sample.count_by(flt, group_by=["provider_id"]).collect()
    assert grouped.get_column("count").sum() == len(expected)


def test_filter_objects_and_camel_case_keys(sample: DeliveryTrackingService) -> None:
    store = sample.store
    flt = RecordFilter(provider_id="solapi", status=["DELIVERED", "FAILED"])
    assert sample.count_records(flt) == 3
    assert store.count_records(flt) == 3
    assert ids(store.list_records(flt, 10, 0, "requested_at", "asc")) == ["m1", "m2", "m6"]
    assert sample.count_records({"providerId": "solapi", "requestedAtFrom": D}) == 1
    assert sample.count_records(flt, requested_at_from=D) == 1  # keywords narrow a filter
    with pytest.raises(InvalidRecordError, match="filter"):
        sample.count_records(provider="solapi")


def test_list_records_values_round_trip(sample: DeliveryTrackingService) -> None:
    store = sample.store
    frame = sample.list_records(order_direction="asc").collect()
    for row in frame.to_dicts():
        record = store.get(row["message_id"])
        assert record is not None
        assert as_model_record(row) == as_model_record(record)
        for name, dtype in RECORD_SCHEMA.items():
            if dtype == UTC_TS:
                assert_utc(row[name])
    by_id = {r["message_id"]: as_model_record(r) for r in frame.to_dicts()}
    assert by_id["m3"]["retention_class"] == "billingEvidence"
    assert by_id["m1"]["status"] == "DELIVERED"
    assert by_id["m1"]["from_masked"] == "021**4567"
    assert by_id["m2"]["from_hash"] is None
    assert by_id["m4"]["scheduled_at"] == D + timedelta(hours=1)
    assert by_id["m5"]["last_error"]["code"] == "MISSING_PROVIDER_MESSAGE_ID"
    assert all(r["to"] is None and r["from_"] is None for r in by_id.values())


def test_query_results_are_lazy_frames_with_record_fields(
    service: DeliveryTrackingService, checkpoint: Callable[[], None]
) -> None:
    for stage in ("empty", "written"):
        records = service.list_records()
        assert isinstance(records, pl.LazyFrame)
        sealed = {"to_enc", "from_enc"}  # envelopes of the numbers stay inside the store
        assert set(RECORD_FIELDS) == {f.name for f in fields(TrackingRecord)} - sealed
        assert records.collect_schema() == pl.Schema(RECORD_SCHEMA)
        assert records.collect().schema == pl.Schema(RECORD_SCHEMA)
        counts = service.count_by(group_by=["status", "requested_at_day"])
        assert isinstance(counts, pl.LazyFrame)
        assert counts.collect().schema == pl.Schema(
            {"status": pl.String(), "requested_at_day": UTC_TS, "count": pl.Int64()}
        )
        if stage == "empty":
            assert records.collect().height == 0
            send(service, "m1")
            checkpoint()
            send(service, "m2")


# --------------------------------------------------------------------------- list_due


def test_list_due_order_limit_and_boundary(
    service: DeliveryTrackingService,
    store: AnyStore,
    clock: FixedClock,
    checkpoint: Callable[[], None],
) -> None:
    r = REQ
    for mid in ("b", "a", "c"):
        send(service, mid, at=r)  # next check r+30s, tied
    send(service, "d", at=r - timedelta(minutes=1))  # r-30s
    checkpoint()
    send(service, "e", at=r, scheduled_at=r)  # PENDING, r+120s
    send(service, "f", at=r - timedelta(minutes=2), pmid=None)  # UNKNOWN: never due
    send(service, "g", at=r - timedelta(minutes=3))
    poll(store, "g", status="DELIVERED")  # terminal: never due
    send(service, "h", at=r - timedelta(minutes=3))
    poll(store, "h", attempt_count=1, next_check_at=r + timedelta(seconds=10))
    send(service, "h", at=r - timedelta(minutes=3))  # repeat must not reset the schedule
    checkpoint()
    send(service, "i", at=r - timedelta(minutes=3))
    store.patch("i", {"status": "CANCELLED"})

    at = r + timedelta(seconds=30)
    assert due_ids(service.list_due(at)) == ["d", "h", "a", "b", "c"]
    assert due_ids(service.list_due(at, limit=2)) == ["d", "h"]
    assert due_ids(service.list_due(at, limit=4)) == ["d", "h", "a", "b"]
    assert due_ids(service.list_due(at - timedelta(microseconds=1))) == ["d", "h"]
    assert due_ids(service.list_due(r + timedelta(seconds=120))) == ["d", "h", "a", "b", "c", "e"]
    assert due_ids(service.list_due(r - timedelta(seconds=30))) == ["d"]
    assert due_ids(service.list_due(r - timedelta(seconds=31))) == []
    assert service.list_due(at, limit=0) == []
    assert service.list_due(at, limit=-3) == []
    assert due_ids(service.list_due(at.astimezone(KST))) == ["d", "h", "a", "b", "c"]
    assert due_ids(service.list_due(at.replace(tzinfo=None))) == ["d", "h", "a", "b", "c"]
    due = service.list_due(at)
    assert due[1] == store.get("h")
    assert due[1].attempt_count == 1
    for record in due:
        assert_utc(record.next_check_at)
        assert record == store.get(record.message_id)
    clock.now = at
    assert due_ids(service.list_due()) == ["d", "h", "a", "b", "c"]  # now defaults to the clock


# --------------------------------------------------------------------------- bulk writes


def _load_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "message_id": ["L1", "L2", "L3"],
            "provider_id": ["solapi", "iwinv", "aligo"],
            "provider_message_id": ["P1", " P2 ", None],
            "type": ["SMS", "ALIMTALK", "LMS"],
            "to": [TO, "+82 10 9876 5432", "010.5555.0000"],
            "from": [FROM, None, "02 123 4567"],
            "requested_at": [A, B, E],
            "status": ["DELIVERED", "SENT", "FAILED"],
            "provider_status_code": ["0000", None, "3104"],
            "status_updated_at": [B, C, NOW],
            "next_check_at": [B, D, NOW],
            "attempt_count": [2, 0, 1],
            "retention_class": ["billingEvidence", "telecomMetadata", "opsLogs"],
            "metadata": ['{"custom_fields":{"k":"v"}}', "{}", None],
        },
        schema_overrides={
            "requested_at": UTC_TS,
            "status_updated_at": UTC_TS,
            "next_check_at": UTC_TS,
        },
    )


def _loaded_expected() -> list[TrackingRecord]:
    def rec(mid: str, **kw: Any) -> TrackingRecord:
        base: dict[str, Any] = {
            "message_id": mid,
            "to": None,
            "from_": None,
            "from_hash": None,
            "from_masked": None,
        }
        base.update(kw)
        return TrackingRecord(**base)

    return [
        rec(
            "L1", provider_id="solapi", provider_message_id="P1", type="SMS",
            to_hash=hash_number(TO), to_masked="010****5678",
            from_hash=hash_number(FROM), from_masked="021**4567",
            requested_at=A, status="DELIVERED", provider_status_code="0000",
            status_updated_at=B, next_check_at=B, attempt_count=2,
            retention_class="billingEvidence", retention_bucket_ym=202602,
            metadata={"custom_fields": {"k": "v"}},
        ),
        rec(
            "L2", provider_id="iwinv", provider_message_id="P2", type="ALIMTALK",
            to_hash=hash_number(TO_2), to_masked="010****5432",
            requested_at=B, status="SENT", status_updated_at=C, next_check_at=D,
            retention_class="telecomMetadata", retention_bucket_ym=202603,
        ),
        rec(
            "L3", provider_id="aligo", provider_message_id="", type="LMS",
            to_hash=hash_number(TO_3), to_masked="010****0000",
            from_hash=hash_number(FROM), from_masked="021**4567",
            requested_at=E, status="FAILED", provider_status_code="3104",
            status_updated_at=NOW, next_check_at=NOW, attempt_count=1,
            retention_class="opsLogs", retention_bucket_ym=202603,
        ),
    ]  # fmt: skip


@pytest.mark.parametrize("source", ["polars", "lazy", "arrow"])
def test_load_records(
    service: DeliveryTrackingService, checkpoint: Callable[[], None], source: str
) -> None:
    frame = _load_frame()
    data: pl.DataFrame | pl.LazyFrame | pa.Table = (
        frame if source == "polars" else frame.lazy() if source == "lazy" else frame.to_arrow()
    )
    send(service, "L2", at=B, provider="iwinv", type="ALIMTALK", to=TO_2, from_=None)
    checkpoint()
    assert service.load_records(data) == 3
    expected = _loaded_expected()
    for record in expected:
        assert service.get_record(record.message_id) == record
    checkpoint()
    send(
        service, "L2", at=B, provider="iwinv", type="ALIMTALK", to=TO_2, from_=None
    )  # a load beats a send
    for record in expected:
        assert service.get_record(record.message_id) == record
    assert service.count_records() == 3
    assert due_ids(service.list_due(NOW)) == ["L2"]
    assert sorted(ids(service.list_records(to="+82 10 1234 5678"))) == ["L1"]
    assert ids(service.list_records(from_="021234567", order_direction="asc")) == ["L1", "L3"]
    assert_frame_equal(
        service.count_by(group_by=["retention_class"]).collect(),
        _frame(
            [("billingEvidence", 1), ("opsLogs", 1), ("telecomMetadata", 1)],
            {"retention_class": pl.String(), "count": pl.Int64()},
        ),
    )


def test_load_records_with_epoch_ms_and_iso_times(
    service: DeliveryTrackingService, checkpoint: Callable[[], None]
) -> None:
    expected = _loaded_expected()[1:]  # whole seconds: exact in epoch ms
    ms = (
        _load_frame()
        .slice(1, 2)
        .with_columns(
            pl.col(n).dt.epoch("ms") for n in ("requested_at", "status_updated_at", "next_check_at")
        )
    )
    assert service.load_records(ms) == 2
    checkpoint()
    for record in expected:
        assert service.get_record(record.message_id) == record
    iso = (
        _load_frame()
        .slice(1, 2)
        .with_columns(
            pl.col(n).dt.convert_time_zone("Asia/Seoul").dt.strftime("%Y-%m-%dT%H:%M:%S%:z")
            for n in ("requested_at", "status_updated_at", "next_check_at")
        )
    )
    assert service.load_records(iso) == 2
    for record in expected:
        assert service.get_record(record.message_id) == record
    assert service.count_records() == 2


def test_record_sends_many_pairs(
    service: DeliveryTrackingService, clock: FixedClock, checkpoint: Callable[[], None]
) -> None:
    pairs: list[tuple[Any, Any]] = []
    for i in range(60):
        mid = f"b{i:03d}"
        at = REQ + timedelta(minutes=i)
        provider = ("solapi", "iwinv", "aligo")[i % 3]
        if i % 2:
            ctx: Any = {
                "messageId": mid,
                "timestamp": int(at.timestamp() * 1000),
                "options": {"type": "SMS", "to": TO},
            }
            res: Any = {
                "messageId": mid,
                "providerId": provider,
                "providerMessageId": f"G-{mid}",
                "type": "SMS",
                "to": TO,
            }
        else:
            ctx = context(
                mid, at=at, from_=None, scheduled_at=at + timedelta(hours=1) if i % 5 == 0 else None
            )
            res = result(mid, provider=provider)
        pairs.append((ctx, res))
    expected = {}
    for ctx, res in pairs:
        record = service.build_record(ctx, res)
        expected[record.message_id] = record
    assert service.record_sends(pairs) == 60
    checkpoint()
    assert service.count_records() == 60
    for mid, record in expected.items():
        assert service.get_record(mid) == record
    assert service.count_records(status="PENDING") == 6
    assert ids(service.list_records(limit=3)) == ["b059", "b058", "b057"]
    assert service.record_sends([]) == 0
    # the same message twice in one batch is one record: the later pair
    clock.advance(seconds=1)
    again = [
        (context("b000", at=REQ, from_=None), result("b000", pmid="first")),
        (context("b000", at=REQ, from_=None), result("b000")),
    ]
    assert service.record_sends(again) == 2
    assert service.count_records() == 60
    stored = service.get_record("b000")
    assert stored is not None
    assert stored.provider_message_id == "G-b000"
    assert stored.status_updated_at == clock.now


# --------------------------------------------------------------------------- compaction


ALL_GROUP_FIELDS = (
    "provider_id",
    "type",
    "status",
    "provider_status_code",
    "retention_class",
    "requested_at_hour",
    "requested_at_day",
    "requested_at_week",
    "requested_at_month",
)


def _answers(store: AnyStore) -> dict[str, Any]:
    """Everything the queries say about a store (frames collected)."""
    everything = RecordFilter()
    out: dict[str, Any] = {}
    for order_by in ("requested_at", "status_updated_at"):
        for direction in ("asc", "desc"):
            out[f"list/{order_by}/{direction}"] = store.list_records(
                everything, 1000, 0, order_by, direction
            ).collect()
    out["list/page"] = store.list_records(RecordFilter(provider_id="solapi"), 3, 2).collect()
    for group in ALL_GROUP_FIELDS:
        out[f"count_by/{group}"] = store.count_by(everything, [group]).collect()
    out["count_by/range"] = store.count_by(
        RecordFilter(requested_at_from=B, requested_at_to=D), ["status"]
    ).collect()
    out["count"] = store.count_records(everything)
    out["count/to"] = store.count_records(RecordFilter(to="+82 10 1234 5678"))
    out["due"] = store.list_due(NOW + timedelta(days=1), 1000)
    out["get"] = [store.get(f"m{i}") for i in range(1, 8)]
    return out


def _assert_same_answers(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, pl.DataFrame):
            try:
                assert_frame_equal(got[key], value)
            except AssertionError as err:
                msg = f"{key}: {err}"
                raise AssertionError(msg) from err
        else:
            assert got[key] == value, key


@pytest.fixture(params=["parquet", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lake]:
    """A fresh lake on local disk or in the S3 server."""
    store = make_store(str(request.param), tmp_path / "lake")
    assert isinstance(store, ParquetTrackingStore | ObjectLakeStore)
    try:
        yield store
    finally:
        store.close()


def test_compaction_never_changes_answers(lake: Lake) -> None:
    """The lake's answers equal the in-memory store's before and after every fold."""
    reference = InMemoryTrackingStore(hash_key=TEST_KEY)
    clocks = [FixedClock(NOW), FixedClock(NOW)]
    stores: list[AnyStore] = [reference, lake]
    services = [
        DeliveryTrackingService([Gateway(p) for p in PROVIDER_IDS], store=s, clock=c)
        for s, c in zip(stores, clocks, strict=True)
    ]
    try:
        steps: list[Callable[[DeliveryTrackingService, AnyStore, FixedClock], object]] = [
            lambda svc, st, ck: populate(svc, st, ck, lambda: None),
            lambda svc, st, ck: send(svc, "m7", at=E + timedelta(days=40), provider="aligo"),
            lambda svc, st, ck: poll(
                st, "m3", status="DELIVERED", status_updated_at=NOW + timedelta(hours=1)
            ),
            lambda svc, st, ck: send(svc, "m3", at=C, provider="iwinv", type="ALIMTALK"),
            lambda svc, st, ck: st.patch("m4", {"status": "CANCELLED"}),
            lambda svc, st, ck: svc.load_record_objects(_loaded_expected()),
            lambda svc, st, ck: send(
                svc, "L2", at=B, provider="iwinv", type="ALIMTALK", to=TO_2, from_=None
            ),
        ]
        for step in steps:
            for svc, ck in zip(services, clocks, strict=True):
                step(svc, svc.store, ck)  # type: ignore[arg-type]
            expected = _answers(reference)
            _assert_same_answers(_answers(lake), expected)
            lake.compact()
            _assert_same_answers(_answers(lake), expected)
        lake.compact()  # nothing new: a no-op fold
        _assert_same_answers(_answers(lake), _answers(reference))
    finally:
        for svc in services:
            svc.close()
    reopened = reopen(lake)
    try:
        _assert_same_answers(_answers(reopened), _answers(reference))
    finally:
        reopened.close()


def test_writes_after_compaction_merge_on_read(lake: Lake) -> None:
    clock = FixedClock(NOW)
    svc = DeliveryTrackingService(
        [Gateway("solapi"), Gateway("iwinv"), Gateway("aligo")], store=lake, clock=clock
    )
    model = TrackingModel()
    try:
        first = send(svc, "m1", at=A)
        second = send(svc, "m2", at=D)
        model.add_many("send", [as_model_record(first), as_model_record(second)])
        lake.compact()
        # a poll (published file), a send still in the write-ahead log, a patch
        clock.advance(minutes=1)
        polled = poll(lake, "m1", status="DELIVERED", status_updated_at=clock.now)
        model.add("poll", as_model_record(polled))
        third = send(svc, "m3", at=B)
        model.add("send", as_model_record(third))
        repeat = send(svc, "m1", at=A)  # pending in the log; loses to the poll
        model.add("send", as_model_record(repeat))
        patched = lake.patch("m2", {"status": "FAILED", "provider_status_code": "3104"})
        assert patched is not None
        model.add("patch", as_model_record(patched))
        for _ in range(2):
            got = [
                as_model_record(r)
                for r in lake.list_records(RecordFilter(), 10, 0, "requested_at", "asc")
                .collect()
                .to_dicts()
            ]
            assert got == model.list_records(None, 10, 0, "requested_at", "asc")
            assert (
                lake.count_records(RecordFilter(status="SENT"))
                == model.count_records({"status": "SENT"})
                == 1
            )
            due = [as_model_record(r) for r in lake.list_due(NOW + timedelta(days=1), 10)]
            assert due == model.list_due(NOW + timedelta(days=1), 10)
            lake.compact()
    finally:
        svc.close()
