"""Latency percentiles from counts per duration, and the Kaplan-Meier estimate with censoring."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import polars as pl

from ._analytics_common import _over
from ._records import POLLABLE_STATUSES

__all__ = ["GROUP", "PERCENTILES", "SEGMENTS", "WITHIN", "LatencyCounts"]

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

_EPS: Final = 1e-9
#: Seconds per microsecond. Percentiles are ``us * 1e-6`` (what an eager ``agg`` of
#: ``us / 1e6`` computes): at whole seconds the same as ``us / 1e6``, under a second it
#: can differ from it in the last bit, and the answers keep the values they always had.
_PER_US: Final = 1e-6
_CURVE_POINTS: Final = 1_000


def _floor(us: pl.Expr, res: int) -> pl.Expr:
    return us if res <= 1 else (us // res) * res


#: The column numbering the groups in :class:`LatencyCounts` (``Int64``).
GROUP: Final = "__g"


@dataclass(frozen=True)
class LatencyCounts:
    """Messages counted per group and duration: all the latency answers need.

    ``segments``: per segment of :data:`SEGMENTS`, messages (``c``) per group and
    (floored) duration ``d`` in microseconds, only messages that have both times,
    sorted by group and ``d``. ``km``: per group and time to delivery ``t`` (null when
    a time is missing), the ``events`` (delivered) and ``censored`` messages, sorted by
    group and ``t`` (nulls last). Groups are numbered (:data:`GROUP`); ``groups()``
    gives the ``by`` values of each number (``by`` empty: the one group 0), or ``None``
    when the numbering turned out not to tell two groups apart (count them again the
    general way). It may still be computing in the background until called.
    """

    segments: list[pl.LazyFrame]
    km: pl.LazyFrame
    groups: Callable[[], pl.DataFrame | None]


def with_by(frame: pl.DataFrame, by: Sequence[str], groups: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with the ``by`` columns of its groups first instead of their numbers."""
    if by:
        frame = frame.join(groups, on=GROUP, how="left")
    return frame.select(*by, pl.exclude(GROUP, *by))


def latency_tables(
    counts: LatencyCounts, by: Sequence[str]
) -> tuple[pl.DataFrame, pl.DataFrame] | None:
    """The latency table (naive percentiles, then Kaplan-Meier) and the Kaplan-Meier curve.

    Everything runs on the group numbers (integer keys) and the ``by`` values are joined
    to the few result rows at the end; the naive and the Kaplan-Meier parts (each mostly
    one-threaded work on a few hundred thousand rows) run side by side in two threads.
    ``None`` when ``counts.groups()`` is.
    """
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_naive_latency(counts.segments).collect)
        steps = _km_steps(counts.km, [GROUP]).collect().lazy()
        summary, curve = pl.collect_all([_km_summary(steps, [GROUP]), _km_curve(steps, [GROUP])])
        naive = pending.result()
    groups = counts.groups()
    if groups is None:
        return None
    order = {name: i for i, name in enumerate(SEGMENTS)}
    table = (
        pl.concat(
            [with_by(naive, by, groups), with_by(summary, by, groups)], how="vertical_relaxed"
        )
        .with_columns(pl.col("segment").replace_strict(order, return_dtype=pl.Int32).alias("__o"))
        .sort([*by, "__o", "method"], nulls_last=True)
        .drop("__o")
    )
    return table, with_by(curve, by, groups).sort([*by, "t_s"], nulls_last=True)


