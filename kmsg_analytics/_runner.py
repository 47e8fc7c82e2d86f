"""The polling runner: ``run_once``, ``arun_once``, ``start``, ``stop``, and the CLI's loop.

One run takes the due records, checks up to ``concurrency`` of them at once (``async``
providers on an event loop, plain ones on a thread pool) and appends every record's
new state as a snapshot, all in one write. Nothing is rewritten. The rules are the
spec's "Polling" section; the AlimTalk API failover is :mod:`kmsg_analytics._failover`.

Runs never overlap: a second ``run_once`` while one is in flight waits for it, and on a
Parquet lake each run holds ``<lake>/_runner.lock`` (an ``flock``, dropped by the
kernel when its holder dies) from taking the due list to the last write, so two
processes polling one lake never check a message twice in a round. A run killed
midway has written nothing of its own; its records are still due and are checked
again by the next run.
"""

# ruff: noqa: EM101 - InvalidRecordError/ProviderError take codes and fields, not messages

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import logging
import operator
import os
import signal
import socket
import threading
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import polars as pl

from ._errors import InvalidRecordError
from ._failover import (
    attempt_failover,
    is_async_callable,
    mark_attempting,
    should_attempt,
    with_attempt,
)
from ._providers import (
    ApiFailoverConfig,
    DeliveryStatusQuery,
    DeliveryStatusResult,
    PollingConfig,
    ProviderError,
    RunReport,
    coerce_api_failover,
    coerce_polling,
    coerce_status_result,
)
from ._records import (
    POLLABLE_STATUSES,
    TERMINAL_STATUSES,
    RecordFilter,
    TrackingError,
    TrackingRecord,
    coerce_json,
    coerce_time,
)
from ._schema import to_micros

if TYPE_CHECKING:
    from ._store import TrackingStore

__all__ = ["PollingMixin", "backoff_delay", "poll_until_stopped"]

log = logging.getLogger("kmsg_analytics.runner")

T = TypeVar("T")
_FAR_FUTURE = datetime(2199, 12, 31, tzinfo=UTC)
_TERMINAL = frozenset(TERMINAL_STATUSES)
_MAX_MESSAGE = 1000
RUNNER_LOCK_NAME = "_runner.lock"


def backoff_delay(attempts: int, backoff_ms: Sequence[int]) -> timedelta:
    """Delay before the next check after the ``attempts``-th: ``backoff[min(n-1, len-1)]``.

    An empty schedule means 60 s.

    Examples
    --------
    >>> [backoff_delay(n, (30_000, 120_000)).total_seconds() for n in (1, 2, 9)]
    [30.0, 120.0, 120.0]
    >>> backoff_delay(3, ()).total_seconds()
    60.0
    """
    if not backoff_ms:
        return timedelta(milliseconds=60_000)
    return timedelta(milliseconds=backoff_ms[min(max(attempts - 1, 0), len(backoff_ms) - 1)])


# --------------------------------------------------------------------------- one record


@dataclass(slots=True)
class _Outcome:
    before: TrackingRecord
    after: TrackingRecord
    not_due: bool = False
    error_code: str | None = None
    raw: Any = None


_Capability = tuple[Callable[[DeliveryStatusQuery], Any], bool]


_RECORD_FIELDS = tuple(f.name for f in fields(TrackingRecord))


_FIELD_VALUES = operator.attrgetter(*_RECORD_FIELDS)
_FIELD_INDEX = {name: i for i, name in enumerate(_RECORD_FIELDS)}
_FIELD_SLOTS = tuple(TrackingRecord.__dict__[name] for name in _RECORD_FIELDS)


def _evolve(record: TrackingRecord, changes: dict[str, Any]) -> TrackingRecord:
    """``dataclasses.replace`` at a third of its cost (one new record per check)."""
    values = list(_FIELD_VALUES(record))
    for name, value in changes.items():
        values[_FIELD_INDEX[name]] = value
    new = object.__new__(TrackingRecord)
    for slot, value in zip(_FIELD_SLOTS, values, strict=True):
        slot.__set__(new, value)
    return new


