"""Turning chunks of k-msg rows into validated lake rows, vectorised in Polars, bad rows named."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import polars as pl
import pyarrow as pa

from ._kmsg_layout import JSON_FIELDS, TEXT_FIELDS, TIME_FIELDS
from ._loading import normalize_numbers
from ._records import DEFAULT_RETENTION_CLASS, DELIVERY_STATUSES, MESSAGE_TYPES, RETENTION_CLASSES
from ._schema import POLARS_SCHEMA, SNAPSHOT_SCHEMA, dump_json

if TYPE_CHECKING:
    from ._phone import HashKey

__all__ = ["BAD_SCHEMA", "Converter", "Memo", "NumberHasher", "canonical", "latest_time"]

#: k-msg's metadata keys that we spell in snake_case (outside ``custom_fields``).
_METADATA_KEYS: Final = (
    "customFields", "fallbackChannel", "fallbackContent", "fallbackTitle", "sendWarningCodes",
    "apiAttempt", "attemptedAt", "warningCode", "warningMessage", "fallbackMessageId",
    "fallbackProviderId", "errorCode", "errorMessage",
)  # fmt: skip
_METADATA_KEY_RE: Final = '"(?:' + "|".join(_METADATA_KEYS) + ')":'

_LOW_MS: Final = 946_684_800_000  # 2000-01-01
_HIGH_MS: Final = 7_258_118_400_000  # 2200-01-01
_TS: Final = pl.Datetime("us", "UTC")

BAD_SCHEMA: Final = {
    "__i": pl.UInt32, "message_id": pl.String, "column": pl.String, "reason": pl.String,
}  # fmt: skip


def canonical(frame: pl.DataFrame, columns: Mapping[str, str]) -> pl.DataFrame:
    """The chunk with our field names and plain types (JSON as text, ids as text).

    ``columns`` maps our field names to the chunk's (source) column names.

    Examples
    --------
    >>> chunk = pl.DataFrame({"id": [1], "meta": [None]}, schema_overrides={"meta": pl.String})
    >>> canonical(chunk, {"message_id": "id", "metadata": "meta"}).schema
    Schema([('message_id', String), ('metadata', String)])
    """
    exprs: list[pl.Expr] = []
    for name, column in columns.items():
        col = pl.col(column)
        dtype = frame.schema[column]
        if name in TEXT_FIELDS or name in JSON_FIELDS:
            if dtype.is_nested():
                wrapped = pl.struct(col.alias("v")).struct.json_encode()
                col = wrapped.str.slice(5, wrapped.str.len_chars() - 6)
            elif dtype != pl.String:
                col = col.cast(pl.String)
        elif name == "attempt_count" and not dtype.is_integer():
            col = col.cast(pl.String)
        exprs.append(col.alias(name))
    return frame.select(exprs)


class Memo:
    """Results of a function of distinct text values, computed once and kept across chunks.

    ``compute`` gets the distinct values not seen yet (a non-null ``String`` series) and
    returns one row of results per value, in ``schema``. :meth:`lookup` gives the
    results of every value of a chunk, in its order (``null`` for ``null``), at the cost
    of one hash join once the values are known: recipients, metadata and error texts
    repeat across the chunks of a table, and are parsed, hashed or masked only once.
    At most ``limit`` values are kept (past it, those of the last chunk).

    Examples
    --------
    >>> memo = Memo(lambda v: v.str.len_chars().alias("n").to_frame(), {"n": pl.UInt32})
    >>> memo.lookup(pl.Series(["ab", None, "abc", "ab"])).get_column("n").to_list()
    [2, None, 3, 2]
    >>> memo.computed
    2
    """

    def __init__(
        self,
        compute: Callable[[pl.Series], pl.DataFrame],
        schema: Mapping[str, Any],
        *,
        limit: int = 500_000,
    ) -> None:
        self.compute = compute
        self.limit = limit
        self.computed = 0
        self._names = list(schema)
        self._known = pl.DataFrame(
            schema={_KEY: pl.String, _H: pl.UInt64, **schema, _HIT: pl.Boolean}
        )

    def forget(self) -> None:
        """Drop the values kept so far."""
        self._known = self._known.clear()

    def lookup(self, values: pl.Series) -> pl.DataFrame:
        """The results of each of ``values`` (a frame of ``schema``, one row per value)."""
        frame = values.cast(pl.String).alias(_KEY).to_frame().with_columns(_HASHED)
        joined = self._join(frame)
        missed = joined.get_column(_HIT).is_null() & frame.get_column(_KEY).is_not_null()
        if missed.any():  # values not met before: computed once each, filled in
            rows = missed.arg_true()
            keys = frame.get_column(_KEY).gather(rows)
            fresh = keys.unique().to_frame().with_columns(_HASHED)
            fresh = fresh.hstack(self.compute(fresh.get_column(_KEY)).select(self._names))
            self.computed += fresh.height
            filled = keys.to_frame().join(fresh, on=_KEY, how="left", maintain_order="left")
            joined = joined.with_columns(
                joined.get_column(c).scatter(rows, filled.get_column(c)) for c in self._names
            )
            fresh = fresh.with_columns(pl.lit(True).alias(_HIT))
            if self._known.height + fresh.height > self.limit:
                self._known = fresh
            else:
                self._known = pl.concat([self._known, fresh], how="vertical")
                if self._known.n_chunks() > 32:
                    self._known = self._known.rechunk()
        return joined.select(self._names)

    def _join(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The known results of each row, found by the 64-bit hash of its text.

        A join on the hash builds its table from numbers, not from every known text. Two
        texts sharing a hash (rare beyond belief, but possible) show as a row whose text
        differs from the one found, or as extra rows: the chunk is then joined on the
        texts themselves.
        """
        known = self._known
        if known.height > frame.height:  # the few known values of this chunk, not a table of all
            known = known.filter(pl.col(_H).is_in(frame.get_column(_H).drop_nulls().implode()))
        joined = frame.join(known, on=_H, how="left", maintain_order="left", suffix=_FOUND)
        if joined.height == frame.height:
            found = joined.get_column(_KEY + _FOUND)
            if not (found.is_not_null() & (found != joined.get_column(_KEY))).any():
                return joined.drop(_KEY + _FOUND)
        return frame.join(self._known.drop(_H), on=_KEY, how="left", maintain_order="left")


