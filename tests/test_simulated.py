"""SimulatedProvider and SimulatedClock: seeded, realistic, driven by the service clock."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kmsg_analytics import (
    DeliveryTrackingService,
    InMemoryTrackingStore,
    InvalidRecordError,
    ParquetTrackingStore,
)
from kmsg_analytics._providers import (
    ApiFailoverConfig,
    DeliveryStatusQuery,
    DeliveryStatusResult,
    PollingConfig,
    ProviderError,
)
from kmsg_analytics._runner import poll_until_stopped
from kmsg_analytics._simulated import SimulatedClock, SimulatedProvider, demo_sends

Store = InMemoryTrackingStore | ParquetTrackingStore
HASH_KEY = "test-key-123"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
SOLAPI_ALIMTALK_CODES = {"3104", "3107", "3103", "3105", "3106", "3108"}


@pytest.fixture
def store(local_store: Store) -> Store:
    """Each test runs on the in-memory store and on a lake (``local_store``, conftest)."""
    return local_store


def ask(
    gw: SimulatedProvider, pmid: str, at: datetime, type: str = "SMS"
) -> DeliveryStatusResult | None:
    return asyncio.run(
        gw.get_delivery_status(DeliveryStatusQuery(pmid, type, None, T0, checked_at=at))
    )


def quiet(id: str = "solapi", **kw: object) -> SimulatedProvider:
    """A simulator whose lookups never fail (for lifecycle tests)."""
    return SimulatedProvider(id, error_rate=0.0, timeout_rate=0.0, **kw)  # type: ignore[arg-type]


def final_answer(gw: SimulatedProvider, pmid: str, type: str) -> DeliveryStatusResult | None:
    return gw.answer(DeliveryStatusQuery(pmid, type, None, T0, checked_at=T0 + timedelta(days=2)))


# --------------------------------------------------------------------------- clock


def test_simulated_clock_moves_only_forward() -> None:
    clock = SimulatedClock(T0)
    clock.advance(30)
    clock.advance(timedelta(minutes=1))
    assert clock() == T0 + timedelta(seconds=90)
    clock.advance_to(T0)  # earlier: nothing happens
    assert clock() == T0 + timedelta(seconds=90)
    clock.advance_to("2026-11-02T10:00:00Z")
    assert clock() == datetime(2026, 11, 2, 10, tzinfo=UTC)
    with pytest.raises(InvalidRecordError, match="never goes back"):
        clock.advance(-1)
    assert "2026-11-02T10:00:00" in repr(clock)


# --------------------------------------------------------------------------- one message


def test_solapi_lifecycle_not_found_pending_sent_delivered() -> None:
    gw = quiet(never_resolve_rate=0.0, failure_rates=0.0, tail_rate=0.0)
    fate = gw.send(
        {"message_id": "m1", "timestamp": T0, "options": {"type": "SMS", "to": "010-1234-5678"}}
    )
    f = gw.fate(fate.provider_message_id or "")
    assert f is not None
    assert f.submitted_at is not None
    assert f.final_at is not None
    assert T0 < f.accepted_at < f.submitted_at < f.final_at
    pmid = f.provider_message_id
    assert ask(gw, pmid, T0) is None  # not found yet, as SOLAPI's empty messageList
    pending = ask(gw, pmid, f.accepted_at)
    assert pending is not None
    assert (pending.status, pending.status_code) == ("PENDING", "2000")
    sent = ask(gw, pmid, f.submitted_at)
    assert sent is not None
    assert (sent.status, sent.status_code, sent.sent_at) == (
        "SENT",
        "3000",
        f.submitted_at,
    )
    done = ask(gw, pmid, f.final_at)
    assert done is not None
    assert (done.status, done.status_code, done.status_message) == (
        "DELIVERED",
        "4000",
        "발송 처리 완료",
    )
    assert done.delivered_at == f.final_at
    assert done.failed_at is None
    assert done.raw["messageId"] == pmid
    assert "to" not in done.raw


def test_solapi_message_ids_look_like_solapi_ones() -> None:
    result = SimulatedProvider("solapi", seed=4).send(
        {"message_id": "m1", "timestamp": T0, "options": {"type": "SMS", "to": "010-1234-5678"}}
    )
    pmid = result.provider_message_id or ""
    assert len(pmid) == 32
    assert pmid.startswith("M4V20261102180000")
    assert (result.provider_id, result.type, result.to) == ("solapi", "SMS", "010-1234-5678")


def test_iwinv_alimtalk_and_sms_answers() -> None:
    gw = quiet("iwinv", never_resolve_rate=0.0, failure_rates=0.0, tail_rate=0.0)
    for type_, pending, done in (
        ("ALIMTALK", (None, None), ("OK", "성공")),
        ("SMS", ("01", "처리중"), ("06", "전송 성공")),
    ):
        res = gw.send(
            {
                "message_id": f"m-{type_}",
                "timestamp": T0,
                "options": {"type": type_, "to": "01012345678"},
            }
        )
        pmid = res.provider_message_id or ""
        assert pmid.isdigit()
        f = gw.fate(pmid)
        assert f is not None
        assert f.final_at is not None
        mid = ask(gw, pmid, f.accepted_at, type_)
        assert mid is not None
        assert mid.status == "PENDING"
        assert (mid.status_code, mid.status_message) == pending
        end = ask(gw, pmid, f.final_at, type_)
        assert end is not None
        assert end.status == "DELIVERED"
        assert (end.status_code, end.status_message) == done
        assert end.sent_at == end.delivered_at == f.final_at


def test_iwinv_refuses_types_it_cannot_look_up() -> None:
    gw = quiet("iwinv")
    with pytest.raises(ProviderError) as info:
        gw.answer(DeliveryStatusQuery("123", "RCS_SMS", None, T0, checked_at=T0))
    assert info.value.code == "INVALID_REQUEST"
    assert not info.value.retryable


def test_failover_warnings_of_alimtalk_sends() -> None:
    ctx = {
        "message_id": "m1",
        "timestamp": T0,
        "options": {
            "type": "ALIMTALK",
            "to": "01012345678",
            "failover": {"enabled": True, "fallback_content": "x"},
        },
    }
    codes = {
        support: [
            w.code for w in SimulatedProvider("solapi", failover_support=support).send(ctx).warnings
        ]
        for support in ("none", "partial", "native")
    }
    assert codes == {
        "none": ["FAILOVER_UNSUPPORTED_PROVIDER"],
        "partial": ["FAILOVER_PARTIAL_PROVIDER"],
        "native": [],
    }


def test_time_comes_from_the_query_else_from_the_simulators_clock() -> None:
    clock = SimulatedClock(T0)
    gw = quiet(clock=clock, never_resolve_rate=0.0, failure_rates=0.0, tail_rate=0.0)
    res = gw.send(
        {"message_id": "m1", "timestamp": T0, "options": {"type": "SMS", "to": "01012345678"}}
    )
    query = DeliveryStatusQuery(res.provider_message_id or "", "SMS", None, T0)
    assert gw.answer(query) is None
    clock.advance(3600)
    answer = gw.answer(query)
    assert answer is not None
    assert answer.status == "DELIVERED"
    early = DeliveryStatusQuery(res.provider_message_id or "", "SMS", None, T0, checked_at=T0)
    assert gw.answer(early) is None  # checked_at wins over the clock


def test_unknown_messages_are_adopted_or_never_found() -> None:
    adopt, strict = quiet(failure_rates=0.0, never_resolve_rate=0.0), quiet(adopt_unknown=False)
    later = T0 + timedelta(days=1)
    assert final_answer(adopt, "FROM-ANOTHER-PROCESS", "SMS") is not None
    assert adopt.fate("FROM-ANOTHER-PROCESS") is not None
    assert ask(strict, "FROM-ANOTHER-PROCESS", later) is None
    assert strict.lookups("FROM-ANOTHER-PROCESS") == 1


def test_latency_is_spent_asynchronously() -> None:
    gw = quiet(latency_ms=20)

    async def many() -> float:
        started = time.perf_counter()
        q = DeliveryStatusQuery("X", "SMS", None, T0, checked_at=T0)
        await asyncio.gather(*(gw.get_delivery_status(q) for _ in range(10)))
        return time.perf_counter() - started

    assert 0.02 <= asyncio.run(many()) < 0.15  # ten lookups overlap


# --------------------------------------------------------------------------- many messages


def outcomes(
    seed: int, n: int = 3000, type_: str = "SMS", **kw: object
) -> list[DeliveryStatusResult | None]:
    gw = SimulatedProvider("solapi", seed=seed, error_rate=0.0, timeout_rate=0.0, **kw)  # type: ignore[arg-type]
    return [final_answer(gw, f"P{i}", type_) for i in range(n)]


def test_same_seed_same_story_other_seed_other_story() -> None:
    a, b, c = outcomes(1, 300), outcomes(1, 300), outcomes(2, 300)
    key = [(r.status, r.status_code, r.delivered_at) if r else None for r in a]
    assert key == [(r.status, r.status_code, r.delivered_at) if r else None for r in b]
    assert key != [(r.status, r.status_code, r.delivered_at) if r else None for r in c]


def test_answers_do_not_depend_on_the_order_messages_are_asked_in() -> None:
    one, two = quiet(seed=9), quiet(seed=9)
    ids = [f"P{i}" for i in range(50)]
    forward = {i: final_answer(one, i, "LMS") for i in ids}
    backward = {i: final_answer(two, i, "LMS") for i in reversed(ids)}
    assert forward == backward


def test_sms_outcomes_are_realistic() -> None:
    results = outcomes(3)
    statuses = Counter(r.status if r else None for r in results)
    assert 0.93 <= statuses["DELIVERED"] / 3000 <= 0.99
    assert 0.015 <= statuses["FAILED"] / 3000 <= 0.05
    assert 0.003 <= statuses["SENT"] / 3000 <= 0.02  # never resolved: still with the carrier
    codes = Counter(r.status_code for r in results if r and r.status == "FAILED")
    assert codes.most_common(1)[0][0] in {"3040", "3032", "3043"}
    assert len(codes) >= 6
    assert all(r.status_message for r in results if r and r.status == "FAILED")


def test_alimtalk_failures_are_mostly_non_kakao_users() -> None:
    failed = [r for r in outcomes(4, type_="ALIMTALK") if r and r.status == "FAILED"]
    codes = Counter(r.status_code for r in failed)
    assert set(codes) <= SOLAPI_ALIMTALK_CODES
    assert codes.most_common(1)[0] == (
        "3104",
        codes["3104"],
    )
    assert all(r.status_message == "카카오톡 미사용자" for r in failed if r.status_code == "3104")
    assert 0.06 <= len(failed) / 3000 <= 0.14


def test_delivery_delays_have_a_long_tail() -> None:
    gw = SimulatedProvider("solapi", seed=5, never_resolve_rate=0.0)
    delays = []
    for i in range(2000):
        res = gw.send(
            {
                "message_id": f"m{i}",
                "timestamp": T0,
                "options": {"type": "SMS", "to": "01012345678"},
            }
        )
        fate = gw.fate(res.provider_message_id or "")
        assert fate is not None
        assert fate.final_at is not None
        delays.append((fate.final_at - T0).total_seconds())
    delays.sort()
    p50, p99 = delays[1000], delays[1980]
    assert 2 <= p50 <= 15
    assert p99 > 600
    assert delays[-1] < 7 * 3600
    assert statistics.mean(delays) > 3 * p50


def test_some_lookups_fail_with_retryable_gateway_errors_and_timeouts() -> None:
    gw = SimulatedProvider("solapi", seed=6)
    errors: Counter[str] = Counter()
    retryable: list[bool] = []
    for i in range(4000):
        try:
            gw.answer(
                DeliveryStatusQuery(f"P{i}", "SMS", None, T0, checked_at=T0 + timedelta(hours=1))
            )
        except ProviderError as err:
            errors[err.code] += 1
            retryable.append(err.retryable)
    assert all(retryable)
    assert 0.015 <= sum(errors.values()) / 4000 <= 0.05
    assert errors["NETWORK_TIMEOUT"] > 0
    assert errors["PROVIDER_ERROR"] > 0
    assert set(errors) <= {"NETWORK_TIMEOUT", "PROVIDER_ERROR", "NETWORK_ERROR", "UNKNOWN_ERROR"}


def test_bad_settings_are_refused() -> None:
    for kwargs in (
        {"error_rate": 2},
        {"profile": "aligo"},
        {"latency_ms": -1},
        {"failure_rates": -0.1},
        {"failover_support": "maybe"},
    ):
        with pytest.raises(InvalidRecordError):
            SimulatedProvider("solapi", **kwargs)
    with pytest.raises(InvalidRecordError):
        SimulatedProvider("")
    with pytest.raises(InvalidRecordError):
        demo_sends([], 3)


# --------------------------------------------------------------------------- with the runner


def test_a_demo_batch_polls_to_completion_on_simulated_time(store: Store) -> None:
    clock = SimulatedClock(T0)
    solapi = SimulatedProvider("solapi", seed=11, clock=clock)
    iwinv = SimulatedProvider("iwinv", seed=11, clock=clock)
    failover = ApiFailoverConfig(solapi.send_fallback)
    svc = DeliveryTrackingService(
        [solapi, iwinv],
        store=store,
        clock=clock,
        polling=PollingConfig(batch_size=500),
        api_failover=failover,
    )
    with svc:
        sends = demo_sends(
            [solapi, iwinv], 400, start=T0, every=timedelta(milliseconds=100), seed=11
        )
        assert svc.record_sends(sends) == 400
        started = time.monotonic()
        total = poll_until_stopped(svc, interval=60, until_idle=True, out=None)
        assert time.monotonic() - started < 60  # a simulated day in seconds, no sleeping
        counts = dict(svc.count_by(group_by="status").collect().iter_rows())
        assert sum(counts.values()) == 400
        assert "SENT" not in counts
        assert "PENDING" not in counts
        assert counts["DELIVERED"] >= 340
        assert counts.get("FAILED", 0) >= 10
        assert total.failover.get("sent", 0) >= 1  # non-KakaoTalk users got their SMS
        assert (
            total.errors_by_code.get("NETWORK_TIMEOUT", 0)
            + total.errors_by_code.get("PROVIDER_ERROR", 0)
            > 0
        )
        timeouts = svc.count_records(status="UNKNOWN")
        assert timeouts == svc.list_records(status="UNKNOWN", limit=1000).collect().height
        assert clock() - T0 > timedelta(hours=24) or timeouts == 0
        assert solapi.queries + iwinv.queries >= 400


def test_the_simulator_answers_from_its_own_state_never_the_lake(tmp_path: Path) -> None:
    clock = SimulatedClock(T0)
    gw = quiet(seed=12, clock=clock)
    store = ParquetTrackingStore(tmp_path / "lake", hash_key=HASH_KEY)
    with DeliveryTrackingService([gw], store=store, clock=clock) as svc:
        pairs = demo_sends([gw], 5, start=T0, seed=12)
        svc.record_sends(pairs)
    assert not any(isinstance(v, Store) for v in vars(gw).values())
    clock.advance(86_000)
    for _ctx, res in pairs:  # the lake is closed; the simulator still knows every message
        pmid = res.provider_message_id or ""
        answer = gw.answer(DeliveryStatusQuery(pmid, res.type, None, T0))
        assert answer is not None
        assert answer.provider_message_id == pmid
