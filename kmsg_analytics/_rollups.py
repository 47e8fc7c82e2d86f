"""Rate maturity from a rollup of the snapshot history, kept while the lake does not change.

The rate maturity reads every snapshot of its window (a 10M-message lake holds about
22M), but what it counts is additive over messages: for a fixed ``now`` and ages, each
message adds its states (first age, last age, and what the snapshot's status says) and
its head (last observable age, first age with a state) to the counts of its group. So
one pass over the whole history counts them per request hour x provider x type, and
for every rate definition at once (a snapshot is only a class, ``status`` x "has a
gateway message id", for the definitions built from those predicates); a later curve
for any window of whole hours, any providers and types, any of those definitions and
``by`` among ``provider_id`` and ``type`` is a small aggregation of that rollup.

Exactness:

* A message counts in the cell (request hour, provider, type) of its first snapshot.
  A message whose snapshots do not all fall in one cell is "odd": it is kept out of
  the rollup and its snapshots are kept instead (a handful in practice), to be
  counted exactly.
* The hours a window covers only in part are counted exactly, from the history.
* Anything else (``as_of``, another ``by``, a definition reading other columns, a
  store that cannot say when it changed) is not served here: callers fall back to
  :func:`~kmsg_analytics._analytics_history.maturity_counts`.

A rollup is keyed by the store's state (for a lake: the identities of its history and
current files and its watermark; for an in-memory store: its sequence), ``now`` and the
ages; any new snapshot changes the state, so a stale rollup is never used. A few are
kept per store (:data:`KEEP`), so the memory stays bounded; a rollup is a few counts
per hour, provider, type, age pair and class (about 20 MB for 22M snapshots).

Building one sorts 16 bytes per snapshot (message key, then one integer packing
``seq``, the cell, the class and the ages), in memory: about 10 s and a peak near
1.1 GB for 22M snapshots on a 2-core machine; the explorer does it in the background.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import polars as pl

from . import _analytics_history as h
from . import _metrics as m
from ._analytics_common import DEFAULT_AGES, MAX_AGES, _ages, _fields, _window
from ._queries import filter_expr
from ._records import DELIVERY_STATUSES, RecordFilter

if TYPE_CHECKING:
    from ._analytics import DeliveryAnalytics

__all__ = [
    "KEEP",
    "MaturityRollup",
    "build_rollup",
    "cached_rollup",
    "maturity_frame",
    "rate_maturity",
    "rollup_counts",
    "servable",
    "store_state",
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_HOUR_US: Final = 3_600_000_000

#: Packed integer per snapshot (low bits up): idx and mo + 1 (``age_bits`` each, where
#: :func:`~kmsg_analytics._analytics_history.message_states` reads them), the class (4
#: bits), non-send (1 bit), then (when it fits) the cell, and ``seq`` on top.


def _layout(k: int) -> tuple[int, int, int, int]:
    """Bits per age index, and where the class, the non-send flag and the rest start."""
    age_bits = max((k + 1).bit_length(), 1)
    cls_bit = 2 * age_bits
    return age_bits, cls_bit, cls_bit + 4, cls_bit + 5


#: The bits of the packed integer (its sign bit stays clear).
_PACK_BITS: Final = 63

#: Classes: the status (none or another, then the six known ones) x has a gateway id.
_STATUSES: Final = tuple(DELIVERY_STATUSES)

#: More snapshots of odd messages than this and the rollup is not kept (curves are exact).
_MAX_ODD_ROWS: Final = 500_000

#: Sorted snapshots split and counted at once (two chunks at a time: bounds the memory).
_CHUNK_ROWS: Final = 1_000_000

#: Rollups kept per store (the newest are kept).
KEEP: Final = 2

_SNAPSHOT_COLUMNS: Final = (
    "message_id",
    "seq",
    "snapshot_kind",
    "recorded_at",
    "requested_at",
    "provider_id",
    "type",
    "status",
    "provider_message_id",
    "last_error",
)


@dataclass(frozen=True, eq=False)
class MaturityRollup:
    """Maturity events of a store's whole history per request hour, provider and type.

    ``states``: ``hour`` (hours since the epoch), ``provider_id``, ``type``, ``a``,
    ``b`` (ages), ``cls`` (class), ``count``; ``heads``: ``hour``, ``provider_id``,
    ``type``, ``mf`` (last observable age), ``fv`` (first age with a state), ``c``;
    ``cells``: the cells holding a message (``hour``, ``provider_id``, ``type``);
    ``odd``: the snapshots of the messages whose snapshots do not share one cell.
    """

    state: tuple[Any, ...]
    now: datetime
    ages_us: tuple[int, ...]
    states: pl.DataFrame
    heads: pl.DataFrame
    cells: pl.DataFrame
    odd: pl.DataFrame

    @property
    def nbytes(self) -> int:
        """The memory the rollup's frames take."""
        frames = (self.states, self.heads, self.cells, self.odd)
        return sum(int(f.estimated_size()) for f in frames)