_KEY: Final = "__value"
_H: Final = "__hash"
_HIT: Final = "__known"
_FOUND: Final = "__found"
_HASHED: Final = pl.when(pl.col(_KEY).is_not_null()).then(pl.col(_KEY).hash()).alias(_H)


class NumberHasher:
    """Numbers as the lake keeps them: normalised, keyed hash and mask, each computed once.

    Recipients repeat across the chunks of a table, so what was computed for a number
    as written in the source is kept (a :class:`Memo` per column) and joined instead of
    computed again. The HMAC-SHA256 is the one of
    :meth:`kmsg_analytics._phone.HashKey.hash_normalized`, with the key's inner and outer
    pads hashed once instead of once per number.

    Examples
    --------
    >>> from kmsg_analytics._phone import HashKey
    >>> key = HashKey("doctest-key")
    >>> hasher = NumberHasher(key)
    >>> out = hasher.lookup(pl.Series(["010-1234-5678", None, "call me", "010-1234-5678"]))
    >>> out.get_column("norm").to_list()
    ['01012345678', None, None, '01012345678']
    >>> out.get_column("hash")[0] == key.hash_normalized("01012345678")
    True
    >>> out.get_column("masked")[3], hasher.computed
    ('010****5678', 1)
    >>> hasher.lookup(pl.Series(["010-1234-5678"])).row(0) == out.row(0), hasher.computed
    (True, 1)
    """

    def __init__(self, key: HashKey, *, limit: int = 500_000) -> None:
        self.limit = limit
        self.computed = 0
        secret = key._key
        if len(secret) > 64:  # HMAC: longer keys are hashed first
            secret = hashlib.sha256(secret).digest()
        block = secret.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self._memos: dict[str, Memo] = {}

    def lookup(self, values: pl.Series, *, column: str = "to") -> pl.DataFrame:
        """``norm``, ``hash`` and ``masked`` of each value (``None`` where not a number).

        ``blank`` tells the values with no character but spaces (``None`` for ``None``).

        ``column`` keeps the numbers of each source column apart (few senders, many
        recipients: each is joined against its own kind).
        """
        memo = self._memos.get(column)
        if memo is None:
            memo = self._memos[column] = Memo(self._compute, _NUMBER_SCHEMA, limit=self.limit)
        return memo.lookup(values)

    def forget(self) -> None:
        """Drop the numbers kept so far."""
        for memo in self._memos.values():
            memo.forget()

    def _compute(self, values: pl.Series) -> pl.DataFrame:
        norm = _normalize(values)
        fresh = (
            norm.alias("norm")
            .to_frame()
            .with_columns(masked=_mask(pl.col("norm")), blank=~values.str.contains(_NON_SPACE))
        )
        numbers = fresh.get_column("norm").drop_nulls().unique()
        hashes = pl.DataFrame(
            {"norm": numbers, "hash": self._hmac(numbers.to_list())},
            schema={"norm": pl.String, "hash": pl.String},
        )
        self.computed += hashes.height
        return fresh.join(hashes, on="norm", how="left", maintain_order="left")

    def _hmac(self, numbers: list[str]) -> list[str]:
        inner, outer = self._inner.copy, self._outer.copy
        out: list[str] = []
        for number in numbers:
            h = inner()
            h.update(number.encode())
            o = outer()
            o.update(h.digest())
            out.append(o.hexdigest())
        return out


