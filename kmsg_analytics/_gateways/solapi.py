"""SOLAPI: delivery status from the message list API, signed with HMAC-SHA256.

``GET {base_url}/messages/v4/list?limit=1&messageId=<id>`` with the header
``Authorization: HMAC-SHA256 apiKey=<key>, date=<ISO 8601>, salt=<salt>,
signature=<hex HMAC-SHA256(secret, date + salt)>`` (a fresh date and salt for every
request; SOLAPI refuses a date more than 15 minutes off and a signature used twice).
The account needs the ``message:read`` permission.

Where k-msg's SOLAPI client goes wrong and this one does not:

- every failure code (1xxx intake errors, 2xxx platform errors other than 2000, 3xxx
  carrier errors other than 3000) is ``FAILED`` with its code and reason kept (k-msg's
  regex never matches, so they became ``UNKNOWN``);
- times come from the fields SOLAPI returns (``dateProcessed``, ``dateReported``,
  ``dateReceived``, ``dateUpdated``), and the message from ``reason`` (k-msg reads
  ``dateSent``/``dateCompleted``/``statusMessage``, which SOLAPI does not have);
- a 429 is a retryable rate limit honouring ``Retry-After`` and 5xx are retryable
  (k-msg makes every 4xx, 429 included, a final ``INVALID_REQUEST``); a host clock
  more than 15 minutes off (``RequestTimeTooSkewed``) is retryable too, since the fix
  is the clock, not the message;
- a message is only ever answered from its own entry (its id must match), else
  "nothing yet" (``None``).

Checks that run at the same time are asked together: the lookups started in one turn
of the event loop (the runner starts its ``concurrency`` checks so) go out as one
request, ``GET .../list?limit=<n>&messageIds=<id1>&messageIds=<id2>...``, up to
``batch_size`` ids and about 6,000 characters of them (the ``messageIds`` filter of
SOLAPI's own SDK, ``solapi`` 5.x/6.x ``getMessages({messageIds})``, which repeats the
key). Each message is still taken
only from its own entry. A batch refused as a bad request is asked again id by id, so
one malformed id fails alone; a gateway answering a batch with messages it was not
asked about (ignoring the filter) makes the provider ask one id per request from then
on. A lone lookup uses the documented single form (``messageId=<id>&limit=1``).
"""

# ruff: noqa: EM101 - ProviderError takes a code and a message

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from .._errors import InvalidRecordError
from .._providers import DeliveryStatusQuery, DeliveryStatusResult, ProviderError
from .._records import MESSAGE_TYPES
from ._http import (
    GatewayCheck,
    GatewayProvider,
    HttpClient,
    HttpResponse,
    HttpSettings,
    Secret,
    _q,
    http_error,
    not_json_error,
    parse_gateway_time,
    pick_fields,
)

__all__ = ["DEFAULT_BASE_URL", "SOLAPI_STATUS_TEXT", "SolapiProvider", "solapi_status"]

DEFAULT_BASE_URL = "https://api.solapi.com"
LIST_PATH = "/messages/v4/list"
MAX_BATCH = 500  # ids per list request (the largest ``limit`` known to be used)
_MAX_QUERY = 6000  # characters of ids per request: well under the usual 8 KB request line

log = logging.getLogger("kmsg_analytics.gateways")

_BY_CODE = {"2000": "PENDING", "3000": "SENT", "4000": "DELIVERED"}
_FAILURE_CODE = re.compile(r"[123][0-9]{3}")
#: SOLAPI's ``status`` field, for codes outside the table (e.g. test-mode ``TEST1000``).
_BY_STATE = {"PENDING": "PENDING", "SENDING": "SENT", "FAILED": "FAILED"}

