"""kmsg-analytics: delivery tracking and delivery-rate analytics for Korean messaging.

The Python, notebook-first counterpart of k-msg's ``DeliveryTrackingService``: every
send recorded as snapshots in a Parquet lake, queried with lazy Polars.
"""

from __future__ import annotations

from ._errors import (
    InvalidRecordError,
    KmsgAnalyticsError,
    LakeCorruptError,
    LakeError,
    LakeFormatError,
)
from ._lake import CompactionReport, ParquetTrackingStore
from ._phone import HashKey, mask_number, normalize_number, resolve_hash_key
from ._records import (
    DELIVERY_STATUSES,
    MESSAGE_TYPES,
    POLLABLE_STATUSES,
    RETENTION_CLASSES,
    TERMINAL_STATUSES,
    FailoverOptions,
    HookContext,
    RecordFilter,
    SendOptions,
    SendResult,
    SendWarning,
    TrackingError,
    TrackingRecord,
)
from ._schema import SNAPSHOT_SCHEMA
from ._service import DeliveryTrackingService
from ._store import InMemoryTrackingStore, TrackingStore

__version__ = "0.1.0"

__all__ = [
    "DELIVERY_STATUSES",
    "MESSAGE_TYPES",
    "POLLABLE_STATUSES",
    "RETENTION_CLASSES",
    "SNAPSHOT_SCHEMA",
    "TERMINAL_STATUSES",
    "CompactionReport",
    "DeliveryTrackingService",
    "FailoverOptions",
    "HashKey",
    "HookContext",
    "InMemoryTrackingStore",
    "InvalidRecordError",
    "KmsgAnalyticsError",
    "LakeCorruptError",
    "LakeError",
    "LakeFormatError",
    "ParquetTrackingStore",
    "RecordFilter",
    "SendOptions",
    "SendResult",
    "SendWarning",
    "TrackingError",
    "TrackingRecord",
    "TrackingStore",
    "__version__",
    "mask_number",
    "normalize_number",
    "resolve_hash_key",
]
