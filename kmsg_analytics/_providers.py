"""What the polling runner asks gateways and what it is configured with.

A *provider* is any object with an ``id``; one that can report delivery status also
has ``get_delivery_status(query)``, plain or ``async``, answering a
:class:`DeliveryStatusResult`, ``None`` ("nothing yet"), or raising
:class:`ProviderError`. :class:`PollingConfig` and :class:`ApiFailoverConfig` hold the
runner's settings; :class:`RunReport` is what one run did.
"""

# ruff: noqa: EM101, EM102 - InvalidRecordError/ProviderError take codes and fields, not messages

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ._errors import InvalidRecordError, KmsgAnalyticsError
from ._records import DELIVERY_STATUSES, coerce_optional_time, coerce_status, pick

if TYPE_CHECKING:
    from ._failover import FailoverClassification

__all__ = [
    "ApiFailoverConfig",
    "DeliveryStatusQuery",
    "DeliveryStatusResult",
    "FailoverRule",
    "PollingConfig",
    "Provider",
    "ProviderError",
    "RunReport",
    "StatusProvider",
]

#: k-msg's default retry classification of its error codes (``ErrorUtils``).
RETRYABLE_CODES: frozenset[str] = frozenset(
    {
        "NETWORK_ERROR",
        "RATE_LIMIT_EXCEEDED",
        "NETWORK_TIMEOUT",
        "NETWORK_SERVICE_UNAVAILABLE",
        "PROVIDER_ERROR",
        "UNKNOWN_ERROR",
    }
)
NON_RETRYABLE_CODES: frozenset[str] = frozenset(
    {
        "INVALID_REQUEST",
        "AUTHENTICATION_FAILED",
        "INSUFFICIENT_BALANCE",
        "TEMPLATE_NOT_FOUND",
        "MESSAGE_SEND_FAILED",
        "REQUEST_ABORTED",
        "CRYPTO_CONFIG_ERROR",
        "CRYPTO_ENCRYPT_FAILED",
        "CRYPTO_DECRYPT_FAILED",
        "CRYPTO_HASH_FAILED",
        "CRYPTO_POLICY_VIOLATION",
    }
)
_RETRY_WORDS = ("timeout", "temporar", "network", "retry")
_STATUSES = frozenset(DELIVERY_STATUSES)
_LO, _HI = datetime(2000, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)
_MAX_MESSAGE = 1000


# --------------------------------------------------------------------------- provider protocol


@dataclass(frozen=True, slots=True)
class DeliveryStatusQuery:
    """What a provider is asked about one message.

    The first five fields are k-msg's. ``to`` is the recipient number only where the
    store keeps numbers in clear (``keep_numbers=True``); by default it is ``None`` and
    ``to_masked`` (``010****5678``) is all the runner has. ``checked_at`` is the
    service clock's time of the check (simulated gateways use it), ``attempt`` the
    check's number (the record's ``attempt_count`` after it).

    Examples
    --------
    >>> from datetime import datetime, UTC
    >>> q = DeliveryStatusQuery("G1", "SMS", None, datetime(2026, 11, 1, tzinfo=UTC))
    >>> q.provider_message_id, q.to
    ('G1', None)
    """

    provider_message_id: str
    type: str
    to: str | None
    requested_at: datetime
    scheduled_at: datetime | None = None
    message_id: str | None = None
    to_masked: str | None = None
    checked_at: datetime | None = None
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class DeliveryStatusResult:
    """A provider's answer about one message.

    ``status`` must be one of the six delivery statuses; ``status_code`` and
    ``status_message`` are the gateway's own (an integer code becomes text, very long
    text is cut to 1,000 characters); times may be datetimes, ISO strings or epoch
    milliseconds (naive means UTC). ``raw`` is stored only when
    ``PollingConfig(store_raw=True)``.

    Examples
    --------
    >>> r = DeliveryStatusResult("solapi", "G1", "FAILED", status_code=3104,
    ...                          status_message="카카오톡 미사용자")
    >>> r.status_code
    '3104'
    >>> DeliveryStatusResult("solapi", "G1", "DONE")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    kmsg_analytics._errors.InvalidRecordError: invalid result.status='DONE': expected one of ...
    """

    provider_id: str
    provider_message_id: str
    status: str
    status_code: str | None = None
    status_message: str | None = None
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    failed_at: datetime | None = None
    raw: Any = None

    def __post_init__(self) -> None:
        # straight-line fast paths: a runner sees one of these per check
        if self.status not in _STATUSES:
            coerce_status(self.status, "result.status")
        code, message = self.status_code, self.status_message
        if code is not None and (type(code) is not str or len(code) > _MAX_MESSAGE):
            object.__setattr__(self, "status_code", _text(code, "result.status_code"))
        if message is not None and (type(message) is not str or len(message) > _MAX_MESSAGE):
            object.__setattr__(self, "status_message", _text(message, "result.status_message"))
        sent, delivered, failed = self.sent_at, self.delivered_at, self.failed_at
        if sent is not None and not _utc(sent):
            object.__setattr__(self, "sent_at", coerce_optional_time(sent, "result.sent_at"))
        if delivered is not None and not _utc(delivered):
            object.__setattr__(
                self, "delivered_at", coerce_optional_time(delivered, "result.delivered_at")
            )
        if failed is not None and not _utc(failed):
            object.__setattr__(self, "failed_at", coerce_optional_time(failed, "result.failed_at"))


