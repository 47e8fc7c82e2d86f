"""``doctor``: :func:`check_lake`, the entry point that checks a lake and repairs it on request.

:func:`check_lake` reads every Parquet file of the lake whole (footer and every row
group), compares its columns with the lake's schema, checks the sequence numbers of
the history (unique, covering ``1..seq``, inside the range a file's name states), that
every row sits in the partition its values say, that ``current/`` holds one row per
message and ``open/`` exactly its non-terminal rows, and looks for leftovers: temporary
files, stray files in the datasets, logs of writers that died. It holds the writer lock
while it looks, so a live writer is never mistaken for debris.

With ``repair=True`` a damaged or stray file is *moved* to
``<lake>/_quarantine/<timestamp>/`` (never deleted), what can be derived again is
rebuilt (a current partition from the history, the open set from the current state),
and the report says what the lake lost.

The check lives in :mod:`._doctor_scan`, the repair in :mod:`._doctor_repair`, the
report in :mod:`._doctor_report`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from ._doctor_repair import _repair
from ._doctor_report import DoctorReport, Finding
from ._doctor_scan import _check
from ._doctor_scan import check_key_value_metadata as check_key_value_metadata  # for _lake
from ._errors import LakeCorruptError
from ._lakefs import LakePaths, writer_lock
from ._phone import HashKey

__all__ = ["DoctorReport", "Finding", "check_lake", "lake_read_error"]


@contextlib.contextmanager
def _maybe_locked(paths: LakePaths) -> Iterator[bool]:
    if not paths.manifest.exists():  # not a lake: leave no lock file behind
        yield False
        return
    try:
        lock = writer_lock(paths)
        lock.__enter__()
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        lock.__exit__(None, None, None)


def check_lake(
    path: str | os.PathLike[str],
    *,
    hash_key: HashKey | bytes | str | None = None,
    keys: Any = None,
    repair: bool = False,
) -> DoctorReport:
    """Check every file of a lake; with ``repair=True`` quarantine and rebuild.

    Parameters
    ----------
    path
        The lake's directory.
    hash_key
        The number-hash key, to check it is the lake's (and, with ``repair``, to publish
        the rows of dead writers' logs). Optional.
    keys
        Encryption keys (anything :func:`kmsg_analytics.ParquetTrackingStore` takes as
        ``keys``) to check that every key id in the lake is known. Optional.
    repair
        Move damaged and stray files to ``<lake>/_quarantine/<timestamp>/`` (never delete),
        rebuild current partitions from the history and the open set from the current
        state, correct ``_state.json``; then check again.

    Returns
    -------
    DoctorReport
        ``ok`` is true when no problem remains; ``lines()`` and ``str()`` give plain text.

    Examples
    --------
    >>> import tempfile
    >>> from kmsg_analytics import ParquetTrackingStore
    >>> lake = tempfile.mkdtemp()
    >>> ParquetTrackingStore(lake, hash_key="doctest-key").close()
    >>> check_lake(lake, hash_key="doctest-key").ok
    True
    """
    paths = LakePaths(Path(path))
    if not paths.root.is_dir():
        finding = Finding("problem", "manifest", f"there is no directory {paths.root}")
        return DoctorReport(paths.root, (finding,))
    actions: list[str] = []
    lost: list[str] = []
    quarantine: Path | None = None
    with _maybe_locked(paths) as locked:
        scan = _check(paths, hash_key, keys)
        if not locked:
            scan.add("info", "lock", "the writer lock could not be taken (read-only lake?)")
        if repair:
            quarantine = _repair(scan, paths, actions, lost)
    if repair and scan.dead_wals:
        if hash_key is None:
            actions.append(
                f"not published: {len(scan.dead_wals)} dead writers' logs need the lake's "
                "hash key (pass hash_key= or set KMSG_ANALYTICS_HASH_KEY)"
            )
        else:
            from ._lake import ParquetTrackingStore

            try:
                ParquetTrackingStore(paths.root, hash_key=hash_key).close()
                n = sum(rows for _i, _p, rows in scan.dead_wals)
                actions.append(f"published {n:,} acknowledged rows from dead writers' logs")
            except Exception as err:
                actions.append(f"could not publish the dead writers' logs: {err}")
    after: tuple[Finding, ...] | None = None
    if repair:
        with _maybe_locked(paths):
            after = tuple(_check(paths, hash_key, keys).findings)
    return DoctorReport(
        paths.root,
        tuple(scan.findings),
        repaired=repair,
        actions=tuple(actions),
        lost=tuple(lost),
        after=after,
        quarantine=quarantine,
        files_checked=scan.files,
        rows_checked=scan.rows,
        key_ids=tuple(sorted(scan.kids)),
    )


# --------------------------------------------------------------------------- for queries


def lake_read_error(
    root: str | os.PathLike[str], err: BaseException, files: Iterable[Path] | None = None
) -> LakeCorruptError | None:
    """The error to raise when reading the lake failed with ``err``, naming the bad file.

    Checks the footer of each of ``files`` (default: every file of the datasets) and
    returns a :class:`LakeCorruptError` naming the first that cannot be read, with the
    ``doctor`` command to run; ``None`` when ``err`` is no sign of a damaged file: an
    ``OSError`` with an ``errno`` (a file replaced while read, a full disk, a permission)
    or anything but a Polars ``ComputeError`` or an ``OSError`` when every footer reads.

    Examples
    --------
    >>> import tempfile
    >>> lake = Path(tempfile.mkdtemp())
    >>> bad = lake / "current" / "requested_date=2026-01-01" / "part-0.parquet"
    >>> bad.parent.mkdir(parents=True)
    >>> _ = bad.write_bytes(b"not parquet")
    >>> err = lake_read_error(lake, OSError("boom"))
    >>> str(bad) in str(err), "kmsg-analytics doctor" in str(err)
    (True, True)
    """
    root = Path(root)
    if isinstance(err, FileNotFoundError) or (isinstance(err, OSError) and err.errno is not None):
        return None  # the system said why (a file replaced while read, a full disk, ...)
    candidates = (
        list(files)
        if files is not None
        else [
            *sorted((root / "history").glob("*/*.parquet")),
            *sorted((root / "current").glob("*/*.parquet")),
            *sorted((root / "open").glob("*.parquet")),
        ]
    )
    for path in candidates:
        try:
            check_key_value_metadata(pq.read_metadata(path))
        except FileNotFoundError:
            continue
        except Exception as footer:
            msg = (
                f"{path} cannot be read ({footer}); run `kmsg-analytics doctor --lake {root}` "
                "to check the lake, and `--repair` to move the file to quarantine"
            )
            return LakeCorruptError(msg)
    if isinstance(err, pl.exceptions.ComputeError | OSError):
        msg = (
            f"a file of the lake {root} cannot be read ({err}); run "
            f"`kmsg-analytics doctor --lake {root}` to find it"
        )
        return LakeCorruptError(msg)
    return None
