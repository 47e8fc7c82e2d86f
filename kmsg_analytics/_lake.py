"""ParquetTrackingStore: the append-only snapshot lake, its compaction and merge-on-read.

Writes: rows go to a write-ahead log (acknowledged), then are published in batches as
one Parquet file per batch into ``history/ingest_date=.../`` (staged outside the
dataset, renamed in), its rows in requested order with a row group per requested day;
a large batch (a bulk load) as two files written by two encoders at once and swapped in
together with the partition's directory. ``compact()`` folds the history past the
watermark into ``current/requested_date=.../part-0.parquet`` (one file per requested
day, replaced by rename), window by window of days: a window first reads the columns
that choose each message's winning snapshot, then the whole rows of the winners only (a
window of a first load, every row its message's only snapshot, keeps them all without
the window-max), and merges small history files. On DuckDB (the default backend)
pyarrow writes the batches, folded files and merges in process; another Ibis backend
writes every file.
``bulk()`` holds the automatic folds back until a bulk load ends. Reads: the compacted
current state, anti-joined with the few snapshots newer than the watermark, which are
kept decoded in memory between queries.

Folded files (format 2) carry one derived column beside the lake's: ``has_gateway_id``
(:data:`~kmsg_analytics._schema.CURRENT_SCHEMA`), so that metrics count whether the
gateway accepted a message without decoding every gateway id. :meth:`current` gives it
(read where a file has it, computed from ``provider_message_id`` elsewhere); record
frames never show it. A format 1 lake keeps writing files without it until a full
``compact()`` upgrades it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._errors import LakeFormatError
from ._lakefs import (
    HistoryFile,
    LakePaths,
    WriteAheadLog,
    exchange_supported,
    history_name,
    history_rows,
    orphan_wals,
    publish_together,
    read_json,
    read_wal_lines,
    replace_dir,
    restore_replaced_dirs,
    write_json_atomic,
    write_row_groups,
    writer_lock,
)
from ._phone import HashKey
from ._queries import latest, snapshot_key
from ._records import POLLABLE_STATUSES, RecordFilter, TrackingRecord
from ._schema import (
    CURRENT_PARTITION,
    CURRENT_SCHEMA,
    FORMAT_VERSION,
    GATEWAY_FLAG,
    POLARS_CURRENT_SCHEMA,
    POLARS_SCHEMA,
    PRECEDENCE_OFFSET,
    SNAPSHOT_SCHEMA,
    SnapshotKind,
    gateway_flag,
    record_to_row,
    records_to_table,
    rows_to_table,
    with_gateway_flag,
)
from ._store import NumberStorage, RetriedReads

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["CompactionReport", "ParquetTrackingStore"]

log = logging.getLogger("kmsg_analytics.lake")

_BIG_FILE = 64 << 20  # history files this large are not merged again
_BIG_FILE_ROWS = 100_000  # nor files of this many rows (see _merge_history_locked)
#: a fold window without current rows whose snapshots are each its message's only one
#: keeps them all without the window-max (tests turn this off to compare the two)
_LONE_ROWS_WIN = True
#: rows a fold holds at once: a window's new snapshots plus its days' current rows
_FOLD_WINDOW_ROWS = 200_000  # 400k: no faster at 1M, import peak RSS 720 -> 970 MB
#: threads writing folded days while the next window is read
_FOLD_WRITERS = 2
#: provisional seq of rows not yet published (newer than any published row)
_PENDING_BASE = 1 << 61
#: snapshots that (re)state a message rather than derive from its current state
_ENTRY_KINDS = ("send", "load", "patch")
_ID_SEED: Final = 0x6B6D7367  # the id index's hash seed
_HIVE = {CURRENT_PARTITION: pl.Date}
_DAY = pl.col("requested_at").dt.date()
_ID_HASH = pl.col("message_id").hash().alias("h")
#: the columns a fold chooses each day's winning snapshots by (read before the others)
_KEY_COLUMNS = ("seq", "snapshot_kind", "message_id", CURRENT_PARTITION)
#: reads tried when a history file vanishes under them (a merge replaced it)
_READ_ATTEMPTS = 5
#: zstd at level 1 for folded files: half the CPU of the default level, files ~10% larger.
_ZSTD_LEVEL = 1
#: A published batch: lz4 (a third of zstd's CPU on the write path; files ~1.6x larger),
#: one row group per requested day (smaller days share one) so that a fold reads a day's
#: rows only, dictionaries for the repetitive text columns, statistics for pruning.
_BATCH_COMPRESSION = "lz4"
_GROUP_MIN_ROWS = 16_384
_GROUP_MAX_ROWS = 131_072
_DICTIONARY_COLUMNS = (
    "snapshot_kind", "provider_id", "type", "status", "provider_status_code",
    "provider_status_message", "retention_class", "to_masked", "from_masked", "from_hash",
    "metadata", "last_error.code", "last_error.message",
)  # fmt: skip
_STATISTICS_COLUMNS = (
    "seq", "snapshot_kind", "recorded_at", "message_id", "provider_id", "provider_message_id",
    "type", "requested_at", "status", "status_updated_at", "next_check_at", "retention_class",
)  # fmt: skip
_DAY_MICROS = 86_400_000_000
#: rows per row group of ``open/`` (sorted by next check: list_due reads the first few)
_OPEN_GROUP_ROWS = 8192
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Parquet timestamp units: (raw values per microsecond, microseconds per raw value)
_TIME_UNITS = {"microseconds": (1, 1), "milliseconds": (1, 1000), "nanoseconds": (1000, 1)}
#: statistics a batch keeps: requested_at (a fold's windows prune by it), seq, recorded_at
#: and message_id (history queries); the other columns' would cost a sixth of the write
_BATCH_STATISTICS = ("seq", "recorded_at", "message_id", "requested_at")
#: random text (hashes, sealed numbers): lz4, having no entropy coder, cannot shrink it
_RANDOM_COLUMNS = frozenset({"to_hash", "from_hash", "to_enc", "from_enc"})
#: rows pyarrow encodes at a time: a quarter less CPU than its default 1,024
_WRITE_BATCH_ROWS = 65_536
#: a fold window's rows are sorted by day when its days come in more runs than this each
_MAX_RUNS_PER_DAY = 256
#: a batch of this many rows is written as two files by two encoders, swapped in at once
_SPLIT_ROWS = 131_072
#: ... when its history partition holds at most this many files (each is hard-linked)
_SPLIT_MAX_FILES = 256
_LOCAL_ONLY_OPTIONS = frozenset({"backend", "flush_rows", "flush_seconds", "fsync"})
_T = TypeVar("_T")
#: what a merge-on-read looked up: the requested days (``None``: all) and whether beyond them
_Scope = tuple[tuple[date, ...] | None, bool]


@dataclass(frozen=True)
class _Merge:
    """What the snapshots past the watermark change in ``current/``.

    ``last`` is the current state of every message they touch; ``replaced`` the ``seq``
    of each row of ``current/`` that one of those messages had on the ``days`` looked
    at (rows are unique by ``seq``); ``days`` the requested days of both. Rows of
    ``current/`` past the ``watermark`` (a fold in progress, one that died, or one that
    ran since) give way to ``last`` by id.
    """

    last: pl.DataFrame
    days: list[date]
    replaced: pl.Series
    watermark: int


@dataclass(frozen=True, slots=True)
class CompactionReport:
    """What :meth:`ParquetTrackingStore.compact` did."""

    snapshot_rows: int
    partitions_rewritten: int
    history_files_before: int
    history_files_after: int
    seconds: float


class ParquetTrackingStore(RetriedReads):
    """A tracking store on a directory of hive-partitioned Parquet.

    Parameters
    ----------
    path
        The lake directory (created when missing). A URL such as ``s3://bucket/prefix``
        opens a lake in object storage instead (an
        :class:`~kmsg_analytics._objectlake.ObjectLakeStore`, which takes
        ``storage_options=``; see ``docs/object-storage.md``).
    backend
        An Ibis backend that writes the Parquet files; a DuckDB connection by default. On
        DuckDB, pyarrow writes the published batches, folded days and merged history
        files in process (no copy into the engine). Another backend (the tests run the
        store contract on Ibis's Polars backend) runs every write and merge; one that
        cannot write and read back the lake's columns (SQLite has no struct columns) is
        refused with :class:`LakeFormatError` before anything is written.
    hash_key
        Key of the number hashes; see :func:`kmsg_analytics.resolve_hash_key`. A lake
        remembers the key's id and refuses another key.
    numbers
        How numbers are kept at rest: ``"encrypted"`` (default; AES-256-GCM, the key from
        ``keys``, else ``$KMSG_ANALYTICS_KEY``, else ``~/.config/kmsg-analytics/lake.key``),
        ``"hashed"`` (hash and mask only) or ``"plain"`` (in clear, only when asked for).
        Hash and mask are always kept; queries show masks.
    keys
        A key provider, a ``{kid: key}`` mapping, a callable returning one, or a key file.
    keep_numbers
        Shorthand for ``numbers="plain"``.
    flush_rows, flush_seconds
        Single sends are acknowledged through the write-ahead log and published in
        batches of up to ``flush_rows`` rows or after ``flush_seconds``.
    compact_rows
        Fold automatically when this many snapshots wait past the watermark (not inside
        :meth:`bulk`, which folds once at its end).
    fsync
        Also ``fsync`` the log on each acknowledgement (survives power loss; slower).

    Examples
    --------
    >>> import tempfile
    >>> lake = ParquetTrackingStore(tempfile.mkdtemp(), hash_key="doctest-key")
    >>> lake.count_records(RecordFilter())
    0
    >>> lake.close()
    """

    _partitioned = True

    def __new__(cls, path: str | os.PathLike[str], *args: Any, **options: Any) -> Any:
        """A local lake, or for a URL (``s3://...``) the object-storage lake."""
        if isinstance(path, str) and "://" in path:
            from ._objectlake import ObjectLakeStore

            local_only = sorted(set(options) & _LOCAL_ONLY_OPTIONS)
            if args or local_only:
                msg = (
                    f"{', '.join(local_only) or 'positional options'} only apply to a local "
                    f"lake, not to {path!r}; pass keyword options ObjectLakeStore accepts "
                    "(storage_options=, hash_key=, numbers=, keys=, compact_rows=)"
                )
                raise LakeFormatError(msg)
            return ObjectLakeStore(path, **options)
        return super().__new__(cls)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        backend: Any = None,
        hash_key: HashKey | bytes | str | None = None,
        keep_numbers: bool = False,
        numbers: NumberStorage | None = None,
        keys: Any = None,
        flush_rows: int = 50_000,
        flush_seconds: float = 1.0,
        compact_rows: int = 250_000,
        fsync: bool = False,
    ) -> None:
        super().__init__(hash_key=hash_key, keep_numbers=keep_numbers, numbers=numbers, keys=keys)
        if backend is not None and getattr(backend, "name", None) != "duckdb":
            _check_backend(backend)  # before anything is written
        self.paths = LakePaths(Path(path))
        self._backend = backend
        self._owns_backend = backend is None
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._compact_rows = compact_rows
        self._mutex = threading.RLock()
        self._wal = WriteAheadLog(self.paths.wal, fsync=fsync)
        self._pending: list[dict[str, Any]] = []
        self._pending_since = 0.0
        self._timer: threading.Timer | None = None
        self._closed = False
        self._initialized = False
        self._bulk_depth = 0  # open bulk() blocks: no automatic compaction while > 0
        # decoded snapshots past the watermark: (watermark, files read, rows)
        self._cache_w = -1
        self._cache_files: set[Path] = set()
        self._cache_rows = pl.DataFrame(schema=POLARS_SCHEMA)
        self._cache_tail: list[pa.Table] = []  # our own batches, published but not decoded
        self._winners: tuple[_Scope, _Merge] | None = None
        # rows of current/ (any day) of resent messages, looked up by id: (watermark, ids
        # looked up, rows found); kept until the next fold, so each id is looked up once
        self._far: tuple[int, pl.DataFrame, pl.DataFrame] | None = None
        # per current/ file and (size, mtime, inode): its message_id range and the sorted hashes
        # of its ids, which say without reading it whether a file can hold an id
        self._id_index: dict[str, _IdIndex] = {}
        # footers read: (size, mtime, inode) -> whether the file carries the gateway flag
        self._footers_ok: dict[str, tuple[_Stamp, bool]] = {}
        self._flags = True  # whether folds write the gateway flag (format 2; set per fold)
        self.init()
        _open_stores.add(self)

    def __repr__(self) -> str:
        return f"ParquetTrackingStore({str(self.paths.root)!r})"

    # ------------------------------------------------------------------ lifecycle

    @property
    def backend(self) -> Any:
        """The Ibis backend that writes (a DuckDB connection unless one was given)."""
        if self._backend is None:
            import ibis

            self._backend = ibis.duckdb.connect(threads=2)
        return self._backend

    def init(self) -> None:
        """Create or open the lake, check its format and key, recover a dead writer's log."""
        if self._initialized:
            return
        self.paths.create()
        with writer_lock(self.paths):
            manifest = read_json(self.paths.manifest, {})
            if not manifest:
                manifest = {
                    "format": "kmsg-analytics-lake",
                    "format_version": FORMAT_VERSION,
                    "hash_key_id": self.hash_key.key_id,
                    "created_at": datetime.now(UTC).isoformat(),
                    "datasets": {"history": "ingest_date", "current": "requested_date"},
                    "current_extra_columns": [GATEWAY_FLAG],
                }
                write_json_atomic(self.paths.manifest, manifest, self.paths.staging)
            self._check_manifest(manifest)
            self._recover()
        self._initialized = True

    def _check_manifest(self, manifest: dict[str, Any]) -> None:
        check_manifest(manifest, str(self.paths.root), self.hash_key, "no valid _lake.json")

    def close(self) -> None:
        """Publish what is pending and release the log; safe to call twice."""
        with self._mutex:
            if self._closed:
                return
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.flush()
            self._wal.close()
            if self._owns_backend and self._backend is not None:
                with contextlib.suppress(Exception):
                    self._backend.disconnect()
                self._backend = None
            self._closed = True
        _open_stores.discard(self)

    def __enter__(self) -> ParquetTrackingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ state

    def _state(self) -> dict[str, Any]:
        return read_json(
            self.paths.state, {"seq": 0, "watermark": 0, "last_wal": None, "fold_date": None}
        )

    def _write_state(self, state: dict[str, Any]) -> None:
        write_json_atomic(self.paths.state, state, self.paths.staging)

    def _recover(self) -> dict[str, Any]:
        """Under the writer lock: clear staging debris, reconcile the state, replay dead logs."""
        if restore_replaced_dirs(self.paths.staging):
            log.warning("put back history partitions a killed compaction had moved aside")
        for leftover in self.paths.staging.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        state = self._state()
        recent = self.paths.history_dirs()[-2:]
        since = recent[0][0] if recent else None
        stale = False
        for f in self.paths.history_files(since) if since else []:
            if f.hi > state["seq"]:  # published, but we died before the state was written
                state.update(seq=f.hi, last_wal=f.wal)
                stale = True
        if stale:
            self._write_state(state)
        for wal_id, path, _fd in orphan_wals(self.paths.wal, self._wal.id):
            if wal_id != state.get("last_wal"):
                rows = read_wal_lines(path)
                if rows:
                    log.warning("recovering %d acknowledged rows from %s", len(rows), path.name)
                    state = self._publish_locked(rows_to_table(rows), wal_id, state)
            path.unlink(missing_ok=True)
        return state

    # ------------------------------------------------------------------ writes

    def upsert(self, record: TrackingRecord, *, recorded_at: int | None = None) -> None:
        """Record one send snapshot; durable when this returns."""
        self._buffer([record_to_row(record, kind="send", recorded_at=recorded_at or _now_micros())])

    def upsert_row(self, row: dict[str, Any]) -> None:
        """Record one send snapshot given as its lake row; durable when this returns.

        ``row`` is what :func:`record_to_row` makes of the record with ``kind="send"``
        (``DeliveryTrackingService.record_send`` builds it from the record's values).
        """
        self._buffer([row])

    def append_snapshots(
        self,
        records: Sequence[TrackingRecord],
        *,
        kind: SnapshotKind = "poll",
        recorded_at: int | None = None,
    ) -> None:
        """Append one snapshot per record and publish them as one file (durable on return)."""
        if not records:
            return
        now = recorded_at or _now_micros()
        self.append_table(
            records_to_table(records, kind=kind, recorded_at=now), kind=kind, recorded_at=now
        )

    def append_table(
        self, table: pa.Table, *, kind: SnapshotKind = "load", recorded_at: int | None = None
    ) -> None:
        """Publish a validated Arrow table of lake rows as one batch (bulk loads).

        Durable when this returns. Folds afterwards when ``compact_rows`` snapshots wait,
        except inside :meth:`bulk`.
        """
        if table.num_rows == 0:
            return
        n = table.num_rows
        now = pa.scalar(recorded_at or _now_micros(), pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        for name, value in (("snapshot_kind", pa.scalar(kind, pa.string())), ("recorded_at", now)):
            i = SNAPSHOT_SCHEMA.get_field_index(name)
            table = table.set_column(i, SNAPSHOT_SCHEMA.field(i), pa.repeat(value, n))
        if not self._local_writes:  # text as string views (frame_to_table): plain for Ibis
            table = table.cast(SNAPSHOT_SCHEMA)
        with self._mutex:
            self.flush()
            with writer_lock(self.paths):
                state = self._recover()
                state = self._publish_locked(table, None, state, keep_cache=True)
            self._maybe_compact(state)

    def _buffer(self, rows: list[dict[str, Any]], *, auto: bool = True) -> None:
        lines = [orjson.dumps(r) for r in rows]
        with self._mutex:
            if self._closed:
                msg = f"{self!r} is closed"
                raise LakeFormatError(msg)
            self._wal.append(lines)
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.extend(rows)
            self._winners = None
            if not auto:
                return
            if len(self._pending) >= self._flush_rows:
                self.flush()
            elif self._timer is None:
                self._timer = threading.Timer(self._flush_seconds, self._timed_flush)
                self._timer.daemon = True
                self._timer.start()

    def _timed_flush(self) -> None:
        with self._mutex:
            self._timer = None
            if self._closed:
                return
            rows = self._pending[:]
        # converted outside the mutex, so that record_send goes on meanwhile; flush
        # uses it if no other flush took these rows first
        try:
            ready: tuple[list[dict[str, Any]], pa.Table] | None = (rows, rows_to_table(rows))
        except Exception:  # flush converts (and reports) under the mutex
            ready = None
        with self._mutex:
            if self._closed:
                return
            try:
                self.flush(_ready=ready)
            except Exception:  # the rows stay in the log and are retried
                log.exception("background flush of %s failed", self.paths.root)

    def flush(self, *, _ready: tuple[list[dict[str, Any]], pa.Table] | None = None) -> None:
        """Publish acknowledged rows waiting in the write-ahead log."""
        with self._mutex:
            pending = self._pending
            if not pending:
                return
            if _ready is not None and _starts_with(pending, _ready[0]):
                done, table = _ready
                if len(pending) > len(done):  # acknowledged while it was converted
                    table = pa.concat_tables([table, rows_to_table(pending[len(done) :])])
            else:
                table = rows_to_table(pending)
            with writer_lock(self.paths):
                state = self._recover()
                state = self._publish_locked(table, self._wal.id, state, keep_cache=True)
                self._wal.rotate()
            self._pending = []
            self._winners = None
        self._maybe_compact(state)

    def _publish_locked(
        self,
        table: pa.Table,
        wal_id: str | None,
        state: dict[str, Any],
        *,
        keep_cache: bool = False,
    ) -> dict[str, Any]:
        """Give ``table`` its sequence numbers and rename it into the history (lock held).

        Rows are numbered in the order given, then stored in requested-time order (a
        stable sort), so the file holds one row group per requested day. One call is one
        file, renamed in at once: a load is visible whole or not at all. A batch of
        :data:`_SPLIT_ROWS` or more is two files (two encoders at once), which appear
        together in one directory swap (:meth:`_publish_halves`): still whole or not at
        all, for a reader and for a crash.
        """
        lo = state["seq"] + 1
        hi = state["seq"] + table.num_rows
        seq = pl.int_range(lo, hi + 1, dtype=pl.Int64, eager=True).to_arrow()
        table = table.set_column(0, SNAPSHOT_SCHEMA.field("seq"), seq)
        day = datetime.now(UTC).date()
        folder = self.paths.history / f"ingest_date={day.isoformat()}"
        if table.num_rows >= _SPLIT_ROWS and self._can_publish_together(folder):
            tables, finals = self._publish_halves(table, lo, hi, wal_id, folder)
        else:
            folder.mkdir(exist_ok=True)
            tables = [_by_requested_time(table)]
            staged = self.paths.staging_file()
            self._write_parquet(tables[0], staged)
            finals = [folder / history_name(lo, hi, wal_id or None)]
            os.rename(staged, finals[0])
        state = {**state, "seq": hi, "last_wal": wal_id}
        self._write_state(state)
        self._winners = None
        if keep_cache and not self._bulk_depth and self._cache_w == state["watermark"]:
            self._cache_tail.extend(tables)  # decoded when next read, not on the write path
            self._cache_files.update(finals)
        return state

    def _can_publish_together(self, folder: Path) -> bool:
        """Whether a large batch may go in as two files swapped in at once (see below)."""
        if not self._local_writes or not exchange_supported(self.paths.staging):
            return False
        try:
            return sum(1 for _ in os.scandir(folder)) <= _SPLIT_MAX_FILES
        except FileNotFoundError:
            return True

    def _publish_halves(
        self, table: pa.Table, lo: int, hi: int, wal_id: str | None, folder: Path
    ) -> tuple[list[pa.Table], list[Path]]:
        """Write a large batch as two files at once (two encoders), published together.

        The first half of the rows (``seq`` ``lo`` to ``mid``) and the second are each
        sorted by requested time and written on their own thread; then both appear in
        ``folder`` in one directory swap (:func:`publish_together`): a reader or a crash
        sees the whole batch or none of it, as with one file.
        """
        mid = lo + table.num_rows // 2 - 1
        halves = [(table.slice(0, mid - lo + 1), lo, mid), (table.slice(mid - lo + 1), mid + 1, hi)]
        stage = self.paths.staging / f"{uuid.uuid4().hex}.halves"
        stage.mkdir()
        staged = [stage / history_name(a, b, wal_id or None) for _, a, b in halves]

        def write(half: pa.Table, path: Path) -> pa.Table:
            ordered = _by_requested_time(half)
            self._write_parquet(ordered, path)
            return ordered

        with ThreadPoolExecutor(2, "kmsg-publish") as pool:
            done = [
                pool.submit(write, t, path) for (t, _, _), path in zip(halves, staged, strict=True)
            ]
            tables = [f.result() for f in done]
        publish_together(staged, folder, self.paths.staging)
        stage.rmdir()
        return tables, [folder / path.name for path in staged]

    @property
    def _local_writes(self) -> bool:
        """Whether Arrow tables and Polars frames are written in this process, not by Ibis.

        True on DuckDB (the default backend): pyarrow and Polars write those files
        directly, and the backend writes what it reads itself (history merges). Another
        Ibis backend writes every file.
        """
        return self._backend is None or getattr(self._backend, "name", None) == "duckdb"

    @property
    def _parquet_options(self) -> dict[str, Any]:
        """zstd; at level 1 on DuckDB (half the CPU of its default level, files ~10% larger)."""
        if getattr(self.backend, "name", None) == "duckdb":
            return {"compression": "zstd", "compression_level": _ZSTD_LEVEL}
        return {"compression": "zstd"}

    def _write_parquet(self, table: pa.Table, path: Path) -> None:
        """Write one Arrow table (a published batch): row groups by requested day."""
        self._to_parquet(table, path)

    def _forget(self, expr: Any) -> None:
        """Drop the in-memory table a write registered (DuckDB keeps it for the connection)."""
        unregister = getattr(getattr(self.backend, "con", None), "unregister", None)
        if callable(unregister):
            with contextlib.suppress(Exception):
                unregister(expr.op().name)

    def _to_parquet(
        self,
        expr: Any,
        path: Path,
        *,
        partition_by: str | None = None,
        folded: bool = False,
        group_rows: int | None = None,
    ) -> None:
        """Every Parquet file of the lake is written here (one file, or a hive directory).

        ``expr`` is an Ibis expression (the backend writes it), an Arrow table (a batch
        being published: lz4, one row group per requested day; with ``folded``, a folded
        day: zstd level 1), a Polars frame (folded: the open set) or an Arrow batch reader
        (folded: merged history files). pyarrow writes all but Ibis expressions, or the
        backend when it is not DuckDB. ``group_rows`` caps the row groups pyarrow writes.
        """
        if isinstance(expr, pa.RecordBatchReader):
            if partition_by is None and self._local_writes:
                _write_stream(expr, path)
                return
            expr, folded = expr.read_all(), True
        if isinstance(expr, pl.DataFrame):
            expr, folded = expr.to_arrow(), True
        if isinstance(expr, pa.Table):
            if partition_by is None and self._local_writes:
                if folded:
                    pq.write_table(expr, path, row_group_size=group_rows, **_folded_options(expr))
                else:
                    _write_batch(expr, path)
                return
            import ibis

            table = ibis.memtable(expr)
            try:
                self._to_parquet(table, path, partition_by=partition_by)
            finally:
                self._forget(table)
            return
        if "'" in str(path) and '"' in str(path):  # the backend cannot quote such a path
            with _quiet():
                if partition_by is None:
                    pq.write_table(expr.to_pyarrow(), path, compression="zstd")
                else:
                    _write_hive(expr.to_pyarrow(), path, partition_by)
            return
        if not self._local_writes:
            self._backend_write(expr, path, partition_by)
            return
        options = dict(self._parquet_options)
        if partition_by is not None:
            options.update(partition_by=(partition_by,), filename_pattern="part-{i}")
        with _quiet():
            self.backend.to_parquet(expr, str(path), **options)

    def _backend_write(self, expr: Any, path: Path, partition_by: str | None) -> None:
        """Write an Ibis expression through a backend other than DuckDB, in batches.

        The backend runs the expression (``to_pyarrow_batches``, bound to it explicitly:
        Ibis's generic ``to_parquet`` runs an in-memory table on the default backend
        instead) and pyarrow writes its batches.
        """
        try:
            reader = self.backend.to_pyarrow_batches(expr)
        except NotImplementedError as err:
            raise LakeFormatError(_backend_cannot(self.backend, "run queries into Arrow")) from err
        with _quiet(), reader:
            if partition_by is None:
                with pq.ParquetWriter(path, reader.schema, compression="zstd") as writer:
                    for batch in reader:
                        writer.write_batch(batch)
            else:
                _write_hive(reader, path, partition_by)

    # ------------------------------------------------------------------ reads

    def _current_files(self) -> list[str]:
        out = []
        for entry in os.scandir(self.paths.current):
            if entry.name.startswith(f"{CURRENT_PARTITION}=") and entry.is_dir():
                part = os.path.join(entry.path, "part-0.parquet")
                if os.path.exists(part):
                    out.append(part)
        return sorted(out)

    def _scan_current(
        self, scope: tuple[date, ...] | None = None, *, flag: bool = False
    ) -> pl.LazyFrame:
        """The compacted current state; footers checked for the days in ``scope`` (or all).

        The lake's columns and ``requested_date``; with ``flag`` also :data:`GATEWAY_FLAG`
        (after the lake's columns): read from the files that carry it (their footers
        say so), computed from ``provider_message_id`` for the others (older files).
        """
        files = self._current_files()
        checked = files if scope is None else _on_days(files, scope)
        flagged = self._check_footers(checked)
        if not files:
            return pl.LazyFrame(
                schema=_FLAGGED_SCHEMA if flag else {**POLARS_SCHEMA, CURRENT_PARTITION: pl.Date}
            )
        if not flag:
            return _scan_current_files(files)
        plain = [f for f in files if f not in flagged]
        parts = [_scan_flagged_files([f for f in files if f in flagged])] if flagged else []
        if plain:
            parts.append(_flagged(_scan_current_files(plain)))
        return parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical")

    def _check_footers(self, files: Sequence[str]) -> set[str]:
        """Fail early, naming the file, when a file a query will read has no valid footer.

        Each file's footer is read once per (size, mtime, inode); later calls cost one ``stat``.
        Returns those of ``files`` that carry :data:`GATEWAY_FLAG` (as the footer says).
        """
        flagged: set[str] = set()
        for name in files:
            stamp = _stamp(name)
            if stamp is None:
                continue
            known = self._footers_ok.get(name)
            if known is not None and known[0] == stamp:
                if known[1]:
                    flagged.add(name)
                continue
            try:
                from ._doctor import check_key_value_metadata

                meta = pq.read_metadata(name)
                check_key_value_metadata(meta)
                has = _carries_flag(meta)
            except FileNotFoundError:
                continue
            except Exception as err:
                from ._doctor import lake_read_error

                found = lake_read_error(self.paths.root, err, [Path(name)])
                assert found is not None
                raise found from err
            self._footers_ok[name] = (stamp, has)
            if has:
                flagged.add(name)
        return flagged

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Turn a failed read into a :class:`LakeCorruptError` that names the damaged file."""
        try:
            yield
        except (pl.exceptions.ComputeError, OSError) as err:
            from ._doctor import lake_read_error

            found = lake_read_error(self.paths.root, err)
            if found is None:
                raise
            raise found from err

    def _retrying(self, read: Callable[[], _T]) -> _T:
        """Run a read again when a file it listed was merged away before it was read."""
        for attempt in range(_READ_ATTEMPTS):
            try:
                with self._reading():
                    return read()
            except FileNotFoundError:
                if attempt == _READ_ATTEMPTS - 1:
                    raise
        raise AssertionError  # pragma: no cover - the loop returns or raises

    def _refresh(self) -> tuple[int, pl.DataFrame]:
        """The decoded snapshots past the watermark (published and pending), refreshed."""
        state = self._state()
        w = int(state["watermark"])
        since = (
            date.fromisoformat(state["fold_date"]) - timedelta(days=1)
            if state.get("fold_date")
            else None
        )
        files = [f for f in self.paths.history_files(since) if f.hi > w]
        paths = {f.path for f in files}
        if self._cache_tail:
            tail = [_frame(t) for t in self._cache_tail]
            self._cache_rows = pl.concat([self._cache_rows, *tail], how="vertical")
            self._cache_tail = []
        if w != self._cache_w or not self._cache_files <= paths:
            self._cache_w, self._cache_files = w, set()
            self._cache_rows = pl.DataFrame(schema=POLARS_SCHEMA)
            self._winners = None
        new = [f for f in files if f.path not in self._cache_files]
        rows = self._cache_rows
        if new:
            fresh = _read_files([f.path for f in new]).filter(pl.col("seq") > w)
            rows = pl.concat([self._cache_rows, fresh], how="vertical")
            self._winners = None
            if not self._bulk_depth:  # a bulk load's batches are read per query, not kept
                self._cache_rows = rows
                self._cache_files.update(f.path for f in new)
        if self._pending:
            pending = _frame(rows_to_table(self._pending)).with_columns(
                seq=pl.int_range(_PENDING_BASE, _PENDING_BASE + len(self._pending), dtype=pl.Int64)
            )
            rows = pl.concat([rows, pending], how="vertical")
        return w, rows

    def _delta(self, scope: tuple[date, ...] | None, *, beyond: bool = False) -> _Merge | None:
        """Current state of every message changed past the watermark, and the days to patch.

        Messages (re-)entered by a send, load or patch may already have a row in
        ``current/``: those rows take part in the precedence rule and their days are
        patched too, so a message is never counted twice. The rows are looked up on the
        days in ``scope`` (a query's requested-at window) or, without one, everywhere;
        with ``beyond``, ids not found in ``scope`` are then looked up on the other days.
        """
        with self._mutex:
            w, rows = self._refresh()
            if rows.is_empty():
                return None
            if self._bulk_depth:
                return self._resolve(rows, w, scope, beyond=beyond)
            if self._winners is None or self._winners[0] != (scope, beyond):
                self._winners = ((scope, beyond), self._resolve(rows, w, scope, beyond=beyond))
            return self._winners[1]

    def _resolve(
        self, rows: pl.DataFrame, w: int, scope: tuple[date, ...] | None, *, beyond: bool = False
    ) -> _Merge:
        """The rows past the watermark merged with the rows of ``current/`` they replace.

        A message only polled since the last fold was, as a rule, open then: its row is
        read from ``open/`` (small), not found by id among the rows of every day the
        polls touch. Messages (re)entered by a send, load or patch, and polled ones that
        were not open, are looked up by id.
        """
        entry = pl.col("snapshot_kind").is_in(_ENTRY_KINDS)
        entered = rows.filter(entry).select("message_id").unique()
        polled = rows.filter(~entry).select("message_id").unique()
        opened = self._open_rows(polled.join(entered, on="message_id", how="anti"))
        entered = pl.concat(
            [entered, polled.join(opened.select("message_id"), on="message_id", how="anti")]
        ).unique()
        found = pl.DataFrame(schema={**POLARS_SCHEMA, CURRENT_PARTITION: pl.Date})
        if entered.height and scope is None:
            found = self._rows_of(entered, w)
        elif entered.height and scope is not None:
            found = _lookup(self._files_of(scope), entered.get_column("message_id"))
            missing = entered.join(found.select("message_id"), on="message_id", how="anti")
            if not beyond:
                # a resend loses to a state polling reached (a send never replaces it),
                # which may sit on a day outside the scope; a load or patch always wins,
                # so only messages entered by sends alone can have such a row that matters
                sends_only = (
                    rows.group_by("message_id")
                    .agg((pl.col("snapshot_kind") == "send").all().alias("sends"))
                    .filter("sends")
                    .select("message_id")
                )
                missing = missing.join(sends_only, on="message_id", how="semi")
            if missing.height:
                found = pl.concat([found, self._rows_of(missing, w)], how="vertical_relaxed")
        combined = pl.concat([found.drop(CURRENT_PARTITION), rows], how="vertical")
        last = latest(combined.unique(["message_id", "seq"], keep="first").lazy()).collect()
        last = last.with_columns(pl.col("requested_at").dt.date().alias(CURRENT_PARTITION))
        days = pl.concat(
            [last.get_column(CURRENT_PARTITION)]
            + [f.get_column(CURRENT_PARTITION) for f in (found, opened)]
        )
        replaced = pl.concat([found.get_column("seq"), opened.get_column("seq")]).unique()
        return _Merge(last, days.unique().sort().to_list(), replaced, w)

    def _rows_of(self, ids: pl.DataFrame, w: int) -> pl.DataFrame:
        """Rows of ``current/`` (any day) for ``ids``; each id looked up once per fold.

        Called under the mutex. Only the files that can hold one of the ids are read
        (see :meth:`_files_holding`): a lookup of new messages' ids reads no file.
        """
        if self._far is None or self._far[0] != w:
            empty = pl.DataFrame(schema={**POLARS_SCHEMA, CURRENT_PARTITION: pl.Date})
            self._far = (w, pl.DataFrame(schema={"message_id": pl.String}), empty)
        _w, checked, found = self._far
        new = ids.join(checked, on="message_id", how="anti")
        if new.height:
            names = new.get_column("message_id")
            more = _lookup(self._files_holding(names), names)
            checked = pl.concat([checked, new], how="vertical")
            found = pl.concat([found, more], how="vertical_relaxed")
            self._far = (w, checked, found)
        return found.join(ids, on="message_id", how="semi")

    def _files_of(self, scope: tuple[date, ...]) -> list[str]:
        """The files of ``current/`` on the days of ``scope``, their footers checked."""
        files = _on_days(self._current_files(), scope)
        self._check_footers(files)
        return files

    def _files_holding(self, ids: pl.Series) -> list[str]:
        """The files of ``current/`` that may hold one of ``ids``.

        A file is read once per (size, mtime, inode) into an index: its ``message_id`` range
        (footer statistics) and the sorted 64-bit hashes of its ids (8 bytes per row).
        A file can hold an id when the id is in its range and its hash among the
        file's; a hash collision only costs a read. A file that cannot be read is left
        out: this lookup serves a query that did not ask for its day, and every query
        that does (and ``doctor``) names the file.
        """
        lo, hi = str(ids.min()), str(ids.max())
        wanted: np.ndarray[Any, Any] | None = None
        out = []
        for name in self._current_files():
            stamp = _stamp(name)
            if stamp is None:
                continue
            known = self._id_index.get(name)
            if known is None or known.stamp != stamp:
                try:
                    known = _IdIndex.of(name, stamp)
                except FileNotFoundError:
                    continue
                except Exception:  # damaged: see the docstring
                    log.warning("skipping %s: it cannot be read", name)
                    continue
                self._id_index[name] = known
            if not known.overlaps(lo, hi):
                continue
            if wanted is None:
                wanted = _id_hashes(ids)
            if known.may_hold(wanted):
                out.append(name)
        return out

    def _open_rows(self, ids: pl.DataFrame) -> pl.DataFrame:
        """``message_id``, ``seq`` and requested day of the rows of ``open/`` for ``ids``."""
        schema = {"message_id": pl.String, "seq": pl.Int64, CURRENT_PARTITION: pl.Date}
        path = self.paths.open_file()
        if not ids.height or not path.exists():
            return pl.DataFrame(schema=schema)
        try:
            return (
                pl.scan_parquet(path, glob=False)
                .select("message_id", "seq", _DAY.alias(CURRENT_PARTITION))
                .join(ids.lazy(), on="message_id", how="semi")
                .collect()
            )
        except FileNotFoundError:  # replaced between the check and the read
            return self._open_rows(ids)
        except (pl.exceptions.ComputeError, OSError):  # unreadable: the ids are looked up
            return pl.DataFrame(schema=schema)  # in current/ (doctor names the file)

    def current(self, flt: RecordFilter | None = None) -> pl.LazyFrame:
        """Current records (all columns plus ``requested_date``) as a lazy query.

        With a requested-at window in ``flt`` only that window's files are read. The
        frame also has :data:`GATEWAY_FLAG` (what metrics count instead of decoding the
        gateway ids); record frames (``list_records``, ``get``, exports) never show it.
        """
        scope = _window_days(flt)
        # the watermark first, the files after: a fold that lands in between wrote its
        # files before it moved the watermark, so each of its rows is listed or in the delta
        found = self._delta(scope)
        base = self._scan_current(scope, flag=True)
        if found is None:
            return base
        seq = pl.col("seq")
        kept = base.filter(
            (seq <= found.watermark)
            & (~pl.col(CURRENT_PARTITION).is_in(found.days) | ~seq.is_in(found.replaced.implode()))
        )
        # rows folded past the watermark (a fold in progress, one that died, or one that
        # ran before this lazy frame is read): those of the delta's messages give way to
        # it, the others stay. Usually there are none, and seq's statistics skip them all.
        later = base.filter(seq > found.watermark).join(
            found.last.lazy().select("message_id"), on="message_id", how="anti"
        )
        return pl.concat([kept, later, _flagged(found.last.lazy())], how="vertical_relaxed")

    def _open(self) -> pl.LazyFrame:
        pending_days = self._entered_days()
        found = self._delta(pending_days, beyond=True)  # before the file: see current()
        path = self.paths.open_file()
        if path.exists():
            base = pl.scan_parquet(
                path,
                schema={**POLARS_SCHEMA, CURRENT_PARTITION: pl.Date},
                glob=False,
                missing_columns="insert",
                extra_columns="ignore",
            )
        else:
            base = pl.LazyFrame(schema={**POLARS_SCHEMA, CURRENT_PARTITION: pl.Date})
        if found is None:
            return base
        delta = found.last
        open_delta = delta.filter(pl.col("status").is_in(POLLABLE_STATUSES))
        return pl.concat(
            [
                base.join(delta.lazy().select("message_id"), on="message_id", how="anti"),
                open_delta.lazy(),
            ],
            how="vertical_relaxed",
        )

    def _entered_days(self) -> tuple[date, ...]:
        """Requested days of the snapshots that (re)state messages past the watermark."""
        with self._mutex:
            _w, rows = self._refresh()
            entered = rows.filter(pl.col("snapshot_kind").is_in(_ENTRY_KINDS))
            days = entered.select(pl.col("requested_at").dt.date().unique().sort()).to_series()
            return tuple(days.to_list())

    def history(self) -> pl.LazyFrame:
        """Every snapshot ever written (published ones), with ``ingest_date``."""
        self.flush()
        files = [str(f.path) for f in self.paths.history_files()]
        if not files:
            return pl.LazyFrame(schema={**POLARS_SCHEMA, "ingest_date": pl.Date})
        return pl.scan_parquet(
            files,
            schema=POLARS_SCHEMA,
            missing_columns="insert",
            hive_partitioning=True,
            hive_schema={"ingest_date": pl.Date},
            glob=False,
        )

    # ------------------------------------------------------------------ compaction

    def _maybe_compact(self, state: dict[str, Any]) -> None:
        """Fold when ``compact_rows`` snapshots wait past the watermark (``seq`` is dense).

        Not inside :meth:`bulk`: a bulk load folds once, when it ends.
        """
        with self._mutex:
            if self._bulk_depth:
                return
            if state["seq"] - state["watermark"] + len(self._pending) >= self._compact_rows:
                self.compact(history=False)

    @contextlib.contextmanager
    def bulk(
        self, *, progress: Callable[[str], None] | None = None
    ) -> Iterator[ParquetTrackingStore]:
        """Load many batches without folding in between; fold once at the end.

        Inside the block no write compacts by itself (``compact_rows`` is ignored); each
        :meth:`append_table` is still published, durable, when it returns. When the
        outermost block ends without an exception, one fold runs (``compact(history=False)``)
        so the lake is folded and quick to query as before. When the block raises, no fold
        runs: the batches appended so far stay in ``history/`` (they were acknowledged) and
        the next compaction folds them; the exception propagates.

        Blocks nest (only the outermost folds) and apply to every thread using this store.
        Queries inside the block are answered (merge-on-read) but read the block's batches
        afresh each time instead of keeping them decoded: memory stays bounded, and such
        queries are slower than after the fold.

        Parameters
        ----------
        progress
            Called with a line of text per folded day of the final fold.

        Yields
        ------
        ParquetTrackingStore
            This store.

        Examples
        --------
        >>> import tempfile
        >>> import polars as pl
        >>> from kmsg_analytics._loading import frame_to_table
        >>> lake = ParquetTrackingStore(tempfile.mkdtemp(), hash_key="doctest-key")
        >>> frame = pl.DataFrame({
        ...     "message_id": ["m1", "m2"], "provider_id": ["solapi", "solapi"],
        ...     "type": ["SMS", "SMS"], "to": ["01012345678", "01098765432"],
        ...     "requested_at": ["2026-11-01T09:00:00Z", "2026-11-02T09:00:00Z"],
        ...     "status": ["DELIVERED", "SENT"],
        ... })
        >>> with lake.bulk():
        ...     for part in frame.iter_slices(1):
        ...         lake.append_table(frame_to_table(part, lake.hash_key, keep_numbers=False))
        >>> lake.stats()["watermark"] == lake.stats()["seq"] == 2  # folded once, at the end
        True
        >>> lake.count_records(RecordFilter(status="SENT"))
        1
        >>> lake.close()
        """
        with self._mutex:
            self._bulk_depth += 1
            self._cache_tail = []  # our batches are not kept decoded during a bulk load
            self._cache_w = -1
        completed = False
        try:
            yield self
            completed = True
        finally:
            with self._mutex:
                self._bulk_depth -= 1
                outermost = self._bulk_depth == 0
        if completed and outermost and not self._closed:
            self.compact(history=False, progress=progress)

    def compact(
        self, *, history: bool = True, progress: Callable[[str], None] | None = None
    ) -> CompactionReport:
        """Fold snapshots into the current state and merge small history files.

        History is kept: every snapshot stays in ``history/``; only files are merged.
        Readers see either the old or the new files, never both, never half. With
        ``history`` (the default) a lake of the older format 1 is upgraded: its folded
        files are rewritten once with the gateway flag
        (:data:`~kmsg_analytics._schema.GATEWAY_FLAG`) and it becomes format 2. Until
        then its folds write files as format 1 has them, so that every folded file of a
        lake has the same columns.
        """
        started = time.perf_counter()
        with self._mutex, self._reading():
            self.flush()
            with writer_lock(self.paths):
                state = self._recover()
                before = len(self.paths.history_files())
                if history:  # an older lake's folded files all get the flag (see below)
                    self._upgrade_manifest_locked()
                rows, rewritten, state = self._fold_locked(state, progress)
                if history:
                    self._merge_history_locked(state, progress)
                    self._flag_folded_locked(progress)
                after = len(self.paths.history_files())
            self._cache_w = -1
            self._winners = None
        return CompactionReport(rows, rewritten, before, after, time.perf_counter() - started)

    def _fold_locked(
        self, state: dict[str, Any], progress: Callable[[str], None] | None
    ) -> tuple[int, int, dict[str, Any]]:
        """Fold the snapshots past the watermark into ``current/`` and ``open/``.

        The requested days are folded in windows of consecutive days holding at most
        :data:`_FOLD_WINDOW_ROWS` rows (new snapshots plus the days' current rows). Each
        window reads its rows once: history batches hold one row group per requested day,
        so the scan reads only the window's groups. A window's days are written (each
        replaced by a rename) on worker threads while the next window is folded.

        A message (re-)entered with another requested day must leave its old day: the
        windows note each new message's days, and once they are written, the days a moved
        message must leave are folded again without it (rare: a resend on another day).
        A fold that dies leaves the watermark where it was; the next fold redoes the work.
        """
        w = int(state["watermark"])
        files = [f for f in self.paths.history_files() if f.hi > w]
        if not files:
            return 0, 0, state
        self._flags = _format_of(self.paths.manifest) >= _FLAG_FORMAT
        top = max(f.hi for f in files)
        delta = _scan_files([f.path for f in files]).filter(pl.col("seq") > w)
        per_day = (
            delta.group_by(_DAY.alias("d")).agg(pl.len().alias("n")).collect(engine="streaming")
        )
        rows_of = dict(zip(per_day.get_column("d").to_list(), per_day.get_column("n"), strict=True))
        spans = [(f.path, _requested_span(f.path)) for f in files]
        first = not self._current_files()  # every row of current/ will be this fold's
        written: dict[date, int] = {}
        open_rows: dict[date, pl.DataFrame] = {}
        one_day: list[pl.DataFrame] = []  # (h, d): new messages seen on one day of a window
        many_days: list[pl.Series] = []  # h: new messages seen on several days of a window

        def fold(days: list[date], exclude: Mapping[date, list[str]]) -> None:
            held = {day: rows_of.get(day, 0) + self._current_rows(day) for day in days}
            with _DayWriter(self, progress, len(days)) as writer:
                for window in _fold_windows(days, held, _FOLD_WINDOW_ROWS):
                    merged, entered = self._fold_window(spans, window, w, exclude)
                    several = pl.col("d0") != pl.col("d1")
                    many_days.append(entered.filter(several).get_column("h"))
                    one_day.append(entered.filter(~several).select("h", pl.col("d0").alias("d")))
                    tables = _copied_days(merged, window, open_rows, flags=self._flags)
                    del merged, entered  # the window's buffers go before the next is read
                    written.update((day, t.num_rows) for day, t in tables.items())
                    writer.write(tables)

        fold(sorted(rows_of), {})
        exclude = self._moved_locked(one_day, many_days, delta, w, first=first)
        one_day.clear()
        many_days.clear()
        if exclude:
            fold(sorted(exclude), exclude)
        touched = sorted(written)
        # the open set: untouched days keep their open rows, touched days bring theirs
        old_open = self.paths.open_file()
        kept = (
            pl.read_parquet(old_open)
            .select(*SNAPSHOT_SCHEMA.names, CURRENT_PARTITION)
            .filter(~pl.col(CURRENT_PARTITION).is_in(touched))
            if old_open.exists()
            else None
        )
        frames = [f for f in [kept, *open_rows.values()] if f is not None and f.height]
        open_table = (
            pl.concat(frames, how="vertical_relaxed")
            if frames
            else pl.DataFrame(schema={**POLARS_SCHEMA, CURRENT_PARTITION: pl.Date})
        )
        # due first, in small row groups: list_due reads the groups its statistics allow
        open_table = open_table.sort("next_check_at", "message_id", nulls_last=True)
        staged = self.paths.staging_file()
        self._to_parquet(
            self._folded(open_table.to_arrow()), staged, folded=True, group_rows=_OPEN_GROUP_ROWS
        )
        os.replace(staged, old_open)
        fold_date = max(f.ingest_date for f in files).isoformat()
        state = {**state, "watermark": top, "fold_date": fold_date}
        self._write_state(state)
        return sum(written.values()), len(touched), state

    def _flag_folded_locked(self, progress: Callable[[str], None] | None) -> int:
        """Rewrite the folded files without :data:`GATEWAY_FLAG` with it (lock held).

        Files of an older lake (format 1; the manifest says format 2 already), or rebuilt
        by a tool that writes the lake's columns only; each is replaced by a rename.
        Returns how many were rewritten.
        """
        targets = self._current_files()
        if self.paths.open_file().exists():
            targets.append(str(self.paths.open_file()))
        flagged = self._check_footers(targets)  # footers read once per file version
        old = [Path(f) for f in targets if f not in flagged]
        for i, path in enumerate(old, 1):
            if progress is not None:
                where = path.relative_to(self.paths.root)
                progress(f"adding the gateway flag to {where} ({i}/{len(old)})")
            with pq.ParquetFile(path) as pf:  # the file alone: no hive column from its path
                table = pf.read()
            staged = self.paths.staging_file()
            self._to_parquet(with_gateway_flag(table), staged, folded=True)
            os.replace(staged, path)
        return len(old)

    def _upgrade_manifest_locked(self) -> None:
        """Record in the manifest that folded files carry :data:`GATEWAY_FLAG` (lock held).

        A lake of format 1 becomes format 2 before its first such file is written, so
        that an older kmsg-analytics refuses it with a clear message instead of failing
        on the extra column. Reads take the flag from the files that have it and compute
        it for the others, so a lake stopped half way answers the same.
        """
        manifest = read_json(self.paths.manifest, {})
        if manifest.get("format_version", FORMAT_VERSION) >= _FLAG_FORMAT:
            return
        extra = [*manifest.get("current_extra_columns", ()), GATEWAY_FLAG]
        manifest = {
            **manifest,
            "format_version": FORMAT_VERSION,
            "current_extra_columns": list(dict.fromkeys(extra)),
        }
        write_json_atomic(self.paths.manifest, manifest, self.paths.staging)

    def _current_rows(self, day: date) -> int:
        """Rows of a requested day's current file (from its footer; 0 when there is none)."""
        try:
            return int(pq.read_metadata(self.paths.current_file(day)).num_rows)
        except FileNotFoundError:
            return 0

    def _fold_window(
        self,
        spans: Sequence[tuple[Path, tuple[datetime, datetime] | None]],
        days: Sequence[date],
        w: int,
        exclude: Mapping[date, list[str]],
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The folded current rows of ``days`` (consecutive), and the days of new messages.

        ``spans`` are the history files past ``w`` with the requested times they hold
        (``None``: unknown); only those that overlap the days are read.
        The days' current rows as of ``w`` and their snapshots past ``w`` are read in two
        passes: first the columns that choose the winners (``seq``, ``snapshot_kind``,
        ``message_id``, the day), then every column of the winning rows only (the scan
        decodes the other columns of those rows alone). Rows of messages that
        ``exclude`` moves off a day are dropped; per day and message the snapshot that
        wins by the precedence rule stays (the column ``requested_date`` says the day; a
        day's rows come in a few runs, in the order the sources list them). The second
        frame has, per id hash ``h`` of the window's snapshots past ``w``, whether one
        (re)states the message (``entered``) and its first and last requested day
        (``d0``, ``d1``).
        """
        start = datetime.combine(days[0], datetime.min.time(), UTC)
        end = datetime.combine(days[-1], datetime.min.time(), UTC) + timedelta(days=1)
        in_window = (pl.col("requested_at") >= start) & (pl.col("requested_at") < end)
        sources = [p for p, span in spans if span is None or (span[0] < end and span[1] >= start)]
        parts = [
            _scan_files(sources)
            .filter((pl.col("seq") > w) & in_window)
            .with_columns(_DAY.alias(CURRENT_PARTITION))
            if sources
            else pl.LazyFrame(schema={**POLARS_SCHEMA, CURRENT_PARTITION: pl.Date})
        ]
        # rows past w are in a current file only if a fold died there: delta has them
        old = [str(p) for p in map(self.paths.current_file, days) if p.exists()]
        if old:
            parts.insert(0, _scan_current_files(old).filter(pl.col("seq") <= w))
        frame = pl.concat([p.select(_KEY_COLUMNS) for p in parts], how="vertical_relaxed").collect()
        # aggregations on the streaming engine: under half the in-memory engine's CPU here
        messages = (
            frame.lazy()
            .filter(pl.col("seq") > w)
            .group_by(_ID_HASH)
            .agg(
                pl.col("snapshot_kind").is_in(_ENTRY_KINDS).any().alias("entered"),
                pl.col(CURRENT_PARTITION).min().alias("d0"),
                pl.col(CURRENT_PARTITION).max().alias("d1"),
            )
            .collect(engine="streaming")
        )
        # no current rows and as many id hashes as rows: every row is the only snapshot
        # of its message in the window (a first load), and every row wins
        alone = _LONE_ROWS_WIN and not old and messages.height == frame.height
        entered = messages.filter(pl.col("entered"))
        del messages
        gone = [(day, mid) for day in days for mid in exclude.get(day, ())]
        if gone:
            pairs = pl.DataFrame(
                {CURRENT_PARTITION: [d for d, _ in gone], "message_id": [m for _, m in gone]},
                schema={CURRENT_PARTITION: pl.Date, "message_id": pl.String},
            )
            frame = frame.join(pairs, on=[CURRENT_PARTITION, "message_id"], how="anti")
        k = snapshot_key()
        by = (CURRENT_PARTITION, "message_id")
        # a winner past w on a day that held no row of its message, stated by no send,
        # load or patch: a poll that moved its message here from another day (or one of
        # a message never sent). It is noted like a new message: it may have to leave.
        stray = ~pl.col("snapshot_kind").is_in(_ENTRY_KINDS)
        if alone:  # every row wins and is its message's first here
            won = frame.select("seq")
            tops = frame.lazy().filter(stray).select(by)
        else:
            # per day and message the winning key (``seq`` unique: one row has it), the
            # highest key of a poll-like row (the winner is one when they are equal) and,
            # with current rows, the lowest seq (a day that held no row has it past w);
            # a group-by on the streaming engine, not a window: about half the CPU
            tops = (
                frame.lazy()
                .group_by(by)
                .agg(
                    k.max().alias("__k"),
                    pl.when(stray).then(k).max().alias("__kp"),
                    *([pl.col("seq").min().alias("__s0")] if old else []),
                )
                .collect(engine="streaming")
                .lazy()
            )
            won = tops.select(
                pl.col("__k").mod(PRECEDENCE_OFFSET).alias("seq")  # the key less its offset
            ).collect()
            tops = tops.filter(pl.col("__k") == pl.col("__kp"))
            if old:
                tops = tops.filter(pl.col("__s0") > w)
        strays = (
            tops.select(
                _ID_HASH,
                pl.lit(True).alias("entered"),
                pl.col(CURRENT_PARTITION).alias("d0"),
                pl.col(CURRENT_PARTITION).alias("d1"),
            )
            .join(entered.lazy().select("h"), on="h", how="anti")
            .collect()
        )
        if strays.height:
            entered = pl.concat([entered, strays], how="vertical_relaxed")
        if alone and not gone:  # every row read wins
            del frame
            merged = pl.concat(parts, how="vertical_relaxed").collect()
        else:
            # the winners' rows (unique by seq), in the order the sources list them
            seqs = won.get_column("seq")
            del frame
            wins = pl.col("seq").is_in(seqs.implode())
            merged = pl.concat([p.filter(wins) for p in parts], how="vertical_relaxed").collect()
            del seqs
        # each source lists a day's rows together (current files hold one day, history
        # batches are in requested order): a day is a few runs, no sort needed
        runs = merged.get_column(CURRENT_PARTITION).rle_id().max()
        if isinstance(runs, int) and runs >= _MAX_RUNS_PER_DAY * len(days):
            merged = merged.sort(CURRENT_PARTITION, "requested_at")
        return merged, entered

    def _replace_day(self, day: date, rows: pa.Table) -> None:
        """Write one requested day's folded rows, then rename the file into place."""
        target = self.paths.current_file(day)
        target.parent.mkdir(exist_ok=True)
        staged = self.paths.staging_file()
        self._to_parquet(self._folded(rows), staged, folded=True)
        os.replace(staged, target)

    def _folded(self, rows: pa.Table) -> pa.Table:
        """Folded rows as the lake's format writes them: with the gateway flag from format 2.

        Rows that already carry the flag (a fold computed it for a whole window) keep it.
        """
        if not self._flags:
            return rows
        return rows if GATEWAY_FLAG in rows.column_names else with_gateway_flag(rows)

    def _moved_locked(
        self,
        one_day: list[pl.DataFrame],
        many_days: list[pl.Series],
        delta: pl.LazyFrame,
        w: int,
        *,
        first: bool = False,
    ) -> dict[date, list[str]]:
        """Messages (re-)entered past ``w`` whose current row must leave a requested day.

        The windows noted each new message by a 64-bit hash ``h`` of its id: ``one_day``
        holds ``(h, d)`` of those seen on one day ``d`` of a window, ``many_days`` those
        seen on several. Returns, per day, the ids that day must not hold: the message's
        winning snapshot (by the precedence rule) lives on another day. Candidates are
        found on the hashes (12 bytes per message), then checked on the ids themselves.
        With ``first`` (``current/`` was empty when the fold began) every row of
        ``current/`` is a winner the windows noted, so it is not searched for more.
        """
        # only messages seen on more than one requested day can be misplaced: on several
        # days of one window, in two windows (a hash twice), or in current/ on another day
        hashes = list(many_days)
        singles = pl.concat(one_day, rechunk=False) if one_day else pl.DataFrame()
        one_day.clear()  # (the caller's frames: singles holds them now)
        files = [] if first else self._current_files()
        if singles.height:
            h = singles.get_column("h")
            if not files:  # only the hashes are needed: let the days go
                singles = pl.DataFrame()
            h = h.sort()
            hashes.append(h.filter(h == h.shift(1)))
            del h
        if files and singles.height:
            # any row on another day, also one this fold already replaced with a snapshot
            # past w (a poll on the old day, then one that moved the message)
            elsewhere = (
                _scan_current_files(files)
                .select(_ID_HASH, pl.col(CURRENT_PARTITION).alias("day"))
                .join(singles.lazy(), on="h")
                .filter(pl.col("day") != pl.col("d"))
                .select("h")
                .collect(engine="streaming")
            )
            hashes.append(elsewhere.get_column("h"))
        del singles
        if not hashes:
            return {}
        ids = pl.concat(hashes).unique()
        if ids.is_empty():
            return {}
        # every snapshot past w of those messages (a rare hash collision brings another
        # message along: its winning day is where it already is, so nothing leaves)
        theirs = delta.filter(_ID_HASH.is_in(ids.implode())).collect()
        old = pl.DataFrame(schema={**POLARS_SCHEMA, CURRENT_PARTITION: pl.Date})
        if files:
            old = (
                _scan_current_files(files)
                .filter((pl.col("seq") <= w) & _ID_HASH.is_in(ids.implode()))
                .join(theirs.lazy().select("message_id").unique(), on="message_id", how="semi")
                .collect()
            )
        both = pl.concat([old.drop(CURRENT_PARTITION), theirs], how="vertical")
        winner_day = (
            latest(both.lazy())
            .select("message_id", pl.col("requested_at").dt.date().alias("winner_day"))
            .collect()
        )
        placed = pl.concat(
            [
                old.select("message_id", pl.col(CURRENT_PARTITION).alias("day")),
                theirs.select("message_id", pl.col("requested_at").dt.date().alias("day")),
            ]
        ).unique()
        wrong = placed.join(winner_day, on="message_id").filter(
            pl.col("day") != pl.col("winner_day")
        )
        out: dict[date, list[str]] = {}
        for key, group in wrong.group_by("day"):
            out[key[0]] = group.get_column("message_id").to_list()
        return out

    def _merge_history_locked(
        self, state: dict[str, Any], progress: Callable[[str], None] | None
    ) -> None:
        """Merge each history partition's small files into one (rows at or below the watermark).

        Files of at least :data:`_BIG_FILE_ROWS` rows (or :data:`_BIG_FILE` bytes) stay as
        they are: a query's cost per file is small next to reading that many rows, and
        rewriting them would cost a compaction as much as the fold itself.
        """
        w = int(state["watermark"])
        by_day: dict[date, list[HistoryFile]] = {}
        for f in self.paths.history_files():
            by_day.setdefault(f.ingest_date, []).append(f)
        for day, files in sorted(by_day.items()):
            if len(files) < 2 or any(f.hi > w for f in files):
                continue
            small = [
                f
                for f in files
                if history_rows(f) < _BIG_FILE_ROWS and f.path.stat().st_size < _BIG_FILE
            ]
            if len(small) < 2:
                continue
            if progress is not None:
                progress(f"merging history {day} ({len(small)} of {len(files)} files)")
            lo, hi = min(f.lo for f in small), max(f.hi for f in small)
            paths = [f.path for f in small]
            # file by file, Polars reading and pyarrow writing; or another Ibis backend
            # reads the files and writes them as one
            rows = _file_batches(paths) if self._local_writes else self._backend_rows(paths)
            newdir = self.paths.staging / f"hist-{day.isoformat()}"
            newdir.mkdir()
            for f in files:
                if f not in small:  # large files stay as they are (a hard link, no copy)
                    os.link(f.path, newdir / f.path.name)
            self._to_parquet(rows, newdir / history_name(lo, hi, None))
            target = self.paths.history / f"ingest_date={day.isoformat()}"
            replace_dir(newdir, target, self.paths.staging / f"trash-{day.isoformat()}")

    def _backend_rows(self, paths: Sequence[Path]) -> Any:
        """History files read by the Ibis backend (not DuckDB), as one expression."""
        try:
            rows = self.backend.read_parquet([str(p) for p in paths])
        except NotImplementedError as err:
            raise LakeFormatError(_backend_cannot(self.backend, "read Parquet files")) from err
        return rows.select(*SNAPSHOT_SCHEMA.names)

    # ------------------------------------------------------------------ files

    def stats(self) -> dict[str, int]:
        """File and row counts of the lake (for benchmarks and ``doctor``)."""
        state = self._state()
        return {
            "history_files": len(self.paths.history_files()),
            "current_files": sum(
                1 for _ in self.paths.current.glob("requested_date=*/part-0.parquet")
            ),
            "seq": int(state["seq"]),
            "watermark": int(state["watermark"]),
            "pending": len(self._pending),
        }


SCHEMA_CAST: dict[Any, Any] = dict(POLARS_SCHEMA)


def _window_days(flt: RecordFilter | None) -> tuple[date, ...] | None:
    """The requested days a filter's window covers (``None``: no window, or too wide)."""
    if flt is None or flt.requested_at_from is None or flt.requested_at_to is None:
        return None
    first, last = flt.requested_at_from.date(), flt.requested_at_to.date()
    if last < first:
        return ()
    n = (last - first).days + 1
    return tuple(first + timedelta(days=i) for i in range(n)) if n <= 3660 else None


def check_manifest(
    manifest: Mapping[str, Any], where: str, hash_key: HashKey, missing: str
) -> None:
    """Refuse a lake of another format, a newer version or another number-hash key.

    ``where`` names the lake in messages; ``missing`` says where the format was looked for.
    """
    version = manifest.get("format_version")
    if manifest.get("format") != "kmsg-analytics-lake" or not isinstance(version, int):
        msg = f"{where} is not a kmsg-analytics lake ({missing})"
        raise LakeFormatError(msg)
    if version > FORMAT_VERSION:
        msg = (
            f"{where} has lake format {version}, newer than this kmsg-analytics "
            f"understands ({FORMAT_VERSION}); upgrade with `pip install -U kmsg-analytics`"
        )
        raise LakeFormatError(msg)
    if manifest.get("hash_key_id") != hash_key.key_id:
        msg = (
            f"{where} was written with number-hash key {manifest.get('hash_key_id')!r}, "
            f"but this store has key {hash_key.key_id!r}: set KMSG_ANALYTICS_HASH_KEY "
            "(or pass hash_key=) to the lake's key, or number filters would match nothing"
        )
        raise LakeFormatError(msg)


def _frame(table: pa.Table) -> pl.DataFrame:
    out = pl.from_arrow(table)
    assert isinstance(out, pl.DataFrame)
    return out.cast(SCHEMA_CAST)


def _scan_files(paths: list[Path]) -> pl.LazyFrame:
    return pl.scan_parquet(
        [str(p) for p in paths],
        schema=POLARS_SCHEMA,
        hive_partitioning=False,
        glob=False,
        missing_columns="insert",
    )


def _read_files(paths: list[Path]) -> pl.DataFrame:
    try:
        return _scan_files(paths).collect()
    except (pl.exceptions.ComputeError, OSError) as err:
        from ._doctor import lake_read_error

        root = paths[0].parent.parent.parent if paths else Path(".")
        found = lake_read_error(root, err, paths)
        if found is None:
            raise
        raise found from err


def _among(ids: pl.Series) -> pl.Expr:
    """``message_id`` is one of ``ids``, as a filter the scan applies while it reads.

    A semi-join would read every column of every row first (seconds at 10M rows); a
    filter decodes ``message_id`` alone and the other columns only of the rows found,
    and its range lets row-group statistics skip groups that cannot hold the ids.
    """
    mid = pl.col("message_id")
    return mid.is_between(pl.lit(ids.min()), pl.lit(ids.max())) & mid.is_in(ids.to_list())


def _lookup(files: Sequence[str], ids: pl.Series) -> pl.DataFrame:
    """The rows of the current ``files`` whose ``message_id`` is one of ``ids``.

    Two reads: the ids, ``seq`` and days first, then the whole rows, by ``seq``, from
    the days that hold any (reading every column of every file costs seconds at 10M).
    """
    empty = pl.DataFrame(schema={**POLARS_SCHEMA, CURRENT_PARTITION: pl.Date})
    if not files or ids.is_empty():
        return empty
    keys = (
        _scan_current_files(files)
        .select("message_id", "seq", CURRENT_PARTITION)
        .filter(_among(ids))
        .collect()
    )
    if keys.is_empty():
        return empty
    hit = _on_days(files, keys.get_column(CURRENT_PARTITION))
    seqs = keys.get_column("seq")
    seq = pl.col("seq")
    return (
        _scan_current_files(hit)
        .filter(seq.is_between(seqs.min(), seqs.max()) & seq.is_in(seqs.to_list()))
        .collect()
    )


def _on_days(files: Sequence[str], days: Iterable[date]) -> list[str]:
    """Those of the current ``files`` (``.../requested_date=D/part-0.parquet``) on ``days``."""
    folders = {f"{CURRENT_PARTITION}={d.isoformat()}" for d in days}
    return [f for f in files if os.path.basename(os.path.dirname(f)) in folders]


#: A file's (size, mtime, inode): what the per-file caches are keyed by.
_Stamp = tuple[int, int, int]


def _stamp(name: str) -> _Stamp | None:
    """A file's :data:`_Stamp` (``None``: gone).

    Files are replaced by a rename, so a new version has a new inode even when its size
    and modification time (a few milliseconds apart, on a coarse clock) are the same.
    """
    try:
        st = os.stat(name)
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _id_hashes(ids: pl.Series) -> np.ndarray[Any, Any]:
    """64-bit hashes of message ids (stable within this process: the index's key)."""
    return ids.hash(seed=_ID_SEED).to_numpy()


@dataclass(frozen=True, slots=True)
class _IdIndex:
    """What a lookup by id needs to know of one ``current/`` file without reading it."""

    stamp: _Stamp
    first: str | None
    last: str | None
    hashes: np.ndarray[Any, Any]  # sorted

    @classmethod
    def of(cls, name: str, stamp: _Stamp) -> _IdIndex:
        with pq.ParquetFile(name) as file:  # one open: the footer, then the ids
            first, last = _id_range(file.metadata)
            column = file.read(columns=["message_id"]).column(0)
        ids = pl.Series("message_id", column)
        return cls(stamp, first, last, np.sort(_id_hashes(ids)))

    def overlaps(self, lo: str, hi: str) -> bool:
        return (self.first is None or self.first <= hi) and (self.last is None or lo <= self.last)

    def may_hold(self, wanted: np.ndarray[Any, Any]) -> bool:
        if not len(self.hashes):
            return False
        at = np.searchsorted(self.hashes, wanted).clip(max=len(self.hashes) - 1)
        return bool((self.hashes[at] == wanted).any())


def _id_range(meta: pq.FileMetaData) -> tuple[str | None, str | None]:
    """The smallest and largest ``message_id`` a file's statistics state (``None``: unknown)."""
    column = meta.schema.to_arrow_schema().get_field_index("message_id")
    first: str | None = None
    last: str | None = None
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(column).statistics
        if stats is None or not stats.has_min_max:
            return None, None
        lo, hi = str(stats.min), str(stats.max)
        first = lo if first is None or lo < first else first
        last = hi if last is None or hi > last else last
    return first, last


def _scan_current_files(files: Sequence[str]) -> pl.LazyFrame:
    """Current files with their ``requested_date`` (read from the directory names).

    The lake's columns only: a file's :data:`GATEWAY_FLAG` is not read.
    """
    return pl.scan_parquet(
        list(files),
        schema=POLARS_SCHEMA,
        missing_columns="insert",
        extra_columns="ignore",
        hive_partitioning=True,
        hive_schema=_HIVE,
        glob=False,
    )


#: the columns of :meth:`ParquetTrackingStore.current`: the folded files' and the day
_FLAGGED_SCHEMA: Final = pl.Schema([*POLARS_CURRENT_SCHEMA.items(), (CURRENT_PARTITION, pl.Date())])


def _scan_flagged_files(files: Sequence[str]) -> pl.LazyFrame:
    """Current files that carry :data:`GATEWAY_FLAG`, with it and their ``requested_date``."""
    return pl.scan_parquet(
        list(files),
        schema=POLARS_CURRENT_SCHEMA,
        missing_columns="insert",
        hive_partitioning=True,
        hive_schema=_HIVE,
        glob=False,
    )


def _flagged(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Rows of the lake's columns and ``requested_date`` with :data:`GATEWAY_FLAG` computed.

    In the column order of :data:`_FLAGGED_SCHEMA` (the flag before the day).
    """
    return frame.with_columns(gateway_flag().alias(GATEWAY_FLAG)).select(_FLAGGED_SCHEMA.names())


#: the lake format whose folded files carry :data:`GATEWAY_FLAG`
_FLAG_FORMAT: Final = 2


def _format_of(manifest: Path) -> int:
    """The format version a lake's manifest states."""
    version = read_json(manifest, {}).get("format_version", FORMAT_VERSION)
    return version if isinstance(version, int) else FORMAT_VERSION


def _carries_flag(meta: pq.FileMetaData) -> bool:
    """Whether a file's footer declares a :data:`GATEWAY_FLAG` column of booleans."""
    schema = meta.schema
    for i in range(len(schema)):
        column = schema.column(i)
        if column.path == GATEWAY_FLAG:
            return bool(column.physical_type == "BOOLEAN")
    return False


def _requested_span(path: Path) -> tuple[datetime, datetime] | None:
    """The first and last ``requested_at`` of a file, from its footer (``None``: unknown).

    Read from the raw (physical) statistics: asking pyarrow for them as datetimes with a
    time zone imports pandas, which costs a fresh process more than a whole small fold.
    """
    meta = pq.read_metadata(path)
    try:
        names = [meta.schema.column(i).path for i in range(meta.num_columns)]
        if "requested_at" not in names:
            return None
        column = meta.schema.column(names.index("requested_at"))
        logical = orjson.loads(column.logical_type.to_json())
        unit = _TIME_UNITS.get(logical.get("timeUnit"))
        if unit is None or column.physical_type != "INT64" or not logical.get("isAdjustedToUTC"):
            return None
        at = names.index("requested_at")
        stats = [meta.row_group(i).column(at).statistics for i in range(meta.num_row_groups)]
        lows = [s.min_raw for s in stats if s is not None and s.has_min_max]
        highs = [s.max_raw for s in stats if s is not None and s.has_min_max]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None  # statistics it cannot give
    if len(lows) != meta.num_row_groups or not lows:
        return None
    if not all(isinstance(t, int) for t in (*lows, *highs)):
        return None
    per, scale = unit  # raw values per microsecond, or microseconds per raw value
    low, high = min(lows) * scale // per, -(-max(highs) * scale // per)
    return _EPOCH + timedelta(microseconds=low), _EPOCH + timedelta(microseconds=high)


def _fold_windows(
    days: Sequence[date], held: Mapping[date, int], budget: int
) -> Iterator[list[date]]:
    """``days`` (sorted) in runs holding at most ``budget`` rows (a bigger day stands alone).

    Examples
    --------
    >>> d = [date(2026, 11, i) for i in (1, 2, 3, 5)]
    >>> [len(w) for w in _fold_windows(d, dict(zip(d, [40, 50, 30, 90])), 100)]
    [2, 1, 1]
    """
    window: list[date] = []
    rows = 0
    for day in days:
        if window and rows + held[day] > budget:
            yield window
            window, rows = [], 0
        window.append(day)
        rows += held[day]
    if window:
        yield window


class _DayWriter:
    """Writes a fold's days into ``current/``, on worker threads, while the next window is read.

    :meth:`write` first waits for the previous window's files, so at most two windows
    are held. The first failed write is raised (by :meth:`write` or on leaving the block);
    leaving the block always waits for every write begun.
    """

    def __init__(
        self, store: ParquetTrackingStore, progress: Callable[[str], None] | None, total: int
    ) -> None:
        self._store = store
        self._progress = progress
        self._total = total
        self._done = 0
        threads = _FOLD_WRITERS if store._local_writes else 0  # an Ibis backend: one at a time
        self._pool = ThreadPoolExecutor(threads, "kmsg-fold") if threads else None
        self._pending: list[Future[None]] = []

    def __enter__(self) -> _DayWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if exc_type is None:
                self.wait()
            else:  # the error that stopped the fold is the one to report
                with contextlib.suppress(Exception):
                    self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def wait(self) -> None:
        """Wait for every write begun; raise the first that failed."""
        pending, self._pending = self._pending, []
        errors = [err for err in (f.exception() for f in pending) if err is not None]
        if errors:
            raise errors[0]

    def write(self, days: Mapping[date, pa.Table]) -> None:
        """Replace the current file of each day with its rows (after the previous writes)."""
        self.wait()
        for day, rows in days.items():
            self._done += 1
            if self._progress is not None:
                self._progress(f"folding {day} ({self._done}/{self._total})")
            if self._pool is None:
                self._store._replace_day(day, rows)
            else:
                self._pending.append(self._pool.submit(self._store._replace_day, day, rows))


def _copied_days(
    merged: pl.DataFrame,
    days: Sequence[date],
    open_rows: dict[date, pl.DataFrame],
    *,
    flags: bool,
) -> dict[date, pa.Table]:
    """Each day's rows of a folded window as an Arrow table; its open rows into ``open_rows``.

    The window is converted once (with :data:`GATEWAY_FLAG` when ``flags``), its strings
    as views, not copied: a day's table is a few slices of it (a day comes in a few
    runs), sharing the window's buffers until the day is written. A day without rows
    gets an empty table (every message it held moved to another day). The open rows
    are copies (kept until the end of the fold), with their ``requested_date``.
    """
    still_open = merged.filter(pl.col("status").is_in(POLLABLE_STATUSES))
    copied = pl.from_arrow(still_open.to_arrow())  # detached from the window's buffers
    assert isinstance(copied, pl.DataFrame)
    opened = copied.partition_by(CURRENT_PARTITION, as_dict=True)
    for day in days:
        open_rows[day] = opened.get((day,), copied.clear())
    rows = merged.drop(CURRENT_PARTITION)
    if flags:
        rows = rows.with_columns(gateway_flag().alias(GATEWAY_FLAG))
    table = _arrow_views(rows)
    if flags:  # never null: declared so, as with_gateway_flag does
        i = table.schema.get_field_index(GATEWAY_FLAG)
        table = table.set_column(i, CURRENT_SCHEMA.field(GATEWAY_FLAG), table.column(i))
    runs = merged.get_column(CURRENT_PARTITION).rle().struct.unnest()
    at: dict[date, list[pa.Table]] = {}
    offset = 0
    for n, day in zip(runs.get_column("len"), runs.get_column("value"), strict=True):
        at.setdefault(day, []).append(table.slice(offset, n))
        offset += n
    return {day: pa.concat_tables(at[day]) if day in at else table.slice(0, 0) for day in days}


def _arrow_views(frame: pl.DataFrame) -> pa.Table:
    """``frame`` as Arrow without copying its strings (string views; Parquet has strings).

    Text inside a struct (``last_error``) is cast to plain strings: pyarrow's writer cannot
    slice views there, and those columns are small.
    """
    table = frame.to_arrow(compat_level=pl.CompatLevel.newest())
    for i, field in enumerate(table.schema):
        if pa.types.is_struct(field.type) and any(
            pa.types.is_string_view(f.type) for f in field.type.fields
        ):
            plain = pa.struct(
                [f.with_type(pa.string()) if pa.types.is_string_view(f.type) else f
                 for f in field.type.fields]
            )  # fmt: skip
            table = table.set_column(i, field.with_type(plain), table.column(i).cast(plain))
    return table


def _by_requested_time(table: pa.Table) -> pa.Table:
    """``table`` stably sorted by ``requested_at`` (itself when already in that order).

    A table with string views (:func:`frame_to_table`'s) is sorted by Polars: pyarrow
    cannot take from views.
    """
    n = table.num_rows
    col = table.column("requested_at")
    if n < 2 or pc.all(pc.less_equal(col.slice(0, n - 1), col.slice(1))).as_py():
        return table
    if not any(pa.types.is_string_view(f.type) for f in table.schema):
        return table.take(pc.sort_indices(col))
    ordered = _frame(table).sort("requested_at", maintain_order=True)
    return _arrow_views(ordered).cast(table.schema)


def _day_ends(table: pa.Table) -> list[int]:
    """Row offsets ending a row group per requested day (small days share a group).

    ``table`` is sorted by ``requested_at``; a table in another order just gets groups
    of mixed days.
    """
    n = table.num_rows
    if "requested_at" not in table.column_names or n <= _GROUP_MIN_ROWS:
        return [n]
    micros = table.column("requested_at").cast(pa.int64())
    days = pc.divide(micros, pa.scalar(_DAY_MICROS, pa.int64())).combine_chunks()
    out: list[int] = []
    start = 0
    for end in pc.run_end_encode(days).run_ends.to_pylist():
        if end - start >= _GROUP_MIN_ROWS:
            out.append(end)
            start = end
    if not out:
        return [n]
    out[-1] = n  # a small rest joins the last group
    return out


def _folded_options(table: pa.Table) -> dict[str, Any]:
    """pyarrow options of a folded file: zstd level 1, dictionaries and statistics by column."""
    present = set(table.column_names)
    return {
        "store_schema": False,  # types from Parquet's own: large strings read back as strings
        "compression": "zstd",
        "compression_level": _ZSTD_LEVEL,
        "use_dictionary": [c for c in _DICTIONARY_COLUMNS if c.split(".")[0] in present],
        "write_statistics": [c for c in (*_STATISTICS_COLUMNS, CURRENT_PARTITION) if c in present],
        "write_batch_size": _WRITE_BATCH_ROWS,
    }


#: the lake's columns, every one nullable (as files written by an Ibis backend declare
#: them), text as string views (as Polars holds it: no copy; Parquet has strings)
_ANY_NULLS = pa.schema(
    [
        f.with_nullable(True).with_type(pa.string_view()) if f.type == pa.string() else
        f.with_nullable(True)
        for f in SNAPSHOT_SCHEMA
    ]
)  # fmt: skip


def _file_batches(paths: Sequence[Path]) -> pa.RecordBatchReader:
    """The rows of history files as a stream, one file read at a time (by Polars: fast)."""

    def batches() -> Iterator[pa.RecordBatch]:
        for path in paths:
            table = _arrow_views(_read_files([path])).cast(_ANY_NULLS)
            yield from table.to_batches()

    return pa.RecordBatchReader.from_batches(_ANY_NULLS, batches())


def _write_stream(batches: pa.RecordBatchReader, path: Path) -> None:
    """Write a stream of batches as one file (folded options), in groups of whole batches."""
    schema = batches.schema
    options = _folded_options(schema.empty_table())
    with pq.ParquetWriter(path, schema, **options) as writer:
        pending: list[pa.RecordBatch] = []
        rows = 0
        for batch in batches:
            pending.append(batch)
            rows += batch.num_rows
            if rows >= _GROUP_MAX_ROWS:
                writer.write_table(pa.Table.from_batches(pending, schema))
                pending, rows = [], 0
        if pending:
            writer.write_table(pa.Table.from_batches(pending, schema))


def _write_hive(data: pa.Table | pa.RecordBatchReader, path: Path, partition_by: str) -> None:
    """Write ``data`` as a hive-partitioned directory by ``partition_by`` (zstd)."""
    import pyarrow.dataset as ds

    ds.write_dataset(
        data,
        path,
        format="parquet",
        partitioning=[partition_by],
        partitioning_flavor="hive",
        basename_template="part-{i}.parquet",
        file_options=ds.ParquetFileFormat().make_write_options(compression="zstd"),
    )


def _check_backend(backend: Any) -> None:
    """Refuse an Ibis backend that cannot write and read back the lake's columns.

    Tried on an empty table of :data:`SNAPSHOT_SCHEMA` in a temporary directory.
    """
    import tempfile

    import ibis

    try:
        with tempfile.TemporaryDirectory(prefix="kmsg-backend-") as tmp:
            path = Path(tmp) / "probe.parquet"
            reader = backend.to_pyarrow_batches(ibis.memtable(SNAPSHOT_SCHEMA.empty_table()))
            with reader, pq.ParquetWriter(path, reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
            backend.read_parquet([str(path)]).select(*SNAPSHOT_SCHEMA.names).to_pyarrow()
    except Exception as err:  # whatever the backend raises: its message is kept
        what = f"write and read back the lake's columns ({type(err).__name__}: {err})"
        raise LakeFormatError(_backend_cannot(backend, what)) from err


def _backend_cannot(backend: Any, what: str) -> str:
    name = getattr(backend, "name", type(backend).__name__)
    return (
        f"backend={name!r} cannot {what}, which the lake needs; pass an Ibis backend that "
        "can (DuckDB, the default, or Polars), or none"
    )


def _leaf_columns(schema: pa.Schema) -> list[str]:
    """The Parquet column paths of ``schema`` (a struct's fields as ``name.field``)."""
    out: list[str] = []
    for f in schema:
        if pa.types.is_struct(f.type):
            out.extend(f"{f.name}.{f.type.field(i).name}" for i in range(f.type.num_fields))
        else:
            out.append(f.name)
    return out


def _write_batch(table: pa.Table, path: Path) -> None:
    """Write a batch as :data:`_BATCH_COMPRESSION` Parquet, a row group per requested day."""
    present = set(table.column_names)
    write_row_groups(
        table,
        path,
        _day_ends(table),
        max_rows=_GROUP_MAX_ROWS,
        options={
            "store_schema": False,
            "compression": {
                c: "none" if c in _RANDOM_COLUMNS else _BATCH_COMPRESSION
                for c in _leaf_columns(table.schema)
            },
            "use_dictionary": [c for c in _DICTIONARY_COLUMNS if c.split(".")[0] in present],
            "write_statistics": [c for c in _BATCH_STATISTICS if c in present],
            "write_batch_size": _WRITE_BATCH_ROWS,
        },
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the DuckDB 2 deprecation that Ibis 12 triggers (not ours to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "fetch_arrow_table", DeprecationWarning)
        yield


def _starts_with(pending: list[dict[str, Any]], rows: list[dict[str, Any]]) -> bool:
    """Whether ``pending`` still begins with ``rows`` (the very objects: no flush between)."""
    return (
        bool(rows)
        and len(pending) >= len(rows)
        and pending[0] is rows[0]
        and pending[len(rows) - 1] is rows[-1]
    )


def _now_micros() -> int:
    return time.time_ns() // 1000


_open_stores: weakref.WeakSet[ParquetTrackingStore] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # pragma: no cover - runs at interpreter exit
    for store in list(_open_stores):
        try:
            store.close()
        except Exception:
            log.exception("could not publish pending rows of %s at exit", store)
