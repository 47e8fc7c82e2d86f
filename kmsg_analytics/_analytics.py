"""DeliveryAnalytics: the answers analysts open a notebook for, as lazy Polars over the lake.

Every method takes a ``requested_at`` window (both ends inclusive, like k-msg's
``getSummary``), pushes it into the store as a :class:`RecordFilter` so that a lake
reads only the partitions of the window, and returns a small eager
``polars.DataFrame`` or a frozen result object with ``to_polars()`` and a readable
``_repr_html_``. No method pulls raw records into Python.

Metric definitions live in :mod:`kmsg_analytics._metrics`; this module only arranges
them: per group, per time bucket, per message age, per slice.

History: every method takes ``as_of=`` (the records as the lake knew them at that
moment, from the snapshot history). ``rate_maturity`` and ``status_durations`` read the
history itself.

Time conventions:

* *now* (where a method needs one: censoring in-flight messages, message age) is
  ``now=`` if given, else ``as_of`` if given, else the latest ``recorded_at`` in the
  store (the last moment the lake heard anything), so answers are reproducible.
* Durations are measured in microseconds and reported in seconds (``*_s`` columns).
* Percentiles are the inverted empirical CDF: the smallest value with at least the
  share ``p`` of values at or below it (the Kaplan-Meier percentile uses the same rule
  on the estimated curve, so the two agree when nothing is censored).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import polars as pl

from . import _metrics as m
from . import _rollups
from ._analytics_common import (
    DEFAULT_AGES,
    Window,
    _ages,
    _as_of,
    _check_bucket_count,
    _check_tz,
    _dimensions,
    _every,
    _invalid,
    _pair,
    _resolution,
)
from ._analytics_common import (
    GROUP_FIELDS as GROUP_FIELDS,
)
from ._analytics_common import (
    _fields as _fields,
)
from ._analytics_common import (
    _window as _window,
)
from ._analytics_compare import _compare_overall, _compare_slices
from ._analytics_failures import (
    _FALLBACK,
    _NO_CODE,
    _OF_FAILED,
    _failover_fields,
    _finish_categories,
    _finish_codes,
    _finish_tracking,
    _share,
    _weighted_mode,
)
from ._analytics_history import durations_tables, maturity_counts, status_path
from ._analytics_latency import (
    GROUP,
    SEGMENTS,
    LatencyCounts,
    _latency_counts,
    latency_tables,
)
from ._analytics_results import (
    Comparison,
    DeliverySummary,
    FailoverFunnel,
    FailureReport,
    LatencyReport,
    StatusDurations,
    SummaryRates,
)
from ._analytics_summary import (
    _parity_columns as _parity_columns,
)
from ._analytics_summary import (
    _summary_from_row as _summary_from_row,
)
from ._analytics_summary import (
    assemble_summary as assemble_summary,
)
from ._analytics_summary import (
    summary_keys as summary_keys,
)
from ._errors import LakeError
from ._lake import ParquetTrackingStore
from ._phone import HashKey
from ._queries import filter_expr
from ._records import POLLABLE_STATUSES, RecordFilter, coerce_time
from ._schema import CURRENT_PARTITION, to_micros
from ._service import DeliveryTrackingService
from ._store import TrackingStore

__all__ = [
    "Comparison",
    "DeliveryAnalytics",
    "DeliverySummary",
    "FailoverFunnel",
    "FailureReport",
    "LatencyReport",
    "StatusDurations",
    "SummaryRates",
]


# --------------------------------------------------------------------------- the analytics


class DeliveryAnalytics:
    """Delivery analytics over a tracking lake, a store or a service.

    Parameters
    ----------
    source
        A lake directory (opened as a :class:`ParquetTrackingStore`, which this object
        then closes), a tracking store, or a :class:`DeliveryTrackingService` (its store).
    hash_key
        The number-hash key the lake was written with (only for a lake path).
    min_n
        Denominators under this are "not enough data": no rate, a flag (default 30).
    tz
        Time zone of time buckets and of the hour of day (default UTC; e.g. ``Asia/Seoul``).

    Examples
    --------
    >>> from datetime import datetime, UTC
    >>> from kmsg_analytics import DeliveryTrackingService, InMemoryTrackingStore
    >>> class Gateway:
    ...     id = "solapi"
    >>> store = InMemoryTrackingStore(hash_key="doctest-key")
    >>> svc = DeliveryTrackingService([Gateway()], store=store)
    >>> for i in range(3):
    ...     _ = svc.record_send(
    ...         {"messageId": f"m{i}", "timestamp": "2026-11-01T00:00:00Z",
    ...          "options": {"type": "SMS", "to": "010-1234-5678"}},
    ...         {"messageId": f"m{i}", "providerId": "solapi", "providerMessageId": f"G{i}",
    ...          "type": "SMS", "to": "010-1234-5678"})
    >>> an = DeliveryAnalytics(svc)
    >>> s = an.summary(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC))
    >>> s.total, s.by_status["SENT"], s.rates.delivered_of_total_pct
    (3, 3, 0.0)
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | TrackingStore | DeliveryTrackingService,
        *,
        hash_key: HashKey | bytes | str | None = None,
        min_n: int = m.DEFAULT_MIN_N,
        tz: str = "UTC",
    ) -> None:
        self._owned = False
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            if not (path / "_lake.json").is_file():
                msg = (
                    f"no kmsg-analytics lake at {str(path)!r} (no _lake.json there): pass the "
                    "directory a ParquetTrackingStore wrote, or a store or service"
                )
                raise LakeError(msg)
            self.store: TrackingStore = ParquetTrackingStore(path, hash_key=hash_key)
            self._owned = True
        elif isinstance(source, DeliveryTrackingService):
            source.init()
            self.store = source.store
        elif isinstance(source, TrackingStore):
            self.store = source
        else:
            _invalid(
                "source", source, "a lake directory, a tracking store or a DeliveryTrackingService"
            )
        if not isinstance(min_n, int) or isinstance(min_n, bool) or min_n < 1:
            _invalid("min_n", min_n, "a whole number >= 1")
        self.min_n = min_n
        self.tz = _check_tz(tz)
        self._memo: dict[Any, list[_Reduction]] | None = None

    def __repr__(self) -> str:
        return f"DeliveryAnalytics({self.store!r})"

    def close(self) -> None:
        """Close the store if this object opened it (from a lake path); safe to call twice."""
        if self._owned:
            self.store.close()
            self._owned = False

    def __enter__(self) -> DeliveryAnalytics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ frames

    def records(
        self,
        start: Any,
        end: Any,
        *,
        provider_id: str | Sequence[str] | None = None,
        type: str | Sequence[str] | None = None,
        as_of: Any = None,
    ) -> pl.LazyFrame:
        """The current records of the window as a lazy query (what every answer starts from).

        Examples
        --------
        >>> _example().records("2026-11-01", "2026-11-02", provider_id="nhn").collect().height
        1
        """
        s, e = _window(start, end)
        flt = RecordFilter(
            requested_at_from=s, requested_at_to=e, provider_id=provider_id, type=type
        )
        return self._current(flt, _as_of(as_of))

    def _current(self, flt: RecordFilter, as_of: datetime | None) -> pl.LazyFrame:
        frame = self.store.current(flt) if as_of is None else self.store.current_as_of(as_of)
        partitioned = CURRENT_PARTITION in frame.collect_schema().names()
        lo, hi = flt.requested_at_from, flt.requested_at_to
        if not partitioned or lo is None or hi is None or hi.date() <= lo.date():
            return frame.filter(filter_expr(flt, self._hash, partitioned=partitioned))
        return _window_split(
            frame,
            filter_expr(replace(flt, requested_at_from=None, requested_at_to=None), self._hash),
            lo,
            hi,
        )

    @contextmanager
    def _reusing(self) -> Iterator[None]:
        """Within the block, answers reuse the counts of the earlier ones over the same records.

        The batch report asks for the same window several ways (a summary per provider
        and per type, a series per provider and overall): inside this block the records
        are reduced once per window and definition set, and coarser groupings are sums
        of the finer one. Outside it nothing is kept, so every call sees the lake as it
        is then.
        """
        previous, self._memo = self._memo, {}
        try:
            yield
        finally:
            self._memo = previous

    def _reduced(
        self,
        flt: RecordFilter,
        as_of: datetime | None,
        keys: Sequence[pl.Expr | str],
        columns: frozenset[str],
        tag: tuple[Any, ...] = (),
    ) -> pl.DataFrame:
        """:func:`~kmsg_analytics._metrics.polars_reduce` of the window's records, collected.

        ``tag`` names what the key expressions depend on besides their names (a time
        bucket's step and zone). Inside :meth:`_reusing`, a reduction of the same records
        at finer keys (and at least the same predicate columns) is summed up instead of
        reading the records again; so is one per UTC hour for no time bucket or a
        coarser one.
        """
        names = tuple(k if isinstance(k, str) else k.meta.output_name() for k in keys)
        try:
            slot: Any = (flt, as_of)
            hash(slot)
        except TypeError:  # a filter holding lists: not reusable
            slot = None
        cached = self._memo.get(slot, []) if self._memo is not None and slot else []
        for have in cached:
            derived = _derived(have, names, columns, tag)
            if derived is not None:
                return derived
        out = m.polars_reduce(self._current(flt, as_of), keys, columns).collect()
        if self._memo is not None and slot:
            self._memo.setdefault(slot, []).append(_Reduction(names, columns, tag, out))
        return out

    def _reduce_hourly(self, start: datetime, end: datetime) -> None:
        """Inside :meth:`_reusing`: reduce the window's records once per UTC hour, provider
        and type, for every count and rate: the summary, its breakdowns and each series
        in whole hours, days, weeks or months are then sums of it (one pass, not one
        each). Does nothing outside the block or in another time zone.
        """
        if self._memo is None or self.tz != "UTC":
            return
        flt = RecordFilter(requested_at_from=start, requested_at_to=end)
        keys: list[pl.Expr | str] = [m.time_bucket("1h", self.tz), "provider_id", "type"]
        columns = m.metric_columns(m.COUNTS, tuple(m.RATES.values()))
        self._reduced(flt, None, keys, columns, _HOURLY)

    def _history(self, flt: RecordFilter, as_of: datetime | None) -> pl.LazyFrame:
        frame = self.store.history()
        if as_of is not None:
            frame = frame.filter(pl.col("recorded_at") <= as_of)
        return frame.filter(filter_expr(flt, self._hash))

    def _hash(self, number: str, field_name: str) -> str:
        return self.store.hash_key.hash_number(number, field=field_name)

    def _now(self, as_of: datetime | None, now: Any) -> datetime:
        if now is not None:
            return coerce_time(now, "now")
        if as_of is not None:
            return as_of
        latest = self.store.current().select(pl.col("recorded_at").max()).collect().item()
        return latest if isinstance(latest, datetime) else datetime.now(UTC)

    # ------------------------------------------------------------------ 1. summary

    def summary(
        self,
        start: Any,
        end: Any,
        *,
        provider_id: str | Sequence[str] | None = None,
        type: str | Sequence[str] | None = None,
        include_by_provider: bool = False,
        include_by_type: bool = False,
        by: str | Sequence[str] | None = None,
        as_of: Any = None,
    ) -> DeliverySummary:
        """k-msg's ``getSummary``: counts by status and its three rates, and more.

        ``start``/``end`` bound ``requested_at`` (inclusive; ``ValueError`` when
        ``start > end``). ``provider_id``/``type`` limit the messages; breakdowns per
        provider and per type on request, or any ``by=`` fields as a table
        (``breakdown``). Every named rate of :data:`kmsg_analytics._metrics.RATES` is in
        ``metrics`` with its numerator, denominator, Wilson interval and sample flag.

        Examples
        --------
        >>> an = _example()  # seven messages requested on 2026-11-01
        >>> s = an.summary("2026-11-01", "2026-11-02", include_by_provider=True)
        >>> s.total, s.by_status["DELIVERED"], s.rates.delivered_of_finalized_pct
        (7, 4, 80.0)
        >>> sorted(s.by_provider)
        ['iwinv', 'nhn', 'solapi']
        >>> s.metrics.filter(pl.col("rate") == "reached").select("numerator", "denominator").row(0)
        (4, 7)
        """
        s, e = _window(start, end)
        at = _as_of(as_of)
        flt = RecordFilter(
            requested_at_from=s, requested_at_to=e, provider_id=provider_id, type=type
        )
        by_cols = _fields(by, "by")
        keys = summary_keys(by_cols, include_by_provider, include_by_type)
        rates = tuple(m.RATES.values())
        columns = m.metric_columns(m.COUNTS, rates)
        reduced = self._reduced(flt, at, keys, columns)
        aggs = m.polars_aggregations(m.COUNTS, rates, weight=m.WEIGHT)

        def level(cols: Sequence[str]) -> pl.DataFrame:
            out = (
                reduced.group_by(list(cols)).agg(aggs).sort(list(cols))
                if cols
                else reduced.select(aggs)
            )
            return out.with_columns(_parity_columns())

        def make(row: Mapping[str, Any]) -> DeliverySummary:
            return _summary_from_row(row, self.min_n, s, e, at)

        return assemble_summary(
            level, make, by_cols, include_by_provider, include_by_type, s, e, at
        )

    # ------------------------------------------------------------------ 3. time series

    def rates(
        self,
        start: Any,
        end: Any,
        *,
        every: str = "1d",
        by: str | Sequence[str] | None = None,
        definition: str | m.RateMetric = "delivered_of_total",
        provider_id: str | Sequence[str] | None = None,
        type: str | Sequence[str] | None = None,
        as_of: Any = None,
    ) -> pl.DataFrame:
        """Counts and one named rate per time bucket (and group), empty buckets as zeros.

        ``every`` is ``hour``/``day``/``week``/``month`` or a Polars duration such as
        ``15m``, ``6h``, ``1d``, ``1w``, ``1mo``; buckets start at their label (weeks on
        Monday) in the analytics' time zone. ``by`` adds a series per provider, type,
        status or status code. Columns: ``bucket_start``, the ``by`` fields, ``total``
        and the six status counts, ``definition``, ``numerator``, ``denominator``,
        ``rate_pct`` (null when not enough data), ``ci_low_pct``, ``ci_high_pct``,
        ``enough_data``.

        Examples
        --------
        >>> an = _example()
        >>> series = an.rates("2026-11-01T00:00", "2026-11-01T00:59", every="15m")
        >>> series.select("total", "numerator", "denominator").rows()
        [(7, 4, 7), (0, 0, 0), (0, 0, 0), (0, 0, 0)]
        """
        s, e = _window(start, end)
        at = _as_of(as_of)
        step = _every(every)
        _check_bucket_count(s, e, step)
        rate = m.rate_metric(definition)
        by_cols = _fields(by, "by")
        flt = RecordFilter(
            requested_at_from=s, requested_at_to=e, provider_id=provider_id, type=type
        )
        keys: list[pl.Expr | str] = [m.time_bucket(step, self.tz), *by_cols]
        columns = m.metric_columns(m.COUNTS, [rate])
        counts = (
            self._reduced(flt, at, keys, columns, ("bucket", step, self.tz))
            .lazy()
            .group_by(["bucket_start", *by_cols])
            .agg(m.polars_aggregations(m.COUNTS, [rate], weight=m.WEIGHT))
            .collect()
        )
        bounds = pl.select(
            pl.lit(s).dt.convert_time_zone(self.tz).dt.truncate(step).alias("lo"),
            pl.lit(e).dt.convert_time_zone(self.tz).dt.truncate(step).alias("hi"),
        ).row(0)
        grid = pl.select(
            pl.datetime_range(bounds[0], bounds[1], step, time_unit="us", time_zone=self.tz).alias(
                "bucket_start"
            )
        )
        if by_cols:
            grid = grid.join(counts.select(by_cols).unique(), how="cross")
        count_cols = [c.name for c in m.COUNTS]
        out = (
            grid.join(counts, on=["bucket_start", *by_cols], how="left", nulls_equal=True)
            .with_columns(
                pl.col([*count_cols, f"{rate.name}_num", f"{rate.name}_den"]).fill_null(0)
            )
            .rename({f"{rate.name}_num": "numerator", f"{rate.name}_den": "denominator"})
            .with_columns(pl.lit(rate.name).alias("definition"))
            .with_columns(m.polars_rate_columns("numerator", "denominator", min_n=self.min_n))
            .sort(["bucket_start", *by_cols], nulls_last=True)
        )
        return out.select(
            "bucket_start",
            *by_cols,
            *count_cols,
            "definition",
            *m.RATE_COLUMNS,
        )

    # ------------------------------------------------------------------ 4. latency

    def latency(
        self,
        start: Any,
        end: Any,
        *,
        by: str | Sequence[str] | None = None,
        provider_id: str | Sequence[str] | None = None,
        type: str | Sequence[str] | None = None,
        as_of: Any = None,
        now: Any = None,
        resolution: str | timedelta | None = "1s",
    ) -> LatencyReport:
        """Latency percentiles (p50/p90/p95/p99) per group, naive and with censoring.

        Segments: requested to sent, requested to delivered, sent to delivered; the
        ``finished_only`` rows use messages that have both times (negative gaps from
        clock skew count as 0). The ``kaplan_meier`` row estimates requested to
        delivered over every message: a DELIVERED one is an event at ``delivered_at``
        (or, when the gateway gave no time, when our status changed: an upper bound);
        PENDING and SENT ones are censored at ``now``; FAILED ones are censored at
        ``failed_at`` and CANCELLED/UNKNOWN ones when their status last changed (they
        leave the risk set without delivering; the curve describes how fast messages that
        deliver arrive). A percentile the curve never reaches is null.

        Durations are floored to ``resolution`` (default one second, the precision
        gateways report times in); ``resolution=None`` keeps microseconds. Percentiles
        come from counts per duration, so even 10M messages need no sort per group.

        Examples
        --------
        >>> an = _example()
        >>> table = an.latency("2026-11-01", "2026-11-02").table
        >>> table.select("segment", "method", "n", "p50_s", "p90_s").rows()[1:3]
        [('requested_to_delivered', 'finished_only', 4, 10.0, 90.0), \
('requested_to_delivered', 'kaplan_meier', 7, 90.0, None)]
        """
        s, e = _window(start, end)
        at = _as_of(as_of)
        moment = self._now(at, now)
        res = _resolution(resolution)
        by_cols = _fields(by, "by")
        flt = RecordFilter(
            requested_at_from=s, requested_at_to=e, provider_id=provider_id, type=type
        )
        times = ["requested_at", "sent_at", "delivered_at", "failed_at", "status_updated_at"]
        base = self._current(flt, at).select(*dict.fromkeys([*by_cols, "status", *times]))
        # one narrow streaming pass: messages per (group, three gaps, time to delivery,
        # delivered); everything after it runs on that small table of counts
        packed = _latency_counts_packed(base, by_cols, moment, res)
        tables = None if packed is None else latency_tables(packed, by_cols)
        if tables is None:
            tables = latency_tables(_latency_counts(base, by_cols, moment, res), by_cols)
        assert tables is not None  # the general counts number their groups one by one
        return LatencyReport(*tables, moment, s, e, at)

    # ------------------------------------------------------------------ 5. failures

    def failures(
        self,
        start: Any,
        end: Any,
        *,
        by: str | Sequence[str] | None = "provider_id",
        top: int = 10,
        provider_id: str | Sequence[str] | None = None,
        type: str | Sequence[str] | None = None,
        as_of: Any = None,
    ) -> FailureReport:
        """Top gateway status codes per provider, one taxonomy across gateways, tracking problems.

        A delivery failure is a FAILED or UNKNOWN message whose ``last_error`` is not a
        tracking problem; its code is ``provider_status_code`` (else ``last_error.code``).
        Tracking problems (``MISSING_PROVIDER_MESSAGE_ID``, ``TRACKING_TIMEOUT``,
        ``PROVIDER_NOT_FOUND``, ``UNSUPPORTED_PROVIDER``) are counted apart, whatever
        the status. Codes are always per provider (codes mean different things on
        different gateways); ``top`` codes are kept per provider and group.

        Examples
        --------
        >>> report = _example().failures("2026-11-01", "2026-11-02")
        >>> report.codes.select("provider_id", "code", "count", "category").rows()
        [('solapi', '3104', 1, 'not_kakao')]
        >>> report.tracking.select("provider_id", "code", "count").rows()
        [('nhn', 'TRACKING_TIMEOUT', 1)]
        """
        s, e = _window(start, end)
        at = _as_of(as_of)
        if not isinstance(top, int) or isinstance(top, bool) or top < 1:
            _invalid("top", top, "a whole number >= 1")
        by_cols = _fields(by, "by")
        code_keys = list(dict.fromkeys([*by_cols, "provider_id"]))
        flt = RecordFilter(
            requested_at_from=s, requested_at_to=e, provider_id=provider_id, type=type
        )
        err = pl.col("last_error").struct.field("code")
        # one pass over the records: counts per provider, status and code (a few thousand
        # rows), then everything below works on those weighted rows
        reduced = (
            self._current(flt, at)
            .group_by(
                [
                    *code_keys,
                    "status",
                    err.alias("__err"),
                    "provider_status_code",
                    "provider_status_message",
                ]
            )
            .agg(pl.len().cast(pl.Int64).alias(m.WEIGHT))
            .collect()
        )
        w = pl.col(m.WEIGHT)
        tracked = pl.col("__err").is_in(m.TRACKING_ERROR_CODES).fill_null(False)
        failed = pl.col("status").is_in(("FAILED", "UNKNOWN")).fill_null(False) & ~tracked
        flagged = reduced.lazy().with_columns(tracked.alias("__tracked"), failed.alias("__failed"))
        frame = flagged.filter(pl.col("__failed") | pl.col("__tracked")).with_columns(
            pl.coalesce(pl.col("provider_status_code"), pl.col("__err"))
            .fill_null(_NO_CODE)
            .alias("code"),
            m.failure_category_expr(
                code=pl.coalesce(pl.col("provider_status_code"), pl.col("__err"))
            ),
        )
        failures = frame.filter(pl.col("__failed"))
        lazies = {
            "totals": flagged.group_by(code_keys).agg(
                w.sum().cast(pl.Int64).alias("messages"),
                w.filter(pl.col("__failed")).sum().cast(pl.Int64).alias("failures"),
            ),
            "codes": failures.group_by([*code_keys, "code"])
            .agg(
                w.sum().cast(pl.Int64).alias("count"),
                w.filter(pl.col("status") == "FAILED").sum().cast(pl.Int64).alias("failed"),
                w.filter(pl.col("status") == "UNKNOWN").sum().cast(pl.Int64).alias("unknown"),
            )
            .join(
                _weighted_mode(failures, [*code_keys, "code"], "provider_status_message"),
                on=[*code_keys, "code"],
                how="left",
                nulls_equal=True,
            )
            .rename({"provider_status_message": "message"})
            .join(
                _weighted_mode(failures, [*code_keys, "code"], "category"),
                on=[*code_keys, "code"],
                how="left",
                nulls_equal=True,
            ),
            "categories": failures.group_by([*by_cols, "category"]).agg(
                w.sum().cast(pl.Int64).alias("count")
            ),
            "tracking": frame.filter(pl.col("__tracked"))
            .group_by([*code_keys, "__err"])
            .agg(
                w.sum().cast(pl.Int64).alias("count"),
                w.filter(pl.col("status").is_in(POLLABLE_STATUSES))
                .sum()
                .cast(pl.Int64)
                .alias("in_flight"),
            )
            .rename({"__err": "code"}),
        }
        totals, codes, cats, tracking = pl.collect_all(list(lazies.values()))
        return FailureReport(
            codes=_finish_codes(codes, totals, code_keys, top),
            categories=_finish_categories(cats, tracking, totals, by_cols),
            tracking=_finish_tracking(tracking, totals, code_keys),
            start=s,
            end=e,
            as_of=at,
        )

    # ------------------------------------------------------------------ 6. failover

    def failover_funnel(
        self,
        start: Any,
        end: Any,
        *,
        by: str | Sequence[str] | None = None,
        provider_id: str | Sequence[str] | None = None,
        as_of: Any = None,
    ) -> FailoverFunnel:
        """The AlimTalk failover funnel and the "reached by any channel" rate.

        Reads ``metadata["failover"]`` of each ALIMTALK message (``request.enabled``,
        ``api_attempt.attempted``/``status``/``outcome``/``fallback_message_id``; k-msg's
        camelCase spelling is read too) and joins the fallback's own record
        (``<message_id>:api-fallback``, or the recorded fallback id) when the lake has
        it, wherever its request time falls after ``start``.

        Examples
        --------
        >>> funnel = _example().failover_funnel("2026-11-01", "2026-11-02")
        >>> stages = dict(funnel.stages.select("stage", "count").rows())
        >>> stages["failed"], stages["sent"], stages["fallback_delivered"], stages["reached_any"]
        (1, 1, 1, 1)
        """
        s, e = _window(start, end)
        at = _as_of(as_of)
        by_cols = _fields(by, "by")
        flt = RecordFilter(
            requested_at_from=s, requested_at_to=e, provider_id=provider_id, type="ALIMTALK"
        )
        fallbacks = (
            self._current(RecordFilter(requested_at_from=s), at)
            .filter(pl.col("message_id").str.ends_with(_FALLBACK))
            .select(pl.col("message_id").alias("__fb_id"), pl.col("status").alias("__fb_status"))
            .collect()
        )
        originals = self._current(flt, at)
        if fallbacks.height:
            # an original X finds its fallback "X:api-fallback" by X itself: no string
            # is built per message
            originals = originals.filter(~pl.col("message_id").str.ends_with(_FALLBACK)).join(
                fallbacks.lazy().select(
                    pl.col("__fb_id").str.strip_suffix(_FALLBACK).alias("message_id"),
                    pl.col("__fb_status").alias("__fb_implicit"),
                ),
                on="message_id",
                how="left",
            )
        # AlimTalk messages share a few thousand distinct metadata texts: read the JSON of
        # each text once, not of each message
        if fallbacks.height:
            by_text = originals.group_by([*by_cols, "status", "metadata", "__fb_implicit"]).agg(
                pl.len().cast(pl.Int64).alias(m.WEIGHT)
            )
        else:  # no fallback record at all (so no original ends with the suffix either)
            by_text = _by_metadata(originals, by_cols)
        # the taxonomy only for the few distinct failures, not every AlimTalk
        code_keys = list(dict.fromkeys([*by_cols, "provider_id", "provider_status_code"]))
        code_keys.append("provider_status_message")
        failed = originals.filter(pl.col("status") == "FAILED")
        by_code = failed.group_by(code_keys).agg(pl.len().cast(pl.Int64).alias(m.WEIGHT))
        # the two passes over the messages, run once (together); the rest works on their rows
        texts_done, codes_done = pl.collect_all([by_text, by_code])
        psc = pl.col("provider_status_code")
        columns = [*code_keys, "__err", m.WEIGHT]
        failed_only = codes_done.lazy().with_columns(pl.lit(None, pl.String).alias("__err"))
        if codes_done.get_column("provider_status_code").null_count():
            # only failures without a gateway code are classified by their error code: the
            # error struct (slow to read) is read for them alone
            err = pl.col("last_error").struct.field("code").alias("__err")
            failed_only = pl.concat(
                [
                    failed_only.filter(psc.is_not_null()).select(columns),
                    failed.filter(psc.is_null())
                    .group_by([*code_keys, err])
                    .agg(pl.len().cast(pl.Int64).alias(m.WEIGHT))
                    .select(columns),
                ]
            )
        reduced = texts_done.lazy()
        # each distinct metadata text parsed once (a few thousand, not every AlimTalk)
        texts = _failover_fields(reduced.select("metadata").unique().collect()).lazy()
        explicit = fallbacks.lazy().rename({"__fb_status": "__fb_explicit"})
        frame = (
            reduced.join(texts, on="metadata", how="left", nulls_equal=True)
            .join(explicit, on="__fb_id", how="left")
            .with_columns(
                pl.when(pl.col("__fb_id").is_null())
                .then(pl.col("__fb_implicit"))
                .otherwise(pl.col("__fb_explicit"))
                .alias("__fb_status")
            )
        )
        category = m.failure_category_expr(
            code=pl.coalesce(pl.col("provider_status_code"), pl.col("__err"))
        )
        not_kakao = (
            pl.col(m.WEIGHT).filter(category == "not_kakao").sum().cast(pl.Int64).alias("not_kakao")
        )
        st = pl.col("status")
        fb_delivered = (pl.col("__fb_status") == "DELIVERED").fill_null(False)
        stage_exprs: dict[str, tuple[str, pl.Expr | None]] = {
            "alimtalk": ("알림톡 발송", pl.lit(True)),
            "delivered": ("알림톡 성공", st == "DELIVERED"),
            "failed": ("알림톡 실패", st == "FAILED"),
            "not_kakao": ("실패 중 카카오톡 미사용자", None),
            "requested": ("실패 중 대체발송 요청", (st == "FAILED") & pl.col("__req")),
            "attempted": ("대체발송 시도", pl.col("__att")),
            "sent": ("대체발송 전송", pl.col("__out") == "sent"),
            "skipped": ("대체발송 건너뜀", pl.col("__out") == "skipped"),
            "send_failed": ("대체발송 전송 실패", pl.col("__out") == "failed"),
            "in_progress": ("대체발송 진행 중", pl.col("__att") & pl.col("__out").is_null()),
            "fallback_tracked": ("대체발송 기록 있음", pl.col("__fb_status").is_not_null()),
            "fallback_delivered": ("대체발송 성공", fb_delivered),
            "reached_any": (
                "어느 채널로든 도달",
                (st == "DELIVERED").fill_null(False) | fb_delivered,
            ),
        }
        aggs = [
            pl.col(m.WEIGHT).filter(expr.fill_null(False)).sum().cast(pl.Int64).alias(k)
            for k, (_l, expr) in stage_exprs.items()
            if expr is not None
        ]
        if by_cols:
            main, extra = pl.collect_all(
                [frame.group_by(by_cols).agg(aggs), failed_only.group_by(by_cols).agg(not_kakao)]
            )
            wide = main.join(extra, on=by_cols, how="left", nulls_equal=True).sort(by_cols)
        else:
            main, extra = pl.collect_all([frame.select(aggs), failed_only.select(not_kakao)])
            wide = pl.concat([main, extra], how="horizontal")
        wide = wide.with_columns(pl.col("not_kakao").fill_null(0)).select(*by_cols, *stage_exprs)
        labels = {k: label for k, (label, _e) in stage_exprs.items()}
        order = {k: i for i, k in enumerate(stage_exprs)}
        stages = (
            wide.unpivot(
                index=by_cols, on=list(stage_exprs), variable_name="stage", value_name="count"
            )
            .with_columns(
                pl.col("stage").replace_strict(labels, return_dtype=pl.String).alias("label"),
                _share(
                    pl.col("count"),
                    pl.col("count").filter(pl.col("stage") == "alimtalk").first(),
                    by_cols,
                ).alias("pct_of_alimtalk"),
                pl.when(pl.col("stage").is_in(_OF_FAILED))
                .then(
                    _share(
                        pl.col("count"),
                        pl.col("count").filter(pl.col("stage") == "failed").first(),
                        by_cols,
                    )
                )
                .alias("pct_of_failed"),
                pl.col("stage").replace_strict(order, return_dtype=pl.Int32).alias("__o"),
            )
            .sort([*by_cols, "__o"])
            .select(*by_cols, "stage", "label", "count", "pct_of_alimtalk", "pct_of_failed")
        )
        rate_specs = (
            ("reached_any", "어느 채널로든 도달률", "reached_any", "alimtalk"),
            ("alimtalk_delivered", "알림톡 자체 성공률", "delivered", "alimtalk"),
            ("recovered_of_failed", "실패 중 대체발송으로 도달", "fallback_delivered", "failed"),
            ("fallback_delivered_of_sent", "대체발송 전송 중 성공", "fallback_delivered", "sent"),
        )
        rates = pl.concat(
            [
                wide.select(
                    *by_cols,
                    pl.lit(name).alias("rate"),
                    pl.lit(label).alias("label"),
                    pl.col(num).alias("numerator"),
                    pl.col(den).alias("denominator"),
                )
                for name, label, num, den in rate_specs
            ]
        ).with_columns(m.polars_rate_columns("numerator", "denominator", min_n=self.min_n))
        if by_cols:
            rates = rates.sort(by_cols, maintain_order=True)
        return FailoverFunnel(stages, rates, s, e, at)

    # ------------------------------------------------------------------ 7. history

    def rate_maturity(
        self,
        start: Any,
        end: Any,
        *,
        ages: Sequence[str | timedelta] = DEFAULT_AGES,
        by: str | Sequence[str] | None = None,
        definition: str | m.RateMetric = "delivered_of_total",
        provider_id: str | Sequence[str] | None = None,
        type: str | Sequence[str] | None = None,
        as_of: Any = None,
        now: Any = None,
    ) -> pl.DataFrame:
        """How the rate of a cohort settles with message age, from the snapshot history.

        The cohort is the messages requested in the window. At each age ``a`` a message
        counts with the state the lake had recorded by ``requested_at + a`` (a message
        with no snapshot yet counts as having no status: in every "all messages"
        denominator, in no numerator); only messages at least ``a`` old at ``now`` count
        at age ``a`` (``messages``). Columns: the ``by`` fields, ``age``, ``age_s``,
        ``messages``, ``definition``, ``numerator``, ``denominator``, ``rate_pct``,
        ``ci_low_pct``, ``ci_high_pct``, ``enough_data``.

        Examples
        --------
        >>> an = _example()
        >>> curve = an.rate_maturity("2026-11-01", "2026-11-02", ages=["10s", "1m", "2m"])
        >>> curve.select("age", "messages", "numerator").rows()
        [('10s', 7, 2), ('1m', 7, 3), ('2m', 7, 4)]
        """
        s, e = _window(start, end)
        at = _as_of(as_of)
        moment = self._now(at, now)
        rate = m.rate_metric(definition)
        by_cols = _fields(by, "by")
        labels, ages_us = _ages(ages)
        flt = RecordFilter(
            requested_at_from=s, requested_at_to=e, provider_id=provider_id, type=type
        )
        ids = self.store.current().select("message_id")  # every message, once
        rollup = (
            _rollups.cached_rollup(self.store, ages_us, moment)
            if at is None and _rollups.servable(by_cols, rate)
            else None
        )
        if rollup is not None:  # kept (by the explorer) for the lake as it is now
            counts = _rollups.rollup_counts(
                rollup, self.store.history, ids, self._hash, s, e, provider_id, type, by_cols, rate
            )
        else:  # a rollup costs more to build than one curve: not built here
            counts = maturity_counts(self._history(flt, at), ids, by_cols, ages_us, moment, rate)
        return _rollups.maturity_frame(counts, labels, ages_us, rate, by_cols, self.min_n)

    def status_durations(
        self,
        start: Any,
        end: Any,
        *,
        by: str | Sequence[str] | None = None,
        provider_id: str | Sequence[str] | None = None,
        type: str | Sequence[str] | None = None,
        as_of: Any = None,
        now: Any = None,
    ) -> StatusDurations:
        """How long messages sat in each status, from the snapshot history.

        A message's path is the sequence of its current state over time (by
        ``recorded_at``, under the store's rule that a send never replaces a polled
        state), with repeats of the same status merged. A stay ends when the next
        status was recorded; a stay in PENDING or SENT that has not ended is censored at
        ``now`` (``still_in``); terminal statuses are where paths end. Percentiles are of
        completed stays. ``by`` may not be ``status``.

        Examples
        --------
        >>> moves = _example().status_durations("2026-11-01", "2026-11-02").transitions
        >>> moves.select("from_status", "to_status", "count", "p50_s").rows()[:2]
        [('SENT', 'DELIVERED', 4, 10.0), ('SENT', 'FAILED', 1, 20.0)]
        """
        s, e = _window(start, end)
        at = _as_of(as_of)
        moment = self._now(at, now)
        by_cols = _fields(by, "by")
        if "status" in by_cols:
            _invalid("by", by, "fields other than status (every row is a status)")
        flt = RecordFilter(
            requested_at_from=s, requested_at_to=e, provider_id=provider_id, type=type
        )
        path = status_path(self._history(flt, at), by_cols).collect()
        durations, transitions = durations_tables(path, by_cols, moment)
        return StatusDurations(durations, transitions, moment, s, e, at)

    # ------------------------------------------------------------------ 8. what changed

    def compare(
        self,
        period: Window,
        baseline: Window,
        *,
        dimensions: Sequence[str] = ("provider_id", "type", "provider_status_code", "hour"),
        definition: str | m.RateMetric = "delivered_of_total",
        provider_id: str | Sequence[str] | None = None,
        type: str | Sequence[str] | None = None,
        as_of: Any = None,
        top: int | None = None,
    ) -> Comparison:
        """Rank slices by how much each explains the change of a rate between two periods.

        ``period`` and ``baseline`` are ``(start, end)`` windows. For each dimension
        (``provider_id``, ``type``, ``status``, ``provider_status_code``,
        ``retention_class``, ``hour`` of day in the analytics' time zone) every value
        gets ``contribution_pp`` = its numerator over the period's denominator minus the
        same in the baseline: the contributions of one dimension add up to the overall
        change, in percentage points. ``top`` keeps that many slices per dimension.

        Examples
        --------
        >>> c = _example().compare(("2026-11-01T00:03", "2026-11-01T00:06"),
        ...                        ("2026-11-01T00:00", "2026-11-01T00:02"),
        ...                        dimensions=["provider_id"])
        >>> c.overall.select("period", "rate_pct", "change_pp").rows()
        [('baseline', 100.0, 0.0), ('period', 25.0, -75.0)]
        >>> [(r["value"], round(r["contribution_pp"], 1)) for r in c.slices.iter_rows(named=True)]
        [('solapi', -41.7), ('iwinv', -33.3), ('nhn', 0.0)]
        """
        rate = m.rate_metric(definition)
        dims = _dimensions(dimensions)
        if top is not None and (not isinstance(top, int) or isinstance(top, bool) or top < 1):
            _invalid("top", top, "a whole number >= 1 or None")
        at = _as_of(as_of)
        windows = {
            "period": _window(*_pair(period, "period")),
            "baseline": _window(*_pair(baseline, "baseline")),
        }
        # reduce on the raw values (the hour as a number), format the few rows after
        requested = pl.col("requested_at")
        if self.tz == "UTC":  # the same hour by arithmetic, without a time-zone lookup per row
            hour = (requested.dt.epoch("us") // 3_600_000_000 % 24).cast(pl.Int8).alias("hour")
        else:
            hour = requested.dt.convert_time_zone(self.tz).dt.hour().alias("hour")
        raw_keys = [hour if d == "hour" else pl.col(d) for d in dims]
        formatted = [
            (pl.col(d).cast(pl.String).str.zfill(2) if d == "hour" else pl.col(d).cast(pl.String))
            .fill_null(_NO_CODE)
            .alias(d)
            for d in dims
        ]
        lazies = []
        for s, e in windows.values():
            flt = RecordFilter(
                requested_at_from=s, requested_at_to=e, provider_id=provider_id, type=type
            )
            lazies.append(
                m.polars_reduce(self._current(flt, at), raw_keys, m.metric_columns((), [rate]))
                .with_columns(formatted)
                .group_by(dims)
                .agg(m.polars_aggregations((), [rate], weight=m.WEIGHT))
                .rename({f"{rate.name}_num": "num", f"{rate.name}_den": "den"})
            )
        cur, base = pl.collect_all(lazies)
        overall = _compare_overall(cur, base, windows, rate, self.min_n)
        slices = _compare_slices(cur, base, dims, self.min_n, top)
        return Comparison(overall, slices, rate.name)


# --------------------------------------------------------------------------- doctest data


def _example() -> DeliveryAnalytics:
    """A tiny store for the examples: seven messages requested on 2026-11-01 (UTC).

    Three SMS delivered after 5, 40 and 90 s; an AlimTalk that failed (SOLAPI 3104, not
    on KakaoTalk) and reached the recipient through its SMS fallback; an SMS still in
    flight; an LMS that timed out.
    """

    from ._records import TrackingError
    from ._schema import to_micros
    from ._store import InMemoryTrackingStore

    class _Gateway:
        def __init__(self, provider_id: str) -> None:
            self.id = provider_id

    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    clock = {"now": t0}
    store = InMemoryTrackingStore(hash_key="doctest-key")
    svc = DeliveryTrackingService(
        [_Gateway(p) for p in ("solapi", "iwinv", "nhn")], store=store, clock=lambda: clock["now"]
    )
    plan = [  # id, provider, type, minute, (seconds later, status, code, message, error)
        ("m1", "solapi", "SMS", 0, (5, "DELIVERED", "4000", "수신완료", None)),
        ("m2", "solapi", "SMS", 1, (40, "DELIVERED", "4000", "수신완료", None)),
        ("m3", "iwinv", "SMS", 2, (90, "DELIVERED", "06", "전송 성공", None)),
        ("a1", "solapi", "ALIMTALK", 3, (20, "FAILED", "3104", "카카오톡 미사용자", None)),
        ("a1:api-fallback", "solapi", "SMS", 4, (10, "DELIVERED", "4000", "수신완료", None)),
        ("s1", "iwinv", "SMS", 5, None),
        ("t1", "nhn", "LMS", 6, (86_400, "UNKNOWN", None, None, "TRACKING_TIMEOUT")),
    ]
    for mid, provider, kind, minute, update in plan:
        clock["now"] = t0 + timedelta(minutes=minute)
        options: dict[str, Any] = {"type": kind, "to": "010-1234-5678"}
        if kind == "ALIMTALK":
            options["failover"] = {
                "enabled": True,
                "fallbackChannel": "sms",
                "fallbackContent": "본문",
            }
        record = svc.record_send(
            {"messageId": mid, "timestamp": clock["now"], "options": options},
            {"messageId": mid, "providerId": provider, "providerMessageId": f"G-{mid}",
             "type": kind, "to": "010-1234-5678"},
        )  # fmt: skip
        if update is None:
            continue
        later, status, code, message, error = update
        at = clock["now"] + timedelta(seconds=later)
        metadata = dict(record.metadata)
        if kind == "ALIMTALK":
            attempt = {"attempted": True, "status": "sent", "outcome": "sent",
                       "fallback_message_id": f"{mid}:api-fallback"}  # fmt: skip
            metadata["failover"] = {**metadata["failover"], "api_attempt": attempt}
        polled = replace(
            record,
            status=status,
            provider_status_code=code,
            provider_status_message=message,
            sent_at=clock["now"] + timedelta(seconds=1),
            delivered_at=at if status == "DELIVERED" else None,
            failed_at=at if status == "FAILED" else None,
            status_updated_at=at,
            last_error=None if error is None else TrackingError(error, ""),
            metadata=metadata,
        )
        store.append_snapshots([polled], kind="poll", recorded_at=to_micros(at))
    return DeliveryAnalytics(svc, min_n=1)


def _by_metadata(originals: pl.LazyFrame, by: Sequence[str]) -> pl.LazyFrame:
    """Weighted (status, metadata) rows of AlimTalk messages that have no fallback record.

    One pass grouped by the metadata text alone (its long strings are hashed once, no
    multi-column key), counting the two statuses the funnel tells apart; the others
    become ``""`` (no stage counts any other status).
    """
    st = pl.col("status")
    w = m.WEIGHT
    return (
        originals.group_by([*by, "metadata"])
        .agg(
            pl.len().cast(pl.Int64).alias(w),
            (st == "DELIVERED").sum().cast(pl.Int64).alias("__d"),
            (st == "FAILED").sum().cast(pl.Int64).alias("__f"),
        )
        .with_columns(
            pl.concat_list("__d", "__f", pl.col(w) - pl.col("__d") - pl.col("__f")).alias(w),
            pl.concat_list(pl.lit("DELIVERED"), pl.lit("FAILED"), pl.lit("")).alias("status"),
            pl.lit(None, pl.String).alias("__fb_implicit"),
        )
        .explode([w, "status"])
        .filter(pl.col(w) > 0)
        .drop("__d", "__f")
    )


_HOURLY: Final = ("bucket", "1h", "UTC")


@dataclass(frozen=True)
class _Reduction:
    """A reduced frame kept inside :meth:`DeliveryAnalytics._reusing`, and what it holds."""

    names: tuple[str, ...]
    columns: frozenset[str]
    tag: tuple[Any, ...]
    frame: pl.DataFrame


def _derived(
    have: _Reduction, names: Sequence[str], columns: frozenset[str], tag: tuple[Any, ...]
) -> pl.DataFrame | None:
    """The reduction at ``names``/``columns``/``tag`` as sums of ``have``, if it can be.

    It can when ``have`` keeps every predicate column asked for and finer keys of the
    same kind, or when ``have`` is per UTC hour and the ask is for no time bucket or for
    a UTC bucket made of whole hours (hours, days, weeks, months: their bounds are hour
    bounds, so truncating an hour's start gives the bucket of every moment in it).
    """
    if not columns <= have.columns:
        return None
    frame = have.frame
    wanted = set(names)
    if tag != have.tag:
        if have.tag != _HOURLY or "bucket_start" not in have.names:
            return None
        if tag:
            if tag[0] != "bucket" or tag[2] != "UTC" or not _whole_hours(tag[1]):
                return None
            frame = frame.with_columns(pl.col("bucket_start").dt.truncate(tag[1]))
        elif "bucket_start" in wanted:  # pragma: no cover - a key named like a bucket
            return None
    if not wanted <= set(have.names):
        return None
    keep = [
        c
        for c in frame.columns
        if c != m.WEIGHT and (c in wanted or (c not in have.names and c in columns))
    ]
    return frame.group_by(keep).agg(pl.col(m.WEIGHT).sum())


#: Bits per packed duration (floored to the resolution, plus one; 0 for a missing time).
_BITS: Final = 26
#: A packed duration this large stands for "too long to pack" (over 776 days at 1 s).
_CAP: Final = (1 << _BITS) - 1
#: Bits of the group's code (a hash of its ``by`` values): 11 atop each key's durations.
_CODE_BITS: Final = 21
_CODE_LOW: Final = 10  # the code's bits kept in the second key


def _latency_counts_packed(
    base: pl.LazyFrame, by: Sequence[str], now: datetime, res: int
) -> LatencyCounts | None:
    """What :func:`_latency_counts` gives, from a pass grouped by two ``Int64`` keys.

    The pass reads the timestamps as integer microseconds and packs each floored
    duration (in units of ``res``, plus one; 0 for a missing time) into 26 bits: the
    first key holds two segment gaps, the second the third gap, the time to delivery
    and the event flag, and both share the bits of a 21-bit hash of the ``by`` values.
    Two integer keys group several times faster than string keys and five duration
    keys. The hash numbers the groups of the answer; a small pass over the ``by``
    columns, run in the background, finds the values of each number and checks that
    it tells apart every ``by`` value the window holds (``groups()`` is ``None`` if not).
    After the pass everything is grouped by one ``Int64`` key (group and one duration).

    ``None`` (count the general way) when ``res`` is under a second or a duration does
    not fit.
    """
    if res < 1_000_000:
        return None
    st = pl.col("status")

    def us(name: str) -> pl.Expr:
        return pl.col(name).dt.epoch("us")

    end_t = (
        pl.when(st == "DELIVERED")
        .then(pl.coalesce(us("delivered_at"), us("status_updated_at")))
        .when(st.is_in(POLLABLE_STATUSES))
        .then(pl.lit(to_micros(now), pl.Int64))
        .when(st == "FAILED")
        .then(pl.coalesce(us("failed_at"), us("status_updated_at")))
        .otherwise(us("status_updated_at"))
    )
    # one clip instead of two: a gap of (_CAP - 1) units or more packs as _CAP
    top = (_CAP - 1) * res if (_CAP - 1) * res < 1 << 62 else 1 << 62

    def field(start: pl.Expr, stop: pl.Expr) -> pl.Expr:
        return ((stop - start).clip(0, top) // res + 1).fill_null(0)

    f0, f1, f2 = (field(us(a), us(b)) for a, b in SEGMENTS.values())
    ft = field(us("requested_at"), end_t)
    ev = (st == "DELIVERED").fill_null(False).cast(pl.Int64)
    k1 = f0 * (1 << _BITS) + f1  # 52 bits
    k2 = (f2 * (1 << _BITS) + ft) * 2 + ev  # 53 bits
    groups: Callable[[], pl.DataFrame | None]
    if by:
        code = _by_code(by)
        k1 = (code // (1 << _CODE_LOW)) * (1 << (2 * _BITS)) + k1
        k2 = (code % (1 << _CODE_LOW)) * (1 << (2 * _BITS + 1)) + k2
        # the by values, numbered by their hash, in the background: the main pass and the
        # one-threaded work after it (latency_tables) leave room for this small pass
        pool = ThreadPoolExecutor(1)
        try:
            groups = pool.submit(_numbered_groups, base, by).result
        finally:
            pool.shutdown(wait=False)  # the pass runs on; ``groups()`` waits for it
    else:
        one = pl.DataFrame({GROUP: [0]}, schema={GROUP: pl.Int64})
        groups = lambda: one  # noqa: E731
    reduced = (
        base.select(k1.alias("__k1"), k2.alias("__k2"))
        .group_by("__k1", "__k2")
        .agg(pl.len().cast(pl.Int64).alias("c"))
        .collect(engine="streaming")
    )
    hi, lo = pl.col("__k1"), pl.col("__k2")
    mask = 1 << _BITS
    parts = [hi // mask % mask, hi % mask, lo // (2 * mask) % mask, lo // 2 % mask]
    if reduced.select(pl.any_horizontal(p == _CAP for p in parts).any()).item():
        return None  # a duration too long to pack

    # per segment and for the time to delivery: one Int64 key, the group's code atop
    # the packed duration (a missing time past every other), so one sort orders both
    code_of = hi // (1 << (2 * _BITS)) * (1 << _CODE_LOW) + lo // (1 << (2 * _BITS + 1))
    c = pl.col("c")
    frame = reduced.lazy()
    segments = [
        frame.filter(part > 0)
        .group_by((code_of * mask + part - 1).alias("__k"))
        .agg(c.sum())
        .sort("__k")
        .select((pl.col("__k") // mask).alias(GROUP), (pl.col("__k") % mask * res).alias("d"), "c")
        for part in parts[:3]
    ]
    ft, events = parts[3], pl.col("events")
    km = (
        frame.select(
            (code_of * mask + pl.when(ft > 0).then(ft - 1).otherwise(_CAP)).alias("__k"),
            (c * (lo % 2)).alias("events"),  # plain sums group faster than filtered ones
            c,
        )
        .group_by("__k")
        .agg(events.sum(), c.sum())
        .sort("__k")
        .select(
            (pl.col("__k") // mask).alias(GROUP),
            pl.when(pl.col("__k") % mask < _CAP).then(pl.col("__k") % mask * res).alias("t"),
            events,
            (c - events).alias("censored"),
        )
    )
    return LatencyCounts(segments, km, groups)


def _numbered_groups(base: pl.LazyFrame, by: Sequence[str]) -> pl.DataFrame | None:
    """The ``by`` values of ``base`` numbered by :func:`_by_code`; ``None`` if two share one."""
    groups = base.select(by).unique().collect().with_columns(_by_code(by).alias(GROUP))
    if groups.get_column(GROUP).n_unique() < groups.height:
        return None  # two groups share a hash: count them apart the general way
    return groups


def _by_code(by: Sequence[str]) -> pl.Expr:
    """A :data:`_CODE_BITS`-bit hash of the ``by`` values of a row (``Int64``)."""
    code = pl.col(by[0]).hash(0)
    for i, name in enumerate(by[1:], start=1):
        code = code.xor(pl.col(name).hash(i))
    return (code % (1 << _CODE_BITS)).cast(pl.Int64)


def _whole_hours(step: str) -> bool:
    """Are the bounds of buckets of ``step`` (as :func:`_every` gives it) whole UTC hours?"""
    return step.endswith(("h", "d", "w", "mo"))


def _window_split(frame: pl.LazyFrame, rest: pl.Expr, lo: datetime, hi: datetime) -> pl.LazyFrame:
    """The rows of ``frame`` matching ``rest`` with ``lo <= requested_at <= hi``.

    A ``requested_date`` partition holds the messages requested on that (UTC) day, so
    the days strictly inside the window need no ``requested_at`` test at all: only the
    first and last day's files are filtered row by row, and the others are read without
    their ``requested_at`` column (unless the query needs it).
    """
    day = pl.col(CURRENT_PARTITION)
    inner = frame.filter(rest & (day > lo.date()) & (day < hi.date()))
    edges = frame.filter(
        rest
        & day.is_in([lo.date(), hi.date()])
        & (pl.col("requested_at") >= lo)
        & (pl.col("requested_at") <= hi)
    )
    return pl.concat([inner, edges], how="vertical")
