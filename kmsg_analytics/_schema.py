"""The lake's columns, stated once as a pyarrow schema, and record <-> row conversion.

A *row* is a plain dict in lake form: timestamps as integer microseconds since the
epoch (UTC), ``last_error`` as ``{code, message}``, ``metadata`` and ``raw`` as JSON
text. Rows are what the write-ahead log holds and what becomes Parquet.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from datetime import UTC, date, datetime
from typing import Any, Final, Literal, overload

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from ._records import TrackingError, TrackingRecord

__all__ = [
    "CURRENT_SCHEMA",
    "FORMAT_VERSION",
    "GATEWAY_FLAG",
    "SNAPSHOT_SCHEMA",
    "SnapshotKind",
    "frame_to_records",
    "record_to_row",
    "records_to_table",
    "row_to_record",
    "rows_to_table",
]

#: Bumped whenever the meaning or the columns of the lake change. Version 2 adds the
#: :data:`GATEWAY_FLAG` column to the folded state (``current/`` and ``open/`` files);
#: a version 1 lake is read as it lies (the flag computed) until a full ``compact()``
#: upgrades it.
FORMAT_VERSION: Final = 2

#: Where a snapshot came from. A ``send`` snapshot never replaces a state that polling
#: (or a load, or a patch) already reached: see :data:`PRECEDENCE_OFFSET`.
SnapshotKind = Literal["send", "poll", "load", "patch"]
SNAPSHOT_KINDS: Final = ("send", "poll", "load", "patch")

_TS = pa.timestamp("us", tz="UTC")

#: Every column of every lake dataset, in order (partition columns are not in files).
SNAPSHOT_SCHEMA: Final = pa.schema(
    [
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("snapshot_kind", pa.string(), nullable=False),
        pa.field("recorded_at", _TS, nullable=False),
        pa.field("message_id", pa.string(), nullable=False),
        pa.field("provider_id", pa.string(), nullable=False),
        pa.field("provider_message_id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("to", pa.string()),
        pa.field("from_", pa.string()),
        pa.field("to_hash", pa.string(), nullable=False),
        pa.field("to_masked", pa.string(), nullable=False),
        pa.field("from_hash", pa.string()),
        pa.field("from_masked", pa.string()),
        pa.field("to_enc", pa.string()),
        pa.field("from_enc", pa.string()),
        pa.field("requested_at", _TS, nullable=False),
        pa.field("scheduled_at", _TS),
        pa.field("status", pa.string(), nullable=False),
        pa.field("provider_status_code", pa.string()),
        pa.field("provider_status_message", pa.string()),
        pa.field("sent_at", _TS),
        pa.field("delivered_at", _TS),
        pa.field("failed_at", _TS),
        pa.field("status_updated_at", _TS, nullable=False),
        pa.field("attempt_count", pa.int32(), nullable=False),
        pa.field("last_checked_at", _TS),
        pa.field("next_check_at", _TS, nullable=False),
        pa.field("last_error", pa.struct([("code", pa.string()), ("message", pa.string())])),
        pa.field("raw", pa.string()),
        pa.field("metadata", pa.string(), nullable=False),
        pa.field("retention_class", pa.string(), nullable=False),
        pa.field("retention_bucket_ym", pa.int32(), nullable=False),
    ]
)

#: The same columns as Polars dtypes (what scans are cast to).
POLARS_SCHEMA: Final = pl.Schema(SNAPSHOT_SCHEMA)  # (an empty table would import pandas)

#: Whether the gateway accepted the message (a non-empty ``provider_message_id``), kept
#: beside the folded state so that counting it reads one bit per record instead of
#: decoding every (unique) gateway id. Derived: never shown in record frames.
GATEWAY_FLAG: Final = "has_gateway_id"

#: The columns of the folded state's files (``current/`` and ``open/``): every snapshot
#: column, then :data:`GATEWAY_FLAG`. History files keep :data:`SNAPSHOT_SCHEMA`.
CURRENT_SCHEMA: Final = pa.schema(
    [*SNAPSHOT_SCHEMA, pa.field(GATEWAY_FLAG, pa.bool_(), nullable=False)]
)

#: :data:`CURRENT_SCHEMA` as Polars dtypes.
POLARS_CURRENT_SCHEMA: Final = pl.Schema(CURRENT_SCHEMA)


def gateway_flag() -> pl.Expr:
    """:data:`GATEWAY_FLAG` computed from ``provider_message_id`` (never null, unnamed).

    Examples
    --------
    >>> pl.DataFrame({"provider_message_id": ["g1", "", None]}).select(
    ...     gateway_flag()).to_series().to_list()
    [True, False, False]
    """
    # the byte length, not a string comparison: the same answer, read faster
    return (pl.col("provider_message_id").str.len_bytes() > 0).fill_null(False)


def with_gateway_flag(table: pa.Table) -> pa.Table:
    """``table`` (lake rows) with :data:`GATEWAY_FLAG` computed (replaced when present).

    The flag goes right after the lake's columns (before ``requested_date`` in an open
    set), as :data:`CURRENT_SCHEMA` orders it.

    Examples
    --------
    >>> t = pa.table({"provider_message_id": ["g1", "", None], "retention_bucket_ym": [1] * 3,
    ...               "requested_date": [None] * 3})
    >>> out = with_gateway_flag(t)
    >>> out.column_names
    ['provider_message_id', 'retention_bucket_ym', 'has_gateway_id', 'requested_date']
    >>> out.column(GATEWAY_FLAG).to_pylist()
    [True, False, False]
    """
    if GATEWAY_FLAG in table.column_names:
        table = table.drop_columns([GATEWAY_FLAG])
    ids = table.column("provider_message_id")
    if pa.types.is_string_view(ids.type):  # (from Polars without a copy) no length kernel
        ids = ids.cast(pa.string())
    flag = pc.fill_null(pc.greater(pc.binary_length(ids), 0), False)
    last = table.schema.get_field_index(SNAPSHOT_SCHEMA.names[-1])
    at = last + 1 if last >= 0 else table.num_columns
    return table.add_column(at, CURRENT_SCHEMA.field(GATEWAY_FLAG), flag)


#: The columns of a record, in the order of the frames ``list_records`` returns.
#: Every field of a record (what ``get_record`` reads), envelopes of sealed numbers included.
FULL_RECORD_COLUMNS: Final = tuple(
    n for n in SNAPSHOT_SCHEMA.names if n not in ("seq", "snapshot_kind", "recorded_at")
)
#: The columns of the frames queries return: the record without the sealed numbers.
RECORD_COLUMNS: Final = tuple(n for n in FULL_RECORD_COLUMNS if n not in ("to_enc", "from_enc"))

HISTORY_PARTITION: Final = "ingest_date"
CURRENT_PARTITION: Final = "requested_date"

#: Added to ``seq`` of every non-``send`` snapshot when choosing the current state, so
#: that a repeated send never moves a message back from a state polling reached.
PRECEDENCE_OFFSET: Final = 1 << 62

_TIME_FIELDS: Final = frozenset(
    n for n in SNAPSHOT_SCHEMA.names if SNAPSHOT_SCHEMA.field(n).type == _TS and n != "recorded_at"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(value: datetime | None) -> int | None:
    """Microseconds since the epoch of an aware datetime (``None`` stays ``None``)."""
    if value is None:
        return None
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int | None) -> datetime | None:
    """The aware UTC datetime of a microsecond timestamp."""
    if value is None:
        return None
    return datetime.fromtimestamp(value / 1_000_000, tz=UTC).replace(microsecond=value % 1_000_000)


def micros_date(value: int) -> date:
    """The UTC date of a microsecond timestamp."""
    return date.fromordinal(719_163 + value // 86_400_000_000)


def dump_json(value: Any) -> str:
    """Compact JSON text as the lake stores it."""
    if value == {}:
        return "{}"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def record_to_row(
    record: TrackingRecord, *, kind: SnapshotKind, recorded_at: int
) -> dict[str, Any]:
    """A :class:`TrackingRecord` as a lake row (``seq`` is given when published)."""
    err = record.last_error
    return {
        "seq": 0,
        "snapshot_kind": kind,
        "recorded_at": recorded_at,
        "message_id": record.message_id,
        "provider_id": record.provider_id,
        "provider_message_id": record.provider_message_id,
        "type": record.type,
        "to": record.to,
        "from_": record.from_,
        "to_hash": record.to_hash,
        "to_masked": record.to_masked,
        "from_hash": record.from_hash,
        "from_masked": record.from_masked,
        "to_enc": record.to_enc,
        "from_enc": record.from_enc,
        "requested_at": to_micros(record.requested_at),
        "scheduled_at": to_micros(record.scheduled_at),
        "status": record.status,
        "provider_status_code": record.provider_status_code,
        "provider_status_message": record.provider_status_message,
        "sent_at": to_micros(record.sent_at),
        "delivered_at": to_micros(record.delivered_at),
        "failed_at": to_micros(record.failed_at),
        "status_updated_at": to_micros(record.status_updated_at),
        "attempt_count": record.attempt_count,
        "last_checked_at": to_micros(record.last_checked_at),
        "next_check_at": to_micros(record.next_check_at),
        "last_error": None if err is None else {"code": err.code, "message": err.message},
        "raw": None if record.raw is None else dump_json(record.raw),
        "metadata": dump_json(dict(record.metadata)),
        "retention_class": record.retention_class,
        "retention_bucket_ym": record.retention_bucket_ym,
    }


_PLAIN_FIELDS: Final = tuple(
    (n, SNAPSHOT_SCHEMA.field(n).type)
    for n in SNAPSHOT_SCHEMA.names
    if n not in ("seq", "snapshot_kind", "recorded_at", "last_error", "raw", "metadata")
)

_plain_values: Final = operator.attrgetter(*(name for name, _ in _PLAIN_FIELDS))


def records_to_table(
    records: Sequence[TrackingRecord], *, kind: SnapshotKind, recorded_at: int
) -> pa.Table:
    """Records as lake rows, built column by column (the table :func:`record_to_row` gives).

    The batch path of the writers: one pass per column instead of a dict per record.
    """
    n = len(records)
    columns: dict[str, pa.Array] = {
        "seq": pa.array([0] * n, pa.int64()),
        "snapshot_kind": pa.array([kind] * n, pa.string()),
        "recorded_at": pa.array([recorded_at] * n, _TS),
    }
    values = zip(*map(_plain_values, records), strict=True) if n else ((),) * len(_PLAIN_FIELDS)
    for (name, type_), column in zip(_PLAIN_FIELDS, values, strict=True):
        columns[name] = pa.array(column, type_)
    columns["last_error"] = pa.array(
        [
            None
            if r.last_error is None
            else {"code": r.last_error.code, "message": r.last_error.message}
            for r in records
        ],
        SNAPSHOT_SCHEMA.field("last_error").type,
    )
    columns["raw"] = pa.array(
        [None if r.raw is None else dump_json(r.raw) for r in records], pa.string()
    )
    columns["metadata"] = pa.array([dump_json(dict(r.metadata)) for r in records], pa.string())
    return pa.Table.from_arrays(
        [columns[name] for name in SNAPSHOT_SCHEMA.names], schema=SNAPSHOT_SCHEMA
    )


def row_to_record(row: Mapping[str, Any]) -> TrackingRecord:
    """A lake row (from a row dict or ``DataFrame.to_dicts()``) as a :class:`TrackingRecord`."""

    def t(name: str) -> datetime | None:
        value = row.get(name)
        if value is None or isinstance(value, datetime):
            return value
        return from_micros(int(value))

    err = row.get("last_error")
    raw = row.get("raw")
    return TrackingRecord(
        message_id=row["message_id"],
        provider_id=row["provider_id"],
        provider_message_id=row["provider_message_id"],
        type=row["type"],
        to=row.get("to"),
        from_=row.get("from_"),
        to_hash=row["to_hash"],
        to_masked=row["to_masked"],
        from_hash=row.get("from_hash"),
        from_masked=row.get("from_masked"),
        requested_at=t("requested_at"),  # type: ignore[arg-type]
        scheduled_at=t("scheduled_at"),
        status=row["status"],
        provider_status_code=row.get("provider_status_code"),
        provider_status_message=row.get("provider_status_message"),
        sent_at=t("sent_at"),
        delivered_at=t("delivered_at"),
        failed_at=t("failed_at"),
        status_updated_at=t("status_updated_at"),  # type: ignore[arg-type]
        attempt_count=int(row["attempt_count"]),
        last_checked_at=t("last_checked_at"),
        next_check_at=t("next_check_at"),  # type: ignore[arg-type]
        last_error=None if err is None else TrackingError(err["code"], err["message"] or ""),
        raw=None if raw is None else json.loads(raw),
        metadata=json.loads(row["metadata"]),
        retention_class=row["retention_class"],
        retention_bucket_ym=int(row["retention_bucket_ym"]),
        to_enc=row.get("to_enc"),
        from_enc=row.get("from_enc"),
    )


_RECORD_ORDER: Final = tuple(f.name for f in fields(TrackingRecord))


#: 19 digits in a row may be an integer past 64 bits, which orjson reads as a float.
_LONG_DIGITS: Final = re.compile(r"\d{19}")


def _json_text(text: str) -> Any:
    """JSON text from the lake as Python values (``json.loads``, faster where it can be)."""
    if text == "{}":
        return {}
    if _LONG_DIGITS.search(text):
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def frame_to_records(frame: pl.DataFrame) -> list[TrackingRecord]:
    """The rows of a frame of lake columns as records, column by column.

    The same records :func:`row_to_record` makes of ``frame.to_dicts()``, at a fraction
    of the cost: the due list of a polling round is converted here.
    """
    if frame.is_empty():
        return []
    columns: dict[str, list[Any]] = {
        name: frame.get_column(name).to_list() if name in frame.columns else [None] * frame.height
        for name in _RECORD_ORDER
    }
    columns["last_error"] = [
        None if e is None else TrackingError(e["code"], e["message"] or "")
        for e in columns["last_error"]
    ]
    columns["raw"] = [None if v is None else _json_text(v) for v in columns["raw"]]
    columns["metadata"] = [_json_text(v) for v in columns["metadata"]]
    return [TrackingRecord(*values) for values in zip(*columns.values(), strict=True)]


class LazyRecords(Sequence[TrackingRecord]):
    """The rows of a frame as records, each block converted when first read.

    A polling round reads its due list in order while it waits on gateways: the
    conversion of later records overlaps the waits instead of preceding them.
    """

    _BLOCK: Final = 256

    def __init__(self, frame: pl.DataFrame) -> None:
        self._frame = frame
        self._blocks: dict[int, list[TrackingRecord]] = {}

    def __len__(self) -> int:
        return self._frame.height

    @overload
    def __getitem__(self, index: int) -> TrackingRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[TrackingRecord]: ...
    def __getitem__(self, index: int | slice) -> TrackingRecord | list[TrackingRecord]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        block, offset = divmod(index, self._BLOCK)
        records = self._blocks.get(block)
        if records is None:
            part = self._frame.slice(block * self._BLOCK, self._BLOCK)
            records = self._blocks[block] = frame_to_records(part)
        return records[offset]


def rows_to_table(rows: Sequence[Mapping[str, Any]] | Iterable[Mapping[str, Any]]) -> pa.Table:
    """Lake rows as an Arrow table with :data:`SNAPSHOT_SCHEMA`."""
    return pa.Table.from_pylist(list(rows), schema=SNAPSHOT_SCHEMA)


def empty_frame() -> pl.DataFrame:
    """A frame with the lake's columns and no rows."""
    return pl.DataFrame(schema=POLARS_SCHEMA)
