"""A thin S3 client for the object lake: get, conditional put, list, delete, clear errors."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from ._errors import InvalidRecordError, LakeError

__all__ = ["LakeUnavailableError", "ObjectInfo", "ObjectStore", "S3Options", "split_url"]

#: The spellings ``storage_options`` accepts, and the option each one sets.
_ALIASES: Final = {
    "endpoint_url": "endpoint_url",
    "aws_endpoint_url": "endpoint_url",
    "endpoint": "endpoint_url",
    "aws_access_key_id": "access_key_id",
    "access_key_id": "access_key_id",
    "key": "access_key_id",
    "aws_secret_access_key": "secret_access_key",
    "secret_access_key": "secret_access_key",
    "secret": "secret_access_key",
    "aws_session_token": "session_token",
    "session_token": "session_token",
    "token": "session_token",
    "region": "region",
    "aws_region": "region",
    "region_name": "region",
    "allow_http": "allow_http",
    "aws_allow_http": "allow_http",
    "timeout": "timeout",
    "max_retries": "max_retries",
}


_T = TypeVar("_T")
_session: Any = None
_session_lock = threading.Lock()


class LakeUnavailableError(LakeError):
    """The object store behind a lake could not be reached or refused a request.

    Nothing was acknowledged when a write raises this; the message names the endpoint,
    the bucket and what to check.
    """


@dataclass(frozen=True, slots=True)
class S3Options:
    """Where and how to reach an S3 API (parsed ``storage_options``)."""

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    region: str | None = None
    allow_http: bool = False
    timeout: float = 30.0
    max_retries: int = 3

    @classmethod
    def parse(cls, options: Mapping[str, Any] | None) -> S3Options:
        """Read ``storage_options`` (fsspec, Polars or boto3 spellings).

        Examples
        --------
        >>> S3Options.parse({"aws_endpoint_url": "http://127.0.0.1:9000", "timeout": 2}).timeout
        2.0
        """
        if options is None:
            return cls()
        if not isinstance(options, Mapping):
            raise InvalidRecordError("storage_options", options, "a mapping of option to value")
        values: dict[str, Any] = {}
        for name, value in options.items():
            key = _ALIASES.get(str(name).lower())
            if key is None:
                raise InvalidRecordError(
                    "storage_options", name, "one of " + ", ".join(sorted(_ALIASES))
                )
            values[key] = value
        for key in ("endpoint_url", "access_key_id", "secret_access_key", "session_token"):
            if key in values and values[key] is not None and not isinstance(values[key], str):
                raise InvalidRecordError(f"storage_options[{key!r}]", values[key], "a string")
        if "region" in values and values["region"] is not None:
            values["region"] = str(values["region"])
        if "allow_http" in values:
            values["allow_http"] = _flag(values["allow_http"])
        elif str(values.get("endpoint_url") or "").startswith("http://"):
            values["allow_http"] = True
        if "timeout" in values:
            values["timeout"] = _positive(values["timeout"], "timeout")
        if "max_retries" in values:
            retries = values["max_retries"]
            if isinstance(retries, str) and retries.isdigit():
                retries = int(retries)
            if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
                raise InvalidRecordError(
                    "storage_options['max_retries']", retries, "a whole number >= 0"
                )
            values["max_retries"] = retries
        return cls(**values)

    def for_polars(self) -> dict[str, Any]:
        """The same settings as Polars ``storage_options`` (``scan_parquet``)."""
        out: dict[str, Any] = {
            "max_retries": self.max_retries,
            "retry_timeout_ms": int(self.timeout * 1000 * (self.max_retries + 1)),
            "timeout": f"{int(self.timeout * 1000)}ms",
            "connect_timeout": f"{int(self.timeout * 1000)}ms",
        }
        pairs = (
            ("aws_endpoint_url", self.endpoint_url),
            ("aws_access_key_id", self.access_key_id),
            ("aws_secret_access_key", self.secret_access_key),
            ("aws_session_token", self.session_token),
            ("aws_region", self.region),
        )
        out.update({k: v for k, v in pairs if v is not None})
        if self.allow_http:
            out["aws_allow_http"] = "true"
        return out


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise InvalidRecordError("storage_options['allow_http']", value, "true or false")


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidRecordError(f"storage_options[{name!r}]", value, "a number of seconds > 0")
    return float(value)


def split_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of an ``s3://bucket/prefix`` URL (prefix without slashes around).

    Examples
    --------
    >>> split_url("s3://lake/tracking/")
    ('lake', 'tracking')
    """
    parts = urlsplit(url)
    if parts.scheme not in ("s3", "s3a") or not parts.netloc:
        raise InvalidRecordError("path", url, "an s3://bucket/prefix URL")
    if parts.query or parts.fragment:
        raise InvalidRecordError("path", url, "an s3://bucket/prefix URL without ? or #")
    return parts.netloc, parts.path.strip("/")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: its key below the lake prefix, size and last change (server time)."""

    key: str
    size: int
    modified: datetime


class ObjectStore:
    """Objects below ``s3://bucket/prefix``, reached with boto3.

    Every failure of the endpoint becomes a :class:`LakeUnavailableError` naming the
    endpoint, the URL and the operation.
    """

    def __init__(self, url: str, options: S3Options) -> None:
        self.bucket, self.prefix = split_url(url)
        self.options = options
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    @property
    def client(self) -> Any:
        """The boto3 S3 client (boto3 clients are safe to share between threads)."""
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> Any:
        try:
            import boto3  # type: ignore[import-untyped]
            from botocore.config import Config  # type: ignore[import-untyped]
        except ImportError as err:  # pragma: no cover - the s3 extra is missing
            msg = f'a lake at {self.url} needs boto3: pip install "kmsg-analytics[s3]"'
            raise LakeError(msg) from err
        o = self.options
        config = Config(
            connect_timeout=o.timeout,
            read_timeout=o.timeout,
            retries={"max_attempts": o.max_retries + 1, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"} if o.endpoint_url else None,
        )
        global _session
        with _session_lock:  # a session loads the service models once; clients share them
            if _session is None:
                _session = boto3.session.Session()
            return _session.client(
                "s3",
                endpoint_url=o.endpoint_url,
                aws_access_key_id=o.access_key_id,
                aws_secret_access_key=o.secret_access_key,
                aws_session_token=o.session_token,
                region_name=o.region or "us-east-1",
                config=config,
            )

    def full_key(self, key: str) -> str:
        """The object key of ``key`` (a path below the lake prefix)."""
        return f"{self.prefix}/{key}" if self.prefix else key

    def object_url(self, key: str) -> str:
        """``s3://bucket/prefix/key``."""
        return f"s3://{self.bucket}/{self.full_key(key)}"

    # ------------------------------------------------------------------ requests

    def get(self, key: str) -> bytes | None:
        """The bytes of ``key``, or ``None`` when there is no such object."""

        def run() -> bytes | None:
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))
            except Exception as err:
                if _code(err) in ("NoSuchKey", "404"):
                    return None
                raise
            return bytes(response["Body"].read())

        return self._call("GET", key, run)

    def put(self, key: str, body: bytes, *, if_absent: bool = False) -> bool:
        """Store ``body`` at ``key`` in one request; with ``if_absent``, only if it is new.

        Returns ``False`` when ``if_absent`` and the object already existed (HTTP 412, or
        409 when another conditional write of the key was in flight), ``True`` once stored.
        """
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}

        def run() -> bool:
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self.full_key(key), Body=body, **extra
                )
            except Exception as err:
                lost = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
                if if_absent and _code(err) in lost:
                    return False
                raise
            return True

        return self._call("PUT", key, run)

    def list(self, prefix: str, *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order (after ``start_after``)."""
        base = self.full_key("")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.full_key(prefix)}
        if start_after is not None:
            kwargs["StartAfter"] = self.full_key(start_after)
        while True:
            page = self._call("LIST", prefix, lambda: self.client.list_objects_v2(**kwargs))
            for item in page.get("Contents", ()):
                yield ObjectInfo(item["Key"][len(base) :], int(item["Size"]), item["LastModified"])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            kwargs["ContinuationToken"] = token

    def delete(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` (missing ones are fine), 1000 per request."""
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": self.full_key(k)} for k in keys[start : start + 1000]]
            self._call(
                "DELETE",
                keys[start],
                lambda c=chunk: self.client.delete_objects(  # type: ignore[misc]
                    Bucket=self.bucket, Delete={"Objects": c, "Quiet": True}
                ),
            )

    def _call(self, op: str, key: str, run: Callable[[], _T]) -> _T:
        try:
            return run()
        except LakeError:
            raise
        except Exception as err:
            raise self.unavailable(op, key, err) from err

    def unavailable(self, op: str, key: str, err: BaseException) -> LakeError:
        """The error to raise when ``op`` on ``key`` failed with ``err``."""
        endpoint = self.options.endpoint_url or "the default AWS S3 endpoint"
        where = self.object_url(key)
        code = _code(err)
        if code == "NoSuchBucket":
            msg = (
                f"bucket {self.bucket!r} does not exist at {endpoint} ({op} {where}): create it "
                "first, or check the URL and storage_options['endpoint_url']"
            )
            return LakeError(msg)
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            msg = (
                f"{endpoint} refused {op} {where} ({code}): check the access key, the secret and "
                "the bucket policy in storage_options"
            )
            return LakeError(msg)
        msg = (
            f"the S3 endpoint {endpoint} failed {op} {where}: {type(err).__name__}: {err}. "
            "Nothing was acknowledged by this call; check that the endpoint is up and "
            "reachable (storage_options['endpoint_url'], network, credentials), then retry; "
            "storage_options['timeout'] and ['max_retries'] set how long to wait"
        )
        return LakeUnavailableError(msg)


def _code(err: BaseException) -> str:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status:
            return str(status)
    return ""
