"""The HTTP layer shared by the gateway clients: pooled keep-alive connections, timeouts,
a per-endpoint rate limit, retries of transient failures, and error classification.

It is a small HTTP/1.1 client on :mod:`asyncio` protocols (an answer is framed as its
bytes arrive, with one future per request; JSON through :mod:`orjson`), made for the
polling runner, which calls ``async`` providers on its event loop: no thread per
request, and a request costs a few tens of microseconds of Python. Connections belong
to the event loop that opened them; each loop gets its own pool, closed when the loop
shuts down (``asyncio.run`` and the runner's loop both finalise async generators, which
is the hook used) or by :meth:`HttpClient.close`.

What is retried inside one check (each retry takes a rate-limit token again):

- a connection that turns out to be closed by the server while idle (at once, free);
- connection failures (refused, reset), 500/502/503/504, and 429 or 503 whose
  ``Retry-After`` is at most ``max_retry_wait`` seconds, up to ``max_retries`` times.

A 429 or 503 with ``Retry-After`` also pauses the whole endpoint until then (every
request of every check waits), and a check that would wait longer than
``max_retry_wait`` fails at once with a retryable ``RATE_LIMIT_EXCEEDED`` instead of
queueing, so the runner's backoff decides when to ask again.

Secrets never appear in reprs, log lines or error messages: credentials are
:class:`Secret` objects, headers and bodies are never logged, and any text taken from a
gateway's answer is scrubbed of the client's secrets before it goes into an error.
"""

# ruff: noqa: EM101, EM102 - ProviderError takes a code and a message

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import logging
import math
import random
import re
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import partial
from typing import Any, NoReturn, Self
from urllib.parse import quote, urlsplit

import orjson

from .._errors import InvalidRecordError
from .._providers import ProviderError

__all__ = [
    "KST",
    "GatewayCheck",
    "GatewayProvider",
    "HttpClient",
    "HttpResponse",
    "HttpSettings",
    "RateLimiter",
    "Secret",
    "http_error",
    "korea_time",
    "loads_json",
    "parse_gateway_time",
]

log = logging.getLogger("kmsg_analytics.gateways")

USER_AGENT = "kmsg-analytics/0.1 (+https://github.com/k-otp/k-msg)"
_MAX_HEAD = 64 * 1024
_MAX_BODY = 8 * 1024 * 1024
_IDLE_KEEPALIVE = 20.0  # seconds an idle connection is trusted to still be open
_SNIPPET = 200


# --------------------------------------------------------------------------- secrets


