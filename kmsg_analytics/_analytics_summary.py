"""k-msg's summary from counts per group, whatever engine counted them (Polars or Ibis)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import polars as pl

from . import _metrics as m
from ._analytics_results import DeliverySummary, SummaryRates
from ._records import DELIVERY_STATUSES

__all__ = ["assemble_summary", "summary_keys"]


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
    metrics = metrics.select(m.RATE_TABLE_COLUMNS)
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
