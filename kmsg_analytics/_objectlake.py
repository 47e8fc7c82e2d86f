"""ObjectLakeStore: the snapshot lake in S3-compatible object storage, published by a commit log.

Object stores have no atomic rename, so nothing is ever renamed or overwritten: data
files are immutable objects with unique names, each written by one PUT, and a file
becomes part of the lake only when a log entry naming it is created at
``_log/<version>.json`` with a conditional PUT (``If-None-Match: *``). Two writers
racing for one version cannot both win; the loser reads the log again and retries
on the next version. Readers replay the log (from the newest checkpoint) and read
exactly the files it names; files no entry names are invisible and removed later by
:meth:`ObjectLakeStore.compact`. See ``docs/object-storage.md``.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ._errors import InvalidRecordError, LakeCorruptError, LakeError, LakeFormatError
from ._lake import CompactionReport, check_manifest
from ._objectstore import LakeUnavailableError, ObjectStore, S3Options
from ._phone import HashKey
from ._queries import latest
from ._records import POLLABLE_STATUSES, RecordFilter, TrackingRecord
from ._schema import (
    CURRENT_PARTITION,
    FORMAT_VERSION,
    HISTORY_PARTITION,
    POLARS_SCHEMA,
    SNAPSHOT_SCHEMA,
    SnapshotKind,
    record_to_row,
    rows_to_table,
)
from ._store import NumberStorage, RetriedReads

__all__ = ["LakeUnavailableError", "ObjectLakeStore"]

log = logging.getLogger("kmsg_analytics.objectlake")

LOG_DIR: Final = "_log/"
CHECKPOINT_DIR: Final = "_checkpoints/"
LAST_CHECKPOINT: Final = "_last_checkpoint.json"
#: A checkpoint (the whole state as one object) is written every this many versions.
CHECKPOINT_EVERY: Final = 25
#: A writer never names in a log entry a data file it stored longer ago than this, so a
#: compaction may delete unnamed files older than its grace period (default one hour).
MAX_COMMIT_DELAY: Final = 600.0
DEFAULT_GRACE: Final = timedelta(hours=1)
#: How often a writer retries a commit that lost the race for a version.
_COMMIT_ATTEMPTS: Final = 100
_READ_ATTEMPTS: Final = 3
_BIG_FILE: Final = 64 << 20
_CURRENT_SCHEMA: Final[dict[str, Any]] = {**POLARS_SCHEMA, CURRENT_PARTITION: pl.Date}
#: Files up to this size are fetched whole and kept decoded; larger ones are scanned.
_CACHE_FILE: Final = 32 << 20
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class DataFile:
    """One data object of the lake as the log names it."""

    path: str
    dataset: str  # "history", "current" or "open"
    rows: int
    bytes: int
    lo: int = 0
    hi: int = 0
    day: str | None = None  # the partition value (ingest or requested date)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "dataset": self.dataset,
            "rows": self.rows,
            "bytes": self.bytes,
            "lo": self.lo,
            "hi": self.hi,
            "day": self.day,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> DataFile:
        return cls(
            path=str(value["path"]),
            dataset=str(value["dataset"]),
            rows=int(value["rows"]),
            bytes=int(value["bytes"]),
            lo=int(value.get("lo", 0)),
            hi=int(value.get("hi", 0)),
            day=value.get("day"),
        )


@dataclass(frozen=True, slots=True)
class LakeState:
    """The lake at one version: its metadata, live files, sequence and watermark."""

    version: int
    lake: Mapping[str, Any]
    files: Mapping[str, DataFile]
    seq: int = 0
    watermark: int = 0
    #: files removed from the lake, with the time of their removal (deleted after a grace)
    removed: Mapping[str, float] = field(default_factory=dict)
    checkpoint: int = -1

    def apply(self, entry: Mapping[str, Any]) -> LakeState:
        """The state after ``entry`` (the log entry of version ``self.version + 1``)."""
        files = dict(self.files)
        removed = dict(self.removed)
        at = float(entry.get("committed_at", 0.0))
        for item in entry.get("add", ()):
            f = DataFile.from_json(item)
            files[f.path] = f
        for path in entry.get("remove", ()):
            files.pop(path, None)
            removed[path] = at
        for path in entry.get("forget", ()):
            removed.pop(path, None)
        return LakeState(
            version=int(entry["version"]),
            lake=entry.get("lake") or self.lake,
            files=files,
            seq=int(entry.get("seq", self.seq)),
            watermark=int(entry.get("watermark", self.watermark)),
            removed=removed,
            checkpoint=self.checkpoint,
        )

    def of(self, dataset: str) -> list[DataFile]:
        """Live files of ``dataset``, by path."""
        return sorted((f for f in self.files.values() if f.dataset == dataset), key=_path_key)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "lake": dict(self.lake),
            "files": [f.to_json() for f in sorted(self.files.values(), key=_path_key)],
            "seq": self.seq,
            "watermark": self.watermark,
            "removed": dict(self.removed),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> LakeState:
        files = [DataFile.from_json(f) for f in value.get("files", ())]
        return cls(
            version=int(value["version"]),
            lake=dict(value.get("lake") or {}),
            files={f.path: f for f in files},
            seq=int(value.get("seq", 0)),
            watermark=int(value.get("watermark", 0)),
            removed={str(k): float(v) for k, v in (value.get("removed") or {}).items()},
            checkpoint=int(value["version"]),
        )


def _path_key(f: DataFile) -> str:
    return f.path


def log_key(version: int) -> str:
    """The object key (below the lake prefix) of the log entry of ``version``."""
    return f"{LOG_DIR}{version:020d}.json"


@dataclass(slots=True)
class _View:
    """What reads of one version need: the state and the current state of changed messages."""

    state: LakeState
    winners: pl.DataFrame | None = None  # current rows (with requested_date) of changed ids
    days: list[date] = field(default_factory=list)  # requested days holding changed ids


class ObjectLakeStore(RetriedReads):
    """A tracking store in S3-compatible object storage (``s3://bucket/prefix``).

    Every write is one immutable Parquet object plus one log entry created with a
    conditional PUT; a write returns (is acknowledged) only when both are stored.
    Readers see the newest version of the log and nothing else: never a half-written
    file nor half a compaction. Several writers (threads, processes, machines) may
    write at once; each version has exactly one author.

    Parameters
    ----------
    url
        ``s3://bucket/prefix``; the bucket must exist. The lake is created when the
        prefix holds none.
    storage_options
        How to reach the endpoint: ``endpoint_url``, ``aws_access_key_id``,
        ``aws_secret_access_key``, ``aws_session_token``, ``region``, ``allow_http``
        (Polars' ``aws_*`` spellings work too), ``timeout`` (seconds per request,
        default 30) and ``max_retries`` (default 3). Without keys, boto3's usual chain
        (environment, profile, instance role) is used.
    hash_key, numbers, keys, keep_numbers
        As for :class:`kmsg_analytics.ParquetTrackingStore`.
    compact_rows, compact_files
        Fold automatically once this many snapshots, or this many files, wait past the
        watermark.
    cache_bytes
        Small data files (up to 32 MiB, or an eighth of this, each) are fetched once and
        kept decoded in memory up to about this many bytes; larger files are scanned in
        place by Polars (filters and projections pushed down). ``0`` scans every file.

    Examples
    --------
    >>> try:
    ...     ObjectLakeStore("/tmp/lake", hash_key="doctest-key")
    ... except InvalidRecordError as err:
    ...     print(err)
    invalid path='/tmp/lake': expected an s3://bucket/prefix URL
    """

    _partitioned = True

    def __init__(
        self,
        url: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        hash_key: HashKey | bytes | str | None = None,
        keep_numbers: bool = False,
        numbers: NumberStorage | None = None,
        keys: Any = None,
        compact_rows: int = 250_000,
        compact_files: int = 1_000,
        cache_bytes: int = 512 << 20,
    ) -> None:
        if not isinstance(url, str):
            raise InvalidRecordError("path", url, "an s3://bucket/prefix URL")
        self.store = ObjectStore(url, S3Options.parse(storage_options))
        super().__init__(hash_key=hash_key, keep_numbers=keep_numbers, numbers=numbers, keys=keys)
        self.url = self.store.url
        self._polars_options = self.store.options.for_polars()
        self._compact_rows = compact_rows
        self._compact_files = compact_files
        self._mutex = threading.RLock()
        self._state: LakeState | None = None
        self._view: _View | None = None
        # decoded small files by path, least recently used first
        self._cache: OrderedDict[str, pl.DataFrame] = OrderedDict()
        self._cached_bytes = 0
        self._cache_bytes = cache_bytes
        self._cache_file = min(_CACHE_FILE, cache_bytes // 8)
        self._closed = False
        # group commit: callers queue their rows, one of them publishes the whole queue
        self._queue: list[_Ticket] = []
        self._queue_ready = threading.Condition()
        self._leading = False
        self.init()

    def __repr__(self) -> str:
        return f"ObjectLakeStore({self.url!r})"

    def __enter__(self) -> ObjectLakeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ lifecycle

    def init(self) -> None:
        """Create the lake (version 0 of the log) or open it and check its format and key."""
        with self._mutex:
            if self._state is not None:
                return
            lake = {
                "format": "kmsg-analytics-lake",
                "format_version": FORMAT_VERSION,
                "layout": "object-log",
                "hash_key_id": self.hash_key.key_id,
                "created_at": datetime.now(UTC).isoformat(),
                "datasets": {"history": HISTORY_PARTITION, "current": CURRENT_PARTITION},
            }
            if self.store.get(log_key(0)) is None:
                entry = {
                    "version": 0,
                    "operation": "create",
                    "txn": uuid.uuid4().hex,
                    "committed_at": time.time(),
                    "lake": lake,
                    "seq": 0,
                    "watermark": 0,
                }
                body = _dump(entry)
                if self.store.put(log_key(0), body, if_absent=True) and self.store.put(
                    log_key(0), body, if_absent=True
                ):  # the same bytes again: harmless, but it must have been refused
                    msg = (
                        f"{self.store.options.endpoint_url or 'the S3 endpoint'} ignores "
                        f"conditional writes (If-None-Match) at {self.url}; the object lake "
                        "needs them so that two writers cannot both publish a version: use "
                        "AWS S3 or a server that supports them"
                    )
                    raise LakeError(msg)
            state = self._refresh()
            self._check_lake(state.lake)

    def _check_lake(self, lake: Mapping[str, Any]) -> None:
        check_manifest(lake, self.url, self.hash_key, f"{log_key(0)} has no lake format")

    def close(self) -> None:
        """Forget cached state; every write is already published. Safe to call twice."""
        with self._mutex:
            self._closed = True
            self._cache.clear()
            self._cached_bytes = 0
            self._view = None

    def flush(self) -> None:
        """Nothing to do: every write is published before it returns (store interface)."""

    # ------------------------------------------------------------------ the log

    def _refresh(self) -> LakeState:
        """The newest version of the lake: cached state plus log entries written since."""
        with self._mutex:
            state = self._state
            if state is None:
                state = self._load_checkpoint()
            start = log_key(state.version) if state.version >= 0 else None
            for info in self.store.list(LOG_DIR, start_after=start):
                version = _log_version(info.key)
                if version is None:
                    continue
                if version != state.version + 1:
                    msg = (
                        f"the log of {self.url} jumps from version {state.version} to {version}: "
                        f"{log_key(state.version + 1)} is missing; restore it from a backup "
                        "(a versioned bucket keeps deleted objects)"
                    )
                    raise LakeCorruptError(msg)
                state = state.apply(self._read_entry(version))
            if state.version < 0:
                msg = f"{self.url} holds no lake ({log_key(0)} is missing)"
                raise LakeFormatError(msg)
            if self._state is None or state.version != self._state.version:
                self._state = state
                self._view = None
            return state

    def _load_checkpoint(self) -> LakeState:
        empty = LakeState(version=-1, lake={}, files={})
        pointer = self.store.get(LAST_CHECKPOINT)
        if pointer is None:
            return empty
        try:
            version = int(json.loads(pointer)["version"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable %s of %s", LAST_CHECKPOINT, self.url)
            return empty
        body = self.store.get(f"{CHECKPOINT_DIR}{version:020d}.json")
        if body is None:
            return empty
        return LakeState.from_json(json.loads(body))

    def _read_entry(self, version: int) -> dict[str, Any]:
        body = self.store.get(log_key(version))
        if body is None:
            msg = f"{self.store.object_url(log_key(version))} vanished while the log was read"
            raise LakeCorruptError(msg)
        try:
            entry = json.loads(body)
        except ValueError as err:
            msg = (
                f"{self.store.object_url(log_key(version))} is not valid JSON ({err}); "
                "restore it from a backup"
            )
            raise LakeCorruptError(msg) from err
        if not isinstance(entry, dict) or entry.get("version") != version:
            msg = (
                f"{self.store.object_url(log_key(version))} is not a log entry of version {version}"
            )
            raise LakeCorruptError(msg)
        return entry

    def _commit(self, build: Callable[[LakeState], dict[str, Any] | None]) -> LakeState | None:
        """Publish the entry ``build(state)`` as the next version, retrying lost races.

        ``build`` is called again with the newer state after each lost race and may return
        ``None`` to give up (nothing is then published).
        """
        with self._mutex:
            state = self._state or self._refresh()
            for _ in range(_COMMIT_ATTEMPTS):
                entry = build(state)
                if entry is None:
                    return None
                version = state.version + 1
                txn = uuid.uuid4().hex
                entry = {
                    **entry,
                    "version": version,
                    "txn": txn,
                    "committed_at": time.time(),
                }
                if self.store.put(log_key(version), _dump(entry), if_absent=True) or (
                    self._read_entry(version).get("txn") == txn  # a retried PUT that won
                ):
                    state = state.apply(entry)
                    self._state = state
                    self._view = None
                    self._maybe_checkpoint(state)
                    return state
                state = self._refresh()
            msg = (
                f"could not publish to {self.url}: lost the race for a log version "
                f"{_COMMIT_ATTEMPTS} times; too many writers at once? Retry later"
            )
            raise LakeError(msg)

    def _maybe_checkpoint(self, state: LakeState) -> None:
        if state.version - max(state.checkpoint, 0) < CHECKPOINT_EVERY:
            return
        try:
            key = f"{CHECKPOINT_DIR}{state.version:020d}.json"
            self.store.put(key, _dump(state.to_json()))
            self.store.put(LAST_CHECKPOINT, _dump({"version": state.version}))
        except LakeError:  # the commit stands; a later writer checkpoints
            log.warning("could not write a checkpoint of %s", self.url, exc_info=True)
            return
        self._state = replace(state, checkpoint=state.version)

    # ------------------------------------------------------------------ writes

    def upsert(self, record: TrackingRecord, *, recorded_at: int | None = None) -> None:
        """Record one send snapshot; published (durable) when this returns."""
        row = record_to_row(record, kind="send", recorded_at=recorded_at or _now_micros())
        self._append(rows_to_table([row]))

    def append_snapshots(
        self,
        records: Sequence[TrackingRecord],
        *,
        kind: SnapshotKind = "poll",
        recorded_at: int | None = None,
    ) -> None:
        """Append one snapshot per record as one file and one log entry (durable on return)."""
        if not records:
            return
        now = recorded_at or _now_micros()
        self._append(rows_to_table([record_to_row(r, kind=kind, recorded_at=now) for r in records]))

    def append_table(
        self, table: pa.Table, *, kind: SnapshotKind = "load", recorded_at: int | None = None
    ) -> None:
        """Publish a validated Arrow table of lake rows as one file and one log entry."""
        if not isinstance(table, pa.Table) or table.schema.names != SNAPSHOT_SCHEMA.names:
            shown = table.schema.names if isinstance(table, pa.Table) else table
            raise InvalidRecordError("table", shown, "an Arrow table with the lake's columns")
        if table.num_rows == 0:
            return
        n = table.num_rows
        now = pa.scalar(recorded_at or _now_micros(), pa.int64()).cast(
            SNAPSHOT_SCHEMA.field("recorded_at").type
        )
        table = table.set_column(
            SNAPSHOT_SCHEMA.get_field_index("snapshot_kind"),
            "snapshot_kind",
            pa.array([kind] * n, pa.string()),
        ).set_column(
            SNAPSHOT_SCHEMA.get_field_index("recorded_at"), "recorded_at", pa.repeat(now, n)
        )
        self._append(table)

    def _append(self, table: pa.Table) -> None:
        """Publish ``table``; concurrent callers share one file and one log entry.

        Each call returns once its rows are published (or raises, and then none of the
        rows of its batch is acknowledged).
        """
        try:
            table = table.cast(SNAPSHOT_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError) as err:
            raise InvalidRecordError("table", str(err), "rows in the lake's schema") from err
        for column in SNAPSHOT_SCHEMA:
            if not column.nullable and table.column(column.name).null_count:
                raise InvalidRecordError(column.name, None, "a value in every row")
        if self._closed:
            msg = f"{self!r} is closed"
            raise LakeError(msg)
        ticket = _Ticket(table)
        with self._queue_ready:
            self._queue.append(ticket)
        while True:
            with self._queue_ready:
                while not ticket.done and self._leading:
                    self._queue_ready.wait()
                if ticket.done:
                    break
                self._leading = True
                batch, self._queue = self._queue, []
            error: BaseException | None = None
            try:
                self._publish(pa.concat_tables([t.table for t in batch]))
            except BaseException as err:
                error = err
            with self._queue_ready:
                for t in batch:
                    t.done, t.error = True, error
                self._leading = False
                self._queue_ready.notify_all()
            if error is None:
                self._maybe_compact()
        if ticket.error is not None:
            raise ticket.error

    def _publish(self, table: pa.Table) -> None:
        with self._mutex:
            if self._closed:
                msg = f"{self!r} is closed"
                raise LakeError(msg)
            staged: DataFile | None = None
            stored_at = 0.0

            def build(state: LakeState) -> dict[str, Any]:
                # the file carries its seq numbers: after a lost race it is written again
                nonlocal staged, stored_at
                lo, hi = state.seq + 1, state.seq + table.num_rows
                too_old = time.monotonic() - stored_at > MAX_COMMIT_DELAY
                if staged is not None and (staged.lo != lo or too_old):
                    self._discard([staged.path])
                    staged = None
                if staged is None:
                    staged = self._write_history(table, lo, hi)
                    stored_at = time.monotonic()
                return {
                    "operation": "append",
                    "add": [staged.to_json()],
                    "seq": hi,
                    "watermark": state.watermark,
                }

            self._commit(build)

    def _write_history(self, table: pa.Table, lo: int, hi: int) -> DataFile:
        table = table.set_column(0, "seq", pa.array(range(lo, hi + 1), pa.int64()))
        table = table.sort_by([("requested_at", "ascending"), ("seq", "ascending")])
        day = datetime.now(UTC).date().isoformat()
        path = (
            f"history/{HISTORY_PARTITION}={day}/b-{lo:020d}-{hi:020d}-{uuid.uuid4().hex[:12]}"
            ".parquet"
        )
        body = _parquet(table)
        self.store.put(path, body)
        f = DataFile(path, "history", table.num_rows, len(body), lo, hi, day)
        self._remember(f, pl.from_arrow(table))  # type: ignore[arg-type]
        return f

    def _discard(self, paths: Iterable[str]) -> None:
        """Best effort: delete objects no log entry names (a compaction would, later)."""
        try:
            self.store.delete(list(paths))
        except LakeError:
            log.warning("could not delete unpublished objects of %s", self.url, exc_info=True)

    # ------------------------------------------------------------------ reads

    def _scan(self, files: Sequence[DataFile], *, hive: str | None) -> pl.LazyFrame:
        """The rows of ``files`` as one lazy frame (with the partition column ``hive``).

        Small files are fetched once and kept decoded (objects never change); large
        ones are scanned where they are, so filters and projections push down.
        """
        schema = dict(_CURRENT_SCHEMA if hive is None and _is_open(files) else POLARS_SCHEMA)
        if hive is not None:
            schema[hive] = pl.Date
        limit = self._cache_file
        small = [f for f in files if f.bytes <= limit]
        big = [f for f in files if f.bytes > limit]
        parts: list[pl.LazyFrame] = []
        if small:
            frames = self._frames(small)
            if hive is not None:
                frames = [
                    frame.with_columns(pl.lit(_day(f)).alias(hive))
                    for f, frame in zip(small, frames, strict=True)
                ]
            parts.append(pl.concat(frames, how="vertical", rechunk=False).lazy())
        if big:
            parts.append(
                pl.scan_parquet(
                    [self.store.object_url(f.path) for f in big],
                    schema={k: v for k, v in schema.items() if k != hive},
                    missing_columns="insert",
                    hive_partitioning=hive is not None,
                    hive_schema={hive: pl.Date} if hive is not None else None,
                    glob=False,
                    storage_options=self._polars_options,
                )
            )
        if not parts:
            return pl.LazyFrame(schema=schema)
        return parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical")

    def _scan_open(self, files: Sequence[DataFile]) -> pl.LazyFrame:
        """The open set (its files carry ``requested_date`` as a column)."""
        if not files:
            return pl.LazyFrame(schema=_CURRENT_SCHEMA)
        return self._scan(files, hive=None)

    def _frames(self, files: Sequence[DataFile]) -> list[pl.DataFrame]:
        """``files`` decoded: from the cache, else fetched (in parallel) and cached."""
        with self._mutex:
            missing = [f for f in files if f.path not in self._cache]
            if missing:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
                    fetched = list(pool.map(self._fetch, missing))
                for f, frame in zip(missing, fetched, strict=True):
                    self._cache[f.path] = frame
                    self._cached_bytes += int(frame.estimated_size())
            out = []
            for f in files:
                self._cache.move_to_end(f.path)
                out.append(self._cache[f.path])
            self._evict(keep=len(files))
            return out

    def _remember(self, f: DataFile, frame: pl.DataFrame) -> None:
        """Keep a file this store just wrote, decoded, so reading it costs no request."""
        if f.bytes > self._cache_file:
            return
        columns: dict[Any, Any] = dict(_CURRENT_SCHEMA if f.dataset == "open" else POLARS_SCHEMA)
        with self._mutex:
            frame = frame.select(list(columns)).cast(columns)
            self._cache[f.path] = frame
            self._cached_bytes += int(frame.estimated_size())
            self._evict(keep=1)

    def _evict(self, *, keep: int) -> None:
        """Drop least recently used files beyond the budget (never the ``keep`` newest)."""
        while self._cached_bytes > self._cache_bytes and len(self._cache) > keep:
            _path, frame = self._cache.popitem(last=False)
            self._cached_bytes -= int(frame.estimated_size())

    def _delta_rows(self, state: LakeState) -> pl.DataFrame:
        """Decoded snapshots past the watermark."""
        files = [f for f in state.of("history") if f.hi > state.watermark]
        if not files:
            return pl.DataFrame(schema=POLARS_SCHEMA)
        frames = self._frames(files)
        return pl.concat(frames, how="vertical").filter(pl.col("seq") > state.watermark)

    def _fetch(self, f: DataFile) -> pl.DataFrame:
        body = self.store.get(f.path)
        url = self.store.object_url(f.path)
        if body is None:
            msg = (
                f"{url} is named by the log of {self.url} but does not exist: it was deleted "
                "outside kmsg-analytics; restore it from a backup or versioned bucket"
            )
            raise LakeCorruptError(msg)
        columns: dict[Any, Any] = dict(_CURRENT_SCHEMA if f.dataset == "open" else POLARS_SCHEMA)
        try:
            frame = pl.read_parquet(io.BytesIO(body))
            return frame.select(list(columns)).cast(columns)
        except Exception as err:
            msg = f"{url} cannot be read as a lake file ({type(err).__name__}: {err})"
            raise LakeCorruptError(msg) from err

    def _current_view(self) -> _View:
        """The newest state and the current rows of every message changed past the watermark."""
        with self._mutex:
            state = self._refresh()
            if self._view is not None and self._view.state.version == state.version:
                return self._view
            view = _View(state)
            delta = self._delta_rows(state)
            if delta.height:
                ids = delta.select("message_id").unique()
                base = self._scan(state.of("current"), hive=CURRENT_PARTITION)
                old = self._collect(base.join(ids.lazy(), on="message_id", how="semi"))
                combined = pl.concat([old.drop(CURRENT_PARTITION), delta], how="vertical")
                day = pl.col("requested_at").dt.date().alias(CURRENT_PARTITION)
                winners = latest(combined.lazy()).with_columns(day).collect()
                days = pl.concat(
                    [old.get_column(CURRENT_PARTITION), winners.get_column(CURRENT_PARTITION)]
                )
                view.winners = winners
                view.days = days.unique().sort().to_list()
            self._view = view
            return view

    def current(self, flt: RecordFilter | None = None) -> pl.LazyFrame:
        """Current records (all columns plus ``requested_date``) of the newest version, lazily.

        With a requested-at window in ``flt`` only that window's files are read.
        """
        view = self._current_view()
        files = view.state.of("current")
        scope = _window_days(flt)
        if scope is not None:
            files = [f for f in files if f.day is not None and date.fromisoformat(f.day) in scope]
        base = self._scan(files, hive=CURRENT_PARTITION)
        if view.winners is None:
            return base
        ids = view.winners.lazy().select("message_id")
        in_days = pl.col(CURRENT_PARTITION).is_in(view.days)
        return pl.concat(
            [
                base.filter(~in_days),
                base.filter(in_days).join(ids, on="message_id", how="anti"),
                view.winners.lazy(),
            ],
            how="vertical_relaxed",
        )

    def _open(self) -> pl.LazyFrame:
        view = self._current_view()
        base = self._scan_open(view.state.of("open"))
        if view.winners is None:
            return base
        ids = view.winners.lazy().select("message_id")
        pending = view.winners.lazy().filter(pl.col("status").is_in(POLLABLE_STATUSES))
        return pl.concat(
            [base.join(ids, on="message_id", how="anti"), pending], how="vertical_relaxed"
        )

    def history(self) -> pl.LazyFrame:
        """Every snapshot of the newest version, with ``ingest_date``."""
        return self._scan(self._refresh().of("history"), hive=HISTORY_PARTITION)

    def _collect(self, frame: pl.LazyFrame) -> pl.DataFrame:
        try:
            return frame.collect()
        except (pl.exceptions.PolarsError, OSError) as err:
            raise self._read_error(err) from err

    def _read_error(self, err: BaseException) -> LakeError:
        endpoint = self.store.options.endpoint_url or "the default AWS S3 endpoint"
        msg = (
            f"reading {self.url} from {endpoint} failed: {type(err).__name__}: {err}. Check "
            "that the endpoint is up and reachable and that no lake object was deleted "
            "outside kmsg-analytics, then retry"
        )
        return LakeUnavailableError(msg)

    def _retrying(self, read: Callable[[], _T]) -> _T:
        """Run a read again on a newer version when a file it listed went away."""
        for attempt in range(_READ_ATTEMPTS):
            try:
                return read()
            except (pl.exceptions.PolarsError, OSError) as err:
                if attempt == _READ_ATTEMPTS - 1:
                    raise self._read_error(err) from err
                with self._mutex:
                    self._view = None
        raise AssertionError  # pragma: no cover - the loop returns or raises

    # ------------------------------------------------------------------ compaction

    def _maybe_compact(self) -> None:
        state = self._state
        if state is None:
            return
        waiting = [f for f in state.of("history") if f.hi > state.watermark]
        if state.seq - state.watermark >= self._compact_rows or len(waiting) >= self._compact_files:
            self.compact()

    def compact(
        self,
        *,
        history: bool = True,
        orphan_grace: timedelta = DEFAULT_GRACE,
        progress: Callable[[str], None] | None = None,
    ) -> CompactionReport:
        """Fold snapshots into the current state, merge small history files, collect garbage.

        The new files are published by one log entry that adds them and removes the
        files they replace, so readers see the old set or the new one, never a mix.
        Objects no entry names (a crashed writer's) and files removed by earlier
        compactions are deleted once older than ``orphan_grace``; pass a zero grace only
        when no other writer is running.
        """
        started = time.perf_counter()
        with self._mutex:
            if self._closed:
                msg = f"{self!r} is closed"
                raise LakeError(msg)
            state = self._refresh()
            before = len(state.of("history"))
            forget = self._collect_garbage(state, orphan_grace)
            for _ in range(5):
                plan = self._plan(state, history=history, progress=progress)
                if not plan.add and not plan.remove and not forget:
                    return CompactionReport(0, 0, before, before, time.perf_counter() - started)
                base = state

                def build(
                    s: LakeState, plan: _Plan = plan, base: LakeState = base
                ) -> dict[str, Any] | None:
                    if s.watermark != base.watermark or any(p not in s.files for p in plan.remove):
                        return None  # another compaction came first: plan again
                    return {
                        "operation": "compact",
                        "add": [f.to_json() for f in plan.add],
                        "remove": plan.remove,
                        "forget": forget,
                        "seq": s.seq,
                        "watermark": plan.watermark,
                    }

                done = self._commit(build)
                if done is not None:
                    after = len(done.of("history"))
                    elapsed = time.perf_counter() - started
                    return CompactionReport(plan.rows, plan.rewritten, before, after, elapsed)
                self._discard([f.path for f in plan.add])
                state = self._refresh()
            msg = f"could not compact {self.url}: other compactions kept winning; retry later"
            raise LakeError(msg)

    def _plan(
        self, state: LakeState, *, history: bool, progress: Callable[[str], None] | None
    ) -> _Plan:
        """Write the files of a compaction of ``state`` (not yet published)."""
        plan = _Plan(watermark=state.watermark)
        tag = f"{state.version + 1:020d}"
        delta = self._delta_rows(state)
        if delta.height:
            self._fold(state, delta, plan, tag, progress)
        plan.watermark = state.seq
        if history:
            self._merge_history(state, plan, progress)
        return plan

    def _fold(
        self,
        state: LakeState,
        delta: pl.DataFrame,
        plan: _Plan,
        tag: str,
        progress: Callable[[str], None] | None,
    ) -> None:
        ids = delta.select("message_id").unique().lazy()
        currents = {f.day: f for f in state.of("current")}
        old = self._collect(
            self._scan(list(currents.values()), hive=CURRENT_PARTITION).join(
                ids, on="message_id", how="semi"
            )
        )
        combined = pl.concat([old.drop(CURRENT_PARTITION), delta], how="vertical")
        winners = latest(combined.lazy()).collect()
        day_of = pl.col("requested_at").dt.date()
        days = pl.concat([old.get_column(CURRENT_PARTITION), winners.select(day_of).to_series()])
        touched: list[date] = days.unique().sort().to_list()
        open_parts: list[pl.DataFrame] = []
        for i, day in enumerate(touched):
            if progress is not None:
                progress(f"folding {day} ({i + 1}/{len(touched)})")
            key = day.isoformat()
            parts = [winners.lazy().filter(day_of == day)]
            if key in currents:
                old_file = self._scan([currents[key]], hive=None)
                parts.insert(0, old_file.join(ids, on="message_id", how="anti"))
                plan.remove.append(currents[key].path)
            merged = self._collect(pl.concat(parts, how="vertical_relaxed").sort("requested_at"))
            plan.rewritten += 1
            plan.rows += merged.height
            if merged.height:
                path = (
                    f"current/{CURRENT_PARTITION}={key}/part-{tag}-{uuid.uuid4().hex[:12]}.parquet"
                )
                plan.add.append(self._put_frame(path, "current", merged, day=key))
            open_parts.append(
                merged.filter(pl.col("status").is_in(POLLABLE_STATUSES)).with_columns(
                    pl.lit(day).alias(CURRENT_PARTITION)
                )
            )
        old_open = state.of("open")
        kept = self._collect(
            self._scan_open(old_open).filter(~pl.col(CURRENT_PARTITION).is_in(touched))
        )
        frames = [f for f in [kept, *open_parts] if f.height]
        opened = (
            pl.concat(frames, how="vertical_relaxed")
            if frames
            else pl.DataFrame(schema=_CURRENT_SCHEMA)
        )
        plan.remove.extend(f.path for f in old_open)
        path = f"open/part-{tag}-{uuid.uuid4().hex[:12]}.parquet"
        plan.add.append(self._put_frame(path, "open", opened, day=None))

    def _merge_history(
        self, state: LakeState, plan: _Plan, progress: Callable[[str], None] | None
    ) -> None:
        by_day: dict[str, list[DataFile]] = {}
        for f in state.of("history"):
            if f.hi <= plan.watermark and f.bytes < _BIG_FILE:
                by_day.setdefault(f.day or "", []).append(f)
        for day, files in sorted(by_day.items()):
            if len(files) < 2:
                continue
            if progress is not None:
                progress(f"merging history {day} ({len(files)} files)")
            merged = self._collect(self._scan(files, hive=None))
            lo, hi = min(f.lo for f in files), max(f.hi for f in files)
            path = (
                f"history/{HISTORY_PARTITION}={day}/c-{lo:020d}-{hi:020d}-"
                f"{uuid.uuid4().hex[:12]}.parquet"
            )
            f = self._put_frame(path, "history", merged, day=day)
            plan.add.append(replace(f, lo=lo, hi=hi))
            plan.remove.extend(f.path for f in files)

    def _put_frame(
        self, path: str, dataset: str, frame: pl.DataFrame, *, day: str | None
    ) -> DataFile:
        schema = SNAPSHOT_SCHEMA
        if dataset == "open":
            schema = schema.append(pa.field(CURRENT_PARTITION, pa.date32()))
        table = frame.select(schema.names).to_arrow().cast(schema)
        body = _parquet(table)
        self.store.put(path, body)
        f = DataFile(path, dataset, table.num_rows, len(body), day=day)
        self._remember(f, frame.select(schema.names))
        return f

    def _collect_garbage(self, state: LakeState, grace: timedelta) -> list[str]:
        """Delete unpublished and long-removed objects; the tombstones to forget."""
        now = time.time()
        limit = now - grace.total_seconds()
        doomed: list[str] = []
        seen: set[str] = set()
        for prefix in ("history/", "current/", "open/"):
            for info in self.store.list(prefix):
                seen.add(info.key)
                if info.key in state.files:
                    continue
                removed_at = state.removed.get(info.key)
                born = info.modified.timestamp()
                if (removed_at if removed_at is not None else born) <= limit:
                    doomed.append(info.key)
        if doomed:
            log.info("deleting %d unpublished or replaced objects of %s", len(doomed), self.url)
            self.store.delete(doomed)
        return sorted(
            p for p, at in state.removed.items() if at <= limit and (p in doomed or p not in seen)
        )

    def manifest(self) -> dict[str, Any]:
        """The newest version and the object URLs it names, for engines that read files.

        A consistent snapshot is exactly these files: ``current`` (hive-partitioned by
        ``requested_date``) holds each message's state up to ``watermark``; ``history``
        (by ``ingest_date``) every snapshot, those with ``seq > watermark`` still to be
        merged over ``current`` (see ``docs/object-storage.md``).
        """
        state = self._refresh()
        return {
            "url": self.url,
            "version": state.version,
            "seq": state.seq,
            "watermark": state.watermark,
            **{
                name: [self.store.object_url(f.path) for f in state.of(name)]
                for name in ("history", "current", "open")
            },
        }

    def stats(self) -> dict[str, int]:
        """File and row counts of the newest version (for benchmarks and reports)."""
        state = self._refresh()
        return {
            "version": state.version,
            "history_files": len(state.of("history")),
            "current_files": len(state.of("current")),
            "seq": state.seq,
            "watermark": state.watermark,
            "pending": 0,
        }


@dataclass(slots=True)
class _Ticket:
    """Rows waiting to be published, and how their publication went."""

    table: pa.Table
    done: bool = False
    error: BaseException | None = None


@dataclass(slots=True)
class _Plan:
    """The files a compaction wrote and the files they replace."""

    watermark: int
    add: list[DataFile] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    rows: int = 0
    rewritten: int = 0


def _window_days(flt: RecordFilter | None) -> tuple[date, ...] | None:
    """The requested days a filter's window covers (``None``: no window, or too wide)."""
    if flt is None or flt.requested_at_from is None or flt.requested_at_to is None:
        return None
    first, last = flt.requested_at_from.date(), flt.requested_at_to.date()
    if last < first:
        return ()
    n = (last - first).days + 1
    return tuple(first + timedelta(days=i) for i in range(n)) if n <= 3660 else None


def _is_open(files: Sequence[DataFile]) -> bool:
    return bool(files) and files[0].dataset == "open"


def _day(f: DataFile) -> date:
    return date.fromisoformat(f.day or "")


def _log_version(key: str) -> int | None:
    name = key.removeprefix(LOG_DIR)
    stem = name.removesuffix(".json")
    if "/" in name or stem == name or not stem.isdigit():
        return None
    return int(stem)


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _now_micros() -> int:
    return time.time_ns() // 1000