class _Checker:
    """The spec's polling rules for one run (one ``now``).

    Every rule starts from ``attempt_count + 1`` and ``last_checked_at = now`` and
    builds the record's new state once.
    """

    def __init__(
        self,
        cfg: PollingConfig,
        providers: dict[str, Any],
        now: datetime,
        pool: Callable[[], ThreadPoolExecutor],
    ) -> None:
        self.cfg = cfg
        self.providers = providers
        self.now = now
        self.pool = pool
        self.reveal: Callable[[TrackingRecord], tuple[str | None, str | None]] | None = None
        self.grace = timedelta(milliseconds=cfg.scheduled_grace_ms)
        self.max_duration = timedelta(milliseconds=cfg.max_tracking_duration_ms)
        self.timeout = None if cfg.check_timeout_ms is None else cfg.check_timeout_ms / 1000
        self._capabilities: dict[str, _Capability | None] = {}

    def _capability(self, provider_id: str, provider: Any) -> _Capability | None:
        if provider_id not in self._capabilities:
            fn = getattr(provider, "get_delivery_status", None)
            if not callable(fn):
                self._capabilities[provider_id] = None
            else:
                self._capabilities[provider_id] = (fn, is_async_callable(fn))
        return self._capabilities[provider_id]

    def _base(self, record: TrackingRecord) -> dict[str, Any]:
        return {"attempt_count": record.attempt_count + 1, "last_checked_at": self.now}

    def _final(self, record: TrackingRecord, code: str, message: str) -> _Outcome:
        changes = self._base(record)
        changes.update(
            status="UNKNOWN", next_check_at=self.now, last_error=TrackingError(code, message)
        )
        if record.status != "UNKNOWN":
            changes["status_updated_at"] = self.now
        return _Outcome(record, _evolve(record, changes), error_code=code)

    def _later(self, record: TrackingRecord, changes: dict[str, Any]) -> TrackingRecord:
        changes.update(self._base(record))
        delay = backoff_delay(changes["attempt_count"], self.cfg.backoff_ms)
        changes["next_check_at"] = self.now + delay
        return _evolve(record, changes)

    def pre(self, record: TrackingRecord) -> _Outcome | _Capability:
        """Rules 1 to 5 (no provider call), or how to ask the provider."""
        now = self.now
        if not record.provider_message_id.strip():
            message = "the record has no provider message id"
            return self._final(record, "MISSING_PROVIDER_MESSAGE_ID", message)
        start = record.requested_at
        if record.scheduled_at is not None:
            start = record.scheduled_at + self.grace
            if now < start:
                changes = self._base(record)
                changes["next_check_at"] = start
                return _Outcome(record, _evolve(record, changes), not_due=True)
        if now - start > self.max_duration:
            return self._final(record, "TRACKING_TIMEOUT", "max tracking duration exceeded")
        provider = self.providers.get(record.provider_id)
        if provider is None:
            message = f"Provider not found: {record.provider_id}"
            return self._final(record, "PROVIDER_NOT_FOUND", message)
        capability = self._capability(record.provider_id, provider)
        if capability is None:
            message = "Provider has no get_delivery_status()"
            if self.cfg.unsupported_provider_strategy == "unknown":
                return self._final(record, "UNSUPPORTED_PROVIDER", message)
            error = TrackingError("UNSUPPORTED_PROVIDER", message)
            return _Outcome(
                record, self._later(record, {"last_error": error}), error_code=error.code
            )
        return capability

    async def ask(self, record: TrackingRecord, capability: _Capability) -> _Outcome:
        """Rules 6 to 8: ask the provider and take its answer."""
        query = DeliveryStatusQuery(
            record.provider_message_id,
            record.type,
            record.to if record.to is not None else self._number(record),
            record.requested_at,
            record.scheduled_at,
            record.message_id,
            record.to_masked or None,
            self.now,
            record.attempt_count + 1,
        )
        try:
            if self.timeout is None:
                answer = await self._invoke(capability, query)
            else:
                async with asyncio.timeout(self.timeout):
                    answer = await self._invoke(capability, query)
        except ProviderError as err:
            return self._error(record, err.code, err.message, retryable=err.retryable)
        except TimeoutError:
            message = f"no answer within {self.cfg.check_timeout_ms} ms"
            return self._error(record, "NETWORK_TIMEOUT", message, retryable=True)
        except Exception as err:
            message = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            return self._error(record, "UNKNOWN_ERROR", message, retryable=True)
        if type(answer) is not DeliveryStatusResult:
            try:
                answer = coerce_status_result(
                    answer, record.provider_id, record.provider_message_id
                )
            except InvalidRecordError as err:
                return self._error(record, "INVALID_STATUS_RESULT", str(err), retryable=True)
            if answer is None:
                return _Outcome(record, self._later(record, {"last_error": None}))
        return self._answer(record, answer)

    def _number(self, record: TrackingRecord) -> str | None:
        """The recipient in clear, from a store that seals numbers (else ``None``)."""
        if self.reveal is None or getattr(record, "to_enc", None) is None:
            return None
        try:
            return self.reveal(record)[0]
        except Exception as err:  # no key here: the gateway gets no number
            log.debug("cannot reveal the number of %s: %s", record.message_id, err)
            return None

    async def _invoke(self, capability: _Capability, query: DeliveryStatusQuery) -> Any:
        fn, is_async = capability
        if is_async:
            answer = await fn(query)
        else:
            answer = await asyncio.get_running_loop().run_in_executor(self.pool(), fn, query)
        if (
            answer is not None
            and type(answer) is not DeliveryStatusResult
            and inspect.isawaitable(answer)
        ):
            answer = await answer
        return answer

    def _error(
        self, record: TrackingRecord, code: str, message: str, *, retryable: bool
    ) -> _Outcome:
        message = message[:_MAX_MESSAGE]
        if not retryable:
            return self._final(record, code, message)
        after = self._later(record, {"last_error": TrackingError(code, message)})
        return _Outcome(record, after, error_code=code)

    def _answer(self, record: TrackingRecord, result: DeliveryStatusResult) -> _Outcome:
        now = self.now
        changes: dict[str, Any] = {"status": result.status, "last_error": None}
        if result.status != record.status:
            changes["status_updated_at"] = now
        if result.status_code:
            changes["provider_status_code"] = result.status_code
        if result.status_message:
            changes["provider_status_message"] = result.status_message
        if result.sent_at is not None:
            changes["sent_at"] = result.sent_at
        if result.delivered_at is not None:
            changes["delivered_at"] = result.delivered_at
        if result.failed_at is not None:
            changes["failed_at"] = result.failed_at
        if self.cfg.store_raw and result.raw is not None:
            try:
                changes["raw"] = coerce_json(result.raw, "raw")
            except InvalidRecordError:
                log.warning("raw payload of %s is not JSON data; not stored", record.message_id)
        if result.status in _TERMINAL:
            changes.update(self._base(record))
            changes["next_check_at"] = now
            after = _evolve(record, changes)
        else:
            after = self._later(record, changes)
        return _Outcome(record, after, raw=result.raw)


