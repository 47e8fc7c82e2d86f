"""Simulated gateways and a simulated clock, for demos, notebooks and tests.

:class:`SimulatedProvider` behaves like SOLAPI or IWINV as seen through k-msg: a
message is not found for a moment after the send, then pending, then handed to the
carrier, then delivered or failed after a long-tailed delay that depends on the
message type, with the gateways' own status codes and Korean messages (SOLAPI
``3104`` "카카오톡 미사용자", ``3043`` "단말기 Power off", ...). Some lookups fail
with retryable errors or time out, and a few messages never resolve. Everything is
drawn from the seed and the provider message id, so the same seed gives the same
story whatever order messages are asked in. It answers from its own state, never
from the lake, and reads time from the query's ``checked_at`` (the service clock),
so a :class:`SimulatedClock` drives it without sleeping.

SOLAPI codes and texts follow SOLAPI's status code table. IWINV AlimTalk failures use
Kakao BizMessage-style codes and IWINV SMS codes are illustrative (IWINV's tables
are not public); their wording matches what k-msg's rules look for.
"""

# ruff: noqa: EM101 - InvalidRecordError/ProviderError take codes and fields, not messages

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

from ._errors import InvalidRecordError
from ._providers import DeliveryStatusQuery, DeliveryStatusResult, ProviderError
from ._records import (
    FailoverOptions,
    HookContext,
    SendOptions,
    SendResult,
    SendWarning,
    coerce_context,
    coerce_time,
)

__all__ = ["SimulatedClock", "SimulatedFate", "SimulatedProvider", "demo_sends"]

_KST = timezone(timedelta(hours=9))
_DEFAULT_START = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)


class SimulatedClock:
    """A clock that moves only when told to (never backwards); call it for the time.

    Examples
    --------
    >>> clock = SimulatedClock("2026-11-01T09:00:00+09:00")
    >>> clock.advance(90)
    >>> clock().isoformat()
    '2026-11-01T00:01:30+00:00'
    """

    def __init__(self, start: datetime | str | int | None = None) -> None:
        self._now = _DEFAULT_START if start is None else coerce_time(start, "start")
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        return self._now

    def __repr__(self) -> str:
        return f"SimulatedClock({self._now.isoformat()!r})"

    def advance(self, seconds: float | timedelta = 0.0) -> None:
        """Move forward by ``seconds`` (or a ``timedelta``)."""
        step = seconds if isinstance(seconds, timedelta) else timedelta(seconds=float(seconds))
        if step < timedelta(0):
            raise InvalidRecordError(
                "seconds", seconds, "a duration >= 0 (a simulated clock never goes back)"
            )
        with self._lock:
            self._now += step

    def advance_to(self, moment: datetime | str | int) -> None:
        """Move forward to ``moment`` (nothing happens if it is not later)."""
        target = coerce_time(moment, "moment")
        with self._lock:
            if target > self._now:
                self._now = target


# --------------------------------------------------------------------------- profiles

ProfileName = Literal["solapi", "iwinv"]

#: Median seconds from hand-over to the carrier until the final report, and the
#: lognormal spread, per message type.
_DELAY: Mapping[str, tuple[float, float]] = {
    "SMS": (3.0, 0.9), "LMS": (5.0, 0.9), "MMS": (12.0, 1.0), "ALIMTALK": (1.5, 0.8),
    "FRIENDTALK": (1.5, 0.8), "NSA": (3.0, 0.9), "VOICE": (25.0, 0.7), "FAX": (60.0, 0.8),
    "RCS_SMS": (4.0, 0.9), "RCS_LMS": (5.0, 0.9), "RCS_MMS": (10.0, 1.0), "RCS_TPL": (4.0, 0.9),
    "RCS_ITPL": (4.0, 0.9), "RCS_LTPL": (4.0, 0.9),
}  # fmt: skip

