"""The frozen result objects of :class:`~kmsg_analytics.DeliveryAnalytics` and their HTML."""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

from . import _metrics as m
from ._records import DELIVERY_STATUSES

__all__ = [
    "Comparison",
    "DeliverySummary",
    "FailoverFunnel",
    "FailureReport",
    "LatencyReport",
    "StatusDurations",
    "SummaryRates",
]


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


def _summary_rows(group: Mapping[str, DeliverySummary]) -> pl.DataFrame:
    rows = []
    for key, summary in group.items():
        row = summary.to_polars().row(0, named=True)
        rows.append({"key": key, **row})
    return pl.DataFrame(rows)


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
