"""Turn a gateway's answer to a send into what ``record_send`` takes.

A Python app that sends through SOLAPI or IWINV itself (their HTTP APIs or SDKs) can
track what it sends::

    response = solapi_client.send(...)            # the gateway's JSON answer
    service.record_send(*capture_send("solapi", response, message_id="order-17",
                                      to="010-1234-5678", type="SMS"))

The provider message id is read where each gateway puts it: SOLAPI's ``messageId``
(a single send, or the ``messageList`` of a ``send-many/detail`` answer), IWINV
AlimTalk's ``seqNo``, IWINV SMS's ``requestNo`` (or ``msgid``). A send the gateway
refused raises :class:`SendRejectedError` with the gateway's code and text: there is
nothing to track.
"""

# ruff: noqa: EM101 - InvalidRecordError/ProviderError take fields and codes

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from .._errors import InvalidRecordError
from .._phone import normalize_number
from .._providers import ProviderError
from .._records import (
    FailoverOptions,
    HookContext,
    SendResult,
    SendWarning,
    coerce_context,
    coerce_result,
)
from .solapi import SOLAPI_STATUS_TEXT

__all__ = ["SendRejectedError", "capture_send"]

Gateway = Literal["solapi", "iwinv"]

#: SOLAPI's answer codes for a message it accepted.
_SOLAPI_ACCEPTED = frozenset({"2000", "3000", "4000"})


class SendRejectedError(ProviderError):
    """The gateway refused the send (nothing was sent, so nothing is tracked).

    ``status_code``/``status_message`` are the gateway's own.

    Examples
    --------
    >>> err = SendRejectedError("solapi", "1062", "발신번호 미등록")
    >>> str(err)
    'MESSAGE_SEND_FAILED: solapi refused the send: 1062 발신번호 미등록'
    >>> err.retryable
    False
    """

    def __init__(self, provider_id: str, status_code: str | None, status_message: str | None):
        self.provider_id = provider_id
        self.status_code = status_code
        self.status_message = status_message
        detail = " ".join(x for x in (status_code, status_message) if x) or "no reason given"
        super().__init__(
            "MESSAGE_SEND_FAILED", f"{provider_id} refused the send: {detail}", retryable=False
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.provider_id, self.status_code, self.status_message))


def capture_send(
    provider_id: str,
    response: Mapping[str, Any] | str | bytes,
    *,
    message_id: str,
    to: str,
    type: str,
    from_: str | None = None,
    requested_at: datetime | str | int | None = None,
    scheduled_at: datetime | str | int | None = None,
    custom_fields: Mapping[str, Any] | None = None,
    failover: FailoverOptions | Mapping[str, Any] | None = None,
    gateway: Gateway | None = None,
) -> tuple[HookContext, SendResult]:
    """The ``(context, result)`` pair for ``record_send`` from a gateway's send answer.

    Parameters
    ----------
    provider_id
        The id the records get (and the gateway's format when ``gateway`` is not given:
        ``solapi...`` or ``iwinv...``).
    response
        The gateway's answer: its decoded JSON, or the JSON text.
    message_id, to, type, from_, scheduled_at, custom_fields, failover
        What was sent (your own message id, the numbers, the type, ...).
    requested_at
        When it was sent; now by default.
    gateway
        ``"solapi"`` or ``"iwinv"`` when ``provider_id`` does not say.

    Raises
    ------
    SendRejectedError
        The gateway refused the send.
    InvalidRecordError
        The answer carries no message id, or an argument is invalid.

    Examples
    --------
    >>> ctx, res = capture_send(
    ...     "solapi",
    ...     {"groupId": "G4V2026", "messageId": "M4V20261102090000ABCDEFGHIJKLMN1",
    ...      "statusCode": "2000", "statusMessage": "정상 접수(이통사로 접수 예정) "},
    ...     message_id="order-17", to="010-1234-5678", type="SMS",
    ...     requested_at="2026-11-02T09:00:00+09:00")
    >>> res.provider_message_id, ctx.timestamp.isoformat()
    ('M4V20261102090000ABCDEFGHIJKLMN1', '2026-11-02T00:00:00+00:00')
    >>> capture_send("iwinv", {"code": 200, "message": "발송 성공", "seqNo": 4471},
    ...              message_id="m2", to="01012345678", type="ALIMTALK")[1].provider_message_id
    '4471'
    >>> capture_send("iwinv", {"resultCode": 13, "message": "등록되지 않은 발신번호"},
    ...              message_id="m3", to="01012345678", type="SMS")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    kmsg_analytics._gateways.capture.SendRejectedError: MESSAGE_SEND_FAILED: iwinv refused ...
    """
    kind = _gateway(provider_id, gateway)
    data = _decode(response)
    context = coerce_context(
        {
            "message_id": message_id,
            "timestamp": datetime.now(UTC) if requested_at is None else requested_at,
            "options": {
                "type": type,
                "to": to,
                "from_": from_,
                "scheduled_at": scheduled_at,
                "custom_fields": custom_fields,
                "failover": failover,
            },
        }
    )
    if kind == "solapi":
        pmid = _solapi_message_id(provider_id, data, to, custom_fields)
    else:
        pmid = _iwinv_message_id(provider_id, data)
    warnings: list[SendWarning] = []
    fo = context.options.failover
    if (
        kind == "solapi"
        and context.options.type == "ALIMTALK"
        and fo is not None
        and fo.enabled
        and context.options.from_ is None  # SOLAPI cannot send its own SMS fallback
    ):
        warnings.append(
            SendWarning(
                "FAILOVER_PARTIAL_PROVIDER",
                "SOLAPI sends no SMS fallback without a sender number; API-level "
                "fallback may be attempted for non-Kakao-user failures.",
            )
        )
    result = coerce_result(
        SendResult(
            message_id=context.message_id,
            provider_id=provider_id,
            provider_message_id=pmid,
            type=context.options.type,
            to=context.options.to,
            warnings=tuple(warnings),
        )
    )
    return context, result


