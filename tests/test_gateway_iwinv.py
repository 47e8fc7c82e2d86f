"""IWINV's client against a local server speaking its AlimTalk and SMS history APIs,
and the ``poll``/``check-gateways`` commands against both fake gateways.

The server checks IWINV's ``AUTH`` and ``secret`` headers, the company id and the date
formats, and filters by the Korea-time dates it is sent, so a lookup written in another
zone misses. ``ignore_id_filter`` makes it list other messages too, to show that the
client never answers with someone else's result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kmsg_analytics import DeliveryTrackingService, ParquetTrackingStore
from kmsg_analytics._cli_gateways import add_gateway_parsers
from kmsg_analytics._errors import InvalidRecordError
from kmsg_analytics._failover import is_non_kakao_user
from kmsg_analytics._gateways import HttpSettings, IwinvProvider, SendRejectedError, capture_send
from kmsg_analytics._gateways.iwinv import alimtalk_status, sms_status
from kmsg_analytics._providers import (
    ApiFailoverConfig,
    DeliveryStatusQuery,
    DeliveryStatusResult,
    ProviderError,
)
from kmsg_analytics._simulated import SimulatedClock
from tests._fake_gateways import (
    IWINV_COMPANY,
    IWINV_KEY,
    IWINV_SMS_AUTH,
    IWINV_SMS_KEY,
    SOLAPI_KEY,
    SOLAPI_SECRET,
    FakeIwinv,
    FakeSolapi,
    Fault,
    html_page,
    json_bytes,
)

HASH_KEY = "test-key-123"
#: 00:30 in Seoul on 2 November is still 1 November in UTC: dates written in the wrong
#: zone land on the wrong day.
T0 = datetime(2026, 11, 1, 15, 30, tzinfo=UTC)
FAST = HttpSettings(
    timeout=2.0, connect_timeout=1.0, rate_limit=None, max_retries=1, max_retry_wait=0.5
)


@pytest.fixture
def fake() -> Iterator[FakeIwinv]:
    with FakeIwinv() as server:
        yield server


def make(fake: FakeIwinv, **kw: Any) -> IwinvProvider:
    args: dict[str, Any] = {
        "sms_api_key": IWINV_SMS_KEY,
        "sms_auth_key": IWINV_SMS_AUTH,
        "sms_company_id": IWINV_COMPANY,
        "base_url": fake.alimtalk_url,
        "sms_base_url": fake.sms_url,
        "http": FAST,
        **kw,
    }
    api_key = args.pop("api_key", IWINV_KEY)
    return IwinvProvider(api_key, **args)


@pytest.fixture
def provider(fake: FakeIwinv) -> Iterator[IwinvProvider]:
    with make(fake) as p:
        yield p


def query(pmid: str, type: str = "ALIMTALK", **kw: Any) -> DeliveryStatusQuery:
    kw.setdefault("checked_at", T0 + timedelta(minutes=5))
    return DeliveryStatusQuery(pmid, type, kw.pop("to", None), T0, **kw)


def ask(provider: IwinvProvider, pmid: str, type: str = "ALIMTALK", **kw: Any) -> Any:
    return asyncio.run(provider.get_delivery_status(query(pmid, type, **kw)))


def fails(provider: IwinvProvider, pmid: str = "1", type: str = "ALIMTALK") -> ProviderError:
    with pytest.raises(ProviderError) as info:
        ask(provider, pmid, type)
    return info.value


# --------------------------------------------------------------------------- AlimTalk


def test_alimtalk_lookup_in_korea_time(fake: FakeIwinv, provider: IwinvProvider) -> None:
    fake.add_alimtalk(
        4471,
        requested=T0,
        sent=T0 + timedelta(seconds=2),
        received=T0 + timedelta(seconds=4),
        status_code="OK",
        status_name="성공",
    )
    result = ask(provider, "4471")
    assert isinstance(result, DeliveryStatusResult)
    assert (result.status, result.status_code, result.status_message) == ("DELIVERED", "OK", "성공")
    assert result.sent_at == T0 + timedelta(seconds=2)  # "2026-11-02 00:30:02" read as KST
    assert result.delivered_at == T0 + timedelta(seconds=4)
    assert "phone" not in result.raw
    assert "sendMessage" not in result.raw
    request = fake.requests[-1]
    assert request.path == "/alimtalk/api/history/"
    assert request.body == {
        "pageNum": 1,
        "pageSize": 50,
        "startDate": "2026-11-01 00:30:00",  # requested_at - 1 day, in Seoul
        "endDate": "2026-11-02 00:35:00",  # checked_at, in Seoul
        "seqNo": 4471,
    }
    assert request.headers["content-type"] == "application/json;charset=UTF-8"


@pytest.mark.parametrize(
    ("code", "name", "sent", "status"),
    [
        ("OK", "성공", True, "DELIVERED"),
        ("K105", "카카오톡 미사용자", True, "FAILED"),
        ("3018", "메시지를 전송할 수 없음", True, "FAILED"),
        ("", "발송 대기", True, "PENDING"),
        ("", "", False, "PENDING"),
    ],
)
def test_alimtalk_statuses(
    fake: FakeIwinv, provider: IwinvProvider, code: str, name: str, sent: bool, status: str
) -> None:
    fake.add_alimtalk(
        7,
        requested=T0,
        sent=T0 + timedelta(seconds=3) if sent else None,
        status_code=code,
        status_name=name,
    )
    result = ask(provider, "7")
    assert result.status == status
    assert result.status_code == (code or None)
    if status == "FAILED":
        assert result.failed_at == T0 + timedelta(seconds=3)
        assert result.status_message == name


def test_iwinv_failure_text_triggers_the_failover_rule(
    fake: FakeIwinv, provider: IwinvProvider
) -> None:
    fake.add_alimtalk(8, requested=T0, sent=T0, status_code="K105", status_name="카카오톡 미사용자")
    result = ask(provider, "8")
    from kmsg_analytics import TrackingRecord

    record = TrackingRecord(
        "m",
        "iwinv",
        "8",
        "ALIMTALK",
        "h",
        "010****5678",
        T0,
        result.status,
        T0,
        T0,
        provider_status_code=result.status_code,
        provider_status_message=result.status_message,
    )
    assert is_non_kakao_user(ApiFailoverConfig(None), record)


def test_never_answers_with_another_message(fake: FakeIwinv, provider: IwinvProvider) -> None:
    fake.ignore_id_filter = True  # IWINV lists every message in the window
    fake.add_alimtalk(
        100, requested=T0, sent=T0, status_code="K105", status_name="카카오톡 미사용자"
    )
    fake.add_alimtalk(101, requested=T0, sent=T0, status_code="OK", status_name="성공")
    assert ask(provider, "555") is None  # k-msg answers with list[0], message 100's failure


def test_pages_are_followed_until_the_message(fake: FakeIwinv) -> None:
    fake.ignore_id_filter = True
    for seq in range(1, 12):
        fake.add_alimtalk(seq, requested=T0, sent=T0, status_code="OK", status_name="성공")
    with make(fake, page_size=4) as p:
        result = ask(p, "10")
    assert result.provider_message_id == "10"
    assert result.status == "DELIVERED"
    assert [r.body["pageNum"] for r in fake.requests] == [1, 2, 3]
    fake.requests.clear()
    with make(fake, page_size=4, max_pages=2) as p:
        assert ask(p, "10") is None  # two pages read, then "nothing yet"


def test_phone_is_sent_when_known_and_checked(fake: FakeIwinv, provider: IwinvProvider) -> None:
    fake.add_alimtalk(9, phone="01099998888", requested=T0, sent=T0, status_code="OK")
    assert ask(provider, "9", to="010-1234-5678") is None  # filtered by the gateway
    assert fake.requests[-1].body["phone"] == "01012345678"
    assert ask(provider, "9", to="010-9999-8888").status == "DELIVERED"
    fake.ignore_id_filter = True
    result = ask(provider, "9", to_masked="010****5678")  # the masks tell them apart
    assert result is None


def test_alimtalk_auth_and_ip_refusals_are_final(fake: FakeIwinv) -> None:
    with make(fake, api_key="wrong-key-123456") as p:
        err = fails(p)
        assert (err.code, err.retryable) == ("AUTHENTICATION_FAILED", False)
        assert "201" in err.message
        assert "인증에 실패" in err.message
        assert "wrong-key-123456" not in err.message
    fake.ip_blocked = True
    with make(fake) as p:
        err = fails(p)
    assert (err.code, err.retryable) == ("AUTHENTICATION_FAILED", False)
    assert "206" in err.message
    assert "IP" in err.message


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable"),
    [
        (502, html_page(502, "Bad Gateway"), "PROVIDER_ERROR", True),  # k-msg: INVALID_REQUEST
        (504, b"", "PROVIDER_ERROR", True),
        (200, json_bytes({"code": 500, "message": "내부 오류"}), "PROVIDER_ERROR", True),
        (200, json_bytes({"code": 518, "message": "일시적 오류"}), "PROVIDER_ERROR", True),
        (200, json_bytes({"code": 429, "message": "요청 초과"}), "RATE_LIMIT_EXCEEDED", True),
        (200, json_bytes({"code": 508, "message": "잘못된 요청"}), "INVALID_REQUEST", False),
        (200, json_bytes({"code": 519, "message": "잔액 부족"}), "INSUFFICIENT_BALANCE", False),
        (200, b"<html>maintenance</html>", "PROVIDER_ERROR", True),
        (200, b'{"code": 200, "list": [', "PROVIDER_ERROR", True),
    ],
)
def test_alimtalk_errors_are_classified(
    fake: FakeIwinv, status: int, body: bytes, code: str, retryable: bool
) -> None:
    fake.script(*[Fault(status=status, body=body)] * 2)
    with make(fake) as p:
        err = fails(p)
    assert (err.code, err.retryable) == (code, retryable)


def test_string_code_200_is_success(fake: FakeIwinv, provider: IwinvProvider) -> None:
    answer = {
        "code": "200",
        "message": "조회 성공",
        "totalCount": 1,
        "list": [{"seqNo": "12", "statusCode": "OK", "sendDate": "2026-11-02 00:30:01"}],
    }
    fake.script(Fault(status=200, body=json_bytes(answer)))
    assert ask(provider, "12").status == "DELIVERED"


def test_429_retry_after_and_slow_answers(fake: FakeIwinv) -> None:
    fake.add_alimtalk(3, requested=T0, sent=T0, status_code="OK", status_name="성공")
    fake.script(Fault(status=429, headers={"Retry-After": "0"}, body=json_bytes({"code": 429})))
    with make(fake) as p:
        assert ask(p, "3").status == "DELIVERED"
    assert len(fake.requests) == 2
    fake.script(Fault(kind="hang"))
    with make(fake, http=HttpSettings(timeout=0.2, rate_limit=None, max_retries=0)) as p:
        err = fails(p, "3")
        fake.release()
    assert (err.code, err.retryable) == ("NETWORK_TIMEOUT", True)


def test_non_numeric_seqno_and_unsupported_types(provider: IwinvProvider) -> None:
    err = fails(provider, "G-123")
    assert (err.code, err.retryable) == ("INVALID_REQUEST", False)
    err = fails(provider, "123", "FRIENDTALK")
    assert (err.code, err.retryable) == ("UNSUPPORTED_TYPE", False)


# --------------------------------------------------------------------------- SMS


def test_sms_lookup(fake: FakeIwinv, provider: IwinvProvider) -> None:
    fake.add_sms(
        "R-2026-0001",
        requested=T0,
        sent=T0 + timedelta(seconds=5),
        code="06",
        message="전송 성공",
        msg_type="LMS",
    )
    result = ask(provider, "R-2026-0001", "LMS")
    assert (result.status, result.status_code, result.status_message) == (
        "DELIVERED",
        "06",
        "전송 성공",
    )
    assert result.delivered_at == T0 + timedelta(seconds=5)
    request = fake.requests[-1]
    assert request.path == "/sms/api/history/"
    assert request.body == {
        "version": "1.0",
        "companyid": IWINV_COMPANY,
        "startDate": "2026-11-01",  # Seoul dates: requested 2026-11-02 00:30 KST, minus a day
        "endDate": "2026-11-02",
        "requestNo": "R-2026-0001",
        "pageNum": 1,
        "pageSize": 50,
    }


@pytest.mark.parametrize(
    ("code", "message", "status"),
    [
        ("06", "전송 성공", "DELIVERED"),
        ("1000", "", "DELIVERED"),
        ("01", "처리중", "PENDING"),
        ("00", "", "PENDING"),
        ("", "발송 대기", "PENDING"),
        ("32", "결번", "FAILED"),
        ("", "", None),
    ],
)
def test_sms_statuses(
    fake: FakeIwinv, provider: IwinvProvider, code: str, message: str, status: str | None
) -> None:
    fake.add_sms("R1", requested=T0, sent=T0 + timedelta(seconds=1), code=code, message=message)
    result = ask(provider, "R1", "SMS")
    assert (None if result is None else result.status) == status
    if status == "FAILED":
        assert (result.status_code, result.status_message) == ("32", "결번")
        assert result.failed_at == T0 + timedelta(seconds=1)


def test_sms_request_to_several_numbers(fake: FakeIwinv, provider: IwinvProvider) -> None:
    fake.add_sms("R9", phone="01012345678", requested=T0, sent=T0, code="06", message="전송 성공")
    fake.add_sms("R9", phone="01055556666", requested=T0, sent=T0, code="32", message="결번")
    assert ask(provider, "R9", "SMS", to_masked="010****6666").status == "FAILED"
    assert ask(provider, "R9", "SMS", to="01012345678").status == "DELIVERED"
    with pytest.raises(ProviderError) as info:
        ask(provider, "R9", "SMS")  # nothing tells them apart
    assert (info.value.code, info.value.retryable) == ("AMBIGUOUS_PROVIDER_RESULT", True)


def test_sms_refusals_are_final_and_errors_retryable(fake: FakeIwinv) -> None:
    with make(fake, sms_auth_key="wrong-auth-key-00") as p:
        err = fails(p, "R1", "SMS")
        assert (err.code, err.retryable) == ("AUTHENTICATION_FAILED", False)  # k-msg retries
        assert "wrong-auth-key-00" not in err.message
    fake.ip_blocked = True
    with make(fake) as p:
        err = fails(p, "R1", "SMS")
        assert (err.code, err.retryable) == ("AUTHENTICATION_FAILED", False)
        assert "IP" in err.message
    fake.ip_blocked = False
    fake.script(Fault(status=200, body=json_bytes({"resultCode": 99, "message": "점검 중"})))
    with make(fake) as p:
        err = fails(p, "R1", "SMS")
    assert (err.code, err.retryable) == ("PROVIDER_ERROR", True)


def test_sms_window_and_configuration(fake: FakeIwinv) -> None:
    with make(fake) as p:
        old = DeliveryStatusQuery("R1", "SMS", None, T0 - timedelta(days=120), checked_at=T0)
        with pytest.raises(ProviderError) as info:
            asyncio.run(p.get_delivery_status(old))
    assert (info.value.code, info.value.retryable) == ("HISTORY_WINDOW_EXCEEDED", False)
    with IwinvProvider(IWINV_KEY, base_url=fake.alimtalk_url, http=FAST) as alimtalk_only:
        assert alimtalk_only.supported_types == ("ALIMTALK",)
        with pytest.raises(ProviderError) as info:
            asyncio.run(alimtalk_only.get_delivery_status(query("R1", "SMS")))
    assert (info.value.code, info.value.retryable) == ("PROVIDER_NOT_CONFIGURED", True)
    with pytest.raises(InvalidRecordError):
        IwinvProvider()


def test_legacy_sms_secret() -> None:
    legacy = FakeIwinv(sms_api_key=IWINV_KEY, sms_auth_key=IWINV_SMS_AUTH)
    with (
        legacy,
        IwinvProvider(
            IWINV_KEY,
            sms_auth_key=IWINV_SMS_AUTH,
            sms_company_id=IWINV_COMPANY,
            sms_base_url=legacy.sms_url,
            http=FAST,
        ) as p,
    ):
        legacy.add_sms("R1", requested=T0, sent=T0, code="06", message="전송 성공")
        assert ask(p, "R1", "SMS").status == "DELIVERED"


def test_status_functions() -> None:
    assert alimtalk_status("ok", None, None) == "DELIVERED"
    assert alimtalk_status("E", "실패", "0000-00-00 00:00:00") == "PENDING"  # no real date
    assert sms_status(6, None) == "FAILED"  # an integer 6 is not IWINV's "06"
    assert sms_status(1000, None) == "DELIVERED"


# --------------------------------------------------------------------------- capture


def test_capture_iwinv_answers() -> None:
    _, res = capture_send(
        "iwinv",
        {"code": 200, "message": "발송 성공", "seqNo": 4471},
        message_id="m1",
        to="01012345678",
        type="ALIMTALK",
    )
    assert res.provider_message_id == "4471"
    _, res = capture_send(
        "iwinv",
        '{"resultCode": 0, "message": "전송 성공", "requestNo": "R77"}',
        message_id="m2",
        to="01012345678",
        type="SMS",
    )
    assert res.provider_message_id == "R77"
    with pytest.raises(SendRejectedError) as info:
        capture_send(
            "iwinv",
            {"code": 206, "message": "등록하지 않은 IP에서는 발송되지 않습니다."},
            message_id="m3",
            to="01012345678",
            type="ALIMTALK",
        )
    assert info.value.status_code == "206"
    with pytest.raises(InvalidRecordError):
        capture_send("iwinv", {"code": 200}, message_id="m4", to="01012345678", type="ALIMTALK")


# --------------------------------------------------------------------------- end to end


def test_runner_polls_alimtalk_and_sms_through_iwinv(fake: FakeIwinv, tmp_path: Path) -> None:
    clock = SimulatedClock(T0)
    store = ParquetTrackingStore(tmp_path / "lake", hash_key=HASH_KEY)
    provider = make(fake)
    svc = DeliveryTrackingService([provider], store=store, clock=clock)
    try:
        answers: dict[str, tuple[dict[str, Any], str]] = {
            "a1": ({"code": 200, "seqNo": 501}, "ALIMTALK"),
            "a2": ({"code": 200, "seqNo": 502}, "ALIMTALK"),
            "s1": ({"resultCode": 0, "requestNo": "R501"}, "SMS"),
            "s2": ({"resultCode": 0, "requestNo": "R502"}, "MMS"),
        }
        for mid, (answer, kind) in answers.items():
            svc.record_send(
                *capture_send(
                    "iwinv", answer, message_id=mid, to="010-1234-5678", type=kind, requested_at=T0
                )
            )
        fake.add_alimtalk(
            501,
            requested=T0,
            sent=T0 + timedelta(seconds=2),
            received=T0 + timedelta(seconds=3),
            status_code="OK",
            status_name="성공",
        )
        fake.add_alimtalk(502, requested=T0)  # accepted, not sent yet
        fake.add_sms(
            "R501", requested=T0, sent=T0 + timedelta(seconds=4), code="32", message="결번"
        )
        clock.advance(60)
        report = svc.run_once()
        assert (report.checked, report.errors_by_code) == (4, {})
        status = {m: r.status for m in answers if (r := svc.get_record(m)) is not None}
        assert status == {"a1": "DELIVERED", "a2": "PENDING", "s1": "FAILED", "s2": "SENT"}
        s1 = svc.get_record("s1")
        assert s1 is not None
        assert (s1.provider_status_code, s1.provider_status_message) == (
            "32",
            "결번",
        )
        assert s1.failed_at == T0 + timedelta(seconds=4)
    finally:
        provider.close()
        svc.close()


# --------------------------------------------------------------------------- CLI


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kmsg-analytics")
    sub = parser.add_subparsers(dest="command", required=True)
    add_gateway_parsers(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def both(fake: FakeIwinv) -> Iterator[tuple[FakeSolapi, FakeIwinv]]:
    with FakeSolapi() as solapi:
        yield solapi, fake


def _config(tmp_path: Path, solapi: FakeSolapi, iwinv: FakeIwinv, *, sms_auth: str) -> Path:
    path = tmp_path / "gateways.toml"
    path.write_text(
        f"""
