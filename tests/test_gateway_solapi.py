"""SOLAPI's client against a local server speaking its API, and the shared HTTP layer.

The server (tests/_fake_gateways.py) verifies the HMAC signature of every request, so a
lookup that succeeds proves the signing. Faults (429, 5xx pages, malformed bodies, slow
answers, dropped connections) are scripted per request; slow answers are held until
released, so no test waits longer than its client's timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kmsg_analytics import DeliveryTrackingService, ParquetTrackingStore
from kmsg_analytics._errors import InvalidRecordError
from kmsg_analytics._gateways import (
    HttpSettings,
    RateLimiter,
    Secret,
    SendRejectedError,
    SolapiProvider,
    capture_send,
    load_gateways_config,
)
from kmsg_analytics._gateways._http import HttpClient, HttpResponse, _Conn, http_error
from kmsg_analytics._gateways.solapi import solapi_status
from kmsg_analytics._providers import (
    DeliveryStatusQuery,
    DeliveryStatusResult,
    PollingConfig,
    ProviderError,
)
from kmsg_analytics._simulated import SimulatedClock
from tests._fake_gateways import (
    SOLAPI_KEY,
    SOLAPI_SECRET,
    FakeSolapi,
    Fault,
    html_page,
    json_bytes,
)

HASH_KEY = "test-key-123"
T0 = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)
FAST = HttpSettings(
    timeout=2.0, connect_timeout=1.0, rate_limit=None, max_retries=1, max_retry_wait=0.5
)


@pytest.fixture
def fake() -> Iterator[FakeSolapi]:
    with FakeSolapi() as server:
        yield server


def make(
    fake: FakeSolapi, secret: str = SOLAPI_SECRET, *, batch_size: int = 100, **http: Any
) -> SolapiProvider:
    settings = {**{k: getattr(FAST, k) for k in FAST.__dataclass_fields__}, **http}
    return SolapiProvider(
        SOLAPI_KEY, secret, base_url=fake.url, http=settings, batch_size=batch_size
    )


@pytest.fixture
def provider(fake: FakeSolapi) -> Iterator[SolapiProvider]:
    with make(fake) as p:
        yield p


def query(pmid: str, type: str = "SMS", **kw: Any) -> DeliveryStatusQuery:
    return DeliveryStatusQuery(pmid, type, None, T0, checked_at=T0 + timedelta(minutes=5), **kw)


def ask(provider: SolapiProvider, pmid: str, type: str = "SMS") -> DeliveryStatusResult | None:
    return asyncio.run(provider.get_delivery_status(query(pmid, type)))


def fails(provider: SolapiProvider, pmid: str = "M1") -> ProviderError:
    with pytest.raises(ProviderError) as info:
        ask(provider, pmid)
    return info.value


# --------------------------------------------------------------------------- lookups


def test_signed_lookup_takes_the_fields_solapi_returns(
    fake: FakeSolapi, provider: SolapiProvider
) -> None:
    fake.add(
        "M4V20261102090000ABCDEFGHIJKLMN1",
        "4000",
        processed=T0 + timedelta(seconds=1),
        reported=T0 + timedelta(seconds=4),
        received=T0 + timedelta(seconds=3),
    )
    result = ask(provider, "M4V20261102090000ABCDEFGHIJKLMN1")
    assert result is not None
    assert (result.provider_id, result.status, result.status_code) == (
        "solapi",
        "DELIVERED",
        "4000",
    )
    assert result.status_message == "발송 처리 완료"
    assert result.sent_at == T0 + timedelta(seconds=1)
    assert result.delivered_at == T0 + timedelta(seconds=3)  # dateReceived
    assert result.failed_at is None
    # raw keeps status fields only: no numbers, no message text
    assert result.raw["statusCode"] == "4000"
    assert not {"to", "from", "text", "customFields"} & set(result.raw)
    request = fake.requests[-1]
    assert request.path == "/messages/v4/list"
    assert request.query == {"limit": "1", "messageId": "M4V20261102090000ABCDEFGHIJKLMN1"}
    assert request.headers["authorization"].startswith(f"HMAC-SHA256 apiKey={SOLAPI_KEY}, date=")


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("2000", "PENDING"),
        ("3000", "SENT"),
        ("4000", "DELIVERED"),
        ("3104", "FAILED"),
        ("3107", "FAILED"),
        ("1062", "FAILED"),
        ("2230", "FAILED"),
        ("3043", "FAILED"),
    ],
)
def test_status_codes_map_and_failures_keep_code_and_reason(
    fake: FakeSolapi, provider: SolapiProvider, code: str, status: str
) -> None:
    reason = "카카오톡 미사용자" if code == "3104" else None
    fake.add("M1", code, reason=reason, reported=T0 + timedelta(seconds=9))
    result = ask(provider, "M1", "ALIMTALK")
    assert result is not None
    assert result.status == status
    assert result.status_code == code
    if status == "FAILED":
        assert result.failed_at == T0 + timedelta(seconds=9)  # dateReported
        assert result.status_message  # the reason, else SOLAPI's text for the code
        if code == "3104":
            assert result.status_message == "카카오톡 미사용자"
        if code == "3043":
            assert result.status_message == "단말기 Power off"


def test_solapi_status_function() -> None:
    assert solapi_status(4000) == "DELIVERED"
    assert solapi_status("3999") == "FAILED"
    assert solapi_status("4001") is None
    assert solapi_status(None, "SENDING") == "SENT"


def test_unrecognised_code_is_checked_again_not_finalised(
    fake: FakeSolapi, provider: SolapiProvider
) -> None:
    fake.add("M1", "9999", state="HOLD")
    err = fails(provider)
    assert (err.code, err.retryable) == ("UNRECOGNIZED_STATUS", True)
    assert "9999" in err.message


def test_test_mode_code_follows_the_status_field(
    fake: FakeSolapi, provider: SolapiProvider
) -> None:
    fake.add("M1", "TEST1000", state="PENDING")
    result = ask(provider, "M1")
    assert result is not None
    assert (result.status, result.status_code) == ("PENDING", "TEST1000")


def test_never_answers_with_another_message(fake: FakeSolapi, provider: SolapiProvider) -> None:
    fake.add("M-OTHER", "3104", reason="카카오톡 미사용자")
    fake.answer_with_other = True  # the list holds someone else's message
    assert ask(provider, "M-MINE") is None
    with pytest.raises(ProviderError) as info:
        ask(provider, "  ")
    assert (info.value.code, info.value.retryable) == ("INVALID_REQUEST", False)


def test_follows_next_key_pages(fake: FakeSolapi, provider: SolapiProvider) -> None:
    fake.add("M5", "3000", processed=T0)
    fake.second_page.add("M5")
    result = ask(provider, "M5")
    assert result is not None
    assert result.status == "SENT"
    assert [r.query.get("startKey") for r in fake.requests] == [None, "NKM5"]


# --------------------------------------------------------------------------- batches


def test_concurrent_checks_share_a_signed_request_and_keep_their_own_answers(
    fake: FakeSolapi,
) -> None:
    for i in range(30):
        fake.add(f"M{i}", "4000" if i % 2 else "3104", reported=T0 + timedelta(seconds=i))

    async def main(p: SolapiProvider) -> list[DeliveryStatusResult | None]:
        pmids = [*(f"M{i}" for i in range(30)), "M-NOT-YET", "M3"]
        return await asyncio.gather(*(p.get_delivery_status(query(m)) for m in pmids))

    with make(fake, batch_size=20) as p:
        results = asyncio.run(main(p))
    # 32 checks in two batches of at most 20 (on two connections: in either order)
    first, second = sorted((r.query for r in fake.requests), key=lambda q: -len(q["messageIds"]))
    assert first["messageIds"] == [f"M{i}" for i in range(20)]
    assert second["messageIds"] == [*(f"M{i}" for i in range(20, 30)), "M-NOT-YET", "M3"]
    assert (first["limit"], second["limit"]) == ("20", "12")
    assert "messageId" not in first
    for i, result in enumerate(results[:30]):
        assert result is not None
        assert result.provider_message_id == f"M{i}"
        assert result.status == ("DELIVERED" if i % 2 else "FAILED")
        assert result.failed_at == (None if i % 2 else T0 + timedelta(seconds=i))
    assert results[30] is None  # not listed yet: nothing borrowed from the others
    assert results[31] == results[3]


def test_one_id_asked_twice_at_once_is_asked_once(fake: FakeSolapi) -> None:
    fake.add("M1", "4000")

    async def main(p: SolapiProvider) -> list[DeliveryStatusResult | None]:
        return await asyncio.gather(*(p.get_delivery_status(query(m)) for m in ("M1", "M1")))

    with make(fake) as p:
        results = asyncio.run(main(p))
    assert [r.status for r in results if r is not None] == ["DELIVERED", "DELIVERED"]
    assert [r.query for r in fake.requests] == [{"limit": "1", "messageId": "M1"}]


def test_a_bad_id_fails_alone(fake: FakeSolapi) -> None:
    fake.add("M1", "4000")
    fake.add("M2", "3000")

    async def main(p: SolapiProvider) -> list[Any]:
        checks = (p.get_delivery_status(query(m)) for m in ("M1", "bad id!", "M2"))
        return await asyncio.gather(*checks, return_exceptions=True)

    with make(fake) as p:
        one, bad, two = asyncio.run(main(p))
    assert isinstance(one, DeliveryStatusResult)
    assert isinstance(two, DeliveryStatusResult)
    assert (one.status, two.status) == ("DELIVERED", "SENT")
    assert isinstance(bad, ProviderError)
    assert (bad.code, bad.retryable) == ("INVALID_REQUEST", False)
    assert "ValidationError" in bad.message
    asked = [r.query.get("messageIds") or r.query["messageId"] for r in fake.requests]
    assert asked[0] == ["M1", "bad id!", "M2"]  # the batch, refused; then one by one
    assert sorted(asked[1:]) == ["M1", "M2", "bad id!"]


def test_a_gateway_ignoring_message_ids_never_lends_another_answer(
    fake: FakeSolapi, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add("M1", "3104", reason="카카오톡 미사용자")
    fake.add("M2", "4000")
    fake.ignore_message_ids = True  # lists its first messages whatever was asked

    async def main(p: SolapiProvider, pmids: list[str]) -> list[DeliveryStatusResult | None]:
        return await asyncio.gather(*(p.get_delivery_status(query(m)) for m in pmids))

    with make(fake) as p:
        mine, new = asyncio.run(main(p, ["M2", "M-NEW"]))
        assert mine is not None
        assert (mine.provider_message_id, mine.status) == ("M2", "DELIVERED")
        assert new is None  # asked again on its own: not listed yet, not M1's failure
        assert "one message id per request" in caplog.text
        fake.requests.clear()
        again = asyncio.run(main(p, ["M1", "M2"]))
    assert [r.status for r in again if r is not None] == ["FAILED", "DELIVERED"]
    # one id per request from now on; the two requests run concurrently, in any order
    assert sorted(r.query["messageId"] for r in fake.requests) == ["M1", "M2"]
    assert all("messageIds" not in r.query for r in fake.requests)


def test_batches_follow_next_key_pages(fake: FakeSolapi) -> None:
    fake.add("M4", "4000")
    fake.add("M5", "3000", processed=T0)
    fake.second_page.add("M5")

    async def main(p: SolapiProvider) -> list[DeliveryStatusResult | None]:
        return await asyncio.gather(*(p.get_delivery_status(query(m)) for m in ("M4", "M5")))

    with make(fake) as p:
        four, five = asyncio.run(main(p))
    assert four is not None
    assert five is not None
    assert (four.status, five.status) == ("DELIVERED", "SENT")
    assert [r.query.get("startKey") for r in fake.requests] == [None, "NKM5"]
    assert all(r.query["messageIds"] == ["M4", "M5"] for r in fake.requests)


def test_a_batch_outage_reaches_every_check_as_its_own_error(fake: FakeSolapi) -> None:
    page = html_page(503, "Service Temporarily Unavailable")
    fake.script(Fault(status=503, body=page), Fault(status=503, body=page))

    async def main(p: SolapiProvider) -> list[Any]:
        checks = (p.get_delivery_status(query(f"M{i}")) for i in range(3))
        return await asyncio.gather(*checks, return_exceptions=True)

    with make(fake) as p:
        errors = asyncio.run(main(p))
    assert all(isinstance(e, ProviderError) for e in errors)
    assert {(e.code, e.retryable) for e in errors} == {("NETWORK_SERVICE_UNAVAILABLE", True)}
    assert len({id(e) for e in errors}) == 3
    assert len(fake.requests) == 2  # the batch and its one retry


def test_a_check_that_gives_up_leaves_its_batch_alone(fake: FakeSolapi) -> None:
    for i in (1, 2, 3):
        fake.add(f"M{i}", "4000")
    fake.script(Fault(kind="hang"))

    async def main(p: SolapiProvider) -> list[Any]:
        async def impatient() -> DeliveryStatusResult | None:
            async with asyncio.timeout(0.1):
                return await p.get_delivery_status(query("M1"))

        tasks = [
            asyncio.create_task(impatient()),
            asyncio.create_task(p.get_delivery_status(query("M2"))),
            asyncio.create_task(p.get_delivery_status(query("M3"))),
        ]
        await asyncio.wait(tasks[:1])
        fake.release()
        return await asyncio.gather(*tasks, return_exceptions=True)

    with make(fake) as p:
        gave_up, two, three = asyncio.run(main(p))
    assert isinstance(gave_up, TimeoutError)
    assert isinstance(two, DeliveryStatusResult)
    assert isinstance(three, DeliveryStatusResult)
    assert len(fake.requests) == 1


def test_a_batch_keeps_its_request_line_short(fake: FakeSolapi) -> None:
    pmids = [f"M4V{i:057d}" for i in range(200)]  # 60 characters each
    for pmid in pmids:
        fake.add(pmid, "4000")

    async def main(p: SolapiProvider) -> list[DeliveryStatusResult | None]:
        return await asyncio.gather(*(p.get_delivery_status(query(m)) for m in pmids))

    with make(fake, batch_size=500) as p:
        results = asyncio.run(main(p))
    assert all(r is not None and r.status == "DELIVERED" for r in results)
    sizes = sorted(len(r.query["messageIds"]) for r in fake.requests)
    assert sum(sizes) == 200
    assert len(sizes) == 3  # about 6,000 characters of ids per request
    assert max(sizes) * 72 < 6100


def test_batch_size_is_validated() -> None:
    with pytest.raises(InvalidRecordError, match=r"solapi\.batch_size"):
        SolapiProvider(SOLAPI_KEY, SOLAPI_SECRET, batch_size=0)
    with pytest.raises(InvalidRecordError, match=r"solapi\.batch_size"):
        SolapiProvider(SOLAPI_KEY, SOLAPI_SECRET, batch_size=501)


# --------------------------------------------------------------------------- authentication


def test_wrong_secret_is_final_and_never_shown(
    fake: FakeSolapi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kmsg_analytics")
    wrong = "wrong-secret-value-1234"
    with make(fake, secret=wrong) as p:
        err = fails(p)
        shown = [repr(p), str(vars(p)), str(err), err.message, caplog.text]
    assert (err.code, err.retryable) == ("AUTHENTICATION_FAILED", False)
    assert "SignatureDoesNotMatch" in err.message
    assert "서명이 일치하지 않습니다" in err.message
    assert not any(wrong in text for text in shown)


def test_wrong_key_is_final(fake: FakeSolapi) -> None:
    with SolapiProvider("NCSWRONGKEY", SOLAPI_SECRET, base_url=fake.url, http=FAST) as p:
        err = fails(p)
    assert (err.code, err.retryable) == ("AUTHENTICATION_FAILED", False)
    assert "InvalidAPIKey" in err.message


def test_clock_skew_is_retryable_with_advice() -> None:
    with FakeSolapi(clock_skew=timedelta(minutes=20)) as skewed, make(skewed) as p:
        err = fails(p)
    assert (err.code, err.retryable) == ("AUTHENTICATION_FAILED", True)
    assert "RequestTimeTooSkewed" in err.message
    assert "clock" in err.message


def test_duplicated_signature_is_signed_again(fake: FakeSolapi, provider: SolapiProvider) -> None:
    fake.add("M1", "4000")
    body = {"errorCode": "DuplicatedSignature", "errorMessage": "이미 사용된 서명입니다."}
    fake.script(Fault(status=403, body=json_bytes(body)))
    result = ask(provider, "M1")
    assert result is not None
    assert result.status == "DELIVERED"
    signatures = [r.headers["authorization"] for r in fake.requests]
    assert len(signatures) == 2
    assert signatures[0] != signatures[1]


# --------------------------------------------------------------------------- transient failures


def test_429_with_short_retry_after_is_retried(fake: FakeSolapi, provider: SolapiProvider) -> None:
    fake.add("M1", "3000")
    fake.script(
        Fault(
            status=429,
            headers={"Retry-After": "0"},
            body=json_bytes(
                {"errorCode": "TooManyRequests", "errorMessage": "요청이 너무 많습니다."}
            ),
        )
    )
    result = ask(provider, "M1")
    assert result is not None
    assert result.status == "SENT"
    assert len(fake.requests) == 2


def test_429_with_long_retry_after_pauses_the_endpoint(fake: FakeSolapi) -> None:
    fake.add("M1", "3000")
    fake.script(Fault(status=429, headers={"Retry-After": "30"}, body=json_bytes({})))
    with make(fake) as p:  # (no rate limit configured: the pause holds all the same)
        err = fails(p)
        assert (err.code, err.retryable) == ("RATE_LIMIT_EXCEEDED", True)
        assert "retry after 30 s" in err.message
        started = time.perf_counter()
        again = fails(p)  # refused at once, without asking the gateway
        assert time.perf_counter() - started < 0.5
    assert again.code == "RATE_LIMIT_EXCEEDED"
    assert "Retry-After" in again.message
    assert len(fake.requests) == 1


def test_5xx_pages_are_retryable_gateway_errors(fake: FakeSolapi, provider: SolapiProvider) -> None:
    fake.add("M1", "4000")
    page = html_page(503, "Service Temporarily Unavailable")
    fake.script(Fault(status=503, body=page), Fault(status=503, body=page))
    err = fails(provider)
    assert (err.code, err.retryable) == ("NETWORK_SERVICE_UNAVAILABLE", True)
    assert "not a JSON answer" in err.message
    assert len(fake.requests) == 2  # one retry (max_retries=1)
    fake.script(Fault(status=502, body=html_page(502, "Bad Gateway")))
    result = ask(provider, "M1")  # the retry gets through
    assert result is not None
    assert result.status == "DELIVERED"


def test_error_page_is_not_a_bad_request(fake: FakeSolapi, provider: SolapiProvider) -> None:
    fake.script(Fault(status=404, body=html_page(404, "Not Found")))
    err = fails(provider)
    assert (err.code, err.retryable) == ("PROVIDER_ERROR", True)


def test_json_bad_request_is_final(fake: FakeSolapi, provider: SolapiProvider) -> None:
    body = {"errorCode": "ValidationError", "errorMessage": "messageId 형식이 올바르지 않습니다."}
    fake.script(Fault(status=400, body=json_bytes(body)))
    err = fails(provider)
    assert (err.code, err.retryable) == ("INVALID_REQUEST", False)
    assert "ValidationError" in err.message


@pytest.mark.parametrize("body", [b'{"messageList": {"M1": ', b"<html>ok</html>", b"[1, 2]", b""])
def test_malformed_success_bodies_are_retryable(
    fake: FakeSolapi, provider: SolapiProvider, body: bytes
) -> None:
    fake.script(Fault(status=200, body=body, headers={"Content-Type": "application/json"}))
    err = fails(provider)
    assert (err.code, err.retryable) == ("PROVIDER_ERROR", True)
    assert "not JSON" in err.message


def test_slow_answer_times_out(fake: FakeSolapi) -> None:
    fake.add("M1", "4000")
    fake.script(Fault(kind="hang"))
    with make(fake, timeout=0.2) as p:
        started = time.perf_counter()
        err = fails(p)
        took = time.perf_counter() - started
        fake.release()
        assert (err.code, err.retryable) == ("NETWORK_TIMEOUT", True)
        assert 0.2 <= took < 1.5
        result = ask(p, "M1")  # a fresh connection works
    assert result is not None
    assert result.status == "DELIVERED"


def test_dropped_connection_is_a_retryable_network_error(fake: FakeSolapi) -> None:
    fake.add("M1", "4000")
    fake.script(Fault(kind="drop"))
    with make(fake, max_retries=0) as p:
        err = fails(p)
    assert (err.code, err.retryable) == ("NETWORK_ERROR", True)
    fake.script(Fault(kind="drop"))
    with make(fake, max_retries=1) as p:
        result = ask(p, "M1")
    assert result is not None
    assert result.status == "DELIVERED"


def test_garbage_answer_is_retryable(fake: FakeSolapi, provider: SolapiProvider) -> None:
    fake.script(Fault(kind="garbage"))
    err = fails(provider)
    assert (err.code, err.retryable) == ("PROVIDER_ERROR", True)
    assert "malformed" in err.message


def test_chunked_and_close_delimited_answers(fake: FakeSolapi, provider: SolapiProvider) -> None:
    message = fake.add("M1", "4000")
    payload = json_bytes({"startKey": None, "nextKey": None, "limit": 1,
                          "messageList": {"M1": message}})  # fmt: skip
    chunks = b"".join(
        b"%x;ext=1\r\n%s\r\n" % (len(payload[i : i + 100]), payload[i : i + 100])
        for i in range(0, len(payload), 100)
    )
    chunked = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    chunked += b"Content-Type: application/json\r\n\r\n" + chunks + b"0\r\nX-Trailer: 1\r\n\r\n"
    closed = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + payload
    for answer in (chunked, closed):
        fake.script(Fault(kind="raw", body=answer))
        result = ask(provider, "M1")
        assert result is not None
        assert result.status == "DELIVERED"


def test_connection_refused_is_retryable() -> None:
    with FakeSolapi() as gone:
        url = gone.url
    with SolapiProvider(SOLAPI_KEY, SOLAPI_SECRET, base_url=url, http=FAST) as p:
        err = fails(p)
    assert (err.code, err.retryable) == ("NETWORK_ERROR", True)
    assert "cannot connect" in err.message


def test_http_error_classification_table() -> None:
    def classify(status: int, body: bytes = b"{}") -> tuple[str, bool]:
        err = http_error(HttpResponse(status, "", {}, body), "X")
        return err.code, err.retryable

    assert classify(429) == ("RATE_LIMIT_EXCEEDED", True)
    assert classify(408) == ("NETWORK_TIMEOUT", True)
    assert classify(500) == ("PROVIDER_ERROR", True)
    assert classify(504, b"<html/>") == ("PROVIDER_ERROR", True)
    assert classify(401) == ("AUTHENTICATION_FAILED", False)
    assert classify(403) == ("AUTHENTICATION_FAILED", False)
    assert classify(422) == ("INVALID_REQUEST", False)
    assert classify(403, b"<html>blocked</html>") == ("PROVIDER_ERROR", True)
    dated = HttpResponse(429, "", {"retry-after": "Mon, 02 Nov 2026 00:00:30 GMT"}, b"")
    assert dated.retry_after(now=T0) == 30.0


# --------------------------------------------------------------------------- pool and rate limit


def test_connections_are_kept_alive_and_bounded(fake: FakeSolapi) -> None:
    for i in range(40):
        fake.add(f"M{i}", "4000")

    async def sequential(p: SolapiProvider) -> None:
        for i in range(20):
            assert await p.get_delivery_status(query(f"M{i}")) is not None

    async def concurrent(p: SolapiProvider) -> list[Any]:
        return await asyncio.gather(*(p.get_delivery_status(query(f"M{i}")) for i in range(40)))

    with make(fake) as p:
        asyncio.run(sequential(p))
    assert fake.connections == 1
    with make(fake, max_connections=4) as p:
        results = asyncio.run(concurrent(p))
    assert all(r is not None and r.status == "DELIVERED" for r in results)
    assert fake.connections <= 1 + 4


def test_rate_limit_spaces_requests(fake: FakeSolapi) -> None:
    for i in range(21):
        fake.add(f"M{i}", "4000")

    async def burst(p: SolapiProvider) -> None:
        await asyncio.gather(*(p.get_delivery_status(query(f"M{i}")) for i in range(21)))

    with make(fake, rate_limit=200.0, burst=1, batch_size=1) as p:  # one request per check
        started = time.perf_counter()
        asyncio.run(burst(p))
        took = time.perf_counter() - started
    arrivals = sorted(r.at for r in fake.requests)
    assert took >= 0.1  # 20 intervals of 5 ms
    assert arrivals[-1] - arrivals[0] >= 0.09


def test_rate_limiter_is_exact() -> None:
    now = [0.0]
    bucket = RateLimiter(100.0, burst=10, clock=lambda: now[0])
    taken: list[float] = []
    for i in range(2000):  # callers arrive at 1,000/s, ten times the rate, served in turn
        now[0] = max(i * 0.001, taken[-1] if taken else 0.0)
        wait = bucket.try_take()
        if wait > 0.0:
            now[0] += wait + 1e-9
            assert bucket.try_take() == 0.0
        taken.append(now[0])
    j = 0
    for i, t in enumerate(taken):  # any one-second window holds at most burst + rate
        while taken[j] <= t - 1.0 + 1e-9:
            j += 1
        assert i - j + 1 <= 10 + 100
    assert taken[-1] == pytest.approx((2000 - 10) / 100)
    bucket.pause_until(100.0)
    now[0] = 50.0
    assert bucket.try_take() == pytest.approx(50.0)
    assert bucket.paused_for() == pytest.approx(50.0)


def test_rate_limiter_waiters_are_served_in_order() -> None:
    bucket = RateLimiter(200.0, burst=1)
    order: list[int] = []

    async def take(i: int) -> None:
        await bucket.acquire()
        order.append(i)

    async def main() -> float:
        started = time.perf_counter()
        tasks = [asyncio.create_task(take(i)) for i in range(12)]
        await asyncio.sleep(0)
        tasks[5].cancel()  # a waiter that gives up hands its turn on
        await asyncio.gather(*tasks, return_exceptions=True)
        return time.perf_counter() - started

    took = asyncio.run(main())
    assert order == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert took >= 10 / 200 - 0.005


def test_rate_limiter_hands_out_groups_and_keeps_the_bound() -> None:
    bucket = RateLimiter(1000.0, burst=10)  # wakes for 2 tokens at a time
    sent: list[float] = []
    ran = []

    async def main() -> None:
        async def one(i: int) -> None:
            await bucket.acquire(lambda: sent.append(time.monotonic()))
            ran.append(i)

        await asyncio.gather(*(one(i) for i in range(300)))

    asyncio.run(main())
    assert ran == list(range(300))  # first come, first served
    assert sent == sorted(sent)
    assert sent[-1] - sent[0] >= (300 - 10) / 1000 - 1e-6
    j = 0
    for i, t in enumerate(sent):  # any 100 ms holds at most burst + rate * 0.1
        while sent[j] <= t - 0.1:
            j += 1
        assert i - j + 1 <= 10 + 100


def test_rate_limiter_then_failure_reaches_its_caller_only() -> None:
    bucket = RateLimiter(500.0, burst=1)

    def broken() -> None:
        raise ConnectionResetError("gone")

    async def main() -> list[Any]:
        takes = (bucket.acquire(), bucket.acquire(broken), bucket.acquire())
        return list(await asyncio.gather(*takes, return_exceptions=True))

    assert [type(r) for r in asyncio.run(main())] == [type(None), ConnectionResetError, type(None)]


class _Wire:
    """A transport that keeps what is written (for feeding a connection by hand)."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("answer", "body", "keep"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello", True),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\nX-T: 1\r\n\r\n",
            b"hello",
            True,
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", b"ok", False),
        (b"HTTP/1.0 204 No Content\r\n\r\n", b"", False),
    ],
)
def test_answers_arriving_a_byte_at_a_time(answer: bytes, body: bytes, keep: bool) -> None:
    async def main() -> tuple[Any, bool]:
        conn = _Conn()
        wire = _Wire()
        conn.connection_made(wire)  # type: ignore[arg-type]
        waiter: asyncio.Future[HttpResponse] = asyncio.get_running_loop().create_future()
        conn.expect(waiter, head_request=False)
        conn.send(b"GET / HTTP/1.1\r\n\r\n", 10.0)
        for i in range(len(answer)):
            assert not waiter.done()
            conn.data_received(answer[i : i + 1])
        return waiter.result(), conn.keep

    response, kept = asyncio.run(main())
    assert (response.status, response.body, kept) == (204 if not body else 200, body, keep)


