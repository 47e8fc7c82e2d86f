"""History-aware answers: rate maturity and status durations, from the snapshot history.

These read every snapshot of the window's messages, not only their current state, so
they are the heaviest answers: a 10M-message lake holds about 22M snapshots. The rate
maturity sorts the snapshots once by (message, seq) and makes a few vectorised passes
over the sorted columns (no per-message join, group or window function); what remains
is a small table of counts per group and age.

While sorting, messages are keyed by 63 bits of a hash of their id, after checking that
no two ids of the store share a key (a sort of one 8-byte value per message); when two
do, the snapshots are sorted by the ids themselves. So the answer never depends on the
hash. Without ``by``, the key and one packed integer per snapshot are sorted as single
128-bit values by the streaming engine, and the sorted values are then handled a few
million at a time, so that the memory stays near that of one 16-byte value per snapshot.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import polars as pl

from . import _metrics as m
from ._analytics_common import MAX_AGES, _over
from ._queries import snapshot_key
from ._records import DELIVERY_STATUSES, POLLABLE_STATUSES, TERMINAL_STATUSES

__all__ = ["durations_tables", "maturity_counts", "percentile", "status_path"]


def _key_hash(mid: pl.Expr) -> pl.Expr:
    """The 64-bit hash that keys messages while sorting (a test makes it collide)."""
    return mid.hash(0x6B6D7367)


_HALF: Final = 1 << 64
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

#: Place values of the fields packed into one integer per snapshot (see _snapshot_rows).
_MO: Final = 1 << 8
_DEN: Final = 1 << 16
_NUM: Final = 1 << 17
_NS: Final = 1 << 18
_SEQ: Final = 1 << 19
_SEQ_LIMIT: Final = 1 << 44


def percentile(col: pl.Expr, per_mille: int) -> pl.Expr:
    """Inverted-CDF percentile inside an aggregation: the ceil(n*p)-th smallest value."""
    idx = (col.len().cast(pl.Int64) * per_mille + 999) // 1000 - 1
    return col.sort().get(idx.clip(lower_bound=0), null_on_oob=True)


# --------------------------------------------------------------------------- rate maturity


def _none_flags(rate: m.RateMetric) -> tuple[int, int]:
    """The numerator and denominator flags of a message with no snapshot yet (no status)."""
    num_p, den_p = rate.numerator & rate.denominator, rate.denominator
    row = (
        pl.DataFrame(
            {"status": [None], "provider_message_id": [None], "last_error": [None]},
            schema={
                "status": pl.String,
                "provider_message_id": pl.String,
                "last_error": pl.Struct({"code": pl.String, "message": pl.String}),
            },
        )
        .select(num_p.polars().cast(pl.Int64), den_p.polars().cast(pl.Int64).alias("den"))
        .row(0)
    )
    return int(row[0]), int(row[1])


def _snapshot_rows(
    snaps: pl.LazyFrame,
    by: Sequence[str],
    ages_us: Sequence[int],
    now: datetime,
    rate: m.RateMetric,
    key: pl.Expr,
) -> pl.LazyFrame:
    """One narrow row per snapshot: the message key and one packed integer (and ``by``).

    The integer holds, from the high bits down: ``seq``; whether the snapshot is of a kind
    other than send; its numerator and denominator flags; ``mo + 1``, where ``mo`` is the
    last age index at which a message requested at the snapshot's ``requested_at`` is
    observable at ``now`` (-1: not even the first); and ``idx``, the first age index at
    which the snapshot is visible (``k`` when recorded after the last age). Sorting by
    (key, packed) is sorting by (message, seq), moving two 8-byte columns.
    """
    requested = pl.col("requested_at").dt.epoch("us")
    age = pl.col("recorded_at").dt.epoch("us") - requested
    now_us = int((now - _EPOCH) // timedelta(microseconds=1))
    # plain comparisons with constants (a search_sorted would leave the streaming engine)
    idx = pl.sum_horizontal([(age > a).cast(pl.Int64) for a in ages_us])
    mo1 = pl.sum_horizontal([(requested <= now_us - a).cast(pl.Int64) for a in ages_us])
    ns = (pl.col("snapshot_kind") == "send").fill_null(False).not_()
    num_p, den_p = rate.numerator & rate.denominator, rate.denominator
    packed = (
        pl.col("seq") * _SEQ
        + ns.cast(pl.Int64) * _NS
        + num_p.polars().cast(pl.Int64) * _NUM
        + den_p.polars().cast(pl.Int64) * _DEN
        + mo1 * _MO
        + idx
    )
    return snaps.select(key.alias("__m"), packed.alias("__p"), *by)


def _unpacked(field: str) -> pl.Expr:
    """One field of the packed integer ``__p`` (see :func:`_snapshot_rows`)."""
    p = pl.col("__p")
    if field == "ns":
        return p // _NS % 2 == 1
    if field in ("num", "den"):
        return (p // (_NUM if field == "num" else _DEN) % 2).cast(pl.Int64)
    if field == "mo":
        return (p // _MO % 256 - 1).cast(pl.Int32)
    return (p % _MO).cast(pl.Int32)


def _sorted(rows: pl.LazyFrame) -> pl.DataFrame:
    """``rows`` sorted by (message, seq): ``__p`` starts with ``seq``, so by (``__m``, ``__p``)."""
    return rows.sort(["__m", "__p"]).collect(engine="streaming")


def _sorted_snapshots(
    snaps: pl.LazyFrame,
    ids: pl.LazyFrame,
    by: Sequence[str],
    ages_us: Sequence[int],
    now: datetime,
    rate: m.RateMetric,
) -> pl.DataFrame:
    """The snapshot rows (``__m``, ``__p`` and ``by``) sorted by (message, seq).

    Messages are keyed by 63 bits of a hash of their id when that key is unique among
    ``ids`` (every message of the store, one row each: a superset of the messages of
    ``snaps``); otherwise by the ids themselves. Without ``by`` the key and the packed
    integer are sorted as one 128-bit value (column ``__k``), a value sort faster and
    smaller than sorting rows by two columns.
    """
    top = snaps.select(pl.col("seq").max()).collect().item()
    if top is not None and top >= _SEQ_LIMIT:  # pragma: no cover - 17 trillion snapshots
        msg = f"a snapshot seq of {top} is beyond what rate maturity packs ({_SEQ_LIMIT})"
        raise ValueError(msg)
    mid = pl.col("message_id")
    key = _key_hash(mid) // 2
    if not _unique_key(ids, key):
        return _sorted(_snapshot_rows(snaps, by, ages_us, now, rate, mid))
    rows = _snapshot_rows(snaps, by, ages_us, now, rate, key)
    if by:
        return _sorted(rows)
    wide = (pl.col("__m").cast(pl.Int128) * _HALF + pl.col("__p").cast(pl.Int128)).alias("__k")
    return rows.select(wide).sort("__k").collect(engine="streaming")


def _unique_key(ids: pl.LazyFrame, key: pl.Expr) -> bool:
    """Does ``key`` tell apart every message id of ``ids`` (one row per message)?"""
    keys = ids.select(key.alias("__m")).collect(engine="streaming").to_series()
    count = keys.len()
    keys.sort(in_place=True)
    return int(keys.ne_missing(keys.shift(1)).sum()) == count


#: Rows of sorted snapshots handled at once (bounds the memory of the passes over them).
_CHUNK_ROWS: Final = 4_000_000


def _message_chunks(rows: pl.DataFrame) -> Iterator[pl.DataFrame]:
    """Slices of ``rows`` of about :data:`_CHUNK_ROWS`, never splitting a message.

    Cuts fall on the first row of a message: found by a binary search of the sorted
    key for the key (or, for packed 128-bit values, the key's lowest value) at the cut.
    """
    column = rows.columns[0]
    keys = rows.get_column(column)
    cuts = [0]
    for at in range(_CHUNK_ROWS, rows.height, _CHUNK_ROWS):
        value = keys[at]
        if column == "__k":  # (key, packed) as one value: the message's lowest possible one
            value = value // _HALF * _HALF
        cut = int(keys.search_sorted(value, side="left"))
        if cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(rows.height)
    for lo, hi in itertools.pairwise(cuts):
        part = rows.slice(lo, hi - lo)
        if column == "__k":
            part = part.select(
                (pl.col("__k") // _HALF).cast(pl.UInt64).alias("__m"),
                (pl.col("__k") % _HALF).cast(pl.Int64).alias("__p"),
            )
        yield part


def _chunk_events(
    rows: pl.DataFrame, by: Sequence[str], k: int
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The states, message heads and groups of whole messages sorted by (message, seq).

    ``states``: per group and (start, stop) ages, the flags of the snapshots that are
    their message's state on those ages; ``heads``: per group, last observable age and
    first age with a state, how many messages; ``groups``: the groups seen.
    """
    shift = 1 << max(8, (k + 2).bit_length())
    big = k + 1
    start = pl.col("__m").ne_missing(pl.col("__m").shift(1))
    nxt_same = ~start.shift(-1).fill_null(True)
    seg = start.cast(pl.UInt64).cum_sum() - 1
    ns, idx = _unpacked("ns"), _unpacked("idx")

    def first(expr: pl.Expr) -> pl.Expr:
        """The value of ``expr`` at the message's first row, on every row of it."""
        return pl.when(start).then(expr).forward_fill()

    def suffix_min(value: pl.Expr) -> pl.Expr:
        """Minimum of ``value`` (0..big) over this and the later rows of the message."""
        enc = seg * shift + value.cast(pl.UInt64)
        return (enc.cum_min(reverse=True) % shift).cast(pl.Int32)

    rows = rows.with_columns(
        first(_unpacked("mo")).alias("__mf"),
        *(pl.col(b).filter(start).gather(seg).alias(b) for b in by),  # nulls stay nulls
        suffix_min(pl.when(ns).then(idx).otherwise(big)).alias("__sa"),
        suffix_min(pl.when(ns).then(big).otherwise(idx)).alias("__sb"),
    )
    later_ns = pl.when(nxt_same).then(pl.col("__sa").shift(-1)).otherwise(big)
    later_send = pl.when(nxt_same).then(pl.col("__sb").shift(-1)).otherwise(big)
    rows = rows.with_columns(
        start.alias("__start"),
        pl.when(ns)
        .then(later_ns)
        .otherwise(pl.min_horizontal(first(pl.col("__sa")), later_send))
        .alias("__u"),
        first(pl.min_horizontal("__sa", "__sb")).alias("__fv"),
    ).drop("__m", "__sa", "__sb")
    observed = rows.lazy().filter(pl.col("__mf") >= 0)
    stop = pl.min_horizontal(pl.col("__u"), pl.col("__mf") + 1)
    states, heads, groups = pl.collect_all(
        [
            # every snapshot that is some age's state: its flags from idx up to stop
            observed.filter((idx < stop) & (idx < k))
            .group_by([*by, idx.alias("a"), stop.alias("b")])
            .agg(_unpacked("num").sum().alias("n"), _unpacked("den").sum().alias("d")),
            # every message: counted from age 0 to mf, with no state until fv
            observed.filter(pl.col("__start"))
            .group_by([*by, pl.col("__mf").alias("mf"), pl.col("__fv").alias("fv")])
            .agg(pl.len().cast(pl.Int64).alias("c")),
            rows.lazy().filter(pl.col("__start")).select(by).unique(),
        ]
    )
    return states, heads, groups


def maturity_counts(
    snaps: pl.LazyFrame,
    ids: pl.LazyFrame,
    by: Sequence[str],
    ages_us: Sequence[int],
    now: datetime,
    rate: m.RateMetric,
) -> pl.DataFrame:
    """Numerator, denominator and cohort size per group and age index.

    A message is the snapshots sharing its id; its group, request time (hence the last
    age ``mo`` at which it is observable) come from its first snapshot by ``seq``. At age
    ``i`` it counts with its state: the snapshot with the highest key (``seq``, a send
    below any other kind) among those visible by age ``i``, or no state. A snapshot ``s``
    is that state on the ages ``[idx(s), u(s))``, where ``u(s)`` is the first age at
    which a snapshot with a higher key is visible: in (message, seq) order that is the
    smallest ``idx`` of the later non-send snapshots for a non-send ``s``, and of every
    non-send and every later send for a send. Each state adds its flags at the start of
    its ages and takes them back at their end (or when the message stops being
    observable); a cumulative sum over the ages of these few events per group gives the
    counts, with no per-message join.
    """
    k = len(ages_us)
    if k > MAX_AGES:  # rate_maturity refuses these with a readable message first
        msg = f"at most {MAX_AGES} ages, not {k}"
        raise ValueError(msg)
    none_num, none_den = _none_flags(rate)
    rows = _sorted_snapshots(snaps, ids, by, ages_us, now, rate)
    found = [_chunk_events(part, by, k) for part in _message_chunks(rows)]
    del rows
    states = pl.concat([f[0] for f in found]).group_by([*by, "a", "b"]).agg(pl.all().sum())
    heads = pl.concat([f[1] for f in found]).group_by([*by, "mf", "fv"]).agg(pl.all().sum())
    groups = pl.concat([f[2] for f in found]).unique() if by else None
    n, d, c = pl.col("n"), pl.col("d"), pl.col("c")
    none_stop = pl.min_horizontal(pl.col("fv"), pl.col("mf") + 1)
    parts = [
        states.select(*by, pl.col("a").alias("idx"), n.alias("d_num"), d.alias("d_den")),
        states.filter(pl.col("b") < k).select(
            *by, pl.col("b").alias("idx"), (-n).alias("d_num"), (-d).alias("d_den")
        ),
        heads.select(
            *by,
            pl.lit(0).alias("idx"),
            (c * none_num).alias("d_num"),
            (c * none_den).alias("d_den"),
            c.alias("d_msg"),
        ),
        heads.filter(none_stop < k).select(
            *by,
            none_stop.alias("idx"),
            (-c * none_num).alias("d_num"),
            (-c * none_den).alias("d_den"),
        ),
        heads.filter(pl.col("mf") + 1 < k).select(
            *by, (pl.col("mf") + 1).alias("idx"), (-c).alias("d_msg")
        ),
    ]
    schema = {"idx": pl.Int32, "d_num": pl.Int64, "d_den": pl.Int64, "d_msg": pl.Int64}
    deltas = (
        pl.concat(
            [
                f.with_columns(
                    *(
                        pl.lit(0, t).alias(name)
                        for name, t in schema.items()
                        if name not in f.columns
                    )
                )
                .with_columns(*(pl.col(name).cast(t) for name, t in schema.items()))
                .select(*by, *schema)
                for f in parts
            ],
            how="vertical_relaxed",
        )
        .group_by([*by, "idx"])
        .agg(pl.col("d_num").sum(), pl.col("d_den").sum(), pl.col("d_msg").sum())
    )
    grid = pl.DataFrame({"idx": list(range(k))}, schema={"idx": pl.Int32})
    if groups is not None:
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


# --------------------------------------------------------------------------- status durations


def status_path(snaps: pl.LazyFrame, by: Sequence[str]) -> pl.LazyFrame:
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


def durations_tables(
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
            *((percentile(done, p) / 1e6).alias(f"p{p // 10}_s") for p in (500, 900, 950)),
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
            *((percentile(pl.col("d"), p) / 1e6).alias(f"p{p // 10}_s") for p in (500, 900)),
        )
        .sort(
            [*by, "count", "from_status", "to_status"],
            descending=[*([False] * len(by)), True, False, False],
        )
    )
    return durations, transitions