def _naive_latency(segments: Sequence[pl.LazyFrame]) -> pl.LazyFrame:
    """Percentiles of finished messages from counts per duration: no sort of the messages.

    Sorted within its group, a cumulative count finds the ceil(n*p)-th smallest
    duration: the inverted-CDF percentile, exactly what sorting the messages would give.
    """
    d, c, n = pl.col("d"), pl.col("c"), pl.col("c").sum()
    cum = c.cum_sum()  # the frames come sorted by group, then duration
    aggs = [
        pl.lit("finished_only").alias("method"),
        n.cast(pl.Int64).alias("n"),
        n.cast(pl.Int64).alias("events"),
        pl.lit(0, pl.Int64).alias("censored"),
        *(
            (d.filter(cum >= (n * p + 999) // 1000).min() * _PER_US).alias(f"p{p // 10}_s")
            for p in PERCENTILES
        ),
        *(
            (c.filter(d <= sec * 1_000_000).sum() / n * 100.0).alias(f"within_{lab}_pct")
            for lab, sec in WITHIN
        ),
    ]
    return pl.concat(
        [
            frame.group_by(GROUP, maintain_order=True)
            .agg(aggs)
            .select(GROUP, pl.lit(name).alias("segment"), pl.exclude(GROUP))
            for name, frame in zip(SEGMENTS, segments, strict=True)
        ],
        how="vertical_relaxed",
    )


def _latency_counts(
    base: pl.LazyFrame, by: Sequence[str], now: datetime, res: int
) -> LatencyCounts:
    """Counts per (floored) duration of each segment, and Kaplan-Meier counts per time.

    One pass reduces the records to messages per group and combination of the three
    segment gaps, the time to delivery ``t`` and whether it was delivered (at one-second
    resolution a few hundred thousand rows for 10M messages); the per-segment counts of
    finished messages and the per-time events and censored counts are sums over it.
    """
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
    gaps = [f"__d{i}" for i in range(len(SEGMENTS))]
    exprs = [
        _floor((pl.col(b) - pl.col(a)).dt.total_microseconds().clip(lower_bound=0), res).alias(g)
        for g, (a, b) in zip(gaps, SEGMENTS.values(), strict=True)
    ]
    t = _floor((end_t - pl.col("requested_at")).dt.total_microseconds().clip(lower_bound=0), res)
    keys = [*by, *gaps, "t", "ev"]
    reduced = (
        base.select(*by, *exprs, t.alias("t"), (st == "DELIVERED").fill_null(False).alias("ev"))
        .group_by(keys)
        .agg(pl.len().cast(pl.Int64).alias("c"))
        .collect(engine="streaming")
    )
    if by:
        groups = (
            reduced.select(by)
            .unique()
            .with_row_index(GROUP)
            .with_columns(pl.col(GROUP).cast(pl.Int64))
        )
        reduced = reduced.join(groups, on=list(by), how="left", nulls_equal=True).drop(by)
    else:
        groups = pl.DataFrame({GROUP: [0]}, schema={GROUP: pl.Int64})
        reduced = reduced.with_columns(pl.lit(0, pl.Int64).alias(GROUP))
    return split_counts(reduced.lazy(), gaps, groups)


def split_counts(reduced: pl.LazyFrame, gaps: Sequence[str], groups: pl.DataFrame) -> LatencyCounts:
    """Per segment ``(group, d, c)`` and the Kaplan-Meier ``(group, t, events, censored)``.

    ``reduced`` holds messages counted (``c``) per group number (:data:`GROUP`), gap
    columns (durations in microseconds, null when a time is missing), ``t`` and ``ev``.
    """
    c = pl.col("c")
    segments = [
        reduced.filter(pl.col(g).is_not_null())
        .group_by(GROUP, g)
        .agg(c.sum().cast(pl.Int64))
        .select(GROUP, pl.col(g).alias("d"), "c")
        .sort(GROUP, "d")
        for g in gaps
    ]
    ev = pl.col("ev")
    km = (
        reduced.group_by(GROUP, "t")
        .agg(
            c.filter(ev).sum().cast(pl.Int64).alias("events"),
            c.filter(~ev).sum().cast(pl.Int64).alias("censored"),
        )
        .sort(GROUP, "t", nulls_last=True)
    )
    return LatencyCounts(segments, km, lambda: groups)


def _km_steps(counts: pl.LazyFrame, by: Sequence[str]) -> pl.LazyFrame:
    """The Kaplan-Meier curve: at risk and survival at each distinct time, per group.

    ``counts`` comes sorted by group, then ``t`` (nulls last), as in :class:`LatencyCounts`.
    """
    removed = pl.col("events") + pl.col("censored")
    return counts.with_columns(
        (_over(removed.sum(), by) - _over(removed.cum_sum(), by) + removed).alias("at_risk")
    ).with_columns(
        _over((1.0 - pl.col("events") / pl.col("at_risk")).cum_prod(), by).alias("survival")
    )


def _km_summary(steps: pl.LazyFrame, by: Sequence[str]) -> pl.LazyFrame:
    t, surv = pl.col("t"), pl.col("survival")
    aggs = [
        pl.lit("requested_to_delivered").alias("segment"),
        pl.lit("kaplan_meier").alias("method"),
        (pl.col("events") + pl.col("censored")).sum().cast(pl.Int64).alias("n"),
        pl.col("events").sum().cast(pl.Int64).alias("events"),
        pl.col("censored").sum().cast(pl.Int64).alias("censored"),
        *(
            (t.filter(surv <= 1.0 - p / 1000 + _EPS).min() * _PER_US).alias(f"p{p // 10}_s")
            for p in PERCENTILES
        ),
        *(
            ((1.0 - surv.filter(t <= sec * 1_000_000).last()).fill_null(0.0) * 100.0).alias(
                f"within_{lab}_pct"
            )
            for lab, sec in WITHIN
        ),
    ]
    return steps.group_by(list(by), maintain_order=True).agg(aggs)


def _km_curve(steps: pl.LazyFrame, by: Sequence[str]) -> pl.LazyFrame:
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