def test_answer_until_close_and_broken_framing() -> None:
    async def main() -> tuple[Any, Any, Any]:
        loop = asyncio.get_running_loop()
        answers: list[Any] = []
        for data in (b"HTTP/1.0 200 OK\r\n\r\n{}", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"):
            conn = _Conn()
            conn.connection_made(_Wire())  # type: ignore[arg-type]
            waiter: asyncio.Future[HttpResponse] = loop.create_future()
            conn.expect(waiter, head_request=False)
            conn.send(b"GET / HTTP/1.1\r\n\r\n", 10.0)
            conn.data_received(data)
            conn.eof_received()
            conn.connection_lost(None)
            answers.append(waiter.exception() or waiter.result())
        conn = _Conn()
        conn.connection_made(_Wire())  # type: ignore[arg-type]
        waiter = loop.create_future()
        conn.expect(waiter, head_request=False)
        conn.send(b"GET / HTTP/1.1\r\n\r\n", 10.0)
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npart")
        conn.connection_lost(ConnectionResetError())
        answers.append(waiter.exception() or waiter.result())
        return answers[0], answers[1], answers[2]

    whole, broken, cut = asyncio.run(main())
    assert (whole.status, whole.body) == (200, b"{}")
    assert type(broken).__name__ == "_Malformed"
    assert type(cut).__name__ == "_Lost"
    assert cut.received


def test_client_refuses_header_injection_and_bad_urls(fake: FakeSolapi) -> None:
    client = HttpClient(fake.url, gateway="X", settings=FAST)
    with pytest.raises(ProviderError) as info:
        asyncio.run(client.request("GET", "/", headers={"X-A": "1\r\nX-B: 2"}))
    assert info.value.code == "INVALID_REQUEST"
    client.close()
    with pytest.raises(InvalidRecordError):
        HttpClient("ftp://example.com", gateway="X")
    with pytest.raises(InvalidRecordError):
        HttpClient("https://user:pw@example.com", gateway="X")


def test_close_from_another_thread_while_a_loop_runs(fake: FakeSolapi) -> None:
    fake.add("M1", "4000")
    provider = make(fake)

    async def main() -> None:
        assert await provider.get_delivery_status(query("M1")) is not None
        await asyncio.to_thread(provider.close)  # closes the pool on this loop, safely
        assert await provider.get_delivery_status(query("M1")) is not None  # reopens

    asyncio.run(main())
    provider.close()
    assert fake.connections == 2


# --------------------------------------------------------------------------- check


def test_check_reports_ok_and_refusals(fake: FakeSolapi, provider: SolapiProvider) -> None:
    ok = asyncio.run(provider.check())
    assert ok.ok
    assert ok.code is None
    assert "message:read" in ok.message
    with make(fake, secret="nope-nope-nope") as bad:
        refused = asyncio.run(bad.check())
    assert not refused.ok
    assert refused.code == "AUTHENTICATION_FAILED"
    assert "FAILED" in refused.line()
    assert "nope-nope-nope" not in refused.line()


# --------------------------------------------------------------------------- config


def test_config_from_toml_env_and_kwargs(tmp_path: Path) -> None:
    path = tmp_path / "gateways.toml"
    path.write_text(
        '[polling]\nconcurrency = 8\n\n[solapi]\napi_key = "FILEKEY"\n'
        'api_secret_env = "MY_SOLAPI_SECRET"\nrate_limit = 20\ntimeout = 3\nbatch_size = 40\n'
        "\n[iwinv]\nenabled = false\n",
        encoding="utf-8",
    )
    path.chmod(0o600)
    env = {"MY_SOLAPI_SECRET": "env-secret-xyz", "SOLAPI_API_KEY": "ENVKEY", "IWINV_API_KEY": "k"}
    cfg = load_gateways_config(path, environ=env)
    assert cfg.configured == ("solapi",)  # [iwinv] enabled = false wins over the environment
    assert cfg.polling.concurrency == 8
    assert cfg.warnings == ()
    assert cfg.solapi is not None
    assert cfg.solapi.api_key.reveal() == "FILEKEY"  # the file before the environment
    assert cfg.solapi.api_secret.reveal() == "env-secret-xyz"
    assert (cfg.solapi.http.rate_limit, cfg.solapi.http.timeout) == (20, 3)
    assert "env-secret-xyz" not in repr(cfg)
    assert "FILEKEY" not in repr(cfg)
    given = load_gateways_config(path, environ=env, solapi={"api_key": "ARGKEY"})
    assert given.solapi is not None
    assert given.solapi.api_key.reveal() == "ARGKEY"
    providers = cfg.build_providers()
    assert [p.id for p in providers] == ["solapi"]
    assert cfg.solapi.batch_size == 40
    assert isinstance(providers[0], SolapiProvider)
    assert providers[0].batch_size == 40
    for p in providers:
        p.close()


def test_config_warns_about_readable_secrets_and_rejects_typos(tmp_path: Path) -> None:
    path = tmp_path / "gateways.toml"
    path.write_text('[solapi]\napi_key = "K"\napi_secret = "S3CRET-VALUE"\n', encoding="utf-8")
    os.chmod(path, 0o644)
    cfg = load_gateways_config(path, environ={})
    assert any("chmod 600" in w for w in cfg.warnings)
    assert not any("S3CRET-VALUE" in w for w in cfg.warnings)
    path.write_text('[solapi]\napi_key = "K"\napi_secert = "S"\n', encoding="utf-8")
    with pytest.raises(InvalidRecordError, match="api_secert"):
        load_gateways_config(path, environ={})
    path.write_text('[solapi]\napi_key = "K"\napi_secret = "S"\nrate_limit = -1\n')
    with pytest.raises(InvalidRecordError, match=r"solapi\.rate_limit"):
        load_gateways_config(path, environ={})
    path.write_text("[solapi\n")
    with pytest.raises(Exception, match="not valid TOML"):
        load_gateways_config(path, environ={})


def test_secret_hides_itself() -> None:
    s = Secret("abc-123-secret")
    assert "abc-123-secret" not in f"{s!r} {s} {s:>20} {[s]}"
    with pytest.raises(TypeError):
        pickle.dumps(s)


# --------------------------------------------------------------------------- capture


def test_capture_single_and_send_many_answers() -> None:
    single = {
        "groupId": "G4V2026",
        "messageId": "M4V2026AAA",
        "accountId": "1",
        "statusCode": "2000",
        "statusMessage": "정상 접수(이통사로 접수 예정) ",
        "to": "01012345678",
        "from": "0212345678",
        "type": "SMS",
        "country": "82",
    }
    ctx, res = capture_send(
        "solapi", single, message_id="o1", to="010-1234-5678", type="SMS", requested_at=T0
    )
    assert (res.provider_message_id, res.provider_id, ctx.timestamp) == ("M4V2026AAA", "solapi", T0)
    many = {
        "groupInfo": {"groupId": "G1", "count": {"total": 2}},
        "failedMessageList": [
            {"to": "01099998888", "statusCode": "1062", "statusMessage": "발신번호 미등록"}
        ],
        "messageList": [
            {"messageId": "MA", "statusCode": "2000", "customFields": {"order": "1"}},
            {"messageId": "MB", "statusCode": "2000", "customFields": {"order": "2"}},
        ],
    }
    _, res = capture_send(
        "solapi", many, message_id="o2", to="01012345678", type="LMS", custom_fields={"order": 2}
    )
    assert res.provider_message_id == "MB"
    with pytest.raises(InvalidRecordError, match="custom_fields"):
        capture_send("solapi", many, message_id="o3", to="01012345678", type="SMS")
    with pytest.raises(SendRejectedError) as info:
        capture_send("solapi", many, message_id="o4", to="010-9999-8888", type="SMS")
    assert (info.value.status_code, info.value.status_message) == ("1062", "발신번호 미등록")
    refused = {**single, "statusCode": "1030", "statusMessage": "잔액 부족"}
    with pytest.raises(SendRejectedError, match="1030 잔액 부족"):
        capture_send("solapi", refused, message_id="o5", to="01012345678", type="SMS")
    with pytest.raises(InvalidRecordError):
        capture_send("aligo", single, message_id="o6", to="01012345678", type="SMS")


def test_capture_alimtalk_failover_warning_only_without_sender() -> None:
    answer = '{"messageId": "MK1", "statusCode": "2000"}'
    fo = {"enabled": True, "fallback_content": "대체 문자"}
    _, res = capture_send(
        "solapi", answer, message_id="a1", to="01012345678", type="ALIMTALK", failover=fo
    )
    assert [w.code for w in res.warnings] == ["FAILOVER_PARTIAL_PROVIDER"]
    _, res = capture_send(
        "solapi",
        answer,
        message_id="a2",
        to="01012345678",
        type="ALIMTALK",
        failover=fo,
        from_="0212345678",
    )
    assert res.warnings == ()


# --------------------------------------------------------------------------- end to end


def test_runner_polls_a_lake_through_solapi(fake: FakeSolapi, tmp_path: Path) -> None:
    clock = SimulatedClock(T0)
    store = ParquetTrackingStore(tmp_path / "lake", hash_key=HASH_KEY)
    provider = make(fake)
    svc = DeliveryTrackingService(
        [provider], store=store, clock=clock, polling=PollingConfig(concurrency=4, store_raw=True)
    )
    sends = {
        "o1": ("M1", "SMS"),
        "o2": ("M2", "ALIMTALK"),
        "o3": ("M3", "SMS"),
        "o4": ("M4", "LMS"),
    }
    try:
        for mid, (pmid, kind) in sends.items():
            answer = {"messageId": pmid, "statusCode": "2000"}
            svc.record_send(
                *capture_send(
                    "solapi", answer, message_id=mid, to="010-1234-5678", type=kind, requested_at=T0
                )
            )
        fake.add(
            "M1", "4000", processed=T0 + timedelta(seconds=1), received=T0 + timedelta(seconds=2)
        )
        fake.add(
            "M2", "3104", reason="카카오톡 미사용자", type="ATA", reported=T0 + timedelta(seconds=5)
        )
        fake.add("M4", "3000", processed=T0 + timedelta(seconds=1))
        clock.advance(60)
        first = svc.run_once()
        assert (first.checked, first.errors_by_code) == (4, {})
        m1, m2, m3, m4 = (svc.get_record(m) for m in sends)
        assert m1 is not None
        assert m1.status == "DELIVERED"
        assert m1.delivered_at == T0 + timedelta(seconds=2)
        assert m1.raw is not None
        assert "to" not in m1.raw
        assert "text" not in m1.raw
        assert m2 is not None
        assert (m2.status, m2.provider_status_code) == ("FAILED", "3104")
        assert m2.provider_status_message == "카카오톡 미사용자"
        assert m2.failed_at == T0 + timedelta(seconds=5)
        assert m3 is not None
        assert (m3.status, m3.attempt_count) == ("SENT", 1)
        assert m4 is not None
        assert m4.status == "SENT"
        assert m4.sent_at == T0 + timedelta(seconds=1)
        fake.add("M3", "3043", reported=T0 + timedelta(minutes=3))
        fake.add("M4", "4000", received=T0 + timedelta(minutes=2))
        clock.advance(3600)
        second = svc.run_once()
        assert second.checked == 2  # terminal records are not asked again
        final = {m: svc.get_record(m) for m in sends}
        assert {m: r.status for m, r in final.items() if r is not None} == {
            "o1": "DELIVERED",
            "o2": "FAILED",
            "o3": "FAILED",
            "o4": "DELIVERED",
        }
        assert final["o3"] is not None
        assert final["o3"].provider_status_message == "단말기 Power off"
    finally:
        provider.close()
        svc.close()
    for path in (tmp_path / "lake").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SOLAPI_SECRET.encode() not in data
            assert SOLAPI_KEY.encode() not in data


def test_runner_retries_gateway_outages_and_finalises_refusals(
    fake: FakeSolapi, tmp_path: Path
) -> None:
    clock = SimulatedClock(T0)
    store = ParquetTrackingStore(tmp_path / "lake", hash_key=HASH_KEY)
    good, bad = make(fake), make(fake, secret="revoked-secret-000")
    svc = DeliveryTrackingService([good], store=store, clock=clock)
    try:
        answer = {"messageId": "M1", "statusCode": "2000"}
        svc.record_send(
            *capture_send(
                "solapi", answer, message_id="o1", to="01012345678", type="SMS", requested_at=T0
            )
        )
        fake.add("M1", "4000")
        page = html_page(503, "Service Unavailable")
        fake.script(Fault(status=503, body=page), Fault(status=503, body=page))
        clock.advance(60)
        report = svc.run_once()
        record = svc.get_record("o1")
        assert report.errors_by_code == {"NETWORK_SERVICE_UNAVAILABLE": 1}
        assert record is not None
        assert record.status == "SENT"
        assert record.last_error is not None
        assert record.last_error.code == "NETWORK_SERVICE_UNAVAILABLE"
        svc.providers["solapi"] = bad  # the key was revoked meanwhile
        clock.advance(3600)
        svc.run_once()
        record = svc.get_record("o1")
        assert record is not None
        assert record.status == "UNKNOWN"
        assert record.last_error is not None
        assert record.last_error.code == "AUTHENTICATION_FAILED"
        assert "revoked-secret-000" not in record.last_error.message
    finally:
        good.close()
        bad.close()
        svc.close()
