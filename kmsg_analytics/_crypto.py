"""Phone numbers encrypted at rest: AES-256-GCM envelopes and where their keys come from.

An envelope is ``v1.<key id>.<base64url(ciphertext and tag)>``. The nonce is derived
from the key and the plaintext (HMAC-SHA256), so the same number always seals to the
same envelope under one key: answers from two stores compare equal, batches seal each
distinct number once, and nothing is leaked that the keyed hash does not already
show (equality). Keys never reach the lake, logs or reports; only key ids do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ._errors import KmsgAnalyticsError

__all__ = [
    "KEY_ENV",
    "EnvKeyProvider",
    "FileKeyProvider",
    "KeyProvider",
    "KeyUnavailableError",
    "NumberCipher",
    "StaticKeyProvider",
    "resolve_key_provider",
]

#: Environment variable with the encryption key(s): ``kid:base64key[,kid:base64key...]``
#: (the first is the active key) or a single base64/hex key of 32 bytes.
KEY_ENV = "KMSG_ANALYTICS_KEY"


class KeyUnavailableError(KmsgAnalyticsError, LookupError):
    """A number is needed in clear but its key is not available here."""


@runtime_checkable
class KeyProvider(Protocol):
    """Where encryption keys come from: an active key id and 32-byte keys by id."""

    @property
    def active_kid(self) -> str: ...

    def key(self, kid: str) -> bytes: ...

    def kids(self) -> tuple[str, ...]: ...


def _decode_key(text: str) -> bytes:
    text = text.strip()
    for decode in (bytes.fromhex, lambda t: base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))):
        try:
            raw = decode(text)
        except ValueError:
            continue
        if len(raw) == 32:
            return raw
    msg = "an encryption key must be 32 bytes, written as 64 hex digits or base64"
    raise KmsgAnalyticsError(msg)


def _kid_of(key: bytes) -> str:
    return hmac.new(key, b"kmsg-analytics/enc-key-id", hashlib.sha256).hexdigest()[:12]


def _parse_keys(text: str, source: str) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part or part.startswith("#"):
            continue
        if ":" in part:
            kid, _, value = part.partition(":")
            kid = kid.strip()
        else:
            kid, value = "", part
        key = _decode_key(value)
        keys[kid or _kid_of(key)] = key
    if not keys:
        msg = f"{source} holds no key"
        raise KmsgAnalyticsError(msg)
    return keys


class StaticKeyProvider:
    """Keys given in code: ``{kid: key}``, the first (or ``active``) being active.

    Examples
    --------
    >>> keys = StaticKeyProvider({"k1": bytes(32)})
    >>> keys.active_kid
    'k1'
    """

    def __init__(self, keys: Mapping[str, bytes], *, active: str | None = None) -> None:
        if not keys:
            msg = "StaticKeyProvider needs at least one key"
            raise KmsgAnalyticsError(msg)
        for kid, key in keys.items():
            if len(key) != 32 or "." in kid or not kid:
                msg = f"key {kid!r}: expected a non-empty id without dots and a 32-byte key"
                raise KmsgAnalyticsError(msg)
        self._keys = dict(keys)
        self._active = active or next(iter(self._keys))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kids={list(self._keys)!r}, active={self._active!r})"

    @property
    def active_kid(self) -> str:
        """The id new envelopes are sealed with."""
        return self._active

    def kids(self) -> tuple[str, ...]:
        """Every key id this provider can open."""
        return tuple(self._keys)

    def key(self, kid: str) -> bytes:
        """The key with id ``kid``."""
        try:
            return self._keys[kid]
        except KeyError:
            msg = f"no encryption key with id {kid!r} here: add it to ${KEY_ENV} or the key file"
            raise KeyUnavailableError(msg) from None


class EnvKeyProvider(StaticKeyProvider):
    """Keys from ``$KMSG_ANALYTICS_KEY``."""

    def __init__(self, variable: str = KEY_ENV) -> None:
        text = os.environ.get(variable)
        if not text:
            msg = f"${variable} is not set"
            raise KeyUnavailableError(msg)
        super().__init__(_parse_keys(text, f"${variable}"))


class FileKeyProvider(StaticKeyProvider):
    """Keys from a file outside the lake, readable by its owner only (``kid:key`` lines)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        try:
            mode = p.stat().st_mode
        except FileNotFoundError:
            msg = f"key file {p} does not exist"
            raise KeyUnavailableError(msg) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            msg = f"key file {p} is readable by others: run `chmod 600 {p}`"
            raise KmsgAnalyticsError(msg)
        super().__init__(_parse_keys(p.read_text(), str(p)))