class Secret:
    """A credential that never shows itself: ``repr``/``str`` give ``'***'``.

    :meth:`reveal` returns the value (only the code that signs requests calls it);
    :attr:`fingerprint` is a short SHA-256 prefix to tell two keys apart in reports.

    Examples
    --------
    >>> s = Secret("NCSAYU7YDBXYORXC")
    >>> s, str(s), f"{s}"
    (Secret('***'), '***', '***')
    >>> s.reveal()
    'NCSAYU7YDBXYORXC'
    >>> s.fingerprint
    'sha256:0aa1acf7'
    """

    __slots__ = ("_value",)

    def __init__(self, value: str | Secret) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise InvalidRecordError("secret", "<not shown>", "a string")
        self._value = value

    def reveal(self) -> str:
        """The secret itself (for signing; never print it)."""
        return self._value

    @property
    def fingerprint(self) -> str:
        """``sha256:`` and the first 8 hex digits of the value's SHA-256."""
        return "sha256:" + hashlib.sha256(self._value.encode()).hexdigest()[:8]

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:
        msg = "a Secret cannot be pickled (it would put the credential in the pickle)"
        raise TypeError(msg)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (at least 4 characters) replaced by ``***``.

    Examples
    --------
    >>> scrub("bad key abcd1234!", ["abcd1234"])
    'bad key ***!'
    """
    for secret in secrets:
        if len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    return text


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """How a gateway client talks HTTP.

    Parameters
    ----------
    timeout
        Seconds one request may take from sending to the last byte of the answer
        (watched every ``timeout / 4``, at most every 0.25 s).
    connect_timeout
        Seconds to open a connection (TCP and TLS).
    rate_limit
        Requests per second to the endpoint (a token bucket shared by every check of
        this client, in every thread and event loop); ``None`` for no limit.
    burst
        Requests that may start at once after an idle spell (the bucket's size);
        ``None`` means ``max(1, rate_limit / 10)``.
    max_connections
        Open connections per event loop (requests beyond wait for one).
    max_retries
        Retries of transient failures within one check (see the module docs).
    max_retry_wait
        The longest a check waits for a retry or for the gateway's ``Retry-After``.

    Examples
    --------
    >>> HttpSettings(rate_limit=50).bucket_size
    5
    >>> HttpSettings(timeout=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    kmsg_analytics._errors.InvalidRecordError: invalid http.timeout=0: expected a number ...
    """

    timeout: float = 10.0
    connect_timeout: float = 5.0
    rate_limit: float | None = 50.0
    burst: int | None = None
    max_connections: int = 32
    max_retries: int = 2
    max_retry_wait: float = 2.0

    def __post_init__(self) -> None:
        for name in ("timeout", "connect_timeout"):
            _positive(getattr(self, name), f"http.{name}")
        if self.rate_limit is not None:
            _positive(self.rate_limit, "http.rate_limit")
        if self.burst is not None and (
            not isinstance(self.burst, int) or isinstance(self.burst, bool) or self.burst < 1
        ):
            raise InvalidRecordError("http.burst", self.burst, "a whole number >= 1 or None")
        for name, minimum in (("max_connections", 1), ("max_retries", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise InvalidRecordError(f"http.{name}", value, f"a whole number >= {minimum}")
        wait = self.max_retry_wait
        if not isinstance(wait, int | float) or isinstance(wait, bool) or not 0 <= wait < 3600:
            raise InvalidRecordError(
                "http.max_retry_wait", wait, "a number of seconds from 0 to 3600"
            )

    @property
    def bucket_size(self) -> int:
        """The token bucket's size (``burst``, or a tenth of a second's worth)."""
        if self.burst is not None:
            return self.burst
        return max(1, int((self.rate_limit or 10.0) / 10))


def _positive(value: object, name: str) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidRecordError(name, value, "a number > 0")


# --------------------------------------------------------------------------- rate limit


_GROUP_SPAN = 0.002  # seconds of tokens a busy limiter hands out per wake-up


class _Waiters:
    """The requests of one event loop waiting for a token, and the timer that serves them."""

    __slots__ = ("loop", "queue", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # (the caller's future, what to do with the token, whether to resolve the future)
        self.queue: deque[tuple[asyncio.Future[Any], Callable[[], object] | None, bool]] = deque()
        self.timer: asyncio.TimerHandle | asyncio.Handle | None = None


class RateLimiter:
    """A token bucket (GCRA) shared by every thread and event loop of one endpoint.

    A request takes its token at the moment it is written, never before, so at most
    ``burst + rate * t`` requests go out in any span of ``t`` seconds, however late a
    busy event loop wakes the waiters. Waiters on one loop are served first come, first
    served by one timer: each time it fires it hands out every token that is due, so
    a busy loop loses no tokens to waking waiters one by one. At high rates the timer
    waits for a few tokens at a time (about 2 ms worth, at most a quarter of the
    bucket, so a loop late by the rest of the bucket still loses none), waking once
    per group of requests rather than per request; the bucket still bounds every
    window. :meth:`pause_until` holds every request back until a time the gateway
    asked for (``Retry-After``).

    Examples
    --------
    >>> now = [0.0]
    >>> bucket = RateLimiter(10.0, burst=2, clock=lambda: now[0])
    >>> [bucket.try_take() for _ in range(3)]  # two at once, then wait 0.1 s
    [0.0, 0.0, 0.1]
    >>> now[0] = 0.1
    >>> bucket.try_take()
    0.0
    """

    def __init__(
        self, rate: float, *, burst: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        _positive(rate, "rate_limit")
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._interval = 1.0 / self.rate
        self._tolerance = (self.burst - 1) * self._interval
        self._group = max(1, min(round(self.rate * _GROUP_SPAN), self.burst // 4))
        self._clock = clock
        self._tat = -math.inf  # theoretical arrival time of the next request
        self._paused_until = -math.inf
        self._lock = threading.Lock()
        self._waiters: dict[int, _Waiters] = {}  # by id(loop); entries check their loop

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate:g}/s, burst={self.burst})"

    def try_take(self) -> float:
        """Take a token if one is free now (returns 0.0), else the seconds until one is."""
        with self._lock:
            now = self._clock()
            allowed = self._tat - self._tolerance
            if now < allowed:
                return allowed - now
            self._tat = max(self._tat, now) + self._interval
            return 0.0

    async def acquire(self, then: Callable[[], object] | None = None) -> None:
        """Wait for a token (first come, first served on this event loop) and take it.

        ``then`` is called at the very moment the token is taken, before anything else
        runs on the loop (the HTTP client writes its request there); if it raises, so
        does :meth:`acquire`. A caller cancelled after its token was taken has had its
        ``then`` called.
        """
        loop = asyncio.get_running_loop()
        waiters = self._waiters.get(id(loop))
        if waiters is None or waiters.loop is not loop:
            waiters = self._waiters_of(loop)
        if not waiters.queue and self.try_take() == 0.0:
            if then is not None:
                then()
            return
        me: asyncio.Future[None] = loop.create_future()
        waiters.queue.append((me, then, True))
        if waiters.timer is None:
            waiters.timer = loop.call_soon(self._serve, waiters)
        await me

    def submit(self, waiter: asyncio.Future[Any], then: Callable[[], object]) -> None:
        """Call ``then`` when its token is taken, without waiting for it here.

        ``waiter`` is the caller's own future (the HTTP client's answer, which ``then``
        asks for): while it is pending the caller holds its turn, once it is done
        (cancelled) the turn passes on, and an error raised by ``then`` goes into it.
        When a token is free and nobody is waiting, ``then`` runs at once (its error
        raised here). Saves :meth:`acquire`'s wake-up of the caller between the token
        and the answer.
        """
        loop = waiter.get_loop()
        waiters = self._waiters.get(id(loop))
        if waiters is None or waiters.loop is not loop:
            waiters = self._waiters_of(loop)
        if not waiters.queue and self.try_take() == 0.0:
            then()
            return
        waiters.queue.append((waiter, then, False))
        if waiters.timer is None:
            waiters.timer = loop.call_soon(self._serve, waiters)

    def _waiters_of(self, loop: asyncio.AbstractEventLoop) -> _Waiters:
        with self._lock:
            waiters = self._waiters.get(id(loop))
            if waiters is None or waiters.loop is not loop or loop.is_closed():
                for key, old in list(self._waiters.items()):  # forget closed loops
                    if old.loop.is_closed():
                        del self._waiters[key]
                waiters = self._waiters[id(loop)] = _Waiters(loop)
            return waiters

    def _serve(self, waiters: _Waiters) -> None:
        """Hand out every token due now, in turn; wake again when the next one is."""
        waiters.timer = None
        queue = waiters.queue
        while queue:
            me, then, resolve = queue[0]
            if me.done():  # cancelled while waiting: its turn passes on
                queue.popleft()
                continue
            wait = self.try_take()
            if wait > 0.0:  # wake when a group of tokens is due (the bucket keeps them)
                wait += (min(self._group, len(queue)) - 1) * self._interval
                waiters.timer = waiters.loop.call_later(wait, self._serve, waiters)
                return
            queue.popleft()
            if then is not None:
                try:
                    then()
                except Exception as err:  # (the token stays taken: never more than the bound)
                    me.set_exception(err)
                    continue
            if resolve:
                me.set_result(None)

    def paused_for(self) -> float:
        """Seconds until a gateway-requested pause ends (0 when there is none)."""
        with self._lock:
            return max(0.0, self._paused_until - self._clock())

    def pause_until(self, moment: float) -> None:
        """No request goes out before ``moment`` (a ``time.monotonic`` value)."""
        with self._lock:
            self._paused_until = max(self._paused_until, moment)
            self._tat = max(self._tat, moment + self._tolerance)


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A gateway's answer: status, headers (lower-case names) and body bytes."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes
    elapsed: float = 0.0

    def json(self) -> Any:
        """The body as JSON; raises ``ValueError`` when it is not JSON."""
        return loads_json(self.body)

    def text_snippet(self, limit: int = _SNIPPET) -> str:
        """The start of the body as one line of text (for error messages)."""
        text = self.body[: limit * 4].decode("utf-8", "replace")
        text = " ".join(text.split())
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def retry_after(self, now: datetime | None = None) -> float | None:
        """``Retry-After`` in seconds (delta-seconds or an HTTP date), capped at an hour."""
        value = self.headers.get("retry-after")
        if value is None:
            return None
        value = value.strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                moment = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            seconds = (moment - (now or datetime.now(UTC))).total_seconds()
        if not math.isfinite(seconds):
            return None
        return min(max(seconds, 0.0), 3600.0)


def http_error(
    response: HttpResponse,
    gateway: str,
    *,
    secrets: Iterable[str] = (),
    code: str | None = None,
    message: str | None = None,
) -> ProviderError:
    """The :class:`ProviderError` for a failed HTTP answer, classified for retrying.

    ``code``/``message`` are the gateway's own error code and text when its body had
    them (they go into the message). By status: 429 ``RATE_LIMIT_EXCEEDED``, 408
    ``NETWORK_TIMEOUT``, 503 ``NETWORK_SERVICE_UNAVAILABLE``, other 5xx and 425
    ``PROVIDER_ERROR``, all retryable; 401/403 ``AUTHENTICATION_FAILED`` and other 4xx
    ``INVALID_REQUEST``, not retryable. A body that is not JSON is a gateway or proxy
    error page: ``PROVIDER_ERROR``, retryable, whatever the status.

    Examples
    --------
    >>> page = HttpResponse(502, "Bad Gateway", {}, b"<html>nginx</html>")
    >>> err = http_error(page, "IWINV")
    >>> err.code, err.retryable
    ('PROVIDER_ERROR', True)
    >>> err = http_error(HttpResponse(403, "Forbidden", {}, b"{}"), "SOLAPI",
    ...                  code="InvalidAPIKey", message="잘못된 API 키")
    >>> err.code, err.retryable, err.message
    ('AUTHENTICATION_FAILED', False, 'SOLAPI HTTP 403 InvalidAPIKey: 잘못된 API 키')
    """
    status = response.status
    detail = f"{gateway} HTTP {status}"
    if code:
        detail += f" {code}"
    if message:
        detail += f": {message}"
    is_json = _looks_json(response.body)
    if not is_json and not code and not message:
        snippet = response.text_snippet()
        detail += f" ({response.reason})" if response.reason else ""
        detail += f", not a JSON answer: {snippet!r}" if snippet else ", empty body"
    retry_after = response.retry_after()
    if retry_after is not None and status in (429, 503):
        detail += f"; retry after {retry_after:g} s"
    detail = scrub(detail, secrets)
    if status == 429:
        return ProviderError("RATE_LIMIT_EXCEEDED", detail, retryable=True)
    if status == 408:
        return ProviderError("NETWORK_TIMEOUT", detail, retryable=True)
    if status == 503:
        return ProviderError("NETWORK_SERVICE_UNAVAILABLE", detail, retryable=True)
    if status >= 500 or status == 425:
        return ProviderError("PROVIDER_ERROR", detail, retryable=True)
    if not is_json:
        return ProviderError("PROVIDER_ERROR", detail, retryable=True)
    if status in (401, 403):
        return ProviderError("AUTHENTICATION_FAILED", detail, retryable=False)
    if 400 <= status < 500:
        return ProviderError("INVALID_REQUEST", detail, retryable=False)
    return ProviderError("PROVIDER_ERROR", detail, retryable=True)


def loads_json(body: bytes) -> Any:
    """JSON bytes (UTF-8, a BOM allowed) as Python data; ``ValueError`` when not JSON.

    :mod:`orjson` first (a status answer is parsed per check); the standard library for
    what it refuses and the JSON module takes (``NaN``). Integers beyond 64 bits come
    back as floats (no gateway id is that long; a lookup compares ids as text, so a
    changed one matches nothing rather than another message).

    Examples
    --------
    >>> loads_json(b'\\xef\\xbb\\xbf{"code": 200, "rate": NaN}')
    {'code': 200, 'rate': nan}
    """
    if body[:3] == _BOM:
        body = body[3:]
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body.decode("utf-8"))


_BOM = b"\xef\xbb\xbf"


def _looks_json(body: bytes) -> bool:
    try:
        loads_json(body)
    except ValueError:
        return False
    return True


def not_json_error(response: HttpResponse, gateway: str, secrets: Iterable[str]) -> ProviderError:
    """A 2xx answer whose body is not the JSON the API promises: retryable gateway error."""
    snippet = response.text_snippet()
    shown = f"{snippet!r}" if snippet else "an empty body"
    detail = scrub(f"{gateway} HTTP {response.status} answered with {shown}, not JSON", secrets)
    return ProviderError("PROVIDER_ERROR", detail, retryable=True)


# --------------------------------------------------------------------------- connections

# what a connection is reading
_IDLE, _HEAD, _LENGTH, _CHUNKED, _TRAILERS, _UNTIL_CLOSE = range(6)


class _Stale(Exception):
    """A reused connection was closed by the server before it answered."""


class _Lost(Exception):
    """The connection closed (or failed) before the answer was complete."""

    def __init__(self, received: bool, cause: BaseException | None) -> None:
        super().__init__()
        self.received = received
        self.cause = cause


class _Malformed(Exception):
    """The answer is not HTTP/1.x as we can read it."""


class _Expired(Exception):
    """The request's timeout passed before the last byte of the answer."""


