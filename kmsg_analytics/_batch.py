"""Many sends at once: the vectorised twin of ``DeliveryTrackingService.build_record``.

Each pair is read once into plain columns; validation, number hashing and the status
rules then run as Polars expressions. When a check fails, the pair is handed to the
one-at-a-time path, which raises the same precise error a single ``record_send`` would.
The equivalence of both paths is a tested property.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from operator import itemgetter
from typing import Any, Final

import polars as pl
import pyarrow as pa

from ._crypto import NumberCipher
from ._loading import hash_numbers, mask_numbers, normalize_numbers, seal_numbers
from ._phone import HashKey
from ._records import (
    DEFAULT_RETENTION_CLASS,
    MESSAGE_TYPES,
    HookContext,
    SendResult,
    SendWarning,
    _camel,
    _custom_fields,
    coerce_failover,
    coerce_time,
    pick,
)
from ._schema import POLARS_SCHEMA, SNAPSHOT_SCHEMA, dump_json, to_micros

__all__ = ["sends_to_table"]

_COLUMNS = (
    "message_id", "r_message_id", "ts", "type", "r_type", "to", "r_to", "from_",
    "scheduled", "provider_id", "pmid", "meta",
)  # fmt: skip


class _Fallback(Exception):
    """This pair needs the careful path (it will raise the precise error)."""


def _micros(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime) and value.tzinfo is not None:
        return to_micros(value)
    return to_micros(coerce_time(value, "timestamp"))


def _extract(context: Any, result: Any) -> tuple[Any, ...]:
    """One pair as a row of raw values (type checks only; rules come later)."""
    if isinstance(context, HookContext):
        o = context.options
        mid, ts = context.message_id, context.timestamp
        typ, to, frm, sched, custom, failover = (
            o.type,
            o.to,
            o.from_,
            o.scheduled_at,
            o.custom_fields,
            o.failover,
        )
    elif isinstance(context, dict | Mapping):
        opts = pick(context, "options", "sendOptions")
        if opts is None:
            opts = context
        if not isinstance(opts, Mapping):
            raise _Fallback
        mid, ts = pick(context, "message_id"), pick(context, "timestamp", "requestedAt")
        typ, to, frm = pick(opts, "type"), pick(opts, "to"), pick(opts, "from_", "from")
        sched, custom, failover = (
            pick(opts, "scheduled_at"),
            pick(opts, "custom_fields"),
            pick(opts, "failover"),
        )
    else:
        raise _Fallback
    if isinstance(result, SendResult):
        rmid, pid, pmid, rtype, rto, warnings = (
            result.message_id, result.provider_id, result.provider_message_id,
            result.type, result.to, result.warnings,
        )  # fmt: skip
    elif isinstance(result, dict | Mapping):
        rmid, pid, pmid = (
            pick(result, "message_id"),
            pick(result, "provider_id"),
            pick(result, "provider_message_id"),
        )
        rtype, rto, warnings = pick(result, "type"), pick(result, "to"), pick(result, "warnings")
    else:
        raise _Fallback
    for text in (mid, rmid, pid, typ, rtype, to, rto):
        if not isinstance(text, str):
            raise _Fallback
    if (frm is not None and not isinstance(frm, str)) or (
        pmid is not None and not isinstance(pmid, str)
    ):
        raise _Fallback
    if len(to) > 64 or (frm is not None and len(frm) > 64):
        raise _Fallback
    requested = _micros(ts)
    if requested is None:  # no request time: refused (by the single-pair code, precisely)
        raise _Fallback
    codes = _warning_codes(warnings)
    meta: str | None = None
    alimtalk = rtype == "ALIMTALK" or typ == "ALIMTALK"
    if custom is not None or alimtalk or failover is not None:
        meta = _metadata(custom, failover, codes, alimtalk=alimtalk)
    return (
        mid,
        rmid,
        requested,
        typ,
        rtype,
        to,
        rto,
        frm or None,
        _micros(sched),
        pid,
        pmid or "",
        meta,
    )


def _warning_codes(warnings: Any) -> list[str]:
    """The codes of a result's warnings, or the careful path when any looks wrong."""
    if not warnings:
        return []
    if isinstance(warnings, str | Mapping):
        raise _Fallback
    codes = []
    for w in warnings:
        if isinstance(w, SendWarning):
            code, message = w.code, w.message
        elif isinstance(w, Mapping):
            code, message = pick(w, "code"), pick(w, "message")
        else:
            raise _Fallback
        if not isinstance(code, str) or not code.strip() or "\x00" in code or len(code) > 256:
            raise _Fallback
        if message is not None and (not isinstance(message, str) or len(message) > 4096):
            raise _Fallback
        codes.append(code.strip())
    return codes


