"""The record model: statuses, message types, the tracking record, send inputs and filters.

Everything a user hands us passes through the ``coerce_*`` functions here, which
accept our frozen dataclasses or mappings in snake_case or in k-msg's JSON shape
(camelCase keys, ISO strings or epoch milliseconds) and raise
:class:`InvalidRecordError` naming the field and the value.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from ._errors import InvalidRecordError
from ._phone import _normalize, normalize_number

__all__ = [
    "DELIVERY_STATUSES",
    "MESSAGE_TYPES",
    "POLLABLE_STATUSES",
    "RETENTION_CLASSES",
    "TERMINAL_STATUSES",
    "FailoverOptions",
    "HookContext",
    "RecordFilter",
    "SendOptions",
    "SendResult",
    "SendWarning",
    "TrackingError",
    "TrackingRecord",
]

DELIVERY_STATUSES: tuple[str, ...] = (
    "PENDING",
    "SENT",
    "DELIVERED",
    "FAILED",
    "CANCELLED",
    "UNKNOWN",
)
TERMINAL_STATUSES: tuple[str, ...] = ("DELIVERED", "FAILED", "CANCELLED", "UNKNOWN")
POLLABLE_STATUSES: tuple[str, ...] = ("PENDING", "SENT")
MESSAGE_TYPES: tuple[str, ...] = (
    "ALIMTALK", "FRIENDTALK", "SMS", "LMS", "MMS", "NSA", "VOICE", "FAX",
    "RCS_SMS", "RCS_LMS", "RCS_MMS", "RCS_TPL", "RCS_ITPL", "RCS_LTPL",
)  # fmt: skip
RETENTION_CLASSES: tuple[str, ...] = ("opsLogs", "telecomMetadata", "billingEvidence")
DEFAULT_RETENTION_CLASS = "telecomMetadata"

_STATUS_SET = frozenset(DELIVERY_STATUSES)
_TYPE_SET = frozenset(MESSAGE_TYPES)
_RETENTION_SET = frozenset(RETENTION_CLASSES)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_TIME = datetime(2000, 1, 1, tzinfo=UTC)
_MAX_TIME = datetime(2200, 1, 1, tzinfo=UTC)
_MAX_ID_LEN = 256
_MAX_TEXT_LEN = 4096
_MAX_JSON_BYTES = 1_000_000

OrderBy = Literal["requested_at", "status_updated_at"]
OrderDirection = Literal["asc", "desc"]


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class TrackingError:
    """The last tracking problem of a record: a code and a human message."""

    code: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class SendWarning:
    """A warning attached to a send result (e.g. ``FAILOVER_UNSUPPORTED_PROVIDER``)."""

    code: str
    message: str | None = None


@dataclass(frozen=True, slots=True)
class FailoverOptions:
    """An AlimTalk send's request to fall back to SMS/LMS when the recipient has no KakaoTalk."""

    enabled: bool = False
    fallback_channel: Literal["sms", "lms"] | None = None
    fallback_content: str | None = None
    fallback_title: str | None = None


@dataclass(frozen=True, slots=True)
class SendOptions:
    """What was sent: type, numbers, schedule, custom fields and failover request."""

    type: str
    to: str
    from_: str | None = None
    scheduled_at: datetime | None = None
    custom_fields: Mapping[str, Any] | None = None
    failover: FailoverOptions | None = None


@dataclass(frozen=True, slots=True)
class HookContext:
    """The send context k-msg hands its hooks: message id, request time and options."""

    message_id: str
    timestamp: datetime
    options: SendOptions


@dataclass(frozen=True, slots=True)
class SendResult:
    """A gateway's answer to a send."""

    message_id: str
    provider_id: str
    provider_message_id: str | None
    type: str
    to: str
    warnings: tuple[SendWarning, ...] = ()