#: SOLAPI's status codes (its documentation's message-status-codes table), for failures
#: that come without a ``reason``.
SOLAPI_STATUS_TEXT: Mapping[str, str] = {
    "1010": "필수 입력 값 미입력",
    "1011": "입력 값 형식 오류",
    "1013": "SMS는 제목을 입력할 수 없음",
    "1014": "제목 길이 초과(40byte)",
    "1020": "계정 또는 패스워드 오류",
    "1021": "메시지 없음",
    "1022": "그룹 없음",
    "1023": "이미지 없음",
    "1024": "서버 오류",
    "1025": "잘못된 메시지 타입",
    "1026": "중복된 수신번호",
    "1027": "UTF-8 문자만 허용",
    "1028": "출력할 수 없는 문자 포함",
    "1029": "EUC-KR 범위 밖의 문자 포함",
    "1030": "잔액 부족",
    "1031": "메시지 길이 초과",
    "1032": "커스텀 필드 오류",
    "1033": "kakaoOptions는 ATA/CTA만 사용 가능",
    "1034": "imageId 없음",
    "1041": "플러스친구 정보 오류",
    "1042": "템플릿 아이디 오류",
    "1043": "템플릿 내용 불일치",
    "1058": "전송경로 없음",
    "1060": "차단된 수신번호",
    "1061": "080 수신거부",
    "1062": "발신번호 미등록",
    "1064": "KISA 차단",
    "2000": "정상 접수(이통사로 접수 예정)",
    "2011": "입력 값 형식 오류",
    "2024": "서버 오류",
    "2060": "차단된 수신번호",
    "2061": "080 수신거부",
    "2062": "발신번호 미등록",
    "2063": "차단된 계정",
    "2064": "KISA 차단",
    "2230": "잔액 부족",
    "2254": "플랫폼 스팸 처리",
    "3000": "이통사로 접수 완료(리포트 대기)",
    "3010": "수신번호 형식 오류",
    "3011": "형식 오류",
    "3012": "연동처 서버 오류",
    "3013": "발신번호 형식 오류",
    "3014": "알 수 없는 상태",
    "3024": "서버 오류",
    "3031": "전송 불가",
    "3032": "미가입자",
    "3040": "전송시간 초과",
    "3041": "단말기 busy",
    "3042": "음영지역",
    "3043": "단말기 Power off",
    "3044": "단말기 메시지 저장갯수 초과",
    "3045": "단말기 일시 서비스 정지",
    "3046": "기타 단말기 문제",
    "3047": "착신거절",
    "3048": "Unknown error",
    "3050": "SMS를 받을 수 없는 단말",
    "3051": "호 불가 상태",
    "3052": "운영자가 삭제한 메시지",
    "3053": "Que Full",
    "3054": "SPAM",
    "3055": "nospam 등록 번호",
    "3056": "무선망단 전송 실패",
    "3057": "무선망에서 단말기로 전송 실패",
    "3058": "전송경로 없음",
    "3059": "변작된 발신번호",
    "3060": "성인인증 실패",
    "3101": "발신프로필키 오류",
    "3102": "카카오톡 친구 아님",
    "3103": "템플릿 불일치",
    "3104": "카카오톡 미사용자",
    "3105": "미등록 템플릿",
    "3106": "유효하지 않은 채널",
    "3107": "72시간 내 카카오톡 미사용자 또는 알림톡 차단",
    "3108": "메시지 발송 가능한 시간이 아님(08~20시)",
    "4000": "발송 처리 완료",
}

#: Fields kept as ``raw`` (no numbers, no message text).
_RAW_FIELDS = (
    "messageId",
    "groupId",
    "type",
    "country",
    "status",
    "statusCode",
    "reason",
    "networkName",
    "networkCode",
    "replacement",
    "resendCount",
    "dateCreated",
    "dateUpdated",
    "dateProcessed",
    "dateReported",
    "dateReceived",
)


def solapi_status(status_code: object, state: object = None) -> str | None:
    """Our status for a SOLAPI ``statusCode`` (then its ``status`` field); ``None``: unknown.

    Examples
    --------
    >>> [solapi_status(c) for c in ("2000", "3000", "4000", "3104", "1062", "2230")]
    ['PENDING', 'SENT', 'DELIVERED', 'FAILED', 'FAILED', 'FAILED']
    >>> solapi_status("TEST1000", "PENDING"), solapi_status("TEST1000")
    ('PENDING', None)
    """
    code = str(status_code).strip() if isinstance(status_code, str | int) else ""
    mapped = _BY_CODE.get(code)
    if mapped is not None:
        return mapped
    if _FAILURE_CODE.fullmatch(code):
        return "FAILED"
    if isinstance(state, str):
        return _BY_STATE.get(state.strip().upper())
    return None