class _Conn(asyncio.Protocol):
    """One keep-alive connection: sends a request and parses its answer as bytes arrive.

    A :class:`asyncio.Protocol` rather than streams: the answer is framed (status line,
    headers, ``Content-Length``, chunked or until close) in :meth:`data_received`,
    usually in one call, and handed over through one future per request.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[HttpResponse] | None = None
        self.state = _IDLE
        self.closed = False
        self.sent = False  # the current request's bytes went out
        self.received = False  # some of its answer came back
        self.keep = False  # the connection may carry another request
        self.answered = 0
        self.idle_since = time.monotonic()
        self.started = 0.0
        self.deadline = math.inf  # time.monotonic() by which the answer must be complete
        self.head_request = False
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.version = ""
        self.remaining = 0
        self.size = 0
        self.chunks: list[bytes] = []

    # ------------------------------------------------------------------ protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done() or self.state == _IDLE:
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self.received = True
        self.buf += data
        try:
            self._advance()
        except ValueError as err:
            self._fail(_Malformed(str(err)))

    def eof_received(self) -> bool | None:
        if self.state == _UNTIL_CLOSE:
            self._finish(bytes(self.buf), keep=False)
        return None  # the transport closes itself: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.state == _UNTIL_CLOSE and exc is None:
            self._finish(bytes(self.buf), keep=False)
        elif self.answered and not self.received:
            waiter.set_exception(_Stale())
        else:
            waiter.set_exception(_Lost(self.received, exc))

    # ------------------------------------------------------------------ requests

    def usable(self) -> bool:
        transport = self.transport
        return (
            not self.closed
            and transport is not None
            and not transport.is_closing()
            and not self.buf
            and time.monotonic() - self.idle_since < _IDLE_KEEPALIVE
        )

    def expect(self, waiter: asyncio.Future[HttpResponse], head_request: bool) -> None:
        """Get ready to read the answer to the next request into ``waiter``."""
        self.waiter = waiter
        self.state = _HEAD
        self.head_request = head_request
        self.sent = self.received = self.keep = False
        self.deadline = math.inf

    def send(self, payload: bytes, timeout: float) -> None:
        """Write a request (called the moment its rate-limit token is taken)."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise _Stale if self.answered else _Lost(False, None)
        self.sent = True
        self.started = time.perf_counter()
        self.deadline = time.monotonic() + timeout
        transport.write(payload)

    def expire(self) -> None:
        """The request's timeout: fail it and drop the connection."""
        self._fail(_Expired())

    def close(self) -> None:
        self.closed = True
        self.state = _IDLE
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.close()

    # ------------------------------------------------------------------ parsing

    def _advance(self) -> None:
        buf = self.buf
        while True:
            state = self.state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise ValueError(f"the answer's headers exceed {_MAX_HEAD} bytes")
                    return
                status, reason, headers, version = _parse_head(buf[: end + 4])
                del buf[: end + 4]
                if 100 <= status < 200 and status != 101:
                    continue  # an interim answer
                self.status, self.reason, self.headers, self.version = (
                    status,
                    reason,
                    headers,
                    version,
                )
                if self.head_request or status in (204, 304):
                    self._finish(b"", keep=not buf and self._keep_alive())
                    return
                coding = headers.get("transfer-encoding")
                if coding is not None and "chunked" in coding.lower():
                    self.state, self.remaining, self.size, self.chunks = _CHUNKED, -1, 0, []
                    continue
                length = headers.get("content-length")
                if length is None:
                    self.state = _UNTIL_CLOSE
                    continue
                n = int(length)
                if n < 0 or n > _MAX_BODY:
                    raise ValueError(f"Content-Length {n} out of range")
                self.state, self.remaining = _LENGTH, n
            elif state == _LENGTH:
                n = self.remaining
                if len(buf) < n:
                    return
                body = bytes(buf[:n])
                del buf[:n]
                self._finish(body, keep=not buf and self._keep_alive())
                return
            elif state == _CHUNKED:
                if self.remaining < 0:  # a size line
                    eol = buf.find(b"\r\n")
                    if eol < 0:
                        if len(buf) > _MAX_HEAD:
                            raise ValueError("a chunk size line that never ends")
                        return
                    size = int(bytes(buf[:eol]).split(b";", 1)[0].strip() or b"x", 16)
                    del buf[: eol + 2]
                    if size == 0:
                        self.state = _TRAILERS
                        continue
                    self.size += size
                    if self.size > _MAX_BODY:
                        raise ValueError(f"body larger than {_MAX_BODY} bytes")
                    self.remaining = size
                if len(buf) < self.remaining + 2:
                    return
                self.chunks.append(bytes(buf[: self.remaining]))
                del buf[: self.remaining + 2]
                self.remaining = -1
            elif state == _TRAILERS:
                if buf[:2] == b"\r\n":
                    del buf[:2]
                else:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buf) > _MAX_HEAD:
                            raise ValueError(f"trailers exceed {_MAX_HEAD} bytes")
                        return
                    del buf[: end + 4]
                self._finish(b"".join(self.chunks), keep=not buf and self._keep_alive())
                return
            else:  # _UNTIL_CLOSE
                if len(buf) > _MAX_BODY:
                    raise ValueError(f"body larger than {_MAX_BODY} bytes")
                return

    def _keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if "close" in connection:
            return False
        return self.version != "HTTP/1.0" or "keep-alive" in connection

    def _finish(self, body: bytes, *, keep: bool) -> None:
        self.state = _IDLE
        self.keep = keep
        self.answered += 1
        waiter = self.waiter
        self.waiter = None
        response = HttpResponse(
            self.status, self.reason, self.headers, body, time.perf_counter() - self.started
        )
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _fail(self, err: Exception) -> None:
        waiter = self.waiter
        self.waiter = None
        self.keep = False
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(err)


