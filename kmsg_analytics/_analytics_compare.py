"""What changed between two periods: the overall change and the slices that explain it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import polars as pl

from . import _metrics as m

__all__ = []


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