def sign(api_key: str, api_secret: str, *, date: str | None = None, salt: str | None = None) -> str:
    """SOLAPI's ``Authorization`` value: HMAC-SHA256 over ``date + salt`` keyed by the secret.

    Examples
    --------
    >>> sign("NCSAYU7YDBXYORXC", "secret", date="2019-07-01T00:41:48Z", salt="jqsba2jxjnrjor")
    ... # doctest: +ELLIPSIS
    'HMAC-SHA256 apiKey=NCSAYU7YDBXYORXC, date=2019-07-01T00:41:48Z, salt=jqsba2jxjnrjor, sig...'
    """
    if date is None:
        date = _utc_stamp()
    if salt is None:
        salt = secrets.token_hex(16)  # 32 characters of SOLAPI's salt alphabet
    signature = hmac.new(api_secret.encode(), (date + salt).encode(), hashlib.sha256).hexdigest()
    return f"HMAC-SHA256 apiKey={api_key}, date={date}, salt={salt}, signature={signature}"


_stamp: tuple[int, str] = (0, "")


def _utc_stamp() -> str:
    """Now as ``2026-11-02T00:00:05Z`` (made once a second: every request signs with it)."""
    global _stamp
    second = int(time.time())
    if _stamp[0] != second:
        _stamp = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return _stamp[1]