def _normalize(values: pl.Series) -> pl.Series:
    """:func:`~kmsg_analytics._loading.normalize_numbers` of each value, plain digits first.

    Most numbers are already as the lake keeps them (3 to 20 digits, no ``+82``/``821``
    prefix to rewrite): those are kept as they are, the rest go through the full rules.
    """
    plain = values.str.contains(r"^[0-9]{3,20}$") & ~values.str.starts_with("821")
    plain = plain.fill_null(False)
    if bool(plain.all()):
        return values
    rows = (~plain).arg_true()
    other = values.gather(rows).to_frame("n").select(normalize_numbers(pl.col("n"))).to_series()
    return values.clone().scatter(rows, other)  # a copy: scatter writes in place


def _mask(norm: pl.Expr) -> pl.Expr:
    """:func:`~kmsg_analytics._loading.mask_numbers` (first 3 and last 4 digits kept).

    Examples
    --------
    >>> pl.select(_mask(pl.lit(pl.Series(["01012345678", "1234567", None])))).to_series().to_list()
    ['010****5678', '*******', None]
    """
    n = norm.str.len_chars()
    stars = pl.lit("*" * 32)
    return (
        pl.when(n <= 7)
        .then(stars.str.slice(0, n))
        .otherwise(norm.str.slice(0, 3) + stars.str.slice(0, n - 7) + norm.str.slice(-4))
    )


_NUMBER_SCHEMA: Final = {
    "norm": pl.String, "hash": pl.String, "masked": pl.String, "blank": pl.Boolean,
}  # fmt: skip
_LOW_TS: Final = datetime(2000, 1, 1, tzinfo=UTC)
_HIGH_TS: Final = datetime(2200, 1, 1, tzinfo=UTC)
#: The bounds as Polars literals, built once: a datetime literal costs ~0.5 ms to build,
#: and each chunk compares every time column with both.
_LOW_LIT: Final = pl.lit(_LOW_TS, _TS)
_HIGH_LIT: Final = pl.lit(_HIGH_TS, _TS)


