"""Delivery metrics, each defined once, and compilers that run them on Polars or through Ibis.

A metric is data, not code: a :class:`CountMetric` names a predicate over a tracking
record (its current state), a :class:`RateMetric` names a numerator and a denominator
predicate. Predicates are tiny frozen trees (:class:`StatusIs`, :class:`HasGatewayId`,
:class:`ErrorCodeIs`, combined with ``&``, ``|`` and ``~``) that compile to a Polars
expression (:meth:`Predicate.polars`) or to an Ibis expression over a table
(:meth:`Predicate.ibis`). Everything downstream (counts per group, Wilson intervals, the
"not enough data" rule, k-msg's zero-for-empty parity rates) is written once per
backend here, so that the same definitions give the same numbers on Polars, DuckDB or
Spark without a second copy of any metric.

Counts are additive: aggregate them per fine group once, sum them for coarser groups,
and only then turn them into rates (:func:`polars_rate_columns`).

The failure taxonomy (which gateway code means "permanent", "temporary", "policy /
blocked", "not on KakaoTalk" or "tracking problem") is data as well:
:data:`FAILURE_CATEGORIES`, :data:`CODE_RULES` and :data:`KEYWORD_RULES`, compiled by
:func:`failure_category_expr`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, NoReturn

import polars as pl

from ._errors import InvalidRecordError
from ._records import DELIVERY_STATUSES
from ._schema import GATEWAY_FLAG, PRECEDENCE_OFFSET, gateway_flag

if TYPE_CHECKING:
    import ibis.expr.types as ir

__all__ = [
    "CODE_RULES",
    "COUNTS",
    "DEFAULT_MIN_N",
    "FAILURE_CATEGORIES",
    "KEYWORD_RULES",
    "KMSG_RATES",
    "PREDICATE_COLUMNS",
    "RATES",
    "STATUS_COUNTS",
    "STATUS_LABELS",
    "TRACKING_ERROR_CODES",
    "WEIGHT",
    "Z95",
    "Always",
    "CodeRule",
    "CountMetric",
    "ErrorCodeIs",
    "FailureCategory",
    "HasGatewayId",
    "KeywordRule",
    "Predicate",
    "RateMetric",
    "StatusIs",
    "failure_category_expr",
    "ibis_aggregations",
    "ibis_latest",
    "ibis_rate_columns",
    "ibis_rate_table",
    "metric_columns",
    "polars_aggregations",
    "polars_parity_rate",
    "polars_rate_columns",
    "polars_rate_table",
    "polars_reduce",
    "rate_metric",
    "time_bucket",
    "wilson_interval",
]


def _invalid(field: str, value: object, expected: str) -> NoReturn:
    """Raise :class:`InvalidRecordError` naming the field, the value and what is valid."""
    raise InvalidRecordError(field, value, expected)


#: The normal quantile of a two-sided 95% interval.
Z95: Final = 1.959963984540054

#: Below this many messages in a denominator a rate is "not enough data" (no number).
DEFAULT_MIN_N: Final = 30

#: ``last_error.code`` values the tracking service itself writes: tracking problems,
#: counted apart from delivery failures.
TRACKING_ERROR_CODES: Final = (
    "MISSING_PROVIDER_MESSAGE_ID",
    "TRACKING_TIMEOUT",
    "PROVIDER_NOT_FOUND",
    "UNSUPPORTED_PROVIDER",
)

STATUS_LABELS: Final[Mapping[str, str]] = {
    "PENDING": "대기",
    "SENT": "발송 (결과 대기)",
    "DELIVERED": "성공",
    "FAILED": "실패",
    "CANCELLED": "취소",
    "UNKNOWN": "결과 미확인",
}


# --------------------------------------------------------------------------- predicates


class Predicate:
    """A condition on one tracking record; compiles to Polars and to Ibis.

    Combine predicates with ``&``, ``|`` and ``~``. A record whose column is null does
    not match a leaf predicate (predicates are two-valued, never null).

    Examples
    --------
    >>> p = StatusIs(("DELIVERED", "FAILED")) & ~ErrorCodeIs(("TRACKING_TIMEOUT",))
    >>> p.describe()
    'status in (DELIVERED, FAILED) and not last_error.code in (TRACKING_TIMEOUT)'
    >>> frame = pl.DataFrame({"status": ["DELIVERED", "SENT", None],
    ...                       "last_error": [None, None, None]},
    ...                      schema={"status": pl.String,
    ...                              "last_error": pl.Struct({"code": pl.String})})
    >>> frame.select(p.polars()).to_series().to_list()
    [True, False, False]
    """

    def polars(self) -> pl.Expr:  # pragma: no cover - abstract
        """The predicate as a boolean Polars expression (never null)."""
        raise NotImplementedError

    def ibis(self, table: ir.Table) -> ir.BooleanValue:  # pragma: no cover - abstract
        """The predicate as a boolean Ibis expression over ``table`` (never null)."""
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        """A short human description (shown beside every rate)."""
        raise NotImplementedError

    def columns(self) -> frozenset[str]:  # pragma: no cover - abstract
        """The record columns the predicate reads."""
        raise NotImplementedError

    def __and__(self, other: Predicate) -> Predicate:
        return AllOf((self, other))

    def __or__(self, other: Predicate) -> Predicate:
        return AnyOf((self, other))

    def __invert__(self) -> Predicate:
        return Not(self)


@dataclass(frozen=True)
class Always(Predicate):
    """Every record."""

    def polars(self) -> pl.Expr:
        return pl.lit(True)

    def ibis(self, table: ir.Table) -> ir.BooleanValue:
        import ibis

        return ibis.literal(True)

    def describe(self) -> str:
        return "all messages"

    def columns(self) -> frozenset[str]:
        return frozenset()


@dataclass(frozen=True)
class StatusIs(Predicate):
    """The record's current status is one of ``statuses``."""

    statuses: tuple[str, ...]

    def __post_init__(self) -> None:
        for s in self.statuses:
            if s not in DELIVERY_STATUSES:
                _invalid("status", s, "one of " + ", ".join(DELIVERY_STATUSES))

    def polars(self) -> pl.Expr:
        col = pl.col("status")
        expr = col == self.statuses[0] if len(self.statuses) == 1 else col.is_in(self.statuses)
        return expr.fill_null(False)

    def ibis(self, table: ir.Table) -> ir.BooleanValue:
        return table["status"].isin(list(self.statuses)).fill_null(False)

    def describe(self) -> str:
        if len(self.statuses) == 1:
            return f"status {self.statuses[0]}"
        return "status in (" + ", ".join(self.statuses) + ")"

    def columns(self) -> frozenset[str]:
        return frozenset({"status"})


