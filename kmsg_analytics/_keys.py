"""Key rotation: re-seal a lake's encrypted numbers under the current key, and count key ids.

Numbers sealed at rest (``to_enc``/``from_enc``, envelopes ``v1.<key id>.<data>``) carry
the id of the key that sealed them, so a key provider may hold several keys while only
one seals new numbers. :func:`rotate_keys` rewrites every lake file that holds an
envelope under another key, one file at a time: each is written whole to ``_staging/``
and renamed over the original, so a reader sees the old file or the new one, never
half. Every other value of every row (``seq`` included) stays exactly as it was. A
rotation that dies half way leaves files each under the old or the new key, all
readable with the provider's keys; running it again finishes it. :func:`key_usage`
counts envelopes per key id (files and write-ahead logs), to tell when an old key can
be retired.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ._crypto import KEY_ENV, KeyProvider, KeyUnavailableError, NumberCipher, default_key_file
from ._errors import LakeCorruptError
from ._lakefs import LakePaths, read_wal_lines
from ._maintenance import (
    folded_and_locked,
    lake_files,
    lake_paths,
    lake_root,
    opened_lake,
    relative,
)

if TYPE_CHECKING:
    from ._lake import ParquetTrackingStore
    from ._phone import HashKey

__all__ = ["KeyUsage", "RotationResult", "key_usage", "rotate_keys"]

#: The sealed columns and the field name each was sealed for (part of the AEAD data).
ENVELOPE_COLUMNS: Final = MappingProxyType({"to_enc": "to", "from_enc": "from_"})
#: Re-sealed envelopes remembered across files (a number sits in history, current and open).
_MEMO_LIMIT = 1_000_000
_KID = r"^v\d+\.([^.]+)\."
#: Counted in place of a key id for a value in a sealed column that is no envelope.
NOT_AN_ENVELOPE: Final = "(not an envelope)"

Progress = Callable[[str], None]


def _frozen(counts: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(sorted(counts.items())))


@dataclass(frozen=True)
class KeyUsage:
    """How many sealed numbers of a lake are under each encryption key id.

    Attributes
    ----------
    lake
        The lake's directory.
    envelopes
        Envelopes per key id in the lake's published files (history, current and the
        open set; a number counts once per file that holds it).
    by_dataset
        The same per dataset: ``{"history": {kid: n}, "current": ..., "open": ...}``.
    pending
        Envelopes per key id in write-ahead logs (acknowledged, not yet published).
    files
        Parquet files read.
    stale_files
        Files holding an envelope under another key than ``active_kid`` (what
        :func:`rotate_keys` would rewrite); empty when ``active_kid`` is unknown.
    active_kid
        The id new numbers are sealed with, when keys were given.
    known_kids
        Every key id the keys given can open (empty when no keys were given).

    Examples
    --------
    >>> import tempfile
    >>> from kmsg_analytics import ParquetTrackingStore
    >>> lake = tempfile.mkdtemp()
    >>> ParquetTrackingStore(lake, hash_key="doctest-key").close()
    >>> key_usage(lake, keys={"k1": bytes(32)}).lines()[0]
    'no encrypted numbers in the lake (0 files read)'
    """

    lake: Path
    envelopes: Mapping[str, int]
    by_dataset: Mapping[str, Mapping[str, int]]
    pending: Mapping[str, int]
    files: int
    stale_files: tuple[str, ...] = ()
    active_kid: str | None = None
    known_kids: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:
        return (
            f"KeyUsage(lake={str(self.lake)!r}, envelopes={dict(self.envelopes)!r}, "
            f"pending={dict(self.pending)!r}, active_kid={self.active_kid!r})"
        )

    @property
    def kids(self) -> tuple[str, ...]:
        """Every key id found, in files or logs, sorted."""
        return tuple(sorted({*self.envelopes, *self.pending}))

    @property
    def rotated(self) -> bool:
        """Whether every envelope (files and logs) is under ``active_kid``."""
        return self.active_kid is not None and set(self.kids) <= {self.active_kid}

    def can_retire(self, kid: str) -> bool:
        """Whether no envelope in the lake (files and logs) needs key ``kid`` any more."""
        return kid not in self.envelopes and kid not in self.pending

    def lines(self) -> list[str]:
        """The counts in plain words, one line per item."""
        out: list[str] = []
        total = sum(self.envelopes.values())
        if not total and not self.pending:
            return [f"no encrypted numbers in the lake ({self.files} files read)"]
        out.append(f"{total:,} encrypted numbers in {self.files} files")
        for kid in self.kids:
            n = self.envelopes.get(kid, 0)
            parts = ", ".join(
                f"{name} {counts[kid]:,}"
                for name, counts in self.by_dataset.items()
                if kid in counts
            )
            tags = []
            if kid == self.active_kid:
                tags.append("current key")
            elif self.known_kids and kid not in self.known_kids:
                tags.append("NOT in the keys here: cannot be decrypted")
            if self.pending.get(kid):
                tags.append(f"{self.pending[kid]:,} more in write-ahead logs")
            tag = f" [{'; '.join(tags)}]" if tags else ""
            out.append(f"  key {kid}: {n:,}{f' ({parts})' if parts else ''}{tag}")
        if self.active_kid is None:
            out.append("no keys given: the current key is unknown")
        elif self.rotated:
            others = [k for k in self.known_kids if k != self.active_kid]
            retire = f"; keys {', '.join(others)} can be retired" if others else ""
            out.append(f"every number is sealed with the current key {self.active_kid}{retire}")
        else:
            old = [k for k in self.kids if k != self.active_kid]
            out.append(
                f"{len(self.stale_files)} files hold numbers under keys {', '.join(old)}: run "
                f"`kmsg-analytics keys rotate --lake {self.lake}` before retiring them"
            )
            if any(k != self.active_kid for k in self.pending):
                out.append(
                    "write-ahead logs hold numbers under old keys: give every writer the "
                    "current key first (its logs are published when it flushes or restarts)"
                )
        return out


@dataclass(frozen=True)
class RotationResult:
    """What :func:`rotate_keys` did.

    Attributes
    ----------
    active_kid
        The key every envelope was re-sealed with.
    files_rewritten
        Lake files replaced (relative paths, in order).
    envelopes_resealed
        Envelopes re-sealed, per key id they were under before.
    before, after
        :class:`KeyUsage` before and after (``after`` read under the writer lock).
    seconds
        Wall time of the rotation.
    """

    active_kid: str
    files_rewritten: tuple[str, ...]
    envelopes_resealed: Mapping[str, int]
    before: KeyUsage
    after: KeyUsage
    seconds: float

    def __repr__(self) -> str:
        return (
            f"RotationResult(active_kid={self.active_kid!r}, files={len(self.files_rewritten)}, "
            f"resealed={dict(self.envelopes_resealed)!r}, rotated={self.after.rotated})"
        )

    def lines(self) -> list[str]:
        """What was done, in plain words."""
        n = sum(self.envelopes_resealed.values())
        if not self.files_rewritten:
            head = f"nothing to rotate: every number is sealed with key {self.active_kid}"
        else:
            per = ", ".join(f"{k} {v:,}" for k, v in self.envelopes_resealed.items())
            head = (
                f"re-sealed {n:,} numbers ({per}) with key {self.active_kid} in "
                f"{len(self.files_rewritten)} files in {self.seconds:.1f} s"
            )
        return [head, *self.after.lines()]


# --------------------------------------------------------------------------- reading


def _envelope_columns(pf: pq.ParquetFile) -> list[str]:
    return [c for c in ENVELOPE_COLUMNS if c in pf.schema_arrow.names]


def _count_kids(values: pa.ChunkedArray | pa.Array, into: dict[str, int]) -> None:
    series = pl.Series(values)
    if series.dtype == pl.Null or series.null_count() == series.len():
        return
    kids = series.drop_nulls().str.extract(_KID, 1).fill_null(NOT_AN_ENVELOPE)
    for kid, n in kids.value_counts().iter_rows():
        into[kid] = into.get(kid, 0) + int(n)


def _file_kids(path: Path, rel: str) -> dict[str, int] | None:
    """Envelopes per key id in one file (``None`` when the file vanished meanwhile)."""
    counts: dict[str, int] = {}
    try:
        with pq.ParquetFile(path) as pf:
            cols = _envelope_columns(pf)
            if cols:
                table = pf.read(columns=cols)
                for name in cols:
                    _count_kids(table.column(name), counts)
    except FileNotFoundError:
        return None
    except Exception as err:
        msg = (
            f"{rel} cannot be read ({err}); run `kmsg-analytics doctor --lake "
            f"{path_root(path)}` to check it and `--repair` to quarantine it"
        )
        raise LakeCorruptError(msg) from err
    return counts


def path_root(path: Path) -> Path:
    """The lake directory above a lake file (the one holding ``_lake.json``)."""
    return lake_root(path) or path.parent


def _wal_kids(paths: LakePaths) -> dict[str, int]:
    counts: dict[str, int] = {}
    try:
        logs = sorted(paths.wal.glob("*.wal"))
    except FileNotFoundError:  # pragma: no cover - a lake always has _wal/
        return counts
    for log in logs:
        try:
            rows = read_wal_lines(log)
        except FileNotFoundError:
            continue
        for row in rows:
            for name in ENVELOPE_COLUMNS:
                value = row.get(name)
                if isinstance(value, str):
                    kid = NumberCipher.kid_of(value) or NOT_AN_ENVELOPE
                    counts[kid] = counts.get(kid, 0) + 1
    return counts


def _usage(
    paths: LakePaths, provider: KeyProvider | None
) -> tuple[KeyUsage, list[tuple[str, Path]]]:
    """The key usage of the lake, and the files holding envelopes not under the active key."""
    active = provider.active_kid if provider is not None else None
    total: dict[str, int] = {}
    by_dataset: dict[str, dict[str, int]] = {}
    stale: list[tuple[str, Path]] = []
    files = 0
    for dataset, path in lake_files(paths):
        counts = _file_kids(path, relative(paths, path))
        if counts is None:
            continue
        files += 1
        into = by_dataset.setdefault(dataset, {})
        for kid, n in counts.items():
            total[kid] = total.get(kid, 0) + n
            into[kid] = into.get(kid, 0) + n
        if active is not None and any(kid != active for kid in counts):
            stale.append((dataset, path))
    usage = KeyUsage(
        lake=paths.root,
        envelopes=_frozen(total),
        by_dataset=MappingProxyType({d: _frozen(c) for d, c in by_dataset.items() if c}),
        pending=_frozen(_wal_kids(paths)),
        files=files,
        stale_files=tuple(relative(paths, p) for _d, p in stale),
        active_kid=active,
        known_kids=tuple(provider.kids()) if provider is not None else (),
    )
    return usage, stale


def _existing_keys(keys: Any) -> KeyProvider | None:
    """The keys given, else ``$KMSG_ANALYTICS_KEY``, else an existing key file (never made)."""
    from ._crypto import resolve_key_provider

    if keys is not None:
        return resolve_key_provider(keys)
    if os.environ.get(KEY_ENV) or default_key_file().exists():
        return resolve_key_provider(None)
    return None


def key_usage(
    lake: ParquetTrackingStore | str | os.PathLike[str],
    *,
    keys: Any = None,
) -> KeyUsage:
    """Count the lake's sealed numbers per encryption key id (nothing is changed).

    Parameters
    ----------
    lake
        A :class:`~kmsg_analytics.ParquetTrackingStore` or the path of a lake.
    keys
        A key provider, a ``{kid: key}`` mapping, a callable returning one, or a key
        file; by default ``$KMSG_ANALYTICS_KEY`` or the key file when there is one. Only
        key ids are used: with keys, the report names the current key and the files an
        old key still seals. No key is needed to count.

    Examples
    --------
    >>> import tempfile
    >>> from kmsg_analytics import DeliveryTrackingService, ParquetTrackingStore
    >>> class Gateway:
    ...     id = "solapi"
    >>> lake = tempfile.mkdtemp()
    >>> store = ParquetTrackingStore(lake, hash_key="doctest-key", keys={"old": bytes(32)})
    >>> with DeliveryTrackingService([Gateway()], store=store) as svc:
    ...     _ = svc.record_send(
    ...         {"messageId": "m1", "timestamp": "2026-01-05T09:00:00Z",
    ...          "options": {"type": "SMS", "to": "010-1234-5678"}},
    ...         {"messageId": "m1", "providerId": "solapi", "providerMessageId": "G1",
    ...          "type": "SMS", "to": "010-1234-5678"})
    >>> dict(key_usage(lake).envelopes)
    {'old': 1}
    """
    paths = lake_paths(lake)
    provider = _existing_keys(keys)
    return _usage(paths, provider)[0]


# --------------------------------------------------------------------------- rewriting


class _Resealer:
    """Re-seals envelopes under the active key, each distinct envelope once."""

    def __init__(self, provider: KeyProvider) -> None:
        self.cipher = NumberCipher(provider)
        self.active = provider.active_kid
        self.memo: dict[tuple[str, str], str] = {}
        self.counts: dict[str, int] = {}

    def column(self, values: pa.ChunkedArray, name: str) -> pa.ChunkedArray | None:
        """``values`` with every envelope under the active key (``None``: nothing changed)."""
        series = pl.Series(values)
        if series.dtype == pl.Null:
            return None
        kids = series.str.extract(_KID, 1)
        stale = series.filter(kids.is_not_null() & (kids != self.active))
        if stale.is_empty():
            return None
        bad = series.filter(series.is_not_null() & kids.is_null())
        if not bad.is_empty():
            msg = f"{name} holds {bad.len():,} values that are not sealed numbers"
            raise LakeCorruptError(msg)
        fld = ENVELOPE_COLUMNS[name]
        mapping: dict[str, str] = {}
        for old in stale.unique().to_list():
            new = self.memo.get((fld, old))
            if new is None:
                new = self.cipher.seal(self.cipher.open(old, fld), fld)
                if len(self.memo) >= _MEMO_LIMIT:
                    self.memo.clear()
                self.memo[(fld, old)] = new
            mapping[old] = new
        for kid, n in stale.str.extract(_KID, 1).value_counts().iter_rows():
            self.counts[kid] = self.counts.get(kid, 0) + int(n)
        out = series.replace(mapping).to_arrow()
        return pa.chunked_array([out]).cast(values.type)

    def table(self, table: pa.Table) -> pa.Table:
        for name in ENVELOPE_COLUMNS:
            if name not in table.column_names:
                continue
            new = self.column(table.column(name), name)
            if new is not None:
                i = table.schema.get_field_index(name)
                table = table.set_column(i, table.schema.field(i), new)
        return table


def _rewrite(paths: LakePaths, path: Path, resealer: _Resealer) -> bool:
    """Write ``path`` re-sealed to staging and rename it over ``path`` (``False``: vanished)."""
    staged = paths.staging_file()
    try:
        with pq.ParquetFile(path) as pf:
            meta = pf.metadata
            codec = meta.row_group(0).column(0).compression if meta.num_row_groups else "ZSTD"
            schema = pf.schema_arrow
            writer = pq.ParquetWriter(
                staged,
                schema,
                compression=codec.lower() if codec != "UNCOMPRESSED" else "none",
                store_schema=b"ARROW:schema" in (meta.metadata or {}),
            )
            try:
                rows = 0
                for i in range(pf.num_row_groups):
                    part = resealer.table(pf.read_row_group(i))
                    writer.write_table(part, row_group_size=max(1, part.num_rows))
                    rows += part.num_rows
            finally:
                writer.close()
        if pq.read_metadata(staged).num_rows != rows or rows != meta.num_rows:
            msg = f"{relative(paths, path)}: the re-sealed copy does not hold the same rows"
            raise LakeCorruptError(msg)
        fd = os.open(staged, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staged, path)
        return True
    except FileNotFoundError:
        if path.exists():
            raise
        return False
    finally:
        staged.unlink(missing_ok=True)


def rotate_keys(
    lake: ParquetTrackingStore | str | os.PathLike[str],
    *,
    keys: Any = None,
    hash_key: HashKey | bytes | str | None = None,
    progress: Progress | None = None,
) -> RotationResult:
    """Re-seal every encrypted number of a lake with the current key.

    Publishes what dead writers left in their logs and folds pending snapshots first,
    then, holding the writer lock, rewrites each file holding an envelope under another
    key: written whole to ``_staging/``, checked, then renamed over the original, so
    readers see the old file or the new one. Only the envelopes change; every other
    value (``seq`` included), the row order and the row groups stay as they were.
    Before anything is written, every key id found must be in ``keys``; a rotation
    that stops half way is finished by running it again.

    Parameters
    ----------
    lake
        A :class:`~kmsg_analytics.ParquetTrackingStore` or the path of a lake.
    keys
        The keys: the current one (the provider's active key) and every old one still
        in the lake. A key provider, a ``{kid: key}`` mapping (the first is current), a
        callable returning one, or a key file; by default ``$KMSG_ANALYTICS_KEY`` or the
        existing key file (none is created).
    hash_key
        The lake's number-hash key, when a path is given.
    progress
        Called with a short line before each file is rewritten.

    Returns
    -------
    RotationResult
        The files rewritten, envelopes re-sealed per old key, and the key usage after.

    Raises
    ------
    KeyUnavailableError
        No keys were found, or the lake holds key ids the keys do not have (nothing
        is written then).

    Examples
    --------
    >>> import tempfile
    >>> from kmsg_analytics import DeliveryTrackingService, ParquetTrackingStore
    >>> class Gateway:
    ...     id = "solapi"
    >>> lake = tempfile.mkdtemp()
    >>> old, new = bytes(32), bytes(range(32))
    >>> store = ParquetTrackingStore(lake, hash_key="doctest-key", keys={"old": old})
    >>> with DeliveryTrackingService([Gateway()], store=store) as svc:
    ...     _ = svc.record_send(
    ...         {"messageId": "m1", "timestamp": "2026-01-05T09:00:00Z",
    ...          "options": {"type": "SMS", "to": "010-1234-5678"}},
    ...         {"messageId": "m1", "providerId": "solapi", "providerMessageId": "G1",
    ...          "type": "SMS", "to": "010-1234-5678"})
    >>> result = rotate_keys(lake, keys={"new": new, "old": old}, hash_key="doctest-key")
    >>> len(result.files_rewritten)  # the history batch, the current partition, the open set
    3
    >>> dict(result.envelopes_resealed), result.after.rotated, result.after.can_retire("old")
    ({'old': 3}, True, True)
    >>> with ParquetTrackingStore(lake, hash_key="doctest-key", keys={"new": new}) as store:
    ...     store.reveal_numbers(store.get("m1"))
    ('01012345678', None)
    """
    started = time.perf_counter()
    provider = _existing_keys(keys)
    if provider is None:
        msg = (
            f"no encryption keys: set ${KEY_ENV} (current key first, then the old ones) or "
            f"pass keys=; the key file {default_key_file()} does not exist"
        )
        raise KeyUnavailableError(msg)
    _check_keys(_usage(lake_paths(lake), provider)[0], provider)  # before folding anything
    with opened_lake(lake, hash_key, keys=provider) as store, folded_and_locked(store):
        return _rotate_locked(store, provider, progress, started)


def _check_keys(usage: KeyUsage, provider: KeyProvider) -> None:
    """Refuse to rotate what cannot be re-sealed: not envelopes, or keys not given."""
    if NOT_AN_ENVELOPE in usage.envelopes:
        msg = (
            f"{usage.envelopes[NOT_AN_ENVELOPE]:,} values in the sealed columns of "
            f"{usage.lake} are not encrypted numbers; run `kmsg-analytics doctor --lake "
            f"{usage.lake}`. Nothing was changed"
        )
        raise LakeCorruptError(msg)
    missing = sorted(k for k in usage.envelopes if k not in provider.kids())
    if missing:
        msg = (
            f"the lake holds numbers sealed with key ids {', '.join(missing)} that the keys "
            f"given do not hold; add them (after the current key) to ${KEY_ENV} or the key "
            "file and run again. Nothing was changed"
        )
        raise KeyUnavailableError(msg)


def _rotate_locked(
    store: ParquetTrackingStore,
    provider: KeyProvider,
    progress: Progress | None,
    started: float,
) -> RotationResult:
    paths = store.paths
    before, stale = _usage(paths, provider)
    _check_keys(before, provider)
    resealer = _Resealer(provider)
    done: list[str] = []
    for i, (_dataset, path) in enumerate(stale):
        rel = relative(paths, path)
        if progress is not None:
            progress(f"re-sealing {rel} ({i + 1}/{len(stale)})")
        if _rewrite(paths, path, resealer):
            done.append(rel)
    after, _stale = _usage(paths, provider)
    if progress is not None:
        progress("done")
    return RotationResult(
        active_kid=provider.active_kid,
        files_rewritten=tuple(done),
        envelopes_resealed=_frozen(resealer.counts),
        before=before,
        after=after,
        seconds=time.perf_counter() - started,
    )