# --------------------------------------------------------------------------- what is served


def _leaves_known(pred: m.Predicate) -> bool:
    """Is ``pred`` built from predicates that read only the class of a snapshot?"""
    if isinstance(pred, m.AllOf | m.AnyOf):
        return all(_leaves_known(p) for p in pred.parts)
    if isinstance(pred, m.Not):
        return _leaves_known(pred.part)
    return type(pred) in (m.Always, m.StatusIs, m.HasGatewayId)


def servable(by: Sequence[str], rate: m.RateMetric) -> bool:
    """Can a rollup answer this grouping and definition?"""
    if not set(by) <= {"provider_id", "type"} or len(set(by)) != len(by):
        return False
    return _leaves_known(rate.numerator) and _leaves_known(rate.denominator)


def _class_flags(rate: m.RateMetric) -> pl.DataFrame:
    """Per class: whether a snapshot of it is in the numerator and in the denominator."""
    statuses: list[str | None] = [None, *_STATUSES]
    rows = [(st, gid) for st in statuses for gid in (None, "gateway-id")]
    frame = pl.DataFrame(
        {
            "status": [r[0] for r in rows],
            "provider_message_id": [r[1] for r in rows],
            "last_error": [None] * len(rows),
        },
        schema={
            "status": pl.String,
            "provider_message_id": pl.String,
            "last_error": pl.Struct({"code": pl.String, "message": pl.String}),
        },
    )
    num_p, den_p = rate.numerator & rate.denominator, rate.denominator
    return frame.select(
        _class_expr().cast(pl.Int8).alias("cls"),
        num_p.polars().cast(pl.Int64).alias("num"),
        den_p.polars().cast(pl.Int64).alias("den"),
    )


def _class_expr() -> pl.Expr:
    """A snapshot's class: its status (0: none or another, then each known one) x gateway id.

    A null status and one outside the known six match the same servable predicates
    (:class:`~kmsg_analytics._metrics.StatusIs` takes known statuses only and is false
    on a null); equality tests are much lighter than a lookup on 22M strings.
    """
    status = pl.col("status")
    code = pl.sum_horizontal(
        [(status == s).fill_null(False).cast(pl.Int64) * (i + 1) for i, s in enumerate(_STATUSES)]
    )
    return code * 2 + m.HasGatewayId().polars().cast(pl.Int64)


# --------------------------------------------------------------------------- store state


def store_state(store: Any) -> tuple[Any, ...] | None:
    """What identifies the snapshots a store holds now (``None``: it cannot say).

    For a lake: its history and current files (path, size, modification time, inode)
    and its state file's sequence and watermark, after publishing what is buffered; for
    an in-memory store: its last sequence and how many snapshots it holds.
    """
    from ._lake import ParquetTrackingStore
    from ._store import InMemoryTrackingStore

    if isinstance(store, ParquetTrackingStore):
        store.flush()
        files: list[tuple[Any, ...]] = []
        names = [str(f.path) for f in store.paths.history_files()]
        for name in [*names, *store._current_files(), str(store.paths.open_file())]:
            try:
                st = os.stat(name)
            except FileNotFoundError:
                files.append((name, None))
                continue
            files.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
        state = store._state()
        return ("lake", str(store.paths.root), state.get("seq"), state.get("watermark"), *files)
    if isinstance(store, InMemoryTrackingStore):
        return ("memory", store._seq, len(store._history))
    return None


