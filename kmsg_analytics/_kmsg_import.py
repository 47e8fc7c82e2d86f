"""Import k-msg's delivery-tracking table into a lake, incrementally and idempotently.

k-msg keeps one row per message in a SQL table (``kmsg_delivery_tracking`` by default)
and overwrites it as polling goes on. :func:`import_kmsg_table` reads that table through
Ibis (SQLite, PostgreSQL, MySQL where the Ibis backend installs) in chunks of bounded
size, turns each row into a tracking record, and appends a ``load`` snapshot for every
message that is new to the lake or whose row changed since the last import. Run again
and again, it builds the status history k-msg itself overwrites.

What is read, per k-msg layout:

* default layout (snake_case columns), a custom column map (k-msg's ``columnMap`` keys
  such as ``messageId`` or our field names), with or without ``raw``;
* timestamps as epoch milliseconds (k-msg's ``typeStrategy.timestamp`` ``"bigint"`` and
  ``"integer"``) or native ``TIMESTAMPTZ`` (``"date"`` on PostgreSQL; elsewhere k-msg
  stores milliseconds for it too), numeric or ISO strings;
* ``last_error``/``metadata``/``raw`` as JSON text (or native JSON/JSONB); metadata keys in
  k-msg's camelCase become our snake_case (``customFields`` -> ``custom_fields``,
  ``failover.apiAttempt.fallbackMessageId`` -> ``failover.api_attempt.fallback_message_id``),
  while the content of ``custom_fields`` is kept exactly as given;
* the field-crypto *secure* layout: ``to_hash``/``to_masked``/``from_hash``/``from_masked``
  and ``retention_class`` are kept, ``*_enc``, ``metadata_enc`` and ``crypto_*`` are never
  read (nothing is decrypted). Where a plain number is present it is hashed with the
  lake's key; where only k-msg's hash is present it is kept as it is, so filtering by
  ``to=`` (which hashes with the lake's key) does not find those rows; filter them by
  ``to_hash=`` with k-msg's hash instead.

Bookkeeping lives inside the lake, in ``_sources/``: per source (a hash of the URL
without password and of the table) a JSON watermark (last import, counts, the latest
``status_updated_at`` seen) and a Parquet file of row fingerprints, so that a re-import
converts only the rows whose content changed. Every changed row is also compared with
the lake's current record: a row identical to it adds nothing, and a row older than it
(by ``status_updated_at``, or moving a terminal status back) is not appended either.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ._errors import InvalidRecordError, KmsgAnalyticsError
from ._lake import ParquetTrackingStore
from ._loading import hash_numbers, mask_numbers, normalize_numbers
from ._records import (
    DEFAULT_RETENTION_CLASS,
    DELIVERY_STATUSES,
    MESSAGE_TYPES,
    RETENTION_CLASSES,
    TERMINAL_STATUSES,
)
from ._schema import POLARS_SCHEMA, RECORD_COLUMNS, SNAPSHOT_SCHEMA, dump_json

if TYPE_CHECKING:
    from ._phone import HashKey
    from ._service import DeliveryTrackingService

__all__ = [
    "DEFAULT_TABLE",
    "KMSG_COLUMN_KEYS",
    "ImportReport",
    "ImportSourceError",
    "RowError",
    "UnreadableRowError",
    "import_kmsg_table",
    "read_source_state",
]


def _invalid(field: str, value: object, expected: str) -> NoReturn:
    """Raise :class:`InvalidRecordError` naming the field, the value and what is valid."""
    raise InvalidRecordError(field, value, expected)


DEFAULT_TABLE: Final = "kmsg_delivery_tracking"

#: How timestamps are stored: ``auto`` decides per column from its type; ``epoch_ms``
#: (k-msg's ``bigint``/``integer``) insists on millisecond numbers; ``date`` (k-msg's
#: ``date``) takes native timestamp columns, or milliseconds where k-msg stores those.
Timestamps = Literal["auto", "epoch_ms", "date"]
_TIMESTAMP_ALIASES: Final = {"bigint": "epoch_ms", "integer": "epoch_ms"}

#: k-msg's column-map keys -> our field names (``None``: a column we never read).
KMSG_COLUMN_KEYS: Final[Mapping[str, str | None]] = {
    "messageId": "message_id",
    "providerId": "provider_id",
    "providerMessageId": "provider_message_id",
    "type": "type",
    "to": "to",
    "toEnc": None,
    "toHash": "to_hash",
    "toMasked": "to_masked",
    "from": "from_",
    "fromEnc": None,
    "fromHash": "from_hash",
    "fromMasked": "from_masked",
    "status": "status",
    "providerStatusCode": "provider_status_code",
    "providerStatusMessage": "provider_status_message",
    "sentAt": "sent_at",
    "deliveredAt": "delivered_at",
    "failedAt": "failed_at",
    "requestedAt": "requested_at",
    "scheduledAt": "scheduled_at",
    "statusUpdatedAt": "status_updated_at",
    "attemptCount": "attempt_count",
    "lastCheckedAt": "last_checked_at",
    "nextCheckAt": "next_check_at",
    "lastError": "last_error",
    "raw": "raw",
    "metadata": "metadata",
    "metadataEnc": None,
    "metadataHashes": None,
    "cryptoKid": None,
    "cryptoVersion": None,
    "cryptoState": None,
    "retentionClass": "retention_class",
    "retentionBucketYm": None,
}

#: k-msg's default column of each field we read.
_DEFAULT_COLUMNS: Final = {
    "message_id": "message_id",
    "provider_id": "provider_id",
    "provider_message_id": "provider_message_id",
    "type": "type",
    "to": "to",
    "to_hash": "to_hash",
    "to_masked": "to_masked",
    "from_": "from",
    "from_hash": "from_hash",
    "from_masked": "from_masked",
    "status": "status",
    "provider_status_code": "provider_status_code",
    "provider_status_message": "provider_status_message",
    "sent_at": "sent_at",
    "delivered_at": "delivered_at",
    "failed_at": "failed_at",
    "requested_at": "requested_at",
    "scheduled_at": "scheduled_at",
    "status_updated_at": "status_updated_at",
    "attempt_count": "attempt_count",
    "last_checked_at": "last_checked_at",
    "next_check_at": "next_check_at",
    "last_error": "last_error",
    "raw": "raw",
    "metadata": "metadata",
    "retention_class": "retention_class",
}
_FIELD_ALIASES: Final = {"from": "from_"}

_TIME_FIELDS: Final = (
    "requested_at", "scheduled_at", "sent_at", "delivered_at", "failed_at",
    "status_updated_at", "last_checked_at", "next_check_at",
)  # fmt: skip
_TEXT_FIELDS: Final = (
    "message_id", "provider_id", "provider_message_id", "type", "status", "to", "to_hash",
    "to_masked", "from_", "from_hash", "from_masked", "provider_status_code",
    "provider_status_message", "retention_class",
)  # fmt: skip
_JSON_FIELDS: Final = ("last_error", "raw", "metadata")

#: k-msg's metadata keys that we spell in snake_case (outside ``custom_fields``).
_METADATA_KEYS: Final = (
    "customFields", "fallbackChannel", "fallbackContent", "fallbackTitle", "sendWarningCodes",
    "apiAttempt", "attemptedAt", "warningCode", "warningMessage", "fallbackMessageId",
    "fallbackProviderId", "errorCode", "errorMessage",
)  # fmt: skip
_METADATA_KEY_RE: Final = '"(?:' + "|".join(_METADATA_KEYS) + ')":'

#: Columns of a lake record compared to decide whether a row changed.
_COMPARE: Final = tuple(c for c in RECORD_COLUMNS if c not in ("to", "from_"))

_LOW_MS: Final = 946_684_800_000  # 2000-01-01
_HIGH_MS: Final = 7_258_118_400_000  # 2200-01-01
_TS: Final = pl.Datetime("us", "UTC")
_MAX_LISTED_ERRORS: Final = 1000
_STATE_VERSION: Final = 1


class ImportSourceError(KmsgAnalyticsError):
    """The source cannot be read: bad URL, missing table or columns, missing driver."""


class UnreadableRowError(ImportSourceError, ValueError):
    """A ``strict=True`` import met a row it cannot read; nothing was written."""


@dataclass(frozen=True, slots=True)
class RowError:
    """A source row that could not be imported: its id, the column and why."""

    message_id: str | None
    column: str
    reason: str

    def __str__(self) -> str:
        return f"{self.message_id!r}: {self.column}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What one :func:`import_kmsg_table` run did.

    ``new`` + ``changed`` snapshots were appended; ``unchanged`` rows matched the lake's
    current record; ``stale`` rows were older than the lake's record (by
    ``status_updated_at``, or a terminal status there) and were not appended;
    ``skipped`` rows could not be read (the first 1,000 in ``errors``).
    """

    source: str
    table: str
    source_id: str
    rows_read: int
    new: int
    changed: int
    unchanged: int
    stale: int
    skipped: int
    errors: tuple[RowError, ...] = field(default=(), repr=False)
    watermark: datetime | None = None
    seconds: float = 0.0

    @property
    def appended(self) -> int:
        """Snapshots appended to the lake (``new + changed``)."""
        return self.new + self.changed

    def summary(self) -> str:
        """One line for people: what was read and what happened to it."""
        rate = self.rows_read / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.rows_read:,} rows read from {self.table}: {self.new:,} new, "
            f"{self.changed:,} changed, {self.unchanged:,} unchanged, {self.stale:,} stale, "
            f"{self.skipped:,} skipped in {self.seconds:.1f} s ({rate:,.0f} rows/s)"
        )