def _metadata(custom: Any, failover: Any, codes: list[str], *, alimtalk: bool) -> str:
    meta: dict[str, Any] = {}
    custom = None if custom is None else _custom_fields(custom)  # validated, JSON-safe
    if custom:  # (an empty mapping is not kept, as in a single send)
        meta["custom_fields"] = custom
    fo = coerce_failover(failover)
    if alimtalk:
        request = {} if fo is None else {
            k: v for k, v in (
                ("enabled", fo.enabled),
                ("fallback_channel", fo.fallback_channel),
                ("fallback_content", fo.fallback_content),
                ("fallback_title", fo.fallback_title),
            ) if v is not None
        }  # fmt: skip
        meta["failover"] = {
            "request": request,
            "send_warning_codes": codes,
            "api_attempt": {"attempted": False, "status": "not_attempted"},
        }
    return dump_json(meta)


def sends_to_table(
    pairs: Sequence[tuple[Any, Any]],
    *,
    key: HashKey,
    keep_numbers: bool,
    cipher: NumberCipher | None = None,
    now: int,
    initial_delay_us: int,
    grace_us: int,
    careful: Callable[[Any, Any], Any],
) -> pa.Table:
    """Lake rows (``send`` snapshots) for many pairs; ``careful`` raises the precise error."""
    frame = _read_columnar(pairs, careful)
    if frame is None:
        frame = _read_rows(pairs, careful)
    mid, rmid = pl.col("message_id").str.strip_chars(), pl.col("r_message_id").str.strip_chars()
    norm = _normalized(frame.get_column("r_to"), frame.get_column("to"), frame.get_column("from_"))
    frame = frame.with_columns(
        message_id=mid,
        pmid=pl.col("pmid").str.strip_chars(),
        to_norm=norm(frame.get_column("r_to")),
        from_norm=norm(frame.get_column("from_")),
        ctx_to_norm=norm(frame.get_column("to")),
    )
    lo, hi = 946_684_800_000_000, 7_258_118_400_000_000  # 2000-01-01 .. 2200-01-01

    def out_of_range(col: str) -> pl.Expr:
        return (pl.col(col) < lo) | (pl.col(col) >= hi)

    def bad_id(col: pl.Expr) -> pl.Expr:
        return (col == "") | (col.str.len_chars() > 256) | col.str.contains("\x00", literal=True)

    bad = pl.any_horizontal(
        bad_id(pl.col("message_id")),
        pl.col("message_id") != rmid,
        bad_id(pl.col("provider_id").str.strip_chars()),
        ~pl.col("type").is_in(MESSAGE_TYPES),
        ~pl.col("r_type").is_in(MESSAGE_TYPES),
        pl.col("to_norm").is_null(),
        pl.col("ctx_to_norm").is_null(),
        pl.col("from_").is_not_null() & pl.col("from_norm").is_null(),
        pl.col("ts").is_null() | out_of_range("ts"),
        pl.col("scheduled").is_not_null() & out_of_range("scheduled"),
        (pl.col("pmid").str.len_chars() > 256) | pl.col("pmid").str.contains("\x00", literal=True),
    )
    hits = frame.select(pl.arg_where(bad)).to_series()
    if hits.len():
        _raise_for(pairs, int(hits[0]), careful)
    ts_type = pl.Datetime("us", "UTC")
    missing, scheduled = pl.col("pmid") == "", pl.col("scheduled").is_not_null()
    to_n, from_n = frame.get_column("to_norm"), frame.get_column("from_norm")
    out = frame.with_columns(
        to_hash=hash_numbers(to_n, key),
        from_hash=hash_numbers(from_n, key),
        to_masked=_distinct(to_n, mask_numbers),
        from_masked=_distinct(from_n, mask_numbers),
        to_enc=seal_numbers(to_n, cipher, "to"),
        from_enc=seal_numbers(from_n, cipher, "from_"),
    ).select(
        seq=pl.lit(0, pl.Int64),
        snapshot_kind=pl.lit("send"),
        recorded_at=pl.lit(now).cast(ts_type),
        message_id=pl.col("message_id"),
        provider_id=pl.col("provider_id").str.strip_chars(),
        provider_message_id=pl.col("pmid"),
        type=pl.col("r_type"),
        to=pl.col("r_to") if keep_numbers else pl.lit(None, pl.String),
        from_=pl.col("from_") if keep_numbers else pl.lit(None, pl.String),
        to_hash=pl.col("to_hash"),
        to_masked=pl.col("to_masked"),
        from_hash=pl.col("from_hash"),
        from_masked=pl.col("from_masked"),
        to_enc=pl.col("to_enc"),
        from_enc=pl.col("from_enc"),
        requested_at=pl.col("ts").cast(ts_type),
        scheduled_at=pl.col("scheduled").cast(ts_type),
        status=pl.when(missing)
        .then(pl.lit("UNKNOWN"))
        .when(scheduled)
        .then(pl.lit("PENDING"))
        .otherwise(pl.lit("SENT")),
        provider_status_code=pl.lit(None, pl.String),
        provider_status_message=pl.lit(None, pl.String),
        sent_at=pl.lit(None, ts_type),
        delivered_at=pl.lit(None, ts_type),
        failed_at=pl.lit(None, ts_type),
        status_updated_at=pl.lit(now).cast(ts_type),
        attempt_count=pl.lit(0, pl.Int32),
        last_checked_at=pl.lit(None, ts_type),
        next_check_at=pl.when(missing)
        .then(pl.lit(now))
        .when(scheduled)
        .then(pl.col("scheduled") + grace_us)
        .otherwise(pl.col("ts") + initial_delay_us)
        .cast(ts_type),
        last_error=pl.when(missing).then(
            pl.struct(
                code=pl.lit("MISSING_PROVIDER_MESSAGE_ID"),
                message=pl.lit("the send result carries no provider message id"),
            )
        ),
        raw=pl.lit(None, pl.String),
        metadata=pl.col("meta").fill_null("{}"),
        retention_class=pl.lit(DEFAULT_RETENTION_CLASS),
        retention_bucket_ym=pl.col("ts").cast(ts_type).dt.year().cast(pl.Int32) * 100
        + pl.col("ts").cast(ts_type).dt.month().cast(pl.Int32),
    )
    return out.cast(dict(POLARS_SCHEMA)).to_arrow().cast(SNAPSHOT_SCHEMA)  # type: ignore[arg-type]


