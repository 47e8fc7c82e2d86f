"""kmsg-analytics: delivery tracking and delivery-rate analytics for Korean messaging.

The Python, notebook-first counterpart of k-msg's ``DeliveryTrackingService``: every
send recorded as snapshots in a Parquet lake, queried with lazy Polars.
"""

from __future__ import annotations

import typing as _typing

if _typing.TYPE_CHECKING:  # the names below load on first use (PEP 562 ``__getattr__``)
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


#: Where each public name lives: its module is imported when the name is first asked for,
#: so ``import kmsg_analytics`` (and every command of the CLI) loads only what it uses.
_LAZY: dict[str, str] = {
    "Comparison": "._analytics",
    "DeliveryAnalytics": "._analytics",
    "DeliverySummary": "._analytics",
    "FailoverFunnel": "._analytics",
    "FailureReport": "._analytics",
    "LatencyReport": "._analytics",
    "StatusDurations": "._analytics",
    "SummaryRates": "._analytics",
    "KeyUnavailableError": "._crypto",
    "ibis_report": "._distributed",
    "spark_backend": "._distributed",
    "DoctorReport": "._doctor",
    "check_lake": "._doctor",
    "InvalidRecordError": "._errors",
    "KmsgAnalyticsError": "._errors",
    "LakeCorruptError": "._errors",
    "LakeError": "._errors",
    "LakeFormatError": "._errors",
    "DeliveryEvent": "._events",
    "IngestReport": "._events",
    "GatewayCheck": "._gateways",
    "GatewaysConfig": "._gateways",
    "HttpSettings": "._gateways",
    "IwinvProvider": "._gateways",
    "SendRejectedError": "._gateways",
    "SolapiProvider": "._gateways",
    "capture_send": "._gateways",
    "load_gateways_config": "._gateways",
    "key_usage": "._keys",
    "rotate_keys": "._keys",
    "CompactionReport": "._lake",
    "ParquetTrackingStore": "._lake",
    "FAILURE_CATEGORIES": "._metrics",
    "RATES": "._metrics",
    "RateMetric": "._metrics",
    "wilson_interval": "._metrics",
    "ObjectLakeStore": "._objectlake",
    "LakeUnavailableError": "._objectstore",
    "HashKey": "._phone",
    "mask_number": "._phone",
    "normalize_number": "._phone",
    "resolve_hash_key": "._phone",
    "ApiFailoverConfig": "._providers",
    "DeliveryStatusQuery": "._providers",
    "DeliveryStatusResult": "._providers",
    "FailoverRule": "._providers",
    "PollingConfig": "._providers",
    "Provider": "._providers",
    "ProviderError": "._providers",
    "RunReport": "._providers",
    "DELIVERY_STATUSES": "._records",
    "MESSAGE_TYPES": "._records",
    "POLLABLE_STATUSES": "._records",
    "RETENTION_CLASSES": "._records",
    "TERMINAL_STATUSES": "._records",
    "FailoverOptions": "._records",
    "HookContext": "._records",
    "RecordFilter": "._records",
    "SendOptions": "._records",
    "SendResult": "._records",
    "SendWarning": "._records",
    "TrackingError": "._records",
    "TrackingRecord": "._records",
    "EmptyReportError": "._report",
    "build_report": "._report",
    "RETENTION_PRESETS": "._retention",
    "RetentionPlan": "._retention",
    "RetentionPolicy": "._retention",
    "RetentionResult": "._retention",
    "apply_retention": "._retention",
    "plan_retention": "._retention",
    "poll_until_stopped": "._runner",
    "CURRENT_SCHEMA": "._schema",
    "SNAPSHOT_SCHEMA": "._schema",
    "DeliveryTrackingService": "._service",
    "SimulatedClock": "._simulated",
    "SimulatedProvider": "._simulated",
    "InMemoryTrackingStore": "._store",
    "TrackingStore": "._store",
    "explore": ".widgets",  # the notebook extra
}


def __getattr__(name: str) -> object:
    """Each public name from its module, imported on first use (then kept here)."""
    module = _LAZY.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    if name != "explore":  # the notebook extra stays a call away
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