class Converter:
    """Turns :func:`canonical` chunks of one import into lake rows, and names the bad ones.

    What is worked out per distinct text (numbers, metadata, error texts) is kept across
    the chunks of the import (see :class:`Memo`), so a value met again costs a join.

    Examples
    --------
    >>> from kmsg_analytics._phone import HashKey
    >>> hasher = NumberHasher(HashKey("doctest-key"))
    >>> conv = Converter(timestamps="auto", hasher=hasher, keep_numbers=False)
    >>> chunk = pl.DataFrame({
    ...     "message_id": ["m1", "m2"], "provider_id": ["solapi", "solapi"],
    ...     "type": ["SMS", "SMS"], "status": ["SENT", "LOST"], "to": ["010-1234-5678"] * 2,
    ...     "requested_at": [1_793_491_200_000] * 2,
    ...     "metadata": ['{"customFields":{"a":1}}', None],
    ... }).with_columns(__i=pl.int_range(pl.len(), dtype=pl.UInt32))
    >>> good, bad = conv.convert(chunk)
    >>> good.column("metadata").to_pylist(), good.column("to_masked").to_pylist()
    (['{"custom_fields":{"a":1}}'], ['010****5678'])
    >>> bad.select("message_id", "column").rows()
    [('m2', 'status')]
    """

    def __init__(self, *, timestamps: str, hasher: NumberHasher, keep_numbers: bool) -> None:
        self.timestamps = timestamps
        self.hasher = hasher
        self.keep_numbers = keep_numbers
        self.json = {
            name: Memo(
                partial(_json_values, name=name),
                _JSON_SCHEMAS.get(name, _JSON_SCHEMA),
                limit=_JSON_LIMIT,
            )
            for name in JSON_FIELDS
        }

    def forget(self) -> None:
        """Drop what was kept of the values met so far (they are worked out again if met)."""
        self.hasher.forget()
        for memo in self.json.values():
            memo.forget()

    def convert(self, raw: pl.DataFrame) -> tuple[pa.Table, pl.DataFrame]:
        """Validated lake rows of a :func:`canonical` chunk, and its unreadable rows with why.

        ``raw`` carries a row index ``__i`` (``UInt32``); the second frame lists the
        rejected rows' ``__i``, ``message_id``, ``column`` and ``reason`` (the first
        reason of each, in the order of the checks). Every check is computed in one pass
        over the chunk; the reasons only for the rows that fail one.
        """
        return _convert(
            raw,
            timestamps=self.timestamps,
            hasher=self.hasher,
            keep_numbers=self.keep_numbers,
            json_memos=self.json,
        )


_NON_SPACE: Final = r"\S"
_LAST_ERROR: Final = pl.Struct({"code": pl.String, "message": pl.String})
_JSON_SCHEMA: Final = {"ok": pl.Boolean, "value": pl.String}
_JSON_SCHEMAS: Final = {
    "last_error": {**_JSON_SCHEMA, "code": pl.String, "message": pl.String},
}
_JSON_LIMIT: Final = 200_000  # distinct texts kept per JSON column (metadata is the longest)


