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

import html
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, NoReturn

import polars as pl

from . import _metrics as m
from ._errors import InvalidRecordError, LakeError
from ._lake import ParquetTrackingStore
from ._phone import HashKey
from ._queries import filter_expr, snapshot_key
from ._records import (
    DELIVERY_STATUSES,
    POLLABLE_STATUSES,
    TERMINAL_STATUSES,
    RecordFilter,
    coerce_time,
)
from ._schema import CURRENT_PARTITION
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


def _invalid(field: str, value: object, expected: str) -> NoReturn:
    """Raise :class:`InvalidRecordError` naming the field, the value and what is valid."""
    raise InvalidRecordError(field, value, expected)


#: Fields answers can be broken down by.
GROUP_FIELDS: Final = ("provider_id", "type", "status", "provider_status_code", "retention_class")

#: Slices :meth:`DeliveryAnalytics.compare` can rank (``hour`` is the hour of day requested).
COMPARE_DIMENSIONS: Final = (*GROUP_FIELDS, "hour")

#: Message ages at which :meth:`DeliveryAnalytics.rate_maturity` looks by default.
DEFAULT_AGES: Final = ("1m", "5m", "15m", "1h", "6h", "24h", "72h")

#: Latency segments: name -> (from column, to column).
SEGMENTS: Final = {
    "requested_to_sent": ("requested_at", "sent_at"),
    "requested_to_delivered": ("requested_at", "delivered_at"),
    "sent_to_delivered": ("sent_at", "delivered_at"),
}

#: The latency percentiles reported, in per mille.
PERCENTILES: Final = (500, 900, 950, 990)

#: "Delivered within" thresholds of the latency table (label, seconds).
WITHIN: Final = (("10s", 10), ("1m", 60), ("5m", 300))

_EVERY_ALIASES: Final = {"hour": "1h", "day": "1d", "week": "1w", "month": "1mo"}
_EVERY_RE: Final = re.compile(r"^([1-9][0-9]*)(m|h|d|w|mo)$")
_DURATION_RE: Final = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(s|m|h|d|w)$")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800, "mo": 2_592_000}
_MAX_BUCKETS: Final = 200_000
_NO_CODE: Final = "(없음)"
_EPS: Final = 1e-9
_CURVE_POINTS: Final = 1_000

_TRACKING_LABELS: Final = {
    "MISSING_PROVIDER_MESSAGE_ID": "게이트웨이가 메시지 ID를 돌려주지 않아 결과를 조회할 수 없음",
    "TRACKING_TIMEOUT": "최대 추적 시간 안에 최종 결과를 받지 못함",
    "PROVIDER_NOT_FOUND": "등록되지 않은 게이트웨이로 발송된 메시지",
    "UNSUPPORTED_PROVIDER": "상태 조회를 지원하지 않는 게이트웨이",
}

Window = tuple[Any, Any]


# --------------------------------------------------------------------------- result objects


@dataclass(frozen=True)
class SummaryRates:
    """k-msg's three rates in percent (each 0 when its denominator is 0)."""

    delivered_of_total_pct: float
    failed_of_total_pct: float
    delivered_of_finalized_pct: float


@dataclass(frozen=True)
class DeliverySummary:
    """k-msg's ``getSummary`` answer, with every named rate, its interval and sample size.

    ``total``, ``by_status`` (all six statuses, zeros included) and ``rates`` are
    exactly k-msg's; ``by_provider``/``by_type`` hold one summary per provider/type
    when asked for, else ``None``. ``metrics`` shows each named rate with numerator,
    denominator, Wilson 95% interval and the "not enough data" flag. ``breakdown`` is the
    per-group table when ``by=`` was given.
    """

    total: int
    by_status: dict[str, int]
    rates: SummaryRates
    by_provider: dict[str, DeliverySummary] | None = None
    by_type: dict[str, DeliverySummary] | None = None
    metrics: pl.DataFrame = field(default_factory=pl.DataFrame, repr=False, compare=False)
    breakdown: pl.DataFrame | None = field(default=None, repr=False, compare=False)
    start: datetime | None = None
    end: datetime | None = None
    as_of: datetime | None = None

    def to_polars(self) -> pl.DataFrame:
        """The per-group table when ``by=`` was given, else one row: counts and k-msg rates."""
        if self.breakdown is not None:
            return self.breakdown
        row: dict[str, Any] = {"total": self.total}
        row.update({s.lower(): self.by_status[s] for s in DELIVERY_STATUSES})
        row.update(
            delivered_of_total_pct=self.rates.delivered_of_total_pct,
            failed_of_total_pct=self.rates.failed_of_total_pct,
            delivered_of_finalized_pct=self.rates.delivered_of_finalized_pct,
        )
        return pl.DataFrame([row])

    def to_kmsg(self) -> dict[str, Any]:
        """The answer in k-msg's JSON shape (``byStatus``, ``deliveredOfTotalPct``, ...)."""
        out: dict[str, Any] = {
            "total": self.total,
            "byStatus": dict(self.by_status),
            "rates": {
                "deliveredOfTotalPct": self.rates.delivered_of_total_pct,
                "failedOfTotalPct": self.rates.failed_of_total_pct,
                "deliveredOfFinalizedPct": self.rates.delivered_of_finalized_pct,
            },
        }
        if self.by_provider is not None:
            out["byProviderId"] = {k: v.to_kmsg() for k, v in self.by_provider.items()}
        if self.by_type is not None:
            out["byType"] = {k: v.to_kmsg() for k, v in self.by_type.items()}
        return out

    def _repr_html_(self) -> str:
        head = f"<h4>전송 요약 {_html_window(self.start, self.end, self.as_of)}</h4>"
        counts = " · ".join(
            f"{html.escape(m.STATUS_LABELS[s])} {self.by_status[s]:,}" for s in DELIVERY_STATUSES
        )
        parts = [head, f"<p><b>전체 {self.total:,}건</b> — {counts}</p>"]
        if self.metrics.height:
            parts.append(_metrics_html(self.metrics))
        for title, group in (("게이트웨이별", self.by_provider), ("유형별", self.by_type)):
            if group:
                parts.append(f"<h5>{title}</h5>")
                parts.append(_frame_html(_summary_rows(group)))
        if self.breakdown is not None:
            parts.append("<h5>분류별</h5>" + _frame_html(self.breakdown))
        return "\n".join(parts)