def _utc(value: object) -> bool:
    """An aware UTC datetime in the range we accept (no conversion needed)."""
    return type(value) is datetime and value.tzinfo is UTC and _LO <= value < _HI


def _text(value: object, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidRecordError(name, value, "a string or None")
    return value[:_MAX_MESSAGE]


def coerce_status_result(
    value: object, provider_id: str, provider_message_id: str
) -> DeliveryStatusResult | None:
    """Accept a provider's answer: ``None``, a :class:`DeliveryStatusResult` or a mapping.

    A mapping may use our snake_case names or k-msg's camelCase ones; missing ids are
    taken from the query.
    """
    if value is None or isinstance(value, DeliveryStatusResult):
        return value
    if not isinstance(value, Mapping):
        msg = "a DeliveryStatusResult, a mapping with a status, or None"
        raise InvalidRecordError("get_delivery_status()", value, msg)
    return DeliveryStatusResult(
        provider_id=pick(value, "provider_id") or provider_id,
        provider_message_id=pick(value, "provider_message_id") or provider_message_id,
        status=pick(value, "status"),
        status_code=pick(value, "status_code"),
        status_message=pick(value, "status_message"),
        sent_at=pick(value, "sent_at"),
        delivered_at=pick(value, "delivered_at"),
        failed_at=pick(value, "failed_at"),
        raw=pick(value, "raw"),
    )


@runtime_checkable
class Provider(Protocol):
    """A gateway: anything with a string ``id`` (``solapi``, ``iwinv``, ...).

    One that can report delivery status also has ``get_delivery_status``
    (see :class:`StatusProvider`); one without it is handled by
    ``PollingConfig.unsupported_provider_strategy``.
    """

    @property
    def id(self) -> str: ...


@runtime_checkable
class StatusProvider(Provider, Protocol):
    """A provider that can be asked for delivery status (plain or ``async``)."""

    def get_delivery_status(
        self, query: DeliveryStatusQuery
    ) -> DeliveryStatusResult | Awaitable[DeliveryStatusResult | None] | None: ...


class ProviderError(KmsgAnalyticsError):
    """What a provider raises when a status lookup fails.

    ``retryable=True`` keeps the message's status and checks again by backoff;
    ``False`` finalises the record as ``UNKNOWN`` with this error. When ``retryable``
    is not given it follows k-msg's default policy: by the code (``NETWORK_ERROR``,
    ``NETWORK_TIMEOUT``, ``RATE_LIMIT_EXCEEDED``, ``PROVIDER_ERROR``, ... retry;
    ``INVALID_REQUEST``, ``AUTHENTICATION_FAILED``, ... do not), else by words of the
    message ("timeout", "network", ...), else not retryable.

    Examples
    --------
    >>> ProviderError("NETWORK_TIMEOUT", "no answer in 10 s").retryable
    True
    >>> ProviderError("INVALID_REQUEST", "providerMessageId is required").retryable
    False
    >>> str(ProviderError("PROVIDER_ERROR", "HTTP 503", retryable=False))
    'PROVIDER_ERROR: HTTP 503'
    """

    def __init__(self, code: str, message: str = "", *, retryable: bool | None = None) -> None:
        if not isinstance(code, str) or not code.strip():
            raise InvalidRecordError(
                "ProviderError.code", code, "a non-empty error code such as 'NETWORK_ERROR'"
            )
        self.code = code.strip()
        self.message = str(message)[:_MAX_MESSAGE]
        self.retryable = (
            classify_retryable(self.code, self.message) if retryable is None else bool(retryable)
        )
        super().__init__(f"{self.code}: {self.message}" if self.message else self.code)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_provider_error, (self.code, self.message, self.retryable))


