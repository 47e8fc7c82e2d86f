"""Import k-msg's delivery-tracking table into a lake, incrementally and idempotently.

k-msg keeps one row per message in a SQL table (``kmsg_delivery_tracking`` by default)
and overwrites it as polling goes on. :func:`import_kmsg_table` reads that table through
Ibis (SQLite, PostgreSQL, MySQL where the Ibis backend installs) in chunks of bounded
size, turns each row into a tracking record, and appends a ``load`` snapshot for every
message that is new to the lake or whose row changed since the last import. Run again
and again, it builds the status history k-msg itself overwrites.

Reading, converting and appending run at once, each in its own thread, one chunk apart
(SQLite's chunks come through the ADBC driver as Arrow columns when it is installed).
Into an empty lake, or past 250,000 appended rows, the appends go in the lake's bulk mode
and the lake is folded once, at the end of the import.

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
without password and of the table) a JSON state (last import, counts, the watermark) and
a Parquet file of row fingerprints. k-msg moves ``status_updated_at`` or
``last_checked_at`` forward on every write of a row (a send, a poll), so a re-import
reads only the rows where one of them reached the last import's watermark (the latest
such time seen, less a safety margin for late commits and clock skew), the rows added
since (SQLite: past the last ``rowid``) and the rows skipped last time; ``full=True``
reads everything. Of the rows read, only those whose fingerprint changed are converted,
and each is compared with the lake's current record: a row identical to it adds nothing,
and a row older than it (by ``status_updated_at``, or moving a terminal status back) is
not appended either.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ._errors import InvalidRecordError
from ._kmsg_convert import Converter, NumberHasher, canonical, latest_time
from ._kmsg_layout import (
    DEFAULT_TABLE,
    KMSG_COLUMN_KEYS,
    TIMESTAMP_ALIASES,
    WATERMARK_FIELDS,
    ImportSourceError,
    RowError,
    Timestamps,
    UnreadableRowError,
    invalid,
)
from ._kmsg_source import KmsgSource, Prefetch, Since, describe_url, source_id
from ._lake import ParquetTrackingStore
from ._queries import latest
from ._records import TERMINAL_STATUSES
from ._schema import POLARS_SCHEMA, RECORD_COLUMNS

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

_describe_url = describe_url  # the name the tests and older callers use

#: Columns of a lake record compared to decide whether a row changed.
_COMPARE: Final = tuple(c for c in RECORD_COLUMNS if c not in ("to", "from_"))

#: How far before the last import's watermark a re-import starts reading: rows k-msg
#: committed late, or stamped by a server whose clock is behind, are still read.
WATERMARK_MARGIN: Final = timedelta(minutes=15)
#: Converted rows compared with the lake per read of its history, at least.
_COMPARE_ROWS: Final = 100_000
_MAX_LISTED_ERRORS: Final = 1000
#: Rows a re-import appends before it switches the lake to bulk mode (one fold at the end).
_BULK_ROWS: Final = 250_000
_STATE_VERSION: Final = 2


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What one :func:`import_kmsg_table` run did.

    ``new`` + ``changed`` snapshots were appended; ``unchanged`` rows matched the lake's
    current record (or, not read at all, had not been written since the last import's
    watermark); ``stale`` rows were older than the lake's record (by
    ``status_updated_at``, or a terminal status there) and were not appended;
    ``skipped`` rows could not be read (the first 1,000 in ``errors``). ``rows_read``
    covers the whole table; ``fetched`` is how many rows were actually fetched.
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
    fetched: int = 0

    @property
    def appended(self) -> int:
        """Snapshots appended to the lake (``new + changed``)."""
        return self.new + self.changed

    def summary(self) -> str:
        """One line for people: what was read and what happened to it."""
        rate = self.rows_read / self.seconds if self.seconds > 0 else 0.0
        fetched = f" ({self.fetched:,} fetched)" if self.fetched != self.rows_read else ""
        return (
            f"{self.rows_read:,} rows read from {self.table}{fetched}: {self.new:,} new, "
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
    full: bool = False,
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
    full
        Read and compare every row, not only those written since the last import's
        watermark (for tables changed behind k-msg's back, e.g. by hand).

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
        invalid("chunk_rows", chunk_rows, "a whole number >= 1")
    mode = TIMESTAMP_ALIASES.get(str(timestamps), str(timestamps))
    if mode not in ("auto", "epoch_ms", "date"):
        msg = "timestamps"
        raise InvalidRecordError(
            msg, timestamps, "'auto', 'epoch_ms' (k-msg's bigint/integer) or 'date'"
        )
    store, owned = _open_lake(lake, hash_key)
    try:
        source = KmsgSource.open(url, table, column_map, mode)
        try:
            with _source_lock(store, source.source_id):
                run = _Run(source, store, strict=strict, chunk_rows=chunk_rows, full=full)
                return run.execute(progress, started)
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
    wanted = None if url is None else source_id(describe_url(url)[1], table)
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


class _Run:
    """One import: plan what to read, read it ahead, convert, compare, append, book-keep."""

    def __init__(
        self,
        source: KmsgSource,
        store: ParquetTrackingStore,
        *,
        strict: bool,
        chunk_rows: int,
        full: bool,
    ) -> None:
        self.source = source
        self.store = store
        self.strict = strict
        self.chunk_rows = chunk_rows
        self.folder = store.paths.root / "_sources"
        self.sidecar = self.folder / f"{source.source_id}.rows.parquet"
        self.state = _read_state(self.folder / f"{source.source_id}.json")
        store.flush()  # rows acknowledged but still in the store's log are in the lake too
        self.lake_empty = not store.paths.history_files()
        # a lake emptied behind our back, or a full read, compares every row with the lake
        self.known = _read_sidecar(self.sidecar)
        self.lookup = _Known(None if full or self.lake_empty else self.known)
        self.since = None if full else self._plan()
        self.converter = Converter(
            timestamps=source.timestamps,
            hasher=NumberHasher(store.hash_key),
            keep_numbers=store.keep_numbers,
        )
        self.fetched = self.unchanged = self.skipped = 0
        self.errors: list[RowError] = []
        self.seen = _Fingerprints(self.sidecar)
        self.max_updated: datetime | None = None
        self.latest: int | None = None  # UTC micros: k-msg's latest write time read

    def _plan(self) -> Since | None:
        """Read only what changed since the last import, when that can be told safely."""
        mark = self.state.get("watermark")
        if (
            not isinstance(mark, dict)
            or mark.get("layout") != self.source.layout()
            or not self.source.can_filter_by_time()
            or self.lake_empty
        ):
            return None
        value = mark.get("value_us")
        rowid = mark.get("max_rowid")
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        margin = int(WATERMARK_MARGIN / timedelta(microseconds=1))
        recheck = self.known.filter(pl.col("__fp").is_null()).get_column("message_id")
        return Since(
            cutoff_us=value - margin,
            max_rowid=rowid if isinstance(rowid, int) and not isinstance(rowid, bool) else None,
            recheck=tuple(recheck.to_list()),
        )

    def execute(self, progress: Progress | None, started: float) -> ImportReport:
        source, store = self.source, self.store
        wall_start = time.time_ns() // 1000
        total = source.count() if progress is not None or self.since is not None else None
        bulk = contextlib.ExitStack()
        sink = _Sink(
            store,
            self.folder,
            staged=self.strict,
            flush_rows=self.chunk_rows,
            bulk=bulk,
            bulk_after=0 if self.lake_empty else _BULK_ROWS,
        )
        batch = max(self.chunk_rows, _COMPARE_ROWS)
        decider = _Decider(store, sink, lake_empty=self.lake_empty, batch_rows=batch)
        # three stages at once: the reader thread fetches chunk n+2 (in C, outside the
        # GIL), the converter thread converts chunk n+1 (Polars), this thread appends n
        reader = Prefetch(source.chunks(self.chunk_rows, self.since), depth=1)
        try:
            with bulk, reader as chunks:
                with Prefetch(map(self._convert, chunks), depth=1) as converted:
                    for item in converted:
                        self._take(item, decider)
                        del item
                        if progress is not None:
                            progress(self.fetched, total)
                self.converter.forget()  # its memory is the lake's, for the fold
                decider.finish()
                sink.commit()
        except BaseException:
            sink.discard()
            self.seen.discard()
            raise
        unread = 0
        if self.since is not None and total is not None:
            unread = max(0, total - self.fetched)
            if progress is not None and unread:
                progress(self.fetched + unread, max(total, self.fetched + unread))
        report = ImportReport(
            source=source.redacted,
            table=source.table,
            source_id=source.source_id,
            rows_read=self.fetched + unread,
            new=decider.new,
            changed=decider.changed,
            unchanged=self.unchanged + unread + decider.unchanged,
            stale=decider.stale,
            skipped=self.skipped,
            errors=tuple(self.errors),
            watermark=self.max_updated,
            seconds=time.perf_counter() - started,
            fetched=self.fetched,
        )
        self.seen.commit(self.known if self.since is not None else None)
        _write_state(self.folder, source, report, self._watermark(wall_start), self.state)
        return report

    def _convert(self, chunk: pl.DataFrame) -> _Converted:
        """A chunk's rows to append, its unreadable rows and its fingerprints (any thread)."""
        source = self.source
        raw = canonical(chunk, source.columns)
        raw = raw.with_columns(__fp=raw.hash_rows(), __i=pl.int_range(pl.len(), dtype=pl.UInt32))
        candidates = ~self.lookup.unchanged(raw)
        n_candidates = int(candidates.sum())
        # a first import (nothing known) converts every row: no copy of the chunk
        good, bad = self.converter.convert(
            raw if n_candidates == raw.height else raw.filter(candidates)
        )
        fingerprints = pl.col("__fp")
        if bad.height:  # skipped rows keep no fingerprint: read and judged again next time
            fingerprints = pl.when(~pl.col("__i").is_in(bad.get_column("__i").implode())).then(
                "__fp"
            )
        return _Converted(
            fetched=raw.height,
            unchanged=raw.height - n_candidates,
            latest=latest_time(raw, WATERMARK_FIELDS, source.timestamps),
            good=good,
            bad=bad,
            fingerprints=raw.select(pl.col("message_id").cast(pl.String), fingerprints),
        )

    def _take(self, item: _Converted, decider: _Decider) -> None:
        """Count a converted chunk, keep its fingerprints and hand its rows on."""
        self.fetched += item.fetched
        self.unchanged += item.unchanged
        if item.latest is not None and (self.latest is None or item.latest > self.latest):
            self.latest = item.latest
        bad = item.bad
        if bad.height:
            if self.strict:
                first = bad.row(0, named=True)
                msg = (
                    f"row message_id={first['message_id']!r} of {self.source.table}: "
                    f"{first['column']}: {first['reason']} (strict import: nothing "
                    "was written; fix the row, or import without strict to skip it)"
                )
                raise UnreadableRowError(msg)
            self.skipped += bad.height
            room = _MAX_LISTED_ERRORS - len(self.errors)
            self.errors.extend(
                RowError(r["message_id"], r["column"], r["reason"])
                for r in bad.head(max(room, 0)).iter_rows(named=True)
            )
        self.seen.add(item.fingerprints)
        good = item.good
        if good.num_rows:
            decider.add(good)
            top = _max_time(good, "status_updated_at")
            if top is not None and (self.max_updated is None or top > self.max_updated):
                self.max_updated = top

    def _watermark(self, wall_start: int) -> dict[str, Any] | None:
        """What the next import compares with (``None``: it reads everything)."""
        if not self.source.can_filter_by_time():
            return None
        previous = self.state.get("watermark") if self.since is not None else None
        before = previous if isinstance(previous, dict) else {}
        values = [v for v in (before.get("value_us"), self.latest) if isinstance(v, int)]
        if not values:
            return None
        rowids = [v for v in (before.get("max_rowid"), self.source.max_rowid) if isinstance(v, int)]
        return {
            "layout": self.source.layout(),
            "columns": [f for f in WATERMARK_FIELDS if f in self.source.columns],
            # never past our own clock: a row stamped in the future cannot hide later writes
            "value_us": min(max(values), wall_start),
            "max_rowid": max(rowids) if rowids else None,
        }