@dataclass(frozen=True)
class LatencyReport:
    """Latency percentiles, naive among finished messages and Kaplan-Meier with censoring.

    ``table`` has one row per group, segment and method: ``finished_only`` rows are the
    plain percentiles of messages that have both timestamps; ``kaplan_meier`` rows
    estimate time to delivery (``requested_to_delivered``) counting every message, with
    in-flight ones censored at ``now`` and failed, cancelled and unknown ones censored at
    the moment they ended (so the curve is the delivery-time distribution of messages
    that deliver, not the share that will deliver: that is what the rates are for).
    ``curve`` is the Kaplan-Meier curve (at most about 1,000 points per group).
    """

    table: pl.DataFrame
    curve: pl.DataFrame
    now: datetime
    start: datetime
    end: datetime
    as_of: datetime | None = None

    def to_polars(self) -> pl.DataFrame:
        """The percentile table."""
        return self.table

    def _repr_html_(self) -> str:
        head = f"<h4>지연 시간 {_html_window(self.start, self.end, self.as_of)}</h4>"
        note = (
            f"<p>기준 시각(now) {self.now.isoformat()} — kaplan_meier: 진행 중 메시지를 중도절단"
            "(censored)으로 포함한 추정, finished_only: 끝난 메시지만의 단순 백분위수. 단위 초.</p>"
        )
        return head + note + _frame_html(self.table)


@dataclass(frozen=True)
class FailureReport:
    """Failures by gateway status code and by one taxonomy across gateways.

    ``codes``: the top codes per provider (and group) among delivery failures (FAILED
    or UNKNOWN, tracking problems excluded), with their most common message, category
    and suggested action. ``categories``: failures per taxonomy category; the
    ``tracking`` row is counted apart (``delivery_failure`` false). ``tracking``: the
    tracking service's own problems (``last_error.code``) per provider.
    """

    codes: pl.DataFrame
    categories: pl.DataFrame
    tracking: pl.DataFrame
    start: datetime
    end: datetime
    as_of: datetime | None = None

    def to_polars(self) -> pl.DataFrame:
        """The top-codes table."""
        return self.codes

    def _repr_html_(self) -> str:
        return "\n".join(
            [
                f"<h4>실패 분석 {_html_window(self.start, self.end, self.as_of)}</h4>",
                "<h5>분류</h5>" + _frame_html(self.categories),
                "<h5>상위 상태 코드</h5>" + _frame_html(self.codes),
                "<h5>추적 문제 (전달 실패와 따로 집계)</h5>" + _frame_html(self.tracking),
            ]
        )


@dataclass(frozen=True)
class FailoverFunnel:
    """The AlimTalk to SMS/LMS failover funnel, per original AlimTalk message.

    ``stages`` (long): alimtalk, delivered, failed, not_kakao, requested, attempted,
    sent, skipped, send_failed, in_progress, fallback_tracked, fallback_delivered,
    reached_any; each with its count and its share of AlimTalk messages and of failed
    ones. ``rates``: reached by any channel, recovered of failed and the fallback's own
    delivery, each with Wilson interval and sample size.
    """

    stages: pl.DataFrame
    rates: pl.DataFrame
    start: datetime
    end: datetime
    as_of: datetime | None = None

    def to_polars(self) -> pl.DataFrame:
        """The stage table."""
        return self.stages

    def _repr_html_(self) -> str:
        return "\n".join(
            [
                f"<h4>알림톡 대체발송 퍼널 {_html_window(self.start, self.end, self.as_of)}</h4>",
                _frame_html(self.rates),
                _frame_html(self.stages),
            ]
        )


@dataclass(frozen=True)
class StatusDurations:
    """How long messages sat in each status, from the snapshot history.

    ``durations``: per status, how many messages entered it, left it, are still in it
    (censored at ``now``) and percentiles of the completed stays. ``transitions``: how
    many messages moved from one status to the next, and how long they took.
    """

    durations: pl.DataFrame
    transitions: pl.DataFrame
    now: datetime
    start: datetime
    end: datetime
    as_of: datetime | None = None

    def to_polars(self) -> pl.DataFrame:
        """The per-status table."""
        return self.durations

    def _repr_html_(self) -> str:
        return "\n".join(
            [
                f"<h4>상태별 체류 시간 {_html_window(self.start, self.end, self.as_of)}</h4>",
                _frame_html(self.durations),
                "<h5>상태 전이</h5>" + _frame_html(self.transitions),
            ]
        )


