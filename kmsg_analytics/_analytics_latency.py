"""Latency percentiles from counts per duration, and the Kaplan-Meier estimate with censoring."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

import polars as pl

from ._analytics_common import _over
from ._records import POLLABLE_STATUSES

__all__ = ["PERCENTILES", "SEGMENTS", "WITHIN"]

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
_CURVE_POINTS: Final = 1_000


def _floor(us: pl.Expr, res: int) -> pl.Expr:
    return us if res <= 1 else (us // res) * res


def _naive_latency(counts: Sequence[pl.DataFrame], by: Sequence[str]) -> pl.DataFrame:
    """Percentiles of finished messages from counts per duration: no sort of the messages.

    Sorted within its group, a cumulative count finds the ceil(n*p)-th smallest
    duration: the inverted-CDF percentile, exactly what sorting the messages would give.
    """
    keys = [*by, "segment"]
    d, c, n = pl.col("d"), pl.col("c"), pl.col("c").sum()
    # per group: durations in order and the running count of messages up to each
    cum = c.sort_by("d").cum_sum()
    aggs = [
        pl.lit("finished_only").alias("method"),
        n.cast(pl.Int64).alias("n"),
        n.cast(pl.Int64).alias("events"),
        pl.lit(0, pl.Int64).alias("censored"),
        *(
            (d.sort().filter(cum >= (n * p + 999) // 1000).min() / 1e6).alias(f"p{p // 10}_s")
            for p in PERCENTILES
        ),
        *(
            (c.filter(d <= sec * 1_000_000).sum() / n * 100.0).alias(f"within_{lab}_pct")
            for lab, sec in WITHIN
        ),
    ]
    return pl.concat(
        [
            frame.with_columns(pl.lit(name).alias("segment")).group_by(keys).agg(aggs)
            for name, frame in zip(SEGMENTS, counts, strict=True)
        ],
        how="vertical_relaxed",
    )


def _latency_counts(
    base: pl.LazyFrame, by: Sequence[str], now: datetime, res: int
) -> tuple[list[pl.DataFrame], pl.DataFrame]:
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
    return split_counts(reduced, by, gaps)


def split_counts(
    reduced: pl.DataFrame, by: Sequence[str], gaps: Sequence[str]
) -> tuple[list[pl.DataFrame], pl.DataFrame]:
    """Per segment ``(by, d, c)`` and the Kaplan-Meier ``(by, t, events, censored)`` counts.

    ``reduced`` holds messages counted (``c``) per ``by``, gap columns, ``t`` and ``ev``.
    """
    c = pl.col("c")
    segments = [
        reduced.filter(pl.col(g).is_not_null())
        .group_by([*by, g])
        .agg(c.sum().cast(pl.Int64))
        .rename({g: "d"})
        for g in gaps
    ]
    km = reduced.group_by([*by, "t"]).agg(
        c.filter(pl.col("ev")).sum().cast(pl.Int64).alias("events"),
        c.filter(~pl.col("ev")).sum().cast(pl.Int64).alias("censored"),
    )
    return segments, km


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
