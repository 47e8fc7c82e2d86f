"""Bulk loading: a Polars or Arrow frame of records, validated and turned into lake rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import orjson
import polars as pl
import pyarrow as pa

from ._crypto import NumberCipher
from ._errors import InvalidRecordError
from ._phone import HashKey
from ._records import DEFAULT_RETENTION_CLASS, DELIVERY_STATUSES, MESSAGE_TYPES, RETENTION_CLASSES
from ._schema import POLARS_SCHEMA, SNAPSHOT_SCHEMA

__all__ = ["LOAD_SCHEMA", "frame_to_table", "hash_numbers"]

_TS = pl.Datetime("us", "UTC")
#: :data:`SNAPSHOT_SCHEMA` with its text columns as string views, the type Polars holds
#: text in: a frame becomes Arrow without copying a string (Parquet stores either type
#: as the same strings). Text inside the ``last_error`` struct stays plain: pyarrow's
#: Parquet writer cannot slice views there (a small column).
LOAD_SCHEMA: Final = pa.schema(
    [f.with_type(pa.string_view()) if f.type == pa.string() else f for f in SNAPSHOT_SCHEMA]
)
_TIME_COLUMNS = (
    "requested_at", "scheduled_at", "sent_at", "delivered_at", "failed_at",
    "status_updated_at", "last_checked_at", "next_check_at",
)  # fmt: skip
_REQUIRED = ("message_id", "provider_id", "type", "requested_at", "status")
_LOW, _HIGH = pl.datetime(2000, 1, 1, time_zone="UTC"), pl.datetime(2200, 1, 1, time_zone="UTC")


def normalize_numbers(col: pl.Expr) -> pl.Expr:
    """Vectorised twin of :func:`kmsg_analytics._phone.normalize_number` (``None`` when invalid)."""
    compact = col.str.replace_all(r"[\s\-().]", "")
    valid = compact.str.contains(r"^\+?[0-9]{3,20}$")
    kr = (
        pl.when(compact.str.starts_with("+820"))
        .then(compact.str.slice(3))
        .when(compact.str.starts_with("+82"))
        .then(pl.lit("0") + compact.str.slice(3))
        .when(compact.str.contains(r"^821") & (compact.str.len_chars() >= 11))
        .then(pl.lit("0") + compact.str.slice(2))
        .otherwise(compact)
    )
    return pl.when(valid).then(kr).otherwise(None)


def mask_numbers(col: pl.Expr) -> pl.Expr:
    """Vectorised twin of :func:`kmsg_analytics._phone.mask_number`."""
    n = col.str.len_chars()
    stars = pl.lit("*").repeat_by(n - 7).list.join("")
    return (
        pl.when(n <= 7)
        .then(pl.lit("*").repeat_by(n).list.join(""))
        .otherwise(col.str.slice(0, 3) + stars + col.str.slice(-4))
    )


def hash_numbers(normalized: pl.Series, key: HashKey) -> pl.Series:
    """Keyed hashes of normalised numbers, computing each distinct number once."""
    uniq = normalized.drop_nulls().unique()
    hashed = key.hash_many(uniq.to_list())
    mapping = dict(zip(uniq.to_list(), hashed, strict=True))
    return normalized.replace_strict(mapping, default=None, return_dtype=pl.String)


def _first_bad(frame: pl.DataFrame, bad: pl.Expr, field: str, expected: str) -> None:
    hit = frame.filter(bad).select(pl.col("message_id"), pl.col(field).alias("_v")).head(1)
    if hit.height:
        value, mid = hit.item(0, "_v"), hit.item(0, "message_id")
        raise InvalidRecordError(f"{field} (message_id={mid!r})", value, expected)


_Check = tuple[str, pl.Expr, str]


def _value_checks(frame: pl.DataFrame) -> list[_Check]:
    """The checks of the identifying columns, in the order their errors are reported."""
    checks: list[_Check] = [
        (
            "message_id",
            pl.col("message_id").is_null()
            | (pl.col("message_id").str.strip_chars() == "")
            | (pl.col("message_id").str.len_chars() > 256)
            | pl.col("message_id").str.contains("\x00", literal=True),
            "a non-empty id of at most 256 characters without NUL",
        ),
        (
            "provider_id",
            pl.col("provider_id").is_null()
            | (pl.col("provider_id").str.strip_chars() == "")
            | (pl.col("provider_id").str.len_chars() > 256)
            | pl.col("provider_id").str.contains("\x00", literal=True),
            "a non-empty id",
        ),
        (
            "status",
            ~pl.col("status").is_in(DELIVERY_STATUSES) | pl.col("status").is_null(),
            "one of " + ", ".join(DELIVERY_STATUSES),
        ),
        (
            "type",
            ~pl.col("type").is_in(MESSAGE_TYPES) | pl.col("type").is_null(),
            "one of " + ", ".join(MESSAGE_TYPES),
        ),
    ]
    if "retention_class" in frame.columns:
        checks.append(
            (
                "retention_class",
                ~pl.col("retention_class").is_in(RETENTION_CLASSES),
                "one of " + ", ".join(RETENTION_CLASSES),
            )
        )
    return checks


def _run_checks(
    frame: pl.DataFrame, checks: list[_Check], json_columns: Sequence[str] = ()
) -> None:
    """Evaluate every check in one pass; raise for the first that fails, naming the row.

    The values of ``json_columns`` (JSON text columns, see :func:`_json_text`) are
    checked first, their distinct values gathered in the same pass.
    """
    if frame.is_empty() or not (checks or json_columns):
        return
    gathered = [
        e
        for name in json_columns
        for e in (
            pl.col(name).str.len_bytes().max().alias(f"__bytes_{name}"),
            pl.col(name).drop_nulls().unique().implode().alias(f"__values_{name}"),
        )
    ]
    row = frame.select(
        *gathered,
        *(bad.fill_null(False).any().alias(str(i)) for i, (_f, bad, _e) in enumerate(checks)),
    ).row(0)
    for i, name in enumerate(json_columns):
        _check_json_values(frame, name, row[2 * i], row[2 * i + 1])
    for hit, (field, bad, expected) in zip(row[len(gathered) :], checks, strict=True):
        if hit:
            _first_bad(frame, bad, field, expected)


def _as_time(frame: pl.DataFrame, name: str) -> pl.Expr:
    dtype = frame.schema[name]
    col = pl.col(name)
    if isinstance(dtype, pl.Datetime):
        return (
            col.dt.replace_time_zone("UTC")
            if dtype.time_zone is None
            else col.dt.convert_time_zone("UTC")
        ).dt.cast_time_unit("us")
    if dtype.is_integer():
        return (
            pl.from_epoch(col, time_unit="ms").dt.replace_time_zone("UTC").dt.cast_time_unit("us")
        )
    if dtype == pl.String:
        return col.str.to_datetime(time_zone="UTC", time_unit="us", strict=False)
    if dtype == pl.Null:
        return col.cast(_TS)
    raise InvalidRecordError(
        name, str(dtype), "a datetime, epoch-millisecond integer or ISO string column"
    )


def seal_numbers(normalized: pl.Series, cipher: NumberCipher | None, field: str) -> pl.Series:
    """Envelopes of normalised numbers, each distinct number sealed once (nulls: no cipher)."""
    if cipher is None:
        return pl.Series(normalized.name, [None] * normalized.len(), dtype=pl.String)
    uniq = normalized.drop_nulls().unique().to_list()
    mapping = {v: cipher.seal(v, field) for v in uniq}
    return normalized.replace_strict(mapping, default=None, return_dtype=pl.String)


#: Optional text columns of a bulk frame (their dtype is checked before their values).
_OPTIONAL_TEXT = (
    "to", "from_", "provider_message_id", "retention_class", "provider_status_code",
    "provider_status_message", "to_hash", "to_masked", "from_hash", "from_masked",
    "to_enc", "from_enc",
)  # fmt: skip
_MAX_JSON_BYTES = 1_000_000


def _parse_json(text: str) -> Any:
    """``text`` parsed by orjson (fast), else by :mod:`json` (what orjson refuses, say NaN).

    Raises ``ValueError`` for text that is not JSON.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _json_text(frame: pl.DataFrame, name: str) -> bool:
    """Whether ``name`` is a JSON text column whose values need checking (its type is)."""
    dtype = frame.schema[name]
    if dtype == pl.Null or (name == "metadata" and isinstance(dtype, pl.Struct)):
        return False
    if dtype != pl.String:
        raise InvalidRecordError(name, str(dtype), "a column of JSON text")
    return True