@dataclass(frozen=True, slots=True)
class _Converted:
    """One chunk, converted: counts, rows to append, unreadable rows, fingerprints."""

    fetched: int
    unchanged: int
    latest: int | None  # UTC micros: k-msg's latest write time in the chunk
    good: pa.Table
    bad: pl.DataFrame
    fingerprints: pl.DataFrame


class _Known:
    """The fingerprints of earlier reads, sorted: a chunk is looked up by binary search.

    A row is unchanged when a fingerprint equal to its own was recorded for its message
    (the fingerprint hashes every column read, ``message_id`` included). Sorted arrays
    serve every chunk without building a hash table of the whole table each time.
    """

    def __init__(self, known: pl.DataFrame | None) -> None:
        rows = (
            pl.DataFrame(schema=_SIDECAR_SCHEMA)
            if known is None
            else known.filter(pl.col("__fp").is_not_null()).sort("__fp")
        )
        self.fps = rows.get_column("__fp")
        self.ids = rows.get_column("message_id")

    def unchanged(self, raw: pl.DataFrame) -> pl.Series:
        """Per row of ``raw`` (with ``message_id`` and ``__fp``): seen exactly so before."""
        fp = raw.get_column("__fp")
        if self.fps.len() == 0:
            return pl.repeat(False, raw.height, dtype=pl.Boolean, eager=True).alias("unchanged")
        at = self.fps.search_sorted(fp, side="left").clip(upper_bound=self.fps.len() - 1)
        same = (self.fps.gather(at) == fp) & (
            self.ids.gather(at) == raw.get_column("message_id").cast(pl.String)
        )
        return same.fill_null(False).alias("unchanged")