def _gateway(provider_id: str, gateway: Gateway | None) -> Gateway:
    if gateway is not None:
        if gateway not in ("solapi", "iwinv"):
            raise InvalidRecordError("gateway", gateway, "'solapi' or 'iwinv'")
        return gateway
    pid = provider_id.lower() if isinstance(provider_id, str) else ""
    if pid.startswith("solapi"):
        return "solapi"
    if pid.startswith("iwinv"):
        return "iwinv"
    raise InvalidRecordError(
        "gateway", gateway, "'solapi' or 'iwinv' (the provider id does not say which)"
    )


def _decode(response: Mapping[str, Any] | str | bytes) -> Mapping[str, Any]:
    data: Any = response
    if isinstance(response, bytes | str):
        try:
            data = json.loads(response)
        except ValueError:
            raise InvalidRecordError(
                "response", response, "the gateway's JSON answer to the send"
            ) from None
    if not isinstance(data, Mapping):
        raise InvalidRecordError("response", response, "the gateway's JSON object")
    return data


def _code(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | str) and str(value).strip():
        return str(value).strip()
    return None


def _solapi_message_id(
    provider_id: str, data: Mapping[str, Any], to: str, custom_fields: Mapping[str, Any] | None
) -> str:
    mid = data.get("messageId")
    if isinstance(mid, str) and mid:
        code = _code(data.get("statusCode"))
        if code is not None and code not in _SOLAPI_ACCEPTED:
            raise SendRejectedError(provider_id, code, _solapi_text(data, code))
        return mid
    wanted = _digits(to)
    fields = None if custom_fields is None else {k: str(v) for k, v in custom_fields.items()}
    failed = data.get("failedMessageList")
    for item in failed if isinstance(failed, list) else []:
        if isinstance(item, Mapping) and _mine(item, wanted, fields):
            code = _code(item.get("statusCode"))
            raise SendRejectedError(provider_id, code, _solapi_text(item, code))
    listed = data.get("messageList")
    items = list(listed.values()) if isinstance(listed, Mapping) else listed
    candidates = [
        item
        for item in (items if isinstance(items, list) else [])
        if isinstance(item, Mapping)
        and isinstance(item.get("messageId"), str)
        and item["messageId"]
        and _mine(item, wanted, fields)
    ]
    if len(candidates) == 1:
        item = candidates[0]
        code = _code(item.get("statusCode"))
        if code is not None and code not in _SOLAPI_ACCEPTED:
            raise SendRejectedError(provider_id, code, _solapi_text(item, code))
        return str(item["messageId"])
    if len(candidates) > 1:
        raise InvalidRecordError(
            "response.messageList",
            f"{len(candidates)} messages",
            "one message, or custom_fields that tell this message apart",
        )
    if isinstance(failed, list) and failed and not listed:
        item = failed[0] if isinstance(failed[0], Mapping) else {}
        code = _code(item.get("statusCode"))
        raise SendRejectedError(provider_id, code, _solapi_text(item, code))
    raise InvalidRecordError(
        "response",
        "<no messageId>",
        "SOLAPI's answer with a messageId (send with showMessageList: true for send-many)",
    )


def _solapi_text(item: Mapping[str, Any], code: str | None) -> str | None:
    text = item.get("statusMessage") or item.get("reason")
    if isinstance(text, str) and text.strip():
        return text.strip()
    return SOLAPI_STATUS_TEXT.get(code or "")


def _digits(number: str) -> str | None:
    try:
        return normalize_number(number)
    except InvalidRecordError:
        return None


def _mine(item: Mapping[str, Any], to: str | None, fields: Mapping[str, str] | None) -> bool:
    """Whether a SOLAPI list item is this message (by number and custom fields, when given)."""
    item_to = item.get("to")
    if isinstance(item_to, str) and to is not None and _digits(item_to) not in (None, to):
        return False
    if fields is not None:
        theirs = item.get("customFields")
        if not isinstance(theirs, Mapping):
            return False
        return all(str(theirs.get(k)) == v for k, v in fields.items())
    return True


def _iwinv_message_id(provider_id: str, data: Mapping[str, Any]) -> str:
    if "resultCode" in data or "requestNo" in data or "msgid" in data:  # SMS API v2
        code = _code(data.get("resultCode"))
        message = data.get("message")
        text = message.strip() if isinstance(message, str) and message.strip() else None
        if code != "0":
            raise SendRejectedError(provider_id, code, text)
        for key in ("requestNo", "msgid"):
            value = _code(data.get(key))
            if value:
                return value
        raise InvalidRecordError("response", "<no requestNo>", "IWINV's answer with a requestNo")
    code = _code(data.get("code"))
    message = data.get("message")
    text = message.strip() if isinstance(message, str) and message.strip() else None
    if code != "200":
        raise SendRejectedError(provider_id, code, text)
    seq = data.get("seqNo")
    value = _code(seq)
    if value is None or not value.isdigit():
        raise InvalidRecordError("response.seqNo", seq, "IWINV's numeric seqNo of the send")
    return value
