"""Steps shared by retention, key rotation and doctor: open a lake, fold and lock it, name files."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ._errors import InvalidRecordError
from ._lakefs import LakePaths, writer_lock
from ._schema import CURRENT_PARTITION

if TYPE_CHECKING:
    from ._lake import ParquetTrackingStore
    from ._phone import HashKey

__all__ = [
    "folded_and_locked",
    "lake_files",
    "lake_paths",
    "lake_root",
    "opened_lake",
    "relative",
]

_LAKE: Final = "lake"


def lake_paths(
    lake: ParquetTrackingStore | str | os.PathLike[str], field: str = _LAKE
) -> LakePaths:
    """The paths of ``lake`` (a store, or the path of a directory holding ``_lake.json``).

    ``field`` names the argument in the error raised for anything else.
    """
    from ._lake import ParquetTrackingStore

    if isinstance(lake, ParquetTrackingStore):
        return lake.paths
    if isinstance(lake, str | os.PathLike):
        paths = LakePaths(Path(lake))
        if not paths.manifest.exists():
            raise InvalidRecordError(_LAKE, str(lake), "a directory holding a lake (_lake.json)")
        return paths
    raise InvalidRecordError(field, lake, "a ParquetTrackingStore or the path of a lake")


@contextlib.contextmanager
def opened_lake(
    lake: ParquetTrackingStore | str | os.PathLike[str],
    hash_key: HashKey | bytes | str | None,
    *,
    field: str = _LAKE,
    **options: Any,
) -> Iterator[ParquetTrackingStore]:
    """``lake`` as a store: the store given, or one opened on the path (closed after)."""
    from ._lake import ParquetTrackingStore

    if isinstance(lake, ParquetTrackingStore):
        yield lake
        return
    store = ParquetTrackingStore(lake_paths(lake, field).root, hash_key=hash_key, **options)
    try:
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def folded_and_locked(store: ParquetTrackingStore) -> Iterator[None]:
    """Fold pending snapshots, then hold the writer lock with nothing left to fold.

    Publishes what dead writers left in their logs (``compact`` does), folds again
    what was published between that fold and taking the lock, and makes the store
    forget what it cached of the files, which the caller is about to rewrite.
    """
    store.compact(history=False)  # takes the writer lock itself
    with store._mutex, writer_lock(store.paths):
        try:
            state = store._recover()
            if int(state["seq"]) > int(state["watermark"]):  # published since our fold
                store._fold_locked(state, None)
                _forget_cache(store)
            yield
        finally:
            _forget_cache(store)


def _forget_cache(store: ParquetTrackingStore) -> None:
    store._cache_w = -1
    store._winners = None


def lake_files(paths: LakePaths) -> Iterator[tuple[str, Path]]:
    """``(dataset, path)`` of every Parquet file of the lake's datasets."""
    for f in paths.history_files():
        yield "history", f.path
    yield from (
        ("current", p) for p in sorted(paths.current.glob(f"{CURRENT_PARTITION}=*/part-0.parquet"))
    )
    if paths.open_file().exists():
        yield "open", paths.open_file()


def lake_root(path: Path) -> Path | None:
    """The lake directory above a lake file (the one holding ``_lake.json``), if any."""
    for parent in path.parents:
        if (parent / "_lake.json").exists():
            return parent
    return None


def relative(paths: LakePaths, path: Path) -> str:
    """``path`` relative to the lake's root (as given when it is outside)."""
    try:
        return str(path.relative_to(paths.root))
    except ValueError:
        return str(path)