Progress = Callable[[int, int | None], None]


# --------------------------------------------------------------------------- public entry


def import_kmsg_table(
    url: str,
    lake: str | os.PathLike[str] | ParquetTrackingStore | DeliveryTrackingService,
    *,
    table: str = DEFAULT_TABLE,
    column_map: Mapping[str, str] | None = None,
    timestamps: Timestamps = "auto",
    strict: bool = False,
    chunk_rows: int = 50_000,
    progress: Progress | None = None,
    hash_key: HashKey | bytes | str | None = None,
) -> ImportReport:
    """Append k-msg's tracking table to a lake, adding only what is new or changed.

    Parameters
    ----------
    url
        ``sqlite:///abs/path.sqlite`` (``sqlite://rel/path.sqlite`` or a plain file path
        for a relative one), ``postgresql://user:password@host:5432/db`` (add
        ``?schema=name`` for another schema) or ``mysql://user:password@host/db``.
        SQLite files are opened read-only.
    lake
        A lake directory (created when missing), a :class:`ParquetTrackingStore`, or a
        :class:`DeliveryTrackingService` over one.
    table
        The tracking table (``schema.table`` on PostgreSQL works too).
    column_map
        k-msg's ``columnMap`` overrides: ``{"messageId": "msg_id", ...}`` (our field
        names such as ``"message_id"`` work too).
    timestamps
        ``"auto"`` (per column from its type), ``"epoch_ms"`` (k-msg's ``bigint`` and
        ``integer`` strategies) or ``"date"`` (native timestamps on PostgreSQL).
    strict
        Fail on the first unreadable row, before anything is written, instead of
        reporting and skipping it.
    chunk_rows
        Rows read, converted and appended at a time (bounds memory).
    progress
        Called as ``progress(rows_read, total_rows)`` after each chunk.
    hash_key
        The lake's number-hash key (only when ``lake`` is a path).

    Returns
    -------
    ImportReport
        Counts of new, changed, unchanged, stale and skipped rows, the skipped rows'
        ``message_id`` and reason, and the latest ``status_updated_at`` seen.

    Examples
    --------
    >>> import sqlite3, tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> db = sqlite3.connect(tmp / "kmsg.sqlite")
    >>> _ = db.execute(
    ...     'CREATE TABLE kmsg_delivery_tracking (message_id TEXT PRIMARY KEY, '
    ...     'provider_id TEXT, provider_message_id TEXT, type TEXT, "to" TEXT, "from" TEXT, '
    ...     'status TEXT, requested_at INTEGER, status_updated_at INTEGER, '
    ...     'attempt_count INTEGER, next_check_at INTEGER, metadata TEXT)')
    >>> _ = db.execute(
    ...     "INSERT INTO kmsg_delivery_tracking VALUES ('m1', 'solapi', 'G1', 'SMS', "
    ...     "'010-1234-5678', NULL, 'SENT', 1793491200000, 1793491200000, 0, "
    ...     "1793491230000, '{\\"customFields\\":{\\"campaignId\\":\\"c1\\"}}')")
    >>> db.commit(); db.close()
    >>> url = f"sqlite:///{tmp / 'kmsg.sqlite'}"
    >>> report = import_kmsg_table(url, tmp / "lake", hash_key="doctest-key")
    >>> report.new, report.skipped
    (1, 0)
    >>> import_kmsg_table(url, tmp / "lake", hash_key="doctest-key").appended
    0
    >>> lake = ParquetTrackingStore(tmp / "lake", hash_key="doctest-key")
    >>> lake.get("m1").metadata
    {'custom_fields': {'campaignId': 'c1'}}
    >>> lake.close()
    """
    started = time.perf_counter()
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        _invalid("chunk_rows", chunk_rows, "a whole number >= 1")
    mode = _TIMESTAMP_ALIASES.get(str(timestamps), str(timestamps))
    if mode not in ("auto", "epoch_ms", "date"):
        msg = "timestamps"
        raise InvalidRecordError(
            msg, timestamps, "'auto', 'epoch_ms' (k-msg's bigint/integer) or 'date'"
        )
    store, owned = _open_lake(lake, hash_key)
    try:
        source = _Source.open(url, table, column_map, mode)
        try:
            with _source_lock(store, source.source_id):
                return _run(source, store, strict, chunk_rows, progress, started)
        finally:
            source.close()
    finally:
        if owned:
            store.close()


