"""Take records out of a lake: Parquet, CSV or JSON lines files, or k-msg's own SQL table.

:func:`export_records` writes the current records or the whole snapshot history,
streamed by Polars (never all in memory), as one file or one file per partition (the
requested day of current records, the ingest day of history). Phone numbers leave
masked unless asked otherwise: ``numbers="masked"`` (default) writes only
``to_masked``/``from_masked``, ``"hashed"`` adds the keyed hashes, ``"plain"`` adds the
numbers themselves (only a lake opened with ``keep_numbers=True`` has them).

:func:`export_kmsg_table` writes the current records into k-msg's tracking table layout
in a SQLite file (``INTEGER`` epoch milliseconds, JSON text, camelCase metadata keys), so
a k-msg application can read it and :func:`~kmsg_analytics._kmsg_import.import_kmsg_table`
can bring it back unchanged. Without plain numbers, k-msg's ``to``/``from`` columns hold
the masked numbers and the table carries ``to_hash``/``to_masked``/``from_hash``/
``from_masked`` beside them (k-msg's default store reads only its own columns).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, TypeAlias

import polars as pl

from ._errors import InvalidRecordError, KmsgAnalyticsError
from ._lake import ParquetTrackingStore
from ._schema import CURRENT_PARTITION, HISTORY_PARTITION, RECORD_COLUMNS

if TYPE_CHECKING:
    from ._phone import HashKey
    from ._service import DeliveryTrackingService

__all__ = ["ExportError", "ExportReport", "export_kmsg_table", "export_records"]


def _invalid(field: str, value: object, expected: str) -> NoReturn:
    """Raise :class:`InvalidRecordError` naming the field, the value and what is valid."""
    raise InvalidRecordError(field, value, expected)


Format = Literal["parquet", "csv", "jsonl"]
What = Literal["current", "history"]
Numbers = Literal["masked", "hashed", "plain"]

_SUFFIX: Final = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}
_FORMATS: Final = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_HISTORY_COLUMNS: Final = ("seq", "snapshot_kind", "recorded_at")
_PLAIN: Final = ("to", "from_")
_HASHES: Final = ("to_hash", "from_hash")

LakeLike: TypeAlias = "str | os.PathLike[str] | ParquetTrackingStore | DeliveryTrackingService"


class ExportError(KmsgAnalyticsError):
    """The export cannot be written (target exists, numbers not in the lake, bad target)."""


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What an export wrote: rows, files (or the table) and how long it took."""

    rows: int
    target: str
    files: tuple[str, ...] = field(default=(), repr=False)
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for people."""
        where = (
            f"{len(self.files)} files under {self.target}" if len(self.files) > 1 else self.target
        )
        return f"{self.rows:,} rows to {where} in {self.seconds:.1f} s"


# --------------------------------------------------------------------------- files


def export_records(
    lake: LakeLike,
    dest: str | os.PathLike[str],
    *,
    format: Format | None = None,
    what: What = "current",
    numbers: Numbers = "masked",
    partitioned: bool = False,
    overwrite: bool = False,
    hash_key: HashKey | bytes | str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    """Write the lake's current records (or its snapshot history) to files.

    Parameters
    ----------
    lake
        A lake directory, a :class:`ParquetTrackingStore` or a service over one.
    dest
        The file to write, or with ``partitioned=True`` a directory that receives one
        file per partition (``requested_date=YYYY-MM-DD/part-0.<ext>`` for current
        records, ``ingest_date=...`` for history).
    format
        ``parquet``, ``csv`` or ``jsonl``; taken from ``dest``'s suffix when ``None``.
    what
        ``current`` (the latest state of each message) or ``history`` (every snapshot,
        with ``seq``, ``snapshot_kind`` and ``recorded_at``).
    numbers
        ``masked`` (only ``to_masked``/``from_masked``), ``hashed`` (adds ``to_hash``/
        ``from_hash``) or ``plain`` (adds ``to``/``from_``; needs a lake that keeps them).
    partitioned
        One file per partition instead of one file.
    overwrite
        Replace ``dest`` if it exists (otherwise :class:`ExportError`).
    hash_key
        The lake's number-hash key (only when ``lake`` is a path).
    progress
        Called with a line per partition written.

    Returns
    -------
    ExportReport

    Examples
    --------
    >>> import tempfile, pathlib, polars as pl
    >>> from kmsg_analytics import ParquetTrackingStore, TrackingRecord
    >>> from datetime import datetime, UTC
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> lake = ParquetTrackingStore(tmp / "lake", hash_key="doctest-key")
    >>> t = datetime(2026, 11, 1, tzinfo=UTC)
    >>> lake.append_snapshots([lake.protect(TrackingRecord(
    ...     message_id="m1", provider_id="solapi", provider_message_id="G1", type="SMS",
    ...     to_hash="", to_masked="", to="010-1234-5678", requested_at=t, status="SENT",
    ...     status_updated_at=t, next_check_at=t))], kind="load")
    >>> export_records(lake, tmp / "out.csv").rows
    1
    >>> pl.read_csv(tmp / "out.csv").select("message_id", "to_masked").row(0)
    ('m1', '010****5678')
    >>> lake.close()
    """
    started = time.perf_counter()
    target = Path(dest)
    fmt = _format(format, target, partitioned)
    if what not in ("current", "history"):
        _invalid("what", what, "'current' or 'history'")
    with _opened(lake, hash_key) as store:
        frame, partition = _frame(store, what, numbers, fmt)
        if partitioned:
            rows, files = _write_partitioned(frame, partition, target, fmt, overwrite, progress)
        else:
            _check_target(target, overwrite)
            rows = _sink(frame.drop(partition), target, fmt)
            files = [str(target)]
    return ExportReport(rows, str(target), tuple(files), time.perf_counter() - started)


def _format(format: Format | None, target: Path, partitioned: bool) -> Format:
    if format is None:
        found = _FORMATS.get(target.suffix.lower())
        if found is None:
            if partitioned:
                return "parquet"
            msg = "format"
            raise InvalidRecordError(
                msg,
                target.suffix or str(target),
                "parquet, csv or jsonl (or a .parquet, .csv or .jsonl file name)",
            )
        return found  # type: ignore[return-value]
    if format not in _SUFFIX:
        _invalid("format", format, "parquet, csv or jsonl")
    return format


def _frame(
    store: ParquetTrackingStore, what: What, numbers: Numbers, fmt: Format
) -> tuple[pl.LazyFrame, str]:
    _check_numbers(numbers)
    if what == "current":
        frame, partition, columns = store.current(), CURRENT_PARTITION, list(RECORD_COLUMNS)
    else:
        frame, partition = store.history(), HISTORY_PARTITION
        columns = [*_HISTORY_COLUMNS, *RECORD_COLUMNS]
    drop: set[str] = set()
    if numbers != "plain":
        drop.update(_PLAIN)
    if numbers == "masked":
        drop.update(_HASHES)
    if numbers == "plain" and not store.keep_numbers:
        has_numbers = frame.select(pl.col("to").is_not_null().any()).collect().item()
        if not has_numbers:
            msg = (
                f"{store.paths.root} keeps no plain numbers (it was written with "
                "keep_numbers=False): export numbers='hashed' or 'masked'"
            )
            raise ExportError(msg)
    keep = [c for c in columns if c not in drop]
    out = frame.select([*keep, partition])
    if fmt == "csv":  # CSV has no nested values: last_error as two columns
        out = out.with_columns(
            pl.col("last_error").struct.field("code").alias("last_error_code"),
            pl.col("last_error").struct.field("message").alias("last_error_message"),
        ).drop("last_error")
    return out, partition


def _check_numbers(numbers: Numbers) -> None:
    if numbers not in ("masked", "hashed", "plain"):
        _invalid("numbers", numbers, "'masked', 'hashed' or 'plain'")


def _days(frame: pl.LazyFrame, partition: str) -> list[date]:
    """The distinct values of the ``partition`` column, sorted."""
    return sorted(
        frame.select(pl.col(partition).unique()).collect().get_column(partition).to_list()
    )


def _sink(frame: pl.LazyFrame, target: Path, fmt: Format) -> int:
    """Stream ``frame`` into ``target`` (written beside it, then renamed in)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        if fmt == "parquet":
            frame.sink_parquet(tmp, compression="zstd")
        elif fmt == "csv":
            frame.sink_csv(tmp)
        else:
            frame.sink_ndjson(tmp)
        rows = _count_rows(tmp, fmt)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows


def _count_rows(path: Path, fmt: Format) -> int:
    if fmt == "parquet":
        return int(pl.scan_parquet(path).select(pl.len()).collect().item())
    if fmt == "csv":
        return int(pl.scan_csv(path).select(pl.len()).collect().item())
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def _write_partitioned(
    frame: pl.LazyFrame,
    partition: str,
    target: Path,
    fmt: Format,
    overwrite: bool,
    progress: Callable[[str], None] | None,
) -> tuple[int, list[str]]:
    _check_target(target, overwrite)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    staging.mkdir(parents=True)
    try:
        days = _days(frame, partition)
        rows = 0
        files: list[str] = []
        for i, day in enumerate(days):
            part = staging / f"{partition}={day.isoformat()}" / f"part-0{_SUFFIX[fmt]}"
            rows += _sink(frame.filter(pl.col(partition) == day).drop(partition), part, fmt)
            files.append(str(target / part.relative_to(staging)))
            if progress is not None:
                progress(f"{partition}={day.isoformat()} ({i + 1}/{len(days)})")
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return rows, files


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        msg = f"{target} exists: pass overwrite=True (--overwrite) to replace it"
        raise ExportError(msg)


# --------------------------------------------------------------------------- k-msg's table

#: k-msg's default columns, in its order, with SQLite types (``ddl-sqlite.sql``) and
#: the record field each comes from.
_KMSG_TABLE: Final = (
    ("message_id", "TEXT PRIMARY KEY"),
    ("provider_id", "TEXT NOT NULL"),
    ("provider_message_id", "TEXT NOT NULL"),
    ("type", "TEXT NOT NULL"),
    ("to", "TEXT NOT NULL"),
    ("from", "TEXT"),
    ("status", "TEXT NOT NULL"),
    ("provider_status_code", "TEXT"),
    ("provider_status_message", "TEXT"),
    ("sent_at", "INTEGER"),
    ("delivered_at", "INTEGER"),
    ("failed_at", "INTEGER"),
    ("requested_at", "INTEGER NOT NULL"),
    ("scheduled_at", "INTEGER"),
    ("status_updated_at", "INTEGER NOT NULL"),
    ("attempt_count", "INTEGER NOT NULL DEFAULT 0"),
    ("last_checked_at", "INTEGER"),
    ("next_check_at", "INTEGER NOT NULL"),
    ("last_error", "TEXT"),
    ("raw", "TEXT"),
    ("metadata", "TEXT"),
    # beyond k-msg's default layout (its store reads only its own columns)
    ("to_hash", "TEXT"),
    ("to_masked", "TEXT"),
    ("from_hash", "TEXT"),
    ("from_masked", "TEXT"),
    ("retention_class", "TEXT"),
)
_TIME_COLUMNS: Final = (
    "sent_at", "delivered_at", "failed_at", "requested_at", "scheduled_at",
    "status_updated_at", "last_checked_at", "next_check_at",
)  # fmt: skip
_INDEXES: Final = (
    ("idx_kmsg_delivery_due", ("status", "next_check_at")),
    ("idx_kmsg_delivery_provider_msg", ("provider_id", "provider_message_id")),
    ("idx_kmsg_delivery_requested_at", ("requested_at",)),
)
#: our metadata keys -> k-msg's (outside ``custom_fields``, whose content is kept).
_METADATA_KEYS: Final = {
    "custom_fields": "customFields",
    "fallback_channel": "fallbackChannel",
    "fallback_content": "fallbackContent",
    "fallback_title": "fallbackTitle",
    "send_warning_codes": "sendWarningCodes",
    "api_attempt": "apiAttempt",
    "attempted_at": "attemptedAt",
    "warning_code": "warningCode",
    "warning_message": "warningMessage",
    "fallback_message_id": "fallbackMessageId",
    "fallback_provider_id": "fallbackProviderId",
    "error_code": "errorCode",
    "error_message": "errorMessage",
}
_KEY_RE: Final = '"(?:' + "|".join(_METADATA_KEYS) + ')":'


