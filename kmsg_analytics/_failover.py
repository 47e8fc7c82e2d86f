"""API failover: an AlimTalk that failed because the recipient does not use KakaoTalk
is sent again as SMS/LMS, once.

The runner asks :func:`should_attempt` about every record a run marked ``FAILED``,
writes :func:`mark_attempting`'s marker in the run's snapshot write, and only then
calls :func:`attempt_failover`, whose outcome is written afterwards. A process that
dies between the two leaves the marker (``attempted: true, status: "attempting"``
without an ``outcome``), so the fallback is never sent twice. Everything is recorded
in ``metadata["failover"]["api_attempt"]``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from ._providers import ApiFailoverConfig, ProviderError
from ._records import TrackingRecord, pick

__all__ = [
    "ELIGIBLE_WARNING_CODES",
    "FailoverAttemptContext",
    "FailoverClassification",
    "FailoverSendInput",
    "attempt_failover",
    "is_non_kakao_user",
    "mark_attempting",
    "read_failover",
    "should_attempt",
]

#: Send warnings that make a failed AlimTalk eligible (its provider did not fail over itself).
ELIGIBLE_WARNING_CODES: tuple[str, ...] = (
    "FAILOVER_UNSUPPORTED_PROVIDER",
    "FAILOVER_PARTIAL_PROVIDER",
)
FALLBACK_SUFFIX = ":api-fallback"
_MAX_MESSAGE = 1000

Outcome = Literal["sent", "failed", "skipped"]


@dataclass(frozen=True, slots=True)
class FailoverSendInput:
    """The fallback message handed to ``ApiFailoverConfig.sender``.

    ``to``/``from_`` are the numbers where the store keeps them; by default
    (``keep_numbers=False``) they are ``None`` and the sender looks the recipient
    up by ``context.original_message_id`` (``to_masked`` is there for logs).
    ``subject`` is set only for LMS.
    """

    type: Literal["SMS", "LMS"]
    to: str | None
    text: str
    message_id: str
    from_: str | None = None
    subject: str | None = None
    to_masked: str | None = None


@dataclass(frozen=True, slots=True)
class FailoverAttemptContext:
    """What the sender knows about the failed AlimTalk it replaces."""

    original_message_id: str
    original_provider_id: str
    original_provider_message_id: str
    fallback_message_id: str
    fallback_type: Literal["SMS", "LMS"]
    record: TrackingRecord


@dataclass(frozen=True, slots=True)
class FailoverClassification:
    """What ``classify_non_kakao_user`` is asked about (``raw`` even when not stored)."""

    record: TrackingRecord
    status_code: str | None
    status_message: str | None
    raw: Any = None


@dataclass(frozen=True, slots=True)
class FailoverState:
    """The failover part of a record's metadata, read leniently (snake or camelCase)."""

    enabled: bool | None
    fallback_channel: str | None
    fallback_content: str | None
    fallback_title: str | None
    send_warning_codes: tuple[str, ...]
    attempted: bool


def _failover_root(metadata: Mapping[str, Any] | None) -> Mapping[str, Any]:
    root = metadata if isinstance(metadata, Mapping) else {}
    failover = root.get("failover")
    return failover if isinstance(failover, Mapping) else {}


def read_failover(metadata: Mapping[str, Any] | None) -> FailoverState:
    """Parse ``metadata["failover"]`` as recording wrote it (or k-msg's camelCase form).

    Examples
    --------
    >>> read_failover({"failover": {"request": {"enabled": True}, "send_warning_codes": ["X"],
    ...                "api_attempt": {"attempted": False}}}).enabled
    True
    """
    failover = _failover_root(metadata)
    request = pick(failover, "request")
    request = request if isinstance(request, Mapping) else {}
    codes = pick(failover, "send_warning_codes")
    attempt = pick(failover, "api_attempt")
    attempt = attempt if isinstance(attempt, Mapping) else {}
    enabled = pick(request, "enabled")
    channel = pick(request, "fallback_channel")
    content = pick(request, "fallback_content")
    title = pick(request, "fallback_title")
    return FailoverState(
        enabled=enabled if isinstance(enabled, bool) else None,
        fallback_channel=channel if channel in ("sms", "lms") else None,
        fallback_content=content if isinstance(content, str) else None,
        fallback_title=title if isinstance(title, str) else None,
        send_warning_codes=tuple(c for c in codes if isinstance(c, str))
        if isinstance(codes, list | tuple)
        else (),
        attempted=attempt.get("attempted") is True,
    )