@dataclass(frozen=True)
class HasGatewayId(Predicate):
    """The gateway accepted the message: it has a non-empty ``provider_message_id``.

    Lake scans of the folded state also carry this as a column (``has_gateway_id``):
    :func:`polars_reduce` counts that column when the frame has it, so the gateway ids
    themselves are not decoded.
    """

    def polars(self) -> pl.Expr:
        return gateway_flag()

    def ibis(self, table: ir.Table) -> ir.BooleanValue:
        return (table["provider_message_id"] != "").fill_null(False)

    def describe(self) -> str:
        return "accepted by a gateway (has a gateway message id)"

    def columns(self) -> frozenset[str]:
        return frozenset({"provider_message_id"})


@dataclass(frozen=True)
class ErrorCodeIs(Predicate):
    """The record's ``last_error.code`` is one of ``codes``."""

    codes: tuple[str, ...]

    def polars(self) -> pl.Expr:
        return pl.col("last_error").struct.field("code").is_in(self.codes).fill_null(False)

    def ibis(self, table: ir.Table) -> ir.BooleanValue:
        return table["last_error"]["code"].isin(list(self.codes)).fill_null(False)

    def describe(self) -> str:
        return "last_error.code in (" + ", ".join(self.codes) + ")"

    def columns(self) -> frozenset[str]:
        return frozenset({"last_error"})


@dataclass(frozen=True)
class AllOf(Predicate):
    """Every one of ``parts``."""

    parts: tuple[Predicate, ...]

    def polars(self) -> pl.Expr:
        return pl.all_horizontal([p.polars() for p in self.parts])

    def ibis(self, table: ir.Table) -> ir.BooleanValue:
        out = self.parts[0].ibis(table)
        for p in self.parts[1:]:
            out = out & p.ibis(table)
        return out

    def describe(self) -> str:
        return " and ".join(p.describe() for p in self.parts)

    def columns(self) -> frozenset[str]:
        return frozenset().union(*(p.columns() for p in self.parts))


@dataclass(frozen=True)
class AnyOf(Predicate):
    """Any of ``parts``."""

    parts: tuple[Predicate, ...]

    def polars(self) -> pl.Expr:
        return pl.any_horizontal([p.polars() for p in self.parts])

    def ibis(self, table: ir.Table) -> ir.BooleanValue:
        out = self.parts[0].ibis(table)
        for p in self.parts[1:]:
            out = out | p.ibis(table)
        return out

    def describe(self) -> str:
        return "(" + " or ".join(p.describe() for p in self.parts) + ")"

    def columns(self) -> frozenset[str]:
        return frozenset().union(*(p.columns() for p in self.parts))


