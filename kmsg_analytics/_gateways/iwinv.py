"""IWINV: delivery status from the AlimTalk history and the SMS/LMS/MMS history APIs.

AlimTalk: ``POST {base_url}/api/history/`` with the header ``AUTH: base64(api_key)`` and
a JSON body ``{pageNum, pageSize, startDate, endDate, seqNo, phone?, reserve?}``
(dates ``yyyy-MM-dd HH:mm:ss``); the answer is ``{code: 200, message, totalCount,
list: [{seqNo, phone, statusCode, statusCodeName, requestDate, sendDate, receiveDate,
...}]}``.

SMS/LMS/MMS: ``POST {sms_base_url}/api/history/`` with the header
``secret: base64(sms_api_key + "&" + sms_auth_key)`` and a JSON body ``{version: "1.0",
companyid, startDate, endDate, requestNo, pageNum, pageSize, phone?}`` (dates
``yyyy-MM-dd``, at most 90 days apart); the answer is ``{resultCode: 0, message,
totalCount, list: [{requestNo, msgType, phone, sendStatusCode, sendStatusMsg,
sendDate, ...}]}``.

Where k-msg's IWINV client goes wrong and this one does not:

- dates are written and read in Korea time (Asia/Seoul), not the host's zone;
- an item is taken only when its ``seqNo``/``requestNo`` is the message's (and its
  phone the recipient's, when the store keeps numbers or their masks tell them
  apart); no match is "nothing yet" (``None``), never ``list[0]``, another message;
- pages are followed (``totalCount``) until the message is found;
- an HTTP 5xx or a non-JSON error page is a retryable gateway error (k-msg turns a
  502-504 page into a final ``INVALID_REQUEST``), and SMS authentication and IP
  failures are final ``AUTHENTICATION_FAILED`` (k-msg retries them for 24 hours);
- ``"대기"``/``"처리중"`` AlimTalk states stay ``PENDING`` instead of ``FAILED``.

The recipient number is sent as ``phone`` only when the query carries it (a store
with ``keep_numbers=True``); by default the lookup is by ``seqNo``/``requestNo`` alone.
"""

# ruff: noqa: EM101, EM102 - ProviderError takes a code and a message

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from .._errors import InvalidRecordError
from .._phone import mask_number, normalize_number
from .._providers import DeliveryStatusQuery, DeliveryStatusResult, ProviderError
from ._http import (
    GatewayCheck,
    GatewayProvider,
    HttpClient,
    HttpResponse,
    HttpSettings,
    Secret,
    http_error,
    korea_time,
    not_json_error,
    parse_gateway_time,
    pick_fields,
    scrub,
)

__all__ = [
    "DEFAULT_ALIMTALK_URL",
    "DEFAULT_SMS_URL",
    "IwinvProvider",
    "alimtalk_status",
    "sms_status",
]

DEFAULT_ALIMTALK_URL = "https://alimtalk.bizservice.iwinv.kr"
DEFAULT_SMS_URL = "https://sms.bizservice.iwinv.kr"
HISTORY_PATH = "/api/history/"
_SMS_TYPES = frozenset({"SMS", "LMS", "MMS"})
_SMS_MAX_RANGE = timedelta(days=90)
_LOOKBACK = timedelta(days=1)

_ALIMTALK_RAW = (
    "seqNo",
    "templateCode",
    "reserve",
    "requestDate",
    "sendDate",
    "receiveDate",
    "statusCode",
    "statusCodeName",
    "resendStatus",
    "resendStatusName",
)
_SMS_RAW = (
    "requestNo",
    "msgType",
    "sendStatus",
    "sendStatusCode",
    "sendStatusMsg",
    "sendDate",
)