class _Decider:
    """Compares converted rows with the lake's current records, in batches, and sinks them.

    A row is *new* when the lake has no record of its message, *unchanged* when the lake's
    record has the same content, *stale* when the lake's record is newer (by
    ``status_updated_at``, or terminal where the row is not); otherwise *changed*. The
    lake is read once per batch, for the batch's messages only.
    """

    def __init__(
        self, store: ParquetTrackingStore, sink: _Sink, *, lake_empty: bool, batch_rows: int
    ) -> None:
        self.store = store
        self.sink = sink
        self.lake_empty = lake_empty
        self.batch_rows = batch_rows
        self.pending: list[pa.Table] = []
        self.rows = 0
        self.new = self.changed = self.unchanged = self.stale = 0

    def add(self, good: pa.Table) -> None:
        if self.lake_empty:  # an empty lake: everything is new, nothing to read
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
        frame = pl.from_arrow(good)
        assert isinstance(frame, pl.DataFrame)
        lake = _current_of(self.store, frame.get_column("message_id"))
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


def _current_of(store: ParquetTrackingStore, ids: pl.Series) -> pl.DataFrame:
    """The current records of ``ids``: their latest snapshot by the lake's precedence rule.

    Read from the history (every snapshot is kept there) rather than through
    ``store.current()``, whose merge of snapshots not yet compacted costs memory in
    proportion to all of them, not to the few messages asked for.
    """
    if ids.len() == 0:
        return pl.DataFrame(schema={c: POLARS_SCHEMA[c] for c in _COMPARE})
    wanted = store.history().filter(pl.col("message_id").is_in(ids.implode()))
    return latest(wanted).select(list(_COMPARE)).collect(engine="streaming")