def is_non_kakao_user(config: ApiFailoverConfig, record: TrackingRecord, raw: Any = None) -> bool:
    """Whether a failure means "the recipient does not use KakaoTalk".

    The user's classifier when given (an exception counts as no); else the
    provider's rule when it matches; else the built-in rules: ``solapi`` with code
    ``3104``/``3107`` or a message containing "미사용자", ``iwinv`` when code and
    message together contain "카카오" and "미사용".

    Examples
    --------
    >>> from datetime import datetime, UTC
    >>> t = datetime(2026, 11, 1, tzinfo=UTC)
    >>> rec = TrackingRecord("m1", "solapi", "G1", "ALIMTALK", "h", "010****5678",
    ...                      t, "FAILED", t, t, provider_status_code="3104")
    >>> is_non_kakao_user(ApiFailoverConfig(None), rec)
    True
    """
    code = record.provider_status_code
    message = record.provider_status_message
    if config.classify_non_kakao_user is not None:
        try:
            return bool(
                config.classify_non_kakao_user(FailoverClassification(record, code, message, raw))
            )
        except Exception:
            return False
    rule = (config.rules_by_provider_id or {}).get(record.provider_id)
    if rule is not None and rule.matches(code, message):
        return True
    if record.provider_id == "solapi":
        return code in ("3104", "3107") or (isinstance(message, str) and "미사용자" in message)
    if record.provider_id == "iwinv":
        text = f"{code or ''} {message or ''}"
        return "카카오" in text and "미사용" in text
    return False


def should_attempt(
    config: ApiFailoverConfig | None, record: TrackingRecord, raw: Any = None
) -> bool:
    """Whether a record a run has just marked ``FAILED`` gets an API failover attempt."""
    if config is None or not config.enabled:
        return False
    if record.type != "ALIMTALK" or record.status != "FAILED":
        return False
    state = read_failover(record.metadata)
    if state.enabled is not True or state.attempted:
        return False
    if not any(code in ELIGIBLE_WARNING_CODES for code in state.send_warning_codes):
        return False
    return is_non_kakao_user(config, record, raw)


def iso_millis(moment: datetime) -> str:
    """``2026-11-01T00:00:30.000Z``: the form k-msg writes ``attempted_at`` in."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def with_attempt(record: TrackingRecord, **changes: Any) -> TrackingRecord:
    """A copy of ``record`` with ``metadata.failover.api_attempt`` updated by ``changes``."""
    metadata = dict(record.metadata)
    failover = dict(_failover_root(metadata))
    current = pick(failover, "api_attempt")
    attempt = {_snake(k): v for k, v in current.items()} if isinstance(current, Mapping) else {}
    failover.pop("apiAttempt", None)
    attempt.update(changes)
    failover["api_attempt"] = attempt
    metadata["failover"] = failover
    return replace(record, metadata=metadata)


def _snake(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


def mark_attempting(record: TrackingRecord, now: datetime) -> TrackingRecord:
    """The marker written, with the run's snapshots, before anything is sent."""
    return with_attempt(record, attempted=True, status="attempting", attempted_at=iso_millis(now))


