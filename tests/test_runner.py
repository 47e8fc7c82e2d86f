"""The polling runner: every rule of the spec's "Polling" section, on both stores.

Time comes from a :class:`SimulatedClock`; nothing sleeps. Tests of the background
thread wait on ``threading.Event`` with short timeouts. The two-process and kill tests
run ``tests/_runner_worker.py`` in subprocesses.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from kmsg_analytics import (
    DeliveryTrackingService,
    InMemoryTrackingStore,
    InvalidRecordError,
    ParquetTrackingStore,
    RecordFilter,
    TrackingRecord,
)
from kmsg_analytics._providers import (
    DeliveryStatusQuery,
    DeliveryStatusResult,
    PollingConfig,
    ProviderError,
    RunReport,
    coerce_polling,
)
from kmsg_analytics._runner import RUNNER_LOCK_NAME, backoff_delay, poll_until_stopped
from kmsg_analytics._simulated import SimulatedClock

Store = InMemoryTrackingStore | ParquetTrackingStore
HASH_KEY = "test-key-123"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
WORKER = Path(__file__).with_name("_runner_worker.py")
WAIT = 10.0  # seconds an Event may take before a test fails (never reached when all is well)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def store(local_store: Store) -> Store:
    """Each test runs on the in-memory store and on a lake (``local_store``, conftest)."""
    return local_store


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(T0)


class Scripted:
    """A plain provider answering per provider message id (an answer, None, an exception,
    or a function of the query); every query is kept."""

    def __init__(
        self, id: str = "solapi", default: Any = None, answers: dict[str, Any] | None = None
    ) -> None:
        self.id = id
        self.default = default
        self.answers: dict[str, Any] = dict(answers or {})
        self.calls: list[DeliveryStatusQuery] = []
        self._lock = threading.Lock()

    def _answer(self, query: DeliveryStatusQuery) -> Any:
        with self._lock:
            self.calls.append(query)
        answer = self.answers.get(query.provider_message_id, self.default)
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer(query)
        return answer

    def get_delivery_status(self, query: DeliveryStatusQuery) -> Any:
        return self._answer(query)


class AsyncScripted(Scripted):
    """The same, with an ``async`` method."""

    async def get_delivery_status(self, query: DeliveryStatusQuery) -> Any:
        await asyncio.sleep(0)
        return self._answer(query)


class NoStatus:
    """A provider without ``get_delivery_status``."""

    def __init__(self, id: str = "aligo") -> None:
        self.id = id


def result(status: str, pmid: str = "P-m1", **kw: Any) -> DeliveryStatusResult:
    return DeliveryStatusResult("solapi", pmid, status, **kw)


def service(
    store: Store, clock: SimulatedClock, *providers: Any, **polling: Any
) -> DeliveryTrackingService:
    return DeliveryTrackingService(
        list(providers), store=store, clock=clock, polling=PollingConfig(**polling)
    )


def send(
    svc: DeliveryTrackingService,
    mid: str = "m1",
    *,
    pid: str = "solapi",
    pmid: str | None = None,
    type: str = "SMS",
    at: datetime = T0,
    scheduled: datetime | None = None,
) -> TrackingRecord:
    context = {
        "message_id": mid,
        "timestamp": at,
        "options": {"type": type, "to": "010-1234-5678", "scheduled_at": scheduled},
    }
    res = {
        "message_id": mid,
        "provider_id": pid,
        "provider_message_id": f"P-{mid}" if pmid is None else pmid,
        "type": type,
        "to": "010-1234-5678",
    }
    return svc.record_send(context, res)


def rec(svc: DeliveryTrackingService, mid: str = "m1") -> TrackingRecord:
    found = svc.get_record(mid)
    assert found is not None
    return found


def first_check(svc: DeliveryTrackingService, clock: SimulatedClock) -> TrackingRecord:
    """Record a send of ``m1`` and run its first check (60 s later); the record after it."""
    send(svc)
    clock.advance(60)
    svc.run_once()
    return rec(svc)


def wait_for(event: threading.Event, what: str) -> None:
    assert event.wait(WAIT), f"timed out waiting for {what}"


# --------------------------------------------------------------------------- the rules


def test_rule1_empty_provider_message_id_becomes_unknown(
    store: Store, clock: SimulatedClock
) -> None:
    provider = Scripted(default=result("DELIVERED"))
    with service(store, clock, provider) as svc:
        send(svc)
        store.patch("m1", {"provider_message_id": "  "})
        clock.advance(60)
        report = svc.run_once()
        r = rec(svc)
        assert (r.status, r.last_error and r.last_error.code) == (
            "UNKNOWN",
            "MISSING_PROVIDER_MESSAGE_ID",
        )
        assert r.attempt_count == 1
        assert r.last_checked_at == clock()
        assert r.next_check_at == clock()
        assert provider.calls == []
        assert report.errors_by_code == {"MISSING_PROVIDER_MESSAGE_ID": 1}
        assert report.became_terminal == 1
        clock.advance(3600)
        assert svc.run_once().due == 0


def test_rule2_scheduled_message_is_not_checked_before_its_grace_ends(
    store: Store, clock: SimulatedClock
) -> None:
    provider = Scripted(default=result("DELIVERED"))
    scheduled = T0 + timedelta(hours=1)
    with service(store, clock, provider) as svc:
        sent = send(svc, scheduled=scheduled)
        assert sent.status == "PENDING"
        assert sent.next_check_at == scheduled + timedelta(minutes=2)
        store.patch("m1", {"next_check_at": T0, "last_error": None})
        clock.advance(30)
        report = svc.run_once()
        r = rec(svc)
        assert provider.calls == []
        assert report.skipped_not_due == 1
        assert report.checked == 0
        assert report.due == 1
        assert r.status == "PENDING"
        assert r.last_error is None
        assert r.status_updated_at == sent.status_updated_at
        assert r.next_check_at == scheduled + timedelta(minutes=2)
        assert r.attempt_count == 1
        assert r.last_checked_at == clock()


def test_rule2_edge_grace_end_itself_is_checked(store: Store, clock: SimulatedClock) -> None:
    provider = Scripted(default=result("DELIVERED"))
    scheduled = T0 + timedelta(hours=1)
    with service(store, clock, provider) as svc:
        send(svc, scheduled=scheduled)
        clock.advance_to(scheduled + timedelta(minutes=2))  # exactly the grace end
        report = svc.run_once()
        assert report.checked == 1
        assert report.skipped_not_due == 0
        assert rec(svc).status == "DELIVERED"
        assert provider.calls[0].scheduled_at == scheduled


def test_rule3_tracking_timeout(store: Store, clock: SimulatedClock) -> None:
    provider = Scripted(default=None)
    with service(store, clock, provider) as svc:
        send(svc, "exact")
        send(svc, "over")
        store.patch("over", {"requested_at": T0 - timedelta(microseconds=1)})
        clock.advance_to(T0 + timedelta(hours=24))  # "exact" started exactly 24 h ago
        report = svc.run_once()
        over, exact = rec(svc, "over"), rec(svc, "exact")
        assert over.status == "UNKNOWN"
        assert over.last_error is not None
        assert over.last_error.code == "TRACKING_TIMEOUT"
        assert over.next_check_at == clock()
        assert exact.status == "SENT"
        assert exact.last_error is None
        assert [q.provider_message_id for q in provider.calls] == ["P-exact"]
        assert report.errors_by_code == {"TRACKING_TIMEOUT": 1}


def test_rule3_timeout_of_a_scheduled_send_counts_from_its_grace_end(
    store: Store, clock: SimulatedClock
) -> None:
    provider = Scripted(default=None)
    scheduled = T0 + timedelta(hours=5)
    with service(store, clock, provider) as svc:
        send(svc, scheduled=scheduled)
        clock.advance_to(T0 + timedelta(hours=25))  # 25 h after the request, 20 h after the grace
        svc.run_once()
        assert rec(svc).status == "PENDING"
        assert len(provider.calls) == 1
        clock.advance_to(scheduled + timedelta(minutes=2, hours=24, seconds=1))
        svc.run_once()
        r = rec(svc)
        assert r.status == "UNKNOWN"
        assert r.last_error is not None
        assert r.last_error.code == "TRACKING_TIMEOUT"


def test_rule4_provider_not_found(store: Store, clock: SimulatedClock) -> None:
    with service(store, clock, Scripted(default=result("DELIVERED"))) as svc:
        send(svc, pid="ghost")
        clock.advance(60)
        svc.run_once()
        r = rec(svc)
        assert r.status == "UNKNOWN"
        assert r.last_error is not None
        assert (r.last_error.code, r.last_error.message) == (
            "PROVIDER_NOT_FOUND",
            "Provider not found: ghost",
        )


def test_rule5_unsupported_provider_skip_keeps_polling_by_backoff(
    store: Store, clock: SimulatedClock
) -> None:
    with service(store, clock, NoStatus()) as svc:
        send(svc, pid="aligo")
        clock.advance(60)
        report = svc.run_once()
        r = rec(svc)
        assert r.status == "SENT"
        assert r.last_error is not None
        assert r.last_error.code == "UNSUPPORTED_PROVIDER"
        assert r.next_check_at == clock() + timedelta(seconds=30)
        assert report.errors_by_code == {"UNSUPPORTED_PROVIDER": 1}
        assert report.changed == 0


def test_rule5_unsupported_provider_unknown_finalises(store: Store, clock: SimulatedClock) -> None:
    with service(store, clock, NoStatus(), unsupported_provider_strategy="unknown") as svc:
        send(svc, pid="aligo")
        clock.advance(60)
        svc.run_once()
        r = rec(svc)
        assert r.status == "UNKNOWN"
        assert r.last_error is not None
        assert r.last_error.code == "UNSUPPORTED_PROVIDER"
        assert r.next_check_at == clock()


def test_rule6_retryable_error_keeps_status_and_backs_off(
    store: Store, clock: SimulatedClock
) -> None:
    err = ProviderError("NETWORK_TIMEOUT", "SOLAPI did not answer", retryable=True)
    with service(store, clock, Scripted(default=err)) as svc:
        send(svc)
        clock.advance(60)
        report = svc.run_once()
        r = rec(svc)
        assert r.status == "SENT"
        assert r.last_error is not None
        assert (r.last_error.code, r.last_error.message) == (
            "NETWORK_TIMEOUT",
            "SOLAPI did not answer",
        )
        assert r.next_check_at == clock() + timedelta(seconds=30)
        assert report.errors_by_code == {"NETWORK_TIMEOUT": 1}


def test_rule6_non_retryable_error_finalises_as_unknown(
    store: Store, clock: SimulatedClock
) -> None:
    err = ProviderError(
        "AUTHENTICATION_FAILED", "등록하지 않은 IP에서는 발송되지 않습니다.", retryable=False
    )
    with service(store, clock, Scripted(default=err)) as svc:
        r = first_check(svc, clock)
        assert r.status == "UNKNOWN"
        assert r.next_check_at == clock()
        assert r.last_error is not None
        assert r.last_error.code == "AUTHENTICATION_FAILED"
        assert "등록하지 않은 IP" in r.last_error.message


def test_rule6_any_other_exception_is_retryable_with_its_message(
    store: Store, clock: SimulatedClock
) -> None:
    with service(
        store, clock, AsyncScripted(default=ConnectionResetError("peer reset the connection"))
    ) as svc:
        r = first_check(svc, clock)
        assert r.status == "SENT"
        assert r.last_error is not None
        assert r.last_error.code == "UNKNOWN_ERROR"
        assert r.last_error.message == "ConnectionResetError: peer reset the connection"


def test_rule6_a_check_past_its_timeout_is_a_retryable_network_timeout(
    store: Store, clock: SimulatedClock
) -> None:
    never = threading.Event()

    class Hanging:
        id = "solapi"

        async def get_delivery_status(self, query: DeliveryStatusQuery) -> None:
            await asyncio.get_running_loop().run_in_executor(None, never.wait, WAIT)

    with service(store, clock, Hanging(), check_timeout_ms=50) as svc:
        send(svc)
        clock.advance(60)
        svc.run_once()
        never.set()
        r = rec(svc)
        assert r.status == "SENT"
        assert r.last_error is not None
        assert r.last_error.code == "NETWORK_TIMEOUT"


def test_rule7_nothing_yet_keeps_status_and_clears_the_error(
    store: Store, clock: SimulatedClock
) -> None:
    provider = Scripted(default=ProviderError("PROVIDER_ERROR", "HTTP 500"))
    with service(store, clock, provider) as svc:
        assert first_check(svc, clock).last_error is not None
        provider.default = None
        clock.advance(30)
        report = svc.run_once()
        r = rec(svc)
        assert r.status == "SENT"
        assert r.last_error is None
        assert r.attempt_count == 2
        assert r.next_check_at == clock() + timedelta(minutes=2)
        assert report.checked == 1
        assert report.changed == 0
        assert report.errors_by_code == {}


def test_rule8_answer_is_taken_with_code_message_and_times(
    store: Store, clock: SimulatedClock
) -> None:
    sent_at = T0 + timedelta(seconds=3)
    provider = Scripted(
        default=result("SENT", status_code="3000", status_message="이통사 접수", sent_at=sent_at)
    )
    with service(store, clock, provider) as svc:
        r = first_check(svc, clock)
        assert (r.status, r.provider_status_code, r.provider_status_message) == (
            "SENT",
            "3000",
            "이통사 접수",
        )
        assert r.sent_at == sent_at
        assert r.next_check_at == clock() + timedelta(seconds=30)
        assert r.status_updated_at == T0  # the status did not change
        delivered_at = T0 + timedelta(seconds=70)
        provider.default = result(
            "DELIVERED", status_code="", delivered_at=delivered_at.isoformat()
        )
        clock.advance(30)
        report = svc.run_once()
        r = rec(svc)
        assert r.status == "DELIVERED"
        assert r.delivered_at == delivered_at
        assert r.sent_at == sent_at
        assert r.provider_status_code == "3000"  # an empty code keeps the previous one
        assert r.next_check_at == clock()
        assert r.status_updated_at == clock()
        assert r.last_error is None
        assert report.transitions == {"SENT->DELIVERED": 1}
        assert report.became_terminal == 1
        clock.advance(86_400)
        assert svc.run_once().due == 0
        assert len(provider.calls) == 2


def test_rule8_answer_clears_a_previous_error(store: Store, clock: SimulatedClock) -> None:
    provider = Scripted(default=ProviderError("RATE_LIMIT_EXCEEDED", "429"))
    with service(store, clock, provider) as svc:
        send(svc)
        clock.advance(60)
        svc.run_once()
        provider.default = result("PENDING", status_code="2000")
        clock.advance(30)
        svc.run_once()
        r = rec(svc)
        assert r.status == "PENDING"
        assert r.last_error is None
        assert r.status_updated_at == clock()


def test_rule8_mapping_answers_in_kmsg_shape_are_accepted(
    store: Store, clock: SimulatedClock
) -> None:
    answer = {
        "status": "FAILED",
        "statusCode": 3043,
        "statusMessage": "단말기 Power off",
        "failedAt": 1793610000000,
    }
    with service(store, clock, Scripted(default=answer)) as svc:
        r = first_check(svc, clock)
        assert (r.status, r.provider_status_code, r.provider_status_message) == (
            "FAILED",
            "3043",
            "단말기 Power off",
        )
        assert r.failed_at == datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def test_an_invalid_answer_is_a_retryable_error(store: Store, clock: SimulatedClock) -> None:
    with service(store, clock, Scripted(default={"status": "DONE"})) as svc:
        r = first_check(svc, clock)
        assert r.status == "SENT"
        assert r.last_error is not None
        assert r.last_error.code == "INVALID_STATUS_RESULT"
        assert "DONE" in r.last_error.message


@pytest.mark.parametrize(
    ("backoff", "expected_s"),
    [
        ((30_000, 120_000, 600_000, 1_800_000, 7_200_000), [30, 120, 600, 1800, 7200, 7200, 7200]),
        ((), [60, 60, 60]),
        ((5_000,), [5, 5, 5]),
        ((0, 1_000), [0, 1, 1]),
    ],
)
def test_backoff_schedule_edges(
    store: Store, clock: SimulatedClock, backoff: tuple[int, ...], expected_s: list[int]
) -> None:
    with service(store, clock, Scripted(default=None), backoff_ms=backoff) as svc:
        send(svc)
        clock.advance(30)
        delays = []
        for n, _ in enumerate(expected_s, start=1):
            assert svc.run_once().checked == 1
            r = rec(svc)
            assert r.attempt_count == n
            delays.append(int((r.next_check_at - clock()).total_seconds()))
            clock.advance_to(r.next_check_at)
        assert delays == expected_s


def test_backoff_delay_function() -> None:
    schedule = (30_000, 120_000)
    assert [backoff_delay(n, schedule) for n in (0, 1, 2, 3, 100)] == [
        timedelta(seconds=30),
        timedelta(seconds=30),
        timedelta(minutes=2),
        timedelta(minutes=2),
        timedelta(minutes=2),
    ]
    assert backoff_delay(1, []) == timedelta(seconds=60)


# --------------------------------------------------------------------------- terminal states


def test_terminal_never_regresses_even_when_the_provider_later_answers_sent(
    store: Store, clock: SimulatedClock
) -> None:
    provider = Scripted(default=result("DELIVERED", status_code="4000"))
    with service(store, clock, provider) as svc:
        assert first_check(svc, clock).status == "DELIVERED"
        provider.default = result("SENT", status_code="3000")
        for _ in range(3):
            clock.advance(86_400)
            assert svc.run_once().due == 0
        send(svc)  # recorded again by a late hook: still delivered
        clock.advance(60)
        svc.run_once()
        r = rec(svc)
        assert r.status == "DELIVERED"
        assert r.provider_status_code == "4000"
        assert len(provider.calls) == 1


def test_terminal_state_reached_elsewhere_during_a_run_is_not_replaced(
    store: Store, clock: SimulatedClock
) -> None:
    def webhook_then_sent(query: DeliveryStatusQuery) -> DeliveryStatusResult:
        # a delivery report arrives (another writer) while the runner waits for SOLAPI
        store.patch("m1", {"status": "DELIVERED", "provider_status_code": "4000"})
        return result("SENT", status_code="3000")

    with service(store, clock, Scripted(default=None, answers={"P-m1": webhook_then_sent})) as svc:
        send(svc)
        send(svc, "m2")
        clock.advance(60)
        report = svc.run_once()
        assert rec(svc).status == "DELIVERED"
        assert rec(svc).provider_status_code == "4000"
        assert rec(svc, "m2").attempt_count == 1
        assert report.dropped == 1
        assert report.written == 1


def test_store_returning_a_terminal_record_as_due_is_left_alone(clock: SimulatedClock) -> None:
    class Stale(InMemoryTrackingStore):
        def list_due(self, now: datetime, limit: int) -> list[TrackingRecord]:
            return [replace(r, status="FAILED") for r in super().list_due(now, limit)]

    provider = Scripted(default=result("SENT"))
    with service(Stale(hash_key=HASH_KEY), clock, provider) as svc:
        send(svc)
        clock.advance(60)
        assert svc.run_once().written == 0
        assert provider.calls == []


# --------------------------------------------------------------------------- one run


def test_due_records_are_taken_earliest_first_at_most_batch_size(
    store: Store, clock: SimulatedClock
) -> None:
    provider = Scripted(default=result("DELIVERED"))
    with service(store, clock, provider, batch_size=2) as svc:
        for i, mid in enumerate(["c", "a", "d", "b"]):
            send(svc, mid, at=T0 + timedelta(seconds=[3, 1, 4, 2][i]))
        clock.advance(120)
        first = svc.run_once()
        assert first.due == 2
        assert sorted(q.message_id or "" for q in provider.calls) == ["a", "b"]
        second = svc.run_once()
        assert second.due == 2
        assert [rec(svc, m).status for m in "abcd"] == ["DELIVERED"] * 4
        assert svc.run_once().due == 0


def test_all_snapshots_of_a_run_are_one_write_at_the_clock_time(
    tmp_path: Path, clock: SimulatedClock
) -> None:
    lake = ParquetTrackingStore(tmp_path / "lake", hash_key=HASH_KEY)
    with service(lake, clock, Scripted(default=result("DELIVERED")), batch_size=50) as svc:
        for i in range(30):
            send(svc, f"m{i}")
        lake.flush()
        before = lake.stats()["history_files"]
        clock.advance(60)
        report = svc.run_once()
        assert report.written == 30
        assert lake.stats()["history_files"] == before + 1
        polls = lake.history().filter(snapshot_kind="poll").collect()
        assert polls.height == 30
        assert polls.get_column("recorded_at").unique().to_list() == [clock()]


def test_one_append_per_run_on_the_memory_store(clock: SimulatedClock) -> None:
    class Counting(InMemoryTrackingStore):
        appends: ClassVar[list[tuple[int, str]]] = []

        def append_snapshots(
            self, records: Any, *, kind: Any = "poll", recorded_at: int | None = None
        ) -> None:
            self.appends.append((len(records), kind))
            super().append_snapshots(records, kind=kind, recorded_at=recorded_at)

    store = Counting(hash_key=HASH_KEY)
    with service(store, clock, Scripted(default=None)) as svc:
        for i in range(7):
            send(svc, f"m{i}")
        clock.advance(60)
        svc.run_once()
        assert store.appends == [(7, "poll")]


def test_async_checks_run_up_to_concurrency_at_once(store: Store, clock: SimulatedClock) -> None:
    state = {"now": 0, "max": 0}
    full: list[asyncio.Event] = []

    class Gate:
        id = "solapi"

        async def get_delivery_status(self, query: DeliveryStatusQuery) -> None:
            if not full:
                full.append(asyncio.Event())
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            if state["now"] == 4:
                full[0].set()
            await asyncio.wait_for(full[0].wait(), WAIT)
            state["now"] -= 1

    with service(store, clock, Gate(), concurrency=4) as svc:
        for i in range(12):
            send(svc, f"m{i}")
        clock.advance(60)
        report = svc.run_once()
        assert report.checked == 12
        assert report.errors_by_code == {}
        assert state["max"] == 4


def test_plain_checks_run_on_a_thread_pool_up_to_concurrency(
    store: Store, clock: SimulatedClock
) -> None:
    barrier = threading.Barrier(3, timeout=WAIT)
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def meet(query: DeliveryStatusQuery) -> None:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        barrier.wait()  # only passes when 3 checks are running at once
        with lock:
            state["now"] -= 1

    with service(store, clock, Scripted(default=meet), concurrency=3) as svc:
        for i in range(9):
            send(svc, f"m{i}")
        clock.advance(60)
        report = svc.run_once()
        assert report.checked == 9
        assert report.errors_by_code == {}
        assert state["max"] == 3


def test_plain_and_async_providers_in_one_run(store: Store, clock: SimulatedClock) -> None:
    plain, aio = (
        Scripted("solapi", default=result("DELIVERED")),
        AsyncScripted("iwinv", default=result("FAILED")),
    )
    with service(store, clock, plain, aio) as svc:
        send(svc, "a", pid="solapi")
        send(svc, "b", pid="iwinv")
        clock.advance(60)
        report = svc.run_once()
        assert report.transitions == {"SENT->DELIVERED": 1, "SENT->FAILED": 1}


def expected_number(store: Store, given: str, normalized: str) -> str | None:
    """What a gateway is told: the number kept in clear, the sealed one opened, or none."""
    if store.keep_numbers:
        return given
    return normalized if getattr(store, "numbers", None) == "encrypted" else None


def test_query_carries_the_number_only_where_the_store_can_give_it(
    tmp_path: Path, clock: SimulatedClock
) -> None:
    for keep in (False, True):
        provider = Scripted(default=None)
        store = InMemoryTrackingStore(hash_key=HASH_KEY, keep_numbers=keep)
        with service(store, clock, provider) as svc:
            send(svc)
            assert rec(svc).to == ("010-1234-5678" if keep else None)  # never stored in clear
            clock.advance(60)
            svc.run_once()
            query = provider.calls[0]
            assert query.to == expected_number(store, "010-1234-5678", "01012345678")
            assert query.to_masked == "010****5678"
            assert query.message_id == "m1"
            assert query.checked_at == clock()
            assert query.attempt == 1
            assert query.type == "SMS"


def test_raw_payloads_are_stored_only_when_asked(store: Store, clock: SimulatedClock) -> None:
    raw = {"messageId": "P-m1", "statusCode": "4000", "to": "01012345678"}
    provider = Scripted(default=result("DELIVERED", raw=raw))
    with service(store, clock, provider) as svc:
        assert first_check(svc, clock).raw is None
    with service(InMemoryTrackingStore(hash_key=HASH_KEY), clock, provider, store_raw=True) as svc:
        assert first_check(svc, clock).raw == raw


def test_run_once_works_inside_a_running_event_loop(store: Store, clock: SimulatedClock) -> None:
    provider = AsyncScripted(default=result("DELIVERED"))
    with service(store, clock, provider) as svc:
        send(svc)
        clock.advance(60)

        async def notebook_cell() -> RunReport:
            return svc.run_once()  # a plain call, as in a Jupyter cell

        report = asyncio.run(notebook_cell())
        assert report.checked == 1
        assert rec(svc).status == "DELIVERED"


def test_arun_once_on_the_callers_loop(store: Store, clock: SimulatedClock) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def on_loop(query: DeliveryStatusQuery) -> DeliveryStatusResult:
        loops.append(asyncio.get_running_loop())
        return result("DELIVERED")

    class Gateway:
        id = "solapi"

        async def get_delivery_status(self, query: DeliveryStatusQuery) -> DeliveryStatusResult:
            return await on_loop(query)

    with service(store, clock, Gateway()) as svc:
        send(svc)
        clock.advance(60)

        async def app() -> tuple[RunReport, asyncio.AbstractEventLoop]:
            return await svc.arun_once(), asyncio.get_running_loop()

        report, loop = asyncio.run(app())
        assert report.checked == 1
        assert loops == [loop]
        assert svc.last_report is report


def test_a_second_run_once_waits_for_the_run_in_flight(store: Store, clock: SimulatedClock) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(query: DeliveryStatusQuery) -> DeliveryStatusResult:
        entered.set()
        release.wait(WAIT)
        return result("DELIVERED")

    provider = Scripted(default=slow)
    with service(store, clock, provider) as svc:
        send(svc)
        clock.advance(60)
        reports: list[RunReport] = []
        first = threading.Thread(target=lambda: reports.append(svc.run_once()))
        first.start()
        wait_for(entered, "the first run's check")
        second = threading.Thread(target=lambda: reports.append(svc.run_once()))
        second.start()
        deadline = time.monotonic() + WAIT
        while svc._runner_state().joined == 0 and time.monotonic() < deadline:
            release.wait(0.005)
        assert svc._runner_state().joined == 1
        release.set()
        first.join(WAIT)
        second.join(WAIT)
        assert len(reports) == 2
        assert reports[0] is reports[1]
        assert len(provider.calls) == 1


def test_a_failing_run_raises_and_the_next_run_works(store: Store) -> None:
    times = [T0 + timedelta(minutes=5)]

    def clock() -> datetime:
        if not times:
            raise OSError("clock unavailable")
        return times[-1]

    with DeliveryTrackingService(
        [Scripted(default=result("DELIVERED"))], store=store, clock=clock
    ) as svc:
        times[0] = T0
        send(svc)
        times.clear()
        with pytest.raises(OSError, match="clock unavailable"):
            svc.run_once()
        times.append(T0 + timedelta(minutes=5))
        assert svc.run_once().checked == 1


# --------------------------------------------------------------------------- start / stop


def test_start_polls_in_the_background_and_stop_ends_it(
    store: Store, clock: SimulatedClock
) -> None:
    called = threading.Event()

    def answer(query: DeliveryStatusQuery) -> DeliveryStatusResult:
        called.set()
        return result("DELIVERED")

    with service(store, clock, Scripted(default=answer), interval_ms=10) as svc:
        send(svc)
        clock.advance(60)
        svc.start()
        svc.start()  # safe twice
        assert svc.is_polling
        wait_for(called, "a background check")
        svc.stop()
        svc.stop()  # safe twice
        assert not svc.is_polling
        assert rec(svc).status == "DELIVERED"
        assert not [t for t in threading.enumerate() if t.name == "kmsg-poller"]


def test_stop_returns_promptly_while_polling_waits(store: Store, clock: SimulatedClock) -> None:
    with service(store, clock, Scripted(default=None), interval_ms=3_600_000) as svc:
        svc.start()
        deadline = time.monotonic() + WAIT
        while svc.last_report is None and time.monotonic() < deadline:
            threading.Event().wait(0.005)
        assert svc.last_report is not None  # the first run is done; the loop now waits an hour
        started = time.monotonic()
        svc.stop()
        assert time.monotonic() - started < 1.0
        assert not svc.is_polling


def test_an_exception_in_one_run_is_logged_and_polling_goes_on(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    armed, failed, checked = threading.Event(), threading.Event(), threading.Event()

    def clock() -> datetime:
        if armed.is_set() and not failed.is_set():
            failed.set()
            raise OSError("NTP hiccup")
        return T0 + timedelta(minutes=5)

    def answer(query: DeliveryStatusQuery) -> DeliveryStatusResult:
        checked.set()
        return result("DELIVERED")

    polling = PollingConfig(interval_ms=5)
    svc = DeliveryTrackingService(
        [Scripted(default=answer)], store=store, polling=polling, clock=clock
    )
    send(svc)
    armed.set()  # the first background run fails
    with caplog.at_level("ERROR", logger="kmsg_analytics.runner"):
        svc.start()
        wait_for(checked, "a run after the failed one")
        svc.close()
    assert failed.is_set()
    assert "a polling run failed" in caplog.text
    assert "NTP hiccup" in caplog.text
    assert rec(svc).status == "DELIVERED"


def test_close_stops_background_polling(store: Store, clock: SimulatedClock) -> None:
    svc = service(store, clock, Scripted(default=None), interval_ms=3_600_000)
    svc.start()
    svc.close()
    svc.close()
    assert not svc.is_polling


def test_stop_makes_a_run_waiting_for_another_runner_give_up(
    tmp_path: Path, clock: SimulatedClock
) -> None:
    lake = tmp_path / "lake"
    a = service(ParquetTrackingStore(lake, hash_key=HASH_KEY), clock, Scripted(default=None))
    b = service(ParquetTrackingStore(lake, hash_key=HASH_KEY), clock, Scripted(default=None))
    entered, release = threading.Event(), threading.Event()

    def hold(query: DeliveryStatusQuery) -> None:
        entered.set()
        release.wait(WAIT)

    a.providers["solapi"] = Scripted(default=hold)
    send(a)
    clock.advance(60)
    ta = threading.Thread(target=a.run_once)
    ta.start()
    wait_for(entered, "runner A's check")
    reports: list[RunReport] = []
    tb = threading.Thread(target=lambda: reports.append(b.run_once()))
    tb.start()
    deadline = time.monotonic() + WAIT
    while b._runner_state().inflight is None and time.monotonic() < deadline:
        entered.wait(0.005)
    b.stop()
    tb.join(WAIT)
    assert reports
    assert reports[0].lock_busy
    assert reports[0].due == 0
    release.set()
    ta.join(WAIT)
    a.close()
    b.close()


# --------------------------------------------------------------------------- config and reports


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"interval_ms": 0}, "polling.interval_ms"),
        ({"batch_size": 0}, "polling.batch_size"),
        ({"concurrency": -1}, "polling.concurrency"),
        ({"initial_delay_ms": -5}, "polling.initial_delay_ms"),
        ({"scheduled_grace_ms": 1.5}, "polling.scheduled_grace_ms"),
        ({"backoff_ms": (30_000, -1)}, "polling.backoff_ms[1]"),
        ({"backoff_ms": (30_000, None)}, "polling.backoff_ms[1]"),
        ({"backoff_ms": "30000"}, "polling.backoff_ms"),
        ({"max_tracking_duration_ms": 0}, "polling.max_tracking_duration_ms"),
        ({"unsupported_provider_strategy": "ignore"}, "polling.unsupported_provider_strategy"),
        ({"batch_size": True}, "polling.batch_size"),
        ({"check_timeout_ms": 0}, "polling.check_timeout_ms"),
    ],
)
def test_polling_config_rejects_bad_values(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRecordError) as info:
        PollingConfig(**settings)
    assert info.value.field == field
    assert "expected" in str(info.value)


def test_polling_config_defaults_and_mappings() -> None:
    cfg = PollingConfig()
    assert (cfg.interval_ms, cfg.batch_size, cfg.concurrency, cfg.initial_delay_ms) == (
        5000,
        200,
        10,
        30_000,
    )
    assert cfg.scheduled_grace_ms == 120_000
    assert cfg.max_tracking_duration_ms == 86_400_000
    assert cfg.backoff_ms == (30_000, 120_000, 600_000, 1_800_000, 7_200_000)
    assert cfg.unsupported_provider_strategy == "skip"
    assert coerce_polling(None) == cfg
    assert coerce_polling({"batchSize": 5, "backoffMs": [1000]}) == PollingConfig(
        batch_size=5, backoff_ms=(1000,)
    )
    assert PollingConfig(backoff_ms=[]).backoff_ms == ()
    with pytest.raises(InvalidRecordError, match="batchsize"):
        coerce_polling({"batchsize": 5})


def test_service_uses_the_polling_config_when_recording(
    store: Store, clock: SimulatedClock
) -> None:
    with service(store, clock, Scripted(), initial_delay_ms=5_000) as svc:
        assert send(svc).next_check_at == T0 + timedelta(seconds=5)


def test_provider_error_retry_classification() -> None:
    assert ProviderError("PROVIDER_ERROR", "HTTP 500").retryable
    assert not ProviderError("INVALID_REQUEST", "429").retryable
    assert ProviderError("SOMETHING", "request timeout").retryable
    assert not ProviderError("SOMETHING", "bad").retryable
    assert not ProviderError("NETWORK_ERROR", "x", retryable=False).retryable
    with pytest.raises(InvalidRecordError):
        ProviderError("", "no code")
    import pickle

    again = pickle.loads(pickle.dumps(ProviderError("NETWORK_TIMEOUT", "t", retryable=False)))
    assert (again.code, again.message, again.retryable) == ("NETWORK_TIMEOUT", "t", False)


def test_run_report_reads_well(store: Store, clock: SimulatedClock) -> None:
    provider = Scripted(
        default=result("DELIVERED"), answers={"P-b": ProviderError("NETWORK_TIMEOUT", "slow")}
    )
    with service(store, clock, provider) as svc:
        send(svc, "a")
        send(svc, "b")
        clock.advance(60)
        report = svc.run_once()
    assert report.due == 2
    assert report.checked == 2
    assert report.changed == 1
    assert report.became_terminal == 1
    assert report.errors_by_code == {"NETWORK_TIMEOUT": 1}
    assert report.errors == 1
    assert report.started_at == clock()
    assert report.duration > 0
    assert report.written == 2
    assert "checked=2" in repr(report)
    assert "NETWORK_TIMEOUT" in repr(report)
    html = report._repr_html_()
    assert "<table>" in html
    assert "SENT → DELIVERED" in html
    assert "due 2, checked 2, changed 1" in report.summary_line()
    total = RunReport.combine([report, report])
    assert total.runs == 2
    assert total.checked == 4
    assert total.errors_by_code == {"NETWORK_TIMEOUT": 2}
    assert report.to_dict()["errors_by_code"] == {"NETWORK_TIMEOUT": 1}


# --------------------------------------------------------------------------- the CLI loop


def test_poll_until_stopped_with_a_simulated_clock_polls_to_completion(
    store: Store, clock: SimulatedClock
) -> None:
    provider = Scripted(default=lambda q: result("DELIVERED") if q.attempt >= 3 else None)
    with service(store, clock, provider) as svc:
        for i in range(5):
            send(svc, f"m{i}")
        lines: list[str] = []
        total = poll_until_stopped(svc, until_idle=True, out=lines.append)
        assert svc.count_records(status="DELIVERED") == 5
        assert total.became_terminal == 5
        assert total.checked == 15
        assert total.runs == 4
        assert lines[-1] == "nothing left to poll"
        assert "run 2: due 5, checked 5" in lines[1]
        assert clock() == T0 + timedelta(seconds=30 + 30 + 120)  # jumped to each due time


def test_poll_until_stopped_stops_cleanly_on_sigterm(store: Store, clock: SimulatedClock) -> None:
    def terminate(query: DeliveryStatusQuery) -> DeliveryStatusResult:
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill <pid>` would, mid-run
        return result("DELIVERED")

    before = signal.getsignal(signal.SIGTERM)
    with service(store, clock, Scripted(default=terminate)) as svc:
        send(svc)
        send(svc, "m2")
        clock.advance(60)
        lines: list[str] = []
        total = poll_until_stopped(svc, interval=0.01, out=lines.append)
        assert total.runs == 1
        assert total.written == 2
        assert svc.count_records(status="DELIVERED") == 2
        assert lines[-1].startswith("stopped by SIGTERM")
    assert signal.getsignal(signal.SIGTERM) is before


def test_poll_until_stopped_max_runs_and_real_clock_waits(store: Store) -> None:
    svc = DeliveryTrackingService([Scripted(default=None)], store=store)
    total = poll_until_stopped(svc, interval=0.001, out=None, max_runs=2)
    assert total.runs == 2
    assert total.due == 0
    with pytest.raises(InvalidRecordError):
        poll_until_stopped(svc, interval=-1)
    svc.close()


# --------------------------------------------------------------------------- one runner per lake


def test_two_services_on_one_lake_in_one_process_never_check_a_message_twice(
    tmp_path: Path, clock: SimulatedClock
) -> None:
    lake = tmp_path / "lake"
    calls: list[str] = []
    lock = threading.Lock()
    go = threading.Event()

    def answer(query: DeliveryStatusQuery) -> DeliveryStatusResult:
        go.wait(WAIT)
        with lock:
            calls.append(query.provider_message_id)
        return result("DELIVERED", pmid=query.provider_message_id)

    svcs = [
        service(
            ParquetTrackingStore(lake, hash_key=HASH_KEY),
            clock,
            Scripted(default=answer),
            batch_size=10,
        )
        for _ in range(2)
    ]
    for i in range(40):
        send(svcs[0], f"m{i:02d}")
    svcs[0].store.flush()  # type: ignore[attr-defined]
    clock.advance(60)

    def drain(svc: DeliveryTrackingService) -> None:
        while svc.run_once().due:
            pass

    threads = [threading.Thread(target=drain, args=(s,)) for s in svcs]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(WAIT * 3)
    assert sorted(calls) == [f"P-m{i:02d}" for i in range(40)]  # each exactly once
    assert svcs[1].count_records(status="DELIVERED") == 40
    assert (lake / RUNNER_LOCK_NAME).exists()
    for s in svcs:
        s.close()


def _setup_lake(lake: Path, n: int, *, alimtalk_failover: bool = False) -> None:
    clock = SimulatedClock(T0)
    with DeliveryTrackingService(
        [Scripted()], store=ParquetTrackingStore(lake, hash_key=HASH_KEY), clock=clock
    ) as svc:
        for i in range(n):
            mid = f"m{i:03d}"
            options: dict[str, Any] = {
                "type": "ALIMTALK" if alimtalk_failover else "SMS",
                "to": "010-1234-5678",
            }
            warnings: list[dict[str, str]] = []
            if alimtalk_failover:
                options["failover"] = {
                    "enabled": True,
                    "fallback_channel": "sms",
                    "fallback_content": "대체 문자",
                }
                warnings = [{"code": "FAILOVER_UNSUPPORTED_PROVIDER"}]
            svc.record_send(
                {"message_id": mid, "timestamp": T0, "options": options},
                {
                    "message_id": mid,
                    "provider_id": "solapi",
                    "provider_message_id": f"P-{mid}",
                    "type": options["type"],
                    "to": "010-1234-5678",
                    "warnings": warnings,
                },
            )


def _worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_file(path: Path, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"worker exited early ({proc.returncode}):\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {path.name}")
        threading.Event().wait(0.02)


@pytest.mark.slow
def test_two_runner_processes_on_one_lake_check_each_message_once_and_lose_nothing(
    tmp_path: Path,
) -> None:
    lake, log, go = tmp_path / "lake", tmp_path / "checks.log", tmp_path / "go"
    _setup_lake(lake, 40)
    procs = [_worker("poll", str(lake), str(log), str(go), "--batch", "5") for _ in range(2)]
    for p in procs:
        _wait_file(tmp_path / f"ready-{p.pid}", p)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    checks = sorted(log.read_text().split())
    assert checks == [f"P-m{i:03d}" for i in range(40)]  # every message checked exactly once
    assert all(int(out.strip()) > 0 for out, _ in outs)  # both runners took part
    with ParquetTrackingStore(lake, hash_key=HASH_KEY) as store:
        polls = store.history().filter(snapshot_kind="poll").collect()
        assert polls.height == 40
        assert polls.get_column("message_id").n_unique() == 40
        assert store.count_records(RecordFilter(status="DELIVERED")) == 40


@pytest.mark.slow
def test_a_runner_killed_mid_run_loses_no_acknowledged_snapshot_and_rechecks_the_rest(
    tmp_path: Path,
) -> None:
    lake, mark = tmp_path / "lake", tmp_path / "blocked"
    _setup_lake(lake, 20)
    proc = _worker("kill", str(lake), str(mark), "--batch", "10")
    _wait_file(mark, proc)  # run 1 (10 messages) was acknowledged; run 2 is blocked mid-check
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert (tmp_path / "acked").read_text().split() == [f"P-m{i:03d}" for i in range(10)]
    clock = SimulatedClock(T0 + timedelta(hours=1))
    provider = Scripted(default=lambda q: result("DELIVERED", pmid=q.provider_message_id))
    with service(ParquetTrackingStore(lake, hash_key=HASH_KEY), clock, provider) as svc:
        for i in range(10):  # acknowledged before the kill: kept
            r = rec(svc, f"m{i:03d}")
            assert r.status == "DELIVERED"
            assert r.attempt_count == 1
        for i in range(10, 20):  # in the killed run: nothing written, still due
            r = rec(svc, f"m{i:03d}")
            assert r.status == "SENT"
            assert r.attempt_count == 0
        report = svc.run_once()
        assert report.due == 10
        assert report.checked == 10
        assert sorted(q.provider_message_id for q in provider.calls) == [
            f"P-m{i:03d}" for i in range(10, 20)
        ]
        assert svc.count_records(status="DELIVERED") == 20


def test_a_leftover_lock_file_without_a_holder_does_not_block(
    tmp_path: Path, clock: SimulatedClock
) -> None:
    lake = tmp_path / "lake"
    store = ParquetTrackingStore(lake, hash_key=HASH_KEY)
    (lake / RUNNER_LOCK_NAME).write_text("pid=999999 host=gone since=2026-11-01T00:00:00+00:00\n")
    with service(store, clock, Scripted(default=result("DELIVERED"))) as svc:
        send(svc)
        clock.advance(60)
        report = svc.run_once()
        assert report.checked == 1
        assert not report.lock_busy
        assert f"pid={os.getpid()}" in (lake / RUNNER_LOCK_NAME).read_text()


def test_stop_called_from_inside_a_check_does_not_deadlock(
    store: Store, clock: SimulatedClock
) -> None:
    holder: list[DeliveryTrackingService] = []

    def stop_from_inside(query: DeliveryStatusQuery) -> DeliveryStatusResult:
        holder[0].stop()
        return result("DELIVERED")

    with service(store, clock, Scripted(default=stop_from_inside), interval_ms=10) as svc:
        holder.append(svc)
        send(svc)
        clock.advance(60)
        svc.start()
        deadline = time.monotonic() + WAIT
        while svc.last_report is None and time.monotonic() < deadline:
            threading.Event().wait(0.005)
        assert not svc.is_polling
        assert rec(svc).status == "DELIVERED"  # the run that called stop() still finished


def test_terminal_guard_without_an_open_set_asks_the_current_records(clock: SimulatedClock) -> None:
    from kmsg_analytics._runner import _terminal_now

    inner = InMemoryTrackingStore(hash_key=HASH_KEY)
    with service(inner, clock, Scripted()) as svc:
        a, b = send(svc, "a"), send(svc, "b")
        inner.patch("b", {"status": "CANCELLED"})

        class QueriesOnly:  # a store with the protocol's queries but no open set
            def list_records(self, flt: RecordFilter, limit: int) -> Any:
                return inner.list_records(flt, limit)

        assert _terminal_now(QueriesOnly(), [a, b]) == {"b"}  # type: ignore[arg-type]
        assert _terminal_now(inner, [a, b]) == {"b"}
        assert _terminal_now(inner, []) == set()


def test_concurrent_arun_once_calls_share_one_run_with_plain_providers(
    store: Store, clock: SimulatedClock
) -> None:
    provider = Scripted(default=result("DELIVERED"))
    with service(store, clock, provider) as svc:
        for i in range(3):
            send(svc, f"m{i}")
        clock.advance(60)

        async def app() -> list[RunReport]:
            return list(await asyncio.gather(svc.arun_once(), svc.arun_once()))

        first, second = asyncio.run(app())
        assert first is second
        assert first.checked == 3
        assert len(provider.calls) == 3
        assert "time spent" in first._repr_html_()


def test_poll_until_stopped_reports_a_failed_run_and_goes_on(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    calls = [0]

    def clock() -> datetime:
        calls[0] += 1
        if calls[0] == 1:
            raise OSError("clock unavailable")
        return T0

    svc = DeliveryTrackingService([Scripted()], store=store, clock=clock)
    lines: list[str] = []
    with caplog.at_level("ERROR", logger="kmsg_analytics.runner"):
        total = poll_until_stopped(svc, interval=0.001, out=lines.append, max_runs=2)
    svc.close()
    assert lines[0] == "run 1 failed: OSError: clock unavailable; polling goes on"
    assert lines[1].endswith("run 2: due 0, checked 0, changed 0, " + lines[1].split(", ")[-1])
    assert total.runs == 1
    assert "polling run 1 failed" in caplog.text