def _distinct(values: pl.Series, fn: Callable[[pl.Expr], pl.Expr]) -> pl.Series:
    """``fn`` computed once per distinct value (numbers repeat: senders, regular recipients)."""
    uniq = values.drop_nulls().unique()
    mapped = pl.select(fn(pl.lit(uniq))).to_series()
    return values.replace_strict(uniq, mapped, default=None, return_dtype=pl.String)


def _normalized(*columns: pl.Series) -> Callable[[pl.Series], pl.Series]:
    """Normalisation of the numbers in ``columns``, each distinct number computed once."""
    numbers = pl.concat([c.cast(pl.String) for c in columns]).drop_nulls().unique()
    normal = pl.select(normalize_numbers(pl.lit(numbers))).to_series()

    def norm(values: pl.Series) -> pl.Series:
        return values.replace_strict(numbers, normal, default=None, return_dtype=pl.String)

    return norm


def _read_rows(
    pairs: Sequence[tuple[Any, Any]], careful: Callable[[Any, Any], Any]
) -> pl.DataFrame:
    """The raw columns, one pair at a time (any shape our single-send path accepts)."""
    rows = []
    for i, (context, result) in enumerate(pairs):
        try:
            rows.append(_extract(context, result))
        except Exception:
            _raise_for(pairs, i, careful)
    try:
        return pl.DataFrame(rows, schema=_RAW_SCHEMA, orient="row")
    except Exception:  # e.g. text that is not valid Unicode: find the pair and say why
        for i in range(len(pairs)):
            _raise_for(pairs, i, careful, must_raise=False)
        raise


_RAW_SCHEMA: Final = dict.fromkeys(_COLUMNS, pl.String) | {"ts": pl.Int64, "scheduled": pl.Int64}

#: k-msg's metadata of an ALIMTALK send with no failover request, warnings or custom fields.
_PLAIN_ALIMTALK_META: Final = _metadata(None, None, [], alimtalk=True)