# --------------------------------------------------------------------------- the cache

_LOCK = threading.Lock()
_KEPT: weakref.WeakKeyDictionary[Any, OrderedDict[tuple[Any, ...], MaturityRollup]] = (
    weakref.WeakKeyDictionary()
)
_BUILDING: dict[tuple[int, tuple[Any, ...]], threading.Lock] = {}


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _slot(state: tuple[Any, ...], now: datetime, ages_us: Sequence[int]) -> tuple[Any, ...]:
    return (state, _micros(now), tuple(ages_us))


def cached_rollup(store: Any, ages_us: Sequence[int], now: datetime) -> MaturityRollup | None:
    """The kept rollup of the store as it is now, for ``now`` and the ages (or ``None``)."""
    state = store_state(store)
    if state is None:
        return None
    with _LOCK:
        kept = _KEPT.get(store)
        found = kept.get(_slot(state, now, ages_us)) if kept is not None else None
        if found is not None and kept is not None:
            kept.move_to_end(_slot(state, now, ages_us))
        return found


def build_rollup(store: Any, ages_us: Sequence[int], now: datetime) -> MaturityRollup | None:
    """The rollup of the store as it is now (built and kept unless one is kept already).

    ``None`` when the store cannot say when it changed, or its history does not fit the
    rollup's packing (then curves are computed from the snapshots). Two threads asking
    for the same rollup build it once.
    """
    state = store_state(store)
    if state is None or len(ages_us) > MAX_AGES:
        return None
    slot = _slot(state, now, ages_us)
    with _LOCK:
        building = _BUILDING.setdefault((id(store), slot), threading.Lock())
    with building:
        found = cached_rollup(store, ages_us, now)
        if found is not None:
            return found
        try:
            rollup = _build(store, state, ages_us, now)
            if rollup is not None and store_state(store) == state:  # else the lake changed
                with _LOCK:
                    kept = _KEPT.setdefault(store, OrderedDict())
                    kept[slot] = rollup
                    while len(kept) > KEEP:
                        kept.popitem(last=False)
        finally:  # (only once it is kept: a later caller finds it instead of building)
            with _LOCK:
                _BUILDING.pop((id(store), slot), None)
        return rollup


# --------------------------------------------------------------------------- building