@dataclass(frozen=True)
class Not(Predicate):
    """Not ``part``."""

    part: Predicate

    def polars(self) -> pl.Expr:
        return ~self.part.polars()

    def ibis(self, table: ir.Table) -> ir.BooleanValue:
        return ~self.part.ibis(table)

    def describe(self) -> str:
        return "not " + self.part.describe()

    def columns(self) -> frozenset[str]:
        return self.part.columns()


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class CountMetric:
    """How many records match ``predicate`` (a column named ``name``)."""

    name: str
    label: str
    predicate: Predicate
    description: str


@dataclass(frozen=True)
class RateMetric:
    """A rate: records matching ``numerator`` among those matching ``denominator``.

    The numerator is always counted inside the denominator (``numerator & denominator``).
    ``kmsg_name`` is k-msg's name for the rates it also has.
    """

    name: str
    label: str
    numerator: Predicate
    denominator: Predicate
    description: str
    kmsg_name: str | None = None

    def definition(self) -> str:
        """``numerator ÷ denominator`` in words."""
        return f"{self.numerator.describe()} ÷ {self.denominator.describe()}"


def _status_counts() -> tuple[CountMetric, ...]:
    return tuple(
        CountMetric(
            s.lower(), STATUS_LABELS[s], StatusIs((s,)), f"messages whose current status is {s}"
        )
        for s in DELIVERY_STATUSES
    )


#: ``total`` and one count per status (lower-case column names: ``pending`` ... ``unknown``).
STATUS_COUNTS: Final = _status_counts()
COUNTS: Final = (
    CountMetric("total", "전체", Always(), "messages requested in the window"),
    *STATUS_COUNTS,
)

_DELIVERED = StatusIs(("DELIVERED",))
_FAILED = StatusIs(("FAILED",))

#: The named rate definitions, by name. The first three are k-msg's ``getSummary`` rates.
RATES: Final[Mapping[str, RateMetric]] = {
    r.name: r
    for r in (
        RateMetric(
            "delivered_of_total",
            "전체 대비 성공률",
            _DELIVERED,
            Always(),
            "DELIVERED among every message requested in the window; messages still in flight "
            "count as not delivered (k-msg deliveredOfTotalPct)",
            "deliveredOfTotalPct",
        ),
        RateMetric(
            "failed_of_total",
            "전체 대비 실패율",
            _FAILED,
            Always(),
            "FAILED among every message requested in the window (k-msg failedOfTotalPct; "
            "GOV.UK Notify's failed ÷ requested)",
            "failedOfTotalPct",
        ),
        RateMetric(
            "delivered_of_finalized",
            "확정 건 대비 성공률",
            _DELIVERED,
            StatusIs(("DELIVERED", "FAILED")),
            "DELIVERED among messages with a final answer from the gateway (DELIVERED or "
            "FAILED); CANCELLED, UNKNOWN and in-flight messages are left out of both halves "
            "(k-msg deliveredOfFinalizedPct)",
            "deliveredOfFinalizedPct",
        ),
        RateMetric(
            "reached",
            "발송 건 대비 도달률",
            _DELIVERED,
            HasGatewayId() & ~StatusIs(("CANCELLED",)),
            "DELIVERED among every message a gateway accepted (it has a gateway message id) "
            "and that was not cancelled: delivered of all sent",
        ),
        RateMetric(
            "failure_share",
            "종료 건 중 실패 비율",
            StatusIs(("FAILED", "UNKNOWN")),
            StatusIs(("DELIVERED", "FAILED", "UNKNOWN")),
            "messages that ended without a confirmed delivery (FAILED or UNKNOWN) among those "
            "that ended (DELIVERED, FAILED or UNKNOWN); cancelled and in-flight ones are left out",
        ),
        RateMetric(
            "unknown_of_total",
            "전체 대비 결과 미확인",
            StatusIs(("UNKNOWN",)),
            Always(),
            "UNKNOWN (no final answer: timeouts, lookups that failed, missing gateway ids) "
            "among every message",
        ),
        RateMetric(
            "in_flight_of_total",
            "전체 대비 진행 중",
            StatusIs(("PENDING", "SENT")),
            Always(),
            "messages still waiting for a result (PENDING or SENT) among every message; a high "
            "share means the other rates have not settled yet",
        ),
    )
}