#: IWINV AlimTalk body codes -> (our code, retryable); others: >= 500 retryable
#: ``PROVIDER_ERROR``, < 500 final ``INVALID_REQUEST``.
_ALIMTALK_CODES: dict[int, tuple[str, bool]] = {
    201: ("AUTHENTICATION_FAILED", False),
    206: ("AUTHENTICATION_FAILED", False),
    401: ("AUTHENTICATION_FAILED", False),
    403: ("AUTHENTICATION_FAILED", False),
    429: ("RATE_LIMIT_EXCEEDED", True),
    519: ("INSUFFICIENT_BALANCE", False),
    404: ("TEMPLATE_NOT_FOUND", False),
    501: ("TEMPLATE_NOT_FOUND", False),
    518: ("PROVIDER_ERROR", True),
    540: ("INVALID_REQUEST", False),
    **{c: ("INVALID_REQUEST", False) for c in range(502, 518)},
}
#: IWINV SMS ``resultCode`` values that are final; others are retryable ``PROVIDER_ERROR``.
_SMS_CODES: dict[int, str] = {
    11: "AUTHENTICATION_FAILED",  # 운영 중인 서비스가 아닙니다
    14: "AUTHENTICATION_FAILED",  # 인증 요청이 올바르지 않습니다
    15: "AUTHENTICATION_FAILED",  # 등록하지 않은 IP
    202: "AUTHENTICATION_FAILED",  # SMS API 인증 실패 / 권한 없음
    206: "AUTHENTICATION_FAILED",  # 등록하지 않은 IP
    **dict.fromkeys((21, 22, 23, 31, 32, 33, 41, 42, 43, 44), "INVALID_REQUEST"),
}
_IP_CODES = frozenset({15, 206})


def alimtalk_status(status_code: object, status_name: object, send_date: object) -> str:
    """Our status for an IWINV AlimTalk history item.

    ``OK`` or a name with "성공" is ``DELIVERED``; a name with "대기"/"처리중", or no
    send date yet, ``PENDING``; anything else with a send date ``FAILED``.

    Examples
    --------
    >>> alimtalk_status("OK", "성공", "2026-11-02 09:00:03")
    'DELIVERED'
    >>> alimtalk_status("K105", "카카오톡 미사용자", "2026-11-02 09:00:03")
    'FAILED'
    >>> alimtalk_status(None, None, None)
    'PENDING'
    """
    return _alimtalk_state(status_code, status_name, parse_gateway_time(send_date) is not None)


def _alimtalk_state(status_code: object, status_name: object, sent: bool) -> str:
    code = status_code.strip() if isinstance(status_code, str) else ""
    name = status_name if isinstance(status_name, str) else ""
    if code.upper() == "OK" or "성공" in name:
        return "DELIVERED"
    if "대기" in name or "처리중" in name or not sent:
        return "PENDING"
    return "FAILED"


