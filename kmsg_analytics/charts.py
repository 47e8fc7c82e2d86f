"""Altair charts of delivery analytics results: each takes a result, never raw records.

Every function takes what a :class:`~kmsg_analytics.DeliveryAnalytics` method returned
(a small Polars frame or a result object) and returns an unrendered Altair chart that
you can keep composing (``|``, ``&``, ``+``, ``.properties(...)``, ``.interactive()``).
A chart whose band or marks are layered over a line is an ``alt.LayerChart``; the
others are ``alt.Chart``.

=============================  ============================================
chart                          built from
=============================  ============================================
:func:`status_mix`             ``an.rates(...)`` (any bucket, any ``by``)
:func:`delivery_rate`          ``an.rates(..., by="provider_id")``
:func:`latency_distribution`   ``an.latency(...)``
:func:`top_failure_codes`      ``an.failures(...)``
:func:`delivery_heatmap`       ``an.rates(..., every="1h")``
:func:`failover_funnel`        ``an.failover_funnel(...)``
:func:`rate_maturity`          ``an.rate_maturity(...)``
:func:`what_changed`           ``an.compare(...)``
=============================  ============================================

Rules every chart keeps:

* **Few rows.** A chart never embeds more than ``max_rows`` rows (default
  :data:`MAX_ROWS`, 5,000): time series are re-bucketed to a coarser step (counts are
  summed, rates and intervals recomputed from the summed counts), long tables are cut
  to their largest rows, and the chart's subtitle says so.
* **Numerator and denominator.** Every tooltip of a rate shows both, and the sample
  size; a rate whose denominator is under ``min_n`` is "not enough data" (no point on
  the line), while its Wilson interval band is still drawn.
* **One theme.** Importing this module registers the ``"kmsg"`` theme (Korean-capable
  font list, quiet axes, a fixed status palette) and enables it unless you enabled
  another theme first; ``alt.theme.enable("default")`` turns it off.
* **Deterministic.** Times are embedded as strings of the analytics' wall-clock time
  on a UTC scale, so the same result gives the same Vega-Lite spec on every machine
  and in every browser time zone.

Needs the notebook extra: ``pip install "kmsg-analytics[notebook]"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn, cast

import polars as pl

from . import _metrics as m
from ._errors import InvalidRecordError
from ._records import DELIVERY_STATUSES

try:
    import altair as alt
except ImportError as _err:  # pragma: no cover - exercised in a subprocess test
    _msg = (
        "kmsg_analytics.charts needs altair, which comes with the notebook extra: "
        'pip install "kmsg-analytics[notebook]"'
    )
    raise ImportError(_msg) from _err

if TYPE_CHECKING:
    from ._analytics import Comparison, FailoverFunnel, FailureReport, LatencyReport

__all__ = [
    "INSTALL_HINT",
    "MAX_ROWS",
    "STATUS_COLORS",
    "THEME",
    "AnyChart",
    "delivery_heatmap",
    "delivery_rate",
    "failover_funnel",
    "latency_distribution",
    "rate_maturity",
    "status_mix",
    "theme_config",
    "top_failure_codes",
    "what_changed",
]

#: What to install when the optional parts are missing.
INSTALL_HINT: Final = 'pip install "kmsg-analytics[notebook]"'

#: The most rows any chart embeds (the limit altair itself enforces by default).
MAX_ROWS: Final = 5_000

#: The name of the registered theme.
THEME: Final = "kmsg"

#: Fonts tried in order: Korean-capable faces on every platform, then generic.
FONT: Final = (
    "Pretendard, 'Noto Sans KR', 'Noto Sans CJK KR', 'Apple SD Gothic Neo', "
    "'Malgun Gothic', 'NanumGothic', 'Source Han Sans KR', system-ui, sans-serif"
)

#: One colour per delivery status, everywhere.
STATUS_COLORS: Final[Mapping[str, str]] = {
    "PENDING": "#9aa5b1",
    "SENT": "#5b8def",
    "DELIVERED": "#2f9e6e",
    "FAILED": "#d9534f",
    "CANCELLED": "#b08968",
    "UNKNOWN": "#f0ad4e",
}

_CATEGORY_COLORS: Final[Mapping[str, str]] = {
    "permanent": "#d9534f",
    "temporary": "#f0ad4e",
    "policy": "#8e6bbf",
    "not_kakao": "#f5c518",
    "tracking": "#5b8def",
    "unknown": "#9aa5b1",
}

#: Chart type, for annotations: a single view or a layered one.
AnyChart = alt.Chart | alt.LayerChart

_COUNT_COLUMNS: Final = tuple(c.name for c in m.COUNTS)
_STEPS: Final = ("1h", "3h", "6h", "12h", "1d", "1w", "1mo", "3mo", "1y")
_STEP_SECONDS: Final = {
    "1h": 3_600,
    "3h": 10_800,
    "6h": 21_600,
    "12h": 43_200,
    "1d": 86_400,
    "1w": 604_800,
    "1mo": 2_592_000,
    "3mo": 7_776_000,
    "1y": 31_536_000,
}
_WEEKDAYS: Final = ("월", "화", "수", "목", "금", "토", "일")
_FUNNEL_STAGES: Final = (
    "alimtalk",
    "delivered",
    "failed",
    "not_kakao",
    "requested",
    "attempted",
    "sent",
    "fallback_delivered",
    "reached_any",
)
_DURATION_TICKS: Final = (
    (0, "0"),
    (1, "1초"),
    (10, "10초"),
    (60, "1분"),
    (600, "10분"),
    (3_600, "1시간"),
    (21_600, "6시간"),
    (86_400, "1일"),
    (604_800, "7일"),
    (2_592_000, "30일"),
)
_WIDTH: Final = 560
_HEIGHT: Final = 240


# --------------------------------------------------------------------------- theme


def theme_config() -> dict[str, Any]:
    """The ``"kmsg"`` theme: Korean-capable fonts, quiet axes, readable sizes.

    Examples
    --------
    >>> "Noto Sans KR" in theme_config()["config"]["font"]
    True
    """
    return {
        "config": {
            "font": FONT,
            "background": "white",
            "view": {"stroke": None, "continuousWidth": _WIDTH, "continuousHeight": _HEIGHT},
            "title": {"fontSize": 15, "anchor": "start", "subtitleColor": "#6b7280"},
            "axis": {
                "labelFontSize": 11,
                "titleFontSize": 12,
                "gridColor": "#eef0f3",
                "domainColor": "#9aa5b1",
                "tickColor": "#9aa5b1",
            },
            "legend": {"labelFontSize": 11, "titleFontSize": 12, "orient": "right"},
            "range": {
                "category": [
                    "#4c78a8",
                    "#f58518",
                    "#54a24b",
                    "#e45756",
                    "#72b7b2",
                    "#b279a2",
                    "#ff9da6",
                    "#9d755d",
                    "#bab0ac",
                    "#eeca3b",
                ]
            },
            "bar": {"continuousBandSize": 6},
        }
    }


def _registered_theme() -> alt.theme.ThemeConfig:
    return cast("alt.theme.ThemeConfig", theme_config())


alt.theme.register(THEME, enable=False)(_registered_theme)
if alt.theme.active == "default":
    alt.theme.enable(THEME)


# --------------------------------------------------------------------------- helpers


def _invalid(field: str, value: object, expected: str) -> NoReturn:
    """Raise :class:`InvalidRecordError` naming the field, the value and what is valid."""
    raise InvalidRecordError(field, value, expected)


def _need(frame: pl.DataFrame, columns: Sequence[str], what: str, source: str) -> None:
    """Refuse a frame that is not the analytics result the chart is built from."""
    if not isinstance(frame, pl.DataFrame):
        _invalid(what, type(frame).__name__, f"the polars.DataFrame that {source} returns")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        _invalid(
            what,
            f"a frame without {', '.join(missing)}",
            f"the frame that {source} returns (it has columns {', '.join(columns)})",
        )


def _check_max_rows(max_rows: int) -> int:
    if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 10:
        _invalid("max_rows", max_rows, "a whole number >= 10")
    return max_rows


def _group_columns(frame: pl.DataFrame, before: str) -> list[str]:
    """The ``by`` columns of an analytics frame: those before ``before``."""
    cols = frame.columns
    return [c for c in cols[: cols.index(before)] if c != "bucket_start"]


def _group_label(by: Sequence[str]) -> pl.Expr:
    """One string naming the group (``"전체"`` when there is no ``by``)."""
    if not by:
        return pl.lit("전체").alias("group")
    parts = [pl.col(c).cast(pl.String).fill_null("(없음)") for c in by]
    return pl.concat_str(parts, separator=" · ").alias("group")


def _wall_clock(col: str) -> pl.Expr:
    """A tz-aware time as its wall-clock text in its own zone, marked ``Z`` for a UTC scale."""
    return pl.col(col).dt.replace_time_zone(None).dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _time_zone(frame: pl.DataFrame, col: str) -> str:
    dtype = frame.schema[col]
    tz = getattr(dtype, "time_zone", None)
    return str(tz) if tz else "UTC"


def _bucket_seconds(frame: pl.DataFrame) -> float | None:
    """The smallest gap between distinct bucket starts (``None`` with fewer than two)."""
    starts = frame.get_column("bucket_start").unique().sort()
    if starts.len() < 2:
        return None
    gaps = starts.diff().drop_nulls().dt.total_seconds()
    smallest = gaps.min()
    return float(smallest) if isinstance(smallest, int | float) else None


def _coarsen(
    frame: pl.DataFrame, by: Sequence[str], per_bucket: int, max_rows: int, min_n: int
) -> tuple[pl.DataFrame, str | None]:
    """Re-bucket a ``rates()`` frame to a coarser step until it fits ``max_rows``.

    Counts, numerators and denominators are summed; rates and intervals are recomputed.
    Returns the frame and the new step (``None`` when it already fitted).
    """
    buckets = frame.get_column("bucket_start").n_unique()
    if buckets * per_bucket <= max_rows:
        return frame, None
    span = frame.select(
        (pl.col("bucket_start").max() - pl.col("bucket_start").min()).dt.total_seconds()
    ).item()
    seconds = float(span or 0)
    current = _bucket_seconds(frame) or 0.0
    for step in _STEPS:
        size = _STEP_SECONDS[step]
        if size <= current:
            continue
        if (seconds / size + 1) * per_bucket <= max_rows:
            break
    sums = [c for c in (*_COUNT_COLUMNS, "numerator", "denominator") if c in frame.columns]
    out = (
        frame.with_columns(pl.col("bucket_start").dt.truncate(step))
        .group_by(["bucket_start", *by], maintain_order=True)
        .agg(pl.col(sums).sum(), pl.col("definition").first())
        .with_columns(m.polars_rate_columns("numerator", "denominator", min_n=min_n))
        .sort(["bucket_start", *by], nulls_last=True)
    )
    return out, step


def _single(chart: Any) -> alt.Chart:
    """Narrow a chain of altair calls to the single-view chart it builds."""
    assert isinstance(chart, alt.Chart)
    return chart


def _layered(chart: Any) -> alt.LayerChart:
    """Narrow a chain of altair calls to the layered chart it builds."""
    assert isinstance(chart, alt.LayerChart)
    return chart


def _subtitle(parts: Sequence[str | None]) -> list[str] | None:
    lines = [p for p in parts if p]
    return lines or None


def _title(text: str, subtitle: Sequence[str | None] = ()) -> alt.Title:
    sub = _subtitle(subtitle)
    return alt.Title(text, subtitle=sub) if sub else alt.Title(text)


def _rate_label(definition: str) -> str:
    rate = m.RATES.get(definition)
    return rate.label if rate is not None else definition


# --------------------------------------------------------------------------- 1. status mix


def status_mix(
    rates: pl.DataFrame,
    *,
    statuses: Sequence[str] | None = None,
    normalize: bool = False,
    max_rows: int = MAX_ROWS,
) -> alt.Chart:
    """Messages per time bucket, stacked by status (the status mix over time).

    Parameters
    ----------
    rates
        What :meth:`DeliveryAnalytics.rates` returns (any ``every``; ``by`` groups are
        summed).
    statuses
        Only these statuses (default all six).
    normalize
        Stack to 100% instead of counts.
    max_rows
        Re-bucket to a coarser step beyond this many rows (buckets x statuses).

    Examples
    --------
    >>> from kmsg_analytics._analytics import _example
    >>> chart = status_mix(_example().rates("2026-11-01", "2026-11-02", every="1d"))
    >>> spec = chart.to_dict()
    >>> spec["mark"]["type"], spec["encoding"]["color"]["field"]
    ('bar', 'status_label')
    """
    _need(rates, ("bucket_start", *_COUNT_COLUMNS), "rates", "DeliveryAnalytics.rates()")
    chosen = list(DELIVERY_STATUSES if statuses is None else statuses)
    for s in chosen:
        if s not in DELIVERY_STATUSES:
            _invalid("statuses", s, "some of " + ", ".join(DELIVERY_STATUSES))
    max_rows = _check_max_rows(max_rows)
    per_bucket = max(len(chosen), 1)
    by = _group_columns(rates, "total")
    base = rates.group_by("bucket_start", maintain_order=True).agg(
        pl.col(list(_COUNT_COLUMNS)).sum()
    )
    step = None
    if base.height * per_bucket > max_rows:
        base = base.with_columns(
            pl.lit(0, pl.Int64).alias("numerator"),
            pl.lit(0, pl.Int64).alias("denominator"),
            pl.lit("").alias("definition"),
        )
        base, step = _coarsen(base, [], per_bucket, max_rows, m.DEFAULT_MIN_N)
        base = base.select("bucket_start", *_COUNT_COLUMNS)
    tz = _time_zone(rates, "bucket_start")
    labels = {s: m.STATUS_LABELS[s] for s in DELIVERY_STATUSES}
    long = (
        base.sort("bucket_start")
        .unpivot(
            index=["bucket_start", "total"],
            on=[s.lower() for s in chosen],
            variable_name="status",
            value_name="count",
        )
        .with_columns(pl.col("status").str.to_uppercase())
        .with_columns(
            _wall_clock("bucket_start").alias("bucket"),
            pl.col("status").replace_strict(labels, return_dtype=pl.String).alias("status_label"),
            pl.when(pl.col("total") > 0)
            .then(pl.col("count") / pl.col("total") * 100.0)
            .otherwise(None)
            .alias("share_pct"),
            pl.col("status")
            .replace_strict({s: i for i, s in enumerate(DELIVERY_STATUSES)}, return_dtype=pl.Int32)
            .alias("order"),
        )
        .select("bucket", "status", "status_label", "order", "count", "total", "share_pct")
    )
    domain = [labels[s] for s in chosen]
    colors = [STATUS_COLORS[s] for s in chosen]
    y = alt.Y(
        "count:Q",
        stack="normalize" if normalize else "zero",
        title="비율" if normalize else "메시지 수",
        axis=alt.Axis(format="%") if normalize else alt.Axis(),
    )
    notes = [
        f"시간대 {tz}",
        f"{step} 단위로 다시 묶음 ({max_rows:,}행 제한)" if step else None,
        ("분류별(" + ", ".join(by) + ") 합계") if by else None,
    ]
    return _single(
        alt.Chart(long, title=_title("상태별 메시지 추이", notes))
        .mark_bar()
        .encode(
            x=alt.X("bucket:T", scale=alt.Scale(type="utc"), title="요청 시각"),
            y=y,
            color=alt.Color(
                "status_label:N",
                title="상태",
                scale=alt.Scale(domain=domain, range=colors),
                sort=domain,
            ),
            order=alt.Order("order:Q"),
            tooltip=[
                alt.Tooltip("bucket:T", title="구간 시작", format="%Y-%m-%d %H:%M"),
                alt.Tooltip("status_label:N", title="상태"),
                alt.Tooltip("count:Q", title="메시지 (분자)", format=","),
                alt.Tooltip("total:Q", title="구간 전체 (분모)", format=","),
                alt.Tooltip("share_pct:Q", title="비율 %", format=".1f"),
            ],
        )
        .properties(width=_WIDTH, height=_HEIGHT)
    )


# --------------------------------------------------------------------------- 2. rate over time


def delivery_rate(
    rates: pl.DataFrame,
    *,
    max_rows: int = MAX_ROWS,
    min_n: int = m.DEFAULT_MIN_N,
) -> alt.LayerChart:
    """A named rate per time bucket and group, with its Wilson 95% interval as a band.

    Parameters
    ----------
    rates
        What :meth:`DeliveryAnalytics.rates` returns, usually with ``by="provider_id"``;
        every ``by`` column becomes the colour.
    max_rows
        Re-bucket to a coarser step beyond this many rows (buckets x groups).
    min_n
        When re-bucketing, the denominator below which a rate is "not enough data".

    Examples
    --------
    >>> from kmsg_analytics._analytics import _example
    >>> an = _example()
    >>> chart = delivery_rate(an.rates("2026-11-01", "2026-11-03", by="provider_id"))
    >>> [layer["mark"]["type"] for layer in chart.to_dict()["layer"]]
    ['area', 'line', 'point']
    """
    _need(
        rates,
        ("bucket_start", "definition", "numerator", "denominator", "rate_pct", "ci_low_pct"),
        "rates",
        "DeliveryAnalytics.rates()",
    )
    max_rows = _check_max_rows(max_rows)
    by = _group_columns(rates, "total") if "total" in rates.columns else []
    groups = max(rates.select(by).n_unique() if by else 1, 1)
    frame, step = _coarsen(rates, by, groups, max_rows, min_n)
    definition = str(frame.get_column("definition").first() or "")
    tz = _time_zone(frame, "bucket_start")
    data = frame.select(
        _wall_clock("bucket_start").alias("bucket"),
        _group_label(by),
        *m.RATE_COLUMNS,
    )
    label = _rate_label(definition)
    color = alt.Color(
        "group:N",
        title=" · ".join(by) if by else "",
        legend=alt.Legend(symbolType="circle", symbolOpacity=1.0),
    )
    x = alt.X("bucket:T", scale=alt.Scale(type="utc"), title="요청 시각")
    tooltip = [
        alt.Tooltip("bucket:T", title="구간 시작", format="%Y-%m-%d %H:%M"),
        alt.Tooltip("group:N", title="분류"),
        alt.Tooltip("rate_pct:Q", title=f"{label} %", format=".2f"),
        alt.Tooltip("numerator:Q", title="분자", format=","),
        alt.Tooltip("denominator:Q", title="분모 (표본 수)", format=","),
        alt.Tooltip("ci_low_pct:Q", title="95% 구간 하한 %", format=".2f"),
        alt.Tooltip("ci_high_pct:Q", title="95% 구간 상한 %", format=".2f"),
        alt.Tooltip("enough_data:N", title="표본 충분"),
    ]
    base = alt.Chart(data).encode(x=x, color=color)
    band = base.mark_area(opacity=0.18).encode(
        y=alt.Y("ci_low_pct:Q", title=f"{label} (%)", scale=alt.Scale(zero=False)),
        y2="ci_high_pct:Q",
    )
    line = base.mark_line(strokeWidth=2).encode(y=alt.Y("rate_pct:Q"))
    points = base.mark_point(filled=True, size=28).encode(y="rate_pct:Q", tooltip=tooltip)
    notes = [
        m.RATES[definition].definition() if definition in m.RATES else None,
        f"띠: Wilson 95% 구간 · 분모 {min_n} 미만은 '데이터 부족' (점 없음) · 시간대 {tz}",
        f"{step} 단위로 다시 묶음 ({max_rows:,}행 제한)" if step else None,
    ]
    return _layered(
        alt.layer(band, line, points, title=_title(f"{label} 추이", notes)).properties(
            width=_WIDTH, height=_HEIGHT
        )
    )


# --------------------------------------------------------------------------- 3. latency


def latency_distribution(
    latency: LatencyReport,
    *,
    max_rows: int = MAX_ROWS,
    log_scale: bool = True,
) -> alt.LayerChart:
    """Time to delivery: the Kaplan-Meier curve per group, with p50/p90/p95/p99 marks.

    The curve counts every message (in-flight ones censored), so it does not flatter a
    gateway by dropping its slow messages; the marks on the curve are the Kaplan-Meier
    p50/p90/p95/p99 (one shape each), and their tooltips show the naive percentiles of
    finished messages beside them.

    Parameters
    ----------
    latency
        What :meth:`DeliveryAnalytics.latency` returns.
    max_rows
        Thin each group's curve evenly beyond this many points in all.
    log_scale
        A symmetric-log time axis (latencies span seconds to hours).

    Examples
    --------
    >>> from kmsg_analytics._analytics import _example
    >>> chart = latency_distribution(_example().latency("2026-11-01", "2026-11-02"))
    >>> [layer["mark"]["type"] for layer in chart.to_dict()["layer"]]
    ['line', 'point']
    """
    table = getattr(latency, "table", None)
    curve = getattr(latency, "curve", None)
    if not isinstance(table, pl.DataFrame) or not isinstance(curve, pl.DataFrame):
        _invalid(
            "latency", type(latency).__name__, "the LatencyReport DeliveryAnalytics.latency returns"
        )
    max_rows = _check_max_rows(max_rows)
    by = _group_columns(table, "segment")
    points = curve.with_columns(_group_label(by))
    groups = max(points.get_column("group").n_unique(), 1)
    per_group = max((max_rows - 8 * groups) // groups, 2)
    last = pl.int_range(pl.len()) == pl.len() - 1
    stride = (pl.len() // per_group + 1).cast(pl.Int64)
    keep = (pl.len() <= per_group) | (pl.int_range(pl.len()) % stride == 0) | last
    thinned = points.filter(keep.over("group"))
    note = (
        f"곡선을 그룹당 약 {per_group:,}점으로 줄여 표시"
        if thinned.height < points.height
        else None
    )
    data = thinned.select(
        "group",
        pl.col("t_s").alias("seconds"),
        "delivered_share_pct",
        "at_risk",
        "events",
        "censored",
    )
    km = table.filter(pl.col("method") == "kaplan_meier").with_columns(_group_label(by))
    naive = (
        table.filter(
            (pl.col("method") == "finished_only") & (pl.col("segment") == "requested_to_delivered")
        )
        .with_columns(_group_label(by))
        .select("group", *(pl.col(f"p{p}_s").alias(f"naive_p{p}_s") for p in (50, 90, 95, 99)))
    )
    marks = (
        km.select("group", "n", "events", "censored", "p50_s", "p90_s", "p95_s", "p99_s")
        .unpivot(
            index=["group", "n", "events", "censored"],
            on=["p50_s", "p90_s", "p95_s", "p99_s"],
            variable_name="percentile",
            value_name="seconds",
        )
        .with_columns(pl.col("percentile").str.strip_suffix("_s"))
        .join(naive, on="group", how="left")
        .with_columns(
            pl.when(pl.col("percentile") == "p50")
            .then(pl.col("naive_p50_s"))
            .when(pl.col("percentile") == "p90")
            .then(pl.col("naive_p90_s"))
            .when(pl.col("percentile") == "p95")
            .then(pl.col("naive_p95_s"))
            .otherwise(pl.col("naive_p99_s"))
            .alias("finished_only_s")
        )
        .filter(pl.col("seconds").is_not_null())
        .select("group", "percentile", "seconds", "finished_only_s", "n", "events", "censored")
        .sort("group", "percentile")
    )
    longest = data.get_column("seconds").max()
    limit = max(float(longest), 1.0) * 1.5 if isinstance(longest, int | float) else 1.0
    ticks = [(t, name) for t, name in _DURATION_TICKS if t <= limit]
    expr = " : ".join(f"datum.value == {t} ? '{name}'" for t, name in ticks) + " : ''"
    scale = alt.Scale(type="symlog", constant=1) if log_scale else alt.Scale()
    axis = alt.Axis(values=[t for t, _ in ticks], labelExpr=expr)
    x = alt.X("seconds:Q", title="요청부터 전달까지", scale=scale, axis=axis)
    color = alt.Color(
        "group:N",
        title=" · ".join(by) if by else "",
        legend=alt.Legend(symbolType="circle", symbolOpacity=1.0),
    )
    line = (
        alt.Chart(data)
        .mark_line(interpolate="step-after", strokeWidth=2)
        .encode(
            x=x,
            y=alt.Y(
                "delivered_share_pct:Q", title="전달된 비율 (%)", scale=alt.Scale(domain=[0, 100])
            ),
            color=color,
            tooltip=[
                alt.Tooltip("group:N", title="분류"),
                alt.Tooltip("seconds:Q", title="초", format=",.0f"),
                alt.Tooltip("delivered_share_pct:Q", title="전달 비율 % (KM)", format=".1f"),
                alt.Tooltip("events:Q", title="이 시점 전달 (분자)", format=","),
                alt.Tooltip("at_risk:Q", title="대기 중 (분모)", format=","),
                alt.Tooltip("censored:Q", title="중도절단", format=","),
            ],
        )
    )
    percent = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0}
    marks = marks.with_columns(
        pl.col("percentile").replace_strict(percent, return_dtype=pl.Float64).alias("share_pct")
    )
    percentile_marks = (
        alt.Chart(marks)
        .mark_point(filled=True, size=70, opacity=0.9)
        .encode(
            x="seconds:Q",
            y="share_pct:Q",
            color=color,
            shape=alt.Shape("percentile:N", title="백분위", scale=alt.Scale(domain=list(percent))),
            tooltip=[
                alt.Tooltip("group:N", title="분류"),
                alt.Tooltip("percentile:N", title="백분위"),
                alt.Tooltip("seconds:Q", title="Kaplan-Meier (초)", format=",.0f"),
                alt.Tooltip("finished_only_s:Q", title="끝난 메시지만 (초)", format=",.0f"),
                alt.Tooltip("events:Q", title="전달 (사건 수)", format=","),
                alt.Tooltip("n:Q", title="전체 메시지 (표본 수)", format=","),
                alt.Tooltip("censored:Q", title="중도절단", format=","),
            ],
        )
    )
    notes = [
        "Kaplan-Meier: 진행 중인 메시지는 중도절단으로 포함 · 표시: p50 / p90 / p95 / p99",
        note,
    ]
    return _layered(
        alt.layer(line, percentile_marks, title=_title("전달 지연 분포", notes)).properties(
            width=_WIDTH, height=_HEIGHT
        )
    )


# --------------------------------------------------------------------------- 4. failure codes


def top_failure_codes(
    failures: FailureReport,
    *,
    top: int = 15,
) -> alt.Chart:
    """The most frequent gateway status codes among delivery failures, by taxonomy category.

    Parameters
    ----------
    failures
        What :meth:`DeliveryAnalytics.failures` returns.
    top
        How many code rows to show (largest first).

    Examples
    --------
    >>> from kmsg_analytics._analytics import _example
    >>> chart = top_failure_codes(_example().failures("2026-11-01", "2026-11-02"))
    >>> chart.to_dict()["encoding"]["y"]["field"]
    'code_label'
    """
    codes = getattr(failures, "codes", None)
    if not isinstance(codes, pl.DataFrame):
        _invalid(
            "failures",
            type(failures).__name__,
            "the FailureReport DeliveryAnalytics.failures returns",
        )
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= MAX_ROWS:
        _invalid("top", top, f"a whole number from 1 to {MAX_ROWS}")
    by = _group_columns(codes, "rank")
    shown = (
        codes.with_columns(_group_label(by))
        .with_columns(
            # the failures of the code's group: count / share, exact up to rounding
            pl.when(pl.col("share_of_failures_pct") > 0)
            .then((pl.col("count") * 100.0 / pl.col("share_of_failures_pct")).round(0))
            .otherwise(None)
            .cast(pl.Int64)
            .alias("failures"),
            pl.concat_str(
                [pl.col("group"), pl.col("code"), pl.col("message").fill_null("")],
                separator=" · ",
            )
            .str.strip_chars_end(" ·")
            .alias("code_label"),
        )
        .sort(["count", "group", "code"], descending=[True, False, False])
        .head(top)
        .select(
            "code_label",
            "group",
            "code",
            "message",
            "count",
            "failures",
            "share_of_failures_pct",
            "category",
            "category_label",
            "action",
        )
    )
    cut = f"상위 {top}개 (전체 {codes.height:,}개 코드)" if codes.height > top else None
    domain = list(m.FAILURE_CATEGORIES)
    labels = [m.FAILURE_CATEGORIES[k].label for k in domain]
    return _single(
        alt.Chart(
            shown,
            title=_title(
                "상위 실패 코드",
                ["전달 실패(FAILED·UNKNOWN, 추적 문제 제외)의 게이트웨이 상태 코드", cut],
            ),
        )
        .mark_bar()
        .encode(
            x=alt.X("count:Q", title="실패 메시지 수"),
            y=alt.Y("code_label:N", title=None, sort="-x", axis=alt.Axis(labelLimit=320)),
            color=alt.Color(
                "category_label:N",
                title="분류",
                scale=alt.Scale(domain=labels, range=[_CATEGORY_COLORS[k] for k in domain]),
            ),
            tooltip=[
                alt.Tooltip("group:N", title="게이트웨이"),
                alt.Tooltip("code:N", title="코드"),
                alt.Tooltip("message:N", title="메시지"),
                alt.Tooltip("count:Q", title="이 코드 (분자)", format=","),
                alt.Tooltip("failures:Q", title="게이트웨이 전체 실패 (분모)", format=","),
                alt.Tooltip("share_of_failures_pct:Q", title="실패 중 비율 %", format=".1f"),
                alt.Tooltip("category_label:N", title="분류"),
                alt.Tooltip("action:N", title="권장 조치"),
            ],
        )
        .properties(width=_WIDTH - 160, height=alt.Step(18))
    )


# --------------------------------------------------------------------------- 5. heatmap


def delivery_heatmap(rates: pl.DataFrame, *, min_n: int = m.DEFAULT_MIN_N) -> alt.LayerChart:
    """The rate by hour of day and weekday (in the analytics' time zone).

    Hourly (or finer) buckets are summed per weekday and hour, so the chart always has
    at most 168 cells, whatever the window; each cell's rate and Wilson interval are
    computed from the summed numerator and denominator.

    Parameters
    ----------
    rates
        What :meth:`DeliveryAnalytics.rates` returns with ``every="1h"`` (or finer).
    min_n
        Cells with a smaller denominator are "not enough data" (grey).

    Examples
    --------
    >>> from kmsg_analytics._analytics import _example
    >>> rates = _example().rates("2026-11-01", "2026-11-02", every="1h")
    >>> chart = delivery_heatmap(rates, min_n=1)
    >>> [layer["mark"]["type"] for layer in chart.to_dict()["layer"]]
    ['rect', 'rect']
    """
    _need(
        rates,
        ("bucket_start", "definition", "numerator", "denominator"),
        "rates",
        "DeliveryAnalytics.rates(every='1h')",
    )
    gap = _bucket_seconds(rates)
    if gap is not None and gap > 3_600:
        _invalid(
            "rates",
            f"buckets {gap / 3600:g} h apart",
            "hourly (or finer) buckets: DeliveryAnalytics.rates(..., every='1h')",
        )
    definition = str(rates.get_column("definition").first() or "")
    tz = _time_zone(rates, "bucket_start")
    cells = (
        rates.group_by(
            pl.col("bucket_start").dt.weekday().alias("weekday"),
            pl.col("bucket_start").dt.hour().alias("hour"),
        )
        .agg(pl.col("numerator").sum(), pl.col("denominator").sum())
        .with_columns(m.polars_rate_columns("numerator", "denominator", min_n=min_n))
        .with_columns(
            pl.col("weekday")
            .replace_strict({i + 1: d for i, d in enumerate(_WEEKDAYS)}, return_dtype=pl.String)
            .alias("weekday_label"),
        )
        .sort("weekday", "hour")
        .select(
            "weekday",
            "weekday_label",
            "hour",
            *m.RATE_COLUMNS,
        )
    )
    label = _rate_label(definition)
    color_scale = (
        alt.Scale(scheme="greens")
        if cells.get_column("rate_pct").drop_nulls().len()
        else alt.Scale(scheme="greens", domain=[0, 100])
    )
    tooltip = [
        alt.Tooltip("weekday_label:N", title="요일"),
        alt.Tooltip("hour:O", title="시"),
        alt.Tooltip("rate_pct:Q", title=f"{label} %", format=".2f"),
        alt.Tooltip("numerator:Q", title="분자", format=","),
        alt.Tooltip("denominator:Q", title="분모 (표본 수)", format=","),
        alt.Tooltip("ci_low_pct:Q", title="95% 구간 하한 %", format=".2f"),
        alt.Tooltip("ci_high_pct:Q", title="95% 구간 상한 %", format=".2f"),
    ]
    base = alt.Chart(cells).encode(
        x=alt.X("hour:O", title="시 (요청 시각)"),
        y=alt.Y("weekday_label:O", title="요일", sort=list(_WEEKDAYS)),
        tooltip=tooltip,
    )
    grey = base.mark_rect(stroke="white", strokeWidth=1, color="#e5e7eb")
    rated = (
        base.transform_filter("isValid(datum.rate_pct)")
        .mark_rect(stroke="white", strokeWidth=1)
        .encode(color=alt.Color("rate_pct:Q", title=f"{label} %", scale=color_scale))
    )
    title = _title(
        f"요일·시간대별 {label}", [f"시간대 {tz} · 분모 {min_n} 미만은 회색 (데이터 부족)"]
    )
    return _layered(
        alt.layer(grey, rated, title=title).properties(width=alt.Step(22), height=alt.Step(22))
    )


# --------------------------------------------------------------------------- 6. failover


def failover_funnel(
    funnel: FailoverFunnel,
    *,
    stages: Sequence[str] = _FUNNEL_STAGES,
) -> alt.Chart:
    """The AlimTalk failover funnel: how many AlimTalks failed, fell back and still arrived.

    Parameters
    ----------
    funnel
        What :meth:`DeliveryAnalytics.failover_funnel` returns (with or without ``by``:
        groups become colours side by side).
    stages
        Which stages to show, in order (default: the main path).

    Examples
    --------
    >>> from kmsg_analytics._analytics import _example
    >>> chart = failover_funnel(_example().failover_funnel("2026-11-01", "2026-11-02"))
    >>> chart.to_dict()["encoding"]["y"]["field"]
    'label'
    """
    table = getattr(funnel, "stages", None)
    if not isinstance(table, pl.DataFrame):
        _invalid(
            "funnel",
            type(funnel).__name__,
            "the FailoverFunnel DeliveryAnalytics.failover_funnel returns",
        )
    known = table.get_column("stage").unique().to_list()
    for s in stages:
        if s not in known:
            _invalid("stages", s, "some of " + ", ".join(sorted(known)))
    by = _group_columns(table, "stage")
    order = {s: i for i, s in enumerate(stages)}
    base = table.with_columns(_group_label(by))
    alimtalk = base.filter(pl.col("stage") == "alimtalk").select(
        "group", pl.col("count").alias("alimtalk")
    )
    failed = base.filter(pl.col("stage") == "failed").select(
        "group", pl.col("count").alias("failed")
    )
    data = (
        base.filter(pl.col("stage").is_in(list(stages)))
        .join(alimtalk, on="group", how="left")
        .join(failed, on="group", how="left")
        .with_columns(pl.col("stage").replace_strict(order, return_dtype=pl.Int32).alias("order"))
        .sort("order", "group")
        .select(
            "group",
            "stage",
            "label",
            "order",
            "count",
            "alimtalk",
            "failed",
            "pct_of_alimtalk",
            "pct_of_failed",
        )
    )
    labels = data.unique("stage", maintain_order=True).get_column("label").to_list()
    encoding: dict[str, Any] = {}
    if by:
        encoding["yOffset"] = alt.YOffset("group:N")
        encoding["color"] = alt.Color("group:N", title=" · ".join(by))
    else:
        encoding["color"] = alt.value("#4c78a8")
    return _single(
        alt.Chart(
            data,
            title=_title(
                "알림톡 대체발송 퍼널",
                ["원 알림톡 메시지 기준 · 대체발송 기록(<id>:api-fallback)이 있으면 그 결과까지"],
            ),
        )
        .mark_bar()
        .encode(
            x=alt.X("count:Q", title="메시지 수"),
            y=alt.Y("label:N", title=None, sort=labels, axis=alt.Axis(labelLimit=240)),
            tooltip=[
                alt.Tooltip("label:N", title="단계"),
                alt.Tooltip("group:N", title="분류"),
                alt.Tooltip("count:Q", title="메시지 (분자)", format=","),
                alt.Tooltip("alimtalk:Q", title="알림톡 전체 (분모)", format=","),
                alt.Tooltip("pct_of_alimtalk:Q", title="알림톡 대비 %", format=".1f"),
                alt.Tooltip("failed:Q", title="알림톡 실패", format=","),
                alt.Tooltip("pct_of_failed:Q", title="실패 대비 %", format=".1f"),
            ],
            **encoding,
        )
        .properties(width=_WIDTH - 140, height=alt.Step(22 if not by else 10))
    )


# --------------------------------------------------------------------------- 7. maturity


def rate_maturity(curve: pl.DataFrame, *, max_rows: int = MAX_ROWS) -> alt.LayerChart:
    """How a cohort's rate settles with message age (one line per group, with its band).

    Parameters
    ----------
    curve
        What :meth:`DeliveryAnalytics.rate_maturity` returns.
    max_rows
        Keep only the largest groups beyond this many rows.

    Examples
    --------
    >>> from kmsg_analytics._analytics import _example
    >>> an = _example()
    >>> chart = rate_maturity(an.rate_maturity("2026-11-01", "2026-11-02", ages=["10s", "1m"]))
    >>> [layer["mark"]["type"] for layer in chart.to_dict()["layer"]]
    ['area', 'line', 'point']
    """
    _need(
        curve,
        ("age", "age_s", "messages", "definition", "numerator", "denominator", "rate_pct"),
        "curve",
        "DeliveryAnalytics.rate_maturity()",
    )
    max_rows = _check_max_rows(max_rows)
    by = _group_columns(curve, "age")
    data = curve.with_columns(_group_label(by))
    note = None
    if data.height > max_rows:
        ages = max(data.get_column("age").n_unique(), 1)
        keep = (
            data.group_by("group")
            .agg(pl.col("messages").max())
            .sort(["messages", "group"], descending=[True, False])
            .head(max(max_rows // ages, 1))
            .get_column("group")
        )
        note = f"메시지가 많은 {keep.len():,}개 분류만 표시"
        data = data.filter(pl.col("group").is_in(keep.implode()))
    data = data.select(
        "group",
        "age",
        "age_s",
        "messages",
        *m.RATE_COLUMNS,
    )
    definition = str(curve.get_column("definition").first() or "")
    label = _rate_label(definition)
    ages_sorted = data.unique("age").sort("age_s").get_column("age").to_list()
    x = alt.X("age:O", title="메시지 나이 (요청 후 경과)", sort=ages_sorted)
    color = alt.Color(
        "group:N",
        title=" · ".join(by) if by else "",
        legend=alt.Legend(symbolType="circle", symbolOpacity=1.0),
    )
    base = alt.Chart(data).encode(x=x, color=color)
    band = base.mark_area(opacity=0.15).encode(
        y=alt.Y("ci_low_pct:Q", title=f"{label} (%)", scale=alt.Scale(domain=[0, 100])),
        y2="ci_high_pct:Q",
    )
    line = base.mark_line(strokeWidth=2).encode(y="rate_pct:Q")
    points = base.mark_point(filled=True, size=36).encode(
        y="rate_pct:Q",
        tooltip=[
            alt.Tooltip("group:N", title="분류"),
            alt.Tooltip("age:N", title="나이"),
            alt.Tooltip("rate_pct:Q", title=f"{label} %", format=".2f"),
            alt.Tooltip("numerator:Q", title="분자", format=","),
            alt.Tooltip("denominator:Q", title="분모", format=","),
            alt.Tooltip("messages:Q", title="이 나이까지 관찰된 메시지", format=","),
            alt.Tooltip("ci_low_pct:Q", title="95% 구간 하한 %", format=".2f"),
            alt.Tooltip("ci_high_pct:Q", title="95% 구간 상한 %", format=".2f"),
        ],
    )
    notes = [
        "각 나이에서 그때까지 기록된 상태로 계산 (스냅숏 이력) · 띠: Wilson 95% 구간",
        note,
    ]
    return _layered(
        alt.layer(band, line, points, title=_title(f"{label} 성숙 곡선", notes)).properties(
            width=_WIDTH, height=_HEIGHT
        )
    )


# --------------------------------------------------------------------------- 8. what changed


def what_changed(comparison: Comparison, *, top: int = 20) -> alt.Chart:
    """The slices that explain a change of rate between two periods (percentage points).

    Parameters
    ----------
    comparison
        What :meth:`DeliveryAnalytics.compare` returns.
    top
        How many slices to show (largest contribution first).

    Examples
    --------
    >>> from kmsg_analytics._analytics import _example
    >>> c = _example().compare(("2026-11-01T00:03", "2026-11-01T00:06"),
    ...                        ("2026-11-01T00:00", "2026-11-01T00:02"))
    >>> what_changed(c).to_dict()["encoding"]["x"]["field"]
    'contribution_pp'
    """
    slices = getattr(comparison, "slices", None)
    overall = getattr(comparison, "overall", None)
    if not isinstance(slices, pl.DataFrame) or not isinstance(overall, pl.DataFrame):
        _invalid(
            "comparison",
            type(comparison).__name__,
            "the Comparison DeliveryAnalytics.compare returns",
        )
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= MAX_ROWS:
        _invalid("top", top, f"a whole number from 1 to {MAX_ROWS}")
    data = (
        slices.filter(pl.col("contribution_pp").is_not_null())
        .sort(
            [pl.col("contribution_pp").abs(), "dimension", "value"],
            descending=[True, False, False],
        )
        .head(top)
        .with_columns(
            pl.concat_str([pl.col("dimension"), pl.col("value")], separator=" = ").alias("slice")
        )
        .select(
            "slice",
            "dimension",
            "value",
            "contribution_pp",
            "rate_effect_pp",
            "mix_effect_pp",
            "baseline_rate_pct",
            "period_rate_pct",
            "baseline_numerator",
            "baseline_n",
            "period_numerator",
            "period_n",
        )
    )
    change = overall.filter(pl.col("period") == "period").get_column("change_pp").first()
    label = _rate_label(comparison.definition)
    sub = f"전체 변화 {change:+.2f}%p" if isinstance(change, float) else "전체 변화 계산 불가"
    return _single(
        alt.Chart(data, title=_title(f"무엇이 바뀌었나: {label}", [sub, "막대: 분류별 기여 (%p)"]))
        .mark_bar()
        .encode(
            x=alt.X("contribution_pp:Q", title="변화 기여 (%p)"),
            y=alt.Y("slice:N", title=None, sort="-x", axis=alt.Axis(labelLimit=260)),
            color=alt.condition(
                "datum.contribution_pp < 0", alt.value("#d9534f"), alt.value("#2f9e6e")
            ),
            tooltip=[
                alt.Tooltip("slice:N", title="분류"),
                alt.Tooltip("contribution_pp:Q", title="기여 %p", format="+.2f"),
                alt.Tooltip("rate_effect_pp:Q", title="비율 효과 %p", format="+.2f"),
                alt.Tooltip("mix_effect_pp:Q", title="구성 효과 %p", format="+.2f"),
                alt.Tooltip("baseline_rate_pct:Q", title="기준 기간 %", format=".2f"),
                alt.Tooltip("baseline_numerator:Q", title="기준 분자", format=","),
                alt.Tooltip("baseline_n:Q", title="기준 분모", format=","),
                alt.Tooltip("period_rate_pct:Q", title="비교 기간 %", format=".2f"),
                alt.Tooltip("period_numerator:Q", title="비교 분자", format=","),
                alt.Tooltip("period_n:Q", title="비교 분모", format=","),
            ],
        )
        .properties(width=_WIDTH - 160, height=alt.Step(18))
    )