#: k-msg's three rates, in its order.
KMSG_RATES: Final = ("delivered_of_total", "failed_of_total", "delivered_of_finalized")


def rate_metric(definition: str | RateMetric) -> RateMetric:
    """Look up a rate by name (or pass a :class:`RateMetric` through).

    Examples
    --------
    >>> rate_metric("delivered_of_finalized").kmsg_name
    'deliveredOfFinalizedPct'
    """
    if isinstance(definition, RateMetric):
        return definition
    found = RATES.get(definition) if isinstance(definition, str) else None
    if found is None:
        _invalid("definition", definition, "one of " + ", ".join(RATES) + " or a RateMetric")
    return found


# --------------------------------------------------------------------------- Wilson


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of ``k`` successes in ``n`` trials (``None`` when ``n == 0``).

    Examples
    --------
    >>> lo, hi = wilson_interval(8, 10)
    >>> round(lo, 4), round(hi, 4)
    (0.4902, 0.9433)
    >>> wilson_interval(0, 0) is None
    True
    """
    if n <= 0:
        return None
    lo, hi = _wilson(float(k), float(n), z, math.sqrt)
    return (0.0 if k <= 0 else lo), (1.0 if k >= n else hi)


def _wilson(k: Any, n: Any, z: float, sqrt: Any) -> tuple[Any, Any]:
    """The Wilson bounds written once for floats, Polars and Ibis expressions.

    ``k`` and ``n`` must already be floating point (``n * n`` would overflow integers).
    For ``0 < k < n`` both bounds lie strictly inside (0, 1); callers pin ``k == 0`` to
    a lower bound of 0 and ``k == n`` to an upper bound of 1, so no clipping is needed.
    """
    z2 = z * z
    p = k / n
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z * sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    return centre - half, centre + half


# --------------------------------------------------------------------------- Polars


#: The record columns predicates read; :func:`polars_reduce` keeps exactly these.
PREDICATE_COLUMNS: Final = ("status", "provider_message_id", "last_error")

#: The weight column :func:`polars_reduce` adds (how many records a row stands for).
WEIGHT: Final = "__n"


def metric_columns(
    counts: Sequence[CountMetric] = COUNTS, rates: Sequence[RateMetric] = ()
) -> frozenset[str]:
    """The record columns that ``counts`` and ``rates`` read (what to keep when reducing)."""
    preds = [c.predicate for c in counts] + [p for r in rates for p in (r.numerator, r.denominator)]
    return frozenset().union(*(p.columns() for p in preds))


def polars_reduce(
    frame: pl.LazyFrame,
    keys: Sequence[pl.Expr | str] = (),
    columns: Iterable[str] = PREDICATE_COLUMNS,
) -> pl.LazyFrame:
    """Collapse records to one row per key and predicate signature, weighted by :data:`WEIGHT`.

    A predicate only reads :data:`PREDICATE_COLUMNS`, and only through the status, whether
    the gateway id is empty and the error code; rows that agree on those (and on the keys)
    are interchangeable for every metric. The reduced frame is tiny, so the metric
    aggregations (:func:`polars_aggregations` with ``weight=WEIGHT``) cost nothing.
    Only ``columns`` (see :func:`metric_columns`) are kept, so a query reads no more.

    Examples
    --------
    >>> frame = pl.LazyFrame({"provider_id": ["a", "a", "b"], "status": ["SENT"] * 3,
    ...                       "provider_message_id": ["g1", "g2", ""],
    ...                       "last_error": [None, None, None]},
    ...                      schema_overrides={"last_error": pl.Struct({"code": pl.String})})
    >>> out = polars_reduce(frame, ["provider_id"]).sort("provider_id").collect()
    >>> out.get_column(WEIGHT).to_list()
    [2, 1]
    """
    wanted = set(columns)
    names = [k if isinstance(k, str) else k.meta.output_name() for k in keys]
    signature: list[pl.Expr] = []
    restore: list[pl.Expr] = []
    if "status" in wanted and "status" not in names:
        signature.append(pl.col("status"))
    if "last_error" in wanted:
        signature.append(pl.col("last_error").struct.field("code").alias("__err"))
        restore.append(pl.struct(pl.col("__err").alias("code")).alias("last_error"))
    groups = [*keys, *signature]
    if "provider_message_id" not in wanted:
        out = frame.group_by(groups).agg(pl.len().cast(pl.Int64).alias(WEIGHT))
    else:
        # the gateway-id flag is counted, not grouped by: one key column fewer in the
        # pass over every record; each group then becomes a row per flag value. A lake
        # scan carries the flag as a column: one bit read per record, no id decoded
        stored = GATEWAY_FLAG in frame.collect_schema().names()
        has = pl.col(GATEWAY_FLAG) if stored else HasGatewayId().polars()
        counted = frame.group_by(groups).agg(
            pl.len().cast(pl.Int64).alias(WEIGHT), has.sum().cast(pl.Int64).alias("__gw_n")
        )
        out = (
            counted.with_columns(
                pl.concat_list(pl.col("__gw_n"), pl.col(WEIGHT) - pl.col("__gw_n")).alias(WEIGHT),
                pl.concat_list(pl.lit("x"), pl.lit("")).alias("provider_message_id"),
            )
            .explode([WEIGHT, "provider_message_id"])
            .filter(pl.col(WEIGHT) > 0)
            .drop("__gw_n")
        )
    if restore:
        helpers = [e.meta.output_name() for e in signature if e.meta.output_name().startswith("__")]
        out = out.with_columns(restore).drop(helpers)
    return out


def _pl_count(pred: Predicate, weight: str | None) -> pl.Expr:
    if weight is not None:
        w = pl.col(weight)
        out = w.sum() if isinstance(pred, Always) else w.filter(pred.polars()).sum()
        return out.cast(pl.Int64)
    if isinstance(pred, Always):
        return pl.len().cast(pl.Int64)
    return pred.polars().sum().cast(pl.Int64)


def polars_aggregations(
    counts: Sequence[CountMetric] = COUNTS,
    rates: Sequence[RateMetric] = (),
    *,
    weight: str | None = None,
) -> list[pl.Expr]:
    """Aggregations giving each count, and ``<rate>_num``/``<rate>_den`` for each rate.

    All results are additive ``Int64`` counts: sum them over groups freely. With
    ``weight`` (over a :func:`polars_reduce` frame) each row counts that many times.
    """
    out = [_pl_count(c.predicate, weight).alias(c.name) for c in counts]
    for r in rates:
        out.append(_pl_count(r.numerator & r.denominator, weight).alias(f"{r.name}_num"))
        out.append(_pl_count(r.denominator, weight).alias(f"{r.name}_den"))
    return out


#: The columns every answer gives beside a rate: its counts, the rate, its Wilson
#: interval and whether the denominator is large enough (see :func:`polars_rate_columns`).
RATE_COLUMNS: Final = (
    "numerator",
    "denominator",
    "rate_pct",
    "ci_low_pct",
    "ci_high_pct",
    "enough_data",
)

#: The columns of a table of named rates, in the order reports show them.
RATE_TABLE_COLUMNS: Final = ("rate", "label", *RATE_COLUMNS, "definition")


def polars_rate_columns(
    num: str,
    den: str,
    *,
    prefix: str = "",
    min_n: int = DEFAULT_MIN_N,
    z: float = Z95,
) -> list[pl.Expr]:
    """Rate, Wilson interval and small-sample flag from two count columns.

    Gives ``<prefix>rate_pct`` (null when the denominator is under ``min_n``: "not
    enough data", never 0%), ``<prefix>ci_low_pct``/``<prefix>ci_high_pct`` (the
    Wilson interval, null only when the denominator is 0) and ``<prefix>enough_data``.

    Examples
    --------
    >>> frame = pl.DataFrame({"k": [8, 0, 0], "n": [40, 0, 3]})
    >>> out = frame.with_columns(polars_rate_columns("k", "n", min_n=30))
    >>> out.get_column("rate_pct").to_list()
    [20.0, None, None]
    >>> out.get_column("enough_data").to_list()
    [True, False, False]
    """
    k = pl.col(num).cast(pl.Float64)
    n = pl.col(den).cast(pl.Float64)
    lo, hi = _wilson(k, n, z, lambda e: e.sqrt())
    has = pl.col(den) > 0
    enough = (pl.col(den) >= max(min_n, 1)).fill_null(False)
    none, all_ = pl.col(num) <= 0, pl.col(num) >= pl.col(den)
    return [
        pl.when(enough).then((k / n) * 100.0).otherwise(None).alias(f"{prefix}rate_pct"),
        pl.when(~has)
        .then(None)
        .when(none)
        .then(0.0)
        .otherwise(lo * 100.0)
        .alias(f"{prefix}ci_low_pct"),
        pl.when(~has)
        .then(None)
        .when(all_)
        .then(100.0)
        .otherwise(hi * 100.0)
        .alias(f"{prefix}ci_high_pct"),
        enough.alias(f"{prefix}enough_data"),
    ]


def polars_parity_rate(num: str, den: str, name: str) -> pl.Expr:
    """k-msg's rate: ``(num / den) * 100``, and 0 when the denominator is 0."""
    n = pl.col(den)
    return pl.when(n > 0).then((pl.col(num) / n) * 100.0).otherwise(0.0).alias(name)


