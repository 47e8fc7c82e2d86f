"""Phone numbers: normalisation, keyed hashing and masking (never stored in clear by default)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from ._errors import InvalidRecordError

__all__ = ["HashKey", "mask_number", "normalize_number", "resolve_hash_key"]

_SEPARATORS = re.compile(r"[\s\-().]")
_DIGITS = re.compile(r"\+?[0-9]{3,20}")

#: Environment variable holding the hash key (any string; hex or text).
HASH_KEY_ENV = "KMSG_ANALYTICS_HASH_KEY"


def normalize_number(number: str, *, field: str = "to") -> str:
    """Return the canonical digits of a Korean phone number.

    Separators are dropped and the +82 country prefix becomes a leading 0, so
    ``010-1234-5678``, ``+82 10 1234 5678`` and ``01012345678`` are one number.

    Examples
    --------
    >>> normalize_number("+82 10-1234-5678")
    '01012345678'
    >>> normalize_number("02) 123.4567")
    '021234567'
    """
    if not isinstance(number, str):
        raise InvalidRecordError(field, number, "a phone number string such as '010-1234-5678'")
    compact = _normalize(number)
    if compact is None:
        raise InvalidRecordError(
            field, number, "a phone number of 3 to 20 digits such as '01012345678'"
        )
    return compact


@functools.lru_cache(maxsize=1 << 16)
def _normalize(number: str) -> str | None:
    """The canonical digits, or ``None`` when ``number`` is no phone number (memoised)."""
    compact = _SEPARATORS.sub("", number)
    if not _DIGITS.fullmatch(compact):
        return None
    if compact.startswith("+82"):
        rest = compact[3:]
        return rest if rest.startswith("0") else "0" + rest
    if compact.startswith("82") and len(compact) >= 11 and compact[2] == "1":
        return "0" + compact[2:]
    return compact


def mask_number(normalized: str) -> str:
    """Mask the middle of a normalised number: ``01012345678`` -> ``010****5678``.

    Examples
    --------
    >>> mask_number("01012345678")
    '010****5678'
    >>> mask_number("1588")
    '****'
    """
    if len(normalized) <= 7:
        return "*" * len(normalized)
    return normalized[:3] + "*" * (len(normalized) - 7) + normalized[-4:]


class HashKey:
    """The secret that keys the HMAC-SHA256 of phone numbers.

    Only its ``key_id`` (a fingerprint) is ever written to a lake, so that a lake
    opened with another key is refused instead of silently matching nothing.

    Examples
    --------
    >>> key = HashKey(b"demo-key")
    >>> key.hash_number("010-1234-5678") == key.hash_number("+82 10 1234 5678")
    True
    >>> len(key.hash_number("01012345678"))
    64
    """

    __slots__ = ("_hmac", "_key", "key_id")

    def __init__(self, key: bytes | str) -> None:
        raw = key.encode() if isinstance(key, str) else bytes(key)
        if len(raw) < 8:
            raise InvalidRecordError(
                "hash_key",
                f"<{len(raw)} bytes>",
                "a key of at least 8 bytes (set KMSG_ANALYTICS_HASH_KEY)",
            )
        self._key = raw
        self.key_id = hmac.new(raw, b"kmsg-analytics/key-id", hashlib.sha256).hexdigest()[:16]
        # keyed once: each hash copies it instead of deriving the key's pads again
        self._hmac = hmac.new(raw, digestmod=hashlib.sha256)

    def __repr__(self) -> str:
        return f"HashKey(key_id={self.key_id!r})"

    def __reduce__(self) -> tuple[type[HashKey], tuple[bytes]]:
        return (HashKey, (self._key,))  # the keyed HMAC object itself does not pickle

    def hash_normalized(self, normalized: str) -> str:
        """HMAC-SHA256 (hex) of an already normalised number."""
        mac = self._hmac.copy()
        mac.update(normalized.encode())
        return mac.hexdigest()

    def hash_many(self, normalized: Iterable[str]) -> list[str]:
        """:meth:`hash_normalized` of each number, in order (for bulk paths).

        Examples
        --------
        >>> key = HashKey(b"demo-key")
        >>> key.hash_many(["01012345678"]) == [key.hash_number("010-1234-5678")]
        True
        """
        return [self.hash_normalized(number) for number in normalized]

    def hash_number(self, number: str, *, field: str = "to") -> str:
        """Normalise ``number`` and return its keyed hash."""
        return self.hash_normalized(normalize_number(number, field=field))


def _default_key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kmsg-analytics" / "hash.key"


def resolve_hash_key(key: HashKey | bytes | str | None = None) -> HashKey:
    """Find the hash key: the argument, else ``$KMSG_ANALYTICS_HASH_KEY``, else a key file.

    The key file (``~/.config/kmsg-analytics/hash.key``, owner-only) is created with
    a random key on first use, so a single machine always hashes the same way.
    """
    if isinstance(key, HashKey):
        return key
    if key is not None:
        return HashKey(key)
    env = os.environ.get(HASH_KEY_ENV)
    if env:
        return HashKey(env)
    path = _default_key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # first writer wins; a concurrent one keeps the winner's key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return HashKey(path.read_text().strip())
