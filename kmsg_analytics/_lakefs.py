"""The lake on disk: layout, the writer lock, the state file, atomic publication and the WAL.

Nothing here knows about records or queries; it moves files so that a reader never
sees a half-written file and a killed writer leaves nothing visible behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from ._errors import LakeError

__all__ = [
    "HistoryFile",
    "LakePaths",
    "WriteAheadLog",
    "exchange_supported",
    "publish_together",
    "write_row_groups",
]

log = logging.getLogger("kmsg_analytics.lake")

#: ``b-<lo>-<hi>-<wal>.parquet`` (one published batch) or ``c-<lo>-<hi>.parquet`` (compacted).
_HISTORY_NAME = re.compile(r"^([bc])-(\d{20})-(\d{20})(?:-([0-9a-f]{32}))?\.parquet$")


@dataclass(frozen=True, slots=True)
class HistoryFile:
    """A file of the snapshot history with the sequence range its name carries."""

    path: Path
    ingest_date: date
    lo: int
    hi: int
    wal: str | None


def history_name(lo: int, hi: int, wal: str | None) -> str:
    """The file name of a history batch (``wal=None`` for a compacted file)."""
    if wal is None:
        return f"c-{lo:020d}-{hi:020d}.parquet"
    return f"b-{lo:020d}-{hi:020d}-{wal}.parquet"


class LakePaths:
    """Where everything of one lake lives.

    ``history/ingest_date=YYYY-MM-DD/`` every snapshot exactly once;
    ``current/requested_date=YYYY-MM-DD/part-0.parquet`` latest snapshot per message
    as of the watermark; ``open/part-0.parquet`` the non-terminal part of current;
    ``_staging/`` files being written; ``_wal/`` acknowledged rows not yet published;
    ``_lake.json`` format and key id; ``_state.json`` sequence and watermark.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.history = root / "history"
        self.current = root / "current"
        self.open = root / "open"
        self.staging = root / "_staging"
        self.wal = root / "_wal"
        self.manifest = root / "_lake.json"
        self.state = root / "_state.json"
        self.lockfile = root / "_lock"
        # Parsed history file names per partition folder: a writer lists the unfolded
        # files on every publish, so only names not seen before are parsed again.
        self._parsed: dict[str, dict[str, HistoryFile]] = {}

    def create(self) -> None:
        """Make the directories (idempotent)."""
        for d in (self.history, self.current, self.open, self.staging, self.wal):
            d.mkdir(parents=True, exist_ok=True)

    def current_file(self, day: date) -> Path:
        """The single file of one current partition."""
        return self.current / f"requested_date={day.isoformat()}" / "part-0.parquet"

    def open_file(self) -> Path:
        """The open-set file (non-terminal current records)."""
        return self.open / "part-0.parquet"

    def history_dirs(self, since: date | None = None) -> list[tuple[date, Path]]:
        """History partitions, oldest first, optionally from ``since`` on."""
        out: list[tuple[date, Path]] = []
        try:
            entries = list(os.scandir(self.history))
        except FileNotFoundError:
            return out
        for entry in entries:
            if entry.name.startswith("ingest_date=") and entry.is_dir():
                try:
                    day = date.fromisoformat(entry.name.split("=", 1)[1])
                except ValueError:
                    continue
                if since is None or day >= since:
                    out.append((day, Path(entry.path)))
        out.sort()
        return out

    def history_files(self, since: date | None = None) -> list[HistoryFile]:
        """History files (from ``since`` on), ordered by sequence."""
        files: list[HistoryFile] = []
        for day, folder in self.history_dirs(since):
            known = self._parsed.get(str(folder), {})
            seen: dict[str, HistoryFile] = {}
            for name in os.listdir(folder):
                parsed = known.get(name)
                if parsed is None:
                    m = _HISTORY_NAME.match(name)
                    if not m:
                        continue
                    parsed = HistoryFile(folder / name, day, int(m[2]), int(m[3]), m[4])
                seen[name] = parsed
            self._parsed[str(folder)] = seen
            files.extend(seen.values())
        files.sort(key=lambda f: f.lo)
        return files

    def staging_file(self, suffix: str = ".parquet") -> Path:
        """A fresh path in the staging folder (same filesystem as the datasets)."""
        return self.staging / f"{uuid.uuid4().hex}{suffix}"