def _convert(
    raw: pl.DataFrame,
    *,
    timestamps: str,
    hasher: NumberHasher,
    keep_numbers: bool,
    json_memos: Mapping[str, Memo],
) -> tuple[pa.Table, pl.DataFrame]:
    """The work of :meth:`Converter.convert` (see there)."""
    if raw.height == 0:
        return pa.table({}), pl.DataFrame(schema=BAD_SCHEMA)

    def shown(name: str) -> pl.Expr:
        """The value as the reason shows it: quoted, at most 80 characters, or NULL."""
        text = pl.col(name).cast(pl.String).str.slice(0, 80)
        return (pl.lit("'") + text + pl.lit("'")).fill_null("NULL")

    def blank(name: str) -> pl.Expr:
        # not a single non-space character (as ``strip() == ""``, without a copy of each text)
        return pl.col(name).is_null() | ~pl.col(name).str.contains(_NON_SPACE)

    frame = raw.with_columns(
        pl.lit(None, pl.String).alias(n)
        for n in ("provider_message_id", "provider_status_code", "provider_status_message")
        if n not in raw.columns
    )
    # (column, bad rows, reason): in the order a row's first reason is told
    checks: list[tuple[str, pl.Expr, pl.Expr]] = [
        ("message_id", blank("message_id"), pl.lit("empty message id")),
        ("provider_id", blank("provider_id"), pl.lit("empty provider id")),
        (
            "type",
            ~pl.col("type").is_in(MESSAGE_TYPES).fill_null(False),
            pl.format("unknown message type {}", shown("type")),
        ),
        (
            "status",
            ~pl.col("status").is_in(DELIVERY_STATUSES).fill_null(False),
            pl.format(
                "unknown status {} (expected one of {})",
                shown("status"),
                pl.lit(", ".join(DELIVERY_STATUSES)),
            ),
        ),
    ]
    prepared: list[pl.Expr | pl.Series] = [
        pl.col("provider_message_id").fill_null(""),
        *[
            pl.when(pl.col(n).str.contains(_NON_SPACE)).then(pl.col(n)).alias(n)
            for n in ("provider_status_code", "provider_status_message")
        ],
    ]
    if "retention_class" in frame.columns:
        prepared.append(
            pl.col("retention_class")
            .fill_null(DEFAULT_RETENTION_CLASS)
            .replace("", DEFAULT_RETENTION_CLASS)
        )
        checks.append(
            (
                "retention_class",
                ~pl.col("retention_class").is_in(RETENTION_CLASSES),
                pl.format("unknown retention class {}", shown("retention_class")),
            )
        )
    for name in TIME_FIELDS:
        if name not in frame.columns:
            continue
        parsed, given = _parse_times(frame, name, timestamps)
        prepared += [parsed.alias(f"__t_{name}"), given.alias(f"__g_{name}")]
        t = pl.col(f"__t_{name}")
        checks.append(
            (
                name,
                pl.col(f"__g_{name}") & (t.is_null() | (t < _LOW_LIT) | (t >= _HIGH_LIT)),
                pl.format("{} is not a time between 2000-01-01 and 2200-01-01 (UTC)", shown(name)),
            )
        )
        if name == "requested_at":
            checks.append((name, ~pl.col(f"__g_{name}"), pl.lit("requested_at is missing")))
    if "attempt_count" in frame.columns:
        prepared.append(pl.col("attempt_count").cast(pl.Int64, strict=False).alias("__attempts"))
        checks.append(
            (
                "attempt_count",
                (pl.col("attempt_count").is_not_null() & pl.col("__attempts").is_null())
                | (pl.col("__attempts") < 0)
                | (pl.col("__attempts") >= 2**31),
                pl.format("{} is not a whole number >= 0", shown("attempt_count")),
            )
        )
    else:
        prepared.append(pl.lit(0, pl.Int64).alias("__attempts"))

    # JSON columns (decided once per distinct value)
    for name in JSON_FIELDS:
        if name not in frame.columns:
            continue
        converted = json_memos[name].lookup(frame.get_column(name))
        prepared += [
            converted.get_column("ok").fill_null(True).alias(f"__ok_{name}"),
            *[converted.get_column(c).alias(f"__j{c}_{name}") for c in converted.columns[1:]],
        ]
        checks.append((name, ~pl.col(f"__ok_{name}"), pl.format("not valid JSON: {}", shown(name))))

    # numbers: our hash where a plain number is readable, else k-msg's hash as it is
    number_cols: dict[str, pl.Expr] = {}
    no_recipient = pl.lit(True)
    for field_, prefix in (("to", "to"), ("from_", "from")):
        theirs_hash, theirs_mask = f"{prefix}_hash", f"{prefix}_masked"
        their_h = (
            pl.when(pl.col(theirs_hash).str.contains(_NON_SPACE)).then(pl.col(theirs_hash))
            if theirs_hash in frame.columns
            else pl.lit(None, pl.String)
        )
        their_m = pl.col(theirs_mask) if theirs_mask in frame.columns else pl.lit(None, pl.String)
        if field_ not in frame.columns:
            number_cols |= {f"{prefix}_hash": their_h, f"{prefix}_masked": their_m}
            number_cols[field_] = pl.lit(None, pl.String)
            if field_ == "to":
                no_recipient = their_h.is_null()
            continue
        numbers = hasher.lookup(frame.get_column(field_), column=prefix)
        prepared += [
            pl.when(~pl.lit(numbers.get_column("blank"))).then(pl.col(field_)).alias(field_),
            numbers.get_column("norm").alias(f"__n_{prefix}"),
            numbers.get_column("hash").alias(f"__h_{prefix}"),
            numbers.get_column("masked").alias(f"__m_{prefix}"),
        ]
        ok = pl.col(f"__n_{prefix}").is_not_null()
        number_cols[f"{prefix}_hash"] = pl.when(ok).then(pl.col(f"__h_{prefix}")).otherwise(their_h)
        number_cols[f"{prefix}_masked"] = (
            pl.when(ok).then(pl.col(f"__m_{prefix}")).otherwise(their_m)
        )
        number_cols[field_] = pl.when(ok).then(pl.col(field_))
        checks.append(
            (
                "to" if field_ == "to" else "from",
                pl.col(field_).is_not_null() & ~ok & their_h.is_null(),
                pl.format("{} is not a phone number of 3 to 20 digits", shown(field_)),
            )
        )
        if field_ == "to":
            no_recipient = ~ok & their_h.is_null()
    checks.append(
        (
            "to",
            no_recipient,
            pl.lit("no recipient number (neither a plain number nor k-msg's to_hash)"),
        )
    )

    frame = frame.with_columns(prepared).with_columns(
        pl.any_horizontal([bad.fill_null(False) for _c, bad, _r in checks]).alias("__bad")
    )
    rejected = _rejected(frame.filter(pl.col("__bad")), checks)
    if rejected.height:
        frame = frame.filter(~pl.col("__bad"))
    if frame.height == 0:
        return pa.table({}), rejected

    # the rest is one plan: columns computed once, only those kept, one collect
    records = (
        frame.lazy().with_columns(**number_cols).with_columns(pl.col("to_masked").fill_null(""))
    )
    json_out = {n: pl.col(f"__jvalue_{n}") for n in JSON_FIELDS if f"__ok_{n}" in frame.columns}
    last_error: pl.Expr = pl.lit(None, _LAST_ERROR)
    if "last_error" in json_out:  # k-msg's {code, message, ...} as ours, when both are given
        code, message = pl.col("__jcode_last_error"), pl.col("__jmessage_last_error")
        last_error = pl.when(code.str.contains(_NON_SPACE) & message.is_not_null()).then(
            pl.struct(code.alias("code"), message.alias("message"))
        )
    records = records.select(
        "message_id",
        "provider_id",
        "provider_message_id",
        "type",
        "status",
        "provider_status_code",
        "provider_status_message",
        *[pl.col(f"__t_{n}").alias(n) for n in TIME_FIELDS if f"__t_{n}" in frame.columns],
        pl.col("__attempts").fill_null(0).cast(pl.Int32).alias("attempt_count"),
        last_error.alias("last_error"),
        *([json_out["raw"].alias("raw")] if "raw" in json_out else []),
        (json_out["metadata"] if "metadata" in json_out else pl.lit("{}")).alias("metadata"),
        "to_hash",
        "to_masked",
        "from_hash",
        "from_masked",
        *(["retention_class"] if "retention_class" in frame.columns else []),
        pl.col("to").alias("__to"),
        pl.col("from_").alias("__from"),
    )
    if keep_numbers:
        records = records.with_columns(to=pl.col("__to"), from_=pl.col("__from"))
    return lake_table(records.drop("__to", "__from")), rejected


