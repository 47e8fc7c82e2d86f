"""DeliveryTrackingService: recording sends and answering queries over a tracking store.

The polling half (``run_once``, ``start``, ``stop``) lives in :mod:`kmsg_analytics._runner`
and is mixed in here; this module owns recording and querying.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pyarrow as pa

from ._batch import sends_to_table
from ._errors import InvalidRecordError
from ._events import DeliveryEvent, IngestReport, apply_events
from ._loading import frame_to_table
from ._providers import coerce_api_failover, coerce_polling
from ._records import (
    DEFAULT_RETENTION_CLASS,
    HookContext,
    RecordFilter,
    SendResult,
    TrackingError,
    TrackingRecord,
    coerce_filter,
    coerce_id,
    coerce_record,
    record_from_values,
    send_values,
)
from ._runner import PollingMixin
from ._schema import dump_json, record_to_row, rows_to_table, to_micros
from ._store import InMemoryTrackingStore, TrackingStore

__all__ = ["DeliveryTrackingService"]

Clock = Callable[[], datetime]

#: Defaults of the polling settings that recording needs (the runner owns the rest).
_INITIAL_DELAY = timedelta(milliseconds=30_000)
_SCHEDULED_GRACE = timedelta(milliseconds=120_000)
_MISSING_PMID = TrackingError(
    "MISSING_PROVIDER_MESSAGE_ID", "the send result carries no provider message id"
)
#: The metadata JSON of an AlimTalk send without custom fields, failover request or warnings.
_PLAIN_FAILOVER_JSON = dump_json(
    {
        "failover": {
            "request": {},
            "send_warning_codes": [],
            "api_attempt": {"attempted": False, "status": "not_attempted"},
        }
    }
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class DeliveryTrackingService(PollingMixin):
    """Records every send and answers questions about delivery.

    Parameters
    ----------
    providers
        The gateways (each with an ``id``); must not be empty.
    store
        Where records live; an :class:`InMemoryTrackingStore` when ``None``.
    polling
        A ``PollingConfig`` (initial delay and scheduled grace are used when recording).
    api_failover
        An ``ApiFailoverConfig`` for AlimTalk to SMS/LMS failover during polling.
    clock
        Returns the current UTC time; ``datetime.now(UTC)`` by default.

    Examples
    --------
    >>> from kmsg_analytics import DeliveryTrackingService, InMemoryTrackingStore
    >>> class Gateway:
    ...     id = "solapi"
    >>> store = InMemoryTrackingStore(hash_key="doctest-key")
    >>> svc = DeliveryTrackingService([Gateway()], store=store)
    >>> svc.record_send(
    ...     {"messageId": "m1", "timestamp": 1793491200000,
    ...      "options": {"type": "SMS", "to": "010-1234-5678"}},
    ...     {"messageId": "m1", "providerId": "solapi", "providerMessageId": "G1",
    ...      "type": "SMS", "to": "010-1234-5678"},
    ... ).status
    'SENT'
    >>> svc.count_records(status="SENT")
    1
    >>> svc.get_record("m1").to_masked
    '010****5678'
    """

    def __init__(
        self,
        providers: Sequence[Any],
        *,
        store: TrackingStore | None = None,
        polling: Any = None,
        api_failover: Any = None,
        clock: Clock | None = None,
    ) -> None:
        providers = list(providers) if providers is not None else []
        if not providers:
            msg = "DeliveryTrackingService needs at least one provider (an object with an `id`)"
            raise ValueError(msg)
        ids: dict[str, Any] = {}
        for provider in providers:
            pid = getattr(provider, "id", None)
            if not isinstance(pid, str) or not pid:
                raise InvalidRecordError("providers[].id", pid, "a non-empty string id")
            ids[pid] = provider
        self.providers: dict[str, Any] = ids
        self.store: TrackingStore = store if store is not None else InMemoryTrackingStore()
        self.polling = coerce_polling(polling)
        self.api_failover = coerce_api_failover(api_failover)
        self.clock: Clock = clock or _utc_now
        self._initial_delay = _ms(polling, "initial_delay_ms", _INITIAL_DELAY)
        self._scheduled_grace = _ms(polling, "scheduled_grace_ms", _SCHEDULED_GRACE)
        self._initialized = False

    def __repr__(self) -> str:
        return f"DeliveryTrackingService(providers={list(self.providers)!r}, store={self.store!r})"

    # ------------------------------------------------------------------ lifecycle

    def init(self) -> None:
        """Prepare the store (called on first use; safe to call again)."""
        if not self._initialized:
            self.store.init()
            self._initialized = True

    def close(self) -> None:
        """Release the store (publishing anything pending); safe to call twice."""
        stop = getattr(self, "stop", None)
        if callable(stop):
            stop()
        self.store.close()

    def __enter__(self) -> DeliveryTrackingService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ recording

    def build_record(
        self, context: HookContext | Mapping[str, Any], result: SendResult | Mapping[str, Any]
    ) -> TrackingRecord:
        """The record a send creates (validated, numbers protected), without storing it."""
        return record_from_values(self._send_fields(context, result)[0])

    def _send_fields(
        self, context: HookContext | Mapping[str, Any], result: SendResult | Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], str | None]:
        """The values of a send's record in ``RECORD_FIELDS`` order, and its metadata's JSON.

        The JSON is given where it is known without encoding (``None`` elsewhere): it is
        what :func:`record_to_row` stores for that metadata.
        """
        (
            message_id,
            requested_at,
            ctx_type,
            from_,
            scheduled,
            custom_fields,
            fo,
            res_id,
            provider_id,
            pmid,
            res_type,
            res_to,
            warnings,
        ) = send_values(context, result)
        if res_id != message_id:
            raise InvalidRecordError(
                "result.message_id", res_id, f"the context's message_id {message_id!r}"
            )
        now = self.clock()
        error: TrackingError | None = None
        if not pmid:
            status, next_check = "UNKNOWN", now
            error = _MISSING_PMID
        elif scheduled is not None:
            status, next_check = "PENDING", scheduled + self._scheduled_grace
        else:
            status, next_check = "SENT", requested_at + self._initial_delay
        metadata: dict[str, Any] = {}
        metadata_json: str | None = "{}"
        if custom_fields:
            metadata["custom_fields"] = dict(custom_fields)
            metadata_json = None
        if res_type == "ALIMTALK" or ctx_type == "ALIMTALK":
            request = {} if fo is None else {
                k: v for k, v in (
                    ("enabled", fo.enabled),
                    ("fallback_channel", fo.fallback_channel),
                    ("fallback_content", fo.fallback_content),
                    ("fallback_title", fo.fallback_title),
                ) if v is not None
            }  # fmt: skip
            metadata["failover"] = {
                "request": request,
                "send_warning_codes": [w.code for w in warnings],
                "api_attempt": {"attempted": False, "status": "not_attempted"},
            }
            plain = metadata_json is not None and not request and not warnings
            metadata_json = _PLAIN_FAILOVER_JSON if plain else None
        numbers = self.store.number_fields(res_to, from_)  # type: ignore[attr-defined]
        get = numbers.get
        # in RECORD_FIELDS order (see TrackingRecord and _send_row)
        values = (
            message_id,
            provider_id,
            pmid,
            res_type,
            numbers["to_hash"],
            numbers["to_masked"],
            requested_at,
            status,
            now,
            next_check,
            numbers["to"],
            numbers["from_"],
            get("from_hash"),
            get("from_masked"),
            scheduled,
            None,  # provider_status_code
            None,  # provider_status_message
            None,  # sent_at
            None,  # delivered_at
            None,  # failed_at
            0,  # attempt_count
            None,  # last_checked_at
            error,
            None,  # raw
            metadata,
            DEFAULT_RETENTION_CLASS,
            requested_at.year * 100 + requested_at.month,
            get("to_enc"),
            get("from_enc"),
        )
        return values, metadata_json

    def record_send(
        self, context: HookContext | Mapping[str, Any], result: SendResult | Mapping[str, Any]
    ) -> TrackingRecord:
        """Record one send; returns once the record would survive this process being killed.

        A message recorded twice is still one record, and a repeated record never
        moves a message back from a status polling already reached.
        """
        if not self._initialized:
            self.init()
        values, metadata_json = self._send_fields(context, result)
        record = record_from_values(values)
        now = _micros(values[8])
        upsert_row = getattr(self.store, "upsert_row", None)
        if upsert_row is None:
            self.store.upsert(record, recorded_at=now)
        else:  # the lake row straight from the values: record_to_row's row, made cheaper
            upsert_row(_send_row(values, metadata_json, now))
        return record

    def record_sends(
        self,
        pairs: Iterable[tuple[HookContext | Mapping[str, Any], SendResult | Mapping[str, Any]]],
    ) -> int:
        """Record many ``(context, result)`` pairs in one write; all or nothing.

        Returns the number recorded. Bad input anywhere raises before anything is written.
        """
        self.init()
        if isinstance(pairs, str | bytes | Mapping) or not isinstance(pairs, Iterable):
            raise InvalidRecordError("pairs", pairs, "an iterable of (context, result) pairs")
        batch = list(pairs)
        for i, pair in enumerate(batch):
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise InvalidRecordError(f"pairs[{i}]", pair, "a (context, result) pair")
        if not batch:
            return 0
        now = _micros(self.clock())
        table = sends_to_table(
            batch,
            key=self.store.hash_key,
            keep_numbers=self.store.keep_numbers,
            cipher=self.store.cipher,  # type: ignore[attr-defined]
            now=now,
            initial_delay_us=_us(self._initial_delay),
            grace_us=_us(self._scheduled_grace),
            careful=self.build_record,
        )
        self.store.append_table(table, kind="send", recorded_at=now)
        return len(batch)

    def load_records(self, frame: pl.DataFrame | pl.LazyFrame | pa.Table) -> int:
        """Bulk-load tracking records (one row per message, in the record's columns).

        ``to``/``from_`` are hashed and masked here (dropped afterwards unless the store
        keeps numbers); ``to_hash``/``to_masked`` given without a number are taken as they
        are. Validation is vectorised; bad input raises before anything is written.
        """
        self.init()
        table = frame_to_table(
            frame,
            self.store.hash_key,
            keep_numbers=self.store.keep_numbers,
            cipher=self.store.cipher,  # type: ignore[attr-defined]
        )
        self.store.append_table(table, kind="load", recorded_at=_micros(self.clock()))
        return int(table.num_rows)

    def ingest_events(self, events: Iterable[DeliveryEvent | Mapping[str, Any]]) -> IngestReport:
        """Apply delivery reports pushed by gateways (webhooks) or a k-msg app.

        Each event carries ``message_id``, ``status``, and optionally ``status_code``,
        ``status_message`` and ``at``. They are appended as snapshots with the polling
        rules: a terminal status is never replaced, unknown messages are counted, not
        created. Bad input raises before anything is written.

        Examples
        --------
        >>> from kmsg_analytics import DeliveryTrackingService, InMemoryTrackingStore
        >>> class Gateway:
        ...     id = "solapi"
        >>> svc = DeliveryTrackingService([Gateway()], store=InMemoryTrackingStore())
        >>> _ = svc.record_send(
        ...     {"messageId": "m1", "timestamp": 1793491200000,
        ...      "options": {"type": "SMS", "to": "01012345678"}},
        ...     {"messageId": "m1", "providerId": "solapi", "providerMessageId": "G1",
        ...      "type": "SMS", "to": "01012345678"},
        ... )
        >>> svc.ingest_events([{"messageId": "m1", "status": "DELIVERED", "code": "4000"}])
        IngestReport(received=1, applied=1, ignored_terminal=0, unknown=0)
        >>> svc.get_record("m1").status
        'DELIVERED'
        """
        self.init()
        now = self.clock()
        records, report = apply_events(self.store, events, now)
        if records:
            self.store.append_snapshots(records, kind="poll", recorded_at=_micros(now))
        return report

    def load_record_objects(self, records: Iterable[TrackingRecord | Mapping[str, Any]]) -> int:
        """Load records given one by one (validated like :meth:`load_records`)."""
        self.init()
        protected = [self.store.protect(coerce_record(r)) for r in records]  # type: ignore[attr-defined]
        now = _micros(self.clock())
        table = rows_to_table(record_to_row(r, kind="load", recorded_at=now) for r in protected)
        self.store.append_table(table, kind="load", recorded_at=now)
        return len(protected)

    # ------------------------------------------------------------------ queries

    def get_record(self, message_id: str) -> TrackingRecord | None:
        """The current record of one message, or ``None``."""
        self.init()
        return self.store.get(coerce_id(message_id, "message_id"))

    def list_records(
        self,
        filter: RecordFilter | Mapping[str, Any] | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        order_by: str = "requested_at",
        order_direction: str = "desc",
        as_of: datetime | None = None,
        **filters: Any,
    ) -> pl.LazyFrame:
        """Current records matching a filter, newest first, as a lazy Polars query.

        Filters come as a :class:`RecordFilter`, a mapping, or keyword arguments;
        ``limit <= 0`` gives nothing. ``as_of`` answers from the snapshot history as the
        store knew it at that moment.
        """
        self.init()
        flt = coerce_filter(filter, **filters)
        return self.store.list_records(
            flt, limit, offset, order_by, order_direction, as_of=_as_of(as_of)
        )

    def count_records(
        self,
        filter: RecordFilter | Mapping[str, Any] | None = None,
        *,
        as_of: datetime | None = None,
        **filters: Any,
    ) -> int:
        """How many current records (or records ``as_of`` a past moment) match a filter."""
        self.init()
        return self.store.count_records(coerce_filter(filter, **filters), as_of=_as_of(as_of))

    def count_by(
        self,
        filter: RecordFilter | Mapping[str, Any] | None = None,
        group_by: Sequence[str] | str = (),
        *,
        as_of: datetime | None = None,
        **filters: Any,
    ) -> pl.LazyFrame:
        """Counts per group as a lazy Polars query.

        Groups: ``provider_id``, ``type``, ``status``, ``provider_status_code``,
        ``retention_class`` and ``requested_at_hour|day|week|month``.
        """
        self.init()
        if isinstance(group_by, str):
            groups = [group_by]
        elif isinstance(group_by, Iterable) and not isinstance(group_by, Mapping):
            groups = list(group_by)
        else:
            raise InvalidRecordError("group_by", group_by, "a field name or a list of them")
        return self.store.count_by(coerce_filter(filter, **filters), groups, as_of=_as_of(as_of))

    def list_due(self, now: datetime | None = None, limit: int = 200) -> list[TrackingRecord]:
        """Records whose next status check is due at ``now`` (default: the clock)."""
        self.init()
        return self.store.list_due(now if now is not None else self.clock(), limit)


def _send_row(values: tuple[Any, ...], metadata_json: str | None, now: int) -> dict[str, Any]:
    """``record_to_row(record_from_values(values), kind="send", recorded_at=now)``, cheaper.

    ``values`` are :meth:`DeliveryTrackingService._send_fields`'s: a new send, so
    the gateway's codes and times, the check time and ``raw`` are all ``None``.
    """
    (
        message_id, provider_id, pmid, type_, to_hash, to_masked, requested_at, status,
        status_updated_at, next_check_at, to, from_, from_hash, from_masked, scheduled_at,
        _code, _message, _sent, _delivered, _failed, attempts, _checked, error, _raw,
        metadata, retention_class, bucket, to_enc, from_enc,
    ) = values  # fmt: skip
    return {
        "seq": 0,
        "snapshot_kind": "send",
        "recorded_at": now,
        "message_id": message_id,
        "provider_id": provider_id,
        "provider_message_id": pmid,
        "type": type_,
        "to": to,
        "from_": from_,
        "to_hash": to_hash,
        "to_masked": to_masked,
        "from_hash": from_hash,
        "from_masked": from_masked,
        "to_enc": to_enc,
        "from_enc": from_enc,
        "requested_at": to_micros(requested_at),
        "scheduled_at": None if scheduled_at is None else to_micros(scheduled_at),
        "status": status,
        "provider_status_code": None,
        "provider_status_message": None,
        "sent_at": None,
        "delivered_at": None,
        "failed_at": None,
        "status_updated_at": to_micros(status_updated_at),
        "attempt_count": attempts,
        "last_checked_at": None,
        "next_check_at": to_micros(next_check_at),
        "last_error": None if error is None else {"code": error.code, "message": error.message},
        "raw": None,
        "metadata": dump_json(metadata) if metadata_json is None else metadata_json,
        "retention_class": retention_class,
        "retention_bucket_ym": bucket,
    }


def _ms(config: Any, name: str, default: timedelta) -> timedelta:
    value = getattr(config, name, None) if config is not None else None
    return default if value is None else timedelta(milliseconds=value)


def _as_of(value: object) -> datetime | None:
    from ._records import coerce_time

    return None if value is None else coerce_time(value, "as_of")


def _us(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def _micros(moment: datetime) -> int:
    value = to_micros(moment)
    assert value is not None
    return value
