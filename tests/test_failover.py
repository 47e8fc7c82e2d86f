"""AlimTalk to SMS/LMS API failover: every rule of the spec's "API failover" section,
on the in-memory store and on the Parquet lake, plus a process killed mid-send."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kmsg_analytics import (
    DeliveryTrackingService,
    InMemoryTrackingStore,
    InvalidRecordError,
    ParquetTrackingStore,
    SendResult,
    TrackingRecord,
)
from kmsg_analytics._failover import (
    FailoverAttemptContext,
    FailoverClassification,
    FailoverSendInput,
    is_non_kakao_user,
    read_failover,
    should_attempt,
)
from kmsg_analytics._providers import (
    ApiFailoverConfig,
    DeliveryStatusQuery,
    DeliveryStatusResult,
    FailoverRule,
    ProviderError,
)
from kmsg_analytics._simulated import SimulatedClock

Store = InMemoryTrackingStore | ParquetTrackingStore
HASH_KEY = "test-key-123"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
WORKER = Path(__file__).with_name("_runner_worker.py")


@pytest.fixture
def store(local_store: Store) -> Store:
    """Each test runs on the in-memory store and on a lake (``local_store``, conftest)."""
    return local_store


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(T0)


class Gateway:
    """Answers every lookup with one status, code and message."""

    def __init__(
        self,
        id: str = "solapi",
        status: str = "FAILED",
        code: str | None = "3104",
        message: str | None = "카카오톡 미사용자",
        raw: Any = None,
    ) -> None:
        self.id, self.status, self.code, self.message, self.raw = id, status, code, message, raw

    def get_delivery_status(self, query: DeliveryStatusQuery) -> DeliveryStatusResult:
        return DeliveryStatusResult(
            self.id, query.provider_message_id, self.status, self.code, self.message, raw=self.raw
        )


class Sender:
    """A fallback sender that records what it was asked to send."""

    def __init__(self, answer: Any = None) -> None:
        self.answer = answer
        self.calls: list[tuple[FailoverSendInput, FailoverAttemptContext]] = []
        self.seen_records: list[TrackingRecord | None] = []
        self.svc: DeliveryTrackingService | None = None

    def __call__(self, send_input: FailoverSendInput, context: FailoverAttemptContext) -> Any:
        self.calls.append((send_input, context))
        if self.svc is not None:
            self.seen_records.append(self.svc.get_record(context.original_message_id))
        if isinstance(self.answer, BaseException):
            raise self.answer
        if self.answer is None:
            return SendResult(
                send_input.message_id, "sms-gw", "S-1", send_input.type, send_input.to or ""
            )
        return self.answer


def make(
    store: Store,
    clock: SimulatedClock,
    gateway: Gateway | None = None,
    sender: Any = None,
    **config: Any,
) -> tuple[DeliveryTrackingService, Sender]:
    sender = Sender() if sender is None else sender
    gw = gateway or Gateway()
    cfg = ApiFailoverConfig(sender, **config)
    svc = DeliveryTrackingService([gw], store=store, clock=clock, api_failover=cfg)
    if isinstance(sender, Sender):
        sender.svc = svc
    return svc, sender


def send_alimtalk(
    svc: DeliveryTrackingService,
    mid: str = "m1",
    *,
    provider_id: str = "solapi",
    type: str = "ALIMTALK",
    failover: dict[str, Any] | None = None,
    warnings: tuple[str, ...] = ("FAILOVER_UNSUPPORTED_PROVIDER",),
) -> None:
    fo = {
        "enabled": True,
        "fallback_channel": "sms",
        "fallback_content": "  주문이 접수되었습니다.  ",
    }
    if failover is not None:
        fo = failover
    svc.record_send(
        {
            "message_id": mid,
            "timestamp": T0,
            "options": {
                "type": type,
                "to": "010-1234-5678",
                "from": "02-1588-1234",
                "failover": fo,
            },
        },
        {
            "message_id": mid,
            "provider_id": provider_id,
            "provider_message_id": f"P-{mid}",
            "type": type,
            "to": "010-1234-5678",
            "warnings": [{"code": c} for c in warnings],
        },
    )


def attempt(svc: DeliveryTrackingService, mid: str = "m1") -> dict[str, Any]:
    record = svc.get_record(mid)
    assert record is not None
    return dict(record.metadata["failover"]["api_attempt"])


def poll(svc: DeliveryTrackingService, clock: SimulatedClock) -> Any:
    clock.advance(60)
    return svc.run_once()


# --------------------------------------------------------------------------- it fires


def test_fallback_sms_is_sent_once_and_recorded(store: Store, clock: SimulatedClock) -> None:
    svc, sender = make(store, clock)
    with svc:
        send_alimtalk(svc)
        report = poll(svc, clock)
        assert report.failover == {"sent": 1}
        assert report.transitions == {"SENT->FAILED": 1}
        ((send_input, context),) = sender.calls
        sealed = getattr(store, "numbers", None) == "encrypted"
        assert send_input == FailoverSendInput(
            type="SMS",
            to="01012345678" if sealed else None,  # opened only to send
            text="주문이 접수되었습니다.",
            message_id="m1:api-fallback",
            from_="0215881234" if sealed else None,
            subject=None,
            to_masked="010****5678",
        )
        assert (context.original_message_id, context.original_provider_id) == ("m1", "solapi")
        assert (context.original_provider_message_id, context.fallback_message_id) == (
            "P-m1",
            "m1:api-fallback",
        )
        assert context.fallback_type == "SMS"
        assert context.record.status == "FAILED"
        assert attempt(svc) == {
            "attempted": True,
            "status": "attempting",
            "attempted_at": "2026-11-02T09:01:00.000Z",
            "outcome": "sent",
            "fallback_message_id": "m1:api-fallback",
            "fallback_provider_id": "sms-gw",
        }
        record = svc.get_record("m1")
        assert record is not None
        assert record.status == "FAILED"
        assert record.provider_status_code == "3104"
        clock.advance(86_400)
        assert svc.run_once().failover == {}
        assert len(sender.calls) == 1


def test_the_marker_is_written_before_anything_is_sent(store: Store, clock: SimulatedClock) -> None:
    svc, sender = make(store, clock)
    with svc:
        send_alimtalk(svc)
        poll(svc, clock)
        (seen,) = sender.seen_records
        assert seen is not None
        assert seen.status == "FAILED"
        assert seen.metadata["failover"]["api_attempt"] == {
            "attempted": True,
            "status": "attempting",
            "attempted_at": "2026-11-02T09:01:00.000Z",
        }


def test_lms_fallback_carries_the_title_sms_does_not(store: Store, clock: SimulatedClock) -> None:
    svc, sender = make(store, clock)
    with svc:
        send_alimtalk(
            svc,
            "lms",
            failover={
                "enabled": True,
                "fallback_channel": "lms",
                "fallback_content": "긴 안내문",
                "fallback_title": " 안내 ",
            },
        )
        send_alimtalk(
            svc,
            "sms",
            failover={
                "enabled": True,
                "fallback_content": "짧은 안내",
                "fallback_title": "버려지는 제목",
            },
        )
        poll(svc, clock)
        sent = {i.message_id: i for i, _ in sender.calls}
        assert (sent["lms:api-fallback"].type, sent["lms:api-fallback"].subject) == ("LMS", "안내")
        assert (sent["sms:api-fallback"].type, sent["sms:api-fallback"].subject) == ("SMS", None)


def test_partial_provider_warning_is_eligible_too(store: Store, clock: SimulatedClock) -> None:
    svc, _sender = make(store, clock)
    with svc:
        send_alimtalk(svc, warnings=("SOMETHING_ELSE", "FAILOVER_PARTIAL_PROVIDER"))
        assert poll(svc, clock).failover == {"sent": 1}


def test_numbers_go_to_the_sender_where_the_store_keeps_them(clock: SimulatedClock) -> None:
    svc, sender = make(InMemoryTrackingStore(hash_key=HASH_KEY, keep_numbers=True), clock)
    with svc:
        send_alimtalk(svc)
        poll(svc, clock)
        send_input = sender.calls[0][0]
        assert (send_input.to, send_input.from_) == ("010-1234-5678", "02-1588-1234")


def test_an_async_sender_is_awaited(store: Store, clock: SimulatedClock) -> None:
    got: list[FailoverSendInput] = []

    async def sender(
        send_input: FailoverSendInput, context: FailoverAttemptContext
    ) -> dict[str, str]:
        got.append(send_input)
        return {"messageId": "F-9", "providerId": "iwinv"}

    svc, _ = make(store, clock, sender=sender)
    with svc:
        send_alimtalk(svc)
        poll(svc, clock)
        a = attempt(svc)
        assert len(got) == 1
        assert (a["fallback_message_id"], a["fallback_provider_id"]) == (
            "F-9",
            "iwinv",
        )


# --------------------------------------------------------------------------- it does not fire


@pytest.mark.parametrize(
    ("case", "kwargs", "gateway"),
    [
        ("not an AlimTalk", {"type": "SMS"}, Gateway()),
        (
            "delivered, not failed",
            {},
            Gateway(status="DELIVERED", code="4000", message="발송 처리 완료"),
        ),
        ("unknown, not failed", {}, Gateway(status="UNKNOWN")),
        (
            "failover not requested",
            {"failover": {"enabled": False, "fallback_content": "x"}},
            Gateway(),
        ),
        ("no eligible warning", {"warnings": ("FAILOVER_NOT_NEEDED",)}, Gateway()),
        ("no warning at all", {"warnings": ()}, Gateway()),
        ("another failure", {}, Gateway(code="3105", message="미등록 템플릿")),
    ],
)
def test_failover_conditions(
    store: Store, clock: SimulatedClock, case: str, kwargs: dict[str, Any], gateway: Gateway
) -> None:
    svc, sender = make(store, clock, gateway)
    with svc:
        send_alimtalk(svc, **kwargs)
        report = poll(svc, clock)
        assert sender.calls == [], case
        assert report.failover == {}, case
        record = svc.get_record("m1")
        assert record is not None
        if "failover" in record.metadata:
            assert attempt(svc) == {"attempted": False, "status": "not_attempted"}


def test_no_attempt_when_already_attempted(store: Store, clock: SimulatedClock) -> None:
    svc, sender = make(store, clock)
    with svc:
        send_alimtalk(svc)
        record = svc.get_record("m1")
        assert record is not None
        metadata = dict(record.metadata)
        metadata["failover"] = {
            **metadata["failover"],
            "api_attempt": {"attempted": True, "status": "attempting"},
        }
        store.patch("m1", {"metadata": metadata})
        assert poll(svc, clock).failover == {}
        assert sender.calls == []


def test_no_attempt_when_failover_is_disabled_or_not_configured(
    store: Store, clock: SimulatedClock
) -> None:
    svc, sender = make(store, clock, enabled=False)
    with svc:
        send_alimtalk(svc)
        assert poll(svc, clock).failover == {}
        assert sender.calls == []
        assert attempt(svc)["attempted"] is False
    plain = DeliveryTrackingService(
        [Gateway()], store=InMemoryTrackingStore(hash_key=HASH_KEY), clock=clock
    )
    with plain:
        send_alimtalk(plain)
        assert poll(plain, clock).failover == {}


def test_a_record_polled_again_after_an_attempt_is_never_sent_twice(
    store: Store, clock: SimulatedClock
) -> None:
    svc, sender = make(store, clock)
    with svc:
        send_alimtalk(svc)
        poll(svc, clock)
        # someone re-opens the record (a manual patch); the gateway reports FAILED again
        store.patch("m1", {"status": "SENT", "next_check_at": clock()})
        report = poll(svc, clock)
        assert report.transitions == {"SENT->FAILED": 1}
        assert report.failover == {}
        assert len(sender.calls) == 1
        assert attempt(svc)["outcome"] == "sent"


def test_kmsg_camelcase_metadata_is_understood(store: Store, clock: SimulatedClock) -> None:
    svc, sender = make(store, clock)
    with svc:
        send_alimtalk(svc, "fresh")
        send_alimtalk(svc, "done")
        for mid, attempted in (("fresh", False), ("done", True)):
            store.patch(
                mid,
                {
                    "metadata": {
                        "failover": {
                            "request": {
                                "enabled": True,
                                "fallbackChannel": "lms",
                                "fallbackContent": "본문",
                                "fallbackTitle": "제목",
                            },
                            "sendWarningCodes": ["FAILOVER_UNSUPPORTED_PROVIDER"],
                            "apiAttempt": {
                                "attempted": attempted,
                                "status": "attempting" if attempted else "not_attempted",
                            },
                        }
                    }
                },
            )
        poll(svc, clock)
        assert [(i.message_id, i.type, i.subject) for i, _ in sender.calls] == [
            ("fresh:api-fallback", "LMS", "제목")
        ]
        a = attempt(svc, "fresh")
        assert a["outcome"] == "sent"
        assert a["attempted"] is True
        record = svc.get_record("fresh")
        assert record is not None
        assert "apiAttempt" not in record.metadata["failover"]


# --------------------------------------------------------------------------- classification


def record_of(provider_id: str, code: str | None, message: str | None) -> TrackingRecord:
    return TrackingRecord(
        message_id="m1",
        provider_id=provider_id,
        provider_message_id="P-m1",
        type="ALIMTALK",
        to_hash="h",
        to_masked="010****5678",
        requested_at=T0,
        status="FAILED",
        status_updated_at=T0,
        next_check_at=T0,
        provider_status_code=code,
        provider_status_message=message,
    )


@pytest.mark.parametrize(
    ("provider_id", "code", "message", "expected"),
    [
        ("solapi", "3104", "카카오톡 미사용자", True),
        ("solapi", "3107", None, True),
        ("solapi", "3999", "72시간 내 미사용자", True),
        ("solapi", "3105", "미등록 템플릿", False),
        ("solapi", None, None, False),
        ("iwinv", "3019", "카카오톡 미사용자", True),
        ("iwinv", "카카오", "미사용 번호", True),
        ("iwinv", "3020", "카카오 알림톡 수신 차단", False),
        ("iwinv", "3104", "미사용자", False),
        ("aligo", "3104", "카카오톡 미사용자", False),
    ],
)
def test_built_in_rules(
    provider_id: str, code: str | None, message: str | None, expected: bool
) -> None:
    assert (
        is_non_kakao_user(ApiFailoverConfig(None), record_of(provider_id, code, message))
        is expected
    )


def test_provider_rules_by_status_code_and_message() -> None:
    cfg = ApiFailoverConfig(
        None,
        rules_by_provider_id={
            "aligo": FailoverRule(status_codes=["K105"]),
            "ppurio": {"message_includes": ["톡 미사용", "not a kakao user"]},  # type: ignore[dict-item]
            "solapi": FailoverRule(status_codes=["9999"]),
        },
    )
    assert is_non_kakao_user(cfg, record_of("aligo", "K105", None))
    assert not is_non_kakao_user(cfg, record_of("aligo", "K1050", "K105"))  # codes match exactly
    assert is_non_kakao_user(cfg, record_of("ppurio", None, "수신자: not a kakao user"))
    assert not is_non_kakao_user(cfg, record_of("ppurio", "톡 미사용", None))
    assert is_non_kakao_user(cfg, record_of("solapi", "3104", None))  # no rule match: built-in rule
    assert is_non_kakao_user(cfg, record_of("solapi", "9999", None))


def test_a_classifier_overrides_the_rules_and_an_exception_means_no() -> None:
    seen: list[FailoverClassification] = []

    def classify(c: FailoverClassification) -> bool:
        seen.append(c)
        return c.status_code == "X1"

    cfg = ApiFailoverConfig(None, classify_non_kakao_user=classify)
    assert is_non_kakao_user(cfg, record_of("aligo", "X1", "m"), raw={"k": 1})
    assert not is_non_kakao_user(cfg, record_of("solapi", "3104", "카카오톡 미사용자"))
    assert seen[0].raw == {"k": 1}
    assert seen[0].status_message == "m"

    def broken(c: FailoverClassification) -> bool:
        raise KeyError("oops")

    assert not is_non_kakao_user(
        ApiFailoverConfig(None, classify_non_kakao_user=broken), record_of("solapi", "3104", None)
    )


def test_classifier_sees_the_raw_payload_in_a_run_even_when_raw_is_not_stored(
    store: Store, clock: SimulatedClock
) -> None:
    raws: list[Any] = []

    def classify(c: FailoverClassification) -> bool:
        raws.append(c.raw)
        return bool(c.raw and c.raw.get("resendStatus") == "NO_KAKAO")

    gateway = Gateway("aligo", code="K105", message="?", raw={"resendStatus": "NO_KAKAO"})
    svc, _sender = make(store, clock, gateway, classify_non_kakao_user=classify)
    with svc:
        send_alimtalk(svc, provider_id="aligo")
        assert poll(svc, clock).failover == {"sent": 1}
        record = svc.get_record("m1")
        assert raws == [{"resendStatus": "NO_KAKAO"}]
        assert record is not None
        assert record.raw is None


def test_should_attempt_needs_every_condition() -> None:
    cfg = ApiFailoverConfig(None)
    base = record_of("solapi", "3104", None)
    meta = {
        "failover": {
            "request": {"enabled": True},
            "send_warning_codes": ["FAILOVER_UNSUPPORTED_PROVIDER"],
            "api_attempt": {"attempted": False, "status": "not_attempted"},
        }
    }
    from dataclasses import replace

    ok = replace(base, metadata=meta)
    assert should_attempt(cfg, ok)
    assert not should_attempt(None, ok)
    assert not should_attempt(ApiFailoverConfig(None, enabled=False), ok)
    assert not should_attempt(cfg, replace(ok, type="FRIENDTALK"))
    assert not should_attempt(cfg, replace(ok, status="DELIVERED"))
    assert not should_attempt(cfg, base)  # no failover metadata
    assert read_failover(None).enabled is None


# --------------------------------------------------------------------------- outcomes


def test_a_provider_error_from_the_sender_is_recorded_as_failed(
    store: Store, clock: SimulatedClock
) -> None:
    svc, _ = make(store, clock, sender=Sender(ProviderError("INSUFFICIENT_BALANCE", "잔액 부족")))
    with svc:
        send_alimtalk(svc)
        assert poll(svc, clock).failover == {"failed": 1}
        a = attempt(svc)
        assert (a["outcome"], a["error_code"], a["error_message"]) == (
            "failed",
            "INSUFFICIENT_BALANCE",
            "잔액 부족",
        )
        assert a["attempted"] is True
        assert "fallback_message_id" not in a


def test_any_other_sender_exception_is_api_failover_send_exception(
    store: Store, clock: SimulatedClock
) -> None:
    svc, _ = make(store, clock, sender=Sender(RuntimeError("socket closed")))
    with svc:
        send_alimtalk(svc)
        poll(svc, clock)
        a = attempt(svc)
        assert (a["outcome"], a["error_code"], a["error_message"]) == (
            "failed",
            "API_FAILOVER_SEND_EXCEPTION",
            "socket closed",
        )


def test_blank_fallback_content_is_skipped_without_sending(
    store: Store, clock: SimulatedClock
) -> None:
    svc, sender = make(store, clock)
    with svc:
        send_alimtalk(
            svc, failover={"enabled": True, "fallback_channel": "sms", "fallback_content": "   "}
        )
        assert poll(svc, clock).failover == {"skipped": 1}
        assert sender.calls == []
        a = attempt(svc)
        assert (a["attempted"], a["status"], a["outcome"], a["warning_code"]) == (
            True,
            "attempting",
            "skipped",
            "FALLBACK_CONTENT_MISSING",
        )
        assert a["warning_message"]


def test_no_sender_is_skipped_as_sender_missing(store: Store, clock: SimulatedClock) -> None:
    svc = DeliveryTrackingService(
        [Gateway()], store=store, clock=clock, api_failover={"sender": None, "enabled": True}
    )
    with svc:
        send_alimtalk(svc)
        assert poll(svc, clock).failover == {"skipped": 1}
        assert attempt(svc)["warning_code"] == "API_FAILOVER_SENDER_MISSING"


def test_config_validation() -> None:
    with pytest.raises(InvalidRecordError, match=r"api_failover\.sender"):
        ApiFailoverConfig("not callable")  # type: ignore[arg-type]
    with pytest.raises(InvalidRecordError, match="rules_by_provider_id"):
        ApiFailoverConfig(None, rules_by_provider_id={"x": 3})  # type: ignore[dict-item]
    with pytest.raises(InvalidRecordError, match=r"FailoverRule\.status_codes"):
        FailoverRule(status_codes=[""])
    with pytest.raises(InvalidRecordError, match="api_failover"):  # refused at construction
        DeliveryTrackingService(
            [Gateway()], store=InMemoryTrackingStore(hash_key=HASH_KEY), api_failover=42
        )


# --------------------------------------------------------------------------- a crash mid-send


@pytest.mark.slow
def test_a_crash_between_the_marker_and_the_outcome_never_sends_twice(tmp_path: Path) -> None:
    lake, sendlog = tmp_path / "lake", tmp_path / "sends.log"
    clock = SimulatedClock(T0)
    with DeliveryTrackingService(
        [Gateway()], store=ParquetTrackingStore(lake, hash_key=HASH_KEY), clock=clock
    ) as svc:
        send_alimtalk(svc)
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), "failover", str(lake), str(sendlog)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    assert sendlog.read_text().split() == ["m1:api-fallback"]  # sent once, then the process died
    sender = Sender()
    clock.advance_to(T0 + timedelta(hours=2))
    svc, sender = make(ParquetTrackingStore(lake, hash_key=HASH_KEY), clock, sender=sender)
    with svc:
        a = attempt(svc)
        assert (a["attempted"], a["status"]) == (True, "attempting")
        assert "outcome" not in a
        record = svc.get_record("m1")
        assert record is not None
        assert record.status == "FAILED"
        store = svc.store
        store.patch("m1", {"status": "SENT", "next_check_at": clock()})  # even if polled again
        svc.run_once()
        assert sender.calls == []


def test_a_slow_sender_does_not_block_other_fallbacks(store: Store, clock: SimulatedClock) -> None:
    both = threading.Barrier(2, timeout=10)

    def sender(send_input: FailoverSendInput, context: FailoverAttemptContext) -> None:
        both.wait()  # passes only if two sends run at once

    svc, _ = make(store, clock, sender=sender)
    with svc:
        send_alimtalk(svc, "a")
        send_alimtalk(svc, "b")
        started = time.monotonic()
        assert poll(svc, clock).failover == {"sent": 2}
        assert time.monotonic() - started < 10


def test_the_outcome_is_written_onto_the_records_current_state(
    store: Store, clock: SimulatedClock
) -> None:
    def sender(send_input: FailoverSendInput, context: FailoverAttemptContext) -> None:
        # a delivery report for the AlimTalk arrives while the fallback is being sent
        store.patch("m1", {"provider_status_message": "카카오톡 미사용자 (리포트 수신)"})

    svc, _ = make(store, clock, sender=sender)
    with svc:
        send_alimtalk(svc)
        poll(svc, clock)
        record = svc.get_record("m1")
        assert record is not None
        assert record.provider_status_message == "카카오톡 미사용자 (리포트 수신)"
        assert record.metadata["failover"]["api_attempt"]["outcome"] == "sent"
