"""What k-msg's tracking table looks like: column-map keys, default columns, field groups."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, NoReturn

from ._errors import InvalidRecordError, KmsgAnalyticsError

__all__ = [
    "DEFAULT_TABLE",
    "KMSG_COLUMN_KEYS",
    "ImportSourceError",
    "RowError",
    "Timestamps",
    "UnreadableRowError",
]

DEFAULT_TABLE: Final = "kmsg_delivery_tracking"

#: How timestamps are stored: ``auto`` decides per column from its type; ``epoch_ms``
#: (k-msg's ``bigint``/``integer``) insists on millisecond numbers; ``date`` (k-msg's
#: ``date``) takes native timestamp columns, or milliseconds where k-msg stores those.
Timestamps = Literal["auto", "epoch_ms", "date"]
TIMESTAMP_ALIASES: Final = {"bigint": "epoch_ms", "integer": "epoch_ms"}

#: k-msg's column-map keys -> our field names (``None``: a column we never read).
KMSG_COLUMN_KEYS: Final[Mapping[str, str | None]] = {
    "messageId": "message_id",
    "providerId": "provider_id",
    "providerMessageId": "provider_message_id",
    "type": "type",
    "to": "to",
    "toEnc": None,
    "toHash": "to_hash",
    "toMasked": "to_masked",
    "from": "from_",
    "fromEnc": None,
    "fromHash": "from_hash",
    "fromMasked": "from_masked",
    "status": "status",
    "providerStatusCode": "provider_status_code",
    "providerStatusMessage": "provider_status_message",
    "sentAt": "sent_at",
    "deliveredAt": "delivered_at",
    "failedAt": "failed_at",
    "requestedAt": "requested_at",
    "scheduledAt": "scheduled_at",
    "statusUpdatedAt": "status_updated_at",
    "attemptCount": "attempt_count",
    "lastCheckedAt": "last_checked_at",
    "nextCheckAt": "next_check_at",
    "lastError": "last_error",
    "raw": "raw",
    "metadata": "metadata",
    "metadataEnc": None,
    "metadataHashes": None,
    "cryptoKid": None,
    "cryptoVersion": None,
    "cryptoState": None,
    "retentionClass": "retention_class",
    "retentionBucketYm": None,
}

#: k-msg's default column of each field we read.
DEFAULT_COLUMNS: Final = {
    "message_id": "message_id",
    "provider_id": "provider_id",
    "provider_message_id": "provider_message_id",
    "type": "type",
    "to": "to",
    "to_hash": "to_hash",
    "to_masked": "to_masked",
    "from_": "from",
    "from_hash": "from_hash",
    "from_masked": "from_masked",
    "status": "status",
    "provider_status_code": "provider_status_code",
    "provider_status_message": "provider_status_message",
    "sent_at": "sent_at",
    "delivered_at": "delivered_at",
    "failed_at": "failed_at",
    "requested_at": "requested_at",
    "scheduled_at": "scheduled_at",
    "status_updated_at": "status_updated_at",
    "attempt_count": "attempt_count",
    "last_checked_at": "last_checked_at",
    "next_check_at": "next_check_at",
    "last_error": "last_error",
    "raw": "raw",
    "metadata": "metadata",
    "retention_class": "retention_class",
}
FIELD_ALIASES: Final = {"from": "from_"}

#: The fields without which a row is not a k-msg tracking row.
REQUIRED_FIELDS: Final = ("message_id", "provider_id", "type", "status", "requested_at")

TIME_FIELDS: Final = (
    "requested_at", "scheduled_at", "sent_at", "delivered_at", "failed_at",
    "status_updated_at", "last_checked_at", "next_check_at",
)  # fmt: skip
TEXT_FIELDS: Final = (
    "message_id", "provider_id", "provider_message_id", "type", "status", "to", "to_hash",
    "to_masked", "from_", "from_hash", "from_masked", "provider_status_code",
    "provider_status_message", "retention_class",
)  # fmt: skip
JSON_FIELDS: Final = ("last_error", "raw", "metadata")

#: The columns k-msg moves forward on every write of a row (a send, a poll): a
#: re-import reads only the rows where one of them passed the last import's watermark.
WATERMARK_FIELDS: Final = ("status_updated_at", "last_checked_at")


class ImportSourceError(KmsgAnalyticsError):
    """The source cannot be read: bad URL, missing table or columns, missing driver."""


class UnreadableRowError(ImportSourceError, ValueError):
    """A ``strict=True`` import met a row it cannot read; nothing was written."""


@dataclass(frozen=True, slots=True)
class RowError:
    """A source row that could not be imported: its id, the column and why."""

    message_id: str | None
    column: str
    reason: str

    def __str__(self) -> str:
        return f"{self.message_id!r}: {self.column}: {self.reason}"


def invalid(field: str, value: object, expected: str) -> NoReturn:
    """Raise :class:`InvalidRecordError` naming the field, the value and what is valid."""
    raise InvalidRecordError(field, value, expected)


def resolve_column_map(column_map: Mapping[str, str] | None) -> dict[str, str]:
    """Our field -> the source column, from k-msg's ``columnMap`` overrides (or ours).

    Examples
    --------
    >>> resolve_column_map({"messageId": "id", "status": "state"})["message_id"]
    'id'
    >>> resolve_column_map(None)["from_"]
    'from'
    """
    fields = dict(DEFAULT_COLUMNS)
    if column_map is None:
        return fields
    if not isinstance(column_map, Mapping):
        invalid("column_map", column_map, "a mapping like {'messageId': 'id'}")
    for key, column in column_map.items():
        if key in KMSG_COLUMN_KEYS:
            name = KMSG_COLUMN_KEYS[key]
        else:
            name = FIELD_ALIASES.get(key, key)
            if name not in fields:
                msg = "column_map"
                raise InvalidRecordError(
                    msg, key, "k-msg's columnMap keys: " + ", ".join(KMSG_COLUMN_KEYS)
                )
        if not isinstance(column, str) or not column.strip():
            invalid(f"column_map[{key!r}]", column, "a column name")
        if name is not None:
            fields[name] = column.strip()
    return fields