#: Where each raw column comes from: (the pair's side, the name as :func:`pick` reads it,
#: aliases, whether it lives in the context's options).
_SOURCES: Final = {
    "message_id": ("c", "message_id", (), False),
    "ts": ("c", "timestamp", ("requestedAt",), False),
    "type": ("c", "type", (), True),
    "to": ("c", "to", (), True),
    "from_": ("c", "from_", ("from",), True),
    "scheduled": ("c", "scheduled_at", (), True),
    "custom": ("c", "custom_fields", (), True),
    "failover": ("c", "failover", (), True),
    "r_message_id": ("r", "message_id", (), False),
    "provider_id": ("r", "provider_id", (), False),
    "pmid": ("r", "provider_message_id", (), False),
    "r_type": ("r", "type", (), False),
    "r_to": ("r", "to", (), False),
    "warnings": ("r", "warnings", (), False),
}
_TEXT: Final = ("message_id", "type", "to", "from_", "r_message_id", "provider_id", "pmid",
                "r_type", "r_to")  # fmt: skip
_EXTRAS: Final = ("custom", "failover", "warnings")  # values that need Python (metadata)


def _spelled(frame: pl.DataFrame, name: str, aliases: tuple[str, ...]) -> pl.Series:
    """The column :func:`pick` reads for ``name`` (all null when no spelling occurs).

    After Polars reads many mappings, an absent key and a ``None`` value look alike, so
    :func:`pick`'s rule (the first spelling present wins, even holding ``None``) is
    exact here only when at most one spelling occurs in the whole batch.
    """
    present = [n for n in dict.fromkeys((name, _camel(name), *aliases)) if n in frame.columns]
    if len(present) > 1:
        raise _Fallback
    if not present:
        return pl.Series(name, [None] * frame.height, pl.Null)
    return frame.get_column(present[0])


def _read_columnar(
    pairs: Sequence[tuple[Any, Any]], careful: Callable[[Any, Any], Any]
) -> pl.DataFrame | None:
    """The raw columns, read by Polars from plain dicts at once; ``None`` when Python must.

    This is the fast path for k-msg's JSON shape and our snake_case mappings: every
    context and result a plain ``dict``, times as epoch milliseconds. Anything else (our
    dataclasses, ISO strings, a value of an unexpected type, a key spelled two ways in
    one batch) is read pair by pair instead. Pairs carrying custom fields, a failover
    request or warnings get their metadata from the single-pair code.
    """
    contexts = [c for c, _ in pairs]
    results = [r for _, r in pairs]
    if not all(type(c) is dict for c in contexts) or not all(type(r) is dict for r in results):
        return None
    try:
        with _collector_paused():
            columns = _columns_of(contexts, results)
    except (Exception, pl.exceptions.PanicException):  # the columns cannot hold them:
        return None  # read pair by pair
    frame = pl.DataFrame(columns).with_columns(
        ts=_ms_to_us(pl.col("ts")),
        scheduled=_ms_to_us(pl.col("scheduled")),
        from_=pl.when(pl.col("from_") != "").then(pl.col("from_")),
        pmid=pl.col("pmid").fill_null(""),
        meta=pl.when((pl.col("type") == "ALIMTALK") | (pl.col("r_type") == "ALIMTALK")).then(
            pl.lit(_PLAIN_ALIMTALK_META)
        ),
    )
    # what the single-pair reading refuses before any rule: missing text, long numbers
    refused = pl.any_horizontal(
        *(pl.col(n).is_null() for n in _TEXT if n not in ("from_", "pmid")),
        pl.col("ts").is_null(),
        pl.col("to").str.len_chars() > 64,
        pl.col("from_").str.len_chars().fill_null(0) > 64,
    )
    hits = frame.select(pl.arg_where(refused)).to_series()
    if hits.len():
        _raise_for(pairs, int(hits[0]), careful)
    special = frame.select(pl.arg_where(pl.col("__extra"))).to_series()
    if special.len():  # custom fields, failover or warnings: the single-pair code says how
        found: list[str | None] = []
        for i in special.to_list():
            try:
                found.append(_extract(*pairs[i])[11])
            except Exception:
                _raise_for(pairs, i, careful)
        meta = frame.get_column("meta").clone()
        frame = frame.with_columns(meta.scatter(special, pl.Series(found, dtype=pl.String)))
    return frame.select(_COLUMNS)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while columns are read out of many dicts.

    Reading a batch builds a list per key; each list's allocations trigger collections that
    walk every pair of the batch (~6% of a 100k-pair ``record_sends``), and none of these
    objects form cycles. The collector's previous state is restored on the way out.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _ms_to_us(ms: pl.Expr) -> pl.Expr:
    """Epoch milliseconds as microseconds; far-off values stay far off (never wrap around)."""
    return pl.when(ms.abs() < 10**15).then(ms * 1000).otherwise(ms.sign() * 10**18)