@dataclass(frozen=True, slots=True)
class TrackingRecord:
    """The tracked state of one message (its latest snapshot).

    ``to``/``from_`` hold the number only where the store keeps numbers in clear;
    ``to_hash``/``to_masked`` are always there.
    """

    message_id: str
    provider_id: str
    provider_message_id: str
    type: str
    to_hash: str
    to_masked: str
    requested_at: datetime
    status: str
    status_updated_at: datetime
    next_check_at: datetime
    to: str | None = None
    from_: str | None = None
    from_hash: str | None = None
    from_masked: str | None = None
    scheduled_at: datetime | None = None
    provider_status_code: str | None = None
    provider_status_message: str | None = None
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    failed_at: datetime | None = None
    attempt_count: int = 0
    last_checked_at: datetime | None = None
    last_error: TrackingError | None = None
    raw: Any = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    retention_class: str = DEFAULT_RETENTION_CLASS
    retention_bucket_ym: int = 0
    #: the numbers sealed at rest (AES-256-GCM envelopes); not compared, not shown
    to_enc: str | None = field(default=None, compare=False, repr=False)
    from_enc: str | None = field(default=None, compare=False, repr=False)

    @property
    def is_terminal(self) -> bool:
        """Whether no more status checks will be made."""
        return self.status in TERMINAL_STATUSES


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TrackingRecord))


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """A filter over tracking records: each field one value or a sequence (any of them).

    Ranges are inclusive at both ends. ``to``/``from_`` match through the keyed hash.

    Examples
    --------
    >>> RecordFilter(status=["FAILED", "UNKNOWN"], provider_id="solapi").status
    ('FAILED', 'UNKNOWN')
    """

    message_id: str | Sequence[str] | None = None
    provider_id: str | Sequence[str] | None = None
    provider_message_id: str | Sequence[str] | None = None
    type: str | Sequence[str] | None = None
    status: str | Sequence[str] | None = None
    to: str | Sequence[str] | None = None
    to_hash: str | Sequence[str] | None = None
    from_: str | Sequence[str] | None = None
    from_hash: str | Sequence[str] | None = None
    requested_at_from: datetime | None = None
    requested_at_to: datetime | None = None
    status_updated_at_from: datetime | None = None
    status_updated_at_to: datetime | None = None

    def __post_init__(self) -> None:
        for name in _FILTER_LIST_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            items = (value,) if isinstance(value, str) else value
            if not isinstance(items, Iterable) or isinstance(items, Mapping | bytes):
                raise InvalidRecordError(name, value, "a string or a list of strings")
            items = tuple(items)
            for item in items:
                if not isinstance(item, str):
                    raise InvalidRecordError(name, item, "a string")
                _utf8(item, name)
            if name == "status":
                for item in items:
                    _check_choice("status", item, _STATUS_SET, DELIVERY_STATUSES)
            elif name == "type":
                for item in items:
                    _check_choice("type", item, _TYPE_SET, MESSAGE_TYPES)
            object.__setattr__(self, name, items)
        for name in _FILTER_TIME_FIELDS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, coerce_time(value, name))

    def is_empty(self) -> bool:
        """True when no field constrains anything."""
        return all(getattr(self, f.name) is None for f in fields(self))


_FILTER_LIST_FIELDS = (
    "message_id", "provider_id", "provider_message_id", "type", "status",
    "to", "to_hash", "from_", "from_hash",
)  # fmt: skip
_FILTER_TIME_FIELDS = (
    "requested_at_from", "requested_at_to", "status_updated_at_from", "status_updated_at_to",
)  # fmt: skip
FILTER_FIELDS = _FILTER_LIST_FIELDS + _FILTER_TIME_FIELDS


# --------------------------------------------------------------------------- coercion