def _rejected(bad: pl.DataFrame, checks: list[tuple[str, pl.Expr, pl.Expr]]) -> pl.DataFrame:
    """The first failed check of each rejected row, with its reason."""
    if bad.height == 0:
        return pl.DataFrame(schema=BAD_SCHEMA)
    found = [
        bad.filter(flag.fill_null(False)).select(
            "__i",
            pl.col("message_id"),
            pl.lit(column).alias("column"),
            reason.cast(pl.String).alias("reason"),
        )
        for column, flag, reason in checks
    ]
    frame = pl.concat([f for f in found if f.height], how="vertical")
    return frame.unique("__i", keep="first", maintain_order=True).cast(BAD_SCHEMA)  # type: ignore[arg-type]


def lake_table(records: pl.DataFrame | pl.LazyFrame) -> pa.Table:
    """Validated records in lake form (defaults filled, every column, lake types)."""
    columns = set(records.collect_schema().names())
    requested = pl.col("requested_at")
    updated = (
        pl.col("status_updated_at").fill_null(requested)
        if "status_updated_at" in columns
        else requested
    )
    frame = records.with_columns(status_updated_at=updated).with_columns(
        next_check_at=(
            pl.col("next_check_at").fill_null(pl.col("status_updated_at"))
            if "next_check_at" in columns
            else pl.col("status_updated_at")
        ),
        retention_class=(
            pl.col("retention_class")
            if "retention_class" in columns
            else pl.lit(DEFAULT_RETENTION_CLASS)
        ),
        retention_bucket_ym=(requested.dt.year() * 100 + requested.dt.month()).cast(pl.Int32),
        metadata=pl.col("metadata").fill_null("{}"),
        seq=pl.lit(0, pl.Int64),
        snapshot_kind=pl.lit("load"),
        recorded_at=pl.col("status_updated_at"),
    )
    present = columns | {
        "next_check_at", "retention_class", "retention_bucket_ym", "metadata", "seq",
        "snapshot_kind", "recorded_at", "status_updated_at",
    }  # fmt: skip
    out = frame.lazy().select(
        [
            (pl.col(n) if n in present else pl.lit(None)).cast(dtype).alias(n)
            for n, dtype in POLARS_SCHEMA.items()
        ]
    )
    # the oldest Arrow level gives (large) strings, cast to the lake's in place of views
    return out.collect().to_arrow(compat_level=pl.CompatLevel.oldest()).cast(SNAPSHOT_SCHEMA)