class _LoopPool:
    """The connections of one client on one event loop, and its free connection slots."""

    def __init__(self, client: HttpClient, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.idle: list[_Conn] = []
        self.busy: set[_Conn] = set()
        self.free = client.settings.max_connections
        self.slot_waiters: deque[asyncio.Future[None]] = deque()
        self.guard: AsyncIterator[None] | None = None
        self.closed = False
        # one timer for the timeouts of every request in flight (a timer per request
        # would cost more than the rest of the bookkeeping)
        self.tick = min(client.settings.timeout / 4, 0.25)
        self.watchdog: asyncio.TimerHandle | None = None

    def watch(self) -> None:
        """Make sure the timeouts of the requests in flight are being watched."""
        if self.watchdog is None and not self.closed:
            self.watchdog = self.loop.call_later(self.tick, self._sweep)

    def _sweep(self) -> None:
        """Fail the requests past their deadline; come back while any are in flight."""
        self.watchdog = None
        now = time.monotonic()
        for conn in [c for c in self.busy if c.deadline <= now]:
            conn.expire()
        if self.busy:
            self.watch()

    async def wait_slot(self) -> None:
        """Wait for a connection slot (first come, first served)."""
        me: asyncio.Future[None] = self.loop.create_future()
        self.slot_waiters.append(me)
        try:
            await me
        except asyncio.CancelledError:
            if me.done() and not me.cancelled():  # handed a slot, then cancelled
                self.give_slot()
            raise

    def give_slot(self) -> None:
        waiters = self.slot_waiters
        while waiters:
            me = waiters.popleft()
            if not me.done():
                me.set_result(None)
                return
        self.free += 1

    def checkout(self) -> _Conn | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def close_all(self) -> None:
        self.closed = True
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        for conn in [*self.idle, *self.busy]:
            conn.close()
        self.idle.clear()
        self.busy.clear()


async def _close_with_loop(pool: _LoopPool, owner: weakref.ref[HttpClient]) -> AsyncIterator[None]:
    """An async generator the loop finalises on shutdown: closes the pool's connections."""
    try:
        yield
    finally:
        pool.close_all()
        client = owner()
        if client is not None:
            client._forget(pool)


async def _settle() -> None:
    await asyncio.sleep(0)


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_DEFAULT_CONTENT_TYPE = "Content-Type: application/json;charset=UTF-8\r\n"


class HttpClient:
    """A keep-alive HTTP/1.1 client for one gateway endpoint (``https://host[:port][/prefix]``).

    Parameters
    ----------
    base_url
        The endpoint; request paths are appended to it.
    gateway
        The name used in error messages and logs (``SOLAPI``, ``IWINV``, ...).
    settings
        Timeouts, rate limit, pool size and retries (:class:`HttpSettings`).
    secrets
        Strings scrubbed from every error message (keys, secrets, derived headers).
    ssl_context
        For ``https`` endpoints; the system's default trust store when ``None``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        gateway: str,
        settings: HttpSettings | None = None,
        secrets: Iterable[str] = (),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRecordError(
                f"{gateway.lower()}.base_url", base_url, "an http:// or https:// URL with a host"
            )
        if parts.query or parts.fragment or parts.username or parts.password:
            raise InvalidRecordError(
                f"{gateway.lower()}.base_url",
                base_url,
                "a URL without query, fragment or user:password",
            )
        self.base_url = base_url.rstrip("/")
        self.gateway = gateway
        self.settings = settings or HttpSettings()
        self.secure = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.secure else 80)
        self.prefix = parts.path.rstrip("/")
        default_port = 443 if self.secure else 80
        self.host_header = self.host if self.port == default_port else f"{self.host}:{self.port}"
        if ":" in self.host and not self.host.startswith("["):  # IPv6 literal
            self.host_header = f"[{self.host}]" + (
                "" if self.port == default_port else f":{self.port}"
            )
        self._ssl = (ssl_context or ssl.create_default_context()) if self.secure else None
        self.secrets = tuple(s for s in secrets if s)
        rate = self.settings.rate_limit
        self.limiter = (
            RateLimiter(rate, burst=self.settings.bucket_size) if rate is not None else None
        )
        self._paused_until = -math.inf  # time.monotonic() before which nothing is sent
        self._pools: dict[int, _LoopPool] = {}
        self._pools_lock = threading.Lock()
        self._fixed_headers = (
            f"Host: {self.host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
            "Accept: application/json\r\nAccept-Encoding: identity\r\nConnection: keep-alive\r\n"
        )
        self.requests_sent = 0

    def __repr__(self) -> str:
        limit = "" if self.limiter is None else f", rate_limit={self.limiter.rate:g}/s"
        return f"HttpClient({self.base_url!r}{limit})"

    # ------------------------------------------------------------------ pool

    async def _new_pool(self, loop: asyncio.AbstractEventLoop) -> _LoopPool:
        key = id(loop)
        pool = _LoopPool(self, loop)
        with self._pools_lock:
            old = self._pools.get(key)
            if old is not None and old.loop is loop and not old.closed:
                return old
            self._pools[key] = pool
        guard = _close_with_loop(pool, weakref.ref(self))
        await guard.__anext__()  # the loop now finalises it on shutdown_asyncgens()
        pool.guard = guard
        return pool

    def _forget(self, pool: _LoopPool) -> None:
        with self._pools_lock:
            if self._pools.get(id(pool.loop)) is pool:
                del self._pools[id(pool.loop)]

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Conn:
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                _, conn = await loop.create_connection(
                    _Conn,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError:
            msg = (
                f"{self.gateway}: no connection to {self.host_header} within "
                f"{self.settings.connect_timeout:g} s"
            )
            raise ProviderError("NETWORK_TIMEOUT", msg, retryable=True) from None
        except ssl.SSLError as err:
            msg = f"{self.gateway}: TLS handshake with {self.host_header} failed ({err.reason})"
            raise ProviderError("NETWORK_ERROR", msg, retryable=True) from None
        except OSError as err:
            msg = f"{self.gateway}: cannot connect to {self.host_header} ({_os_reason(err)})"
            raise ProviderError("NETWORK_ERROR", msg, retryable=True) from None
        return conn

    async def aclose(self) -> None:
        """Close this client's connections on the running loop (others: see :meth:`close`)."""
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            pool = self._pools.get(id(loop))
            if pool is not None and pool.loop is loop:
                pool.close_all()
                self._forget(pool)
                await asyncio.sleep(0)  # let the transports finish closing
        self.close()

    def close(self) -> None:
        """Close every pooled connection, whichever loop holds it (safe from any thread)."""
        with self._pools_lock:
            pools = list(self._pools.values())
            self._pools.clear()
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for pool in pools:
            loop = pool.loop
            if loop.is_closed():
                pool.closed = True
                continue
            if loop is current:
                pool.close_all()
            elif loop.is_running():
                done = threading.Event()

                def _close(p: _LoopPool = pool, d: threading.Event = done) -> None:
                    p.close_all()
                    d.set()

                try:
                    loop.call_soon_threadsafe(_close)
                except RuntimeError:  # closed meanwhile
                    continue
                done.wait(2.0)
            else:
                pool.close_all()
                if current is None:  # let the idle loop finish closing the transports
                    with contextlib.suppress(RuntimeError):
                        loop.run_until_complete(_settle())

    # ------------------------------------------------------------------ requests

    def url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        """The request target: prefix, path and the encoded query.

        A list or tuple value repeats its key (``messageIds=a&messageIds=b``).

        Examples
        --------
        >>> HttpClient("https://api.example.com/v1", gateway="X").url(
        ...     "/list", {"limit": 2, "ids": ["a b", "c"], "startKey": None})
        '/v1/list?limit=2&ids=a%20b&ids=c'
        """
        target = self.prefix + path
        if query:
            pairs: list[str] = []
            for k, v in query.items():
                if v is None:
                    continue
                key = _q(str(k))
                if isinstance(v, list | tuple):
                    pairs.extend(f"{key}={_q(str(item))}" for item in v)
                else:
                    pairs.append(f"{key}={_q(str(v))}")
            if pairs:
                target += "?" + "&".join(pairs)
        return target

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
        json_body: Any = None,
    ) -> HttpResponse:
        """Send one request (retrying transient failures) and return the final answer.

        ``headers`` may be a function, called for every attempt (a fresh signature).
        HTTP errors are returned, not raised (classify them with :func:`http_error`);
        network failures and timeouts raise a retryable :class:`ProviderError`.
        """
        target = self.url(path, query)
        body = b"" if json_body is None else _dumps(json_body)
        settings = self.settings
        attempt = 0
        while True:
            paused = self._check_pause()
            if paused > 0 and self.limiter is None:  # (a limiter makes the request wait)
                await asyncio.sleep(paused)
            extra = headers() if callable(headers) else headers
            head = self._head(method, target, extra, body, json_body is not None)
            try:
                response = await self._send(head + body if body else head, method)
            except ProviderError as err:
                if err.code != "NETWORK_ERROR" or attempt >= settings.max_retries:
                    raise
                delay = self._backoff(attempt)
                log.info("%s %s %s: %s; retry in %.2f s", self.gateway, method, path, err, delay)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            status = response.status
            if status < 429:
                return response
            wait: float
            if status in (429, 503):
                retry_after = response.retry_after()
                if retry_after is not None:
                    self._pause(retry_after)  # every check of this endpoint waits
                    if retry_after > settings.max_retry_wait:
                        return response
                    wait = 0.0  # the pause holds the retry back
                elif status == 503:
                    wait = self._backoff(attempt)
                else:
                    return response  # 429 without Retry-After: the runner's backoff decides
            elif status in (500, 502, 504):
                wait = self._backoff(attempt)
            else:
                return response
            if attempt >= settings.max_retries:
                return response
            log.info("%s %s %s: HTTP %d; retry in %.2f s", self.gateway, method, path, status, wait)
            attempt += 1
            if wait > 0:
                await asyncio.sleep(wait)

    def _backoff(self, attempt: int) -> float:
        base = min(0.1 * (2.0**attempt), self.settings.max_retry_wait)
        return base * (0.5 + random.random() / 2)  # jitter

    def _pause(self, seconds: float) -> None:
        """Send nothing to this endpoint for ``seconds`` (the gateway's ``Retry-After``)."""
        moment = time.monotonic() + seconds
        self._paused_until = max(self._paused_until, moment)
        if self.limiter is not None:
            self.limiter.pause_until(moment)

    def _check_pause(self) -> float:
        """Seconds left of a ``Retry-After`` pause; fails at once when that is too long."""
        if self._paused_until == -math.inf:
            return 0.0
        paused = self._paused_until - time.monotonic()
        if paused > self.settings.max_retry_wait:
            msg = (
                f"{self.gateway} asked to wait {paused:.1f} s more (Retry-After); "
                "not asking it again before then"
            )
            raise ProviderError("RATE_LIMIT_EXCEEDED", msg, retryable=True)
        return max(0.0, paused)

    def _head(
        self,
        method: str,
        target: str,
        extra: Mapping[str, str] | None,
        body: bytes,
        has_body: bool,
    ) -> bytes:
        parts = [method, " ", target, " HTTP/1.1\r\n", self._fixed_headers]
        typed = False
        if extra:
            lines = [f"{name}: {value}\r\n" for name, value in extra.items()]
            block = "".join(lines)
            n = len(lines)
            if block.count("\n") != n or block.count("\r") != n or "\0" in block:
                self._refuse_header(extra)
            parts.append(block)
            typed = any(name.lower() == "content-type" for name in extra)
        if has_body or method in _BODY_METHODS:
            if not typed:
                parts.append(_DEFAULT_CONTENT_TYPE)
            parts.append(f"Content-Length: {len(body)}\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("utf-8")

    def _refuse_header(self, extra: Mapping[str, str]) -> NoReturn:
        name = next(
            (k for k, v in extra.items() if any(c in k or c in v for c in "\r\n\0")), "<header>"
        )
        msg = f"header {name!r} holds a line break; refusing to send it"
        raise ProviderError("INVALID_REQUEST", scrub(msg, self.secrets), retryable=False)

    async def _send(self, payload: bytes, method: str) -> HttpResponse:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(id(loop))
        if pool is None or pool.loop is not loop or pool.closed:
            pool = await self._new_pool(loop)
        if pool.free > 0 and not pool.slot_waiters:
            pool.free -= 1
        else:
            await pool.wait_slot()
        timeout = self.settings.timeout
        try:
            while True:
                conn = pool.checkout()
                if conn is None:
                    conn = await self._connect(loop)
                pool.busy.add(conn)
                waiter: asyncio.Future[HttpResponse] = loop.create_future()
                conn.expect(waiter, method == "HEAD")
                try:
                    if self.limiter is not None:  # the request goes out as its token is taken
                        self.limiter.submit(waiter, partial(conn.send, payload, timeout))
                    else:
                        conn.send(payload, timeout)
                    if pool.watchdog is None:
                        pool.watch()
                    response = await waiter
                except _Stale:
                    continue  # a fresh connection, at once
                except (_Lost, _Malformed, _Expired) as err:
                    raise self._failure(err) from None
                finally:
                    pool.busy.discard(conn)
                    if (conn.keep if conn.sent else not conn.closed) and not pool.closed:
                        conn.waiter = None
                        conn.state = _IDLE
                        conn.idle_since = time.monotonic()
                        pool.idle.append(conn)
                    else:
                        conn.close()
                self.requests_sent += 1
                log.debug(
                    "%s %s -> %d in %.1f ms",
                    self.gateway,
                    method,
                    response.status,
                    response.elapsed * 1e3,
                )
                return response
        finally:
            pool.give_slot()

    def _failure(self, err: Exception) -> ProviderError:
        """The :class:`ProviderError` for a request that got no usable answer."""
        where = self.host_header
        if isinstance(err, _Expired):
            msg = f"{self.gateway}: no answer from {where} within {self.settings.timeout:g} s"
            return ProviderError("NETWORK_TIMEOUT", msg, retryable=True)
        if isinstance(err, _Malformed):
            msg = f"{self.gateway}: malformed HTTP answer from {where} ({err})"
            return ProviderError("PROVIDER_ERROR", scrub(msg, self.secrets), retryable=True)
        assert isinstance(err, _Lost)
        cause = err.cause
        if err.received:
            msg = f"{self.gateway}: {where} closed the connection mid-answer"
        elif isinstance(cause, OSError) and not isinstance(cause, ConnectionError):
            msg = f"{self.gateway}: connection to {where} failed ({_os_reason(cause)})"
        else:
            msg = f"{self.gateway}: {where} closed the connection without an answer"
        return ProviderError("NETWORK_ERROR", msg, retryable=True)


def _dumps(data: Any) -> bytes:
    """``data`` as compact UTF-8 JSON (:mod:`orjson`; the standard library for big integers)."""
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")


def _q(text: str) -> str:
    """``text`` percent-encoded for a query (ids are usually plain already: fast path)."""
    return text if _UNRESERVED.fullmatch(text) else quote(text, safe="")


_HEADER_LINE = re.compile(r"([^:\r\n]*):([^\r\n]*)\r\n")


def _parse_head(head: bytes | bytearray) -> tuple[int, str, dict[str, str], str]:
    """Status, reason, headers (lower-case names; repeats joined by ``, ``) and version.

    Examples
    --------
    >>> head = b"HTTP/1.1 429 Too Many\\r\\nRetry-After: 2\\r\\nVia: a\\r\\nvia: b\\r\\n\\r\\n"
    >>> _parse_head(head)
    (429, 'Too Many', {'retry-after': '2', 'via': 'a, b'}, 'HTTP/1.1')
    """
    text = head.decode("latin-1")
    first, _, rest = text.partition("\r\n")
    version, _, status = first.partition(" ")
    code, _, reason = status.partition(" ")
    if not version.startswith("HTTP/") or not code.isdigit() or len(code) != 3:
        raise ValueError(f"bad status line {first[:80]!r}")
    pairs = _HEADER_LINE.findall(rest)
    if len(pairs) != rest.count("\r\n") - 1:  # a line without a colon
        bad = next(line for line in rest.split("\r\n") if line and ":" not in line)
        raise ValueError(f"bad header line {bad[:80]!r}")
    headers: dict[str, str] = {}
    for name, value in pairs:
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(code), reason.strip(), headers, version


def _os_reason(err: OSError) -> str:
    name = type(err).__name__
    text = err.strerror or str(err)
    return f"{name}: {text}" if text else name


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True, slots=True)
class GatewayCheck:
    """The outcome of checking one gateway endpoint (credentials and reachability).

    Examples
    --------
    >>> GatewayCheck("solapi", "https://api.solapi.com", True, 0.084, None, "ok").line()
    'solapi         ok       84 ms  https://api.solapi.com  ok'
    """

    gateway: str
    endpoint: str
    ok: bool
    seconds: float | None
    code: str | None
    message: str
    skipped: bool = False

    @property
    def outcome(self) -> str:
        """``ok``, ``FAILED`` or ``skipped``."""
        return "skipped" if self.skipped else ("ok" if self.ok else "FAILED")

    def line(self) -> str:
        """One line of the ``check-gateways`` report."""
        took = "" if self.seconds is None else f"{self.seconds * 1000:.0f} ms"
        detail = f"{self.code}: {self.message}" if self.code else self.message
        return f"{self.gateway:<14} {self.outcome:<7} {took:>6}  {self.endpoint}  {detail}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "gateway": self.gateway,
            "endpoint": self.endpoint,
            "outcome": self.outcome,
            "ok": self.ok,
            "seconds": self.seconds,
            "code": self.code,
            "message": self.message,
        }