def export_kmsg_table(
    lake: LakeLike,
    url: str,
    *,
    table: str = "kmsg_delivery_tracking",
    numbers: Numbers = "hashed",
    if_exists: Literal["fail", "replace", "append"] = "fail",
    hash_key: HashKey | bytes | str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    """Write the current records into k-msg's tracking-table layout in a SQLite file.

    Parameters
    ----------
    lake
        A lake directory, a :class:`ParquetTrackingStore` or a service over one.
    url
        ``sqlite:///path/file.sqlite`` (created when missing).
    table
        The table (k-msg's ``tableName``).
    numbers
        ``hashed`` (default: masks and hashes), ``masked`` (no hashes) or ``plain``
        (the numbers in k-msg's ``to``/``from``; needs a lake that keeps them).
    if_exists
        ``fail`` (default), ``replace`` the table, or ``append`` (rows upserted by
        ``message_id``, as k-msg does).
    hash_key
        The lake's number-hash key (only when ``lake`` is a path).
    progress
        Called with a line per requested day written.

    Examples
    --------
    >>> import tempfile, pathlib, sqlite3
    >>> from kmsg_analytics import ParquetTrackingStore, TrackingRecord
    >>> from datetime import datetime, UTC
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> lake = ParquetTrackingStore(tmp / "lake", hash_key="doctest-key")
    >>> t = datetime(2026, 11, 1, tzinfo=UTC)
    >>> lake.append_snapshots([lake.protect(TrackingRecord(
    ...     message_id="m1", provider_id="solapi", provider_message_id="G1", type="SMS",
    ...     to_hash="", to_masked="", to="010-1234-5678", requested_at=t, status="SENT",
    ...     status_updated_at=t, next_check_at=t, metadata={"custom_fields": {"a": 1}}))],
    ...     kind="load")
    >>> export_kmsg_table(lake, f"sqlite:///{tmp / 'kmsg.sqlite'}").rows
    1
    >>> db = sqlite3.connect(tmp / "kmsg.sqlite")
    >>> db.execute('SELECT "to", requested_at, metadata FROM kmsg_delivery_tracking').fetchone()
    ('010****5678', 1793491200000, '{"customFields":{"a":1}}')
    >>> db.close(); lake.close()
    """
    started = time.perf_counter()
    path = _sqlite_path(url)
    if if_exists not in ("fail", "replace", "append"):
        _invalid("if_exists", if_exists, "'fail', 'replace' or 'append'")
    _check_numbers(numbers)
    with _opened(lake, hash_key) as store:
        frame, _ = _frame(store, "current", "plain" if numbers == "plain" else "hashed", "jsonl")
        rows = _write_kmsg(frame, path, table, numbers, if_exists, progress)
    return ExportReport(
        rows, f"sqlite:///{path}#{table}", (str(path),), time.perf_counter() - started
    )


def _sqlite_path(url: str) -> Path:
    if not isinstance(url, str) or not url.startswith("sqlite://"):
        _invalid("to", url, "sqlite:///path/to/kmsg.sqlite")
    rest = url[len("sqlite://") :].split("?", 1)[0]
    if not rest:
        _invalid("to", url, "sqlite:///path/to/kmsg.sqlite")
    return Path(rest).expanduser().resolve()


def _kmsg_rows(frame: pl.DataFrame, numbers: Numbers) -> pl.DataFrame:
    """Current records (one day) in k-msg's column encoding."""
    ms = {c: pl.col(c).dt.epoch("ms") for c in _TIME_COLUMNS}
    to = pl.col("to") if numbers == "plain" else pl.col("to_masked")
    from_ = pl.col("from_") if numbers == "plain" else pl.col("from_masked")
    err = pl.col("last_error")
    out = frame.with_columns(
        **ms,
        to=to,
        **{"from": from_},
        last_error=pl.when(err.is_not_null()).then(
            pl.struct(
                err.struct.field("code").alias("code"),
                err.struct.field("message").fill_null("").alias("message"),
            ).struct.json_encode()
        ),
        metadata=pl.when(pl.col("metadata") != "{}").then(pl.lit(_kmsg_metadata(frame))),
    )
    if numbers == "masked":
        out = out.with_columns(to_hash=pl.lit(None, pl.String), from_hash=pl.lit(None, pl.String))
    return out.select([name for name, _ in _KMSG_TABLE])


def _kmsg_metadata(frame: pl.DataFrame) -> pl.Series:
    """Our metadata text with k-msg's camelCase keys (custom fields kept as they are)."""
    import json

    text = frame.get_column("metadata")
    renamed = text
    for ours, theirs in _METADATA_KEYS.items():
        for lead in ("{", ","):
            renamed = renamed.str.replace_all(
                f'{lead}"{ours}":', f'{lead}"{theirs}":', literal=True
            )
    custom = text.str.json_path_match("$.custom_fields")
    tricky = custom.str.contains(_KEY_RE).fill_null(False)
    if tricky.any():
        inverse = dict(_METADATA_KEYS)

        def walk(value: Any) -> Any:
            if isinstance(value, dict):
                return {
                    inverse.get(k, k): (v if k == "custom_fields" else walk(v))
                    for k, v in value.items()
                }
            if isinstance(value, list):
                return [walk(v) for v in value]
            return value

        idx = tricky.arg_true()
        fixed = [
            json.dumps(walk(json.loads(str(text[i]))), ensure_ascii=False, separators=(",", ":"))
            for i in idx.to_list()
        ]
        renamed = renamed.scatter(idx, fixed)
    return renamed


def _write_kmsg(
    frame: pl.LazyFrame,
    path: Path,
    table: str,
    numbers: Numbers,
    if_exists: str,
    progress: Callable[[str], None] | None,
) -> int:
    if numbers == "plain":
        missing = frame.select(pl.col("to").is_null().any()).collect().item()
        if missing:
            msg = (
                "some records have no plain number (the lake does not keep them): "
                "export numbers='hashed' (masked numbers in k-msg's to/from columns)"
            )
            raise ExportError(msg)
    path.parent.mkdir(parents=True, exist_ok=True)
    q = _quote(table)
    con = sqlite3.connect(path)
    try:
        exists = con.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)
        ).fetchone()
        if exists and if_exists == "fail":
            msg = f"table {table!r} exists in {path}: pass if_exists='replace' or 'append'"
            raise ExportError(msg)
        with con:
            if exists and if_exists == "replace":
                con.execute(f"DROP TABLE {q}")
            body = ",\n  ".join(f"{_quote(n)} {t}" for n, t in _KMSG_TABLE)
            con.execute(f"CREATE TABLE IF NOT EXISTS {q} (\n  {body}\n)")
            for name, cols in _INDEXES:
                index = _quote(name if table == "kmsg_delivery_tracking" else f"{table}_{name}")
                con.execute(
                    f"CREATE INDEX IF NOT EXISTS {index} ON {q} ({', '.join(map(_quote, cols))})"
                )
            names = ", ".join(_quote(n) for n, _ in _KMSG_TABLE)
            marks = ", ".join("?" for _ in _KMSG_TABLE)
            insert = f"INSERT OR REPLACE INTO {q} ({names}) VALUES ({marks})"
            rows = 0
            for day, part in _by_day(frame):
                data = _kmsg_rows(part, numbers)
                con.executemany(insert, data.iter_rows())
                rows += data.height
                if progress is not None:
                    progress(f"{day.isoformat()}: {data.height:,} rows")
    finally:
        con.close()
    return rows


