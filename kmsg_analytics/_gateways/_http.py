"""The HTTP layer shared by the gateway clients: pooled keep-alive connections, timeouts,
a per-endpoint rate limit, retries of transient failures, and error classification.

It is a small HTTP/1.1 client on :mod:`asyncio` streams (standard library only), made for
the polling runner, which calls ``async`` providers on its event loop: no thread per
request, and one check costs a few tens of microseconds of Python. Connections belong
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
from typing import Any, Self
from urllib.parse import quote, urlsplit

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
        Seconds one request may take from sending to the last byte of the answer.
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


class RateLimiter:
    """A token bucket (GCRA) shared by every thread and event loop of one endpoint.

    A request takes its token at the moment it is written, never before, so at most
    ``burst + rate * t`` requests go out in any span of ``t`` seconds, however late a
    busy event loop wakes the waiters. Waiters on one loop are served first come, first
    served, and only the first of them sleeps on a timer. :meth:`pause_until` holds
    every request back until a time the gateway asked for (``Retry-After``).

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
        self._clock = clock
        self._tat = -math.inf  # theoretical arrival time of the next request
        self._paused_until = -math.inf
        self._lock = threading.Lock()
        self._queues: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, deque[asyncio.Future[None]]
        ] = weakref.WeakKeyDictionary()

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

    async def acquire(self) -> None:
        """Wait for a token (first come, first served on this event loop) and take it."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            with self._lock:
                queue = self._queues.setdefault(loop, deque())
        if not queue and self.try_take() == 0.0:
            return
        me: asyncio.Future[None] = loop.create_future()
        queue.append(me)
        try:
            if queue[0] is not me:
                await me  # the waiter ahead hands over when it has its token
            while (wait := self.try_take()) > 0.0:
                await asyncio.sleep(wait)
        finally:
            head = bool(queue) and queue[0] is me
            with contextlib.suppress(ValueError):
                queue.remove(me)
            if head and queue and not queue[0].done():
                queue[0].set_result(None)

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
        text = self.body.decode("utf-8-sig")
        return json.loads(text)

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


def _looks_json(body: bytes) -> bool:
    try:
        json.loads(body.decode("utf-8-sig"))
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


class _Conn:
    __slots__ = ("idle_since", "reader", "used", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()
        self.used = 0

    def usable(self) -> bool:
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and time.monotonic() - self.idle_since < _IDLE_KEEPALIVE
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _LoopPool:
    """The connections of one client on one event loop."""

    def __init__(self, client: HttpClient, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.idle: list[_Conn] = []
        self.busy: set[_Conn] = set()
        self.slots = asyncio.Semaphore(client.settings.max_connections)
        self.guard: AsyncIterator[None] | None = None
        self.closed = False

    def close_all(self) -> None:
        self.closed = True
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


class _StaleConnection(Exception):
    """A reused connection was closed by the server before it answered."""


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
        self.requests_sent = 0

    def __repr__(self) -> str:
        limit = "" if self.limiter is None else f", rate_limit={self.limiter.rate:g}/s"
        return f"HttpClient({self.base_url!r}{limit})"

    # ------------------------------------------------------------------ pool

    async def _pool(self) -> _LoopPool:
        loop = asyncio.get_running_loop()
        key = id(loop)
        pool = self._pools.get(key)
        if pool is not None and pool.loop is loop and not pool.closed:
            return pool
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

    async def _connect(self) -> _Conn:
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                    limit=_MAX_HEAD,
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
        return _Conn(reader, writer)

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
        """The request target: prefix, path and the encoded query."""
        target = self.prefix + path
        if query:
            pairs = [f"{_q(str(k))}={_q(str(v))}" for k, v in query.items() if v is not None]
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
        body = b"" if json_body is None else json.dumps(json_body, ensure_ascii=False).encode()
        settings = self.settings
        attempt = 0
        while True:
            paused = self._check_pause()
            if paused > 0 and self.limiter is None:  # (a limiter makes the request wait)
                await asyncio.sleep(paused)
            extra = headers() if callable(headers) else headers
            head = self._head(method, target, extra, body, json_body is not None)
            try:
                response = await self._send(head + body, method)
            except ProviderError as err:
                if err.code != "NETWORK_ERROR" or attempt >= settings.max_retries:
                    raise
                delay = self._backoff(attempt)
                log.info("%s %s %s: %s; retry in %.2f s", self.gateway, method, path, err, delay)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            status = response.status
            wait: float | None
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
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {self.host_header}",
            f"User-Agent: {USER_AGENT}",
            "Accept: application/json",
            "Accept-Encoding: identity",
            "Connection: keep-alive",
        ]
        names = set()
        for name, value in (extra or {}).items():
            if any(c in name or c in value for c in "\r\n\0"):
                msg = f"header {name!r} holds a line break; refusing to send it"
                raise ProviderError("INVALID_REQUEST", scrub(msg, self.secrets), retryable=False)
            names.add(name.lower())
            lines.append(f"{name}: {value}")
        if has_body or method in ("POST", "PUT", "PATCH"):
            if "content-type" not in names:
                lines.append("Content-Type: application/json;charset=UTF-8")
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    async def _send(self, payload: bytes, method: str) -> HttpResponse:
        pool = await self._pool()
        started = time.perf_counter()
        async with pool.slots:
            while True:
                conn = self._checkout(pool)
                fresh = conn is None
                if conn is None:
                    conn = await self._connect()
                pool.busy.add(conn)
                keep = False
                try:
                    if self.limiter is not None:  # the token is taken as the request goes out
                        await self.limiter.acquire()
                    async with asyncio.timeout(self.settings.timeout):
                        response, keep = await self._exchange(conn, payload, method, fresh, started)
                except _StaleConnection:
                    continue  # a fresh connection, at once
                except TimeoutError:
                    msg = (
                        f"{self.gateway}: no answer from {self.host_header} within "
                        f"{self.settings.timeout:g} s"
                    )
                    raise ProviderError("NETWORK_TIMEOUT", msg, retryable=True) from None
                finally:
                    pool.busy.discard(conn)
                    if keep and not pool.closed:
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

    @staticmethod
    def _checkout(pool: _LoopPool) -> _Conn | None:
        while pool.idle:
            conn = pool.idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    async def _exchange(
        self, conn: _Conn, payload: bytes, method: str, fresh: bool, started: float
    ) -> tuple[HttpResponse, bool]:
        reader, writer = conn.reader, conn.writer
        conn.used += 1
        try:
            writer.write(payload)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as err:
            partial = getattr(err, "partial", b"")
            if not fresh and not partial:
                raise _StaleConnection from None
            msg = f"{self.gateway}: {self.host_header} closed the connection without an answer"
            raise ProviderError("NETWORK_ERROR", msg, retryable=True) from None
        except asyncio.LimitOverrunError:
            msg = f"{self.gateway}: the answer's headers exceed {_MAX_HEAD} bytes"
            raise ProviderError("PROVIDER_ERROR", msg, retryable=True) from None
        except OSError as err:
            msg = f"{self.gateway}: connection to {self.host_header} failed ({_os_reason(err)})"
            raise ProviderError("NETWORK_ERROR", msg, retryable=True) from None
        try:
            status, reason, headers, version = _parse_head(head)
            while 100 <= status < 200 and status != 101:  # skip interim answers
                head = await reader.readuntil(b"\r\n\r\n")
                status, reason, headers, version = _parse_head(head)
            body, complete = await self._read_body(reader, method, status, headers)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            msg = f"{self.gateway}: {self.host_header} closed the connection mid-answer"
            raise ProviderError("NETWORK_ERROR", msg, retryable=True) from None
        except (ValueError, asyncio.LimitOverrunError) as err:
            msg = f"{self.gateway}: malformed HTTP answer from {self.host_header} ({err})"
            raise ProviderError(
                "PROVIDER_ERROR", scrub(msg, self.secrets), retryable=True
            ) from None
        connection = headers.get("connection", "").lower()
        keep = complete and "close" not in connection
        if version == "HTTP/1.0" and "keep-alive" not in connection:
            keep = False
        elapsed = time.perf_counter() - started
        return HttpResponse(status, reason, headers, body, elapsed), keep

    async def _read_body(
        self, reader: asyncio.StreamReader, method: str, status: int, headers: Mapping[str, str]
    ) -> tuple[bytes, bool]:
        if method == "HEAD" or status in (204, 304):
            return b"", True
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            size_total = 0
            while True:
                line = await reader.readuntil(b"\r\n")
                size = int(line.split(b";", 1)[0].strip() or b"x", 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                        pass
                    return b"".join(chunks), True
                size_total += size
                if size_total > _MAX_BODY:
                    raise ValueError(f"body larger than {_MAX_BODY} bytes")
                chunk = await reader.readexactly(size + 2)
                chunks.append(chunk[:-2])
        length = headers.get("content-length")
        if length is not None:
            n = int(length)
            if n < 0 or n > _MAX_BODY:
                raise ValueError(f"Content-Length {n} out of range")
            return await reader.readexactly(n), True
        data = await reader.read(_MAX_BODY + 1)
        while data and len(data) <= _MAX_BODY:
            more = await reader.read(_MAX_BODY + 1 - len(data))
            if not more:
                break
            data += more
        if len(data) > _MAX_BODY:
            raise ValueError(f"body larger than {_MAX_BODY} bytes")
        return data, False


_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")


def _q(text: str) -> str:
    """``text`` percent-encoded for a query (ids are usually plain already: fast path)."""
    return text if _UNRESERVED.fullmatch(text) else quote(text, safe="")


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str], str]:
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or not code.isdigit() or len(code) != 3:
        raise ValueError(f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line[:80]!r}")
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
    return moment.astimezone(KST).strftime(fmt)


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