def history_rows(f: HistoryFile, watermark: int = 0) -> int:
    """Rows of a history file past ``watermark``, from its name (sequence numbers are dense)."""
    return max(0, f.hi - max(f.lo, watermark + 1) + 1)


# --------------------------------------------------------------------------- Parquet files


def write_row_groups(
    table: pa.Table,
    path: Path,
    ends: Sequence[int],
    *,
    max_rows: int,
    options: Mapping[str, Any],
) -> None:
    """Write ``table`` to ``path`` as one Parquet file whose row groups end at ``ends``.

    ``ends`` are increasing row offsets (the last one is ``table.num_rows``); a group
    longer than ``max_rows`` is split. ``options`` go to :class:`pyarrow.parquet.ParquetWriter`.
    A reader that prunes row groups by their statistics then reads a group's rows only.
    """
    with pq.ParquetWriter(path, table.schema, **options) as writer:
        start = 0
        for end in ends:
            if end > start:
                writer.write_table(table.slice(start, end - start), row_group_size=max_rows)
            start = end
        if start < table.num_rows or table.num_rows == 0:
            writer.write_table(table.slice(start), row_group_size=max_rows)


# --------------------------------------------------------------------------- lock


_thread_locks: dict[str, threading.RLock] = {}
_thread_locks_guard = threading.Lock()


@contextmanager
def writer_lock(paths: LakePaths) -> Iterator[None]:
    """Hold the lake's writer lock (an ``flock``, released by the kernel if we die)."""
    key = str(paths.root.resolve())
    with _thread_locks_guard:
        tlock = _thread_locks.setdefault(key, threading.RLock())
    with tlock:
        fd = os.open(paths.lockfile, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock


# --------------------------------------------------------------------------- small JSON files


def read_json(path: Path, default: dict[str, Any]) -> dict[str, Any]:
    """A small JSON document, or ``default`` when the file does not exist."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return dict(default)
    except ValueError as err:
        msg = f"{path} is not valid JSON ({err}); run `kmsg-analytics doctor --lake {path.parent}`"
        raise LakeError(msg) from err
    if not isinstance(data, dict):
        msg = f"{path} does not hold a JSON object"
        raise LakeError(msg)
    return data


def write_json_atomic(path: Path, data: dict[str, Any], staging: Path) -> None:
    """Replace ``path`` with ``data`` in one rename (readers see old or new, never half)."""
    tmp = staging / f"{uuid.uuid4().hex}.json"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- directory exchange

_libc: Any = None
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange_dirs(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns ``False`` where the system cannot do it; the caller then falls back.
    """
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name, use_errno=True) if name else False
    if not _libc or not hasattr(_libc, "renameat2"):
        return False
    res = _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def replace_dir(new: Path, target: Path, trash: Path) -> None:
    """Put directory ``new`` where ``target`` is, atomically where the OS allows."""
    if not target.exists():
        os.rename(new, target)
        return
    if exchange_dirs(new, target):
        shutil.rmtree(new, ignore_errors=True)
        return
    # fallback: a short window in which the partition is missing (never doubled); a
    # journal beside the trash lets recovery put the old partition back if we die there
    journal = trash.with_name(trash.name + _JOURNAL)
    journal.write_text(json.dumps({"target": str(target), "trash": str(trash)}))
    os.rename(target, trash)
    os.rename(new, target)
    journal.unlink()
    shutil.rmtree(trash, ignore_errors=True)


_JOURNAL = ".replace.json"

#: staging folders whose filesystem swaps directories atomically (probed once each)
_exchange_known: dict[str, bool] = {}


def exchange_supported(staging: Path) -> bool:
    """Whether directories on ``staging``'s filesystem can be swapped atomically.

    Probed once per folder (two empty directories made and swapped in ``staging``).
    """
    key = str(staging)
    known = _exchange_known.get(key)
    if known is None:
        a, b = (staging / f"{uuid.uuid4().hex}.probe" for _ in range(2))
        a.mkdir()
        b.mkdir()
        try:
            known = exchange_dirs(a, b)
        except OSError:
            known = False
        finally:
            for d in (a, b):
                shutil.rmtree(d, ignore_errors=True)
        _exchange_known[key] = known
    return known