async def attempt_failover(
    config: ApiFailoverConfig,
    record: TrackingRecord,
    *,
    executor: Executor | None = None,
    reveal: Callable[[TrackingRecord], tuple[str | None, str | None]] | None = None,
) -> tuple[TrackingRecord, Outcome]:
    """Send the fallback of a marked record; returns the record with the outcome recorded.

    A plain ``sender`` runs on ``executor`` (a thread), an ``async`` one on the loop.
    Exceptions of the sender are recorded, not raised. ``reveal(record) -> (to, from_)``
    opens numbers a store keeps sealed (without it, or without the key, they are ``None``).
    """
    if config.sender is None:
        return _outcome(record, "skipped", warning_code="API_FAILOVER_SENDER_MISSING",
                        warning_message="api_failover.sender is not configured")  # fmt: skip
    state = read_failover(record.metadata)
    content = (state.fallback_content or "").strip()
    if not content:
        message = "failover.fallback_content is required for API-level fallback"
        return _outcome(
            record, "skipped", warning_code="FALLBACK_CONTENT_MISSING", warning_message=message
        )
    fallback_type: Literal["SMS", "LMS"] = "LMS" if state.fallback_channel == "lms" else "SMS"
    title = (state.fallback_title or "").strip() or None
    fallback_id = f"{record.message_id}{FALLBACK_SUFFIX}"
    to, from_ = record.to, record.from_
    if to is None and reveal is not None and getattr(record, "to_enc", None) is not None:
        try:  # a store that seals numbers opens them only to send
            to, from_ = reveal(record)
        except Exception:
            to, from_ = None, None
    send_input = FailoverSendInput(
        type=fallback_type,
        to=to,
        text=content,
        message_id=fallback_id,
        from_=from_,
        subject=title if fallback_type == "LMS" else None,
        to_masked=record.to_masked or None,
    )
    context = FailoverAttemptContext(
        original_message_id=record.message_id,
        original_provider_id=record.provider_id,
        original_provider_message_id=record.provider_message_id,
        fallback_message_id=fallback_id,
        fallback_type=fallback_type,
        record=record,
    )
    try:
        result = await _call(config.sender, send_input, context, executor)
    except ProviderError as err:
        return _outcome(record, "failed", error_code=err.code, error_message=err.message)
    except Exception as err:
        message = (str(err) or type(err).__name__)[:_MAX_MESSAGE]
        return _outcome(
            record, "failed", error_code="API_FAILOVER_SEND_EXCEPTION", error_message=message
        )
    sent_id, sent_provider = _result_ids(result, fallback_id)
    changes: dict[str, Any] = {"fallback_message_id": sent_id}
    if sent_provider is not None:
        changes["fallback_provider_id"] = sent_provider
    return _outcome(record, "sent", **changes)


async def _call(
    sender: Any,
    send_input: FailoverSendInput,
    context: FailoverAttemptContext,
    executor: Executor | None,
) -> Any:
    if is_async_callable(sender):
        result = await sender(send_input, context)
    else:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            executor, functools.partial(sender, send_input, context)
        )
    if inspect.isawaitable(result):
        result = await result
    return result


def is_async_callable(fn: Any) -> bool:
    """Whether calling ``fn`` gives a coroutine (an ``async def`` or an object with one)."""
    call = type(fn).__call__ if not inspect.isroutine(fn) else None
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _result_ids(result: Any, default_id: str) -> tuple[str, str | None]:
    if result is None:
        return default_id, None
    if isinstance(result, Mapping):
        mid, pid = pick(result, "message_id"), pick(result, "provider_id")
    else:
        mid, pid = getattr(result, "message_id", None), getattr(result, "provider_id", None)
    return (mid if isinstance(mid, str) and mid else default_id), (
        pid if isinstance(pid, str) and pid else None
    )


def _outcome(
    record: TrackingRecord, outcome: Outcome, **changes: Any
) -> tuple[TrackingRecord, Outcome]:
    return with_attempt(record, outcome=outcome, **changes), outcome