#: Share of messages that fail, per type (AlimTalk: many recipients lack KakaoTalk).
DEFAULT_FAILURE_RATES: Mapping[str, float] = {
    "SMS": 0.03, "LMS": 0.04, "MMS": 0.06, "ALIMTALK": 0.10, "FRIENDTALK": 0.15, "NSA": 0.05,
    "VOICE": 0.20, "FAX": 0.10, "RCS_SMS": 0.05, "RCS_LMS": 0.05, "RCS_MMS": 0.06, "RCS_TPL": 0.05,
    "RCS_ITPL": 0.05, "RCS_LTPL": 0.05,
}  # fmt: skip

_Failure = tuple[str, str, int]  # code, message, weight

_SOLAPI_CARRIER: Sequence[_Failure] = (
    ("3040", "전송시간 초과", 20), ("3043", "단말기 Power off", 12), ("3032", "미가입자", 15),
    ("3047", "착신거절", 10), ("3041", "단말기 busy", 8), ("3042", "음영지역", 8),
    ("3044", "단말기 메시지 저장갯수 초과", 5), ("3050", "SMS 불가 단말", 4), ("3054", "스팸", 4),
    ("3059", "변작된 발신번호", 3), ("1062", "발신번호 미등록", 3), ("1060", "차단된 수신번호", 3),
    ("2061", "080 수신거부", 3),
)  # fmt: skip
_SOLAPI_FAILURES: Mapping[str, Sequence[_Failure]] = {
    "ALIMTALK": (
        ("3104", "카카오톡 미사용자", 55), ("3107", "72시간 내 미사용자 / 알림톡 차단", 15),
        ("3103", "템플릿 불일치", 8), ("3105", "미등록 템플릿", 5),
        ("3106", "유효하지 않은 채널", 4), ("3108", "발송 가능시간 아님 (08–20시)", 3),
    ),
    "FRIENDTALK": (
        ("3102", "친구 아님", 40), ("3104", "카카오톡 미사용자", 40),
        ("3108", "발송 가능시간 아님 (08–20시)", 20),
    ),
    "*": _SOLAPI_CARRIER,
}  # fmt: skip
_IWINV_FAILURES: Mapping[str, Sequence[_Failure]] = {
    "ALIMTALK": (
        ("3019", "카카오톡 미사용자", 60), ("3020", "알림톡 수신 차단", 15),
        ("3016", "메시지 내용이 템플릿과 일치하지 않음", 10), ("3008", "전화번호 오류", 10),
        ("3018", "메시지를 전송할 수 없음", 5),
    ),
    "*": (
        ("07", "결번", 25), ("08", "단말기 전원 꺼짐", 20), ("09", "음영 지역", 15),
        ("10", "착신 거절", 15), ("11", "단말기 메시지 저장개수 초과", 10), ("99", "기타 오류", 15),
    ),
}  # fmt: skip
_IWINV_TYPES = frozenset({"ALIMTALK", "SMS", "LMS", "MMS"})

_TRANSIENT: Mapping[str, Sequence[tuple[str, str]]] = {
    "solapi": (
        ("PROVIDER_ERROR", "RequestFailedAfterRetryError: HTTP 503 Service Unavailable"),
        ("NETWORK_ERROR", "fetch failed: ECONNRESET"),
        ("UNKNOWN_ERROR", "ResponseSchemaMismatchError: messageList"),
    ),
    "iwinv": (
        ("PROVIDER_ERROR", "IWINV history query failed"),
        ("RATE_LIMIT_EXCEEDED", "요청 한도를 초과했습니다 (HTTP 429)"),
    ),
}
_TIMEOUT: Mapping[str, str] = {
    "solapi": "SOLAPI message lookup timed out",
    "iwinv": "The operation was aborted due to timeout",
}


@dataclass(frozen=True, slots=True)
class SimulatedFate:
    """How one simulated message goes (drawn once from the seed and its id).

    Before ``accepted_at`` the gateway does not know the message (``None``); until
    ``submitted_at`` it is pending; until ``final_at`` it is with the carrier (SOLAPI:
    ``SENT``; IWINV: still pending). ``final_at=None`` means it never resolves.
    """

    provider_message_id: str
    type: str
    accepted_at: datetime
    submitted_at: datetime | None
    final_at: datetime | None
    final_status: Literal["DELIVERED", "FAILED"] | None
    status_code: str | None
    status_message: str | None


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _pick(rng: random.Random, options: Sequence[_Failure]) -> tuple[str, str]:
    code, message, _w = rng.choices(options, weights=[w for *_x, w in options])[0]
    return code, message