def _parse_times(frame: pl.DataFrame, name: str, mode: str) -> tuple[pl.Expr, pl.Expr]:
    """``(parsed UTC datetime, given)`` of one time column (``given``: not null/0/empty)."""
    col = pl.col(name)
    dtype = frame.schema[name]
    if isinstance(dtype, pl.Datetime):
        aware = (
            col.dt.replace_time_zone("UTC")
            if dtype.time_zone is None
            else col.dt.convert_time_zone("UTC")
        )
        return aware.dt.cast_time_unit("us"), col.is_not_null()
    if isinstance(dtype, pl.Date):
        return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC"), col.is_not_null()
    if dtype.is_integer():
        return _from_ms(col.cast(pl.Int64)), col.is_not_null() & (col != 0)
    if dtype.is_numeric():
        ms = col.round(0).cast(pl.Int64, strict=False)
        return _from_ms(ms), col.is_not_null() & (col != 0)
    if dtype == pl.Null:
        return pl.lit(None, _TS), pl.lit(False)
    text = col.cast(pl.String).str.strip_chars()
    given = text.is_not_null() & (text != "") & (text != "0")
    ms = text.cast(pl.Float64, strict=False).round(0).cast(pl.Int64, strict=False)
    if mode == "epoch_ms":
        return _from_ms(ms), given
    iso = text.str.replace(r"[zZ]$", "+00:00")
    parsed = pl.coalesce(
        _from_ms(ms),
        iso.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z", time_unit="us", strict=False),
        iso.str.to_datetime("%Y-%m-%d %H:%M:%S%.f%:z", time_unit="us", strict=False),
        iso.str.to_datetime(
            "%Y-%m-%dT%H:%M:%S%.f", time_unit="us", strict=False
        ).dt.replace_time_zone("UTC"),
        iso.str.to_datetime(
            "%Y-%m-%d %H:%M:%S%.f", time_unit="us", strict=False
        ).dt.replace_time_zone("UTC"),
    )
    return parsed.dt.convert_time_zone("UTC"), given


def _from_ms(ms: pl.Expr) -> pl.Expr:
    inside = ms.is_between(_LOW_MS, _HIGH_MS, closed="left")
    return (
        pl.when(inside)
        .then(pl.from_epoch(ms, time_unit="ms"))
        .dt.replace_time_zone("UTC")
        .dt.cast_time_unit("us")
    )


