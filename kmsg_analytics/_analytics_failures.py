"""Failure analysis and the failover funnel: the finishing of their tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import polars as pl

from . import _metrics as m
from ._analytics_common import _over

__all__ = []

_NO_CODE: Final = "(없음)"
_FALLBACK: Final = ":api-fallback"

_TRACKING_LABELS: Final = {
    "MISSING_PROVIDER_MESSAGE_ID": "게이트웨이가 메시지 ID를 돌려주지 않아 결과를 조회할 수 없음",
    "TRACKING_TIMEOUT": "최대 추적 시간 안에 최종 결과를 받지 못함",
    "PROVIDER_NOT_FOUND": "등록되지 않은 게이트웨이로 발송된 메시지",
    "UNSUPPORTED_PROVIDER": "상태 조회를 지원하지 않는 게이트웨이",
}


#: Funnel stages that are a part of the failed AlimTalk (only these get ``pct_of_failed``).
_OF_FAILED = (
    "failed", "not_kakao", "requested", "attempted", "sent", "skipped", "send_failed",
    "in_progress", "fallback_tracked", "fallback_delivered",
)  # fmt: skip


def _share(num: pl.Expr, den: pl.Expr, by: Sequence[str]) -> pl.Expr:
    whole = _over(den, by)
    return pl.when(whole > 0).then(num / whole * 100.0).otherwise(None)


#: The failover fields read from an AlimTalk's metadata: column -> (JSON path, a word the
#: text must spell out to hold that path). k-msg writes the camelCase spellings.
_FAILOVER_PATHS: Final = {
    f"__{case}_{field}": (f"$.failover.{parent}.{key}", parent)
    for case, parent, names in (
        ("s", "api_attempt", ("status", "outcome", "fallback_message_id", "attempted")),
        ("c", "apiAttempt", ("status", "outcome", "fallbackMessageId", "attempted")),
    )
    for field, key in zip(("status", "outcome", "fb_id", "attempted"), names, strict=True)
} | {"__enabled": ("$.failover.request.enabled", "enabled")}


def _failover_fields(texts: pl.DataFrame) -> pl.DataFrame:
    """``__fb_id``, ``__req``, ``__att`` and ``__out`` of each distinct metadata text.

    ``json_path_match`` parses a text once per path, so each path is read only from the
    texts that can hold it: a JSON text names each of its keys literally unless it holds
    a backslash (an escape), so a text with no backslash and without the path's last
    object name has no value there (null, what reading it would give).
    """
    meta = pl.col("metadata")
    escaped = meta.str.contains("\\", literal=True).fill_null(False)
    columns = []
    for name, (path, word) in _FAILOVER_PATHS.items():
        where = texts.select(escaped | meta.str.contains(word, literal=True).fill_null(False))
        rows = where.to_series().arg_true()
        found = texts.get_column("metadata").gather(rows).str.json_path_match(path)
        column = pl.Series(name, [None] * texts.height, dtype=pl.String)
        columns.append(column.scatter(rows, found) if rows.len() else column)
    raw = texts.with_columns(columns)

    def attempt(field: str) -> pl.Expr:
        return pl.coalesce(pl.col(f"__s_{field}"), pl.col(f"__c_{field}"))

    status = attempt("status")
    outcome = pl.coalesce(
        attempt("outcome"), pl.when(status.is_in(("sent", "failed", "skipped"))).then(status)
    )
    return raw.select(
        "metadata",
        attempt("fb_id").alias("__fb_id"),
        (pl.col("__enabled") == "true").fill_null(False).alias("__req"),
        (attempt("attempted") == "true").fill_null(False).alias("__att"),
        outcome.alias("__out"),
    )


def _weighted_mode(frame: pl.LazyFrame, keys: list[str], column: str) -> pl.LazyFrame:
    """Per group of ``keys``: the non-null value of ``column`` with the most weight.

    Ties go to the smallest value, as ``mode().sort().first()`` does on unweighted rows;
    a group whose values are all null has no row here (a left join gives it null).
    """
    return (
        frame.filter(pl.col(column).is_not_null())
        .group_by([*keys, column])
        .agg(pl.col(m.WEIGHT).sum().alias("__mw"))
        .sort([*keys, "__mw", column], descending=[*([False] * len(keys)), True, False])
        .group_by(keys, maintain_order=True)
        .agg(pl.col(column).first())
    )


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
