"""Local HTTP servers that speak SOLAPI's and IWINV's status APIs, for tests and benchmarks.

Each fake is a real ``http.server`` (HTTP/1.1, keep-alive) on ``127.0.0.1`` and an
ephemeral port, serving from a thread. It checks requests the way the gateway does
(SOLAPI's HMAC signature, date skew and reused signatures; IWINV's ``AUTH`` and
``secret`` headers, company id and date formats), answers in the gateways' shapes with
Korean texts, pages through ``pageNum``/``pageSize`` or ``nextKey``, and can be told to
misbehave for the next requests: :meth:`FakeGateway.script` queues 429s with
``Retry-After``, 5xx pages, malformed bodies, slow answers (held until released, so
nothing sleeps longer than needed) and dropped connections.

``python -m tests._fake_gateways --latency-ms 20`` runs both in a process of their own
(the benchmark does) and prints ``{"solapi": URL, "iwinv": URL}`` on one line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import json
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import orjson

KST = timezone(timedelta(hours=9))

SOLAPI_KEY = "NCSTESTAPIKEY0001"
SOLAPI_SECRET = "solapi-test-secret-0123456789abcdef"
IWINV_KEY = "iwinv-alimtalk-key-TEST-7777"
IWINV_SMS_KEY = "iwinv-sms-key-TEST-8888"
IWINV_SMS_AUTH = "iwinv-sms-auth-TEST-9999"
IWINV_COMPANY = "testco"

Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, Any]  # a key given more than once (messageIds) holds the list
    headers: dict[str, str]
    body: Any
    at: float
    connection: int


@dataclass
class Fault:
    """A scripted answer for the next request: status/headers/body, or a behaviour.

    ``kind`` is ``"answer"`` (send ``status``, ``headers``, ``body``), ``"hang"`` (hold
    the request until :meth:`FakeGateway.release` or ``hold`` seconds, then answer
    normally), ``"drop"`` (close the connection without answering), ``"garbage"``
    (a broken status line) or ``"raw"`` (``body`` is the whole answer, then close).
    """

    kind: str = "answer"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hold: float = 5.0


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def parse_query(query: str) -> dict[str, Any]:
    """``a=1&b=2&b=3`` as ``{"a": "1", "b": ["2", "3"]}`` (a repeated key keeps its list)."""
    return {
        k: v[0] if len(v) == 1 else v for k, v in parse_qs(query, keep_blank_values=True).items()
    }


def html_page(status: int, title: str) -> bytes:
    return (
        f"<html><head><title>{status} {title}</title></head><body><center><h1>{status} {title}"
        "</h1></center><hr><center>nginx</center></body></html>"
    ).encode()


class FakeGateway:
    """A threaded HTTP/1.1 server on 127.0.0.1 routing every request to :meth:`handle`."""

    name = "fake"

    def __init__(self, *, latency: float = 0.0) -> None:
        self.latency = latency
        self.requests: list[Recorded] = []
        self.faults: deque[Fault] = deque()
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.connections = 0
        self._sockets: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.keep_records = True
        self.arrivals: list[float] | None = None  # wall-clock arrival times, when a list

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes
            timeout = 10  # an idle keep-alive connection is dropped after this

            def setup(self) -> None:
                super().setup()
                with gateway.lock:
                    gateway.connections += 1
                    gateway._sockets.add(self.request)
                self.conn_no = gateway.connections

            def finish(self) -> None:
                with gateway.lock:
                    gateway._sockets.discard(self.request)
                super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                gateway._serve(self)

            def do_POST(self) -> None:
                gateway._serve(self)

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default 5 drops a pool's simultaneous connects

        server = Server(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with self.lock:
                for sock in list(self._sockets):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ scripting

    def script(self, *faults: Fault) -> None:
        """Answer the next requests with these faults, in order."""
        with self.lock:
            self.faults.extend(faults)

    def release(self) -> None:
        """Let held (``hang``) requests go on."""
        self.released.set()

    def count(self, path_part: str = "") -> int:
        with self.lock:
            return sum(path_part in r.path for r in self.requests)

    # ------------------------------------------------------------------ serving

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        query = parse_query(parts.query)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        with self.lock:
            fault = self.faults.popleft() if self.faults else None
            if self.keep_records:
                self.requests.append(
                    Recorded(
                        handler.command,
                        parts.path,
                        query,
                        headers,
                        body,
                        time.monotonic(),
                        getattr(handler, "conn_no", 0),
                    )
                )
        if self.arrivals is not None:
            self.arrivals.append(time.time())
        if self.latency:
            time.sleep(self.latency)
        if fault is not None and fault.kind == "hang":
            self.released.wait(fault.hold)
            fault = None
        if fault is not None and fault.kind == "drop":
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.request.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.kind == "garbage":
            handler.wfile.write(b"HTTP/1.1 OK-ish\r\n\r\n")
            handler.close_connection = True
            return
        if fault is not None and fault.kind == "raw":  # the answer's bytes exactly as given
            handler.wfile.write(fault.body)
            handler.close_connection = True
            return
        if fault is not None:
            status, extra, payload = fault.status, dict(fault.headers), fault.body
            extra.setdefault(
                "Content-Type",
                "text/html" if payload.lstrip().startswith(b"<") else "application/json",
            )
        else:
            status, extra, payload = self.handle(handler.command, parts.path, query, headers, body)
        try:
            handler.send_response(status)
            for name, value in extra.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:
            handler.close_connection = True

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any],
        headers: Mapping[str, str],
        body: Any,
    ) -> Answer:
        raise NotImplementedError


_JSON_TYPE = {"Content-Type": "application/json; charset=utf-8"}


def _json(status: int, data: Any) -> Answer:
    return status, dict(_JSON_TYPE), orjson.dumps(data)


# --------------------------------------------------------------------------- SOLAPI

_MESSAGE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_AUTH = re.compile(
    r"HMAC-SHA256 apiKey=(?P<key>[^,]+), date=(?P<date>[^,]+), salt=(?P<salt>[^,]+), "
    r"signature=(?P<sig>[0-9a-f]{64})"
)


class FakeSolapi(FakeGateway):
    """SOLAPI's ``GET /messages/v4/list`` with HMAC-SHA256 authentication.

    A lookup names one ``messageId`` or several ``messageIds`` (the key repeated, as
    SOLAPI's SDK sends it); a malformed id is a 400 ``ValidationError``.
    ``ignore_message_ids`` makes it list its first messages instead, as a gateway that
    ignored the filter would; ``answer_with_other`` does so for a lone ``messageId``.
    """

    name = "solapi"

    def __init__(
        self,
        *,
        api_key: str = SOLAPI_KEY,
        api_secret: str = SOLAPI_SECRET,
        latency: float = 0.0,
        clock_skew: timedelta = timedelta(0),
    ) -> None:
        super().__init__(latency=latency)
        self.api_key = api_key
        self.api_secret = api_secret
        self.clock_skew = clock_skew
        self.messages: dict[str, dict[str, Any]] = {}
        self.second_page: set[str] = set()
        self.seen: set[str] = set()
        self.answer_with_other = False
        self.ignore_message_ids = False  # answer a messageIds lookup with the first messages
        self.check_duplicates = True
        self._encoded: dict[str, bytes] = {}  # each message's JSON, dropped by add()

    def add(
        self,
        message_id: str,
        status_code: str,
        *,
        reason: str | None = None,
        type: str = "SMS",
        to: str = "01012345678",
        created: datetime | None = None,
        processed: datetime | None = None,
        reported: datetime | None = None,
        received: datetime | None = None,
        state: str | None = None,
    ) -> dict[str, Any]:
        """Store (or replace) a message as SOLAPI lists it."""
        created = created or datetime(2026, 11, 2, 0, 0, tzinfo=UTC)
        if state is None:
            state = {"2000": "PENDING", "3000": "SENDING", "4000": "COMPLETE"}.get(
                status_code, "FAILED"
            )
        message: dict[str, Any] = {
            "_id": message_id,
            "messageId": message_id,
            "groupId": "G4V20261102090000TESTGROUP00001",
            "accountId": "12925149",
            "type": type,
            "country": "82",
            "to": to,
            "from": "0212345678",
            "text": "[테스트] 주문하신 상품이 발송되었습니다.",
            "subject": None,
            "imageId": None,
            "status": state,
            "statusCode": status_code,
            "reason": reason,
            "networkName": "SKT",
            "networkCode": "450",
            "customFields": {},
            "autoTypeDetect": True,
            "replacement": False,
            "resendCount": 0,
            "log": [],
            "kakaoOptions": {"pfId": None, "templateId": None, "disableSms": False, "buttons": []},
            "dateCreated": _iso(created),
            "dateUpdated": _iso(reported or processed or created),
            "dateProcessed": _iso(processed),
            "dateReported": _iso(reported),
            "dateReceived": _iso(received),
        }
        with self.lock:
            self.messages[message_id] = message
            self._encoded.pop(message_id, None)
        return message

    def sign_ok(self, headers: Mapping[str, str]) -> Answer | None:
        auth = headers.get("authorization", "")
        m = _AUTH.fullmatch(auth)
        if m is None:
            return _json(
                403, {"errorCode": "Unauthorized", "errorMessage": "인증 정보가 없습니다."}
            )
        if m["key"] != self.api_key:
            return _json(
                403, {"errorCode": "InvalidAPIKey", "errorMessage": "유효하지 않은 API Key 입니다."}
            )
        try:
            date = datetime.fromisoformat(m["date"])
        except ValueError:
            return _json(400, {"errorCode": "ValidationError", "errorMessage": "date 형식 오류"})
        now = datetime.now(UTC) + self.clock_skew
        if abs((now - date).total_seconds()) > 15 * 60:
            return _json(
                403,
                {
                    "errorCode": "RequestTimeTooSkewed",
                    "errorMessage": "요청 시간이 서버 시간과 15분 이상 차이납니다.",
                },
            )
        if not 12 <= len(m["salt"]) <= 64:
            return _json(400, {"errorCode": "ValidationError", "errorMessage": "salt 길이 오류"})
        expected = hmac.new(
            self.api_secret.encode(), (m["date"] + m["salt"]).encode(), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, m["sig"]):
            return _json(
                403,
                {"errorCode": "SignatureDoesNotMatch", "errorMessage": "서명이 일치하지 않습니다."},
            )
        if self.check_duplicates:
            with self.lock:
                if m["sig"] in self.seen:
                    return _json(
                        403,
                        {
                            "errorCode": "DuplicatedSignature",
                            "errorMessage": "이미 사용된 서명입니다.",
                        },
                    )
                self.seen.add(m["sig"])
        return None

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any],
        headers: Mapping[str, str],
        body: Any,
    ) -> Answer:
        if path != "/messages/v4/list" or method != "GET":
            return _json(
                404, {"errorCode": "NotFound", "errorMessage": "존재하지 않는 API 입니다."}
            )
        refused = self.sign_ok(headers)
        if refused is not None:
            return refused
        limit = int(query.get("limit") or 20)
        start_key = query.get("startKey")
        mid = query.get("messageId")
        ids = query.get("messageIds")
        asked = [mid] if isinstance(mid, str) else []
        asked += [ids] if isinstance(ids, str) else ids or []
        if not all(_MESSAGE_ID.fullmatch(i) for i in asked):
            return _json(
                400,
                {
                    "errorCode": "ValidationError",
                    "errorMessage": "messageId 형식이 올바르지 않습니다.",
                },
            )
        next_key: str | None = None
        with self.lock:
            if ids is not None and not self.ignore_message_ids:
                ids = [ids] if isinstance(ids, str) else list(ids)
                later = [i for i in ids if i in self.second_page]
                shown = later if start_key else [i for i in ids if i not in self.second_page]
                listed = [i for i in shown if i in self.messages]
                if later and not start_key:
                    next_key = "NK" + later[0]
            elif mid is not None and ids is None:
                if mid in self.second_page and not start_key:
                    listed, next_key = [], "NK" + mid
                else:
                    listed = [mid] if mid in self.messages else []
                if self.answer_with_other and not listed:
                    listed = [k for k in self.messages if k != mid][:1]
            else:
                listed = list(self.messages)[:limit]
            encoded = [(k, self._message_json(k)) for k in listed]
        head = orjson.dumps({"startKey": start_key, "nextKey": next_key, "limit": limit})
        entries = b",".join(orjson.dumps(k) + b":" + m for k, m in encoded)
        payload = head[:-1] + b',"messageList":{' + entries + b"}}"
        return 200, dict(_JSON_TYPE), payload

    def _message_json(self, message_id: str) -> bytes:
        """A stored message as JSON (kept until add() replaces it; the lock is held)."""
        encoded = self._encoded.get(message_id)
        if encoded is None:
            encoded = self._encoded[message_id] = orjson.dumps(self.messages[message_id])
        return encoded


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- IWINV


_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def kst(moment: datetime, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return moment.astimezone(KST).strftime(fmt)


class FakeIwinv(FakeGateway):
    """IWINV's AlimTalk history (``/alimtalk/api/history/``) and SMS history
    (``/sms/api/history/``) on one server: use ``url + "/alimtalk"`` and ``url + "/sms"``."""

    name = "iwinv"

    def __init__(
        self,
        *,
        api_key: str = IWINV_KEY,
        sms_api_key: str = IWINV_SMS_KEY,
        sms_auth_key: str = IWINV_SMS_AUTH,
        company_id: str = IWINV_COMPANY,
        latency: float = 0.0,
    ) -> None:
        super().__init__(latency=latency)
        self.api_key = api_key
        self.sms_secret = base64.b64encode(f"{sms_api_key}&{sms_auth_key}".encode()).decode()
        self.company_id = company_id
        self.alimtalk: dict[int, dict[str, Any]] = {}  # by seqNo
        self.sms: dict[str, dict[str, dict[str, Any]]] = {}  # by requestNo, then phone
        self.ignore_id_filter = False
        self.ip_blocked = False

    @staticmethod
    @functools.cache
    def _auth_for(api_key: str) -> str:
        return base64.b64encode(api_key.encode()).decode()

    @property
    def alimtalk_url(self) -> str:
        return self.url + "/alimtalk"

    @property
    def sms_url(self) -> str:
        return self.url + "/sms"

    def add_alimtalk(
        self,
        seq_no: int,
        *,
        phone: str = "01012345678",
        requested: datetime,
        sent: datetime | None = None,
        received: datetime | None = None,
        status_code: str | None = None,
        status_name: str | None = None,
    ) -> dict[str, Any]:
        item = {
            "seqNo": seq_no,
            "phone": phone,
            "callback": "0212345678",
            "templateCode": "TPL_ORDER_01",
            "sendMessage": "[테스트] 주문이 접수되었습니다.",
            "reserve": "N",
            "requestDate": kst(requested),
            "sendDate": kst(sent) if sent else "",
            "receiveDate": kst(received) if received else "",
            "statusCode": status_code or "",
            "statusCodeName": status_name or "",
            "resendStatus": "",
            "resendStatusName": "",
            "buttons": {"link1": None},
        }
        with self.lock:
            self.alimtalk[seq_no] = item
        return item

    def add_sms(
        self,
        request_no: str,
        *,
        phone: str = "01012345678",
        requested: datetime,
        sent: datetime | None = None,
        code: str | None = None,
        message: str | None = None,
        msg_type: str = "SMS",
    ) -> dict[str, Any]:
        item = {
            "requestNo": request_no,
            "companyid": self.company_id,
            "msgType": msg_type,
            "phone": phone,
            "callback": "0212345678",
            "sendStatus": message or "",
            "sendStatusCode": code or "",
            "sendStatusMsg": message or "",
            "sendDate": kst(sent) if sent else "",
            "requestDate": kst(requested),
        }
        with self.lock:
            self.sms.setdefault(request_no, {})[phone] = item
        return item

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any],
        headers: Mapping[str, str],
        body: Any,
    ) -> Answer:
        if method != "POST":
            return 405, {"Content-Type": "text/html"}, html_page(405, "Not Allowed")
        if path == "/alimtalk/api/history/":
            return self._alimtalk(headers, body)
        if path == "/sms/api/history/":
            return self._sms(headers, body)
        return 404, {"Content-Type": "text/html"}, html_page(404, "Not Found")

    def _alimtalk(self, headers: Mapping[str, str], body: Any) -> Answer:
        auth = headers.get("auth", "")
        if auth != self._auth_for(self.api_key):
            return _json(200, {"code": 201, "message": "인증에 실패하였습니다."})
        if self.ip_blocked:
            return _json(200, {"code": 206, "message": "등록하지 않은 IP에서는 발송되지 않습니다."})
        if not isinstance(body, dict):
            return _json(200, {"code": 400, "message": "잘못된 요청입니다."})
        start, end = body.get("startDate"), body.get("endDate")
        if not (isinstance(start, str) and _DATETIME.fullmatch(start)) or not (
            isinstance(end, str) and _DATETIME.fullmatch(end)
        ):
            return _json(200, {"code": 400, "message": "날짜 형식이 올바르지 않습니다."})
        with self.lock:
            seq = body.get("seqNo")
            if self.ignore_id_filter or seq is None:
                pool = list(self.alimtalk.values())
            else:
                pool = [self.alimtalk[seq]] if seq in self.alimtalk else []
            items = [
                i
                for i in pool
                if start <= i["requestDate"] <= end  # "yyyy-MM-dd HH:mm:ss" sorts as text
                and ("phone" not in body or i["phone"] == body["phone"])
            ]
        page, size = _page(body, default_size=15, top=1000)
        chosen = items[(page - 1) * size : page * size]
        return _json(
            200, {"code": 200, "message": "조회 성공", "totalCount": len(items), "list": chosen}
        )

    def _sms(self, headers: Mapping[str, str], body: Any) -> Answer:
        if headers.get("secret", "") != self.sms_secret:
            return _json(200, {"resultCode": 14, "message": "인증 요청이 올바르지 않습니다."})
        if self.ip_blocked:
            return _json(200, {"resultCode": 15, "message": "등록하지 않은 IP 입니다."})
        if not isinstance(body, dict) or body.get("version") != "1.0":
            return _json(200, {"resultCode": 1, "message": "잘못된 요청입니다."})
        if body.get("companyid") != self.company_id:
            return _json(200, {"resultCode": 14, "message": "인증 요청이 올바르지 않습니다."})
        try:
            start = datetime.strptime(body["startDate"], "%Y-%m-%d").date()
            end = datetime.strptime(body["endDate"], "%Y-%m-%d").date()
            if not _DATE.fullmatch(body["startDate"]) or not _DATE.fullmatch(body["endDate"]):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            return _json(200, {"resultCode": 43, "message": "날짜/시간 형식이 올바르지 않습니다."})
        if (end - start).days > 90:
            return _json(200, {"resultCode": 43, "message": "조회 기간은 90일 이내입니다."})
        with self.lock:
            number = body.get("requestNo")
            if self.ignore_id_filter or number is None:
                pool = [i for by_phone in self.sms.values() for i in by_phone.values()]
            else:
                pool = list(self.sms.get(number, {}).values())
            items = [
                i
                for i in pool
                if start.isoformat() <= i["requestDate"][:10] <= end.isoformat()
                and ("phone" not in body or i["phone"] == body["phone"])
            ]
        page, size = _page(body, default_size=15, top=1000)
        chosen = items[(page - 1) * size : page * size]
        return _json(
            200,
            {"resultCode": 0, "message": "조회 성공", "totalCount": len(items), "list": chosen},
        )


def _page(body: Mapping[str, Any], *, default_size: int, top: int) -> tuple[int, int]:
    page = body.get("pageNum", 1)
    size = body.get("pageSize", default_size)
    page = page if isinstance(page, int) and page >= 1 else 1
    size = min(size if isinstance(size, int) and size >= 1 else default_size, top)
    return page, size


# --------------------------------------------------------------------------- helpers


def serving(*gateways: FakeGateway) -> Iterator[None]:
    """Start the gateways, yield, stop them (for fixtures)."""
    for g in gateways:
        g.start()
    try:
        yield
    finally:
        for g in gateways:
            g.stop()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


class AsyncServer:
    """The same fake on an ``asyncio`` server in a thread of its own, for the benchmark.

    One event loop instead of a thread per connection, requests framed by a protocol as
    their bytes arrive, and each answer written by a timer ``latency`` later (no
    coroutine per request): the fake's CPU time then leaves more of a small machine to
    the client being measured. It checks what :meth:`FakeGateway.handle` checks (SOLAPI
    signatures included); it has no fault scripting and records no requests.
    """

    def __init__(self, gateway: FakeGateway) -> None:
        self.gateway = gateway
        self.loop = asyncio.new_event_loop()
        self.url = ""
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            self.loop.create_server(
                lambda: _FakeProtocol(self.gateway, self.loop), "127.0.0.1", 0, backlog=256
            )
        )
        host, port = server.sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        ready.set()
        self.loop.run_forever()


class _FakeProtocol(asyncio.Protocol):
    """One connection to an :class:`AsyncServer`: HTTP/1.1 requests in, answers out."""

    def __init__(self, gateway: FakeGateway, loop: asyncio.AbstractEventLoop) -> None:
        self.gateway = gateway
        self.loop = loop
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = buf[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            if len(buf) < end + 4 + length:
                return
            raw = bytes(buf[end + 4 : end + 4 + length])
            del buf[: end + 4 + length]
            method, target, _ = lines[0].split(" ", 2)
            path, _, query = target.partition("?")
            gateway = self.gateway
            if gateway.arrivals is not None:
                gateway.arrivals.append(time.time())
            status, extra, payload = gateway.handle(
                method, path, parse_query(query), headers, orjson.loads(raw) if raw else None
            )
            out = [f"HTTP/1.1 {status} OK", f"Content-Length: {len(payload)}"]
            out += [f"{k}: {v}" for k, v in extra.items()]
            answer = ("\r\n".join(out) + "\r\n\r\n").encode() + payload
            if gateway.latency:
                self.loop.call_later(gateway.latency, self._write, answer)
            else:
                self._write(answer)

    def _write(self, answer: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)


def main(argv: list[str] | None = None) -> int:
    """Serve both fakes until stdin closes (for the benchmark's subprocess)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--messages", type=int, default=0, help="messages to preload per fake")
    parser.add_argument(
        "--server", choices=("asyncio", "threads"), default="asyncio",
        help="an asyncio server per fake, or http.server with a thread per connection",
    )  # fmt: skip
    args = parser.parse_args(argv)
    latency = args.latency_ms / 1000
    solapi = FakeSolapi(latency=latency)
    iwinv = FakeIwinv(latency=latency)
    for g in (solapi, iwinv):
        g.keep_records = False
    solapi.check_duplicates = False  # a long run would keep every signature
    preload(solapi, iwinv, args.messages)
    arrivals: dict[str, list[float]] = {"solapi": [], "iwinv": []}
    for g in (solapi, iwinv):
        g.arrivals = arrivals[g.name]
    if args.server == "threads":
        solapi.start()
        iwinv.start()
        urls = {"solapi": solapi.url, "iwinv": iwinv.url}
    else:
        servers = [AsyncServer(solapi), AsyncServer(iwinv)]
        urls = {"solapi": servers[0].url, "iwinv": servers[1].url}
    print(json.dumps(urls), flush=True)
    for line in sys.stdin:  # commands from the benchmark: "arrivals", "reset"
        command = line.strip()
        if command == "arrivals":
            print(json.dumps(arrivals), flush=True)
        elif command == "reset":
            for v in arrivals.values():
                v.clear()
            print("{}", flush=True)
    if args.server == "threads":
        solapi.stop()
        iwinv.stop()
    return 0


def preload(solapi: FakeSolapi, iwinv: FakeIwinv, n: int) -> None:
    """``n`` delivered messages in each fake: ``M{i:08d}`` (SOLAPI), seqNo ``i`` (IWINV)."""
    requested = datetime.now(UTC) - timedelta(minutes=10)
    sent = requested + timedelta(seconds=2)
    for i in range(n):
        solapi.add(
            f"M{i:08d}",
            "4000",
            created=requested,
            processed=sent,
            reported=sent + timedelta(seconds=1),
            received=sent + timedelta(seconds=1),
        )
        iwinv.add_alimtalk(
            100_000 + i,
            phone="01012345678",
            requested=requested,
            sent=sent,
            received=sent + timedelta(seconds=1),
            status_code="OK",
            status_name="성공",
        )


if __name__ == "__main__":
    sys.exit(main())