def sms_status(send_status_code: object, send_status_msg: object) -> str | None:
    """Our status for an IWINV SMS history item (``None``: it says nothing yet).

    Examples
    --------
    >>> sms_status("06", "전송 성공"), sms_status("01", "처리중"), sms_status("32", "실패")
    ('DELIVERED', 'PENDING', 'FAILED')
    >>> sms_status(None, None) is None
    True
    """
    code = send_status_code.strip() if isinstance(send_status_code, str) else ""
    if isinstance(send_status_code, int) and not isinstance(send_status_code, bool):
        code = str(send_status_code)
    msg = send_status_msg if isinstance(send_status_msg, str) else ""
    if code in ("06", "1000") or "전송 성공" in msg:
        return "DELIVERED"
    if "대기" in msg or "처리중" in msg or code in ("00", "01"):
        return "PENDING"
    if not code and not msg.strip():
        return None
    return "FAILED"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class IwinvProvider(GatewayProvider):
    """IWINV as a provider the polling runner can ask (``async``).

    Parameters
    ----------
    api_key
        The AlimTalk API key (``AUTH`` header); needed for ALIMTALK messages.
    sms_api_key, sms_auth_key, sms_company_id
        The SMS API key pair and the company id; needed for SMS/LMS/MMS messages.
        With only one of the SMS keys, the legacy secret ``api_key&<that key>`` is used.
    base_url, sms_base_url
        The AlimTalk and SMS endpoints (IWINV's unless testing).
    provider_id
        The ``provider_id`` of the records this provider answers for.
    x_forwarded_for
        Sent as ``X-Forwarded-For`` (IWINV checks the caller's IP against its list).
    http
        Timeouts, rate limit (each endpoint has its own), pool size, retries.
    page_size, max_pages
        History page size and how many pages to read before answering "nothing yet".

    Examples
    --------
    >>> p = IwinvProvider(api_key="iwinv-key")
    >>> p.supported_types
    ('ALIMTALK',)
    >>> p
    IwinvProvider(id='iwinv', alimtalk='https://alimtalk.bizservice.iwinv.kr', sms=None)
    >>> p.close()
    """

    name = "IWINV"

    def __init__(
        self,
        api_key: str | Secret | None = None,
        *,
        sms_api_key: str | Secret | None = None,
        sms_auth_key: str | Secret | None = None,
        sms_company_id: str | None = None,
        base_url: str = DEFAULT_ALIMTALK_URL,
        sms_base_url: str = DEFAULT_SMS_URL,
        provider_id: str = "iwinv",
        x_forwarded_for: str | None = None,
        http: HttpSettings | Mapping[str, Any] | None = None,
        page_size: int = 50,
        max_pages: int = 10,
    ) -> None:
        key = Secret(api_key) if api_key else None
        sms_key = Secret(sms_api_key) if sms_api_key else None
        sms_auth = Secret(sms_auth_key) if sms_auth_key else None
        if not isinstance(provider_id, str) or not provider_id.strip():
            raise InvalidRecordError("iwinv.provider_id", provider_id, "a non-empty string")
        for name, value, top in (("page_size", page_size, 1000), ("max_pages", max_pages, 1000)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise InvalidRecordError(f"iwinv.{name}", value, f"a whole number from 1 to {top}")
        self.id = provider_id.strip()
        self.page_size = page_size
        self.max_pages = max_pages
        self.x_forwarded_for = x_forwarded_for or None
        sms_secret: str | None = None
        if sms_key and sms_auth:
            sms_secret = _b64(f"{sms_key.reveal()}&{sms_auth.reveal()}")
        elif key and (sms_auth or sms_key):
            other = sms_auth or sms_key
            assert other is not None
            sms_secret = _b64(f"{key.reveal()}&{other.reveal()}")
        company = (sms_company_id or "").strip() or None
        self.sms_company_id = company
        if key is None and (sms_secret is None or company is None):
            raise InvalidRecordError(
                "iwinv credentials",
                "<not shown>",
                "api_key (AlimTalk) and/or sms_api_key, sms_auth_key and sms_company_id (SMS); "
                "set IWINV_API_KEY or IWINV_SMS_API_KEY/IWINV_SMS_AUTH_KEY/IWINV_SMS_COMPANY_ID",
            )
        settings = http if isinstance(http, HttpSettings) else HttpSettings(**dict(http or {}))
        shown = [s.reveal() for s in (key, sms_key, sms_auth) if s]
        self._auth_header = _b64(key.reveal()) if key else None
        self._sms_secret = sms_secret
        secret_texts = [*shown, *(s for s in (self._auth_header, sms_secret) if s)]
        self._alimtalk = (
            HttpClient(base_url, gateway="IWINV", settings=settings, secrets=secret_texts)
            if key
            else None
        )
        self._sms = (
            HttpClient(sms_base_url, gateway="IWINV SMS", settings=settings, secrets=secret_texts)
            if sms_secret and company
            else None
        )
        self._clients = tuple(c for c in (self._alimtalk, self._sms) if c is not None)
        types: list[str] = []
        if self._alimtalk is not None:
            types.append("ALIMTALK")
        if self._sms is not None:
            types.extend(("SMS", "LMS", "MMS"))
        self.supported_types: tuple[str, ...] = tuple(types)

    def __repr__(self) -> str:
        alimtalk = self._alimtalk.base_url if self._alimtalk else None
        sms = self._sms.base_url if self._sms else None
        return f"IwinvProvider(id={self.id!r}, alimtalk={alimtalk!r}, sms={sms!r})"

    def _headers(self, extra: Mapping[str, str]) -> dict[str, str]:
        headers = {"Content-Type": "application/json;charset=UTF-8", **extra}
        if self.x_forwarded_for:
            headers["X-Forwarded-For"] = self.x_forwarded_for
        return headers

    # ------------------------------------------------------------------ status

    async def get_delivery_status(self, query: DeliveryStatusQuery) -> DeliveryStatusResult | None:
        """The message's status from IWINV's history; ``None`` when it is not listed yet."""
        pmid = (query.provider_message_id or "").strip()
        if not pmid:
            raise ProviderError("INVALID_REQUEST", "providerMessageId is required", retryable=False)
        if query.type == "ALIMTALK":
            return await self._alimtalk_status(query, pmid)
        if query.type in _SMS_TYPES:
            return await self._sms_status(query, pmid)
        msg = f"IWINV reports delivery status of ALIMTALK, SMS, LMS and MMS only, not {query.type}"
        raise ProviderError("UNSUPPORTED_TYPE", msg, retryable=False)

    def _window(self, query: DeliveryStatusQuery) -> tuple[datetime, datetime]:
        start = query.requested_at
        if query.scheduled_at is not None:
            start = min(start, query.scheduled_at)
        end = query.checked_at or datetime.now(UTC)
        return start - _LOOKBACK, max(end, start)

    async def _alimtalk_status(
        self, query: DeliveryStatusQuery, pmid: str
    ) -> DeliveryStatusResult | None:
        client = self._alimtalk
        if client is None:
            msg = "IWINV AlimTalk is not configured (api_key / IWINV_API_KEY)"
            raise ProviderError("PROVIDER_NOT_CONFIGURED", msg, retryable=True)
        if not pmid.isdigit():
            msg = f"an IWINV AlimTalk message id is its numeric seqNo, not {pmid[:40]!r}"
            raise ProviderError("INVALID_REQUEST", msg, retryable=False)
        start, end = self._window(query)
        body: dict[str, Any] = {
            "pageNum": 1,
            "pageSize": self.page_size,
            "startDate": korea_time(start),
            "endDate": korea_time(end),
            "seqNo": int(pmid),
        }
        phone = _phone(query.to)
        if phone:
            body["phone"] = phone
        if query.scheduled_at is not None:
            body["reserve"] = "Y"
        for page in range(1, self.max_pages + 1):
            body["pageNum"] = page
            data = await self._post_alimtalk(client, body)
            items = data.get("list")
            items = items if isinstance(items, list) else []
            found = _matching(items, "seqNo", pmid, query)
            if found is not None:
                return self._alimtalk_result(pmid, found)
            if not _more_pages(data, page, self.page_size, len(items)):
                return None
        return None

    async def _post_alimtalk(self, client: HttpClient, body: Mapping[str, Any]) -> dict[str, Any]:
        assert self._auth_header is not None
        headers = self._headers({"AUTH": self._auth_header})
        response = await client.request("POST", HISTORY_PATH, headers=headers, json_body=body)
        data = _json_object(response)
        code = _int_code(data.get("code")) if data is not None else None
        if response.status == 200 and data is not None and code == 200:
            return data
        if response.status == 200 and data is None:
            raise not_json_error(response, client.gateway, client.secrets)
        if response.status >= 500 or data is None or code is None:
            message = _text(data.get("message")) if data is not None else None
            raise http_error(
                response,
                "IWINV",
                secrets=client.secrets,
                code=None if code is None else str(code),
                message=message,
            )
        error, retryable = _ALIMTALK_CODES.get(
            code, ("PROVIDER_ERROR", True) if code >= 500 else ("INVALID_REQUEST", False)
        )
        text = _text(data.get("message")) or "IWINV history query failed"
        detail = f"IWINV AlimTalk history code {code}: {text}"
        if code == 206:
            detail += "; register this host's public IP in the IWINV console"
        elif error == "AUTHENTICATION_FAILED":
            detail += "; check the AlimTalk API key (IWINV_API_KEY)"
        _raise(error, detail, retryable, client)

    def _alimtalk_result(self, pmid: str, item: Mapping[str, Any]) -> DeliveryStatusResult:
        code = _text(item.get("statusCode"))
        name = _text(item.get("statusCodeName"))
        sent = parse_gateway_time(item.get("sendDate"))
        status = _alimtalk_state(code, name, sent is not None)
        received = parse_gateway_time(item.get("receiveDate")) if status != "PENDING" else None
        return DeliveryStatusResult(
            provider_id=self.id,
            provider_message_id=pmid,
            status=status,
            status_code=code,
            status_message=name,
            sent_at=sent,
            delivered_at=(received or sent) if status == "DELIVERED" else None,
            failed_at=(received or sent) if status == "FAILED" else None,
            raw=pick_fields(item, _ALIMTALK_RAW),
        )

    async def _sms_status(
        self, query: DeliveryStatusQuery, pmid: str
    ) -> DeliveryStatusResult | None:
        client = self._sms
        if client is None:
            msg = (
                "IWINV SMS history is not configured (sms_api_key, sms_auth_key, "
                "sms_company_id / IWINV_SMS_API_KEY, IWINV_SMS_AUTH_KEY, IWINV_SMS_COMPANY_ID)"
            )
            raise ProviderError("PROVIDER_NOT_CONFIGURED", msg, retryable=True)
        start, end = self._window(query)
        if end - start > _SMS_MAX_RANGE:
            if end - _SMS_MAX_RANGE > query.requested_at:
                msg = "IWINV keeps SMS history searchable for 90 days; this message is older"
                raise ProviderError("HISTORY_WINDOW_EXCEEDED", msg, retryable=False)
            start = end - _SMS_MAX_RANGE
        body: dict[str, Any] = {
            "version": "1.0",
            "companyid": self.sms_company_id,
            "startDate": korea_time(start, "%Y-%m-%d"),
            "endDate": korea_time(end, "%Y-%m-%d"),
            "requestNo": pmid,
            "pageNum": 1,
            "pageSize": self.page_size,
        }
        phone = _phone(query.to)
        if phone:
            body["phone"] = phone
        for page in range(1, self.max_pages + 1):
            body["pageNum"] = page
            data = await self._post_sms(client, body)
            items = data.get("list")
            items = items if isinstance(items, list) else []
            found = _matching(items, "requestNo", pmid, query)
            if found is not None:
                return self._sms_result(pmid, found)
            if not _more_pages(data, page, self.page_size, len(items)):
                return None
        return None

    async def _post_sms(self, client: HttpClient, body: Mapping[str, Any]) -> dict[str, Any]:
        assert self._sms_secret is not None
        headers = self._headers({"secret": self._sms_secret})
        response = await client.request("POST", HISTORY_PATH, headers=headers, json_body=body)
        data = _json_object(response)
        code = _int_code(data.get("resultCode", data.get("code"))) if data is not None else None
        if response.status == 200 and data is not None and code == 0:
            return data
        if response.status == 200 and data is None:
            raise not_json_error(response, client.gateway, client.secrets)
        if response.status >= 500 or data is None or code is None:
            message = _text(data.get("message")) if data is not None else None
            raise http_error(
                response,
                "IWINV SMS",
                secrets=client.secrets,
                code=None if code is None else str(code),
                message=message,
            )
        error = _SMS_CODES.get(code, "PROVIDER_ERROR")
        text = _text(data.get("message")) or "IWINV SMS history query failed"
        detail = f"IWINV SMS history resultCode {code}: {text}"
        if code in _IP_CODES:
            detail += "; register this host's public IP in the IWINV console"
        elif error == "AUTHENTICATION_FAILED":
            detail += "; check the SMS API key, auth key and company id"
        _raise(error, detail, error == "PROVIDER_ERROR", client)

    def _sms_result(self, pmid: str, item: Mapping[str, Any]) -> DeliveryStatusResult | None:
        raw_code = item.get("sendStatusCode")
        code = _text(raw_code) if not isinstance(raw_code, int) else str(raw_code)
        message = _text(item.get("sendStatusMsg")) or _text(item.get("sendStatus"))
        status = sms_status(code, message)
        if status is None:
            return None
        sent = parse_gateway_time(item.get("sendDate"))
        return DeliveryStatusResult(
            provider_id=self.id,
            provider_message_id=pmid,
            status=status,
            status_code=code,
            status_message=message,
            sent_at=sent if status != "PENDING" else None,
            delivered_at=sent if status == "DELIVERED" else None,
            failed_at=sent if status == "FAILED" else None,
            raw=pick_fields(item, _SMS_RAW),
        )

    # ------------------------------------------------------------------ check

    async def check(self) -> list[GatewayCheck]:
        """Check each configured endpoint: reachable, and the credentials accepted."""
        now = datetime.now(UTC)
        checks: list[GatewayCheck] = []
        if self._alimtalk is not None:
            body = {
                "pageNum": 1,
                "pageSize": 1,
                "startDate": korea_time(now - _LOOKBACK),
                "endDate": korea_time(now),
            }
            checks.append(
                await _timed(
                    f"{self.id} alimtalk",
                    self._alimtalk,
                    self._post_alimtalk(self._alimtalk, body),
                    "AlimTalk key accepted; history readable",
                )
            )
        if self._sms is not None:
            body = {
                "version": "1.0",
                "companyid": self.sms_company_id,
                "startDate": korea_time(now - _LOOKBACK, "%Y-%m-%d"),
                "endDate": korea_time(now, "%Y-%m-%d"),
                "pageNum": 1,
                "pageSize": 1,
            }
            checks.append(
                await _timed(
                    f"{self.id} sms",
                    self._sms,
                    self._post_sms(self._sms, body),
                    "SMS keys and company id accepted; history readable",
                )
            )
        return checks


async def _timed(name: str, client: HttpClient, call: Any, ok_message: str) -> GatewayCheck:
    started = time.perf_counter()
    try:
        await call
    except ProviderError as err:
        took = time.perf_counter() - started
        return GatewayCheck(name, client.base_url, False, took, err.code, err.message)
    took = time.perf_counter() - started
    return GatewayCheck(name, client.base_url, True, took, None, ok_message)


def _raise(code: str, detail: str, retryable: bool, client: HttpClient) -> NoReturn:
    raise ProviderError(code, scrub(detail, client.secrets), retryable=retryable)


def _json_object(response: HttpResponse) -> dict[str, Any] | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _int_code(value: object) -> int | None:
    """A numeric code, given as a JSON number or digits (IWINV sends both)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _text(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _phone(number: str | None) -> str | None:
    if not number:
        return None
    try:
        return normalize_number(number)
    except InvalidRecordError:
        return None


def _same_phone(item_phone: object, query: DeliveryStatusQuery) -> bool | None:
    """Whether the item's phone is the recipient's (``None``: cannot tell)."""
    if not isinstance(item_phone, str) or not item_phone.strip():
        return None
    wanted = _phone(query.to)
    shown = item_phone.strip()
    if "*" in shown:  # IWINV masked it already
        if query.to_masked:
            return shown == query.to_masked
        return None if wanted is None else shown == mask_number(wanted)
    digits = _phone(shown)
    if digits is None:
        return None
    if wanted is not None:
        return digits == wanted
    if query.to_masked:
        return mask_number(digits) == query.to_masked
    return None


def _matching(
    items: Sequence[Any], id_field: str, pmid: str, query: DeliveryStatusQuery
) -> Mapping[str, Any] | None:
    """The item of this message: its id, and its phone unless another one's.

    Several items of one id (a request to several numbers) are told apart by the
    number; when they cannot be and say different things, the lookup is retried later.
    """
    same_id = [
        item for item in items if isinstance(item, Mapping) and _text(item.get(id_field)) == pmid
    ]
    if not same_id:
        return None
    candidates = [item for item in same_id if _same_phone(item.get("phone"), query) is not False]
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    states = {
        (
            _text(c.get("statusCode")),
            _text(c.get("sendStatusCode")),
            _text(c.get("statusCodeName")),
            _text(c.get("sendStatusMsg")),
        )
        for c in candidates
    }
    if len(states) == 1:
        return candidates[0]
    msg = (
        f"{len(candidates)} history items share id {pmid} and the recipient number cannot "
        "tell them apart (keep numbers, or mask them distinctly); checking again later"
    )
    raise ProviderError("AMBIGUOUS_PROVIDER_RESULT", msg, retryable=True)


def _more_pages(data: Mapping[str, Any], page: int, page_size: int, got: int) -> bool:
    total = _int_code(data.get("totalCount"))
    if total is not None:
        return page * page_size < total
    return got >= page_size
