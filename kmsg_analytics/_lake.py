"""ParquetTrackingStore: the append-only snapshot lake, its compaction and merge-on-read.

Writes: rows go to a write-ahead log (acknowledged), then are published in batches
as one Parquet file per batch into ``history/ingest_date=.../`` through the Ibis
backend (staged outside the dataset, renamed in). ``compact()`` folds the history
past the watermark into ``current/requested_date=.../part-0.parquet`` (one file per
requested day, replaced by rename) and merges small history files. Reads: the
compacted current state, anti-joined with the few snapshots newer than the
watermark, which are kept decoded in memory between queries.
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ._errors import LakeFormatError
from ._lakefs import (
    HistoryFile,
    LakePaths,
    WriteAheadLog,
    history_name,
    orphan_wals,
    read_json,
    read_wal_lines,
    replace_dir,
    restore_replaced_dirs,
    write_json_atomic,
    writer_lock,
)
from ._phone import HashKey
from ._queries import latest
from ._records import POLLABLE_STATUSES, RecordFilter, TrackingRecord
from ._schema import (
    CURRENT_PARTITION,
    FORMAT_VERSION,
    POLARS_SCHEMA,
    SNAPSHOT_SCHEMA,
    SnapshotKind,
    record_to_row,
    records_to_table,
    rows_to_table,
)
from ._store import NumberStorage, RetriedReads

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["CompactionReport", "ParquetTrackingStore"]

log = logging.getLogger("kmsg_analytics.lake")

_BIG_FILE = 64 << 20  # history files this large are not merged again
_FOLD_WINDOW_ROWS = 100_000  # delta rows a fold holds in memory at once
_FOLD_WRITE_ROWS = 100_000  # folded rows written together (one Ibis write, many days)
_EMPTY = pl.DataFrame(schema=POLARS_SCHEMA)
#: provisional seq of rows not yet published (newer than any published row)
_PENDING_BASE = 1 << 61
#: snapshots that (re)state a message rather than derive from its current state
_ENTRY_KINDS = ("send", "load", "patch")
_HIVE = {CURRENT_PARTITION: pl.Date}
#: reads tried when a history file vanishes under them (a merge replaced it)
_READ_ATTEMPTS = 5
#: DuckDB writes zstd at level 1: half the CPU of its default level, files ~10% larger.
_ZSTD_LEVEL = 1
_DUCKDB_PARQUET = f"FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL {_ZSTD_LEVEL}"
_LOCAL_ONLY_OPTIONS = frozenset({"backend", "flush_rows", "flush_seconds", "fsync"})
_T = TypeVar("_T")


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
        An Ibis backend that writes the Parquet files; a DuckDB connection by default.
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
        Fold automatically when this many snapshots wait past the watermark.
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
        # decoded snapshots past the watermark: (watermark, files read, rows)
        self._cache_w = -1
        self._cache_files: set[Path] = set()
        self._cache_rows = pl.DataFrame(schema=POLARS_SCHEMA)
        self._cache_tail: list[pa.Table] = []  # our own batches, published but not decoded
        self._winners: tuple[tuple[date, ...] | None, tuple[pl.DataFrame, list[date]]] | None = None
        self._footers_ok: dict[str, tuple[int, int]] = {}
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
        """Publish a validated Arrow table of lake rows as one batch (bulk loads)."""
        if table.num_rows == 0:
            return
        now = pa.scalar(recorded_at or _now_micros(), pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        n = table.num_rows
        table = table.set_column(
            SNAPSHOT_SCHEMA.get_field_index("snapshot_kind"),
            "snapshot_kind",
            pa.array([kind] * n, pa.string()),
        ).set_column(
            SNAPSHOT_SCHEMA.get_field_index("recorded_at"),
            "recorded_at",
            pa.repeat(now, n) if hasattr(pa, "repeat") else pa.array([now.as_py()] * n, now.type),
        )
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
            try:
                self.flush()
            except Exception:  # the rows stay in the log and are retried
                log.exception("background flush of %s failed", self.paths.root)

    def flush(self) -> None:
        """Publish acknowledged rows waiting in the write-ahead log."""
        with self._mutex:
            if not self._pending:
                return
            table = rows_to_table(self._pending)
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
        """Give ``table`` its sequence numbers and rename it into the history (lock held)."""
        lo = state["seq"] + 1
        hi = state["seq"] + table.num_rows
        table = table.set_column(0, "seq", pa.array(range(lo, hi + 1), pa.int64()))
        table = table.sort_by([("requested_at", "ascending"), ("seq", "ascending")])
        day = datetime.now(UTC).date()
        folder = self.paths.history / f"ingest_date={day.isoformat()}"
        folder.mkdir(exist_ok=True)
        staged = self.paths.staging_file()
        self._write_parquet(table, staged)
        final = folder / history_name(lo, hi, wal_id or None)
        os.rename(staged, final)
        state = {**state, "seq": hi, "last_wal": wal_id}
        self._write_state(state)
        self._winners = None
        if keep_cache and self._cache_w == state["watermark"]:
            self._cache_tail.append(table)  # decoded when next read, not on the write path
            self._cache_files.add(final)
        return state

    @property
    def _parquet_options(self) -> dict[str, Any]:
        """zstd; at level 1 on DuckDB (half the CPU of its default level, files ~10% larger)."""
        if getattr(self.backend, "name", None) == "duckdb":
            return {"compression": "zstd", "compression_level": _ZSTD_LEVEL}
        return {"compression": "zstd"}

    def _write_parquet(self, table: pa.Table, path: Path) -> None:
        """Write one Arrow table through the Ibis backend (DuckDB ``COPY`` by default)."""
        self._to_parquet(table, path)

    def _forget(self, expr: Any) -> None:
        """Drop the in-memory table a write registered (DuckDB keeps it for the connection)."""
        unregister = getattr(getattr(self.backend, "con", None), "unregister", None)
        if callable(unregister):
            with contextlib.suppress(Exception):
                unregister(expr.op().name)

    def _to_parquet(self, expr: Any, path: Path, *, partition_by: str | None = None) -> None:
        """Every Parquet file of the lake is written here (one file, or a hive directory).

        ``expr`` is an Ibis expression, or an Arrow table (a batch being published).
        """
        if isinstance(expr, pa.Table):
            if partition_by is None and self._duckdb_copy(expr, path):
                return
            import ibis

            table = ibis.memtable(expr)
            try:
                self._to_parquet(table, path, partition_by=partition_by)
            finally:
                self._forget(table)
            return
        if "'" in str(path) and '"' in str(path):  # the backend cannot quote such a path
            import pyarrow.dataset as ds
            import pyarrow.parquet as pq

            with _quiet():
                if partition_by is None:
                    pq.write_table(expr.to_pyarrow(), path, compression="zstd")
                else:
                    ds.write_dataset(
                        expr.to_pyarrow(),
                        path,
                        format="parquet",
                        partitioning=[partition_by],
                        partitioning_flavor="hive",
                        basename_template="part-{i}.parquet",
                        file_options=ds.ParquetFileFormat().make_write_options(compression="zstd"),
                    )
            return
        options = dict(self._parquet_options)
        if partition_by is not None:
            options.update(partition_by=(partition_by,), filename_pattern="part-{i}")
        with _quiet():
            self.backend.to_parquet(expr, str(path), **options)

    def _duckdb_copy(self, table: pa.Table, path: Path) -> bool:
        """``COPY`` a table on the DuckDB backend's own connection; ``False`` if not DuckDB.

        No Ibis expression is built: a small batch (one polling round) then costs the
        ``COPY`` alone, about half of what going through ``ibis.memtable`` costs.
        """
        if getattr(self.backend, "name", None) != "duckdb" or "'" in str(path):
            return False
        con = self.backend.con
        name = f"_kmsg_write_{uuid.uuid4().hex}"
        con.register(name, table)
        try:
            with _quiet():
                con.execute(f"COPY {name} TO '{path}' ({_DUCKDB_PARQUET})")
        finally:
            con.unregister(name)
        return True

    # ------------------------------------------------------------------ reads

    def _current_files(self) -> list[str]:
        out = []
        for entry in os.scandir(self.paths.current):
            if entry.name.startswith(f"{CURRENT_PARTITION}=") and entry.is_dir():
                part = os.path.join(entry.path, "part-0.parquet")
                if os.path.exists(part):
                    out.append(part)
        return sorted(out)

    def _scan_current(self, scope: tuple[date, ...] | None = None) -> pl.LazyFrame:
        """The compacted current state; footers checked for the days in ``scope`` (or all)."""
        files = self._current_files()
        if scope is None:
            self._check_footers(files)
        else:
            days = {f"{CURRENT_PARTITION}={d.isoformat()}" for d in scope}
            self._check_footers([f for f in files if os.path.basename(os.path.dirname(f)) in days])
        if not files:
            return pl.LazyFrame(schema={**POLARS_SCHEMA, CURRENT_PARTITION: pl.Date})
        return pl.scan_parquet(
            files,
            schema=POLARS_SCHEMA,
            missing_columns="insert",
            hive_partitioning=True,
            hive_schema=_HIVE,
            glob=False,
        )

    def _check_footers(self, files: Sequence[str]) -> None:
        """Fail early, naming the file, when a file a query will read has no valid footer.

        Each file's footer is read once per (size, mtime); later calls cost one ``stat``.
        """
        for name in files:
            try:
                st = os.stat(name)
            except FileNotFoundError:
                continue
            stamp = (st.st_size, st.st_mtime_ns)
            if self._footers_ok.get(name) == stamp:
                continue
            try:
                from ._doctor import check_key_value_metadata

                check_key_value_metadata(pq.read_metadata(name))
            except FileNotFoundError:
                continue
            except Exception as err:
                from ._doctor import lake_read_error

                found = lake_read_error(self.paths.root, err, [Path(name)])
                assert found is not None
                raise found from err
            self._footers_ok[name] = stamp

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
        if new:
            fresh = _read_files([f.path for f in new]).filter(pl.col("seq") > w)
            self._cache_rows = pl.concat([self._cache_rows, fresh], how="vertical")
            self._cache_files.update(f.path for f in new)
            self._winners = None
        rows = self._cache_rows
        if self._pending:
            pending = _frame(rows_to_table(self._pending)).with_columns(
                seq=pl.int_range(_PENDING_BASE, _PENDING_BASE + len(self._pending), dtype=pl.Int64)
            )
            rows = pl.concat([rows, pending], how="vertical")
        return w, rows

    def _delta(self, scope: tuple[date, ...] | None) -> tuple[pl.DataFrame, list[date]] | None:
        """Current state of every message changed past the watermark, and the days to patch.

        Messages (re-)entered by a send, load or patch may already have a row in
        ``current/``: those rows take part in the precedence rule and their days are
        patched too, so a message is never counted twice. The rows are looked up on the
        days in ``scope`` (a query's requested-at window) or, without one, everywhere.
        """
        with self._mutex:
            _w, rows = self._refresh()
            if rows.is_empty():
                return None
            if self._winners is None or self._winners[0] != scope:
                self._winners = (scope, self._resolve(rows, scope))
            return self._winners[1]

    def _resolve(
        self, rows: pl.DataFrame, scope: tuple[date, ...] | None
    ) -> tuple[pl.DataFrame, list[date]]:
        entered = rows.filter(pl.col("snapshot_kind").is_in(_ENTRY_KINDS)).select("message_id")
        found = pl.DataFrame(schema={**POLARS_SCHEMA, CURRENT_PARTITION: pl.Date})
        if entered.height:
            lookup = self._scan_current(scope)
            if scope is not None:
                lookup = lookup.filter(pl.col(CURRENT_PARTITION).is_in(scope))
            found = lookup.join(entered.unique().lazy(), on="message_id", how="semi").collect()
        combined = pl.concat([found.drop(CURRENT_PARTITION), rows], how="vertical")
        last = latest(combined.unique(["message_id", "seq"], keep="first").lazy()).collect()
        last = last.with_columns(pl.col("requested_at").dt.date().alias(CURRENT_PARTITION))
        days = pl.concat([last.get_column(CURRENT_PARTITION), found.get_column(CURRENT_PARTITION)])
        return last, days.unique().to_list()

    def current(self, flt: RecordFilter | None = None) -> pl.LazyFrame:
        """Current records (all columns plus ``requested_date``) as a lazy query.

        With a requested-at window in ``flt`` only that window's files are read.
        """
        scope = _window_days(flt)
        base = self._scan_current(scope)
        found = self._delta(scope)
        if found is None:
            return base
        delta, days = found
        ids = delta.lazy().select("message_id")
        untouched = base.filter(~pl.col(CURRENT_PARTITION).is_in(days))
        touched = base.filter(pl.col(CURRENT_PARTITION).is_in(days)).join(
            ids, on="message_id", how="anti"
        )
        return pl.concat([untouched, touched, delta.lazy()], how="vertical_relaxed")

    def _open(self) -> pl.LazyFrame:
        path = self.paths.open_file()
        if path.exists():
            base = pl.scan_parquet(
                path,
                schema={**POLARS_SCHEMA, CURRENT_PARTITION: pl.Date},
                glob=False,
                missing_columns="insert",
            )
        else:
            base = pl.LazyFrame(schema={**POLARS_SCHEMA, CURRENT_PARTITION: pl.Date})
        pending_days = self._entered_days()
        found = self._delta(pending_days)
        if found is None:
            return base
        delta = found[0]
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
        """Fold when ``compact_rows`` snapshots wait past the watermark (``seq`` is dense)."""
        with self._mutex:
            if state["seq"] - state["watermark"] + len(self._pending) >= self._compact_rows:
                self.compact(history=False)

    def compact(
        self, *, history: bool = True, progress: Callable[[str], None] | None = None
    ) -> CompactionReport:
        """Fold snapshots into the current state and merge small history files.

        History is kept: every snapshot stays in ``history/``; only files are merged.
        Readers see either the old or the new files, never both, never half.
        """
        started = time.perf_counter()
        with self._mutex, self._reading():
            self.flush()
            with writer_lock(self.paths):
                state = self._recover()
                before = len(self.paths.history_files())
                rows, rewritten, state = self._fold_locked(state, progress)
                if history:
                    self._merge_history_locked(state, progress)
                after = len(self.paths.history_files())
            self._cache_w = -1
            self._winners = None
        return CompactionReport(rows, rewritten, before, after, time.perf_counter() - started)

    def _fold_locked(
        self, state: dict[str, Any], progress: Callable[[str], None] | None
    ) -> tuple[int, int, dict[str, Any]]:
        w = int(state["watermark"])
        files = [f for f in self.paths.history_files() if f.hi > w]
        if not files:
            return 0, 0, state
        top = max(f.hi for f in files)
        delta = _scan_files([f.path for f in files]).filter(pl.col("seq") > w)
        day_of = pl.col("requested_at").dt.date()
        per_day = (
            delta.group_by(day_of.alias("d")).agg(pl.len().alias("n")).collect(engine="streaming")
        )
        rows_of = dict(zip(per_day.get_column("d").to_list(), per_day.get_column("n"), strict=True))
        exclude = self._moved_locked(delta, w)
        days_sorted = sorted(set(rows_of) | set(exclude))
        n_rows = 0
        open_parts: list[pl.DataFrame] = []
        covered: list[date] = []
        window: dict[date, pl.DataFrame] = {}
        ready: list[tuple[date, pl.DataFrame]] = []  # folded days waiting to be written
        ready_rows = 0
        for i, day in enumerate(days_sorted):
            if progress is not None:
                progress(f"folding {day} ({i + 1}/{len(days_sorted)})")
            if day not in covered:  # read the delta once per window of consecutive days
                covered, window = self._delta_window(delta, days_sorted[i:], rows_of)
            parts = [window.pop(day, _EMPTY).lazy()]
            target = self.paths.current_file(day)
            if target.exists():  # rows past w are there only if a fold died: delta has them
                parts.insert(
                    0,
                    pl.scan_parquet(target, schema=POLARS_SCHEMA, missing_columns="insert").filter(
                        pl.col("seq") <= w
                    ),
                )
            if day in exclude:
                parts = [p.filter(~pl.col("message_id").is_in(exclude[day])) for p in parts]
            merged = (
                latest(pl.concat(parts, how="vertical_relaxed"))
                .sort("requested_at")
                .with_columns(pl.lit(day).alias(CURRENT_PARTITION))
                .collect()
            )
            n_rows += merged.height
            ready.append((day, merged))
            ready_rows += merged.height
            if ready_rows >= _FOLD_WRITE_ROWS or i == len(days_sorted) - 1:
                self._replace_days(ready)
                ready, ready_rows = [], 0
            # copied out (through Arrow): a filtered frame's strings are views into the
            # whole day's buffers, which would otherwise stay alive, day after day
            still_open = pl.from_arrow(
                merged.filter(pl.col("status").is_in(POLLABLE_STATUSES)).to_arrow()
            )
            assert isinstance(still_open, pl.DataFrame)
            open_parts.append(still_open)
        # the open set: untouched days keep their open rows, touched days bring theirs
        old_open = self.paths.open_file()
        kept = (
            pl.read_parquet(old_open).filter(~pl.col(CURRENT_PARTITION).is_in(days_sorted))
            if old_open.exists()
            else None
        )
        frames = [f for f in [kept, *open_parts] if f is not None and f.height]
        open_table = (
            pl.concat(frames, how="vertical_relaxed")
            if frames
            else pl.DataFrame(schema={**POLARS_SCHEMA, CURRENT_PARTITION: pl.Date})
        )
        staged = self.paths.staging_file()
        self._write_parquet(open_table.to_arrow(), staged)
        os.replace(staged, old_open)
        fold_date = max(f.ingest_date for f in files).isoformat()
        state = {**state, "watermark": top, "fold_date": fold_date}
        self._write_state(state)
        return n_rows, len(days_sorted), state

    def _replace_days(self, days: list[tuple[date, pl.DataFrame]]) -> None:
        """Write folded days in one partitioned write, then rename each file into place."""
        stage = self.paths.staging / f"fold-{uuid.uuid4().hex}"
        full = [frame for _day, frame in days if frame.height]
        if full:
            import ibis

            table = pl.concat(full, how="vertical").to_arrow()
            expr = ibis.memtable(table)
            try:
                self._to_parquet(expr, stage, partition_by=CURRENT_PARTITION)
            finally:
                self._forget(expr)
        for day, frame in days:
            target = self.paths.current_file(day)
            target.parent.mkdir(exist_ok=True)
            if frame.height:
                os.replace(stage / target.parent.name / target.name, target)
            else:  # every message of the day moved elsewhere: an empty file
                staged = self.paths.staging_file()
                self._write_parquet(frame.drop(CURRENT_PARTITION).to_arrow(), staged)
                os.replace(staged, target)
        shutil.rmtree(stage, ignore_errors=True)

    @staticmethod
    def _delta_window(
        delta: pl.LazyFrame, days: list[date], rows_of: Mapping[date, int]
    ) -> tuple[list[date], dict[date, pl.DataFrame]]:
        """The next days and their delta rows, read at once (up to :data:`_FOLD_WINDOW_ROWS`).

        One range scan serves a whole window, so row-group statistics prune it and no
        file is decoded once per day.
        """
        taken, total = [days[0]], rows_of.get(days[0], 0)
        for day in days[1:]:
            total += rows_of.get(day, 0)
            if total > _FOLD_WINDOW_ROWS:
                break
            taken.append(day)
        start = datetime.combine(taken[0], datetime.min.time(), UTC)
        end = datetime.combine(taken[-1], datetime.min.time(), UTC) + timedelta(days=1)
        rows = (
            delta.filter((pl.col("requested_at") >= start) & (pl.col("requested_at") < end))
            .with_columns(pl.col("requested_at").dt.date().alias("__day"))
            .collect(engine="streaming")
        )
        parts = rows.partition_by("__day", as_dict=True, include_key=False)
        return taken, {key[0]: part for key, part in parts.items()}

    def _moved_locked(self, delta: pl.LazyFrame, w: int) -> dict[date, list[str]]:
        """Messages (re-)entered past ``w`` whose current row must leave a requested day.

        Returns, per day, the ids that day must not hold after the fold: the message's
        winning snapshot (by the precedence rule) lives on another day.
        """
        entered = (
            delta.filter(pl.col("snapshot_kind").is_in(_ENTRY_KINDS)).select("message_id").unique()
        )
        current = self._scan_current().filter(pl.col("seq") <= w)
        day = pl.col("requested_at").dt.date().alias("day")
        pairs = pl.concat(
            [
                current.join(entered, on="message_id", how="semi").select(
                    "message_id", pl.col(CURRENT_PARTITION).alias("day")
                ),
                delta.join(entered, on="message_id", how="semi").select("message_id", day),
            ]
        )
        # only messages seen on more than one requested day can be misplaced
        ids = (
            pairs.unique()
            .group_by("message_id")
            .agg(pl.len().alias("n"))
            .filter(pl.col("n") > 1)
            .select("message_id")
            .collect(engine="streaming")
        )
        if ids.is_empty():
            return {}
        old = current.join(ids.lazy(), on="message_id", how="semi").collect()
        theirs = delta.join(ids.lazy(), on="message_id", how="semi").collect()
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
        """Merge each history partition's files into one (only rows at or below the watermark)."""
        w = int(state["watermark"])
        by_day: dict[date, list[HistoryFile]] = {}
        for f in self.paths.history_files():
            by_day.setdefault(f.ingest_date, []).append(f)
        for day, files in sorted(by_day.items()):
            if len(files) < 2 or any(f.hi > w for f in files):
                continue
            if progress is not None:
                progress(f"merging history {day} ({len(files)} files)")
            small = [f for f in files if f.path.stat().st_size < _BIG_FILE]
            if len(small) < 2:
                continue
            lo, hi = min(f.lo for f in small), max(f.hi for f in small)
            newdir = self.paths.staging / f"hist-{day.isoformat()}"
            newdir.mkdir()
            for f in files:
                if f not in small:  # large files stay as they are (a hard link, no copy)
                    os.link(f.path, newdir / f.path.name)
            # the backend streams the files into one, in bounded memory (row order within
            # a history file means nothing, so DuckDB need not buffer to keep it)
            with _quiet(), self._unordered():
                merged = self.backend.read_parquet(
                    [str(f.path) for f in small], hive_partitioning=False
                ).select(*SNAPSHOT_SCHEMA.names)
                self._to_parquet(merged, newdir / history_name(lo, hi, None))
            target = self.paths.history / f"ingest_date={day.isoformat()}"
            replace_dir(newdir, target, self.paths.staging / f"trash-{day.isoformat()}")

    @contextlib.contextmanager
    def _unordered(self) -> Iterator[None]:
        """On DuckDB, let a write reorder rows (about half the memory of a large merge)."""
        duck = getattr(self.backend, "name", None) == "duckdb"
        if duck:
            self.backend.raw_sql("SET preserve_insertion_order = false")
        try:
            yield
        finally:
            if duck:
                self.backend.raw_sql("SET preserve_insertion_order = true")

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


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the DuckDB 2 deprecation that Ibis 12 triggers (not ours to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "fetch_arrow_table", DeprecationWarning)
        yield


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
