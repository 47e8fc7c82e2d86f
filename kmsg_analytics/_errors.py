"""The exception types raised by kmsg_analytics."""

from __future__ import annotations

__all__ = [
    "InvalidRecordError",
    "KmsgAnalyticsError",
    "LakeCorruptError",
    "LakeError",
    "LakeFormatError",
]


class KmsgAnalyticsError(Exception):
    """Base class of every error raised by kmsg_analytics."""


class InvalidRecordError(ValueError, KmsgAnalyticsError):
    """Bad input: a field has a value we cannot accept.

    The message names the field, the value and what would be valid. Nothing was
    written when this is raised.
    """

    def __init__(self, field: str, value: object, expected: str) -> None:
        shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        msg = f"invalid {field}={shown}: expected {expected}"
        super().__init__(msg)
        self.field = field
        self.value = value


class LakeError(KmsgAnalyticsError):
    """A problem with the lake directory itself (layout, locking, publication)."""


class LakeFormatError(LakeError):
    """The lake was written by an incompatible format version or with another hash key."""


class LakeCorruptError(LakeError):
    """A file in the lake cannot be read."""