[polling]
concurrency = 4

[solapi]
api_key_env = "T_SOLAPI_KEY"
api_secret_env = "T_SOLAPI_SECRET"
base_url = "{solapi.url}"
max_retries = 0
rate_limit = 100

[iwinv]
api_key_env = "T_IWINV_KEY"
sms_api_key_env = "T_IWINV_SMS_KEY"
sms_auth_key = "{sms_auth}"
sms_company_id = "{IWINV_COMPANY}"
base_url = "{iwinv.alimtalk_url}"
sms_base_url = "{iwinv.sms_url}"
""",
        encoding="utf-8",
    )
    path.chmod(0o600)
    return path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_SOLAPI_KEY", SOLAPI_KEY)
    monkeypatch.setenv("T_SOLAPI_SECRET", SOLAPI_SECRET)
    monkeypatch.setenv("T_IWINV_KEY", IWINV_KEY)
    monkeypatch.setenv("T_IWINV_SMS_KEY", IWINV_SMS_KEY)
    monkeypatch.setenv("KMSG_ANALYTICS_HASH_KEY", HASH_KEY)
    for name in ("SOLAPI_API_KEY", "SOLAPI_API_SECRET", "IWINV_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("env")
def test_check_gateways_report(
    both: tuple[FakeSolapi, FakeIwinv], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    solapi, iwinv = both
    good = _config(tmp_path, solapi, iwinv, sms_auth=IWINV_SMS_AUTH)
    assert _run(["check-gateways", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 endpoints ok" in out
    assert "solapi" in out
    assert "iwinv alimtalk" in out
    assert "iwinv sms" in out
    bad = _config(tmp_path, solapi, iwinv, sms_auth="not-the-auth-key")
    assert _run(["check-gateways", "--config", str(bad), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    outcomes = {r["gateway"]: (r["outcome"], r["code"]) for r in report}
    assert outcomes == {
        "solapi": ("ok", None),
        "iwinv alimtalk": ("ok", None),
        "iwinv sms": ("FAILED", "AUTHENTICATION_FAILED"),
    }
    printed = json.dumps(report, ensure_ascii=False)
    for secret in (SOLAPI_SECRET, IWINV_KEY, IWINV_SMS_KEY, "not-the-auth-key"):
        assert secret not in printed


@pytest.mark.usefixtures("env")
def test_poll_command_polls_a_lake(
    both: tuple[FakeSolapi, FakeIwinv], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    solapi, iwinv = both
    lake = tmp_path / "lake"
    requested = datetime.now(UTC) - timedelta(minutes=10)
    store = ParquetTrackingStore(lake, hash_key=HASH_KEY)
    with DeliveryTrackingService([_Id("solapi"), _Id("iwinv"), _Id("aligo")], store=store) as svc:
        sends: list[tuple[str, dict[str, Any], str, str]] = [
            ("solapi", {"messageId": "MS1", "statusCode": "2000"}, "m1", "SMS"),
            ("iwinv", {"code": 200, "seqNo": 77}, "m2", "ALIMTALK"),
        ]
        for pid, answer, mid, kind in sends:
            svc.record_send(
                *capture_send(
                    pid, answer, message_id=mid, to="01012345678", type=kind, requested_at=requested
                )
            )
        svc.record_send(
            {
                "message_id": "m3",
                "timestamp": requested,
                "options": {"type": "SMS", "to": "01012345678"},
            },
            {
                "message_id": "m3",
                "provider_id": "aligo",
                "provider_message_id": "A1",
                "type": "SMS",
                "to": "01012345678",
            },
        )
    solapi.add("MS1", "4000", received=requested + timedelta(seconds=3))
    iwinv.add_alimtalk(
        77, requested=requested, sent=requested, status_code="K105", status_name="카카오톡 미사용자"
    )
    config = _config(tmp_path, solapi, iwinv, sms_auth=IWINV_SMS_AUTH)
    assert _run(["poll", "--lake", str(lake), "--config", str(config), "--max-runs", "1"]) == 0
    captured = capsys.readouterr()
    assert "3 of 3 endpoints ok" in captured.out
    assert "run 1:" in captured.out
    assert "aligo" in captured.err  # left polling, not finalised
    with ParquetTrackingStore(lake, hash_key=HASH_KEY) as store:
        records = {m: store.get(m) for m in ("m1", "m2", "m3")}
    assert records["m1"] is not None
    assert records["m1"].status == "DELIVERED"
    assert records["m2"] is not None
    assert records["m2"].status == "FAILED"
    assert records["m3"] is not None
    assert records["m3"].status == "SENT"
    assert records["m3"].last_error is not None
    assert records["m3"].last_error.code == "UNSUPPORTED_PROVIDER"


@pytest.mark.usefixtures("env")
def test_poll_refuses_to_start_with_rejected_credentials(
    both: tuple[FakeSolapi, FakeIwinv], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    solapi, iwinv = both
    lake = tmp_path / "lake"
    ParquetTrackingStore(lake, hash_key=HASH_KEY).close()
    config = _config(tmp_path, solapi, iwinv, sms_auth="revoked")
    assert _run(["poll", "--lake", str(lake), "--config", str(config), "--max-runs", "1"]) == 1
    assert "refused the credentials" in capsys.readouterr().err
    missing = tmp_path / "none.toml"
    with pytest.raises(Exception, match="no gateway configuration"):
        _run(["poll", "--lake", str(lake), "--config", str(missing)])


class _Id:
    def __init__(self, provider_id: str) -> None:
        self.id = provider_id