@dataclass(frozen=True)
class Comparison:
    """What changed between a baseline period and a period, and which slices explain it.

    ``overall``: the rate in each period with numerator, denominator and interval, and
    ``change_pp``. ``slices``: one row per dimension and value, ranked by
    ``|contribution_pp|``; a slice's contribution is its numerator share of the period
    minus that of the baseline, so the contributions of one dimension sum exactly to
    the overall change. ``rate_effect_pp`` is the part due to the slice's own rate
    moving (at its mean weight), ``mix_effect_pp`` the part due to its share of traffic.
    """

    overall: pl.DataFrame
    slices: pl.DataFrame
    definition: str

    def to_polars(self) -> pl.DataFrame:
        """The ranked slices."""
        return self.slices

    def _repr_html_(self) -> str:
        return "\n".join(
            [
                f"<h4>무엇이 바뀌었나 ({html.escape(self.definition)})</h4>",
                _frame_html(self.overall),
                _frame_html(self.slices),
            ]
        )


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
        return frame.filter(filter_expr(flt, self._hash, partitioned=partitioned))

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
        reduced = m.polars_reduce(self._current(flt, at), keys, columns).collect()
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
        counts = (
            m.polars_reduce(self._current(flt, at), keys, m.metric_columns(m.COUNTS, [rate]))
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
            "numerator",
            "denominator",
            "rate_pct",
            "ci_low_pct",
            "ci_high_pct",
            "enough_data",
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
        base = self._current(flt, at).select(
            *by_cols,
            "status",
            "requested_at",
            "sent_at",
            "delivered_at",
            "failed_at",
            "status_updated_at",
        )
        # four narrow streaming passes (each reads only its columns, in bounded memory);
        # everything after them runs on small tables of counts
        segment_counts = [
            q.collect(engine="streaming") for q in _segment_counts(base, by_cols, res)
        ]
        km_counts = _km_counts(base, by_cols, moment, res).collect(engine="streaming")
        naive = _naive_latency(segment_counts, by_cols)
        steps = _km_steps(km_counts, by_cols)
        km = _km_summary(steps, by_cols)
        order = {name: i for i, name in enumerate(SEGMENTS)}
        table = (
            pl.concat([naive, km], how="vertical_relaxed")
            .with_columns(
                pl.col("segment").replace_strict(order, return_dtype=pl.Int32).alias("__o")
            )
            .sort([*by_cols, "__o", "method"], nulls_last=True)
            .drop("__o")
        )
        return LatencyReport(table, _km_curve(steps, by_cols), moment, s, e, at)

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
        tracked = err.is_in(m.TRACKING_ERROR_CODES).fill_null(False)
        failed = pl.col("status").is_in(("FAILED", "UNKNOWN")).fill_null(False) & ~tracked
        flagged = self._current(flt, at).with_columns(
            tracked.alias("__tracked"), failed.alias("__failed"), err.alias("__err")
        )
        # classify only the few failed or tracked messages, not every message
        frame = flagged.filter(pl.col("__failed") | pl.col("__tracked")).with_columns(
            pl.coalesce(pl.col("provider_status_code"), err).fill_null(_NO_CODE).alias("code"),
            m.failure_category_expr(),
        )
        lazies = {
            "totals": flagged.group_by(code_keys).agg(
                pl.len().cast(pl.Int64).alias("messages"),
                pl.col("__failed").sum().cast(pl.Int64).alias("failures"),
            ),
            "codes": frame.filter(pl.col("__failed"))
            .group_by([*code_keys, "code"])
            .agg(
                pl.len().cast(pl.Int64).alias("count"),
                (pl.col("status") == "FAILED").sum().cast(pl.Int64).alias("failed"),
                (pl.col("status") == "UNKNOWN").sum().cast(pl.Int64).alias("unknown"),
                pl.col("provider_status_message")
                .drop_nulls()
                .mode()
                .sort()
                .first()
                .alias("message"),
                pl.col("category").mode().sort().first().alias("category"),
            ),
            "categories": frame.filter(pl.col("__failed"))
            .group_by([*by_cols, "category"])
            .agg(pl.len().cast(pl.Int64).alias("count")),
            "tracking": frame.filter(pl.col("__tracked"))
            .group_by([*code_keys, "__err"])
            .agg(
                pl.len().cast(pl.Int64).alias("count"),
                pl.col("status").is_in(POLLABLE_STATUSES).sum().cast(pl.Int64).alias("in_flight"),
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
        originals = self._current(flt, at).filter(
            ~pl.col("message_id").str.ends_with(":api-fallback")
        )
        fallbacks = (
            self._current(RecordFilter(requested_at_from=s), at)
            .filter(pl.col("message_id").str.ends_with(":api-fallback"))
            .select(pl.col("message_id").alias("__fb_id"), pl.col("status").alias("__fb_status"))
        )
        meta = pl.col("metadata")

        def attempt(snake: str, camel: str) -> pl.Expr:
            return pl.coalesce(
                meta.str.json_path_match(f"$.failover.api_attempt.{snake}"),
                meta.str.json_path_match(f"$.failover.apiAttempt.{camel}"),
            )

        status = attempt("status", "status")
        outcome = pl.coalesce(
            attempt("outcome", "outcome"),
            pl.when(status.is_in(("sent", "failed", "skipped"))).then(status),
        )
        frame = originals.with_columns(
            pl.coalesce(
                attempt("fallback_message_id", "fallbackMessageId"),
                pl.col("message_id") + ":api-fallback",
            ).alias("__fb_id"),
            (meta.str.json_path_match("$.failover.request.enabled") == "true")
            .fill_null(False)
            .alias("__req"),
            (attempt("attempted", "attempted") == "true").fill_null(False).alias("__att"),
            outcome.alias("__out"),
        ).join(fallbacks, on="__fb_id", how="left")
        # the taxonomy only for the few failed messages, not every AlimTalk
        not_kakao = (
            (m.failure_category_expr() == "not_kakao").sum().cast(pl.Int64).alias("not_kakao")
        )
        failed_only = originals.filter(pl.col("status") == "FAILED")
        st = pl.col("status")
        fb_delivered = (pl.col("__fb_status") == "DELIVERED").fill_null(False)
        stage_exprs: dict[str, tuple[str, pl.Expr | None]] = {
            "alimtalk": ("알림톡 발송", pl.col("message_id").is_not_null()),
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
            expr.fill_null(False).sum().cast(pl.Int64).alias(k)
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
        snaps = self._history(flt, at)
        counts = _maturity_counts(snaps, by_cols, ages_us, moment, rate)
        age_frame = pl.DataFrame(
            {"idx": list(range(len(ages_us))), "age": labels, "age_s": [a / 1e6 for a in ages_us]},
            schema={"idx": pl.Int32, "age": pl.String, "age_s": pl.Float64},
        )
        return (
            counts.join(age_frame, on="idx", how="left")
            .with_columns(pl.lit(rate.name).alias("definition"))
            .with_columns(m.polars_rate_columns("numerator", "denominator", min_n=self.min_n))
            .sort([*by_cols, "idx"], nulls_last=True)
            .select(
                *by_cols,
                "age",
                "age_s",
                "messages",
                "definition",
                "numerator",
                "denominator",
                "rate_pct",
                "ci_low_pct",
                "ci_high_pct",
                "enough_data",
            )
        )

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
        path = _status_path(self._history(flt, at), by_cols).collect()
        durations, transitions = _durations_tables(path, by_cols, moment)
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
        hour = (
            pl.col("requested_at")
            .dt.convert_time_zone(self.tz)
            .dt.hour()
            .cast(pl.String)
            .str.zfill(2)
        )
        key_exprs = [
            (hour if d == "hour" else pl.col(d).cast(pl.String)).fill_null(_NO_CODE).alias(d)
            for d in dims
        ]
        lazies = []
        for s, e in windows.values():
            flt = RecordFilter(
                requested_at_from=s, requested_at_to=e, provider_id=provider_id, type=type
            )
            lazies.append(
                m.polars_reduce(self._current(flt, at), key_exprs, m.metric_columns((), [rate]))
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
    from dataclasses import replace

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


# --------------------------------------------------------------------------- argument checks


def _window(start: Any, end: Any) -> tuple[datetime, datetime]:
    s = coerce_time(start, "start")
    e = coerce_time(end, "end")
    if s > e:
        _invalid("start", start, f"a time at or before end ({e.isoformat()})")
    return s, e


def _pair(value: Any, name: str) -> tuple[Any, Any]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        _invalid(name, value, "a (start, end) pair")
    return value[0], value[1]


def _as_of(value: Any) -> datetime | None:
    return None if value is None else coerce_time(value, "as_of")


def _fields(by: str | Sequence[str] | None, name: str) -> list[str]:
    if by is None:
        return []
    items = [by] if isinstance(by, str) else list(by)
    out: list[str] = []
    for item in items:
        if item not in GROUP_FIELDS:
            _invalid(name, item, "some of " + ", ".join(GROUP_FIELDS))
        if item not in out:
            out.append(item)
    return out


def _dimensions(dims: Sequence[str]) -> list[str]:
    items = [dims] if isinstance(dims, str) else list(dims)
    if not items:
        _invalid("dimensions", dims, "at least one of " + ", ".join(COMPARE_DIMENSIONS))
    out: list[str] = []
    for item in items:
        if item not in COMPARE_DIMENSIONS:
            _invalid("dimensions", item, "some of " + ", ".join(COMPARE_DIMENSIONS))
        if item not in out:
            out.append(item)
    return out


def _check_tz(tz: str) -> str:
    try:
        pl.select(pl.lit(datetime(2026, 1, 1, tzinfo=UTC)).dt.convert_time_zone(tz))
        ok = isinstance(tz, str)
    except Exception:
        ok = False
    if not ok:
        _invalid("tz", tz, "an IANA time zone such as 'UTC' or 'Asia/Seoul'")
    return tz


def _every(every: str) -> str:
    if not isinstance(every, str):
        _invalid("every", every, "hour, day, week, month or a duration like '15m', '1d'")
    step = _EVERY_ALIASES.get(every, every)
    if not _EVERY_RE.match(step):
        _invalid("every", every, "hour, day, week, month or a duration like '15m', '1d'")
    return step


def _check_bucket_count(start: datetime, end: datetime, step: str) -> None:
    match = _EVERY_RE.match(step)
    assert match is not None
    seconds = int(match[1]) * _UNIT_SECONDS[match[2]]
    if (end - start).total_seconds() / seconds > _MAX_BUCKETS:
        msg = f"fewer than {_MAX_BUCKETS:,} buckets (use a larger bucket or a shorter window)"
        _invalid("every", step, msg)


def _duration_us(value: str | timedelta, name: str) -> int:
    if isinstance(value, timedelta):
        us = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        us = round(float(match[1]) * _UNIT_SECONDS[match[2]] * 1_000_000)
    else:
        _invalid(name, value, "a timedelta or a duration such as '30s', '5m', '1h', '3d'")
    if us < 0:
        _invalid(name, value, "a duration >= 0")
    return us


def _resolution(value: str | timedelta | None) -> int:
    if value is None:
        return 1
    us = _duration_us(value, "resolution")
    if us < 1:
        _invalid("resolution", value, "a duration of at least 1 microsecond")
    return us


def _age_label(value: str | timedelta) -> str:
    if isinstance(value, str):
        return value
    us = _duration_us(value, "ages")
    for unit, seconds in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if us and us % (seconds * 1_000_000) == 0:
            return f"{us // (seconds * 1_000_000)}{unit}"
    return f"{us / 1e6:g}s"


def _ages(ages: Sequence[str | timedelta]) -> tuple[list[str], list[int]]:
    items = [ages] if isinstance(ages, str | timedelta) else list(ages)
    if not items:
        _invalid("ages", ages, "at least one age such as '1h'")
    pairs = sorted({_duration_us(a, "ages"): _age_label(a) for a in items}.items())
    return [label for _us, label in pairs], [us for us, _label in pairs]


# --------------------------------------------------------------------------- summary helpers


def _parity_columns() -> list[pl.Expr]:
    return [m.polars_parity_rate(f"{n}_num", f"{n}_den", f"{n}_pct") for n in m.KMSG_RATES]


def _summary_from_row(
    row: Mapping[str, Any], min_n: int, start: datetime, end: datetime, as_of: datetime | None
) -> DeliverySummary:
    metrics = pl.DataFrame(
        {
            "rate": list(m.RATES),
            "label": [r.label for r in m.RATES.values()],
            "numerator": [int(row[f"{n}_num"]) for n in m.RATES],
            "denominator": [int(row[f"{n}_den"]) for n in m.RATES],
            "definition": [r.definition() for r in m.RATES.values()],
        },
        schema={
            "rate": pl.String,
            "label": pl.String,
            "numerator": pl.Int64,
            "denominator": pl.Int64,
            "definition": pl.String,
        },
    ).with_columns(m.polars_rate_columns("numerator", "denominator", min_n=min_n))
    metrics = metrics.select(
        "rate",
        "label",
        "numerator",
        "denominator",
        "rate_pct",
        "ci_low_pct",
        "ci_high_pct",
        "enough_data",
        "definition",
    )
    return DeliverySummary(
        total=int(row["total"]),
        by_status={s: int(row[s.lower()]) for s in DELIVERY_STATUSES},
        rates=SummaryRates(
            delivered_of_total_pct=float(row["delivered_of_total_pct"]),
            failed_of_total_pct=float(row["failed_of_total_pct"]),
            delivered_of_finalized_pct=float(row["delivered_of_finalized_pct"]),
        ),
        metrics=metrics,
        start=start,
        end=end,
        as_of=as_of,
    )


def _summary_rows(group: Mapping[str, DeliverySummary]) -> pl.DataFrame:
    rows = []
    for key, summary in group.items():
        row = summary.to_polars().row(0, named=True)
        rows.append({"key": key, **row})
    return pl.DataFrame(rows)


# --------------------------------------------------------------------------- latency helpers


def _over(expr: pl.Expr, by: Sequence[str]) -> pl.Expr:
    return expr.over(list(by)) if by else expr


def _percentile(col: pl.Expr, per_mille: int) -> pl.Expr:
    """Inverted-CDF percentile inside an aggregation: the ceil(n*p)-th smallest value."""
    idx = (col.len().cast(pl.Int64) * per_mille + 999) // 1000 - 1
    return col.sort().get(idx.clip(lower_bound=0), null_on_oob=True)


def _floor(us: pl.Expr, res: int) -> pl.Expr:
    return us if res <= 1 else (us // res) * res


def _segment_counts(base: pl.LazyFrame, by: Sequence[str], res: int) -> list[pl.LazyFrame]:
    """Per latency segment: how many finished messages took each (floored) duration."""
    out = []
    for a, b in SEGMENTS.values():
        gap = _floor((pl.col(b) - pl.col(a)).dt.total_microseconds().clip(lower_bound=0), res)
        out.append(
            base.select(*by, gap.alias("d"))
            .filter(pl.col("d").is_not_null())
            .group_by([*by, "d"])
            .agg(pl.len().cast(pl.Int64).alias("c"))
        )
    return out


def _naive_latency(counts: Sequence[pl.DataFrame], by: Sequence[str]) -> pl.DataFrame:
    """Percentiles of finished messages from counts per duration: no sort of the messages.

    Sorted within its group, a cumulative count finds the ceil(n*p)-th smallest
    duration: the inverted-CDF percentile, exactly what sorting the messages would give.
    """
    keys = [*by, "segment"]
    frames = [
        c.with_columns(pl.lit(name).alias("segment"))
        for name, c in zip(SEGMENTS, counts, strict=True)
    ]
    merged = pl.concat(frames, how="vertical_relaxed").sort([*keys, "d"], nulls_last=True)
    merged = merged.with_columns(pl.col("c").cum_sum().over(keys).alias("cum"))
    d, c, n = pl.col("d"), pl.col("c"), pl.col("c").sum()
    aggs = [
        pl.lit("finished_only").alias("method"),
        n.cast(pl.Int64).alias("n"),
        n.cast(pl.Int64).alias("events"),
        pl.lit(0, pl.Int64).alias("censored"),
        *(
            (d.filter(pl.col("cum") >= (n * p + 999) // 1000).min() / 1e6).alias(f"p{p // 10}_s")
            for p in PERCENTILES
        ),
        *(
            (c.filter(d <= sec * 1_000_000).sum() / n * 100.0).alias(f"within_{lab}_pct")
            for lab, sec in WITHIN
        ),
    ]
    return merged.group_by(keys).agg(aggs)


def _km_counts(base: pl.LazyFrame, by: Sequence[str], now: datetime, res: int) -> pl.LazyFrame:
    """Per group and (floored) time to delivery: deliveries (events) and censored messages."""
    st = pl.col("status")
    end_t = (
        pl.when(st == "DELIVERED")
        .then(pl.coalesce(pl.col("delivered_at"), pl.col("status_updated_at")))
        .when(st.is_in(POLLABLE_STATUSES))
        .then(pl.lit(now))
        .when(st == "FAILED")
        .then(pl.coalesce(pl.col("failed_at"), pl.col("status_updated_at")))
        .otherwise(pl.col("status_updated_at"))
    )
    t = _floor((end_t - pl.col("requested_at")).dt.total_microseconds().clip(lower_bound=0), res)
    ev = (st == "DELIVERED").fill_null(False)
    return (
        base.select(*by, t.alias("t"), ev.alias("ev"))
        .group_by([*by, "t"])
        .agg(
            pl.col("ev").sum().cast(pl.Int64).alias("events"),
            (~pl.col("ev")).sum().cast(pl.Int64).alias("censored"),
        )
    )


def _km_steps(counts: pl.DataFrame, by: Sequence[str]) -> pl.DataFrame:
    """The Kaplan-Meier curve: at risk and survival at each distinct time, per group."""
    removed = pl.col("events") + pl.col("censored")
    return (
        counts.sort([*by, "t"], nulls_last=True)
        .with_columns(
            (_over(removed.sum(), by) - _over(removed.cum_sum(), by) + removed).alias("at_risk")
        )
        .with_columns(
            _over((1.0 - pl.col("events") / pl.col("at_risk")).cum_prod(), by).alias("survival")
        )
    )


def _km_summary(steps: pl.DataFrame, by: Sequence[str]) -> pl.DataFrame:
    t, surv = pl.col("t"), pl.col("survival")
    aggs = [
        pl.lit("requested_to_delivered").alias("segment"),
        pl.lit("kaplan_meier").alias("method"),
        (pl.col("events") + pl.col("censored")).sum().cast(pl.Int64).alias("n"),
        pl.col("events").sum().cast(pl.Int64).alias("events"),
        pl.col("censored").sum().cast(pl.Int64).alias("censored"),
        *(
            (t.filter(surv <= 1.0 - p / 1000 + _EPS).min() / 1e6).alias(f"p{p // 10}_s")
            for p in PERCENTILES
        ),
        *(
            ((1.0 - surv.filter(t <= sec * 1_000_000).last()).fill_null(0.0) * 100.0).alias(
                f"within_{lab}_pct"
            )
            for lab, sec in WITHIN
        ),
    ]
    if not by:
        return steps.select(aggs) if steps.height else steps.select(aggs).clear()
    return steps.group_by(list(by), maintain_order=True).agg(aggs)


def _km_curve(steps: pl.DataFrame, by: Sequence[str]) -> pl.DataFrame:
    share = (1.0 - pl.col("survival")) * 100.0
    level = (share * 10.0).floor()
    last = pl.int_range(pl.len()) == pl.len() - 1
    small = _over(pl.len(), by) <= _CURVE_POINTS
    keep = small | _over(level.is_first_distinct(), by) | _over(last, by)
    return steps.filter(keep).select(
        *by,
        (pl.col("t") / 1e6).alias("t_s"),
        "at_risk",
        "events",
        "censored",
        "survival",
        share.alias("delivered_share_pct"),
    )


# --------------------------------------------------------------------------- failure helpers


#: Funnel stages that are a part of the failed AlimTalk (only these get ``pct_of_failed``).
_OF_FAILED = (
    "failed", "not_kakao", "requested", "attempted", "sent", "skipped", "send_failed",
    "in_progress", "fallback_tracked", "fallback_delivered",
)  # fmt: skip


def summary_keys(
    by_cols: Sequence[str], include_by_provider: bool, include_by_type: bool
) -> list[str]:
    """The finest grouping a summary needs: ``by`` plus provider and type when asked for."""
    extra = [
        *(["provider_id"] if include_by_provider else []),
        *(["type"] if include_by_type else []),
    ]
    return list(dict.fromkeys([*by_cols, *extra]))


def assemble_summary(
    level: Callable[[Sequence[str]], pl.DataFrame],
    make: Callable[[Mapping[str, Any]], DeliverySummary],
    by_cols: Sequence[str],
    include_by_provider: bool,
    include_by_type: bool,
    start: datetime,
    end: datetime,
    as_of: datetime | None,
) -> DeliverySummary:
    """A :class:`DeliverySummary` from per-level counts (``level(cols)``), whatever the engine."""
    top = level([]).row(0, named=True)
    by_provider = by_type = None
    if include_by_provider:
        by_provider = {
            r["provider_id"]: make(r) for r in level(["provider_id"]).iter_rows(named=True)
        }
    if include_by_type:
        by_type = {r["type"]: make(r) for r in level(["type"]).iter_rows(named=True)}
    breakdown = None
    if by_cols:
        breakdown = level(by_cols).select(
            *by_cols, *(c.name for c in m.COUNTS), *(f"{n}_pct" for n in m.KMSG_RATES)
        )
    base = make(top)
    return DeliverySummary(
        total=base.total,
        by_status=base.by_status,
        rates=base.rates,
        by_provider=by_provider,
        by_type=by_type,
        metrics=base.metrics,
        breakdown=breakdown,
        start=start,
        end=end,
        as_of=as_of,
    )


def _share(num: pl.Expr, den: pl.Expr, by: Sequence[str]) -> pl.Expr:
    whole = _over(den, by)
    return pl.when(whole > 0).then(num / whole * 100.0).otherwise(None)


def _category_info() -> tuple[dict[str, str], dict[str, str], dict[str, bool]]:
    cats = m.FAILURE_CATEGORIES.values()
    return (
        {c.key: c.label for c in cats},
        {c.key: c.action for c in cats},
        {c.key: c.delivery_failure for c in cats},
    )


def _finish_codes(
    codes: pl.DataFrame, totals: pl.DataFrame, keys: list[str], top: int
) -> pl.DataFrame:
    labels, actions, _f = _category_info()
    return (
        codes.join(totals, on=keys, how="left", nulls_equal=True)
        .with_columns(
            (pl.col("count") / pl.col("failures") * 100.0).alias("share_of_failures_pct"),
            (pl.col("count") / pl.col("messages") * 100.0).alias("share_of_messages_pct"),
            pl.col("category")
            .replace_strict(labels, return_dtype=pl.String)
            .alias("category_label"),
            pl.col("category").replace_strict(actions, return_dtype=pl.String).alias("action"),
        )
        .sort(
            [*keys, "count", "code"],
            descending=[*([False] * len(keys)), True, False],
            nulls_last=True,
        )
        .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(keys).alias("rank"))
        .filter(pl.col("rank") <= top)
        .select(
            *keys,
            "rank",
            "code",
            "message",
            "count",
            "failed",
            "unknown",
            "share_of_failures_pct",
            "share_of_messages_pct",
            "category",
            "category_label",
            "action",
        )
    )


def _finish_categories(
    cats: pl.DataFrame, tracking: pl.DataFrame, totals: pl.DataFrame, by: list[str]
) -> pl.DataFrame:
    labels, actions, failure = _category_info()
    tracked = (
        tracking.group_by(by).agg(pl.col("count").sum())
        if by
        else tracking.select(pl.col("count").sum())
    )
    tracked = tracked.with_columns(pl.lit("tracking").alias("category")).select(
        *by, "category", "count"
    )
    groups = (
        totals.group_by(by).agg(pl.col("failures").sum())
        if by
        else totals.select(pl.col("failures").sum())
    )
    categories = pl.DataFrame({"category": list(m.FAILURE_CATEGORIES)})
    grid = groups.select(by).join(categories, how="cross") if by else categories
    order = {k: i for i, k in enumerate(m.FAILURE_CATEGORIES)}
    merged = pl.concat(
        [cats.filter(pl.col("category") != "tracking"), tracked], how="vertical_relaxed"
    )
    out = grid.join(merged, on=[*by, "category"], how="left", nulls_equal=True).with_columns(
        pl.col("count").fill_null(0).cast(pl.Int64)
    )
    out = (
        out.join(groups, on=by, how="left", nulls_equal=True)
        if by
        else out.with_columns(
            pl.lit(groups.item() if groups.height else 0, pl.Int64).alias("failures")
        )
    )
    is_failure = pl.col("category").replace_strict(failure, return_dtype=pl.Boolean)
    return (
        out.with_columns(
            pl.col("category").replace_strict(labels, return_dtype=pl.String).alias("label"),
            is_failure.alias("delivery_failure"),
            pl.when(is_failure & (pl.col("failures") > 0))
            .then(pl.col("count") / pl.col("failures") * 100.0)
            .otherwise(None)
            .alias("share_of_failures_pct"),
            pl.col("category").replace_strict(actions, return_dtype=pl.String).alias("action"),
            pl.col("category").replace_strict(order, return_dtype=pl.Int32).alias("__o"),
        )
        .sort([*by, "__o"], nulls_last=True)
        .select(
            *by, "category", "label", "count", "delivery_failure", "share_of_failures_pct", "action"
        )
    )


def _finish_tracking(tracking: pl.DataFrame, totals: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    action = m.FAILURE_CATEGORIES["tracking"].action
    return (
        tracking.join(totals.select(*keys, "messages"), on=keys, how="left", nulls_equal=True)
        .with_columns(
            pl.col("code")
            .replace_strict(_TRACKING_LABELS, default="", return_dtype=pl.String)
            .alias("label"),
            (pl.col("count") / pl.col("messages") * 100.0).alias("share_of_messages_pct"),
            pl.lit(action).alias("action"),
        )
        .sort(
            [*keys, "count", "code"],
            descending=[*([False] * len(keys)), True, False],
            nulls_last=True,
        )
        .select(*keys, "code", "label", "count", "in_flight", "share_of_messages_pct", "action")
    )


# --------------------------------------------------------------------------- history helpers


def _maturity_counts(
    snaps: pl.LazyFrame,
    by: Sequence[str],
    ages_us: Sequence[int],
    now: datetime,
    rate: m.RateMetric,
) -> pl.DataFrame:
    """Numerator, denominator and cohort size per group and age index, by change events.

    Each message contributes its flags at age ``i`` (the state of its latest snapshot
    recorded by ``requested_at + ages[i]``) while ``i`` is at most its last observable
    age. Instead of a message x age grid we emit +/- deltas where a message's state
    changes, where it enters (age 0) and where it stops being observable, and take a
    cumulative sum over the ages per group.
    """
    k = len(ages_us)
    num_p = rate.numerator & rate.denominator
    den_p = rate.denominator
    none_num, none_den = (
        pl.DataFrame(
            {"status": [None], "provider_message_id": [None], "last_error": [None]},
            schema={
                "status": pl.String,
                "provider_message_id": pl.String,
                "last_error": pl.Struct({"code": pl.String, "message": pl.String}),
            },
        )
        .select(
            num_p.polars().cast(pl.Int64).alias("num"), den_p.polars().cast(pl.Int64).alias("den")
        )
        .row(0)
    )
    age = (pl.col("recorded_at") - pl.col("requested_at")).dt.total_microseconds()
    idx = pl.sum_horizontal([(age > a).cast(pl.Int32) for a in ages_us]).cast(pl.Int32)
    observable = (pl.lit(now) - pl.col("requested_at")).dt.total_microseconds()
    last_idx = (pl.sum_horizontal([(observable >= a).cast(pl.Int32) for a in ages_us]) - 1).cast(
        pl.Int32
    )
    base = snaps.select(
        "message_id",
        *by,
        "requested_at",
        snapshot_key().alias("key"),
        idx.alias("idx"),
        num_p.polars().cast(pl.Int64).alias("f_num"),
        den_p.polars().cast(pl.Int64).alias("f_den"),
    )
    cohort = (
        base.group_by("message_id")
        .agg(*(pl.col(c).first() for c in by), pl.col("requested_at").first())
        .with_columns(last_idx.alias("m"))
        .select("message_id", *by, "m")
    )
    messages = cohort.filter(pl.col("m") >= 0)
    changes = (
        base.filter(pl.col("idx") < k)
        .filter(pl.col("key") == pl.col("key").max().over(["message_id", "idx"]))
        .sort(["message_id", "idx"])
        .filter(pl.col("key") == pl.col("key").cum_max().over("message_id"))
        .select("message_id", "idx", "f_num", "f_den")
        .join(messages, on="message_id", how="inner")
        .filter(pl.col("idx") <= pl.col("m"))
        .sort(["message_id", "idx"])
        .with_columns(
            pl.col("f_num").shift(1, fill_value=none_num).over("message_id").alias("p_num"),
            pl.col("f_den").shift(1, fill_value=none_den).over("message_id").alias("p_den"),
        )
    )
    last_state = changes.group_by("message_id").agg(
        pl.col("f_num").sort_by("idx").last(), pl.col("f_den").sort_by("idx").last()
    )
    entries = messages.select(
        "m",
        *by,
        pl.lit(0, pl.Int32).alias("idx"),
        pl.lit(none_num, pl.Int64).alias("d_num"),
        pl.lit(none_den, pl.Int64).alias("d_den"),
        pl.lit(1, pl.Int64).alias("d_msg"),
    )
    moves = changes.select(
        *by,
        "idx",
        (pl.col("f_num") - pl.col("p_num")).alias("d_num"),
        (pl.col("f_den") - pl.col("p_den")).alias("d_den"),
        pl.lit(0, pl.Int64).alias("d_msg"),
    )
    exits = (
        messages.filter(pl.col("m") + 1 < k)
        .join(last_state, on="message_id", how="left")
        .select(
            *by,
            (pl.col("m") + 1).cast(pl.Int32).alias("idx"),
            (-pl.col("f_num").fill_null(none_num)).alias("d_num"),
            (-pl.col("f_den").fill_null(none_den)).alias("d_den"),
            pl.lit(-1, pl.Int64).alias("d_msg"),
        )
    )
    deltas, groups = pl.collect_all(
        [
            pl.concat([entries.drop("m"), moves, exits], how="vertical_relaxed")
            .group_by([*by, "idx"])
            .agg(pl.col("d_num").sum(), pl.col("d_den").sum(), pl.col("d_msg").sum()),
            cohort.select(by).unique() if by else cohort.select(pl.len()),
        ]
    )
    grid = pl.DataFrame({"idx": list(range(k))}, schema={"idx": pl.Int32})
    if by:
        grid = groups.join(grid, how="cross")
    return (
        grid.join(deltas, on=[*by, "idx"], how="left", nulls_equal=True)
        .with_columns(pl.col("d_num", "d_den", "d_msg").fill_null(0))
        .sort([*by, "idx"], nulls_last=True)
        .with_columns(
            _over(pl.col("d_msg").cum_sum(), by).alias("messages"),
            _over(pl.col("d_num").cum_sum(), by).alias("numerator"),
            _over(pl.col("d_den").cum_sum(), by).alias("denominator"),
        )
        .drop("d_num", "d_den", "d_msg")
    )


def _status_path(snaps: pl.LazyFrame, by: Sequence[str]) -> pl.LazyFrame:
    """Each message's current-state path: the snapshots where its status changed."""
    key = snapshot_key()
    return (
        snaps.select("message_id", *by, "recorded_at", "seq", "status", key.alias("key"))
        .sort(["message_id", "recorded_at", "seq"])
        .filter(pl.col("key") == pl.col("key").cum_max().over("message_id"))
        .filter(pl.col("status") != pl.col("status").shift(1).over("message_id").fill_null(""))
        .with_columns(
            pl.col("recorded_at").shift(-1).over("message_id").alias("next_at"),
            pl.col("status").shift(-1).over("message_id").alias("next_status"),
        )
    )


def _durations_tables(
    path: pl.DataFrame, by: Sequence[str], now: datetime
) -> tuple[pl.DataFrame, pl.DataFrame]:
    gap = (pl.col("next_at") - pl.col("recorded_at")).dt.total_microseconds().clip(lower_bound=0)
    age = (pl.lit(now) - pl.col("recorded_at")).dt.total_microseconds().clip(lower_bound=0)
    stays = path.with_columns(gap.alias("d"), age.alias("age"))
    open_ = pl.col("next_at").is_null() & pl.col("status").is_in(POLLABLE_STATUSES)
    done = pl.col("d").drop_nulls()
    durations = (
        stays.group_by([*by, "status"])
        .agg(
            pl.len().cast(pl.Int64).alias("entered"),
            pl.col("next_at").is_not_null().sum().cast(pl.Int64).alias("left"),
            open_.sum().cast(pl.Int64).alias("still_in"),
            *((_percentile(done, p) / 1e6).alias(f"p{p // 10}_s") for p in (500, 900, 950)),
            (done.mean() / 1e6).alias("mean_s"),
            (pl.col("age").filter(open_).max() / 1e6).alias("oldest_still_in_s"),
        )
        .with_columns(pl.col("status").is_in(TERMINAL_STATUSES).alias("terminal"))
    )
    order = {s: i for i, s in enumerate(DELIVERY_STATUSES)}
    durations = (
        durations.with_columns(
            pl.col("status").replace_strict(order, default=99, return_dtype=pl.Int32).alias("__o")
        )
        .sort([*by, "__o"], nulls_last=True)
        .drop("__o")
        .select(
            *by,
            "status",
            "terminal",
            "entered",
            "left",
            "still_in",
            "p50_s",
            "p90_s",
            "p95_s",
            "mean_s",
            "oldest_still_in_s",
        )
    )
    transitions = (
        stays.filter(pl.col("next_status").is_not_null())
        .group_by(
            [*by, pl.col("status").alias("from_status"), pl.col("next_status").alias("to_status")]
        )
        .agg(
            pl.len().cast(pl.Int64).alias("count"),
            *((_percentile(pl.col("d"), p) / 1e6).alias(f"p{p // 10}_s") for p in (500, 900)),
        )
        .sort(
            [*by, "count", "from_status", "to_status"],
            descending=[*([False] * len(by)), True, False, False],
        )
    )
    return durations, transitions


# --------------------------------------------------------------------------- compare helpers


def _compare_overall(
    cur: pl.DataFrame,
    base: pl.DataFrame,
    windows: Mapping[str, tuple[datetime, datetime]],
    rate: m.RateMetric,
    min_n: int,
) -> pl.DataFrame:
    rows = []
    for name, frame in (("baseline", base), ("period", cur)):
        s, e = windows[name]
        rows.append(
            {
                "period": name,
                "start": s,
                "end": e,
                "numerator": int(frame.get_column("num").sum()),
                "denominator": int(frame.get_column("den").sum()),
            }
        )
    out = pl.DataFrame(rows).with_columns(
        m.polars_rate_columns("numerator", "denominator", min_n=min_n)
    )
    raw = pl.when(pl.col("denominator") > 0).then(
        pl.col("numerator") / pl.col("denominator") * 100.0
    )
    return out.with_columns(
        pl.lit(rate.name).alias("definition"),
        (raw - raw.first()).alias("change_pp"),
    )


def _compare_slices(
    cur: pl.DataFrame, base: pl.DataFrame, dims: Sequence[str], min_n: int, top: int | None
) -> pl.DataFrame:
    d1 = cur.get_column("den").sum()
    d0 = base.get_column("den").sum()
    frames = []
    for dim in dims:
        a = base.group_by(dim).agg(pl.col("num").sum().alias("n0"), pl.col("den").sum().alias("d0"))
        b = cur.group_by(dim).agg(pl.col("num").sum().alias("n1"), pl.col("den").sum().alias("d1"))
        frames.append(
            a.join(b, on=dim, how="full", coalesce=True)
            .with_columns(pl.col("n0", "d0", "n1", "d1").fill_null(0))
            .select(
                pl.lit(dim).alias("dimension"), pl.col(dim).alias("value"), "n0", "d0", "n1", "d1"
            )
        )
    schema = {
        "dimension": pl.String,
        "value": pl.String,
        "n0": pl.Int64,
        "d0": pl.Int64,
        "n1": pl.Int64,
        "d1": pl.Int64,
    }
    slices = pl.concat([f.cast(schema) for f in frames]) if frames else pl.DataFrame(schema=schema)  # type: ignore[arg-type]
    r0 = pl.when(pl.col("d0") > 0).then(pl.col("n0") / pl.col("d0"))
    r1 = pl.when(pl.col("d1") > 0).then(pl.col("n1") / pl.col("d1"))
    w0 = pl.col("d0") / d0 if d0 else pl.lit(None, pl.Float64)
    w1 = pl.col("d1") / d1 if d1 else pl.lit(None, pl.Float64)
    c1 = pl.col("n1") / d1 if d1 else pl.lit(None, pl.Float64)
    c0 = pl.col("n0") / d0 if d0 else pl.lit(None, pl.Float64)
    contribution = (c1 - c0) * 100.0
    rate_effect = (
        pl.when(r0.is_not_null() & r1.is_not_null())
        .then((w0 + w1) / 2.0 * (r1 - r0) * 100.0)
        .otherwise(0.0)
    )
    out = slices.with_columns(
        (r0 * 100.0).alias("baseline_rate_pct"),
        (r1 * 100.0).alias("period_rate_pct"),
        (w0 * 100.0).alias("baseline_share_pct"),
        (w1 * 100.0).alias("period_share_pct"),
        contribution.alias("contribution_pp"),
        pl.when(contribution.is_not_null()).then(rate_effect).alias("rate_effect_pp"),
        ((pl.min_horizontal("d0", "d1")) >= min_n).alias("enough_data"),
    ).with_columns((pl.col("contribution_pp") - pl.col("rate_effect_pp")).alias("mix_effect_pp"))
    out = out.sort(
        [pl.col("contribution_pp").abs(), "dimension", "value"],
        descending=[True, False, False],
        nulls_last=True,
    ).with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("dimension").alias("rank"))
    if top is not None:
        out = out.filter(pl.col("rank") <= top)
    return out.rename(
        {"n0": "baseline_numerator", "d0": "baseline_n", "n1": "period_numerator", "d1": "period_n"}
    ).select(
        "dimension",
        "value",
        "rank",
        "contribution_pp",
        "rate_effect_pp",
        "mix_effect_pp",
        "baseline_rate_pct",
        "period_rate_pct",
        "baseline_n",
        "period_n",
        "baseline_numerator",
        "period_numerator",
        "baseline_share_pct",
        "period_share_pct",
        "enough_data",
    )


# --------------------------------------------------------------------------- html


def _html_window(start: datetime | None, end: datetime | None, as_of: datetime | None) -> str:
    if start is None or end is None:
        return ""
    text = f"{start.isoformat()} ~ {end.isoformat()}"
    if as_of is not None:
        text += f" (기준 시점 {as_of.isoformat()})"
    return f"<small>{html.escape(text)}</small>"


def _frame_html(frame: pl.DataFrame, max_rows: int = 40) -> str:
    if frame.is_empty():
        return "<p><i>데이터 없음</i></p>"
    with pl.Config(tbl_rows=max_rows, tbl_cols=30, fmt_str_lengths=80):
        return frame._repr_html_()


def _rate_text(rate: float | None, num: int, den: int) -> str:
    if rate is None:
        return f"데이터 부족 (n={den:,})"
    return f"{rate:.1f}% ({num:,}/{den:,})"


def _metrics_html(metrics: pl.DataFrame) -> str:
    rows = []
    for r in metrics.iter_rows(named=True):
        ci = (
            f"{r['ci_low_pct']:.1f}–{r['ci_high_pct']:.1f}%"
            if r["ci_low_pct"] is not None and r["ci_high_pct"] is not None
            else ""
        )
        rows.append(
            "<tr>"
            f"<td>{html.escape(r['label'])}</td>"
            f"<td>{html.escape(_rate_text(r['rate_pct'], r['numerator'], r['denominator']))}</td>"
            f"<td>{ci}</td>"
            f"<td><small>{html.escape(r['definition'])}</small></td>"
            "</tr>"
        )
    head = "<tr><th>지표</th><th>값 (분자/분모)</th><th>95% 구간</th><th>정의</th></tr>"
    return "<table>" + head + "".join(rows) + "</table>"