def _check_json_values(
    frame: pl.DataFrame, name: str, most_bytes: int | None, values: Sequence[str] | None
) -> None:
    """The values of a JSON text column: at most 1 MB each, and they parse (metadata: an object).

    ``most_bytes`` is the column's longest value in bytes and ``values`` its distinct
    values (gathered by :func:`_run_checks`).
    """
    if most_bytes is not None and most_bytes > _MAX_JSON_BYTES:
        col = frame.get_column(name)
        size = col.filter(col.str.len_bytes() > _MAX_JSON_BYTES).str.len_bytes()[0]
        raise InvalidRecordError(name, f"<{size} bytes>", "at most 1 MB of JSON")
    for text in values or ():  # distinct values only
        try:
            value = _parse_json(text)
        except ValueError:
            raise InvalidRecordError(name, text, "JSON text") from None
        if name == "metadata" and not isinstance(value, dict):
            raise InvalidRecordError(name, text, "a JSON object")


def frame_to_table(
    source: Any, key: HashKey, *, keep_numbers: bool, cipher: NumberCipher | None = None
) -> pa.Table:
    """Validate a frame of records and return it as an Arrow table in lake form.

    The table has the lake's columns (:data:`SNAPSHOT_SCHEMA`'s names, nullability and
    values) with text as string views (:data:`LOAD_SCHEMA`): Polars's strings as they
    are, not copied. ``table.cast(SNAPSHOT_SCHEMA)`` gives plain strings.

    Raises :class:`InvalidRecordError` naming the column, the first bad value and its
    ``message_id``.
    """
    if isinstance(source, pl.LazyFrame):
        source = source.collect()
    if isinstance(source, pa.Table):
        source = pl.from_arrow(source)
    if not isinstance(source, pl.DataFrame):
        raise InvalidRecordError(
            "frame", type(source).__name__, "a polars DataFrame/LazyFrame or a pyarrow Table"
        )
    frame = source.rename({"from": "from_"}) if "from" in source.columns else source
    missing = [c for c in _REQUIRED if c not in frame.columns]
    no_to = "to" not in frame.columns or frame.schema["to"] == pl.Null
    if no_to and "to_hash" not in frame.columns:
        missing.append("to (or to_hash)")
    if missing:
        raise InvalidRecordError(
            "frame", sorted(frame.columns), "columns " + ", ".join(missing) + " as well"
        )
    for name in ("message_id", "provider_id", "type", "status"):
        if frame.schema[name] != pl.String:
            raise InvalidRecordError(name, str(frame.schema[name]), "a string column")
    for name in _OPTIONAL_TEXT:
        if name in frame.columns and frame.schema[name] not in (pl.String, pl.Null):
            raise InvalidRecordError(name, str(frame.schema[name]), "a string column")
    counts = frame.schema.get("attempt_count")
    if counts is not None and not (counts.is_integer() or counts == pl.Null):
        raise InvalidRecordError("attempt_count", str(counts), "a column of whole numbers")
    # JSON text, at most 1 MB a value, like record_send's: checked before the others,
    # a column's values before the next column's type (in the pass of the other checks)
    json_columns: list[str] = []
    for name in ("metadata", "raw"):
        if name in frame.columns:
            try:
                if _json_text(frame, name):
                    json_columns.append(name)
            except InvalidRecordError:
                _run_checks(frame, [], json_columns)
                raise
    checks = _value_checks(frame)
    try:
        times = {n: _as_time(frame, n) for n in _TIME_COLUMNS if n in frame.columns}
    except InvalidRecordError:
        _run_checks(frame, checks, json_columns)  # a bad value before a bad column type
        raise
    numbers = [
        (number, prefix)
        for number, prefix in (("to", "to"), ("from_", "from"))
        if number in frame.columns and frame.schema[number] != pl.Null
    ]
    frame = frame.with_columns(
        **{f"__{n}": e for n, e in times.items()},
        **{f"__{p}_norm": normalize_numbers(pl.col(n)) for n, p in numbers},
    )
    for n in times:
        given = pl.col(n).is_not_null()
        if frame.schema[n] == pl.String:  # an empty text means no time, like a null
            given = given & (pl.col(n) != "")
        parsed = pl.col(f"__{n}")
        bad = (given & parsed.is_null()) | (
            parsed.is_not_null() & ((parsed < _LOW) | (parsed >= _HIGH))
        )
        if n == "requested_at":
            bad = bad | parsed.is_null()
        checks.append((n, bad, "a time between 2000-01-01 and 2200-01-01 (UTC)"))
    for number, prefix in numbers:
        missing_ok = number == "from_" or "to_hash" in frame.columns
        normed = pl.col(f"__{prefix}_norm")
        bad = (pl.col(number).is_not_null() & normed.is_null()) | (
            pl.col(number).is_null() & (not missing_ok)
        )
        checks.append((number, bad, "a phone number of 3 to 20 digits"))
    if not numbers or numbers[0][0] != "to":
        checks.append(
            (
                "to_hash",
                pl.col("to_hash").is_null() | (pl.col("to_hash") == ""),
                "the keyed hash of the number",
            )
        )
    if "attempt_count" in frame.columns:
        count = pl.col("attempt_count")
        checks.append(("attempt_count", (count < 0) | (count >= 2**31), "a whole number >= 0"))
    _run_checks(frame, checks, json_columns)  # one pass over the frame for every check
    frame = frame.drop(list(times)).rename({f"__{n}": n for n in times})

    cols: dict[str, pl.Expr] = {}
    for number, prefix in numbers:
        norm = f"__{prefix}_norm"
        frame = frame.with_columns(
            hash_numbers(frame.get_column(norm), key).alias(f"__{prefix}_hash"),
            seal_numbers(frame.get_column(norm), cipher, number).alias(f"__{prefix}_enc"),
        )
        cols[f"{prefix}_enc"] = pl.col(f"__{prefix}_enc")
        if f"{prefix}_enc" in frame.columns:
            cols[f"{prefix}_enc"] = pl.coalesce(cols[f"{prefix}_enc"], pl.col(f"{prefix}_enc"))
        given_hash, given_mask = f"{prefix}_hash", f"{prefix}_masked"
        cols[given_hash] = pl.col(f"__{prefix}_hash")
        cols[given_mask] = mask_numbers(pl.col(norm))
        if given_hash in frame.columns:  # rows without a number keep the hash they came with
            cols[given_hash] = pl.coalesce(cols[given_hash], pl.col(given_hash))
        if given_mask in frame.columns:
            cols[given_mask] = pl.coalesce(cols[given_mask], pl.col(given_mask))
    frame = frame.with_columns(**cols)

    defaults: dict[str, pl.Expr] = {
        "provider_message_id": pl.lit(""),
        "status_updated_at": pl.col("requested_at"),
        "next_check_at": pl.col("status_updated_at")
        if "status_updated_at" in frame.columns
        else pl.col("requested_at"),
        "attempt_count": pl.lit(0),
        "metadata": pl.lit("{}"),
        "retention_class": pl.lit(DEFAULT_RETENTION_CLASS),
        "to_masked": pl.lit(""),
    }
    fill = {n: e for n, e in defaults.items() if n not in frame.columns}
    frame = frame.with_columns(**fill)
    if isinstance(frame.schema["metadata"], pl.Struct):
        frame = frame.with_columns(pl.col("metadata").struct.json_encode())
    frame = frame.with_columns(
        pl.col("provider_message_id").fill_null("").str.strip_chars(),
        pl.col("metadata").fill_null("{}"),
        pl.col("status_updated_at").fill_null(pl.col("requested_at")),
        pl.col("next_check_at").fill_null(
            pl.col("status_updated_at").fill_null(pl.col("requested_at"))
        ),
        pl.col("attempt_count").fill_null(0),
        pl.col("retention_class").fill_null(DEFAULT_RETENTION_CLASS),
        retention_bucket_ym=(
            pl.col("requested_at").dt.year() * 100 + pl.col("requested_at").dt.month()
        ).cast(pl.Int32),
        seq=pl.lit(0, pl.Int64),
        snapshot_kind=pl.lit("load"),
        recorded_at=pl.col("status_updated_at").fill_null(pl.col("requested_at")),
    )
    if not keep_numbers:
        frame = frame.drop([c for c in ("to", "from_") if c in frame.columns])
    try:
        out = frame.select(
            [
                (pl.col(n) if n in frame.columns else pl.lit(None)).cast(dtype).alias(n)
                for n, dtype in POLARS_SCHEMA.items()
            ]
        )
        return out.to_arrow(compat_level=pl.CompatLevel.newest()).cast(LOAD_SCHEMA)
    except (pl.exceptions.PolarsError, pa.ArrowException, ValueError):
        for n, dtype in POLARS_SCHEMA.items():  # name the column that does not fit
            if n in frame.columns:
                field = SNAPSHOT_SCHEMA.field(n)
                try:
                    frame.select(pl.col(n).cast(dtype)).to_arrow().cast(pa.schema([field]))
                except (pl.exceptions.PolarsError, pa.ArrowException, ValueError):
                    nulls = "" if field.nullable else " without nulls"
                    raise InvalidRecordError(
                        n, str(frame.schema[n]), f"a column of {dtype} values{nulls}"
                    ) from None
        raise