def read_source_state(
    lake: str | os.PathLike[str], url: str | None = None, *, table: str = DEFAULT_TABLE
) -> list[dict[str, Any]]:
    """The import watermarks kept in a lake (all sources, or the one of ``url``/``table``).

    Examples
    --------
    >>> import tempfile
    >>> read_source_state(tempfile.mkdtemp())
    []
    """
    folder = Path(lake) / "_sources"
    wanted = None if url is None else _source_id(_describe_url(url)[1], table)
    out: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if wanted is not None and path.stem != wanted:
            continue
        with contextlib.suppress(ValueError, OSError):
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                out.append(data)
    return out


# --------------------------------------------------------------------------- the run


def _run(
    source: _Source,
    store: ParquetTrackingStore,
    strict: bool,
    chunk_rows: int,
    progress: Progress | None,
    started: float,
) -> ImportReport:
    folder = store.paths.root / "_sources"
    sidecar = folder / f"{source.source_id}.rows.parquet"
    known = _read_sidecar(sidecar)
    lake_ids = store.current().select("message_id").collect().get_column("message_id")
    total = source.count() if progress is not None else None
    sink = _Sink(store, folder, staged=strict, flush_rows=chunk_rows)
    decider = _Decider(store, sink, lake_ids, batch_rows=chunk_rows)
    counts = {"read": 0, "unchanged": 0, "skipped": 0}
    errors: list[RowError] = []
    seen: list[pl.DataFrame] = []
    max_updated: datetime | None = None
    try:
        for batch in source.batches(chunk_rows):
            raw = _canonical(batch, source)
            counts["read"] += raw.height
            raw = raw.with_columns(
                __fp=raw.hash_rows(), __i=pl.int_range(pl.len(), dtype=pl.UInt32)
            )
            candidates = _candidates(raw, known, lake_ids)
            counts["unchanged"] += raw.height - int(candidates.sum())
            good, bad = _convert(raw.filter(candidates), source, store)
            if bad.height:
                if strict:
                    first = bad.row(0, named=True)
                    msg = (
                        f"row message_id={first['message_id']!r} of {source.table}: "
                        f"{first['column']}: {first['reason']} (strict import: nothing "
                        "was written; fix the row, or import without strict to skip it)"
                    )
                    raise UnreadableRowError(msg)
                counts["skipped"] += bad.height
                room = _MAX_LISTED_ERRORS - len(errors)
                errors.extend(
                    RowError(r["message_id"], r["column"], r["reason"])
                    for r in bad.head(max(room, 0)).iter_rows(named=True)
                )
                raw = raw.filter(~pl.col("__i").is_in(bad.get_column("__i").implode()))
            seen.append(raw.select(pl.col("message_id").cast(pl.String), "__fp"))
            if good.num_rows:
                decider.add(good)
                top = _max_time(good, "status_updated_at")
                if top is not None and (max_updated is None or top > max_updated):
                    max_updated = top
            if progress is not None:
                progress(counts["read"], total)
        decider.finish()
        sink.commit()
    except BaseException:
        sink.discard()
        raise
    report = ImportReport(
        source=source.redacted,
        table=source.table,
        source_id=source.source_id,
        rows_read=counts["read"],
        new=decider.new,
        changed=decider.changed,
        unchanged=counts["unchanged"] + decider.unchanged,
        stale=decider.stale,
        skipped=counts["skipped"],
        errors=tuple(errors),
        watermark=max_updated,
        seconds=time.perf_counter() - started,
    )
    _write_sidecar(sidecar, seen)
    _write_state(folder, source, report)
    return report


def _candidates(raw: pl.DataFrame, known: pl.DataFrame, lake_ids: pl.Series) -> pl.Series:
    """Rows to convert: fingerprint unknown for this source, or message missing in the lake."""
    if lake_ids.len() == 0 or known.height == 0:
        return pl.Series("candidate", [True] * raw.height, pl.Boolean)
    pairs = raw.select(pl.col("message_id").cast(pl.String), "__fp")
    seen = (
        pairs.join(known, on=["message_id", "__fp"], how="left", maintain_order="left")
        .get_column("__seen")
        .fill_null(False)
    )
    in_lake = pairs.get_column("message_id").is_in(lake_ids.implode())
    return (~(seen & in_lake)).alias("candidate")