async def _limited(items: Sequence[T], fn: Callable[[T], Awaitable[Any]], limit: int) -> list[Any]:
    """``[await fn(x) for x in items]`` with at most ``limit`` running at once, in order."""
    results: list[Any] = [None] * len(items)
    indices = iter(range(len(items)))

    async def worker() -> None:
        for i in indices:
            results[i] = await fn(items[i])

    await asyncio.gather(*(worker() for _ in range(min(limit, len(items)))))
    return results


# --------------------------------------------------------------------------- locks


_store_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_store_locks_guard = threading.Lock()


class _RunLock:
    """Held for a whole run: per store object in this process, per lake across processes."""

    def __init__(self, store: Any) -> None:
        with _store_locks_guard:
            try:
                self._tlock = _store_locks.setdefault(store, threading.Lock())
            except TypeError:  # a store that cannot be weakly referenced
                self._tlock = threading.Lock()
        root = getattr(getattr(store, "paths", None), "root", None)
        self.path = Path(root) / RUNNER_LOCK_NAME if root is not None else None
        self._fd: int | None = None

    def acquire(self, abort: threading.Event) -> bool:
        """Wait for the lock; ``False`` when ``abort`` was set meanwhile (``stop()``)."""
        while not self._tlock.acquire(timeout=0.05):
            if abort.is_set():
                return False
        if self.path is None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except BaseException:
            self._tlock.release()
            raise
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if abort.wait(delay):
                    os.close(fd)
                    self._tlock.release()
                    return False
                delay = min(delay * 2, 0.02)
            except BaseException:
                os.close(fd)
                self._tlock.release()
                raise
        self._fd = fd
        try:  # who holds it, for people and `doctor` (the lock is the flock, not this text)
            since = datetime.now(UTC).isoformat()
            stamp = f"pid={os.getpid()} host={socket.gethostname()} since={since}\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, stamp.encode(), 0)
        except OSError:
            pass
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        self._tlock.release()