#: Keys read as nested mappings; the extras' keys only say whether Python must read them.
_NESTED: Final = frozenset({"options", "sendOptions"})
_EXTRA_KEYS: Final = frozenset({"custom_fields", "customFields", "failover", "warnings"})


def _frame_of(dicts: list[dict[str, Any]]) -> pl.DataFrame:
    """Plain dicts as a frame, one column per key; raises when they do not fit in columns.

    All dicts must share one key set (the usual case; else :class:`_Fallback`). Reading
    one key of every dict into a list is several times faster than ``pl.from_dicts``.
    Values of the extras' keys (custom fields, failover, warnings) become flags: set
    where the pair's metadata needs the single-pair code.
    """
    keys = tuple(dicts[0])
    if set(map(len, dicts)) != {len(keys)}:
        raise _Fallback
    columns = []
    for key in keys:  # one list per key: no tuple per dict (fewer objects for the collector)
        try:
            values = list(map(itemgetter(key), dicts))
        except KeyError:  # as many keys, other names
            raise _Fallback from None
        if key in _EXTRA_KEYS:  # anything but None is read (and checked) by Python,
            empty_ok = key == "warnings"  # except an empty list of warnings
            flags = [v is not None and not (empty_ok and type(v) is list and not v) for v in values]
            columns.append(pl.Series(key, flags, pl.Boolean))
        elif key in _NESTED and all(type(v) is dict for v in values):
            columns.append(_frame_of(values).to_struct(key))
        else:  # strict: values of mixed types raise, except booleans among integers
            series = pl.Series(key, values, strict=True)
            if series.dtype.is_integer() and any(type(v) is bool for v in values):
                raise _Fallback
            columns.append(series)
    return pl.DataFrame(columns)


def _columns_of(contexts: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each raw column as :func:`_extract` reads it, and ``__extra`` (metadata needs Python)."""
    sides = {"c": _frame_of(contexts), "r": _frame_of(results)}
    options = _spelled(sides["c"], "options", ("sendOptions",))
    if options.dtype != pl.Null:
        if not isinstance(options.dtype, pl.Struct):
            raise _Fallback
        sides["o"] = options.struct.unnest()
    columns: dict[str, pl.Series] = {}
    for target, (side, name, aliases, in_options) in _SOURCES.items():
        series = _spelled(sides[side], name, aliases)
        if in_options and "o" in sides:  # where a context has options, they hold the value
            inner = _spelled(sides["o"], name, aliases)
            series = pl.select(
                pl.when(options.is_not_null()).then(inner).otherwise(series).alias(target)
            ).to_series()
        columns[target] = series.alias(target)
    for name in _TEXT:
        if columns[name].dtype not in (pl.String, pl.Null):
            raise _Fallback
        columns[name] = columns[name].cast(pl.String)
    for name in ("ts", "scheduled"):
        if columns[name].dtype not in (pl.Int64, pl.Null):
            raise _Fallback
        columns[name] = columns[name].cast(pl.Int64)
    extra = [columns[n].fill_null(False).cast(pl.Boolean) for n in _EXTRAS]
    out: dict[str, Any] = {n: columns[n] for n in (*_TEXT, "ts", "scheduled")}
    out["__extra"] = pl.select(pl.any_horizontal(extra)).to_series()
    return out


def _raise_for(
    pairs: Sequence[tuple[Any, Any]],
    i: int,
    careful: Callable[[Any, Any], Any],
    *,
    must_raise: bool = True,
) -> None:
    from ._errors import InvalidRecordError

    # a check can trip on a later pair first: the error names the first bad pair, as a
    # loop of single sends would (the pairs before ``i`` are re-checked on this error path)
    for j in range(i + 1) if must_raise else (i,):
        context, result = pairs[j]
        try:
            careful(context, result)
        except InvalidRecordError as err:
            expected = str(err).split(": expected ", 1)[-1]
            raise InvalidRecordError(f"pairs[{j}].{err.field}", err.value, expected) from None
    if must_raise:
        msg = f"pairs[{i}] was refused by the batch checks but accepted alone: please report this"
        raise AssertionError(msg)
