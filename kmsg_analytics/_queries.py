"""Queries over current records: filters, ordering, counts and groupings as Polars expressions.

Both stores hand these functions a ``LazyFrame`` of current records; nothing here
knows where the rows live. Requested-at ranges also become predicates on the
``requested_date`` partition column when the frame has one, so a Parquet scan
reads only the files of the window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import polars as pl

from ._errors import InvalidRecordError
from ._records import RecordFilter
from ._schema import CURRENT_PARTITION, PRECEDENCE_OFFSET, RECORD_COLUMNS

__all__ = ["GROUP_FIELDS", "count_by", "count_records", "filter_expr", "latest", "list_records"]

#: What ``count_by`` can group by: record fields and requested-at time buckets.
TIME_BUCKETS: Final = {
    "requested_at_hour": "1h",
    "requested_at_day": "1d",
    "requested_at_week": "1w",
    "requested_at_month": "1mo",
}
GROUP_FIELDS: Final = (
    "provider_id",
    "type",
    "status",
    "provider_status_code",
    "retention_class",
    *TIME_BUCKETS,
)
_CAMEL_GROUPS: Final = {
    "providerId": "provider_id",
    "providerStatusCode": "provider_status_code",
    "retentionClass": "retention_class",
}

ORDER_FIELDS: Final = ("requested_at", "status_updated_at")

HashFn = Callable[[str, str], str]


def snapshot_key() -> pl.Expr:
    """Which snapshot of a message is current: the highest seq, non-send beating send."""
    return pl.col("seq") + pl.when(pl.col("snapshot_kind") == "send").then(0).otherwise(
        PRECEDENCE_OFFSET
    )


def latest(snapshots: pl.LazyFrame) -> pl.LazyFrame:
    """The current snapshot of each message among ``snapshots`` (window-max, no sort).

    Examples
    --------
    >>> snaps = pl.LazyFrame({"message_id": ["a", "a", "a"], "seq": [1, 2, 3],
    ...                       "snapshot_kind": ["send", "poll", "send"]})
    >>> latest(snaps).collect().get_column("seq").to_list()
    [2]
    """
    k = snapshot_key()
    return snapshots.filter(k == k.max().over("message_id"))


def filter_expr(flt: RecordFilter, hash_number: HashFn, *, partitioned: bool = False) -> pl.Expr:
    """The Polars predicate of a :class:`RecordFilter` (``pl.lit(True)`` when empty).

    ``hash_number(number, field)`` turns a ``to``/``from_`` value into its keyed hash.

    Examples
    --------
    >>> expr = filter_expr(RecordFilter(status="FAILED"), lambda n, f: n)
    >>> pl.DataFrame({"status": ["SENT", "FAILED"]}).filter(expr).height
    1
    """
    parts: list[pl.Expr] = []
    for name in (
        "message_id",
        "provider_id",
        "provider_message_id",
        "type",
        "status",
        "to_hash",
        "from_hash",
    ):
        values = getattr(flt, name)
        if values is not None:
            parts.append(_in(name, values))
    if flt.to is not None:
        parts.append(_in("to_hash", [hash_number(v, "to") for v in flt.to]))
    if flt.from_ is not None:
        parts.append(_in("from_hash", [hash_number(v, "from_") for v in flt.from_]))
    lo, hi = flt.requested_at_from, flt.requested_at_to
    if lo is not None:
        parts.append(pl.col("requested_at") >= lo)
    if hi is not None:
        parts.append(pl.col("requested_at") <= hi)
    if partitioned and lo is not None:
        parts.append(pl.col(CURRENT_PARTITION) >= lo.date())
    if partitioned and hi is not None:
        parts.append(pl.col(CURRENT_PARTITION) <= hi.date())
    if flt.status_updated_at_from is not None:
        parts.append(pl.col("status_updated_at") >= flt.status_updated_at_from)
    if flt.status_updated_at_to is not None:
        parts.append(pl.col("status_updated_at") <= flt.status_updated_at_to)
    if not parts:
        return pl.lit(True)
    return pl.all_horizontal(parts)


def _in(name: str, values: Sequence[str]) -> pl.Expr:
    if len(values) == 1:
        return pl.col(name) == values[0]
    return pl.col(name).is_in(list(values))


def list_records(
    current: pl.LazyFrame,
    predicate: pl.Expr,
    *,
    limit: int,
    offset: int = 0,
    order_by: str = "requested_at",
    order_direction: str = "desc",
) -> pl.LazyFrame:
    """Current records matching ``predicate``, ordered and paged (ties by ``message_id``)."""
    if order_by not in ORDER_FIELDS:
        raise InvalidRecordError("order_by", order_by, "one of " + ", ".join(ORDER_FIELDS))
    if order_direction not in ("asc", "desc"):
        raise InvalidRecordError("order_direction", order_direction, "'asc' or 'desc'")
    limit = whole("limit", limit)
    offset = max(0, whole("offset", offset))
    frame = current.filter(predicate).select(RECORD_COLUMNS)
    if limit <= 0:
        return frame.head(0)
    descending = order_direction == "desc"
    return frame.sort(
        [order_by, "message_id"], descending=[descending, False], maintain_order=False
    ).slice(offset, limit)


def whole(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRecordError(name, value, "a whole number")
    return value


def count_records(current: pl.LazyFrame, predicate: pl.Expr) -> int:
    """How many current records match ``predicate``."""
    out = current.filter(predicate).select(pl.len()).collect(engine="streaming")
    return int(out.item())


def normalize_group_by(group_by: Sequence[str] | str) -> list[str]:
    """Validate ``group_by`` (snake_case or k-msg's camelCase), keeping order, dropping repeats."""
    if isinstance(group_by, str):
        group_by = [group_by]
    out: list[str] = []
    for item in group_by:
        name = _CAMEL_GROUPS.get(item, item) if isinstance(item, str) else item
        if name not in GROUP_FIELDS:
            raise InvalidRecordError("group_by", item, "some of " + ", ".join(GROUP_FIELDS))
        if name not in out:
            out.append(name)
    return out


def count_by(
    current: pl.LazyFrame, predicate: pl.Expr, group_by: Sequence[str] | str
) -> pl.LazyFrame:
    """Counts of current records per group (a ``count`` column; no rows when ``group_by`` is empty).

    Rows are ordered by the group columns, so answers compare directly.
    """
    names = normalize_group_by(group_by)
    filtered = current.filter(predicate)
    if not names:
        schema = {"count": pl.Int64}
        return pl.LazyFrame(schema=schema)
    keys = [
        pl.col("requested_at").dt.truncate(TIME_BUCKETS[n]).alias(n)
        if n in TIME_BUCKETS
        else pl.col(n)
        for n in names
    ]
    return (
        filtered.group_by(keys)
        .agg(pl.len().cast(pl.Int64).alias("count"))
        .sort(names, nulls_last=True)
    )