def time_bucket(every: str, tz: str = "UTC") -> pl.Expr:
    """The start of the ``requested_at`` bucket (in time zone ``tz``), as ``bucket_start``."""
    col = pl.col("requested_at")
    if tz != "UTC":
        col = col.dt.convert_time_zone(tz)
    return col.dt.truncate(every).alias("bucket_start")


def polars_rate_table(
    frame: pl.LazyFrame,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    by: Sequence[str] = (),
    every: str | None = None,
    rates: Sequence[RateMetric] = tuple(RATES.values()),
    min_n: int = DEFAULT_MIN_N,
) -> pl.LazyFrame:
    """Counts and every rate per group (and time bucket) over current records.

    The twin of :func:`ibis_rate_table`: the same columns from the same definitions.
    ``start``/``end`` bound ``requested_at`` (inclusive). Rows are sorted by the keys.
    """
    if start is not None:
        frame = frame.filter(pl.col("requested_at") >= start)
    if end is not None:
        frame = frame.filter(pl.col("requested_at") <= end)
    keys: list[pl.Expr] = [pl.col(c) for c in by]
    names = list(by)
    if every is not None:
        keys.insert(0, time_bucket(every))
        names.insert(0, "bucket_start")
    reduced = polars_reduce(frame, keys, metric_columns(COUNTS, rates))
    aggs = polars_aggregations(COUNTS, rates, weight=WEIGHT)
    out = reduced.group_by(names).agg(aggs) if names else reduced.select(aggs)
    cols: list[pl.Expr] = []
    for r in rates:
        cols += polars_rate_columns(
            f"{r.name}_num", f"{r.name}_den", prefix=f"{r.name}_", min_n=min_n
        )
    out = out.with_columns(cols)
    return out.sort(names, nulls_last=True) if names else out