def _by_day(frame: pl.LazyFrame) -> Iterator[tuple[date, pl.DataFrame]]:
    """Current records one requested day at a time (bounded memory)."""
    for day in _days(frame, CURRENT_PARTITION):
        yield day, frame.filter(pl.col(CURRENT_PARTITION) == day).collect()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- lake


@contextlib.contextmanager
def _opened(
    lake: LakeLike, hash_key: HashKey | bytes | str | None
) -> Iterator[ParquetTrackingStore]:
    """The lake's store: the one given (or a service's), or one opened here (closed after)."""
    store, owned = _open(lake, hash_key)
    try:
        yield store
    finally:
        if owned:
            store.close()


def _open(
    lake: LakeLike, hash_key: HashKey | bytes | str | None
) -> tuple[ParquetTrackingStore, bool]:
    if isinstance(lake, ParquetTrackingStore):
        return lake, False
    inner = getattr(lake, "store", None)
    if isinstance(inner, ParquetTrackingStore):
        return inner, False
    if isinstance(lake, str) and "://" in lake:
        msg = (
            f"export reads local lakes only, not {lake!r}: query an object-storage lake "
            "through ParquetTrackingStore(url, storage_options=...) and write the frame yourself"
        )
        raise ExportError(msg)
    if isinstance(lake, str | os.PathLike):
        path = Path(lake)
        if not (path / "_lake.json").is_file():
            msg = f"no lake at {path} (no _lake.json)"
            raise ExportError(msg)
        return ParquetTrackingStore(path, hash_key=hash_key), True
    msg_0 = "lake"
    raise InvalidRecordError(
        msg_0, lake, "a lake directory, a ParquetTrackingStore or a service over one"
    )