def _json_values(values: pl.Series, name: str) -> pl.DataFrame:
    """Per distinct non-null text: ``ok`` (readable) and ``value`` (our JSON text or ``None``).

    ``last_error`` also gets the ``code`` and ``message`` it carries.
    """
    uniq = values.alias("v").to_frame()
    text = pl.col("v").str.strip_chars()
    norm = pl.col("v").str.json_path_match("$")
    uniq = uniq.with_columns(
        __norm=norm,
        __null=(text == "null") | (text == ""),
    ).with_columns(ok=pl.col("__norm").is_not_null() | pl.col("__null"))
    if name == "metadata":
        uniq = uniq.with_columns(value=_metadata_expr(uniq))
    elif name == "raw":
        # k-msg keeps text that is not JSON as a string: store it as a JSON string
        as_string = pl.struct(pl.col("v").alias("s")).struct.json_encode()
        uniq = uniq.with_columns(
            ok=pl.lit(True),
            value=pl.when(pl.col("__null"))
            .then(None)
            .when(pl.col("__norm").str.contains(r"^[\[{]"))
            .then(pl.col("__norm"))
            .when(pl.col("__norm").is_not_null())  # a JSON scalar: kept as written
            .then(text)
            .otherwise(as_string.str.slice(5, as_string.str.len_chars() - 6)),
        )
    else:
        uniq = uniq.with_columns(value=pl.when(~pl.col("__null")).then(pl.col("__norm")))
    if name == "last_error":
        uniq = uniq.with_columns(
            code=pl.col("value").str.json_path_match("$.code"),
            message=pl.col("value").str.json_path_match("$.message"),
        )
    return uniq.select(_JSON_SCHEMAS.get(name, _JSON_SCHEMA).keys())


def _metadata_expr(uniq: pl.DataFrame) -> pl.Series:
    """Our metadata text of each distinct k-msg metadata value (``{}`` unless an object)."""
    norm = uniq.get_column("__norm")
    out = uniq.select(
        pl.when(pl.col("__norm").str.starts_with("{"))
        .then(_rename_keys(pl.col("__norm")))
        .otherwise(pl.lit("{}"))
        .alias("value")
    ).to_series()
    custom = norm.str.json_path_match("$.customFields")
    tricky = custom.str.contains(_METADATA_KEY_RE).fill_null(False)
    if tricky.any():
        # keys of ours inside custom_fields: convert those few values exactly, in Python
        idx = tricky.arg_true()
        fixed = [_metadata_python(str(norm[i])) for i in idx.to_list()]
        out = out.scatter(idx, fixed)
    return out


def _rename_keys(expr: pl.Expr) -> pl.Expr:
    for key in _METADATA_KEYS:
        snake = _snake(key)
        for lead in ("{", ","):
            expr = expr.str.replace_all(f'{lead}"{key}":', f'{lead}"{snake}":', literal=True)
    return expr


_CAMEL: Final = re.compile(r"(?<=[a-z0-9])([A-Z])")


def _snake(key: str) -> str:
    return _CAMEL.sub(lambda m: "_" + m.group(1).lower(), key)


def _metadata_python(text: str) -> str:
    """The slow, exact conversion (keys renamed everywhere except in custom_fields)."""
    known = set(_METADATA_KEYS)

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for k, v in value.items():
                if k == "customFields":
                    out["custom_fields"] = v
                else:
                    out[_snake(k) if k in known else k] = walk(v)
            return out
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return dump_json(walk(json.loads(text)))


def latest_time(raw: pl.DataFrame, names: tuple[str, ...], timestamps: str) -> int | None:
    """The latest readable time (UTC microseconds) in the ``names`` columns of a chunk.

    Examples
    --------
    >>> chunk = pl.DataFrame({"a": [1_793_491_200_000, None], "b": [None, 10**16]})
    >>> latest_time(chunk, ("a", "b"), "auto")
    1793491200000000
    """
    exprs = []
    for name in names:
        if name in raw.columns:
            parsed, _given = _parse_times(raw, name, timestamps)
            exprs.append(parsed.dt.epoch("us").max().alias(name))
    if not exprs or raw.height == 0:
        return None
    found = [v for v in raw.select(exprs).row(0) if v is not None]
    return int(max(found)) if found else None