def _check_choice(name: str, value: object, allowed: frozenset[str], shown: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise InvalidRecordError(name, value, "one of " + ", ".join(shown))
    return value


def coerce_status(value: object, name: str = "status") -> str:
    """Return ``value`` if it is a delivery status, else raise naming the field."""
    return _check_choice(name, value, _STATUS_SET, DELIVERY_STATUSES)


def coerce_type(value: object, name: str = "type") -> str:
    """Return ``value`` if it is a message type, else raise naming the field."""
    return _check_choice(name, value, _TYPE_SET, MESSAGE_TYPES)


def coerce_retention_class(value: object, name: str = "retention_class") -> str:
    """Return ``value`` if it is a retention class, else raise naming the field."""
    return _check_choice(name, value, _RETENTION_SET, RETENTION_CLASSES)


def coerce_time(value: object, name: str) -> datetime:
    """Turn a datetime, an ISO string or epoch milliseconds into an aware UTC datetime.

    A naive datetime (or an ISO string without offset) means UTC.

    Examples
    --------
    >>> coerce_time(1793491200000, "requested_at").isoformat()
    '2026-11-01T00:00:00+00:00'
    >>> coerce_time("2026-11-01T09:00:00+09:00", "requested_at").isoformat()
    '2026-11-01T00:00:00+00:00'
    """
    if isinstance(value, datetime):
        result = _to_utc(value, name)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRecordError(name, value, "a finite time")
        try:
            result = _EPOCH + timedelta(milliseconds=value)
        except OverflowError:
            raise InvalidRecordError(name, value, "epoch milliseconds of a date") from None
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            msg = "an ISO 8601 time such as '2026-11-01T09:00:00+09:00', or epoch milliseconds"
            raise InvalidRecordError(name, value, msg) from None
        result = _to_utc(parsed, name, value)
    else:
        raise InvalidRecordError(
            name, value, "a datetime, an ISO 8601 string or epoch milliseconds"
        )
    if not _MIN_TIME <= result < _MAX_TIME:
        raise InvalidRecordError(name, value, "a time between 2000-01-01 and 2200-01-01 (UTC)")
    # the lake keeps microseconds; drop nothing else
    return result


def _to_utc(moment: datetime, name: str, shown: object = None) -> datetime:
    """``moment`` in UTC (naive means UTC); a clear error where UTC leaves the calendar."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):
        shown = moment if shown is None else shown
        raise InvalidRecordError(
            name, shown, "a time between 2000-01-01 and 2200-01-01 (UTC)"
        ) from None


def coerce_optional_time(value: object, name: str) -> datetime | None:
    """Like :func:`coerce_time`, but ``None`` (and k-msg's ``0``/empty string) mean absent."""
    if value is None or value == "":
        return None
    return coerce_time(value, name)


def coerce_id(value: object, name: str, *, allow_empty: bool = False) -> str:
    """A non-empty identifier string of at most 256 characters, trimmed."""
    if not isinstance(value, str):
        raise InvalidRecordError(name, value, "a string")
    text = value.strip()
    if not text and not allow_empty:
        raise InvalidRecordError(name, value, "a non-empty string")
    if len(text) > _MAX_ID_LEN:
        raise InvalidRecordError(name, value, f"at most {_MAX_ID_LEN} characters")
    if "\x00" in text:
        raise InvalidRecordError(name, value, "a string without NUL characters")
    return _utf8(text, name)


def _utf8(text: str, name: str) -> str:
    """``text`` if it encodes as UTF-8 (no lone surrogates), else a clear error."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRecordError(name, text, "valid Unicode text (no lone surrogates)") from None
    return text


def coerce_text(value: object, name: str) -> str | None:
    """An optional free text (gateway code or message) of bounded length."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidRecordError(name, value, "a string or None")
    if len(value) > _MAX_TEXT_LEN:
        raise InvalidRecordError(name, value, f"at most {_MAX_TEXT_LEN} characters")
    return _utf8(value, name)


def coerce_json(value: object, name: str) -> Any:
    """A JSON-serialisable value (a mapping for metadata) of at most 1 MB."""
    if value is None:
        return None
    if isinstance(value, str) and name == "metadata":
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidRecordError(name, value, "a JSON object") from None
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as err:
        raise InvalidRecordError(name, value, f"JSON-serialisable data ({err})") from None
    if len(text.encode()) > _MAX_JSON_BYTES:
        raise InvalidRecordError(name, f"<{len(text)} characters>", "at most 1 MB of JSON")
    return json.loads(text)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return coerce_time(value, "metadata").isoformat().replace("+00:00", "Z")
    msg = f"{type(value).__name__} is not JSON serialisable"
    raise TypeError(msg)


_MISSING = object()


def pick(data: Mapping[str, Any], name: str, *aliases: str) -> Any:
    """Read ``name`` from a mapping in snake_case or k-msg's camelCase (``None`` if absent).

    Examples
    --------
    >>> pick({"providerMessageId": "G1"}, "provider_message_id")
    'G1'
    """
    value = data.get(name, _MISSING)
    if value is _MISSING:
        camel = _CAMELS.get(name)
        value = data.get(_camel(name) if camel is None else camel, _MISSING)
        if value is _MISSING:
            for alias in aliases:
                if alias in data:
                    return data[alias]
            return None
    return value


@functools.cache
def _camel(name: str) -> str:
    head, *rest = name.rstrip("_").split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


#: camelCase spellings of the fields read most (``pick`` is on every send's path).
_CAMELS: Final = {
    n: _camel(n)
    for n in (
        "message_id", "provider_id", "provider_message_id", "scheduled_at", "custom_fields",
        "timestamp", "options", "type", "to", "from_", "failover", "warnings",
    )
}  # fmt: skip


def _as_mapping(value: object, name: str) -> Mapping[str, Any]:
    if type(value) is not dict and not isinstance(value, Mapping):
        raise InvalidRecordError(name, value, "a mapping or our dataclass")
    return value


def coerce_failover(value: object) -> FailoverOptions | None:
    """Accept a :class:`FailoverOptions` or its mapping (snake_case or camelCase)."""
    if value is None:
        return None
    data: Mapping[str, Any]
    if isinstance(value, FailoverOptions):
        data = {f.name: getattr(value, f.name) for f in fields(value)}
    else:
        data = _as_mapping(value, "failover")
    enabled = pick(data, "enabled")
    if not isinstance(enabled, bool):
        raise InvalidRecordError("failover.enabled", enabled, "true or false")
    channel = pick(data, "fallback_channel")
    if channel is not None and channel not in ("sms", "lms"):
        raise InvalidRecordError("failover.fallback_channel", channel, "'sms' or 'lms'")
    return FailoverOptions(
        enabled=enabled,
        fallback_channel=channel,
        fallback_content=coerce_text(pick(data, "fallback_content"), "failover.fallback_content"),
        fallback_title=coerce_text(pick(data, "fallback_title"), "failover.fallback_title"),
    )


def coerce_context(value: object) -> HookContext:
    """Accept a :class:`HookContext` or a mapping in our or k-msg's shape, validated."""
    if isinstance(value, HookContext):
        options = value.options
        return HookContext(
            message_id=coerce_id(value.message_id, "context.message_id"),
            timestamp=coerce_time(value.timestamp, "context.timestamp"),
            options=SendOptions(
                type=coerce_type(options.type, "context.options.type"),
                to=_check_number(options.to, "context.options.to"),
                from_=None if options.from_ is None else _check_number(options.from_, "from_"),
                scheduled_at=coerce_optional_time(options.scheduled_at, "scheduled_at"),
                custom_fields=_custom_fields(options.custom_fields),
                failover=coerce_failover(options.failover),
            ),
        )
    data = _as_mapping(value, "context")
    raw_options = pick(data, "options", "sendOptions")
    opts = _as_mapping(raw_options, "context.options") if raw_options is not None else data
    return HookContext(
        message_id=coerce_id(pick(data, "message_id"), "context.message_id"),
        timestamp=coerce_time(pick(data, "timestamp", "requestedAt"), "context.timestamp"),
        options=SendOptions(
            type=coerce_type(pick(opts, "type"), "context.options.type"),
            to=_check_number(pick(opts, "to"), "context.options.to"),
            from_=_optional_number(pick(opts, "from_", "from"), "context.options.from_"),
            scheduled_at=coerce_optional_time(pick(opts, "scheduled_at"), "scheduled_at"),
            custom_fields=_custom_fields(pick(opts, "custom_fields")),
            failover=coerce_failover(pick(opts, "failover")),
        ),
    )


def coerce_result(value: object) -> SendResult:
    """Accept a :class:`SendResult` or a mapping in our or k-msg's shape, validated."""
    data: Mapping[str, Any]
    if isinstance(value, SendResult):
        data = {f.name: getattr(value, f.name) for f in fields(value)}
    else:
        data = _as_mapping(value, "result")
    pmid = pick(data, "provider_message_id")
    _check_pmid_type(pmid)
    warnings = _coerce_warnings(pick(data, "warnings") or ())
    return SendResult(
        message_id=coerce_id(pick(data, "message_id"), "result.message_id"),
        provider_id=coerce_id(pick(data, "provider_id"), "result.provider_id"),
        provider_message_id=None
        if pmid is None
        else coerce_id(pmid, "result.provider_message_id", allow_empty=True),
        type=coerce_type(pick(data, "type"), "result.type"),
        to=_check_number(pick(data, "to"), "result.to"),
        warnings=warnings,
    )


def _check_pmid_type(pmid: object) -> None:
    if pmid is not None and not isinstance(pmid, str):
        raise InvalidRecordError("result.provider_message_id", pmid, "a string or None")


def _coerce_warnings(warnings_raw: object) -> tuple[SendWarning, ...]:
    if isinstance(warnings_raw, str | Mapping) or not isinstance(warnings_raw, Iterable):
        raise InvalidRecordError("result.warnings", warnings_raw, "a list of {code, message}")
    warnings: list[SendWarning] = []
    for item in warnings_raw:
        if isinstance(item, SendWarning):
            warnings.append(item)
            continue
        w = _as_mapping(item, "result.warnings[]")
        warnings.append(
            SendWarning(
                code=coerce_id(pick(w, "code"), "result.warnings[].code"),
                message=coerce_text(pick(w, "message"), "result.warnings[].message"),
            )
        )
    return tuple(warnings)


def _check_number(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRecordError(name, value, "a phone number string such as '010-1234-5678'")
    if len(value) > 64:
        raise InvalidRecordError(name, value, "a phone number of at most 64 characters")
    normalize_number(value, field=name)  # raises naming the field when it is no number
    return value


def _optional_number(value: object, name: str) -> str | None:
    if value is None or value == "":
        return None
    return _check_number(value, name)


def _custom_fields(value: object) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRecordError("custom_fields", value, "a mapping of JSON values")
    if len(value) > 1000:
        raise InvalidRecordError("custom_fields", f"<{len(value)} entries>", "at most 1000 entries")
    result = coerce_json(dict(value), "custom_fields")
    assert isinstance(result, dict)
    return result


# --------------------------------------------------------------------------- one send, fast

#: A send's validated parts, as :func:`send_values` gives them: context message id,
#: requested time, context type, ``from_``, scheduled time, custom fields, failover
#: request; result message id, provider id, provider message id (trimmed, ``""`` when
#: missing), result type, result ``to`` and warnings.
SendValues = tuple[
    str,
    datetime,
    str,
    str | None,
    datetime | None,
    Mapping[str, Any] | None,
    FailoverOptions | None,
    str,
    str,
    str,
    str,
    str,
    tuple[SendWarning, ...],
]

_MIN_MS: Final = 946_684_800_000  # 2000-01-01 in epoch milliseconds
_MAX_MS: Final = 7_258_118_400_000  # 2200-01-01
_MIN_NAIVE: Final = _MIN_TIME.replace(tzinfo=None)
_MAX_NAIVE: Final = _MAX_TIME.replace(tzinfo=None)


def send_values(context: object, result: object) -> SendValues:
    """A send's validated parts: :func:`coerce_context` and :func:`coerce_result` in one.

    Plain ``dict`` inputs (k-msg's JSON shape or ours) take a fast path that checks the
    common values inline and hands anything unusual to the same validators, in the same
    order, so the answer and every error are the ones of the two ``coerce_*`` calls.

    Examples
    --------
    >>> v = send_values(
    ...     {"messageId": "m1", "timestamp": 1793491200000,
    ...      "options": {"type": "SMS", "to": "010-1234-5678"}},
    ...     {"messageId": "m1", "providerId": "solapi", "providerMessageId": " G1 ",
    ...      "type": "SMS", "to": "010-1234-5678"},
    ... )
    >>> v[0], v[1].isoformat(), v[8], v[9]
    ('m1', '2026-11-01T00:00:00+00:00', 'solapi', 'G1')
    """
    if type(context) is dict and type(result) is dict:
        fast = _fast_send_values(context, result)
        if fast is not None:
            return fast
    ctx = coerce_context(context)
    res = coerce_result(result)
    o = ctx.options
    return (
        ctx.message_id,
        ctx.timestamp,
        o.type,
        o.from_,
        o.scheduled_at,
        o.custom_fields,
        o.failover,
        res.message_id,
        res.provider_id,
        (res.provider_message_id or "").strip(),
        res.type,
        res.to,
        res.warnings,
    )


def _fast_id(value: object, *, allow_empty: bool = False) -> str | None:
    """:func:`coerce_id`'s answer for a plain ASCII id, ``None`` when it needs the full check."""
    if type(value) is str and value.isascii():
        text = value.strip()
        if (text or allow_empty) and len(text) <= _MAX_ID_LEN and "\x00" not in text:
            return text
    return None


def _id(value: object, field: str) -> str:
    """:func:`coerce_id` of ``value``, through :func:`_fast_id` when it is a plain id."""
    text = _fast_id(value)
    return coerce_id(value, field) if text is None else text


def _fast_number(value: object) -> bool:
    """Whether :func:`_check_number` accepts ``value`` as it is (memoised normalisation)."""
    return type(value) is str and len(value) <= 64 and _normalize(value) is not None


def _fast_time(value: object) -> datetime | None:
    """:func:`coerce_time`'s answer for epoch milliseconds or a ``...Z`` ISO string in range.

    ``None`` when :func:`coerce_time` must decide (it then gives the same answer or error).
    """
    if type(value) is int:
        if _MIN_MS <= value < _MAX_MS:
            return _EPOCH + timedelta(0, value // 1000, value % 1000 * 1000)
    elif type(value) is str and value[-1:] == "Z":
        try:
            parsed = datetime.fromisoformat(value[:-1])
        except ValueError:
            return None
        if parsed.tzinfo is None and _MIN_NAIVE <= parsed < _MAX_NAIVE:
            return parsed.replace(tzinfo=UTC)
    return None


def _fast_send_values(data: dict[str, Any], res: dict[str, Any]) -> SendValues | None:
    """:func:`send_values` for dicts; ``None`` when the options are no plain dict.

    Each value is read as :func:`pick` reads it and checked in :func:`coerce_context`'s
    and :func:`coerce_result`'s order; where the inline check does not pass, that
    field's own validator decides (it returns the same value or raises the same error).
    """
    opts = data.get("options", _MISSING)
    if opts is _MISSING:
        opts = data.get("sendOptions")
    if opts is None:
        opts = data
    elif type(opts) is not dict:
        return None
    # the context, in coerce_context's order
    value = data["message_id"] if "message_id" in data else data.get("messageId")
    message_id = _id(value, "context.message_id")
    value = data["timestamp"] if "timestamp" in data else data.get("requestedAt")
    requested_at = _fast_time(value)
    if requested_at is None:
        requested_at = coerce_time(value, "context.timestamp")
    ctx_type = opts.get("type")
    if type(ctx_type) is not str or ctx_type not in _TYPE_SET:
        ctx_type = coerce_type(ctx_type, "context.options.type")
    value = opts.get("to")
    if not _fast_number(value):
        _check_number(value, "context.options.to")
    from_ = opts["from_"] if "from_" in opts else opts.get("from")
    if from_ is not None and not _fast_number(from_):
        from_ = _optional_number(from_, "context.options.from_")
    value = opts["scheduled_at"] if "scheduled_at" in opts else opts.get("scheduledAt")
    scheduled_at = None if value is None else coerce_optional_time(value, "scheduled_at")
    value = opts["custom_fields"] if "custom_fields" in opts else opts.get("customFields")
    custom_fields = None if value is None else _custom_fields(value)
    value = opts.get("failover")
    failover = None if value is None else coerce_failover(value)
    # the result, in coerce_result's order
    pmid = (
        res["provider_message_id"] if "provider_message_id" in res else res.get("providerMessageId")
    )
    _check_pmid_type(pmid)
    value = res.get("warnings") or ()
    warnings = _coerce_warnings(value) if value else ()
    value = res["message_id"] if "message_id" in res else res.get("messageId")
    res_id = _id(value, "result.message_id")
    value = res["provider_id"] if "provider_id" in res else res.get("providerId")
    provider_id = _id(value, "result.provider_id")
    if pmid is not None:
        text = _fast_id(pmid, allow_empty=True)
        pmid = (
            coerce_id(pmid, "result.provider_message_id", allow_empty=True)
            if text is None
            else text
        )
    res_type = res.get("type")
    if type(res_type) is not str or res_type not in _TYPE_SET:
        res_type = coerce_type(res_type, "result.type")
    res_to: Any = res.get("to")
    if not _fast_number(res_to):
        res_to = _check_number(res_to, "result.to")
    return (
        message_id,
        requested_at,
        ctx_type,
        from_,
        scheduled_at,
        custom_fields,
        failover,
        res_id,
        provider_id,
        pmid or "",
        res_type,
        res_to,
        warnings,
    )


_RECORD_SETTERS: Final = tuple(getattr(TrackingRecord, name).__set__ for name in RECORD_FIELDS)


def record_from_values(values: Sequence[Any]) -> TrackingRecord:
    """A :class:`TrackingRecord` from its field values in ``RECORD_FIELDS`` order.

    The record path's constructor: it sets the slots directly (what the frozen
    dataclass's ``__init__`` does, without its per-field overhead) and validates
    nothing, so the values must already be the record's.

    Examples
    --------
    >>> r = TrackingRecord("m1", "p", "G1", "SMS", "h", "010****5678", _MIN_TIME, "SENT",
    ...                    _MIN_TIME, _MIN_TIME)
    >>> record_from_values([getattr(r, n) for n in RECORD_FIELDS]) == r
    True
    """
    record: TrackingRecord = object.__new__(TrackingRecord)
    for setter, value in zip(_RECORD_SETTERS, values, strict=False):  # lengths: tested
        setter(record, value)
    return record


def coerce_filter(
    value: RecordFilter | Mapping[str, Any] | None = None, **fields_: Any
) -> RecordFilter:
    """Build a :class:`RecordFilter` from a filter, a mapping and/or keyword arguments.

    Unknown names raise :class:`InvalidRecordError` listing the valid ones.
    """
    merged: dict[str, Any] = {}
    if isinstance(value, RecordFilter):
        merged = {
            f.name: getattr(value, f.name)
            for f in fields(value)
            if getattr(value, f.name) is not None
        }
    elif value is not None:
        for key, item in _as_mapping(value, "filter").items():
            if not isinstance(key, str):
                raise InvalidRecordError("filter", key, "field names as strings")
            merged[_snake(key)] = item
    for key, item in fields_.items():
        merged[_snake(key)] = item
    unknown = sorted(set(merged) - set(FILTER_FIELDS))
    if unknown:
        raise InvalidRecordError("filter", unknown[0], "one of " + ", ".join(FILTER_FIELDS))
    return RecordFilter(**{k: v for k, v in merged.items() if v is not None})


def _snake(key: str) -> str:
    if key == "from":
        return "from_"
    out = "".join("_" + c.lower() if c.isupper() else c for c in key)
    return out


def coerce_record(value: object) -> TrackingRecord:
    """Validate a :class:`TrackingRecord` or build one from a mapping (snake or camel case)."""
    data: Mapping[str, Any]
    if isinstance(value, TrackingRecord):
        data = {f.name: getattr(value, f.name) for f in fields(value)}
    else:
        data = _as_mapping(value, "record")
    last_error = pick(data, "last_error")
    if isinstance(last_error, str):
        try:
            last_error = json.loads(last_error)
        except ValueError:
            raise InvalidRecordError("last_error", last_error, "a {code, message} object") from None
    if isinstance(last_error, Mapping):
        last_error = TrackingError(
            code=coerce_id(pick(last_error, "code"), "last_error.code"),
            message=coerce_text(pick(last_error, "message"), "last_error.message") or "",
        )
    elif last_error is not None and not isinstance(last_error, TrackingError):
        raise InvalidRecordError("last_error", last_error, "None or a {code, message} object")
    attempts = pick(data, "attempt_count")
    attempts = 0 if attempts is None else attempts
    if not isinstance(attempts, int) or isinstance(attempts, bool) or not 0 <= attempts < 2**31:
        raise InvalidRecordError("attempt_count", attempts, "a whole number >= 0")
    requested_at = coerce_time(pick(data, "requested_at"), "requested_at")
    metadata = coerce_json(pick(data, "metadata") or {}, "metadata")
    if not isinstance(metadata, dict):
        raise InvalidRecordError("metadata", metadata, "a JSON object")
    bucket = pick(data, "retention_bucket_ym")
    expected_bucket = requested_at.year * 100 + requested_at.month
    if bucket is not None and bucket != expected_bucket:
        raise InvalidRecordError(
            "retention_bucket_ym", bucket, f"{expected_bucket} (from requested_at)"
        )
    to_hash = pick(data, "to_hash") or ""
    if not isinstance(to_hash, str) or not (to_hash or pick(data, "to")):
        raise InvalidRecordError("to", pick(data, "to"), "a phone number (or its to_hash)")
    return TrackingRecord(
        message_id=coerce_id(pick(data, "message_id"), "message_id"),
        provider_id=coerce_id(pick(data, "provider_id"), "provider_id"),
        provider_message_id=coerce_id(
            pick(data, "provider_message_id") or "", "provider_message_id", allow_empty=True
        ),
        type=coerce_type(pick(data, "type")),
        to=_optional_number(pick(data, "to"), "to"),
        from_=_optional_number(pick(data, "from_", "from"), "from_"),
        to_hash=to_hash,
        to_masked=coerce_text(pick(data, "to_masked"), "to_masked") or "",
        from_hash=coerce_text(pick(data, "from_hash"), "from_hash"),
        from_masked=coerce_text(pick(data, "from_masked"), "from_masked"),
        requested_at=requested_at,
        scheduled_at=coerce_optional_time(pick(data, "scheduled_at"), "scheduled_at"),
        status=coerce_status(pick(data, "status")),
        provider_status_code=coerce_text(
            pick(data, "provider_status_code"), "provider_status_code"
        ),
        provider_status_message=coerce_text(
            pick(data, "provider_status_message"), "provider_status_message"
        ),
        sent_at=coerce_optional_time(pick(data, "sent_at"), "sent_at"),
        delivered_at=coerce_optional_time(pick(data, "delivered_at"), "delivered_at"),
        failed_at=coerce_optional_time(pick(data, "failed_at"), "failed_at"),
        status_updated_at=coerce_time(pick(data, "status_updated_at"), "status_updated_at"),
        attempt_count=attempts,
        last_checked_at=coerce_optional_time(pick(data, "last_checked_at"), "last_checked_at"),
        next_check_at=coerce_time(pick(data, "next_check_at"), "next_check_at"),
        last_error=last_error,
        raw=coerce_json(pick(data, "raw"), "raw"),
        metadata=metadata,
        retention_class=coerce_retention_class(
            pick(data, "retention_class") or DEFAULT_RETENTION_CLASS
        ),
        retention_bucket_ym=expected_bucket,
        to_enc=coerce_text(pick(data, "to_enc"), "to_enc"),
        from_enc=coerce_text(pick(data, "from_enc"), "from_enc"),
    )