def publish_together(files: Sequence[Path], folder: Path, staging: Path) -> None:
    """Move staged ``files`` into ``folder`` at once: a reader sees all of them or none.

    A new directory in ``staging`` gets hard links to ``folder``'s files and the new
    files, then takes ``folder``'s place in one rename (a swap with
    :func:`exchange_dirs`, which :func:`exchange_supported` must allow). Each file
    ``folder`` had keeps its path (the same file under the same name), so a reader that
    listed it before reads it after. Killed before the swap, nothing is visible (the
    staging debris is cleared by the next writer); after it, everything is.
    """
    newdir = staging / f"{uuid.uuid4().hex}.publish"
    newdir.mkdir()
    present = folder.exists()
    if present:
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False):
                os.link(entry.path, newdir / entry.name)
    for f in files:
        os.rename(f, newdir / f.name)
    if not present:
        os.rename(newdir, folder)
        return
    if not exchange_dirs(newdir, folder):
        shutil.rmtree(newdir, ignore_errors=True)
        msg = f"cannot swap {folder} atomically on this filesystem"
        raise OSError(errno.EOPNOTSUPP, msg, str(folder))
    shutil.rmtree(newdir, ignore_errors=True)  # the old directory: links to the same files


def restore_replaced_dirs(staging: Path) -> int:
    """Put back partitions a killed :func:`replace_dir` fallback had moved aside.

    Called under the writer lock before staging is cleared; returns how many came back.
    """
    restored = 0
    for journal in staging.glob(f"*{_JOURNAL}"):
        try:
            entry = json.loads(journal.read_text())
            target, trash = Path(entry["target"]), Path(entry["trash"])
        except (OSError, ValueError, KeyError, TypeError):
            journal.unlink(missing_ok=True)
            continue
        if not target.exists() and trash.exists():
            os.rename(trash, target)
            restored += 1
        journal.unlink(missing_ok=True)
    return restored


# --------------------------------------------------------------------------- write-ahead log


class WriteAheadLog:
    """Rows acknowledged to the caller but not yet published as Parquet.

    One file per writer process, ``_wal/<id>.wal``, one JSON row per line, written
    with a single ``write(2)`` per call so that a process killed at any moment
    leaves only whole lines (a torn last line was never acknowledged). The owner
    holds an ``flock`` on its file: a file nobody holds belongs to a dead writer
    and is replayed by the next one.
    """

    def __init__(self, folder: Path, *, fsync: bool = False) -> None:
        self.folder = folder
        self.fsync = fsync
        self.id: str | None = None
        self._fd: int | None = None

    def append(self, lines: list[bytes]) -> None:
        """Append rows (already JSON, UTF-8); durable against a killed process on return."""
        fd = self._fd
        if fd is None:
            self.id = uuid.uuid4().hex
            path = self.folder / f"{self.id}.wal"
            fd = self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # one line (record_send) is the common case: one concatenation, one write(2)
        data = lines[0] + b"\n" if len(lines) == 1 else b"\n".join(lines) + b"\n"
        n = os.write(fd, data)
        if n < len(data):  # a short write (a signal, a full disk): write the rest
            view = memoryview(data)[n:]
            while view:
                view = view[os.write(fd, view) :]
        if self.fsync:
            os.fsync(fd)

    def rotate(self) -> None:
        """Drop the current file (its rows are published); the next append starts a new one."""
        if self._fd is None:
            return
        path = self.folder / f"{self.id}.wal"
        path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
        self.id = None

    def close(self) -> None:
        """Close without deleting (rows not published stay for recovery)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def orphan_wals(folder: Path, own: str | None) -> Iterator[tuple[str, Path, int]]:
    """WAL files whose writer is gone, each yielded while we hold its lock.

    Yields ``(wal_id, path, fd)``; the caller reads, publishes and deletes the file.
    """
    try:
        entries = sorted(folder.glob("*.wal"))
    except FileNotFoundError:
        return
    for path in entries:
        wal_id = path.stem
        if wal_id == own:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is alive
            yield wal_id, path, fd
        finally:
            os.close(fd)


def read_wal_lines(path: Path) -> list[dict[str, Any]]:
    """Whole JSON lines of a WAL file (a torn last line is ignored)."""
    data = path.read_bytes()
    rows: list[dict[str, Any]] = []
    end = data.rfind(b"\n")
    if end < 0:
        return rows
    for line in data[:end].split(b"\n"):
        if not line:
            continue
        try:
            rows.append(orjson.loads(line))
        except ValueError:
            log.warning("skipping an unreadable line in %s", path)
    return rows