def _rate(value: float, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise InvalidRecordError(name, value, "a share between 0 and 1")
    return float(value)


class SimulatedProvider:
    """A seeded, realistic gateway for demos and tests (``async get_delivery_status``).

    Parameters
    ----------
    id
        The provider id (``"solapi"``, ``"iwinv"``, or any other: it behaves like
        ``profile``).
    seed
        Same seed, same answers.
    profile
        ``"solapi"`` or ``"iwinv"`` behaviour; from ``id`` when it is one of them.
    clock
        Time for lookups without ``checked_at`` and for :meth:`send`.
    latency_ms
        Real time each lookup takes (``asyncio.sleep``); 0 by default.
    error_rate, timeout_rate
        Share of lookups that fail with a retryable gateway error / a timeout.
    never_resolve_rate
        Share of messages that stay pending forever (until the tracking timeout).
    tail_rate
        Share of messages delayed by 10 minutes to 6 hours (a phone switched off).
    failure_rates
        Share of messages that fail, per type (a float for every type at once).
    failover_support
        What a send of an AlimTalk asking for SMS failover is told: ``"none"``
        (warning ``FAILOVER_UNSUPPORTED_PROVIDER``), ``"partial"``
        (``FAILOVER_PARTIAL_PROVIDER``) or ``"native"`` (no warning).
    adopt_unknown
        Answer for messages this simulator did not send (their fate is drawn on
        first lookup); otherwise they are never found.

    Examples
    --------
    >>> import asyncio
    >>> from datetime import datetime, UTC
    >>> gw = SimulatedProvider("solapi", seed=3, error_rate=0, timeout_rate=0)
    >>> t0 = datetime(2026, 11, 1, tzinfo=UTC)
    >>> q = DeliveryStatusQuery("M4V-DEMO", "SMS", None, t0, checked_at=t0 + timedelta(hours=1))
    >>> asyncio.run(gw.get_delivery_status(q)).status
    'DELIVERED'
    """

    def __init__(
        self,
        id: str = "solapi",
        *,
        seed: int = 0,
        profile: ProfileName | None = None,
        clock: Callable[[], datetime] | None = None,
        latency_ms: float = 0.0,
        error_rate: float = 0.02,
        timeout_rate: float = 0.01,
        never_resolve_rate: float = 0.01,
        tail_rate: float = 0.03,
        failure_rates: Mapping[str, float] | float | None = None,
        failover_support: Literal["none", "partial", "native"] = "none",
        adopt_unknown: bool = True,
    ) -> None:
        if not isinstance(id, str) or not id.strip():
            raise InvalidRecordError("id", id, "a non-empty provider id such as 'solapi'")
        self.id = id
        self.seed = seed
        if profile is None:
            profile = "iwinv" if id == "iwinv" else "solapi"
        if profile not in ("solapi", "iwinv"):
            raise InvalidRecordError("profile", profile, "'solapi' or 'iwinv'")
        self.profile: ProfileName = profile
        self.clock = clock
        if not isinstance(latency_ms, int | float) or latency_ms < 0:
            raise InvalidRecordError("latency_ms", latency_ms, "milliseconds >= 0")
        self.latency_ms = float(latency_ms)
        self.error_rate = _rate(error_rate, "error_rate")
        self.timeout_rate = _rate(timeout_rate, "timeout_rate")
        self.never_resolve_rate = _rate(never_resolve_rate, "never_resolve_rate")
        self.tail_rate = _rate(tail_rate, "tail_rate")
        if failure_rates is None:
            rates = dict(DEFAULT_FAILURE_RATES)
        elif isinstance(failure_rates, Mapping):
            rates = {
                **DEFAULT_FAILURE_RATES,
                **{k: _rate(v, f"failure_rates[{k!r}]") for k, v in failure_rates.items()},
            }
        else:
            share = _rate(failure_rates, "failure_rates")
            rates = dict.fromkeys(DEFAULT_FAILURE_RATES, share)
        self.failure_rates: Mapping[str, float] = rates
        if failover_support not in ("none", "partial", "native"):
            raise InvalidRecordError(
                "failover_support", failover_support, "'none', 'partial' or 'native'"
            )
        self.failover_support = failover_support
        self.adopt_unknown = adopt_unknown
        self._lock = threading.Lock()
        self._fates: dict[str, SimulatedFate] = {}
        self._lookups: dict[str, int] = {}
        self._sent = 0
        self.queries = 0

    def __repr__(self) -> str:
        return (
            f"SimulatedProvider({self.id!r}, seed={self.seed}, profile={self.profile!r}, "
            f"known={len(self._fates)})"
        )

    # ------------------------------------------------------------------ fates

    def _draw(self, pmid: str, type_: str, start: datetime) -> SimulatedFate:
        rng = _rng("fate", self.seed, self.profile, self.id, pmid)
        accepted = start + timedelta(seconds=rng.uniform(0.2, 2.0))
        failures = _SOLAPI_FAILURES if self.profile == "solapi" else _IWINV_FAILURES
        failed = rng.random() < self.failure_rates.get(type_, 0.05)
        code, message = _pick(rng, failures.get(type_, failures["*"])) if failed else (None, None)
        never = rng.random() < self.never_resolve_rate
        median, sigma = _DELAY.get(type_, (5.0, 0.9))
        if failed and code is not None and code[0] in "12" and len(code) == 4:
            # refused at intake (SOLAPI 1xxx/2xxx): never reaches a carrier
            return SimulatedFate(pmid, type_, accepted, None, accepted, "FAILED", code, message)
        submitted = accepted + timedelta(seconds=rng.lognormvariate(0.0, 0.5))
        if never:
            return SimulatedFate(pmid, type_, accepted, submitted, None, None, None, None)
        delay = rng.lognormvariate(math.log(median), sigma)
        if rng.random() < self.tail_rate:
            delay += rng.uniform(600.0, 6 * 3600.0)
        final = submitted + timedelta(seconds=delay)
        return SimulatedFate(
            pmid,
            type_,
            accepted,
            submitted,
            final,
            "FAILED" if failed else "DELIVERED",
            code,
            message,
        )

    def fate(self, provider_message_id: str) -> SimulatedFate | None:
        """The fate of a message this simulator knows (``None`` otherwise)."""
        with self._lock:
            return self._fates.get(provider_message_id)

    def lookups(self, provider_message_id: str) -> int:
        """How many times a message was looked up."""
        with self._lock:
            return self._lookups.get(provider_message_id, 0)

    def _now(self) -> datetime:
        return self.clock() if self.clock is not None else datetime.now(UTC)

    # ------------------------------------------------------------------ sending

    def _new_id(self, at: datetime, n: int) -> str:
        rng = _rng("id", self.seed, self.id, n)
        if self.profile == "iwinv":
            return str(10_000_000 + rng.randrange(0, 80_000_000))
        tail = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(15))
        return f"M4V{at.astimezone(_KST):%Y%m%d%H%M%S}{tail}"

    def send(self, context: HookContext | Mapping[str, Any]) -> SendResult:
        """Accept a send: the :class:`SendResult` the gateway answers (with its message id)."""
        ctx = coerce_context(context)
        type_ = ctx.options.type
        if self.profile == "iwinv" and type_ not in _IWINV_TYPES:
            raise ProviderError(
                "INVALID_REQUEST", f"IWINVProvider does not support type {type_}", retryable=False
            )
        start = ctx.options.scheduled_at or ctx.timestamp
        with self._lock:
            self._sent += 1
            pmid = self._new_id(ctx.timestamp, self._sent)
            self._fates[pmid] = self._draw(pmid, type_, start)
        warnings: tuple[SendWarning, ...] = ()
        fo = ctx.options.failover
        if (
            type_ == "ALIMTALK"
            and fo is not None
            and fo.enabled
            and self.failover_support != "native"
        ):
            code = (
                "FAILOVER_UNSUPPORTED_PROVIDER"
                if self.failover_support == "none"
                else "FAILOVER_PARTIAL_PROVIDER"
            )
            warnings = (SendWarning(code, f"{self.id} does not fail over to SMS by itself"),)
        return SendResult(ctx.message_id, self.id, pmid, type_, ctx.options.to, warnings)

    def send_fallback(self, send_input: Any, context: Any = None) -> SendResult:
        """A sender for :class:`ApiFailoverConfig`: accepts the SMS/LMS fallback."""
        at = self._now()
        with self._lock:
            self._sent += 1
            pmid = self._new_id(at, self._sent)
            self._fates[pmid] = self._draw(pmid, send_input.type, at)
        to = send_input.to or send_input.to_masked or ""
        return SendResult(send_input.message_id, self.id, pmid, send_input.type, to)

    # ------------------------------------------------------------------ status lookups

    async def get_delivery_status(self, query: DeliveryStatusQuery) -> DeliveryStatusResult | None:
        """Answer a status lookup as the gateway would at ``query.checked_at``."""
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        return self.answer(query)

    def answer(self, query: DeliveryStatusQuery) -> DeliveryStatusResult | None:
        """The lookup's answer (raises :class:`ProviderError` like the gateway fails)."""
        pmid = query.provider_message_id
        if not pmid.strip():
            raise ProviderError("INVALID_REQUEST", "providerMessageId is required", retryable=False)
        if self.profile == "iwinv" and query.type not in _IWINV_TYPES:
            raise ProviderError(
                "INVALID_REQUEST",
                f"IWINVProvider does not support type {query.type}",
                retryable=False,
            )
        now = query.checked_at or self._now()
        with self._lock:
            self.queries += 1
            n = self._lookups.get(pmid, 0) + 1
            self._lookups[pmid] = n
            fate = self._fates.get(pmid)
            if fate is None and self.adopt_unknown:
                fate = self._fates[pmid] = self._draw(
                    pmid, query.type, query.scheduled_at or query.requested_at
                )
        roll = _rng("lookup", self.seed, self.id, pmid, n).random()
        if roll < self.timeout_rate:
            raise ProviderError("NETWORK_TIMEOUT", _TIMEOUT[self.profile], retryable=True)
        if roll < self.timeout_rate + self.error_rate:
            options = _TRANSIENT[self.profile]
            code, message = options[int(roll * 1_000_003) % len(options)]
            raise ProviderError(code, message, retryable=True)
        if fate is None or now < fate.accepted_at:
            return None
        if self.profile == "iwinv":
            return self._iwinv(fate, now, query)
        return self._solapi(fate, now)

    def _solapi(self, fate: SimulatedFate, now: datetime) -> DeliveryStatusResult:
        final = fate.final_at is not None and now >= fate.final_at
        sent_at = (
            fate.submitted_at
            if fate.submitted_at is not None and now >= fate.submitted_at
            else None
        )
        code: str | None
        message: str | None
        if final and fate.final_status == "DELIVERED":
            status, code, message = "DELIVERED", "4000", "발송 처리 완료"
        elif final:
            status, code, message = "FAILED", fate.status_code, fate.status_message
        elif sent_at is not None:
            status, code, message = "SENT", "3000", "이통사 접수(리포트 대기)"
        else:
            status, code, message = "PENDING", "2000", "정상 접수"
        raw = {
            "messageId": fate.provider_message_id,
            "type": "ATA" if fate.type == "ALIMTALK" else fate.type,
            "statusCode": code,
            "reason": message,
            "dateCreated": fate.accepted_at.isoformat(),
            "dateProcessed": None if sent_at is None else sent_at.isoformat(),
            "dateReported": None
            if not final or fate.final_at is None
            else fate.final_at.isoformat(),
        }
        return DeliveryStatusResult(
            provider_id=self.id,
            provider_message_id=fate.provider_message_id,
            status=status,
            status_code=code,
            status_message=message,
            sent_at=sent_at,
            delivered_at=fate.final_at if final and status == "DELIVERED" else None,
            failed_at=fate.final_at if final and status == "FAILED" else None,
            raw=raw,
        )

    def _iwinv(
        self, fate: SimulatedFate, now: datetime, query: DeliveryStatusQuery
    ) -> DeliveryStatusResult:
        final = fate.final_at is not None and now >= fate.final_at
        alimtalk = query.type == "ALIMTALK"
        code: str | None
        message: str | None
        if final and fate.final_status == "DELIVERED":
            status = "DELIVERED"
            code, message = ("OK", "성공") if alimtalk else ("06", "전송 성공")
        elif final:
            status, code, message = "FAILED", fate.status_code, fate.status_message
        else:
            status = "PENDING"
            code, message = (None, None) if alimtalk else ("01", "처리중")
        sent_at = fate.final_at if final else None  # IWINV's sendDate
        kst = None if sent_at is None else f"{sent_at.astimezone(_KST):%Y-%m-%d %H:%M:%S}"
        raw = (
            {
                "seqNo": fate.provider_message_id,
                "statusCode": code,
                "statusCodeName": message,
                "sendDate": kst,
            }
            if alimtalk
            else {
                "requestNo": fate.provider_message_id,
                "sendStatusCode": code,
                "sendStatusMsg": message,
                "sendDate": kst,
            }
        )
        return DeliveryStatusResult(
            provider_id=self.id,
            provider_message_id=fate.provider_message_id,
            status=status,
            status_code=code,
            status_message=message,
            sent_at=sent_at,
            delivered_at=sent_at if status == "DELIVERED" else None,
            failed_at=sent_at if status == "FAILED" else None,
            raw=raw,
        )