def _rebuild_provider_error(code: str, message: str, retryable: bool) -> ProviderError:
    return ProviderError(code, message, retryable=retryable)


def classify_retryable(code: str, message: str = "") -> bool:
    """k-msg's default retry classification of an error code (then of its message)."""
    if code in RETRYABLE_CODES:
        return True
    if code in NON_RETRYABLE_CODES:
        return False
    lowered = message.lower()
    return any(word in lowered for word in _RETRY_WORDS)


# --------------------------------------------------------------------------- polling config


_DEFAULT_BACKOFF_MS: tuple[int, ...] = (30_000, 120_000, 600_000, 1_800_000, 7_200_000)
UnsupportedStrategy = Literal["skip", "unknown"]


@dataclass(frozen=True, slots=True)
class PollingConfig:
    """Settings of the polling runner (k-msg's defaults).

    Parameters
    ----------
    interval_ms
        Time between runs of :meth:`DeliveryTrackingService.start` (> 0).
    batch_size
        At most this many due records per run (>= 1).
    concurrency
        At most this many status checks at once (>= 1).
    initial_delay_ms, scheduled_grace_ms
        First check after a send / after a scheduled send's time (>= 0).
    backoff_ms
        Delay before the n-th next check: ``backoff_ms[min(n-1, len-1)]``; an empty
        sequence means 60 s. Entries are whole milliseconds >= 0.
    max_tracking_duration_ms
        Give up (``UNKNOWN``, ``TRACKING_TIMEOUT``) after this long (> 0).
    unsupported_provider_strategy
        ``"skip"`` (keep polling by backoff) or ``"unknown"`` (finalise at once) for a
        provider without ``get_delivery_status``.
    check_timeout_ms
        Beyond k-msg: a status check that takes longer counts as a retryable
        ``NETWORK_TIMEOUT`` (``None``: wait forever).
    store_raw
        Keep providers' raw payloads in the ``raw`` column (off: they may hold numbers).

    Examples
    --------
    >>> PollingConfig().backoff_ms
    (30000, 120000, 600000, 1800000, 7200000)
    >>> PollingConfig(batch_size=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    kmsg_analytics._errors.InvalidRecordError: invalid polling.batch_size=0: expected a whole ...
    """

    interval_ms: int = 5_000
    batch_size: int = 200
    concurrency: int = 10
    initial_delay_ms: int = 30_000
    scheduled_grace_ms: int = 120_000
    backoff_ms: Sequence[int] = _DEFAULT_BACKOFF_MS
    max_tracking_duration_ms: int = 86_400_000
    unsupported_provider_strategy: UnsupportedStrategy = "skip"
    check_timeout_ms: int | None = 30_000
    store_raw: bool = False

    def __post_init__(self) -> None:
        _whole(self.interval_ms, "polling.interval_ms", 1)
        _whole(self.batch_size, "polling.batch_size", 1)
        _whole(self.concurrency, "polling.concurrency", 1)
        _whole(self.initial_delay_ms, "polling.initial_delay_ms", 0)
        _whole(self.scheduled_grace_ms, "polling.scheduled_grace_ms", 0)
        _whole(self.max_tracking_duration_ms, "polling.max_tracking_duration_ms", 1)
        if self.check_timeout_ms is not None:
            _whole(self.check_timeout_ms, "polling.check_timeout_ms", 1)
        backoff = self.backoff_ms
        if isinstance(backoff, str | bytes | Mapping) or not isinstance(backoff, Iterable):
            raise InvalidRecordError(
                "polling.backoff_ms", backoff, "a list of whole milliseconds >= 0"
            )
        items = tuple(backoff)
        for i, item in enumerate(items):
            _whole(item, f"polling.backoff_ms[{i}]", 0)
        object.__setattr__(self, "backoff_ms", items)
        if self.unsupported_provider_strategy not in ("skip", "unknown"):
            raise InvalidRecordError(
                "polling.unsupported_provider_strategy",
                self.unsupported_provider_strategy,
                "'skip' or 'unknown'",
            )
        if not isinstance(self.store_raw, bool):
            raise InvalidRecordError("polling.store_raw", self.store_raw, "True or False")