# --------------------------------------------------------------------------- Ibis


def _ib_count(table: ir.Table, pred: Predicate) -> ir.IntegerScalar:
    if isinstance(pred, Always):
        return table.count()
    return pred.ibis(table).cast("int64").sum().fill_null(0)


def ibis_aggregations(
    table: ir.Table, counts: Sequence[CountMetric] = COUNTS, rates: Sequence[RateMetric] = ()
) -> dict[str, ir.IntegerScalar]:
    """The Ibis twin of :func:`polars_aggregations` (a name -> aggregate mapping)."""
    out = {c.name: _ib_count(table, c.predicate) for c in counts}
    for r in rates:
        out[f"{r.name}_num"] = _ib_count(table, r.numerator & r.denominator)
        out[f"{r.name}_den"] = _ib_count(table, r.denominator)
    return out


def ibis_rate_columns(
    table: ir.Table,
    num: str,
    den: str,
    *,
    prefix: str = "",
    min_n: int = DEFAULT_MIN_N,
    z: float = Z95,
) -> dict[str, ir.Value]:
    """The Ibis twin of :func:`polars_rate_columns` (a name -> expression mapping)."""
    import ibis

    k = table[num].cast("float64")
    n = table[den].cast("float64")
    lo, hi = _wilson(k, n, z, lambda e: e.sqrt())
    has = table[den] > 0
    enough = table[den] >= max(min_n, 1)
    null = ibis.null().cast("float64")
    low = ibis.ifelse(table[num] <= 0, 0.0, lo * 100.0)
    high = ibis.ifelse(table[num] >= table[den], 100.0, hi * 100.0)
    return {
        f"{prefix}rate_pct": ibis.ifelse(enough, (k / n) * 100.0, null),
        f"{prefix}ci_low_pct": ibis.ifelse(has, low, null),
        f"{prefix}ci_high_pct": ibis.ifelse(has, high, null),
        f"{prefix}enough_data": enough,
    }


_IBIS_UNITS: Final = {"1h": "h", "1d": "D", "1w": "W", "1mo": "M"}


def ibis_latest(history: ir.Table) -> ir.Table:
    """The current snapshot of each message in a snapshot table (the store's rule).

    The highest ``seq`` wins, except that a ``send`` snapshot never beats any other kind.
    """
    import ibis

    key = history["seq"] + ibis.ifelse(history["snapshot_kind"] == "send", 0, PRECEDENCE_OFFSET)
    marked = history.mutate(__key=key)
    # the window as a column, then a plain filter: Ibis 12's PySpark compiler mis-names
    # the subquery of a filter that holds a window function
    marked = marked.mutate(__top=marked["__key"].max().over(group_by=marked["message_id"]))
    return marked.filter(marked["__key"] == marked["__top"]).drop("__key", "__top")