class _CallableKeyProvider(StaticKeyProvider):
    def __init__(self, fn: Callable[[], Mapping[str, bytes]]) -> None:
        super().__init__(fn())


def default_key_file() -> Path:
    """``~/.config/kmsg-analytics/lake.key`` (``$XDG_CONFIG_HOME`` respected)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kmsg-analytics" / "lake.key"


def resolve_key_provider(
    keys: KeyProvider
    | Mapping[str, bytes]
    | Callable[[], Mapping[str, bytes]]
    | str
    | os.PathLike[str]
    | None = None,
) -> KeyProvider:
    """Find the encryption keys: the argument, else ``$KMSG_ANALYTICS_KEY``, else a key file.

    The default key file is created with a random key on first use (owner-only).
    """
    if isinstance(keys, KeyProvider):
        return keys
    if isinstance(keys, Mapping):
        return StaticKeyProvider(keys)
    if callable(keys):
        return _CallableKeyProvider(keys)
    if keys is not None:
        return FileKeyProvider(keys)
    if os.environ.get(KEY_ENV):
        return EnvKeyProvider()
    path = default_key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            key = secrets.token_bytes(32)
            os.write(fd, f"{_kid_of(key)}:{key.hex()}\n".encode())
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return FileKeyProvider(path)


class NumberCipher:
    """Seals and opens phone numbers with AES-256-GCM under the provider's keys.

    Examples
    --------
    >>> cipher = NumberCipher(StaticKeyProvider({"k1": bytes(range(32))}))
    >>> env = cipher.seal("01012345678", "to")
    >>> env.startswith("v1.k1.")
    True
    >>> cipher.open(env, "to")
    '01012345678'
    >>> cipher.seal("01012345678", "to") == env
    True
    """

    def __init__(self, provider: KeyProvider) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.provider = provider
        self._aead = AESGCM
        self._cache: dict[tuple[str, str], str] = {}
        self._ciphers: dict[bytes, Any] = {}  # one AESGCM per key (its key schedule, once)

    def __repr__(self) -> str:
        return f"NumberCipher(active_kid={self.provider.active_kid!r})"

    def seal(self, number: str, field: str) -> str:
        """The envelope of ``number`` (already normalised) for column ``field``."""
        hit = self._cache.get((field, number))
        if hit is not None:
            return hit
        kid = self.provider.active_kid
        key = self.provider.key(kid)
        aad = f"kmsg-analytics/{field}".encode()
        nonce = hmac.digest(key, aad + b"\0" + number.encode(), "sha256")[:12]
        sealed = self._cipher(key).encrypt(nonce, number.encode(), aad)
        envelope = f"v1.{kid}.{base64.urlsafe_b64encode(nonce + sealed).decode().rstrip('=')}"
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[(field, number)] = envelope
        return envelope

    def open(self, envelope: str, field: str) -> str:
        """The number inside an envelope (raises :class:`KeyUnavailableError` without its key)."""
        try:
            version, kid, body = envelope.split(".", 2)
        except ValueError:
            msg = f"not an encrypted number envelope: {envelope[:12]!r}..."
            raise KmsgAnalyticsError(msg) from None
        if version != "v1":
            msg = f"unknown envelope version {version!r}"
            raise KmsgAnalyticsError(msg)
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        key = self.provider.key(kid)
        aad = f"kmsg-analytics/{field}".encode()
        try:
            plain: bytes = self._cipher(key).decrypt(raw[:12], raw[12:], aad)
            return plain.decode()
        except Exception:
            msg = f"the {field} envelope does not open with key {kid!r} (tampered or wrong key)"
            raise KmsgAnalyticsError(msg) from None

    def _cipher(self, key: bytes) -> Any:
        found = self._ciphers.get(key)
        if found is None:
            found = self._ciphers[key] = self._aead(key)
        return found

    @staticmethod
    def kid_of(envelope: str) -> str | None:
        """The key id an envelope was sealed with."""
        parts = envelope.split(".", 2)
        return parts[1] if len(parts) == 3 else None