def _build(
    store: Any, state: tuple[Any, ...], ages_us: Sequence[int], now: datetime
) -> MaturityRollup | None:
    k = len(ages_us)
    hist = store.history()
    hour = pl.col("requested_at").dt.epoch("us") // _HOUR_US
    pairs = (
        hist.group_by("provider_id", "type")
        .agg(hour.min().alias("lo"), hour.max().alias("hi"), pl.col("seq").max().alias("seq"))
        .collect(engine="streaming")
    )
    providers = sorted({p for p in pairs.get_column("provider_id") if p is not None})
    types = sorted({t for t in pairs.get_column("type") if t is not None})
    lo, hi = pairs.get_column("lo").min(), pairs.get_column("hi").max()
    seq_max = pairs.get_column("seq").max()
    hour0 = int(lo) if isinstance(lo, int) else 0
    hour_bits = max((int(hi) - hour0).bit_length() if isinstance(hi, int) else 0, 1)
    pair_bits = max(((len(providers) + 1) * (len(types) + 1) - 1).bit_length(), 1)
    cell_bits = hour_bits + pair_bits
    if cell_bits > 31:  # a cell per hour of 245 thousand years, or thousands of providers
        return None
    prov = pl.col("provider_id").cast(pl.Enum(providers)).to_physical().cast(pl.Int64)
    typ = pl.col("type").cast(pl.Enum(types)).to_physical().cast(pl.Int64)
    pair = prov.fill_null(len(providers)) * (len(types) + 1) + typ.fill_null(len(types))
    cell = pair * (1 << hour_bits) + hour - hour0
    key = h._key_hash(pl.col("message_id")) // 2
    ids = store.current().select("message_id")
    hashed = h._unique_key(ids, key)
    seq_bits = int(seq_max).bit_length() if isinstance(seq_max, int) else 1
    sorted_rows = _sorted_rows(
        hist,
        key if hashed else pl.col("message_id"),
        hashed,
        ages_us,
        now,
        cell,
        cell_bits,
        seq_bits,
    )
    if sorted_rows is None:
        return None

    def run(part: Callable[[], _Chunk]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, Any]:
        keys, packed, cells = part()
        return _chunk_rollup(keys, packed, cells, k)

    # chunks are independent and their array passes release the interpreter lock
    with ThreadPoolExecutor(max_workers=max(1, min(2, pl.thread_pool_size()))) as pool:
        found = list(pool.map(run, _chunks(sorted_rows, cell_bits, _layout(k)[3])))
    del sorted_rows
    span = k + 2
    states = _summed([f[0] for f in found])
    heads = _summed([f[1] for f in found])
    cells = _summed([f[2] for f in found])
    odd_keys = [f[3] for f in found if len(f[3])]
    odd = pl.DataFrame(schema=hist.select(_SNAPSHOT_COLUMNS).collect_schema())
    if odd_keys:
        if hashed:
            wanted = pl.Series(np.concatenate([np.asarray(x) for x in odd_keys]))
            odd = hist.filter(key.is_in(wanted.implode())).select(_SNAPSHOT_COLUMNS).collect()
        else:
            names = pl.concat([pl.Series(x) for x in odd_keys])
            odd = (
                hist.filter(pl.col("message_id").is_in(names.implode()))
                .select(_SNAPSHOT_COLUMNS)
                .collect()
            )
        if odd.height > _MAX_ODD_ROWS:
            return None

    def cell_columns(code: pl.Expr) -> list[pl.Expr]:
        pair = code // (1 << hour_bits)
        prov = pair // (len(types) + 1)
        typ = pair % (len(types) + 1)
        return [
            (code % (1 << hour_bits) + hour0).alias("hour"),
            prov.replace_strict(
                dict(enumerate(providers)), default=None, return_dtype=pl.String
            ).alias("provider_id"),
            typ.replace_strict(dict(enumerate(types)), default=None, return_dtype=pl.String).alias(
                "type"
            ),
        ]

    code = pl.col("code")
    return MaturityRollup(
        state=state,
        now=now,
        ages_us=tuple(ages_us),
        states=states.select(
            *cell_columns(code // (span * span * 16)),
            (code // (span * 16) % span).cast(pl.Int32).alias("a"),
            (code // 16 % span).cast(pl.Int32).alias("b"),
            (code % 16).cast(pl.Int8).alias("cls"),
            pl.col("count"),
        ),
        heads=heads.select(
            *cell_columns(code // (span * span)),
            (code // span % span - 1).cast(pl.Int32).alias("mf"),
            (code % span).cast(pl.Int32).alias("fv"),
            pl.col("count").alias("c"),
        ),
        cells=cells.select(*cell_columns(code)),
        odd=odd,
    )


def _summed(frames: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(frames).group_by("code").agg(pl.col("count").sum()).sort("code")


def _sorted_rows(
    hist: pl.LazyFrame,
    key: pl.Expr,
    hashed: bool,
    ages_us: Sequence[int],
    now: datetime,
    cell: pl.Expr,
    cell_bits: int,
    seq_bits: int,
) -> pl.DataFrame | pl.Series | None:
    """Per snapshot, sorted by (message, seq): the key, the packed integer, the cell.

    When ``seq`` and the cell fit in the packed integer beside the rest, the cell is
    packed right below ``seq`` and the key and the packed integer are sorted as one
    128-bit value (the fastest and smallest sort); otherwise the cell is carried along.
    """
    requested = pl.col("requested_at").dt.epoch("us")
    ns = (pl.col("snapshot_kind") == "send").fill_null(False).not_()
    age_bits, cls_bit, ns_bit, low_bits = _layout(len(ages_us))
    inline = hashed and seq_bits + cell_bits + low_bits <= _PACK_BITS
    seq_bit = low_bits + cell_bits if inline else low_bits
    parts = hist.select(
        key.alias("__m"),
        pl.col("seq"),
        requested.alias("__r"),
        (pl.col("recorded_at").dt.epoch("us") - requested).alias("__a"),
        (ns.cast(pl.Int64) * (1 << ns_bit) + _class_expr() * (1 << cls_bit)).alias("__f"),
        cell.alias("__c"),
    )
    now_us = _micros(now)
    age, req = pl.col("__a"), pl.col("__r")
    idx = pl.sum_horizontal([(age > a).cast(pl.Int64) for a in ages_us])
    mo1 = pl.sum_horizontal([(req <= now_us - a).cast(pl.Int64) for a in ages_us])
    packed = pl.col("seq") * (1 << seq_bit) + pl.col("__f") + mo1 * (1 << age_bits) + idx
    if inline:
        packed = packed + pl.col("__c") * (1 << low_bits)
    packed = pl.when(pl.col("seq").is_between(0, (1 << (_PACK_BITS - seq_bit)) - 1)).then(packed)
    rows = parts.select("__m", packed.alias("__p"), pl.col("__c").cast(pl.Int32))
    half = pl.lit(1 << 64, pl.Int128)
    wide = pl.col("__m").cast(pl.Int128) * half + pl.col("__p").cast(pl.Int128)
    k = pl.col("__k")
    split = [
        (k // half).cast(pl.UInt64).alias("__m"),
        k.cast(pl.Int64, wrap_numerical=True).alias("__p"),
    ]
    if inline:
        # the streaming engine sorts on one thread: the values are collected, then
        # sorted in memory (several times faster; twice 16 bytes per snapshot at most),
        # and split a chunk at a time (see _chunks)
        values = rows.select(wide.alias("__k")).collect(engine="streaming").to_series()
        values.sort(in_place=True)
        if values.null_count():
            return None
        return values
    if hashed:
        out = (
            rows.select(wide.alias("__k"), "__c")
            .collect(engine="streaming")
            .sort("__k")
            .select(*split, "__c")
        )
    else:
        out = rows.sort(["__m", "__p"]).collect(engine="streaming")
    if out.get_column("__p").null_count() or out.get_column("__c").null_count():
        return None  # a seq or time the packing cannot hold: curves come from the snapshots
    return out


_Chunk = tuple[h._Keys, np.ndarray[Any, Any], np.ndarray[Any, Any]]


def _chunks(
    rows: pl.DataFrame | pl.Series, cell_bits: int, low_bits: int
) -> Iterator[Callable[[], _Chunk]]:
    """The sorted rows a few million at a time, never splitting a message.

    Each item, called, gives the chunk's message keys, packed integers and cells (the
    128-bit sorted values are split only then, a chunk at a time).
    """
    if isinstance(rows, pl.DataFrame):
        for keys, packed, cells in h._message_chunks(rows, ["__c"]):
            yield functools.partial(_given, keys, packed, cells.get_column("__c").to_numpy())
        return
    half = 1 << 64
    cuts = [0]
    for at in range(_CHUNK_ROWS, rows.len(), _CHUNK_ROWS):
        first = (int(rows[at]) // half) * half  # the message's smallest possible value
        cut = int(rows.search_sorted(first, side="left"))
        if cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(rows.len())
    wide = pl.lit(half, pl.Int128)
    k = pl.col(rows.name)
    low = k.cast(pl.Int64, wrap_numerical=True)
    split = [
        (k // wide).cast(pl.UInt64).alias("__m"),
        low.alias("__p"),
        ((low // (1 << low_bits)) % (1 << cell_bits)).cast(pl.Int32).alias("__c"),
    ]

    def part(lo: int, hi: int) -> _Chunk:
        frame = rows.slice(lo, hi - lo).to_frame().select(split)
        return tuple(frame.get_column(c).to_numpy() for c in ("__m", "__p", "__c"))  # type: ignore[return-value]

    for lo, hi in itertools.pairwise(cuts):
        yield functools.partial(part, lo, hi)


def _given(keys: h._Keys, packed: np.ndarray[Any, Any], cells: np.ndarray[Any, Any]) -> _Chunk:
    return keys, packed, cells


def _tally(codes: np.ndarray[Any, Any]) -> pl.DataFrame:
    return (
        pl.DataFrame({"code": codes.astype(np.int64)})
        .group_by("code")
        .agg(pl.len().cast(pl.Int64).alias("count"))
    )


def _chunk_rollup(
    keys: h._Keys, p: np.ndarray[Any, Any], c: np.ndarray[Any, Any], k: int
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, Any]:
    """States, heads and cells of whole messages (counted per code), and the odd keys."""
    age_bits, cls_bit, ns_bit, _low = _layout(k)
    ms = h.message_states(keys, p, k, ns_bit, age_bits)
    cell = c[ms.heads_at].astype(np.int64)  # each message's cell, from its first snapshot
    odd = np.zeros(cell.size, dtype=np.bool_)
    odd[ms.seg[c != cell[ms.seg]]] = True
    good = ~odd
    state = ms.state & good[ms.seg]
    span = k + 2
    cls = (p[state] >> cls_bit) & 15
    at = ms.seg[state]
    state_code = ((cell[at] * span + ms.idx[state]) * span + ms.stop[state]) * 16 + cls
    seen = ms.seen & good
    head_code = (cell[seen] * span + ms.mo1[seen]) * span + ms.first_visible[seen]
    odd_at = ms.heads_at[odd]
    odd_keys = keys[odd_at] if isinstance(keys, np.ndarray) else keys.gather(odd_at)
    return _tally(state_code), _tally(head_code), _tally(cell[good]), odd_keys


# --------------------------------------------------------------------------- answering


def rollup_counts(
    rollup: MaturityRollup,
    history: Callable[[], pl.LazyFrame],
    ids: pl.LazyFrame,
    hash_number: Callable[[str, str], str],
    start: datetime,
    end: datetime,
    provider_id: str | Sequence[str] | None,
    type: str | Sequence[str] | None,
    by: Sequence[str],
    rate: m.RateMetric,
) -> pl.DataFrame:
    """What :func:`~kmsg_analytics._analytics_history.maturity_counts` gives for the window.

    The whole request hours of ``[start, end]`` come from the rollup; the snapshots of
    the hours it covers only in part (read from ``history()``) and those of the odd
    messages are counted exactly. ``servable(by, rate)`` must hold.
    """
    k = len(rollup.ages_us)
    s_us, e_us = _micros(start), _micros(end)
    h_lo = math.ceil(s_us / _HOUR_US) if s_us % _HOUR_US else s_us // _HOUR_US
    h_hi = (e_us + 1) // _HOUR_US  # whole hours: h_lo <= hour < h_hi
    flt = RecordFilter(
        requested_at_from=start, requested_at_to=end, provider_id=provider_id, type=type
    )
    picks = filter_expr(RecordFilter(provider_id=flt.provider_id, type=flt.type), hash_number)
    whole = picks & pl.col("hour").is_between(h_lo, h_hi - 1)
    flags = _class_flags(rate)
    states = (
        rollup.states.lazy()
        .filter(whole)
        .join(flags.lazy(), on="cls")
        .group_by([*by, "a", "b"])
        .agg(
            (pl.col("count") * pl.col("num")).sum().alias("n"),
            (pl.col("count") * pl.col("den")).sum().alias("d"),
        )
    )
    heads = rollup.heads.lazy().filter(whole).group_by([*by, "mf", "fv"]).agg(pl.col("c").sum())
    groups = rollup.cells.lazy().filter(whole).select(by).unique()
    st, hd, gr = pl.collect_all([states, heads, groups])
    parts: h.Parts = [(st, hd, gr)]
    # exactly: the odd messages, and the snapshots of hours the window covers in part
    in_window = filter_expr(flt, hash_number)
    exact = [rollup.odd.lazy().filter(in_window).select(_SNAPSHOT_COLUMNS)]
    requested = pl.col("requested_at").dt.epoch("us")
    partial = []
    if h_lo >= h_hi:
        partial.append(pl.lit(True))
    else:
        if s_us < h_lo * _HOUR_US:
            partial.append(requested < h_lo * _HOUR_US)
        if e_us >= h_hi * _HOUR_US:
            partial.append(requested >= h_hi * _HOUR_US)
    if partial:
        odd_ids = rollup.odd.select("message_id").unique()
        exact.append(
            history()
            .filter(in_window & pl.any_horizontal(partial))
            .select(_SNAPSHOT_COLUMNS)
            .join(odd_ids.lazy(), on="message_id", how="anti")
        )
    snaps = pl.concat(exact, how="vertical_relaxed") if len(exact) > 1 else exact[0]
    if len(exact) > 1 or rollup.odd.height:
        snaps_df = snaps.collect()
        if snaps_df.height:
            parts += h.maturity_parts(snaps_df.lazy(), ids, by, rollup.ages_us, rollup.now, rate)
    return h.maturity_curve(parts, by, k, rate)


def maturity_frame(
    counts: pl.DataFrame,
    labels: Sequence[str],
    ages_us: Sequence[int],
    rate: m.RateMetric,
    by: Sequence[str],
    min_n: int,
) -> pl.DataFrame:
    """The rate maturity answer from its counts (what ``rate_maturity`` returns)."""
    age_frame = pl.DataFrame(
        {"idx": list(range(len(ages_us))), "age": labels, "age_s": [a / 1e6 for a in ages_us]},
        schema={"idx": pl.Int32, "age": pl.String, "age_s": pl.Float64},
    )
    return (
        counts.join(age_frame, on="idx", how="left")
        .with_columns(pl.lit(rate.name).alias("definition"))
        .with_columns(m.polars_rate_columns("numerator", "denominator", min_n=min_n))
        .sort([*by, "idx"], nulls_last=True)
        .select(
            *by,
            "age",
            "age_s",
            "messages",
            "definition",
            *m.RATE_COLUMNS,
        )
    )


def rate_maturity(
    analytics: DeliveryAnalytics,
    start: Any,
    end: Any,
    *,
    ages: Sequence[str | timedelta] = DEFAULT_AGES,
    by: str | Sequence[str] | None = None,
    definition: str | m.RateMetric = "delivered_of_total",
    provider_id: str | Sequence[str] | None = None,
    type: str | Sequence[str] | None = None,
    now: Any = None,
    build: bool = True,
) -> pl.DataFrame:
    """``analytics.rate_maturity(...)`` (the same frame), answered from a rollup when it can.

    With ``build`` the rollup of the store as it is now is built when none is kept (a
    pass over the whole history, then every curve is a small aggregation); without it
    a kept one is used, or the curve is computed from the snapshots as usual.
    """
    s, e = _window(start, end)
    moment = analytics._now(None, now)
    rate = m.rate_metric(definition)
    by_cols = _fields(by, "by")
    labels, ages_us = _ages(ages)
    rollup = None
    if servable(by_cols, rate):
        if build:
            rollup = build_rollup(analytics.store, ages_us, moment)
        else:
            rollup = cached_rollup(analytics.store, ages_us, moment)
    if rollup is None:
        return analytics.rate_maturity(
            s,
            e,
            ages=ages,
            by=by,
            definition=definition,
            provider_id=provider_id,
            type=type,
            now=moment,
        )
    store = analytics.store
    counts = rollup_counts(
        rollup,
        store.history,
        store.current().select("message_id"),
        analytics._hash,
        s,
        e,
        provider_id,
        type,
        by_cols,
        rate,
    )
    return maturity_frame(counts, labels, ages_us, rate, by_cols, analytics.min_n)