# --------------------------------------------------------------------------- threads


class _LoopThread:
    """An event loop of our own in a daemon thread (so ``run_once`` works inside Jupyter)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="kmsg-runner-loop", daemon=True)
        self.thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(self.loop)
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
            finally:
                self.loop.close()

    def close(self) -> None:
        if not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join()


_OUR_THREADS = ("kmsg-runner-loop", "kmsg-check")


class _RunnerState:
    """The runner's per-service state (the service's ``__init__`` is not ours)."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.inflight: Future[RunReport] | None = None
        self.inflight_thread: int | None = None
        self.abort = threading.Event()
        self.loop: _LoopThread | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.pool_size = 0
        self.poller: threading.Thread | None = None
        self.poller_stop: threading.Event | None = None
        self.last_report: RunReport | None = None
        self.joined = 0  # calls that waited for a run in flight instead of starting one


_state_guard = threading.Lock()


# --------------------------------------------------------------------------- the mixin


class PollingMixin:
    """The polling half of :class:`DeliveryTrackingService`.

    Reads ``self.store``, ``self.providers`` (id -> provider), ``self.polling`` (a
    :class:`PollingConfig`, a mapping, or ``None`` for defaults), ``self.api_failover``
    and ``self.clock``.
    """

    if TYPE_CHECKING:
        store: TrackingStore
        providers: dict[str, Any]
        polling: Any
        api_failover: Any
        clock: Callable[[], datetime]

    # ------------------------------------------------------------------ state

    def _runner_state(self) -> _RunnerState:
        state = self.__dict__.get("_kmsg_runner")
        if state is None:
            with _state_guard:
                state = self.__dict__.setdefault("_kmsg_runner", _RunnerState())
        return state  # type: ignore[no-any-return]

    @property
    def last_report(self) -> RunReport | None:
        """The report of the latest finished run (of ``run_once`` or background polling)."""
        return self._runner_state().last_report

    @property
    def is_polling(self) -> bool:
        """Whether background polling (:meth:`start`) is on."""
        poller = self._runner_state().poller
        return poller is not None and poller.is_alive()

    def _thread_pool(self, size: int) -> ThreadPoolExecutor:
        rs = self._runner_state()
        with rs.guard:
            if rs.pool is None or rs.pool_size != size:
                old, rs.pool, rs.pool_size = (
                    rs.pool,
                    ThreadPoolExecutor(size, thread_name_prefix="kmsg-check"),
                    size,
                )
                if old is not None:
                    old.shutdown(wait=False)
            return rs.pool

    def _settle(
        self, fut: Future[RunReport], src: Future[RunReport] | asyncio.Future[RunReport]
    ) -> None:
        rs = self._runner_state()
        with rs.guard:
            if rs.inflight is fut:
                rs.inflight = None
                rs.inflight_thread = None
        if src.cancelled():
            fut.cancel()
            return
        err = src.exception()
        if err is not None:
            fut.set_exception(err)
            return
        report = src.result()
        rs.last_report = report
        fut.set_result(report)

    # ------------------------------------------------------------------ runs

    def run_once(self) -> RunReport:
        """Poll the due records once and return what was done.

        Works in a plain script and inside a running event loop (a Jupyter kernel): the
        checks run on the service's own event loop thread. A call made while a run is
        in flight waits for that run and returns its report.

        Examples
        --------
        >>> from datetime import datetime, UTC
        >>> from kmsg_analytics import DeliveryTrackingService, InMemoryTrackingStore
        >>> from kmsg_analytics._simulated import SimulatedClock, SimulatedProvider
        >>> clock = SimulatedClock(datetime(2026, 11, 1, tzinfo=UTC))
        >>> svc = DeliveryTrackingService([SimulatedProvider("solapi", seed=1)], clock=clock,
        ...                               store=InMemoryTrackingStore(hash_key="doctest-key"))
        >>> _ = svc.record_send({"message_id": "m1", "timestamp": clock(),
        ...                      "options": {"type": "SMS", "to": "010-1234-5678"}},
        ...                     {"message_id": "m1", "provider_id": "solapi",
        ...                      "provider_message_id": "G1", "type": "SMS", "to": "010-1234-5678"})
        >>> clock.advance(3600)
        >>> svc.run_once().checked
        1
        >>> svc.close()
        """
        rs = self._runner_state()
        me = threading.get_ident()
        with rs.guard:
            if rs.loop is not None and rs.loop.thread.ident == me:
                msg = "run_once() was called from a status check; it cannot wait for its own run"
                raise RuntimeError(msg)
            if rs.inflight is not None:
                if rs.inflight_thread == me:
                    msg = (
                        "run_once() called while arun_once() runs on this thread's event loop; "
                        "await svc.arun_once() instead"
                    )
                    raise RuntimeError(msg)
                joined = rs.inflight
                rs.joined += 1
            else:
                joined = None
                if rs.loop is None:
                    rs.loop = _LoopThread()
                loop = rs.loop
                fut: Future[RunReport] = Future()
                rs.inflight, rs.inflight_thread, abort = fut, loop.thread.ident, rs.abort
        if joined is not None:
            return joined.result()
        cf = asyncio.run_coroutine_threadsafe(self._run(abort, offload=False), loop.loop)
        cf.add_done_callback(lambda done: self._settle(fut, done))
        return fut.result()

    async def arun_once(self) -> RunReport:
        """Like :meth:`run_once`, awaited on the caller's event loop (for asyncio apps).

        ``async`` providers are called on the caller's loop; store work runs in threads.
        Calls made while a run is in flight (from any thread) wait for it.

        Examples
        --------
        >>> import asyncio
        >>> from kmsg_analytics import DeliveryTrackingService, InMemoryTrackingStore
        >>> from kmsg_analytics._simulated import SimulatedProvider
        >>> svc = DeliveryTrackingService([SimulatedProvider("solapi")],
        ...                               store=InMemoryTrackingStore(hash_key="doctest-key"))
        >>> asyncio.run(svc.arun_once()).due
        0
        >>> svc.close()
        """
        rs = self._runner_state()
        with rs.guard:
            joined = rs.inflight
            if joined is not None:
                rs.joined += 1
            else:
                fut: Future[RunReport] = Future()
                rs.inflight, rs.inflight_thread, abort = fut, threading.get_ident(), rs.abort
        if joined is not None:
            return await asyncio.wrap_future(joined)
        task = asyncio.ensure_future(self._run(abort, offload=True))
        task.add_done_callback(lambda done: self._settle(fut, done))
        return await asyncio.shield(task)

    async def _run(self, abort: threading.Event, *, offload: bool) -> RunReport:
        cfg = coerce_polling(self.polling)
        failover = coerce_api_failover(self.api_failover)
        started = time.perf_counter()
        init = getattr(self, "init", None)
        if callable(init):
            await _call(offload, init)
        lock = _RunLock(self.store)
        got = await _call(offload, lock.acquire, abort)
        lock_wait = time.perf_counter() - started
        if not got:
            return RunReport(lock_busy=True, lock_wait=lock_wait, duration=lock_wait)
        try:
            return await self._run_locked(cfg, failover, offload, started, lock_wait)
        finally:
            lock.release()

    async def _run_locked(
        self,
        cfg: PollingConfig,
        failover: ApiFailoverConfig | None,
        offload: bool,
        started: float,
        lock_wait: float,
    ) -> RunReport:
        store = self.store
        phases: dict[str, float] = {}
        mark = time.perf_counter()

        def phase(name: str) -> None:
            nonlocal mark
            now_ = time.perf_counter()
            phases[name] = phases.get(name, 0.0) + now_ - mark
            mark = now_

        now = coerce_time(self.clock(), "clock()")
        # our stores make each due record when the round first reads it, between waits
        list_due = getattr(store, "due_records", store.list_due)
        due: Sequence[TrackingRecord] = await _call(offload, list_due, now, cfg.batch_size)
        phase("list_due")
        checker = _Checker(cfg, self.providers, now, lambda: self._thread_pool(cfg.concurrency))
        checker.reveal = getattr(store, "reveal_numbers", None)
        outcomes: list[_Outcome | None] = [None] * len(due)

        async def check(i: int) -> None:
            record = due[i]
            if record.status in _TERMINAL:  # never replace a terminal status
                return
            step = checker.pre(record)
            outcomes[i] = step if isinstance(step, _Outcome) else await checker.ask(record, step)

        await _limited(range(len(due)), check, cfg.concurrency)
        phase("checks")
        done = [o for o in outcomes if o is not None]
        marked: set[str] = set()
        for o in done:
            if should_attempt(failover, o.after, o.raw):
                o.after = mark_attempting(o.after, now)
                marked.add(o.after.message_id)
        terminal_now = await _call(offload, _terminal_now, store, [o.after for o in done])
        kept = [o for o in done if o.after.message_id not in terminal_now]
        phase("guard")
        if kept:
            await _call(
                offload,
                store.append_snapshots,
                [o.after for o in kept],
                kind="poll",
                recorded_at=to_micros(now),
            )
        phase("write")
        failover_counts: Counter[str] = Counter()
        to_send = [o.after for o in kept if o.after.message_id in marked]
        if to_send and failover is not None:
            pool = self._thread_pool(cfg.concurrency)
            reveal = checker.reveal
            sent = await _limited(
                to_send,
                lambda r: attempt_failover(failover, r, executor=pool, reveal=reveal),
                cfg.concurrency,
            )
            after_send = coerce_time(self.clock(), "clock()")
            outcomes_now = await _call(offload, _onto_current, store, [r for r, _ in sent])
            await _call(
                offload,
                store.append_snapshots,
                outcomes_now,
                kind="patch",
                recorded_at=to_micros(after_send),
            )
            failover_counts.update(outcome for _, outcome in sent)
            phase("failover")
        skipped = sum(o.not_due for o in kept)
        changed = [o for o in kept if o.after.status != o.before.status]
        return RunReport(
            started_at=now,
            due=len(due),
            checked=len(kept) - skipped,
            changed=len(changed),
            became_terminal=sum(o.after.status in _TERMINAL for o in changed),
            skipped_not_due=skipped,
            errors_by_code=dict(Counter(o.error_code for o in kept if o.error_code)),
            transitions=dict(Counter(f"{o.before.status}->{o.after.status}" for o in changed)),
            failover=dict(failover_counts),
            written=len(kept),
            dropped=len(done) - len(kept),
            lock_wait=lock_wait,
            duration=time.perf_counter() - started,
            phases=phases,
        )

    # ------------------------------------------------------------------ background

    def start(self) -> None:
        """Poll every ``interval_ms`` on a background thread (returns at once).

        An exception in one run is logged and the next run goes on. Safe to call twice.
        :attr:`last_report` holds the latest run's :class:`RunReport`.

        Examples
        --------
        >>> from kmsg_analytics import DeliveryTrackingService, InMemoryTrackingStore
        >>> from kmsg_analytics._simulated import SimulatedProvider
        >>> svc = DeliveryTrackingService([SimulatedProvider("solapi")],
        ...                               store=InMemoryTrackingStore(hash_key="doctest-key"))
        >>> svc.start()
        >>> svc.is_polling
        True
        >>> svc.stop()
        >>> svc.is_polling
        False
        >>> svc.close()
        """
        interval = coerce_polling(self.polling).interval_ms / 1000
        rs = self._runner_state()
        with rs.guard:
            if rs.poller is not None and rs.poller.is_alive():
                return
            stop = threading.Event()
            poller = threading.Thread(
                target=self._poll_loop, args=(stop, interval), name="kmsg-poller", daemon=True
            )
            rs.poller, rs.poller_stop = poller, stop
        poller.start()

    def _poll_loop(self, stop: threading.Event, interval: float) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception(
                    "a polling run failed; polling goes on (next run in %.1f s)", interval
                )
            if stop.wait(interval):
                break

    def stop(self) -> None:
        """Stop background polling; a run in flight finishes and is written first.

        Returns at once when polling is waiting for its next run, and makes a run
        waiting for another runner's lake lock give up. Safe to call twice.
        """
        rs = self._runner_state()
        me = threading.current_thread()
        with rs.guard:
            poller, poller_stop = rs.poller, rs.poller_stop
            rs.poller = rs.poller_stop = None
            abort, rs.abort = rs.abort, threading.Event()
            inflight, inflight_thread = rs.inflight, rs.inflight_thread
        if poller_stop is not None:
            poller_stop.set()
        abort.set()
        if me.name.startswith(_OUR_THREADS):
            return  # called from inside a status check or a sender: waiting would deadlock
        if poller is not None and poller is not me:
            poller.join()
        if inflight is not None and inflight_thread != me.ident:
            wait_futures([inflight])
        self._release_threads()

    def _release_threads(self) -> None:
        rs = self._runner_state()
        with rs.guard:
            if rs.inflight is not None:
                return
            loop, pool = rs.loop, rs.pool
            if loop is not None and loop.thread is threading.current_thread():
                return
            rs.loop, rs.pool, rs.pool_size = None, None, 0
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if loop is not None:
            loop.close()