class SolapiProvider(GatewayProvider):
    """SOLAPI as a provider the polling runner can ask (``async``).

    Parameters
    ----------
    api_key, api_secret
        The API key pair (strings or :class:`~kmsg_analytics._gateways.Secret`); they are
        never shown by ``repr``, logs or errors.
    base_url
        ``https://api.solapi.com`` unless testing.
    provider_id
        The ``provider_id`` of the records this provider answers for.
    http
        Timeouts, rate limit, pool size and retries (an ``HttpSettings`` or its mapping).
    max_pages
        Pages of the list to follow (``nextKey``) before answering "nothing yet".
    batch_size
        Most message ids asked in one request when checks run at the same time
        (1 to 500; 1 asks one id per request).

    Examples
    --------
    >>> p = SolapiProvider("NCSAYU7YDBXYORXC", "not-a-real-secret")
    >>> p  # doctest: +NORMALIZE_WHITESPACE
    SolapiProvider(id='solapi', base_url='https://api.solapi.com', api_key=Secret('***'),
                   rate_limit=50/s)
    >>> "not-a-real-secret" in repr(vars(p))
    False
    >>> p.close()
    """

    name = "SOLAPI"
    supported_types: tuple[str, ...] = MESSAGE_TYPES

    def __init__(
        self,
        api_key: str | Secret,
        api_secret: str | Secret,
        *,
        base_url: str = DEFAULT_BASE_URL,
        provider_id: str = "solapi",
        http: HttpSettings | Mapping[str, Any] | None = None,
        max_pages: int = 3,
        batch_size: int = 100,
    ) -> None:
        key, secret = Secret(api_key), Secret(api_secret)
        if not key or not secret:
            raise InvalidRecordError(
                "solapi.api_key/api_secret",
                "<not shown>",
                "both SOLAPI credentials (set SOLAPI_API_KEY and SOLAPI_API_SECRET, "
                "or api_key/api_secret in gateways.toml)",
            )
        if not isinstance(provider_id, str) or not provider_id.strip():
            raise InvalidRecordError("solapi.provider_id", provider_id, "a non-empty string")
        if not isinstance(max_pages, int) or isinstance(max_pages, bool) or max_pages < 1:
            raise InvalidRecordError("solapi.max_pages", max_pages, "a whole number >= 1")
        if (
            not isinstance(batch_size, int)
            or isinstance(batch_size, bool)
            or not 1 <= batch_size <= MAX_BATCH
        ):
            raise InvalidRecordError(
                "solapi.batch_size", batch_size, f"a whole number from 1 to {MAX_BATCH}"
            )
        self.id = provider_id.strip()
        self._key = key
        self._secret = secret
        self.max_pages = max_pages
        self.batch_size = batch_size
        self._batching = batch_size > 1  # off for good if SOLAPI ignores messageIds
        self._batches: dict[int, _Batch] = {}  # the batch being gathered, per event loop
        self._inflight: set[asyncio.Task[None]] = set()
        settings = http if isinstance(http, HttpSettings) else HttpSettings(**dict(http or {}))
        self._http = HttpClient(
            base_url,
            gateway=self.name,
            settings=settings,
            secrets=(key.reveal(), secret.reveal()),
        )
        self._clients = (self._http,)

    def __repr__(self) -> str:
        limiter = self._http.limiter
        limit = "none" if limiter is None else f"{limiter.rate:g}/s"
        return (
            f"SolapiProvider(id={self.id!r}, base_url={self._http.base_url!r}, "
            f"api_key={self._key!r}, rate_limit={limit})"
        )

    @property
    def base_url(self) -> str:
        """The endpoint asked."""
        return self._http.base_url

    def _auth(self) -> dict[str, str]:
        return {"Authorization": sign(self._key.reveal(), self._secret.reveal())}

    # ------------------------------------------------------------------ status

    async def get_delivery_status(self, query: DeliveryStatusQuery) -> DeliveryStatusResult | None:
        """The message's status from SOLAPI's message list; ``None`` when not listed yet.

        Raises :class:`~kmsg_analytics._providers.ProviderError` (classified for retrying)
        when SOLAPI cannot be asked or refuses.
        """
        pmid = (query.provider_message_id or "").strip()
        if not pmid:
            raise ProviderError("INVALID_REQUEST", "providerMessageId is required", retryable=False)
        if not self._batching:
            return await self._lookup(pmid)
        loop = asyncio.get_running_loop()
        batch = self._batches.get(id(loop))
        if batch is None or batch.loop is not loop:
            batch = self._batches[id(loop)] = _Batch(loop)
            loop.call_soon(self._flush, batch)  # after every check started in this turn
        answer: asyncio.Future[DeliveryStatusResult | None] = loop.create_future()
        waiting = batch.ids.get(pmid)
        if waiting is None:
            batch.ids[pmid] = [answer]
            batch.chars += len(_q(pmid)) + 12  # "&messageIds=<id>"
        else:
            waiting.append(answer)
        if len(batch.ids) >= self.batch_size or batch.chars >= _MAX_QUERY:
            self._flush(batch)
        return await answer

    async def _lookup(self, pmid: str) -> DeliveryStatusResult | None:
        """One message, one request (``messageId=<id>``), following ``nextKey``."""
        start_key: str | None = None
        for _ in range(self.max_pages):
            data = await self._list({"startKey": start_key, "limit": 1, "messageId": pmid})
            message = _find(data.get("messageList"), pmid)
            if message is not None:
                return self._result(pmid, message)
            next_key = data.get("nextKey")
            if not isinstance(next_key, str) or not next_key or next_key == start_key:
                return None
            start_key = next_key
        return None

    # ------------------------------------------------------------------ batches

    def _flush(self, batch: _Batch) -> None:
        """Send the batch off (once) and start gathering a new one."""
        if batch.sent:
            return
        batch.sent = True
        if self._batches.get(id(batch.loop)) is batch:
            del self._batches[id(batch.loop)]
        task = batch.loop.create_task(self._answer(batch))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _answer(self, batch: _Batch) -> None:
        """Look the batch's ids up and hand each waiting check its own outcome."""
        try:
            outcomes = await self._lookup_many(list(batch.ids))
        except asyncio.CancelledError:  # the loop shuts down
            for waiting in batch.ids.values():
                for answer in waiting:
                    answer.cancel()
            raise
        except Exception as err:
            for waiting in batch.ids.values():
                for answer in waiting:
                    if not answer.done():
                        answer.set_exception(_copy(err))
            return
        for pmid, waiting in batch.ids.items():
            outcome = outcomes.get(pmid)
            for answer in waiting:
                if answer.done():  # the check gave up (its timeout)
                    continue
                if isinstance(outcome, ProviderError):
                    answer.set_exception(_copy(outcome))
                else:
                    answer.set_result(outcome)

    async def _outcome(self, pmid: str) -> DeliveryStatusResult | ProviderError | None:
        try:
            return await self._lookup(pmid)
        except ProviderError as err:
            return err

    async def _one_by_one(
        self, pmids: Sequence[str]
    ) -> dict[str, DeliveryStatusResult | ProviderError | None]:
        outcomes = await asyncio.gather(*(self._outcome(pmid) for pmid in pmids))
        return dict(zip(pmids, outcomes, strict=True))

    async def _lookup_many(
        self, pmids: list[str]
    ) -> dict[str, DeliveryStatusResult | ProviderError | None]:
        """Each id's outcome: its result, ``None`` (not listed yet) or its error."""
        if len(pmids) == 1:
            return {pmids[0]: await self._outcome(pmids[0])}
        wanted = set(pmids)
        found: dict[str, Mapping[str, Any]] = {}
        outcomes: dict[str, DeliveryStatusResult | ProviderError | None] = {}
        start_key: str | None = None
        for _ in range(self.max_pages):
            params = {"startKey": start_key, "limit": len(pmids), "messageIds": pmids}
            try:
                data = await self._list(params)
            except ProviderError as err:
                if err.retryable or err.code == "AUTHENTICATION_FAILED":
                    return dict.fromkeys(pmids, err)
                return await self._one_by_one(pmids)  # one bad id must not fail the rest
            listed = data.get("messageList")
            for pmid in wanted.difference(found):
                message = _find(listed, pmid)
                if message is not None:
                    found[pmid] = message
            if _foreign(listed, wanted):  # the filter was ignored: ask the rest one by one
                if self._batching:
                    log.warning(
                        "%s answered a messageIds lookup with other messages; "
                        "asking one message id per request from now on",
                        self.name,
                    )
                self._batching = False
                outcomes = await self._one_by_one([p for p in pmids if p not in found])
                break
            next_key = data.get("nextKey")
            if (
                len(found) == len(wanted)
                or not isinstance(next_key, str)
                or not next_key
                or next_key == start_key
            ):
                break
            start_key = next_key
        for pmid, message in found.items():
            try:
                outcomes[pmid] = self._result(pmid, message)
            except ProviderError as err:
                outcomes[pmid] = err
        return outcomes

    async def _list(self, params: Mapping[str, Any]) -> dict[str, Any]:
        retried_signature = False
        while True:
            response = await self._http.request("GET", LIST_PATH, query=params, headers=self._auth)
            if response.status == 200:
                break
            error_code, error_message = _error_body(response)
            if error_code == "DuplicatedSignature" and not retried_signature:
                retried_signature = True  # a fresh salt signs differently
                continue
            raise self._error(response, error_code, error_message)
        try:
            data = response.json()
        except ValueError:
            raise not_json_error(response, self.name, self._http.secrets) from None
        if not isinstance(data, dict):
            raise not_json_error(response, self.name, self._http.secrets)
        return data

    def _error(
        self, response: HttpResponse, code: str | None, message: str | None
    ) -> ProviderError:
        err = http_error(
            response, self.name, secrets=self._http.secrets, code=code, message=message
        )
        if code == "RequestTimeTooSkewed":
            hint = "; this host's clock is more than 15 minutes off: fix it (NTP)"
            return ProviderError(err.code, err.message + hint, retryable=True)
        if err.code == "AUTHENTICATION_FAILED":
            hint = (
                "; check SOLAPI_API_KEY/SOLAPI_API_SECRET and that the key may read "
                "messages (message:read)"
            )
            return ProviderError(err.code, err.message + hint, retryable=False)
        return err

    def _result(self, pmid: str, message: Mapping[str, Any]) -> DeliveryStatusResult:
        raw_code = message.get("statusCode")
        code = str(raw_code).strip() if isinstance(raw_code, str | int) else None
        status = solapi_status(code, message.get("status"))
        if status is None:
            msg = (
                f"SOLAPI reported statusCode {code!r} (status {message.get('status')!r}), "
                "which is not a known status; checking again later"
            )
            raise ProviderError("UNRECOGNIZED_STATUS", msg, retryable=True)
        reason = message.get("reason")
        text = reason.strip() if isinstance(reason, str) and reason.strip() else None
        if text is None and code is not None:
            text = SOLAPI_STATUS_TEXT.get(code)
        sent = delivered = failed = None
        if status != "PENDING":
            sent = parse_gateway_time(message.get("dateProcessed"))
        if status == "DELIVERED":  # when the handset got it, else when the report came
            delivered = _first_time(message, "dateReceived", "dateReported", "dateUpdated")
        elif status == "FAILED":
            failed = _first_time(
                message, "dateReported", "dateReceived", "dateProcessed", "dateUpdated"
            )
        return DeliveryStatusResult(
            provider_id=self.id,
            provider_message_id=pmid,
            status=status,
            status_code=code,
            status_message=text,
            sent_at=sent,
            delivered_at=delivered,
            failed_at=failed,
            raw=pick_fields(message, _RAW_FIELDS),
        )

    # ------------------------------------------------------------------ check

    async def check(self) -> GatewayCheck:
        """Whether SOLAPI is reachable and accepts these credentials for reading messages."""
        started = time.perf_counter()
        try:
            await self._list({"limit": 1})
        except ProviderError as err:
            took = time.perf_counter() - started
            return GatewayCheck(self.id, self.base_url, False, took, err.code, err.message)
        took = time.perf_counter() - started
        message = "credentials accepted; the message list is readable (message:read)"
        return GatewayCheck(self.id, self.base_url, True, took, None, message)