def _fingerprint(frame: pl.DataFrame) -> pl.Series:
    """A hash of the compared columns of lake rows (same dtypes on both sides)."""
    return frame.select([pl.col(c).cast(POLARS_SCHEMA[c]) for c in _COMPARE]).hash_rows()


def _max_time(table: pa.Table, name: str) -> datetime | None:
    import pyarrow.compute as pc

    value = pc.max(table.column(name)).as_py()
    return value.astimezone(UTC) if isinstance(value, datetime) else None


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
        invalid(
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
    """Where converted rows go: appended in batches, or staged until commit (strict).

    Once ``bulk_after`` rows are appended (at once, into an empty lake), the rest go in
    the store's bulk mode, entered on ``bulk``: no automatic compaction after each
    batch, one fold when ``bulk`` closes without an error (the lake is then queryable
    as folded). Below that, a re-import's few rows are folded when the lake decides.
    """

    def __init__(
        self,
        store: ParquetTrackingStore,
        folder: Path,
        *,
        staged: bool,
        flush_rows: int,
        bulk: contextlib.ExitStack,
        bulk_after: int,
    ) -> None:
        self.store = store
        self.staged = staged
        self.flush_rows = flush_rows
        self.bulk: contextlib.ExitStack | None = bulk
        self.bulk_after = bulk_after
        self.appended = 0
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
            self._append(table)

    def _append(self, table: pa.Table) -> None:
        if self.bulk is not None and self.appended + table.num_rows >= self.bulk_after:
            self.bulk.enter_context(self.store.bulk())
            self.bulk = None
        self.store.append_table(table, kind="load", recorded_at=self.recorded_at)
        self.appended += table.num_rows

    def commit(self) -> None:
        self._flush()
        for path in self.files:
            self._append(pq.read_table(path))
        self.discard()

    def discard(self) -> None:
        self.buffer = []
        shutil.rmtree(self.dir, ignore_errors=True)


def _read_sidecar(path: Path) -> pl.DataFrame:
    """``message_id`` and fingerprint of every row read before (``null``: it was skipped)."""
    empty = pl.DataFrame(schema=_SIDECAR_SCHEMA)
    if not path.is_file():
        return empty
    try:
        frame = pl.read_parquet(path).select(
            pl.col("message_id").cast(pl.String), pl.col("__fp").cast(pl.UInt64)
        )
    except Exception:  # a damaged sidecar only costs a full comparison
        return empty
    return frame


_SIDECAR_SCHEMA: Final[dict[str, Any]] = {"message_id": pl.String, "__fp": pl.UInt64}


class _Fingerprints:
    """The fingerprints of the rows read, streamed to a Parquet file as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        self.writer: pq.ParquetWriter | None = None

    def add(self, frame: pl.DataFrame) -> None:
        typed = frame.select(pl.col(n).cast(t) for n, t in _SIDECAR_SCHEMA.items())
        table = typed.to_arrow(compat_level=pl.CompatLevel.oldest())
        if self.writer is None:
            self.writer = pq.ParquetWriter(  # ids are unique: no dictionary
                self.tmp,
                table.schema,
                compression="lz4",
                write_statistics=False,
                use_dictionary=False,
            )
        self.writer.write_table(table)

    def commit(self, before: pl.DataFrame | None) -> None:
        """Publish: the rows read now, plus (after a partial read) those of ``before``."""
        if self.writer is None:
            pl.DataFrame(schema=_SIDECAR_SCHEMA).write_parquet(self.tmp, compression="lz4")
        else:
            self.writer.close()
            self.writer = None
        if before is not None and before.height:
            now = pl.read_parquet(self.tmp)
            merged = pl.concat(
                [before.join(now.select("message_id"), on="message_id", how="anti"), now],
                how="vertical",
            )
            merged.write_parquet(self.tmp, compression="lz4", statistics=False)
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
            self.writer = None
        self.tmp.unlink(missing_ok=True)


def _read_state(path: Path) -> dict[str, Any]:
    with contextlib.suppress(ValueError, OSError):
        loaded = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            return loaded
    return {}


def _write_state(
    folder: Path,
    source: KmsgSource,
    report: ImportReport,
    watermark: dict[str, Any] | None,
    previous: dict[str, Any],
) -> None:
    path = folder / f"{source.source_id}.json"
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
        "watermark": watermark,
        "last_report": {
            "rows_read": report.rows_read,
            "fetched": report.fetched,
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