def ibis_rate_table(
    table: ir.Table,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    by: Sequence[str] = (),
    every: str | None = None,
    rates: Sequence[RateMetric] = tuple(RATES.values()),
    min_n: int = DEFAULT_MIN_N,
) -> ir.Table:
    """Counts and every rate per group (and UTC time bucket) through Ibis.

    ``table`` holds current records (use :func:`ibis_latest` on a snapshot table). Runs
    on any Ibis backend (DuckDB, PySpark, ...); time buckets truncate in the backend's
    session time zone, so set it to UTC. ``every`` is one of ``1h``, ``1d``, ``1w``,
    ``1mo``.
    """
    if start is not None:
        table = table.filter(table["requested_at"] >= start)
    if end is not None:
        table = table.filter(table["requested_at"] <= end)
    keys: dict[str, ir.Value] = {c: table[c] for c in by}
    if every is not None:
        unit = _IBIS_UNITS.get(every)
        if unit is None:
            _invalid("every", every, "one of " + ", ".join(_IBIS_UNITS))
        keys = {"bucket_start": table["requested_at"].truncate(unit), **keys}
    aggs = ibis_aggregations(table, COUNTS, rates)
    out = table.aggregate(aggs, by=[v.name(k) for k, v in keys.items()])
    cols: dict[str, ir.Value] = {}
    for r in rates:
        cols.update(
            ibis_rate_columns(
                out, f"{r.name}_num", f"{r.name}_den", prefix=f"{r.name}_", min_n=min_n
            )
        )
    out = out.mutate(**cols)
    return out.order_by(list(keys)) if keys else out


# --------------------------------------------------------------------------- taxonomy


@dataclass(frozen=True)
class FailureCategory:
    """One class of the cross-gateway failure taxonomy, with what to do about it."""

    key: str
    label: str
    action: str
    delivery_failure: bool = True


#: The taxonomy, in display order. ``tracking`` is counted apart from delivery failures.
FAILURE_CATEGORIES: Final[Mapping[str, FailureCategory]] = {
    c.key: c
    for c in (
        FailureCategory(
            "permanent",
            "영구 실패 (번호 문제)",
            "번호가 없거나 받을 수 없는 번호입니다: 재발송하지 말고 수신 목록에서 확인·정리하세요.",
        ),
        FailureCategory(
            "temporary",
            "일시 실패",
            "단말 전원·음영·혼잡 등 일시적 문제입니다: 시간을 두고 재발송하세요.",
        ),
        FailureCategory(
            "policy",
            "정책·차단",
            "스팸·수신거부·발신번호·템플릿 문제입니다: 발신번호/템플릿 등록과 내용을 고치기 전에는 "
            "재발송하지 마세요.",
        ),
        FailureCategory(
            "not_kakao",
            "카카오톡 미사용자",
            "알림톡을 받을 수 없는 수신자입니다: SMS/LMS 대체발송을 켜거나 "
            "다음부터 문자로 바로 보내세요.",
        ),
        FailureCategory(
            "tracking",
            "추적 문제",
            "발송 결과를 확인하지 못했습니다 (게이트웨이 ID 없음, 추적 시간 초과, 상태 조회 불가): "
            "게이트웨이 설정과 폴링을 점검하세요. 전달 실패로 세지 않습니다.",
            delivery_failure=False,
        ),
        FailureCategory(
            "unknown",
            "분류 불가",
            "알려지지 않은 코드이거나 결과가 확인되지 않았습니다: "
            "게이트웨이 문서에서 코드를 확인하세요.",
        ),
    )
}


@dataclass(frozen=True)
class CodeRule:
    """A gateway status code that means ``category`` (any gateway when ``provider_id`` is None)."""

    provider_id: str | None
    code: str
    category: str


@dataclass(frozen=True)
class KeywordRule:
    """A status message containing every one of ``keywords`` means ``category``."""

    keywords: tuple[str, ...]
    category: str
    provider_id: str | None = None


def _codes(provider: str | None, category: str, codes: str) -> tuple[CodeRule, ...]:
    return tuple(CodeRule(provider, c, category) for c in codes.split())