# --------------------------------------------------------------------------- shared by gateways

#: Korea Standard Time (no daylight saving since 1988), the zone of the gateways' dates.
KST = timezone(timedelta(hours=9), "KST")


def parse_gateway_time(value: object, *, naive_zone: tzinfo = KST) -> datetime | None:
    """A gateway timestamp as an aware UTC datetime (``None`` when absent or unreadable).

    ISO 8601 with an offset or ``Z`` keeps its zone; a naive one
    (``2026-11-02 09:00:05``, IWINV's form) is in ``naive_zone``, Korea time by default.

    Examples
    --------
    >>> parse_gateway_time("2026-11-02 09:00:05")
    datetime.datetime(2026, 11, 2, 0, 0, 5, tzinfo=datetime.timezone.utc)
    >>> parse_gateway_time("2026-11-02T00:00:05.120Z").isoformat()
    '2026-11-02T00:00:05.120000+00:00'
    >>> parse_gateway_time("0000-00-00 00:00:00") is None
    True
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=naive_zone)
    moment = moment.astimezone(UTC)
    if not _EARLIEST <= moment < _LATEST:
        return None
    return moment


_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def korea_time(moment: datetime, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """``moment`` (naive means UTC) written in Korea time.

    Examples
    --------
    >>> korea_time(datetime(2026, 11, 1, 15, 30, tzinfo=UTC))
    '2026-11-02 00:30:00'
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if "%f" in fmt:
        return moment.astimezone(KST).strftime(fmt)
    second = math.floor(moment.timestamp())
    key = (second, fmt)
    text = _KOREA_TIMES.get(key)
    if text is None:  # (one run asks the same seconds again and again: its clock, its sends)
        if len(_KOREA_TIMES) >= 4096:
            _KOREA_TIMES.clear()
        text = _KOREA_TIMES[key] = datetime.fromtimestamp(second, KST).strftime(fmt)
    return text


_KOREA_TIMES: dict[tuple[int, str], str] = {}


def pick_fields(item: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The named fields of a gateway item that are present (for ``raw``: no numbers, no text)."""
    return {name: item[name] for name in names if name in item}


class GatewayProvider:
    """What the SOLAPI and IWINV providers share: an ``id``, their HTTP clients, closing.

    Use one as a context manager (``with`` or ``async with``), or call :meth:`close`,
    to close its connections; they are also closed when their event loop shuts down.
    """

    id: str
    name: str
    _clients: tuple[HttpClient, ...]

    def close(self) -> None:
        """Close every connection of this provider (safe to call twice, from any thread)."""
        for client in self._clients:
            client.close()

    async def aclose(self) -> None:
        """Close the connections (those on the running loop at once)."""
        for client in self._clients:
            await client.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def requests_sent(self) -> int:
        """HTTP requests answered so far (every retry counts)."""
        return sum(client.requests_sent for client in self._clients)
