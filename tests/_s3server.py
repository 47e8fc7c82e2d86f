"""An S3 API on 127.0.0.1 for the tests (moto in server mode), and a proxy that injects faults."""

from __future__ import annotations

import http.client
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: The bucket every test lake lives in (each lake under its own prefix).
BUCKET = "kmsg-test-lakes"
CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "region": "us-east-1",
}


class S3Server:
    """moto's S3 server on a free port of 127.0.0.1, with :data:`BUCKET` created."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.client().create_bucket(Bucket=BUCKET)

    def options(self, endpoint: str | None = None, **extra: Any) -> dict[str, Any]:
        """``storage_options`` reaching this server (or ``endpoint``, e.g. a proxy to it)."""
        return {"endpoint_url": endpoint or self.endpoint, **CREDENTIALS, **extra}

    def client(self) -> Any:
        """A plain boto3 client of the server (to look at objects behind the store's back)."""
        import boto3  # type: ignore[import-untyped]

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["aws_access_key_id"],
            aws_secret_access_key=CREDENTIALS["aws_secret_access_key"],
            region_name=CREDENTIALS["region"],
        )

    def new_url(self) -> str:
        """A fresh, empty lake URL."""
        return f"s3://{BUCKET}/lake-{uuid.uuid4().hex[:12]}"

    def keys(self, url: str) -> list[str]:
        """Every object key below the lake at ``url`` (relative to it)."""
        prefix = url.removeprefix(f"s3://{BUCKET}/") + "/"
        out: list[str] = []
        for page in (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        ):
            out.extend(item["Key"].removeprefix(prefix) for item in page.get("Contents", ()))
        return out

    def stop(self) -> None:
        self._server.stop()


_shared: S3Server | None = None
_lock = threading.Lock()


def shared_server() -> S3Server:
    """The one server of this test session (started on first use)."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = S3Server()
        return _shared


def stop_shared_server() -> None:
    global _shared
    with _lock:
        if _shared is not None:
            _shared.stop()
            _shared = None


#: Given a request's method and path: ``None`` to let it be, else the HTTP status to answer.
Rule = Callable[[str, str], int | None]


def _never(method: str, path: str) -> int | None:
    return None


@dataclass
class Fault:
    """The faults a :class:`FaultProxy` injects; change them while it runs.

    ``before``: answer with this status instead of forwarding (the server never sees the
    request). ``after``: forward, then answer with this status (the server did it, the
    client is told it failed). ``delay``: seconds to wait before anything. ``drop_headers``:
    request headers the server never sees.
    """

    before: Rule = _never
    after: Rule = _never
    delay: float = 0.0
    #: request headers removed before forwarding (e.g. to play a server that ignores them)
    drop_headers: tuple[str, ...] = ()
    seen: list[tuple[str, str, int]] = field(default_factory=list)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is what the slow tests do


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of the S3 server: real sockets, injected faults."""

    def __init__(self, target: str) -> None:
        self.fault = Fault()
        host, port = target.removeprefix("http://").split(":")
        fault = self.fault

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if fault.delay:
                    time.sleep(fault.delay)
                status = fault.before(self.command, self.path)
                if status is not None:
                    self._fail(status)
                    return
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                try:
                    dropped = ("connection", *(h.lower() for h in fault.drop_headers))
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    fault.seen.append((self.command, self.path, response.status))
                    status = fault.after(self.command, self.path)
                    if status is not None:
                        self._fail(status)
                        return
                    self.send_response(response.status)
                    for name, value in response.getheaders():
                        if name.lower() not in (
                            "connection",
                            "transfer-encoding",
                            "content-length",
                        ):
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            def _fail(self, status: int) -> None:
                payload = (
                    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError"
                    b"</Code><Message>injected by the test proxy</Message></Error>"
                )
                fault.seen.append((self.command, self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