#: Exact codes. SOLAPI's table is its documented status codes; the rest are the
#: tracking service's own ``last_error`` codes, which mean the same on every gateway.
CODE_RULES: Final = (
    *_codes("solapi", "not_kakao", "3104 3107"),
    *_codes(
        "solapi",
        "policy",
        "1041 1042 1043 1060 1061 1062 1064 2060 2061 2062 2063 2064 2254 "
        "3047 3054 3055 3059 3060 3101 3102 3103 3105 3106 3108",
    ),
    *_codes(
        "solapi",
        "permanent",
        "1010 1011 1013 1014 1021 1025 1026 1027 1028 1029 1031 1032 1033 1034 1058 "
        "2011 3010 3011 3013 3031 3032 3046 3050 3051 3052 3058",
    ),
    *_codes(
        "solapi",
        "temporary",
        "1024 1030 2024 2230 3012 3024 3040 3041 3042 3043 3044 3045 3053 3056 3057",
    ),
    *_codes(None, "tracking", " ".join(TRACKING_ERROR_CODES)),
)

#: Message keywords, tried in order after the exact codes (first match wins). The first
#: two are k-msg's own "does not use KakaoTalk" rules for SOLAPI and IWINV.
KEYWORD_RULES: Final = (
    KeywordRule(("미사용자",), "not_kakao", "solapi"),
    KeywordRule(("카카오", "미사용"), "not_kakao"),
    KeywordRule(("카카오톡 미사용",), "not_kakao"),
    KeywordRule(("이용 이력 없음",), "not_kakao"),
    KeywordRule(("스팸",), "policy"),
    KeywordRule(("차단",), "policy"),
    KeywordRule(("수신거부",), "policy"),
    KeywordRule(("템플릿",), "policy"),
    KeywordRule(("발신번호",), "policy"),
    KeywordRule(("변작",), "policy"),
    KeywordRule(("결번",), "permanent"),
    KeywordRule(("없는 번호",), "permanent"),
    KeywordRule(("미가입",), "permanent"),
    KeywordRule(("수신번호",), "permanent"),
    KeywordRule(("전원",), "temporary"),
    KeywordRule(("음영",), "temporary"),
    KeywordRule(("일시",), "temporary"),
    KeywordRule(("시간 초과",), "temporary"),
    KeywordRule(("잔액",), "temporary"),
    KeywordRule(("busy",), "temporary"),
)


def failure_category_expr(
    code: pl.Expr | None = None,
    message: pl.Expr | None = None,
    provider: pl.Expr | None = None,
) -> pl.Expr:
    """The taxonomy category of each record (a key of :data:`FAILURE_CATEGORIES`).

    By default the code is ``provider_status_code`` (else ``last_error.code``) and the
    message is ``provider_status_message``. Exact :data:`CODE_RULES` first, then
    :data:`KEYWORD_RULES`, else ``"unknown"``.

    Examples
    --------
    >>> frame = pl.DataFrame({
    ...     "provider_id": ["solapi", "iwinv", "nhn"],
    ...     "provider_status_code": ["3104", "E105", "X1"],
    ...     "provider_status_message": [None, "카카오톡 미사용 사용자", "단말기 전원 꺼짐"],
    ...     "last_error": [None, None, None]},
    ...     schema_overrides={"last_error": pl.Struct({"code": pl.String})})
    >>> frame.select(failure_category_expr()).to_series().to_list()
    ['not_kakao', 'not_kakao', 'temporary']
    """
    if code is None:
        code = pl.coalesce(
            pl.col("provider_status_code"), pl.col("last_error").struct.field("code")
        )
    if message is None:
        message = pl.col("provider_status_message")
    if provider is None:
        provider = pl.col("provider_id")
    specific = {f"{r.provider_id}\x1f{r.code}": r.category for r in CODE_RULES if r.provider_id}
    generic = {r.code: r.category for r in CODE_RULES if r.provider_id is None}
    by_code = pl.coalesce(
        (provider + "\x1f" + code).replace_strict(specific, default=None, return_dtype=pl.String),
        code.replace_strict(generic, default=None, return_dtype=pl.String),
    )
    text = message.fill_null("")
    chain: Any = None
    for rule in KEYWORD_RULES:
        cond = pl.all_horizontal([text.str.contains(k, literal=True) for k in rule.keywords])
        if rule.provider_id is not None:
            cond = cond & (provider == rule.provider_id).fill_null(False)
        chain = (
            pl.when(cond).then(pl.lit(rule.category))
            if chain is None
            else chain.when(cond).then(pl.lit(rule.category))
        )
    by_keyword = chain.otherwise(pl.lit("unknown"))
    return pl.coalesce(by_code, by_keyword).alias("category")