_TYPE_MIX: Sequence[tuple[str, int]] = (("ALIMTALK", 50), ("SMS", 30), ("LMS", 15), ("MMS", 5))


def demo_sends(
    providers: Sequence[SimulatedProvider],
    n: int,
    *,
    start: datetime | None = None,
    every: timedelta = timedelta(seconds=1),
    seed: int = 0,
    scheduled_share: float = 0.05,
) -> list[tuple[HookContext, SendResult]]:
    """``n`` realistic sends through simulated gateways, ready for ``record_sends``.

    Half are AlimTalks asking for SMS failover, the rest SMS/LMS/MMS; a few are
    scheduled ten minutes ahead. Requested ``every`` apart from ``start``.

    Examples
    --------
    >>> gw = SimulatedProvider("solapi")
    >>> pairs = demo_sends([gw], 3, seed=1)
    >>> [ctx.message_id for ctx, _res in pairs]
    ['demo-1-00000', 'demo-1-00001', 'demo-1-00002']
    """
    if not providers:
        raise InvalidRecordError("providers", providers, "at least one SimulatedProvider")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise InvalidRecordError("n", n, "a whole number >= 0")
    t0 = _DEFAULT_START if start is None else coerce_time(start, "start")
    rng = _rng("demo", seed)
    types, weights = zip(*_TYPE_MIX, strict=True)
    out: list[tuple[HookContext, SendResult]] = []
    for i in range(n):
        type_ = rng.choices(types, weights=weights)[0]
        at = t0 + every * i
        scheduled = at + timedelta(minutes=10) if rng.random() < scheduled_share else None
        failover = None
        if type_ == "ALIMTALK":
            failover = FailoverOptions(
                enabled=True,
                fallback_channel="sms",
                fallback_content="[안내] 주문하신 상품이 발송되었습니다.",
            )
        context = HookContext(
            message_id=f"demo-{seed}-{i:05d}",
            timestamp=at,
            options=SendOptions(
                type=type_,
                to=f"010-{rng.randrange(2000, 9999)}-{rng.randrange(0, 10_000):04d}",
                from_="02-1588-0000",
                scheduled_at=scheduled,
                custom_fields={"campaign": "demo", "batch": seed},
                failover=failover,
            ),
        )
        provider = providers[i % len(providers)]
        out.append((context, provider.send(context)))
    return out