class _Decider:
    """Compares converted rows with the lake's current records, in batches, and sinks them.

    A row is *new* when the lake has no record of its message, *unchanged* when the lake's
    record has the same content, *stale* when the lake's record is newer (by
    ``status_updated_at``, or terminal where the row is not); otherwise *changed*. The
    lake is read once per batch, for the batch's messages only.
    """

    def __init__(
        self, store: ParquetTrackingStore, sink: _Sink, lake_ids: pl.Series, *, batch_rows: int
    ) -> None:
        self.store = store
        self.sink = sink
        self.lake_ids = lake_ids
        self.batch_rows = batch_rows
        self.pending: list[pa.Table] = []
        self.rows = 0
        self.new = self.changed = self.unchanged = self.stale = 0

    def add(self, good: pa.Table) -> None:
        if self.lake_ids.len() == 0:  # an empty lake: everything is new, nothing to read
            self.new += good.num_rows
            self.sink.add(good)
            return
        self.pending.append(good)
        self.rows += good.num_rows
        if self.rows >= self.batch_rows:
            self.finish()

    def finish(self) -> None:
        if not self.pending:
            return
        good = pa.concat_tables(self.pending)
        self.pending, self.rows = [], 0
        frame = _polars(good)
        ids = frame.get_column("message_id")
        known = ids.filter(ids.is_in(self.lake_ids.implode()))
        lake = (
            self.store.current()
            .filter(pl.col("message_id").is_in(known.implode()))
            .select(list(_COMPARE))
            .collect()
        )
        index = lake.select(
            "message_id",
            pl.col("status_updated_at").alias("status_updated_at_lake"),
            pl.col("status").alias("status_lake"),
            __fp_lake=_fingerprint(lake),
        )
        ours = frame.select(
            "message_id",
            "status_updated_at",
            "status",
            __fp=_fingerprint(frame),
            __row=pl.int_range(pl.len(), dtype=pl.UInt32),
        )
        joined = ours.join(index, on="message_id", how="left")
        present = pl.col("__fp_lake").is_not_null()
        same = present & (pl.col("__fp") == pl.col("__fp_lake"))
        older = (pl.col("status_updated_at_lake") > pl.col("status_updated_at")) | (
            pl.col("status_lake").is_in(TERMINAL_STATUSES)
            & ~pl.col("status").is_in(TERMINAL_STATUSES)
        )
        flags = joined.select("__row", new=~present, same=same, stale=present & ~same & older)
        n_new = int(flags.get_column("new").sum())
        self.unchanged += int(flags.get_column("same").sum())
        self.stale += int(flags.get_column("stale").sum())
        rows = flags.filter(~pl.col("same") & ~pl.col("stale")).get_column("__row").sort()
        kept = good.take(pa.array(rows.to_numpy()))
        self.new += n_new
        self.changed += kept.num_rows - n_new
        self.sink.add(kept)


def _fingerprint(frame: pl.DataFrame) -> pl.Series:
    """A hash of the compared columns of lake rows (same dtypes on both sides)."""
    return frame.select([pl.col(c).cast(POLARS_SCHEMA[c]) for c in _COMPARE]).hash_rows()


def _max_time(table: pa.Table, name: str) -> datetime | None:
    import pyarrow.compute as pc

    value = pc.max(table.column(name)).as_py()
    return value.astimezone(UTC) if isinstance(value, datetime) else None


# --------------------------------------------------------------------------- the source


