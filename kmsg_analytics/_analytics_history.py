"""History-aware answers: rate maturity and status durations, from the snapshot history.

These read every snapshot of the window's messages, not only their current state, so
they are the heaviest answers: a 10M-message lake holds about 22M snapshots. The rate
maturity sorts the snapshots once by (message, seq) and makes a few vectorised passes
over the sorted columns (no per-message join, group or window function); what remains
is a small table of counts per group and age.

While sorting, messages are keyed by 63 bits of a hash of their id, after checking that
no two ids of the store share a key (a sort of one 8-byte value per message); when two
do, the snapshots are sorted by the ids themselves. So the answer never depends on the
hash. The key and one packed integer per snapshot are collected as single 128-bit
values (``by`` groups ride along as categorical codes, strings again only in the small
answer), sorted one range of keys at a time, and the sorted values of each range are
handled a few million at a time as plain arrays, so that the memory stays near that of
one 16-byte value per snapshot (at 10M messages a report's peak went from 1.6 to 1.1 GB).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

import numpy as np
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
_MO_BIT: Final = 8
_DEN_BIT: Final = 16
_NS_BIT: Final = 18
_MO: Final = 1 << _MO_BIT
_DEN: Final = 1 << _DEN_BIT
_NUM: Final = 1 << (_DEN_BIT + 1)
_NS: Final = 1 << _NS_BIT
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
    ns = (pl.col("snapshot_kind") == "send").fill_null(False).not_()
    num_p, den_p = rate.numerator & rate.denominator, rate.denominator
    # two steps: the times and flags once per snapshot, then the comparisons on them
    # (comparing the expressions themselves would recompute them for every age)
    parts = snaps.select(
        key.alias("__m"),
        pl.col("seq"),
        requested.alias("__r"),
        (pl.col("recorded_at").dt.epoch("us") - requested).alias("__a"),
        (ns.cast(pl.Int64) * _NS + num_p.polars().cast(pl.Int64) * _NUM).alias("__f"),
        den_p.polars().cast(pl.Int64).alias("__d"),
        *by,
    )
    now_us = int((now - _EPOCH) // timedelta(microseconds=1))
    age, requested = pl.col("__a"), pl.col("__r")
    # plain comparisons with constants (a search_sorted would leave the streaming engine),
    # counted as booleans (casting each to an integer first costs twice as much)
    idx = pl.sum_horizontal([age > a for a in ages_us]).cast(pl.Int64)
    mo1 = pl.sum_horizontal([requested <= now_us - a for a in ages_us]).cast(pl.Int64)
    packed = pl.col("seq") * _SEQ + pl.col("__f") + pl.col("__d") * _DEN + mo1 * _MO + idx
    # a seq the packing cannot hold becomes null (checked after the sort: no second scan)
    packed = pl.when(pl.col("seq").is_between(0, _SEQ_LIMIT - 1)).then(packed)
    # string groups travel as categorical codes: the sort and the passes after it move
    # 4-byte integers, not strings (turned back in maturity_parts, see _strings_back)
    schema = snaps.collect_schema()
    coded = [pl.col(c).cast(pl.Categorical) if schema[c] == pl.String else pl.col(c) for c in by]
    return parts.select("__m", packed.alias("__p"), *coded)


def _sorted(rows: pl.LazyFrame) -> pl.DataFrame:
    """``rows`` sorted by (message, seq): ``__p`` starts with ``seq``, so by (``__m``, ``__p``)."""
    return rows.sort(["__m", "__p"]).collect(engine="streaming")


#: Key ranges the hashed snapshots are sorted in, one after the other (see below).
_SORT_PARTS: Final = 8


def _sorted_snapshots(
    snaps: pl.LazyFrame,
    ids: pl.LazyFrame,
    by: Sequence[str],
    ages_us: Sequence[int],
    now: datetime,
    rate: m.RateMetric,
) -> Iterator[pl.DataFrame]:
    """The snapshot rows (``__m``, ``__p`` and ``by``) sorted by (message, seq), in parts.

    Messages are keyed by 63 bits of a hash of their id when that key is unique among
    ``ids`` (every message of the store, one row each: a superset of the messages of
    ``snaps``); otherwise by the ids themselves (one part). With hashed keys, the key and
    the packed integer are one 128-bit value (a sort by one value, faster and smaller
    than sorting rows by two columns; ``by`` rides along, as categorical codes): the
    values are collected once, then each of :data:`_SORT_PARTS` ranges of keys is cut
    out, sorted and split again in turn. Parts hold disjoint sets of whole messages, and
    only one part's sort is in memory at a time (a single sort of 22M snapshots would
    hold three 16-byte copies of them at once).
    """
    mid = pl.col("message_id")
    key = _key_hash(mid) // 2
    # the check reads every id of the store: on a thread of its own, beside the scan of
    # the snapshots (mostly one-threaded); a collision sorts them by their ids instead
    with ThreadPoolExecutor(1) as pool:
        unique = pool.submit(_unique_key, ids, key)
        rows = _snapshot_rows(snaps, by, ages_us, now, rate, key)
        half = pl.lit(_HALF, pl.Int128)  # (a typed literal: twice as fast as an int)
        wide = pl.col("__m").cast(pl.Int128) * half + pl.col("__p").cast(pl.Int128)
        values = rows.select(wide.alias("__k"), *by).collect(engine="streaming")
        hashed = unique.result()
    if not hashed:
        del values
        out = _sorted(_snapshot_rows(snaps, by, ages_us, now, rate, mid))
        _check_packed(out.get_column("__p"))
        yield out
        return
    _check_packed(values.get_column("__k"))  # (before the parts: their cuts drop nulls)
    k = pl.col("__k")
    step = (1 << 63) // _SORT_PARTS  # keys are 63-bit: parts are ranges of the top bits
    for part in range(_SORT_PARTS):
        lo = part * step * _HALF
        cut = (
            k >= lo
            if part == _SORT_PARTS - 1
            else k.is_between(lo, (part + 1) * step * _HALF, "left")
        )
        yield (
            values.lazy()
            .filter(cut)
            .sort("__k")
            .select(
                (k // half).cast(pl.UInt64).alias("__m"),
                k.cast(pl.Int64, wrap_numerical=True).alias("__p"),  # the low 64 bits
                *by,
            )
            .collect()
        )


def _check_packed(packed: pl.Series) -> None:
    """Refuse a null packed integer: a snapshot with a seq the packing cannot hold."""
    if packed.null_count():  # pragma: no cover - 17 trillion snapshots
        msg = f"a snapshot with no seq or one outside 0..{_SEQ_LIMIT - 1} (44 bits, packed)"
        raise ValueError(msg)


def _unique_key(ids: pl.LazyFrame, key: pl.Expr) -> bool:
    """Does ``key`` tell apart every message id of ``ids`` (one row per message)?"""
    keys = ids.select(key.alias("__m")).collect(engine="streaming").to_series()
    if keys.null_count():  # pragma: no cover - hashes are never null
        return False
    values = np.sort(keys.to_numpy())
    return not bool(np.any(values[1:] == values[:-1]))


#: Rows of sorted snapshots handled at once (bounds the memory of the passes over them).
_CHUNK_ROWS: Final = 2_000_000

_Keys = np.ndarray[Any, Any] | pl.Series


def _message_chunks(
    rows: pl.DataFrame, by: Sequence[str]
) -> Iterator[tuple[_Keys, np.ndarray[Any, Any], pl.DataFrame]]:
    """Slices of the sorted ``rows`` of about :data:`_CHUNK_ROWS`, never splitting a message.

    Each is the message keys, the packed integers and the ``by`` columns. Cuts fall on
    the first row of a message, found by a binary search of the sorted keys.
    """
    column = rows.get_column("__m")
    keys: _Keys = column.to_numpy() if column.dtype.is_integer() else column
    packed = rows.get_column("__p").to_numpy()
    cuts = [0]
    for at in range(_CHUNK_ROWS, packed.size, _CHUNK_ROWS):
        if isinstance(keys, np.ndarray):
            cut = int(np.searchsorted(keys, keys[at], side="left"))
        else:
            cut = int(keys.search_sorted(keys[at], side="left"))
        if cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(packed.size)
    groups = rows.select(by)
    for lo, hi in itertools.pairwise(cuts):
        yield keys[lo:hi], packed[lo:hi], groups.slice(lo, hi - lo)


class MessageStates(NamedTuple):
    """The per-row and per-message arrays of a run of whole messages sorted by (message, seq).

    ``start``: the row starts a message; ``seg``: the message number of each row;
    ``state``: the row is its message's state on the ages ``[idx, stop)`` (``idx`` its
    first visible age, ``stop`` where it is replaced or the message stops being
    observable); per message: ``mo1`` (last observable age + 1), ``seen`` (``mo1 > 0``)
    and ``first_visible`` (the first age with a state).
    """

    start: np.ndarray[Any, Any]
    seg: np.ndarray[Any, Any]
    heads_at: np.ndarray[Any, Any]
    state: np.ndarray[Any, Any]
    idx: np.ndarray[Any, Any]
    stop: np.ndarray[Any, Any]
    mo1: np.ndarray[Any, Any]
    seen: np.ndarray[Any, Any]
    first_visible: np.ndarray[Any, Any]


def message_states(
    keys: _Keys, p: np.ndarray[Any, Any], k: int, ns_bit: int, mo_bit: int = _MO_BIT
) -> MessageStates:
    """The states of whole messages: see :class:`MessageStates` and :func:`_chunk_events`.

    ``p`` holds, from the low bits up, ``idx`` (``mo_bit`` bits), ``mo + 1`` (as many)
    and, at ``ns_bit``, whether the snapshot is of a kind other than send.
    """
    n = p.size
    start = np.empty(n, dtype=np.bool_)
    if isinstance(keys, np.ndarray):
        np.not_equal(keys[1:], keys[:-1], out=start[1:])
    else:  # the message ids themselves (hashed keys collided)
        start[1:] = keys.ne_missing(keys.shift(1)).to_numpy()[1:]
    start[:1] = True
    heads_at = np.flatnonzero(start)
    seg = np.cumsum(start, dtype=np.int64) - 1  # message number of each row
    big = k + 1
    idx = (p & ((1 << mo_bit) - 1)).astype(np.int16)
    ns = ((p >> ns_bit) & 1).astype(np.bool_)
    # mo + 1 of each message, from its first snapshot by seq (0: not observable at all)
    mo1 = ((p[heads_at] >> mo_bit) & ((1 << mo_bit) - 1)).astype(np.int16)
    # suffix minimums within a message: messages are kept apart by a multiple of ``shift``
    shift = 1 << max(8, (k + 2).bit_length())
    offset = seg * shift

    def suffix_min(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        enc = offset + values
        np.minimum.accumulate(enc[::-1], out=enc[::-1])
        enc -= offset
        out: np.ndarray[Any, Any] = enc.astype(np.int16)
        return out

    sa = suffix_min(np.where(ns, idx, big))  # smallest idx of this and later non-sends
    sb = suffix_min(np.where(ns, big, idx))  # ... of this and later sends
    nxt_same = np.zeros(n, dtype=np.bool_)
    np.logical_not(start[1:], out=nxt_same[:-1])
    later_ns = np.full(n, big, dtype=np.int16)
    later_send = np.full(n, big, dtype=np.int16)
    np.copyto(later_ns[:-1], sa[1:], where=nxt_same[:-1])
    np.copyto(later_send[:-1], sb[1:], where=nxt_same[:-1])
    # a non-send is replaced by a later non-send; a send by any non-send or a later send
    until = np.where(ns, later_ns, np.minimum(sa[heads_at][seg], later_send))
    stop = np.minimum(until, mo1[seg])
    state = (idx < stop) & (idx < k)  # stop <= mo + 1 <= 0 for unobservable messages
    first_visible = np.minimum(sa[heads_at], sb[heads_at])
    seen = mo1 > 0
    return MessageStates(start, seg, heads_at, state, idx, stop, mo1, seen, first_visible)


def _chunk_events(
    keys: _Keys, p: np.ndarray[Any, Any], rows: pl.DataFrame, by: Sequence[str], k: int
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The states, message heads and groups of whole messages sorted by (message, seq).

    ``keys`` are the message keys, ``p`` the packed integers (see :func:`_snapshot_rows`)
    and ``rows`` the ``by`` columns of the same rows. ``states``: per group and (start,
    stop) ages, the flags of the snapshots that are their message's state on those ages;
    ``heads``: per group, last observable age and first age with a state, how many
    messages; ``groups``: the groups seen.

    The passes over the sorted rows are array operations (a message is a run of equal
    keys): a cumulative minimum from the end finds, for every snapshot, the first age at
    which a snapshot of higher key is visible. Each state then becomes one integer
    (group, start, stop, flags) and each message one (group, mo, first visible age), and
    those few distinct integers are counted.

    Snapshots visible at no age (recorded after the last age) are dropped first, except
    each message's first: they are never a state, and where they take part (the first
    age at which a later snapshot is visible, a message's first visible age) they stand
    for age ``k``, which changes nothing (a message's states stop at its last observable
    age anyway, at most ``k``). Lakes loaded from an older store hold many of them.
    """
    keys, p, rows = _visible_or_first(keys, p, rows, by, k)
    ms = message_states(keys, p, k, _NS_BIT)
    start, seg, state, idx, stop = ms.start, ms.seg, ms.state, ms.idx, ms.stop
    mo1, seen, first_visible = ms.mo1, ms.seen, ms.first_visible
    flags = (p[state] >> _DEN_BIT) & 3  # numerator * 2 + denominator
    # each message's group as a number (none without groups), then one integer per state
    # and per message head, counted
    span = k + 2
    state_code = (idx[state].astype(np.int64) * span + stop[state]) * 4 + flags
    head_code = mo1[seen].astype(np.int64) * span + first_visible[seen]
    groups = pl.DataFrame()
    if by:
        first = rows.select(by).filter(pl.Series(start))
        groups = first.unique()
        group = (
            first.join(
                groups.with_row_index("__g"),
                on=list(by),
                how="left",
                nulls_equal=True,
                maintain_order="left",
            )
            .get_column("__g")
            .to_numpy()
            .astype(np.int64)
        )
        state_code += group[seg[state]] * (span * span * 4)
        head_code += group[seen] * (span * span)
    count_groups = max(groups.height, 1)
    code, count = _counted(state_code, count_groups * span * span * 4)
    states = (
        pl.DataFrame(
            {
                "__g": code // (span * span * 4),
                "a": (code // (span * 4) % span).astype(np.int32),
                "b": (code // 4 % span).astype(np.int32),
                "n": count * (code // 2 % 2),
                "d": count * (code % 2),
            }
        )
        .group_by("__g", "a", "b")
        .agg(pl.col("n").sum(), pl.col("d").sum())
    )
    code, count = _counted(head_code, count_groups * span * span)
    heads = pl.DataFrame(
        {
            "__g": code // (span * span),
            "mf": (code // span % span - 1).astype(np.int32),
            "fv": (code % span).astype(np.int32),
            "c": count,
        }
    )
    if by:
        states = pl.concat([groups.gather(states.get_column("__g")), states], how="horizontal")
        heads = pl.concat([groups.gather(heads.get_column("__g")), heads], how="horizontal")
    return states.drop("__g"), heads.drop("__g"), groups


def _visible_or_first(
    keys: _Keys, p: np.ndarray[Any, Any], rows: pl.DataFrame, by: Sequence[str], k: int
) -> tuple[_Keys, np.ndarray[Any, Any], pl.DataFrame]:
    """The rows of snapshots visible at some age, and the first row of every message."""
    keep = (p & ((1 << _MO_BIT) - 1)) < k
    if keep.all():
        return keys, p, rows
    if isinstance(keys, np.ndarray):
        np.not_equal(keys[1:], keys[:-1], out=keep[1:], where=~keep[1:])
    else:  # the message ids themselves (hashed keys collided)
        keep[1:] |= keys.ne_missing(keys.shift(1)).to_numpy()[1:]
    keep[:1] = True
    kept = keys[keep] if isinstance(keys, np.ndarray) else keys.filter(pl.Series(keep))
    return kept, p[keep], rows.filter(pl.Series(keep)) if by else rows


def _counted(
    codes: np.ndarray[Any, Any], size: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The distinct values of ``codes`` (all in ``[0, size)``) and how often each occurs."""
    if size <= max(1 << 22, 2 * codes.size):
        counts = np.bincount(codes, minlength=size)
        found = np.flatnonzero(counts)
        return found.astype(np.int64), counts[found].astype(np.int64)
    found, counts = np.unique(codes, return_counts=True)
    return found.astype(np.int64), counts.astype(np.int64)


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
    return maturity_curve(maturity_parts(snaps, ids, by, ages_us, now, rate), by, k, rate)


#: What :func:`maturity_curve` adds up: the ``states``, ``heads`` and ``groups`` frames
#: of :func:`_chunk_events` (of any number of disjoint sets of messages).
Parts = list[tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]]


def maturity_parts(
    snaps: pl.LazyFrame,
    ids: pl.LazyFrame,
    by: Sequence[str],
    ages_us: Sequence[int],
    now: datetime,
    rate: m.RateMetric,
) -> Parts:
    """The events of :func:`maturity_counts` per chunk of messages (see :func:`_chunk_events`)."""
    k = len(ages_us)
    schema = snaps.collect_schema()
    strings = [c for c in by if schema[c] == pl.String]
    found: Parts = []
    # the chunks of a part are independent and their array passes release the
    # interpreter lock: two at a time (they are views of the part's sorted arrays; only
    # their passes take memory); parts one after the other (``map`` takes all at once)
    with ThreadPoolExecutor(max_workers=max(1, min(2, pl.thread_pool_size()))) as pool:
        for part in _sorted_snapshots(snaps, ids, by, ages_us, now, rate):
            chunks = _message_chunks(part, by)
            del part
            events = pool.map(lambda c: _chunk_events(c[0], c[1], c[2], by, k), chunks)
            found += [_strings_back(e, strings) for e in events]
    return found


def _strings_back(
    part: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], strings: Sequence[str]
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """``part`` with its ``strings`` groups (categorical while sorted) strings again."""
    back = [pl.col(c).cast(pl.String) for c in strings]
    return part[0].with_columns(back), part[1].with_columns(back), part[2].with_columns(back)


def maturity_curve(found: Parts, by: Sequence[str], k: int, rate: m.RateMetric) -> pl.DataFrame:
    """The counts of :func:`maturity_counts` from the events of disjoint sets of messages.

    ``found`` holds, per set, the ``states`` (``by``, ``a``, ``b``, ``n``, ``d``), the
    ``heads`` (``by``, ``mf``, ``fv``, ``c``) and the ``groups`` seen (``by``); the
    counts are sums over messages, so any split of the messages gives the same curve.
    """
    none_num, none_den = _none_flags(rate)
    state_schema = {"a": pl.Int32, "b": pl.Int32, "n": pl.Int64, "d": pl.Int64}
    head_schema = {"mf": pl.Int32, "fv": pl.Int32, "c": pl.Int64}
    states = (
        pl.concat(
            [f[0].with_columns(pl.col(c).cast(t) for c, t in state_schema.items()) for f in found]
        )
        .group_by([*by, "a", "b"])
        .agg(pl.all().sum())
    )
    heads = (
        pl.concat(
            [f[1].with_columns(pl.col(c).cast(t) for c, t in head_schema.items()) for f in found]
        )
        .group_by([*by, "mf", "fv"])
        .agg(pl.all().sum())
    )
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