class _Batch:
    """The ids asked on one event loop in one turn, and the checks waiting for each."""

    __slots__ = ("chars", "ids", "loop", "sent")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ids: dict[str, list[asyncio.Future[DeliveryStatusResult | None]]] = {}
        self.chars = 0  # of the request's query
        self.sent = False


def _copy(err: Exception) -> Exception:
    """A fresh error for each waiting check (one object raised in many tasks tangles
    their tracebacks)."""
    if isinstance(err, ProviderError):
        return ProviderError(err.code, err.message, retryable=err.retryable)
    return err


def _foreign(message_list: object, wanted: set[str]) -> bool:
    """Whether SOLAPI's ``messageList`` holds a message that was not asked about."""
    if isinstance(message_list, Mapping):
        items: Any = message_list.values()
    elif isinstance(message_list, list):
        items = message_list
    else:
        return False
    for item in items:
        if isinstance(item, Mapping):
            mid = item.get("messageId")
            if isinstance(mid, str) and mid not in wanted:
                return True
    return False


def _first_time(message: Mapping[str, Any], *fields: str) -> datetime | None:
    """The first of ``fields`` that holds a readable time."""
    for name in fields:
        moment = parse_gateway_time(message.get(name))
        if moment is not None:
            return moment
    return None


def _find(message_list: object, pmid: str) -> Mapping[str, Any] | None:
    """The entry of ``pmid`` in SOLAPI's ``messageList`` (keyed by id, or a list)."""
    if isinstance(message_list, Mapping):
        entry = message_list.get(pmid)
        if isinstance(entry, Mapping) and entry.get("messageId", pmid) == pmid:
            return entry
        items: Any = message_list.values()
    elif isinstance(message_list, list):
        items = message_list
    else:
        return None
    for item in items:
        if isinstance(item, Mapping) and item.get("messageId") == pmid:
            return item
    return None


def _error_body(response: HttpResponse) -> tuple[str | None, str | None]:
    """SOLAPI's ``errorCode``/``errorMessage`` when the body is its JSON error."""
    try:
        data = response.json()
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    code, message = data.get("errorCode"), data.get("errorMessage")
    return (
        code if isinstance(code, str) and code else None,
        message[:300] if isinstance(message, str) and message else None,
    )