@dataclass
class _Source:
    """An open connection to the k-msg table and the columns to read."""

    backend: Any
    kind: str
    redacted: str
    table: str
    source_id: str
    columns: dict[str, str]  # our field -> source column (only those present)
    dtypes: dict[str, Any]  # source column -> ibis dtype
    timestamps: str
    column_map: dict[str, str]
    _table_expr: Any = None

    @classmethod
    def open(
        cls, url: str, table: str, column_map: Mapping[str, str] | None, timestamps: str
    ) -> _Source:
        if not isinstance(table, str) or not table.strip():
            _invalid("table", table, "the name of k-msg's tracking table")
        fields = _resolve_column_map(column_map)
        kind, redacted, backend = _connect(url)
        try:
            schema_name, _, name = table.rpartition(".")
            try:
                expr = (
                    backend.table(name, database=schema_name)
                    if schema_name
                    else backend.table(name)
                )
            except Exception as err:
                msg = (
                    f"no table {table!r} in {redacted} ({type(err).__name__}: {err}); pass "
                    "--table (table=) with k-msg's tableName"
                )
                raise ImportSourceError(msg) from err
            schema = expr.schema()
            present = {c.lower(): c for c in schema.names}
            columns: dict[str, str] = {}
            for name_, wanted in fields.items():
                actual = wanted if wanted in schema.names else present.get(wanted.lower())
                if actual is not None:
                    columns[name_] = actual
            missing = [
                f"{f} (column {fields[f]!r})"
                for f in ("message_id", "provider_id", "type", "status", "requested_at")
                if f not in columns
            ]
            if "to" not in columns and "to_hash" not in columns:
                missing.append(f"to (column {fields['to']!r}) or to_hash")
            if missing:
                msg = (
                    f"table {table!r} in {redacted} lacks " + ", ".join(missing) + "; its "
                    f"columns are {', '.join(schema.names)}: pass column_map= "
                    "(--column-map) with k-msg's columnMap"
                )
                raise ImportSourceError(msg)
            dtypes = {c: schema[c] for c in columns.values()}
            if timestamps == "epoch_ms":
                native = [
                    f for f in _TIME_FIELDS if f in columns and dtypes[columns[f]].is_timestamp()
                ]
                if native:
                    msg = (
                        f"timestamps='epoch_ms' but {', '.join(native)} are native timestamp "
                        "columns (k-msg's typeStrategy.timestamp 'date'): use timestamps='date'"
                    )
                    raise ImportSourceError(msg)
        except BaseException:
            with contextlib.suppress(Exception):
                backend.disconnect()
            raise
        return cls(
            backend=backend,
            kind=kind,
            redacted=redacted,
            table=table,
            source_id=_source_id(redacted, table),
            columns=columns,
            dtypes=dtypes,
            timestamps=timestamps,
            column_map={k: v for k, v in fields.items() if _DEFAULT_COLUMNS.get(k) != v},
            _table_expr=expr,
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.backend.disconnect()

    def count(self) -> int:
        """Rows in the table (for progress), without going through pandas."""
        expr = self._table_expr.count()
        if self.kind == "sqlite":
            cursor = self.backend.raw_sql(self.backend.compile(expr))
            try:
                return int(cursor.fetchone()[0])
            finally:
                cursor.close()
        return int(expr.to_pyarrow().as_py())

    def batches(self, chunk_rows: int) -> Iterator[pl.DataFrame]:
        """The table in chunks ordered by message id (keyset pagination: short reads)."""
        import ibis

        t = self._table_expr
        mid = self.columns["message_id"]
        cols = list(dict.fromkeys(self.columns.values()))
        # UUID columns (k-msg's typeStrategy.messageId "uuid") are read as text
        picked = [
            ibis._[c].cast("string").name(c) if self.dtypes[c].is_uuid() else ibis._[c]
            for c in cols
        ]
        last: Any = None
        while True:
            expr = t
            if last is not None:
                expr = expr.filter(t[mid] > ibis.literal(last, type=self.dtypes[mid]))
            expr = expr.order_by(mid).limit(chunk_rows).select(*picked)
            batch = self._fetch(expr, cols)
            if batch.height == 0:
                return
            last = batch.get_column(mid)[-1]
            yield batch
            if batch.height < chunk_rows or last is None:
                return

    def _fetch(self, expr: Any, cols: list[str]) -> pl.DataFrame:
        if self.kind != "sqlite":
            return _polars(expr.to_pyarrow())
        # SQLite: Ibis builds the query; rows come straight off its cursor, columnar,
        # instead of through pandas, a few thousand at a time (a column whose values do
        # not fit its declared type, which SQLite allows, arrives as text and is judged
        # row by row).
        schema = {c: _SQLITE_POLARS.get(type(self.dtypes[c]).__name__) for c in cols}
        parts: list[pl.DataFrame] = []
        cursor = self.backend.raw_sql(self.backend.compile(expr))
        try:
            while rows := cursor.fetchmany(_FETCH_ROWS):
                try:
                    parts.append(pl.DataFrame(rows, schema=schema, orient="row", strict=True))
                except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
                    parts.append(_loose_frame(rows, cols, schema))
        finally:
            cursor.close()
        if not parts:
            return pl.DataFrame(schema={c: dt or pl.String for c, dt in schema.items()})
        return pl.concat(parts, how="vertical_relaxed")


_FETCH_ROWS: Final = 10_000
_SQLITE_POLARS: Final[dict[str, Any]] = {
    "Int64": pl.Int64,
    "Int32": pl.Int64,
    "Int16": pl.Int64,
    "Int8": pl.Int64,
    "Float64": pl.Float64,
    "Float32": pl.Float64,
    "String": pl.String,
}


def _loose_frame(
    rows: list[tuple[Any, ...]], cols: list[str], schema: Mapping[str, Any]
) -> pl.DataFrame:
    """Rows whose values stray from their column's declared type: such columns as text."""
    data: dict[str, pl.Series] = {}
    for name, values in zip(cols, zip(*rows, strict=True), strict=True):
        try:
            data[name] = pl.Series(name, values, dtype=schema[name], strict=True)
        except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
            text = [None if v is None else str(v) for v in values]
            data[name] = pl.Series(name, text, dtype=pl.String)
    return pl.DataFrame(data)


def _resolve_column_map(column_map: Mapping[str, str] | None) -> dict[str, str]:
    fields = dict(_DEFAULT_COLUMNS)
    if column_map is None:
        return fields
    if not isinstance(column_map, Mapping):
        _invalid("column_map", column_map, "a mapping like {'messageId': 'id'}")
    for key, column in column_map.items():
        if key in KMSG_COLUMN_KEYS:
            name = KMSG_COLUMN_KEYS[key]
        else:
            name = _FIELD_ALIASES.get(key, key)
            if name not in fields:
                msg = "column_map"
                raise InvalidRecordError(
                    msg, key, "k-msg's columnMap keys: " + ", ".join(KMSG_COLUMN_KEYS)
                )
        if not isinstance(column, str) or not column.strip():
            _invalid(f"column_map[{key!r}]", column, "a column name")
        if name is not None:
            fields[name] = column.strip()
    return fields


def _describe_url(url: str) -> tuple[str, str, dict[str, Any]]:
    """``(kind, redacted url, connect arguments)`` of a source URL."""
    if not isinstance(url, str) or not url.strip():
        _invalid("url", url, "e.g. 'sqlite:///path/kmsg.sqlite'")
    url = url.strip()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite" or (not scheme and "://" not in url) or len(scheme) == 1:
        if scheme == "sqlite":
            rest = url[len("sqlite://") :].split("?", 1)[0]
            path = Path(unquote(rest)) if rest else Path()
        else:
            path = Path(url)
        if not str(path) or str(path) == ".":
            _invalid("url", url, "sqlite:///path/to/kmsg.sqlite")
        path = path.expanduser().resolve()
        return "sqlite", f"sqlite://{path}", {"path": path}
    if scheme in ("postgres", "postgresql", "postgresql+psycopg", "mysql", "mysql+pymysql"):
        kind = "postgres" if scheme.startswith("postgres") else "mysql"
        args: dict[str, Any] = {}
        if parts.hostname:
            args["host"] = parts.hostname
        if parts.port:
            args["port"] = parts.port
        if parts.username:
            args["user"] = unquote(parts.username)
        if parts.password:
            args["password"] = unquote(parts.password)
        database = parts.path.lstrip("/")
        if database:
            args["database"] = unquote(database)
        for item in parts.query.split("&") if parts.query else []:
            key, _, value = item.partition("=")
            if key == "schema" and kind == "postgres":
                args["schema"] = unquote(value)
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        if parts.username:
            user = quote(unquote(parts.username))
            netloc = f"{user}:***@{netloc}" if parts.password else f"{user}@{netloc}"
        redacted = urlunsplit((scheme, netloc, parts.path, parts.query, ""))
        return kind, redacted, args
    msg = "url"
    raise InvalidRecordError(
        msg,
        url,
        "sqlite:///path/kmsg.sqlite, postgresql://user@host:5432/db or mysql://user@host/db",
    )


def _connect(url: str) -> tuple[str, str, Any]:
    kind, redacted, args = _describe_url(url)
    import ibis

    if kind == "sqlite":
        import sqlite3

        path: Path = args["path"]
        if not path.is_file():
            msg = f"no SQLite database at {path} (from {url!r})"
            raise ImportSourceError(msg)
        con = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
        return kind, redacted, ibis.sqlite.from_connection(con)
    try:
        connect = ibis.postgres.connect if kind == "postgres" else ibis.mysql.connect
        return kind, redacted, connect(**args)
    except ImportError as err:
        extra = "postgres" if kind == "postgres" else "mysql"
        msg = (
            f"reading {kind} needs the Ibis {extra} backend: "
            f'pip install "ibis-framework[{extra}]" ({err})'
        )
        raise ImportSourceError(msg) from err
    except Exception as err:
        msg = f"cannot connect to {redacted}: {type(err).__name__}: {err}"
        raise ImportSourceError(msg) from err


def _source_id(redacted: str, table: str) -> str:
    return hashlib.sha256(f"{redacted}\n{table}".encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- conversion


def _canonical(frame: pl.DataFrame, source: _Source) -> pl.DataFrame:
    """The chunk with our field names and plain types (JSON as text, ids as text)."""
    exprs: list[pl.Expr] = []
    for name, column in source.columns.items():
        col = pl.col(column)
        dtype = frame.schema[column]
        if name in _TEXT_FIELDS or name in _JSON_FIELDS:
            if dtype.is_nested():
                wrapped = pl.struct(col.alias("v")).struct.json_encode()
                col = wrapped.str.slice(5, wrapped.str.len_chars() - 6)
            elif dtype != pl.String:
                col = col.cast(pl.String)
        elif name == "attempt_count" and not dtype.is_integer():
            col = col.cast(pl.String)
        exprs.append(col.alias(name))
    return frame.select(exprs)


def _convert(
    raw: pl.DataFrame, source: _Source, store: ParquetTrackingStore
) -> tuple[pa.Table, pl.DataFrame]:
    """Validated lake rows of the chunk, and the rows that cannot be read with why."""
    empty_bad = pl.DataFrame(
        schema={"__i": pl.UInt32, "message_id": pl.String, "column": pl.String, "reason": pl.String}
    )
    if raw.height == 0:
        return pa.table({}), empty_bad
    checks: list[pl.DataFrame] = []

    def check(frame: pl.DataFrame, bad: pl.Expr, column: str, reason: pl.Expr) -> None:
        hit = frame.filter(bad)
        if hit.height:
            checks.append(
                hit.select(
                    "__i",
                    pl.col("message_id"),
                    pl.lit(column).alias("column"),
                    reason.cast(pl.String).alias("reason"),
                )
            )

    def shown(name: str) -> pl.Expr:
        """The value as the reason shows it: quoted, at most 80 characters, or NULL."""
        text = pl.col(name).cast(pl.String).str.slice(0, 80)
        return (pl.lit("'") + text + pl.lit("'")).fill_null("NULL")

    frame = raw
    for name in ("provider_message_id", "provider_status_code", "provider_status_message"):
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, pl.String).alias(name))
    frame = frame.with_columns(
        pl.col("provider_message_id").fill_null(""),
        *[
            pl.when(pl.col(n).str.strip_chars() == "").then(None).otherwise(pl.col(n)).alias(n)
            for n in ("provider_status_code", "provider_status_message")
        ],
    )
    check(
        frame,
        pl.col("message_id").is_null() | (pl.col("message_id").str.strip_chars() == ""),
        "message_id",
        pl.lit("empty message id"),
    )
    check(
        frame,
        pl.col("provider_id").is_null() | (pl.col("provider_id").str.strip_chars() == ""),
        "provider_id",
        pl.lit("empty provider id"),
    )
    check(
        frame,
        ~pl.col("type").is_in(MESSAGE_TYPES).fill_null(False),
        "type",
        pl.format("unknown message type {}", shown("type")),
    )
    check(
        frame,
        ~pl.col("status").is_in(DELIVERY_STATUSES).fill_null(False),
        "status",
        pl.format(
            "unknown status {} (expected one of {})",
            shown("status"),
            pl.lit(", ".join(DELIVERY_STATUSES)),
        ),
    )
    if "retention_class" in frame.columns:
        frame = frame.with_columns(
            pl.col("retention_class")
            .fill_null(DEFAULT_RETENTION_CLASS)
            .replace("", DEFAULT_RETENTION_CLASS)
        )
        check(
            frame,
            ~pl.col("retention_class").is_in(RETENTION_CLASSES),
            "retention_class",
            pl.format("unknown retention class {}", shown("retention_class")),
        )

    # times
    for name in _TIME_FIELDS:
        if name not in frame.columns:
            continue
        parsed, given = _parse_times(frame, name, source.timestamps)
        frame = frame.with_columns(parsed.alias(f"__t_{name}"), given.alias(f"__g_{name}"))
        t = pl.col(f"__t_{name}")
        bad = pl.col(f"__g_{name}") & (
            t.is_null()
            | (t < datetime(2000, 1, 1, tzinfo=UTC))
            | (t >= datetime(2200, 1, 1, tzinfo=UTC))
        )
        check(
            frame,
            bad,
            name,
            pl.format(
                "{} is not a time between 2000-01-01 and 2200-01-01 (UTC)",
                shown(name),
            ),
        )
        if name == "requested_at":
            check(frame, ~pl.col(f"__g_{name}"), name, pl.lit("requested_at is missing"))

    # attempt count
    if "attempt_count" in frame.columns:
        frame = frame.with_columns(
            pl.col("attempt_count").cast(pl.Int64, strict=False).alias("__attempts")
        )
        check(
            frame,
            (pl.col("attempt_count").is_not_null() & pl.col("__attempts").is_null())
            | (pl.col("__attempts") < 0)
            | (pl.col("__attempts") >= 2**31),
            "attempt_count",
            pl.format("{} is not a whole number >= 0", shown("attempt_count")),
        )
    else:
        frame = frame.with_columns(pl.lit(0, pl.Int64).alias("__attempts"))

    # JSON columns (decided once per distinct value)
    json_out: dict[str, pl.Expr] = {}
    for name in _JSON_FIELDS:
        if name not in frame.columns:
            continue
        converted = _convert_json(frame.get_column(name), name)
        frame = frame.with_columns(
            converted.get_column("ok").alias(f"__ok_{name}"),
            converted.get_column("value").alias(f"__j_{name}"),
        )
        check(
            frame,
            ~pl.col(f"__ok_{name}"),
            name,
            pl.format("not valid JSON: {}", shown(name)),
        )
        json_out[name] = pl.col(f"__j_{name}")

    # numbers: our hash where a plain number is readable, else k-msg's hash as it is
    key = store.hash_key
    number_cols: dict[str, pl.Expr] = {}
    for field_, prefix in (("to", "to"), ("from_", "from")):
        plain = field_ in frame.columns
        if plain:
            frame = frame.with_columns(
                pl.when(pl.col(field_).str.strip_chars() == "")
                .then(None)
                .otherwise(pl.col(field_))
                .alias(field_)
            )
            frame = frame.with_columns(normalize_numbers(pl.col(field_)).alias(f"__n_{prefix}"))
            norm = frame.get_column(f"__n_{prefix}")
            frame = frame.with_columns(hash_numbers(norm, key).alias(f"__h_{prefix}"))
        theirs_hash = f"{prefix}_hash"
        theirs_mask = f"{prefix}_masked"
        their_h = (
            pl.when(pl.col(theirs_hash).str.strip_chars() != "").then(pl.col(theirs_hash))
            if theirs_hash in frame.columns
            else pl.lit(None, pl.String)
        )
        their_m = pl.col(theirs_mask) if theirs_mask in frame.columns else pl.lit(None, pl.String)
        if plain:
            ok = pl.col(f"__n_{prefix}").is_not_null()
            number_cols[f"{prefix}_hash"] = (
                pl.when(ok).then(pl.col(f"__h_{prefix}")).otherwise(their_h)
            )
            number_cols[f"{prefix}_masked"] = (
                pl.when(ok).then(mask_numbers(pl.col(f"__n_{prefix}"))).otherwise(their_m)
            )
            number_cols[field_] = pl.when(ok).then(pl.col(field_))
            unreadable = pl.col(field_).is_not_null() & ~ok & their_h.is_null()
            check(
                frame,
                unreadable,
                "to" if field_ == "to" else "from",
                pl.format("{} is not a phone number of 3 to 20 digits", shown(field_)),
            )
        else:
            number_cols[f"{prefix}_hash"] = their_h
            number_cols[f"{prefix}_masked"] = their_m
            number_cols[field_] = pl.lit(None, pl.String)
    frame = frame.with_columns(**number_cols)
    frame = frame.with_columns(pl.col("to_masked").fill_null(""))
    check(
        frame,
        pl.col("to_hash").is_null(),
        "to",
        pl.lit("no recipient number (neither a plain number nor k-msg's to_hash)"),
    )

    rejected = (
        pl.concat(checks, how="vertical").unique("__i", keep="first", maintain_order=True)
        if checks
        else empty_bad
    )
    if rejected.height:
        frame = frame.filter(~pl.col("__i").is_in(rejected.get_column("__i").implode()))
    if frame.height == 0:
        return pa.table({}), rejected

    last_error = json_out.get("last_error")
    records = frame.select(
        "message_id",
        "provider_id",
        "provider_message_id",
        "type",
        "status",
        "provider_status_code",
        "provider_status_message",
        *[pl.col(f"__t_{n}").alias(n) for n in _TIME_FIELDS if f"__t_{n}" in frame.columns],
        pl.col("__attempts").fill_null(0).cast(pl.Int32).alias("attempt_count"),
        (last_error if last_error is not None else pl.lit(None, pl.String)).alias("__last_error"),
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
    records = records.with_columns(_last_error_struct(records.get_column("__last_error")))
    if store.keep_numbers:
        records = records.with_columns(to=pl.col("__to"), from_=pl.col("__from"))
    return _lake_table(records.drop("__last_error", "__to", "__from")), rejected


def _lake_table(records: pl.DataFrame) -> pa.Table:
    """Validated records in lake form (defaults filled, every column, lake types)."""
    requested = pl.col("requested_at")
    updated = (
        pl.col("status_updated_at").fill_null(requested)
        if "status_updated_at" in records.columns
        else requested
    )
    frame = records.with_columns(status_updated_at=updated).with_columns(
        next_check_at=(
            pl.col("next_check_at").fill_null(pl.col("status_updated_at"))
            if "next_check_at" in records.columns
            else pl.col("status_updated_at")
        ),
        retention_class=(
            pl.col("retention_class")
            if "retention_class" in records.columns
            else pl.lit(DEFAULT_RETENTION_CLASS)
        ),
        retention_bucket_ym=(requested.dt.year() * 100 + requested.dt.month()).cast(pl.Int32),
        metadata=pl.col("metadata").fill_null("{}"),
        seq=pl.lit(0, pl.Int64),
        snapshot_kind=pl.lit("load"),
        recorded_at=pl.col("status_updated_at"),
    )
    out = frame.select(
        [
            (pl.col(n) if n in frame.columns else pl.lit(None)).cast(dtype).alias(n)
            for n, dtype in POLARS_SCHEMA.items()
        ]
    )
    return out.to_arrow().cast(SNAPSHOT_SCHEMA)


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


def _convert_json(values: pl.Series, name: str) -> pl.DataFrame:
    """Per row: ``ok`` (readable) and ``value`` (our JSON text; ``None`` when absent).

    Distinct values are converted once and joined back.
    """
    base = pl.DataFrame({"v": values})
    uniq = base.filter(pl.col("v").is_not_null()).unique("v")
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
    joined = base.join(uniq.select("v", "ok", "value"), on="v", how="left", maintain_order="left")
    return joined.select(pl.col("ok").fill_null(True), "value")


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


def _last_error_struct(text: pl.Series) -> pl.Series:
    """k-msg's ``last_error`` JSON as our ``{code, message}`` (only when both are given)."""
    code = text.str.json_path_match("$.code")
    message = text.str.json_path_match("$.message")
    frame = pl.DataFrame({"code": code, "message": message})
    keep = code.is_not_null() & (code.str.strip_chars() != "") & message.is_not_null()
    return frame.select(
        pl.when(pl.lit(keep)).then(pl.struct("code", "message")).alias("last_error")
    ).to_series()


def _polars(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


# --------------------------------------------------------------------------- lake side


def _open_lake(
    lake: str | os.PathLike[str] | ParquetTrackingStore | DeliveryTrackingService,
    hash_key: HashKey | bytes | str | None,
) -> tuple[ParquetTrackingStore, bool]:
    if isinstance(lake, ParquetTrackingStore):
        return lake, False
    inner = getattr(lake, "store", None)
    if isinstance(inner, ParquetTrackingStore):
        return inner, False
    if isinstance(lake, str) and "://" in lake:
        _invalid(
            "lake", lake, "a local lake directory (import into object storage is not supported)"
        )
    if isinstance(lake, str | os.PathLike):
        return ParquetTrackingStore(lake, hash_key=hash_key), True
    msg = "lake"
    raise InvalidRecordError(
        msg, lake, "a lake directory, a ParquetTrackingStore or a service over one"
    )


@contextlib.contextmanager
def _source_lock(store: ParquetTrackingStore, source_id: str) -> Iterator[None]:
    """One import per source at a time (an ``flock``, released if we die)."""
    folder = store.paths.root / "_sources"
    folder.mkdir(exist_ok=True)
    fd = os.open(folder / f"{source_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _Sink:
    """Where converted rows go: appended in batches, or staged until commit (strict)."""

    def __init__(
        self, store: ParquetTrackingStore, folder: Path, *, staged: bool, flush_rows: int
    ) -> None:
        self.store = store
        self.staged = staged
        self.flush_rows = flush_rows
        self.buffer: list[pa.Table] = []
        self.rows = 0
        self.dir = folder / f".staging-{uuid.uuid4().hex}"
        self.files: list[Path] = []
        self.recorded_at = time.time_ns() // 1000

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.buffer.append(table)
        self.rows += table.num_rows
        if self.rows >= self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        table = pa.concat_tables(self.buffer)
        self.buffer, self.rows = [], 0
        if self.staged:
            self.dir.mkdir(exist_ok=True)
            path = self.dir / f"{len(self.files):06d}.parquet"
            pq.write_table(table, path)
            self.files.append(path)
        else:
            self.store.append_table(table, kind="load", recorded_at=self.recorded_at)

    def commit(self) -> None:
        self._flush()
        for path in self.files:
            self.store.append_table(pq.read_table(path), kind="load", recorded_at=self.recorded_at)
        self.discard()

    def discard(self) -> None:
        self.buffer = []
        shutil.rmtree(self.dir, ignore_errors=True)


def _read_sidecar(path: Path) -> pl.DataFrame:
    empty = pl.DataFrame(schema={"message_id": pl.String, "__fp": pl.UInt64, "__seen": pl.Boolean})
    if not path.is_file():
        return empty
    try:
        frame = pl.read_parquet(path).select("message_id", "__fp")
    except Exception:  # a damaged sidecar only costs a full comparison
        return empty
    return frame.with_columns(__seen=pl.lit(True))


def _write_sidecar(path: Path, seen: list[pl.DataFrame]) -> None:
    frame = (
        pl.concat(seen, how="vertical")
        if seen
        else pl.DataFrame(schema={"message_id": pl.String, "__fp": pl.UInt64})
    )
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    frame.write_parquet(tmp)
    os.replace(tmp, path)


def _write_state(folder: Path, source: _Source, report: ImportReport) -> None:
    path = folder / f"{source.source_id}.json"
    previous: dict[str, Any] = {}
    with contextlib.suppress(ValueError, OSError):
        loaded = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            previous = loaded
    before = previous.get("max_status_updated_at")
    mark = report.watermark.isoformat() if report.watermark is not None else None
    if before is not None and (mark is None or before > mark):
        mark = before
    state = {
        "format_version": _STATE_VERSION,
        "source": source.redacted,
        "table": source.table,
        "source_id": source.source_id,
        "column_map": source.column_map,
        "timestamps": source.timestamps,
        "imports": int(previous.get("imports", 0)) + 1,
        "last_import_at": datetime.now(UTC).isoformat(),
        "max_status_updated_at": mark,
        "last_report": {
            "rows_read": report.rows_read,
            "new": report.new,
            "changed": report.changed,
            "unchanged": report.unchanged,
            "stale": report.stale,
            "skipped": report.skipped,
            "seconds": round(report.seconds, 3),
        },
        "snapshots_appended": int(previous.get("snapshots_appended", 0)) + report.appended,
    }
    tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
