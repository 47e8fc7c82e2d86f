"""kmsg-analytics: delivery tracking and delivery-rate analytics for Korean messaging.

The Python, notebook-first counterpart of k-msg's ``DeliveryTrackingService``: every
send recorded as snapshots in a Parquet lake, queried with lazy Polars.
"""

from __future__ import annotations

from ._analytics import (
    Comparison,
    DeliveryAnalytics,
    DeliverySummary,
    FailoverFunnel,
    FailureReport,
    LatencyReport,
    StatusDurations,
    SummaryRates,
)
from ._crypto import KeyUnavailableError
from ._distributed import ibis_report, spark_backend
from ._doctor import DoctorReport, check_lake
from ._errors import (
    InvalidRecordError,
    KmsgAnalyticsError,
    LakeCorruptError,
    LakeError,
    LakeFormatError,
)
from ._events import DeliveryEvent, IngestReport
from ._gateways import (
    GatewayCheck,
    GatewaysConfig,
    HttpSettings,
    IwinvProvider,
    SendRejectedError,
    SolapiProvider,
    capture_send,
    load_gateways_config,
)
from ._keys import key_usage, rotate_keys
from ._lake import CompactionReport, ParquetTrackingStore
from ._metrics import FAILURE_CATEGORIES, RATES, RateMetric, wilson_interval
from ._objectlake import ObjectLakeStore
from ._objectstore import LakeUnavailableError
from ._phone import HashKey, mask_number, normalize_number, resolve_hash_key
from ._providers import (
    ApiFailoverConfig,
    DeliveryStatusQuery,
    DeliveryStatusResult,
    FailoverRule,
    PollingConfig,
    Provider,
    ProviderError,
    RunReport,
)
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
from ._report import EmptyReportError, build_report
from ._retention import (
    RETENTION_PRESETS,
    RetentionPlan,
    RetentionPolicy,
    RetentionResult,
    apply_retention,
    plan_retention,
)
from ._runner import poll_until_stopped
from ._schema import CURRENT_SCHEMA, SNAPSHOT_SCHEMA
from ._service import DeliveryTrackingService
from ._simulated import SimulatedClock, SimulatedProvider
from ._store import InMemoryTrackingStore, TrackingStore

__version__ = "0.1.0"

__all__ = [
    "CURRENT_SCHEMA",
    "DELIVERY_STATUSES",
    "FAILURE_CATEGORIES",
    "MESSAGE_TYPES",
    "POLLABLE_STATUSES",
    "RATES",
    "RETENTION_CLASSES",
    "RETENTION_PRESETS",
    "SNAPSHOT_SCHEMA",
    "TERMINAL_STATUSES",
    "ApiFailoverConfig",
    "CompactionReport",
    "Comparison",
    "DeliveryAnalytics",
    "DeliveryEvent",
    "DeliveryStatusQuery",
    "DeliveryStatusResult",
    "DeliverySummary",
    "DeliveryTrackingService",
    "DoctorReport",
    "EmptyReportError",
    "FailoverFunnel",
    "FailoverOptions",
    "FailoverRule",
    "FailureReport",
    "GatewayCheck",
    "GatewaysConfig",
    "HashKey",
    "HookContext",
    "HttpSettings",
    "InMemoryTrackingStore",
    "IngestReport",
    "InvalidRecordError",
    "IwinvProvider",
    "KeyUnavailableError",
    "KmsgAnalyticsError",
    "LakeCorruptError",
    "LakeError",
    "LakeFormatError",
    "LakeUnavailableError",
    "LatencyReport",
    "ObjectLakeStore",
    "ParquetTrackingStore",
    "PollingConfig",
    "Provider",
    "ProviderError",
    "RateMetric",
    "RecordFilter",
    "RetentionPlan",
    "RetentionPolicy",
    "RetentionResult",
    "RunReport",
    "SendOptions",
    "SendRejectedError",
    "SendResult",
    "SendWarning",
    "SimulatedClock",
    "SimulatedProvider",
    "SolapiProvider",
    "StatusDurations",
    "SummaryRates",
    "TrackingError",
    "TrackingRecord",
    "TrackingStore",
    "__version__",
    "apply_retention",
    "build_report",
    "capture_send",
    "check_lake",
    "explore",
    "ibis_report",
    "key_usage",
    "load_gateways_config",
    "mask_number",
    "normalize_number",
    "plan_retention",
    "poll_until_stopped",
    "resolve_hash_key",
    "rotate_keys",
    "spark_backend",
    "wilson_interval",
]


def __getattr__(name: str) -> object:
    """``explore`` loads the notebook extra only when asked for."""
    if name == "explore":
        from .widgets import explore

        return explore
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