async def _call(offload: bool, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    if offload:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def _onto_current(store: TrackingStore, records: Sequence[TrackingRecord]) -> list[TrackingRecord]:
    """Failover outcomes applied to each record's current state (it may have moved on)."""
    out = []
    for record in records:
        current = store.get(record.message_id)
        attempt = record.metadata["failover"]["api_attempt"]
        out.append(record if current is None else with_attempt(current, **attempt))
    return out


def _terminal_now(store: TrackingStore, records: Sequence[TrackingRecord]) -> set[str]:
    """Ids among ``records`` whose current state became terminal while we checked them.

    Asked of the store's open set (non-terminal current records) where it has one,
    which is small however large the lake; otherwise of the current records.
    """
    if not records:
        return set()
    ids = [r.message_id for r in records]
    open_set = getattr(store, "_open", None)
    if callable(open_set):
        frame = (
            open_set()
            .filter(pl.col("message_id").is_in(ids) & pl.col("status").is_in(POLLABLE_STATUSES))
            .select("message_id")
            .collect()
        )
        still_open = set(frame.get_column("message_id").to_list())
        return {i for i in ids if i not in still_open}
    flt = RecordFilter(
        message_id=ids,
        requested_at_from=min(r.requested_at for r in records),
        requested_at_to=max(r.requested_at for r in records),
    )
    rows = store.list_records(flt, len(ids)).select("message_id", "status").collect()
    return {mid for mid, status in rows.iter_rows() if status in _TERMINAL}


# --------------------------------------------------------------------------- the CLI's loop


def poll_until_stopped(
    service: PollingMixin,
    *,
    interval: float | None = None,
    out: Callable[[str], object] | None = print,
    max_runs: int | None = None,
    until_idle: bool = False,
    handle_signals: bool = True,
) -> RunReport:
    """Run the runner in the foreground until Ctrl-C/SIGTERM (what ``kmsg-analytics poll`` does).

    Prints one progress line per run (due, checked, changed, ...) through ``out``.
    The first SIGINT/SIGTERM lets the current run finish and write its snapshots, then
    returns; a second SIGINT raises :class:`KeyboardInterrupt` at once (what a run had
    not written is checked again next time). With a simulated clock (one with
    ``advance_to``, such as :class:`~kmsg_analytics._simulated.SimulatedClock`) time
    jumps to the next due check instead of being waited for.

    Parameters
    ----------
    service
        The service to poll with (its store, providers and clock).
    interval
        Seconds between runs; ``PollingConfig.interval_ms`` by default.
    out
        Where progress lines go (``None``: silent).
    max_runs
        Stop after this many runs (failed ones included; a failed run is reported
        through ``out`` and logged, and polling goes on).
    until_idle
        Stop once no record is left to poll.
    handle_signals
        Install the SIGINT/SIGTERM handlers (only possible in the main thread).

    Returns
    -------
    RunReport
        The sum of all runs (:meth:`RunReport.combine`).

    Examples
    --------
    >>> from datetime import datetime, UTC
    >>> from kmsg_analytics import DeliveryTrackingService, InMemoryTrackingStore
    >>> from kmsg_analytics._simulated import SimulatedClock, SimulatedProvider, demo_sends
    >>> clock = SimulatedClock(datetime(2026, 11, 1, tzinfo=UTC))
    >>> gateway = SimulatedProvider("solapi", seed=7, never_resolve_rate=0.0)
    >>> svc = DeliveryTrackingService([gateway], clock=clock,
    ...                               store=InMemoryTrackingStore(hash_key="doctest-key"))
    >>> svc.record_sends(demo_sends([gateway], 20, start=clock(), seed=7))
    20
    >>> total = poll_until_stopped(svc, until_idle=True, out=None)
    >>> svc.count_records(status=["PENDING", "SENT"])
    0
    >>> svc.close()
    """
    cfg = coerce_polling(service.polling)
    wait_s = cfg.interval_ms / 1000 if interval is None else float(interval)
    if wait_s < 0 or wait_s != wait_s:
        raise InvalidRecordError("interval", interval, "a number of seconds >= 0")
    emit: Callable[[str], object] = out if out is not None else (lambda _line: None)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        stop.set()

    previous: dict[int, Any] = {}
    if handle_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    advance_to = getattr(service.clock, "advance_to", None)
    reports: list[RunReport] = []
    try:
        attempts = 0
        while not stop.is_set():
            attempts += 1
            try:
                report = service.run_once()
            except Exception as err:  # like start(): one failed run never ends polling
                log.exception("polling run %d failed", attempts)
                emit(f"run {attempts} failed: {type(err).__name__}: {err}; polling goes on")
                if max_runs is not None and attempts >= max_runs:
                    break
                stop.wait(wait_s)
                continue
            reports.append(report)
            stamp = report.started_at.strftime("%Y-%m-%d %H:%M:%S") if report.started_at else "-"
            emit(f"[{stamp}] run {attempts}: {report.summary_line()}")
            if max_runs is not None and attempts >= max_runs:
                break
            upcoming = (
                service.store.list_due(_FAR_FUTURE, 1)
                if (until_idle or callable(advance_to))
                else None
            )
            if until_idle and not upcoming:
                emit("nothing left to poll")
                break
            if callable(advance_to):
                now = coerce_time(service.clock(), "clock()")
                target = now + timedelta(seconds=wait_s)
                if upcoming:
                    target = max(target, upcoming[0].next_check_at)
                advance_to(target)
                if upcoming or report.due:
                    continue
            stop.wait(wait_s)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        emit(f"stopped by {signal.Signals(received[0]).name}; every run's snapshots are written")
    return RunReport.combine(reports)