def _whole(value: object, name: str, minimum: int) -> int:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidRecordError(name, value, f"a whole number >= {minimum}")
    return value


_POLLING_FIELDS = tuple(f.name for f in fields(PollingConfig))


def coerce_polling(value: object) -> PollingConfig:
    """``None`` (defaults), a :class:`PollingConfig`, or a mapping in snake_ or camelCase."""
    if value is None:
        return PollingConfig()
    if isinstance(value, PollingConfig):
        return value
    if not isinstance(value, Mapping):
        raise InvalidRecordError(
            "polling", value, "a PollingConfig, a mapping of its settings, or None"
        )
    given: dict[str, Any] = {}
    for key, item in value.items():
        name = _snake(str(key))
        if name not in _POLLING_FIELDS:
            raise InvalidRecordError("polling", key, "settings among " + ", ".join(_POLLING_FIELDS))
        given[name] = item
    return PollingConfig(**given)


def _snake(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


# --------------------------------------------------------------------------- failover config


@dataclass(frozen=True, slots=True)
class FailoverRule:
    """When a provider's failure means "recipient does not use KakaoTalk".

    Matches when the status code is one of ``status_codes`` (exactly) or the status
    message contains one of ``message_includes``.

    Examples
    --------
    >>> FailoverRule(status_codes=["K105"], message_includes="미사용").message_includes
    ('미사용',)
    """

    status_codes: Sequence[str] = ()
    message_includes: Sequence[str] = ()

    def __post_init__(self) -> None:
        for name in ("status_codes", "message_includes"):
            value = getattr(self, name)
            items = (value,) if isinstance(value, str) else value
            if not isinstance(items, Iterable) or isinstance(items, Mapping | bytes):
                raise InvalidRecordError(f"FailoverRule.{name}", value, "a list of strings")
            items = tuple(items)
            for item in items:
                if not isinstance(item, str) or not item:
                    raise InvalidRecordError(f"FailoverRule.{name}", item, "a non-empty string")
            object.__setattr__(self, name, items)

    def matches(self, status_code: str | None, status_message: str | None) -> bool:
        """Whether a failure with this code and message matches the rule."""
        if status_code and status_code in self.status_codes:
            return True
        return isinstance(status_message, str) and any(
            t in status_message for t in self.message_includes
        )


FailoverSender = Callable[..., Any]


@dataclass(frozen=True)
class ApiFailoverConfig:
    """AlimTalk to SMS/LMS failover done by the runner after a "no KakaoTalk" failure.

    Parameters
    ----------
    sender
        ``sender(send_input, context)``, plain or ``async``: sends the fallback
        (a :class:`~kmsg_analytics._failover.FailoverSendInput`) and returns a
        ``SendResult`` (or an object/mapping with ``message_id`` and ``provider_id``),
        or raises (a :class:`ProviderError` gives its code and message; anything else
        is recorded as ``API_FAILOVER_SEND_EXCEPTION``).
    enabled
        ``False`` turns failover off without removing the configuration.
    classify_non_kakao_user
        ``f(classification) -> bool`` deciding "does not use KakaoTalk" (an exception
        counts as no); overrides the rules below.
    rules_by_provider_id
        ``{provider_id: FailoverRule}`` tried before the built-in SOLAPI/IWINV rules.

    Examples
    --------
    >>> cfg = ApiFailoverConfig(print, rules_by_provider_id={"aligo": {"status_codes": ["K105"]}})
    >>> cfg.rules_by_provider_id["aligo"]
    FailoverRule(status_codes=('K105',), message_includes=())
    """

    sender: FailoverSender | None
    _: KW_ONLY
    enabled: bool = True
    classify_non_kakao_user: Callable[[FailoverClassification], object] | None = None
    rules_by_provider_id: Mapping[str, FailoverRule] | None = None

    def __post_init__(self) -> None:
        if self.sender is not None and not callable(self.sender):
            raise InvalidRecordError(
                "api_failover.sender", self.sender, "a callable sender(send_input, context)"
            )
        if not isinstance(self.enabled, bool):
            raise InvalidRecordError("api_failover.enabled", self.enabled, "True or False")
        if self.classify_non_kakao_user is not None and not callable(self.classify_non_kakao_user):
            raise InvalidRecordError(
                "api_failover.classify_non_kakao_user",
                self.classify_non_kakao_user,
                "a callable or None",
            )
        rules = self.rules_by_provider_id
        if rules is None:
            return
        if not isinstance(rules, Mapping):
            raise InvalidRecordError(
                "api_failover.rules_by_provider_id", rules, "a mapping provider_id -> FailoverRule"
            )
        coerced: dict[str, FailoverRule] = {}
        for pid, rule in rules.items():
            if isinstance(rule, Mapping):
                rule = FailoverRule(
                    status_codes=pick(rule, "status_codes") or (),
                    message_includes=pick(rule, "message_includes") or (),
                )
            if not isinstance(rule, FailoverRule):
                raise InvalidRecordError(
                    f"api_failover.rules_by_provider_id[{pid!r}]", rule, "a FailoverRule"
                )
            coerced[str(pid)] = rule
        object.__setattr__(self, "rules_by_provider_id", coerced)


def coerce_api_failover(value: object) -> ApiFailoverConfig | None:
    """``None``, an :class:`ApiFailoverConfig`, or a mapping of its arguments."""
    if value is None or isinstance(value, ApiFailoverConfig):
        return value
    if not isinstance(value, Mapping):
        raise InvalidRecordError("api_failover", value, "an ApiFailoverConfig, a mapping, or None")
    enabled = pick(value, "enabled")
    return ApiFailoverConfig(
        pick(value, "sender"),
        enabled=True if enabled is None else enabled,
        classify_non_kakao_user=pick(value, "classify_non_kakao_user"),
        rules_by_provider_id=pick(value, "rules_by_provider_id"),
    )


# --------------------------------------------------------------------------- run report


@dataclass(frozen=True)
class RunReport:
    """What one polling run did (or, from :meth:`combine`, several).

    Attributes
    ----------
    started_at
        The service clock's time of the run (every check of a run uses it).
    due
        Records taken from the due list (at most ``batch_size``).
    checked
        Due records handled by a rule (all but ``skipped_not_due``).
    skipped_not_due
        Scheduled records whose grace period had not ended (rule 2).
    changed, became_terminal
        Records whose status changed / that reached a terminal status.
    errors_by_code
        ``last_error`` codes set by this run (``TRACKING_TIMEOUT``, provider codes, ...).
    transitions
        ``"SENT->DELIVERED"``-style counts of status changes.
    failover
        API failover outcomes (``sent``, ``failed``, ``skipped``).
    written, dropped
        Snapshots written; checks not written because the record became terminal
        elsewhere during the run (a terminal status is never replaced).
    lock_wait, duration
        Seconds spent waiting for another runner of the same lake / in the whole run.
    lock_busy
        The run gave up waiting for another runner because ``stop()`` was called.
    phases
        Seconds spent in each part of the run: ``list_due``, ``checks`` (waiting for
        providers included), ``guard`` (re-reading terminal states), ``write``, and
        ``failover`` when fallbacks were sent.
    runs
        How many runs this report sums.

    Examples
    --------
    >>> RunReport(due=3, checked=3, changed=2, errors_by_code={"NETWORK_TIMEOUT": 1})
    ... # doctest: +NORMALIZE_WHITESPACE
    RunReport(due=3, checked=3, changed=2, became_terminal=0, skipped_not_due=0,
              errors={'NETWORK_TIMEOUT': 1}, duration=0.000s)
    """

    started_at: datetime | None = None
    due: int = 0
    checked: int = 0
    changed: int = 0
    became_terminal: int = 0
    skipped_not_due: int = 0
    errors_by_code: Mapping[str, int] = field(default_factory=dict)
    transitions: Mapping[str, int] = field(default_factory=dict)
    failover: Mapping[str, int] = field(default_factory=dict)
    written: int = 0
    dropped: int = 0
    lock_wait: float = 0.0
    duration: float = 0.0
    lock_busy: bool = False
    runs: int = 1
    phases: Mapping[str, float] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        """How many checks ended with an error."""
        return sum(self.errors_by_code.values())

    def __repr__(self) -> str:
        extra = ""
        if self.runs != 1:
            extra += f", runs={self.runs}"
        if self.failover:
            extra += f", failover={dict(self.failover)!r}"
        if self.dropped:
            extra += f", dropped={self.dropped}"
        if self.lock_busy:
            extra += ", lock_busy=True"
        return (
            f"RunReport(due={self.due}, checked={self.checked}, changed={self.changed}, "
            f"became_terminal={self.became_terminal}, skipped_not_due={self.skipped_not_due}, "
            f"errors={dict(self.errors_by_code)!r}{extra}, duration={self.duration:.3f}s)"
        )

    def summary_line(self) -> str:
        """One line for progress output (``due 200, checked 198, changed 57, ...``)."""
        parts = [f"due {self.due}", f"checked {self.checked}", f"changed {self.changed}"]
        if self.became_terminal:
            parts.append(f"final {self.became_terminal}")
        if self.errors_by_code:
            parts.append(
                "errors " + ", ".join(f"{k} {v}" for k, v in sorted(self.errors_by_code.items()))
            )
        if self.failover:
            parts.append(
                "failover " + ", ".join(f"{k} {v}" for k, v in sorted(self.failover.items()))
            )
        if self.lock_busy:
            parts.append("another runner holds the lake")
        parts.append(f"{self.duration:.2f}s")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    def _repr_html_(self) -> str:
        rows: list[tuple[str, object]] = [
            ("due", self.due),
            ("checked", self.checked),
            ("skipped (not yet due)", self.skipped_not_due),
            ("status changed", self.changed),
            ("became terminal", self.became_terminal),
            ("snapshots written", self.written),
        ]
        if self.dropped:
            rows.append(("dropped (terminal elsewhere)", self.dropped))
        for code, n in sorted(self.errors_by_code.items()):
            rows.append((f"error {code}", n))
        for change, n in sorted(self.transitions.items()):
            rows.append((change.replace("->", " → "), n))
        for outcome, n in sorted(self.failover.items()):
            rows.append((f"failover {outcome}", n))
        rows.append(("duration", f"{self.duration:.3f} s"))
        if self.phases:
            parts = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.phases.items())
            rows.append(("time spent", parts))
        if self.lock_wait >= 0.001:
            rows.append(("waited for another runner", f"{self.lock_wait:.3f} s"))
        title = "Polling run" if self.runs == 1 else f"Polling: {self.runs} runs"
        if self.started_at is not None:
            title += f" at {self.started_at.isoformat()}"
        cell = "<tr><th style='text-align:left'>{}</th><td>{}</td></tr>"
        body = "".join(cell.format(html.escape(str(k)), html.escape(str(v))) for k, v in rows)
        return f"<table><caption>{html.escape(title)}</caption>{body}</table>"

    @classmethod
    def combine(cls, reports: Iterable[RunReport]) -> RunReport:
        """The sum of several runs' reports (``started_at`` of the first).

        Examples
        --------
        >>> RunReport.combine([RunReport(due=2, checked=2), RunReport(due=1, checked=1)]).checked
        3
        """
        items = list(reports)
        if not items:
            return cls(runs=0)
        counts = {
            name: 0
            for name in (
                "due",
                "checked",
                "changed",
                "became_terminal",
                "skipped_not_due",
                "written",
                "dropped",
                "runs",
            )
        }
        errors: Counter[str] = Counter()
        transitions: Counter[str] = Counter()
        failover: Counter[str] = Counter()
        phases: Counter[str] = Counter()
        lock_wait = duration = 0.0
        for r in items:
            for name in counts:
                counts[name] += getattr(r, name)
            errors.update(r.errors_by_code)
            transitions.update(r.transitions)
            failover.update(r.failover)
            phases.update(r.phases)
            lock_wait += r.lock_wait
            duration += r.duration
        return cls(
            started_at=items[0].started_at,
            errors_by_code=dict(errors),
            transitions=dict(transitions),
            failover=dict(failover),
            lock_wait=lock_wait,
            duration=duration,
            lock_busy=any(r.lock_busy for r in items),
            phases=dict(phases),
            **counts,
        )
