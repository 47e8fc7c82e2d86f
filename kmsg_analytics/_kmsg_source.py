"""Reading k-msg's table through Ibis: URLs, connections, chunked and watermark-filtered reads."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import polars as pl

from ._errors import InvalidRecordError
from ._kmsg_layout import (
    DEFAULT_COLUMNS,
    REQUIRED_FIELDS,
    TIME_FIELDS,
    WATERMARK_FIELDS,
    ImportSourceError,
    invalid,
    resolve_column_map,
)

__all__ = ["KmsgSource", "Prefetch", "Since", "describe_url", "source_id"]

_ROWID: Final = "__kmsg_rowid"
_FIRST_ROWID: Final = -(2**63)
_LAST_ROWID: Final = 2**63 - 1
_RECHECK_IDS: Final = 500  # ids per query when rows skipped last time are read again
_FETCH_ROWS: Final = 10_000
_INT_TYPES: Final = ("integer", "null")
_REAL_TYPES: Final = ("integer", "real", "null")
_ADBC_BATCH_ROWS: Final = "adbc.sqlite.query.batch_rows"
#: Read SQLite through the ADBC driver when it is installed (else JSON arrays, or rows).
_ARROW_READER = True
#: ADBC connections reading a whole SQLite table at once (rowid ranges, in order).
_READERS = min(2, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class Since:
    """What a re-import reads: rows written since ``cutoff_us``, or past ``max_rowid``.

    ``cutoff_us`` (UTC microseconds) is compared with k-msg's ``status_updated_at`` and
    ``last_checked_at``; ``recheck`` lists rows skipped last time, read again by id.
    """

    cutoff_us: int
    max_rowid: int | None = None
    recheck: tuple[str, ...] = ()


@dataclass
class KmsgSource:
    """An open connection to k-msg's table and the columns to read.

    Every query is an Ibis expression compiled by the backend's own compiler. On SQLite,
    where Python's ``sqlite3`` turns each value into a Python object (the bulk of a plain
    read), the compiled query of a chunk runs on a second, read-only connection of the
    ADBC SQLite driver (``adbc-driver-sqlite``), which hands back Arrow columns built in
    C, outside the GIL. Without that driver, a chunk is asked for as one JSON array per
    column (``json_group_array``, declared to Ibis as a built-in aggregate) and decoded
    by Polars. Chunks follow the ``rowid`` (keyset pagination: short reads, in table
    order, so k-msg's writers are never held up for long); a whole table with dense
    rowids is read by ranges of rowids instead, two at once on two ADBC connections
    (still in order), so that reading keeps up with the conversion. A chunk either way cannot
    carry as typed columns (BLOBs, reals in ``INTEGER`` columns, infinities) is read
    again as rows. PostgreSQL and MySQL stream one query through the backend's Arrow
    batches (``to_pyarrow_batches``).
    """

    backend: Any
    kind: str
    redacted: str
    table: str
    source_id: str
    columns: dict[str, str]  # our field -> source column (only those present)
    dtypes: dict[str, Any]  # source column -> ibis dtype
    timestamps: str
    column_map: dict[str, str]
    expr: Any = None
    rowid: str | None = None  # SQLite: the name that reaches the rowid, when there is one
    path: Path | None = None  # SQLite: the database file
    max_rowid: int | None = field(default=None, init=False)  # the largest rowid read
    #: the Ibis connection serves one query at a time (the range readers fall back to it)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def open(
        cls, url: str, table: str, column_map: Mapping[str, str] | None, timestamps: str
    ) -> KmsgSource:
        """Connect, find the table and the columns of every field (or say what is missing)."""
        if not isinstance(table, str) or not table.strip():
            invalid("table", table, "the name of k-msg's tracking table")
        fields = resolve_column_map(column_map)
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
            missing = [f"{f} (column {fields[f]!r})" for f in REQUIRED_FIELDS if f not in columns]
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
                    f for f in TIME_FIELDS if f in columns and dtypes[columns[f]].is_timestamp()
                ]
                if native:
                    msg = (
                        f"timestamps='epoch_ms' but {', '.join(native)} are native timestamp "
                        "columns (k-msg's typeStrategy.timestamp 'date'): use timestamps='date'"
                    )
                    raise ImportSourceError(msg)
            rowid = (
                _sqlite_rowid(backend, schema_name, name, schema.names)
                if kind == "sqlite"
                else None
            )
        except BaseException:
            with contextlib.suppress(Exception):
                backend.disconnect()
            raise
        return cls(
            backend=backend,
            kind=kind,
            redacted=redacted,
            table=table,
            source_id=source_id(redacted, table),
            columns=columns,
            dtypes=dtypes,
            timestamps=timestamps,
            column_map={k: v for k, v in fields.items() if DEFAULT_COLUMNS.get(k) != v},
            expr=expr,
            rowid=rowid,
            path=describe_url(url)[2]["path"] if kind == "sqlite" else None,
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.backend.disconnect()

    # ------------------------------------------------------------------ facts

    def count(self) -> int:
        """Rows in the table, without going through pandas."""
        return self._scalar(self.expr.count())

    def layout(self) -> str:
        """A fingerprint of what is read and how (a watermark holds only for the same)."""
        text = json.dumps(
            {
                "columns": self.columns,
                "dtypes": {c: str(t) for c, t in self.dtypes.items()},
                "timestamps": self.timestamps,
                "rowid": self.rowid is not None,
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def can_filter_by_time(self) -> bool:
        """Whether a query can tell the rows k-msg wrote since a time.

        Both of k-msg's write times must be there (a poll that changes no status moves
        only ``last_checked_at``), as numbers (epoch milliseconds) or, outside SQLite,
        native timestamps. SQLite stores whatever it is given in a ``TIMESTAMP`` column
        and compares numbers below text, so only number columns are trusted there.
        """
        if any(f not in self.columns for f in WATERMARK_FIELDS):
            return False
        for name in WATERMARK_FIELDS:
            dtype = self.dtypes[self.columns[name]]
            native = dtype.is_timestamp() and self.kind != "sqlite"
            if not (dtype.is_integer() or dtype.is_floating() or native):
                return False
        return True

    # ------------------------------------------------------------------ reading

    def chunks(self, chunk_rows: int, since: Since | None = None) -> Iterator[pl.DataFrame]:
        """The table (or, with ``since``, what changed) in frames of source columns."""
        cols = list(dict.fromkeys(self.columns.values()))
        mid = self.columns["message_id"]
        pending = pl.Series("id", since.recheck if since is not None else (), dtype=pl.String)
        if self.kind == "sqlite":
            if self.rowid is not None:
                parts = self._sqlite_chunks(cols, chunk_rows, since)
            else:
                parts = self._keyset_chunks(cols, chunk_rows, since)
        else:
            parts = self._stream(cols, chunk_rows, self._since_filter(self.expr, since))
        for part in parts:
            if pending.len():
                pending = pending.filter(~pending.is_in(part.get_column(mid).cast(pl.String)))
            yield part
        if pending.len():  # rows skipped last time, not among the changed ones: read them again
            t = self.expr
            ordered = pending.sort().to_list()
            for start in range(0, len(ordered), _RECHECK_IDS):
                ids = ordered[start : start + _RECHECK_IDS]
                column = t[mid] if self.dtypes[mid].is_string() else t[mid].cast("string")
                flt = column.isin(ids)
                if self.kind == "sqlite":
                    yield self._fetch_rows(t.filter(flt).select(*self._picked(cols)), cols)
                else:
                    yield from self._stream(cols, chunk_rows, flt)

    def _sqlite_chunks(
        self, cols: list[str], chunk_rows: int, since: Since | None
    ) -> Iterator[pl.DataFrame]:
        import ibis

        assert self.rowid is not None
        names = self.expr.schema()
        listed = ", ".join('"' + c.replace('"', '""') + '"' for c in cols)
        base = self.backend.sql(  # only the columns read: never k-msg's ciphertexts
            f"SELECT {self.rowid} AS {_ROWID}, {listed} FROM {_quote_sqlite(self.table)}",
            schema=ibis.schema({_ROWID: "int64", **{c: names[c] for c in cols}}),
        )
        last = ibis.param("int64")
        flt = base[_ROWID] > last
        changed = self._since_filter(base, since)
        if changed is not None:
            flt = flt & changed
        sub = base.filter(flt).order_by(_ROWID).limit(chunk_rows)
        checks = {
            f"__odd_{i}": (~sub[c].typeof().isin(allowed)).cast("int64").sum()
            for i, c in enumerate(cols)
            if (allowed := _allowed_types(self.dtypes[c])) is not None
        }
        agg = sub.aggregate(
            __n=sub.count(),
            __last=sub[_ROWID].max(),
            **{f"__c_{i}": _json_group_array(sub[c]).cast("binary") for i, c in enumerate(cols)},
            **checks,
        )
        rows = sub.select(sub[_ROWID], *[sub[c] for c in cols])
        with self._arrow() as arrow:
            starts = self._spans(base, chunk_rows) if arrow is not None and since is None else None
            if starts is not None:  # the whole table: rowid ranges, read by two connections
                yield from self._range_chunks(arrow, base, cols, starts, chunk_rows)
                return
            key = _FIRST_ROWID
            query = _Compiled(self.backend, rows, last) if arrow is not None else None
            while True:
                if arrow is not None and query is not None:
                    frame = self._read(
                        arrow, rows, [_ROWID, *cols], chunk_rows, {last: key}, sql=query.sql(key)
                    )
                    top_ = frame.get_column(_ROWID).max() if frame.height else None
                    n, top = frame.height, None if top_ is None else int(top_)  # type: ignore[arg-type]
                    frame = frame.drop(_ROWID)
                else:
                    frame, n, top = self._json_chunk(agg, rows, last, key, cols)
                if n == 0 or top is None:
                    return
                key = top
                self.max_rowid = top if self.max_rowid is None else max(self.max_rowid, top)
                yield frame
                if n < chunk_rows:
                    return

    def _spans(self, base: Any, chunk_rows: int) -> range | None:
        """Exclusive lower rowids of ranges of ``chunk_rows`` rowids covering the table.

        ``None`` (read it in one keyset-paginated sequence instead) when one reader is
        enough: one chunk at most, one CPU, or rowids so sparse that many ranges would be
        nearly empty.
        """
        if _READERS < 2:
            return None
        n = self._scalar(base.count())
        if n <= chunk_rows:
            return None
        lo = self._scalar(base.aggregate(__m=base[_ROWID].min()))
        hi = self._scalar(base.aggregate(__m=base[_ROWID].max()))
        if hi - lo + 1 > 2 * n or lo <= _FIRST_ROWID or hi > _LAST_ROWID - chunk_rows:
            return None  # sparse, or bounds that would not be 64-bit integers
        return range(lo - 1, hi, chunk_rows)

    def _range_chunks(
        self, arrow: Any, base: Any, cols: list[str], starts: range, span: int
    ) -> Iterator[pl.DataFrame]:
        """The table by rowid ranges, in order, two ranges read at once on two connections.

        Each range ``(start, start + span]`` is one query compiled by Ibis; the ADBC
        driver reads it outside the GIL, so two readers keep two cores busy while the
        import converts. A range that turns out empty (a gap in the rowids) is skipped.
        """
        import ibis

        lo, hi = ibis.param("int64"), ibis.param("int64")
        part = base.filter((base[_ROWID] > lo) & (base[_ROWID] <= hi)).order_by(_ROWID)
        rows = part.select(part[_ROWID], *[part[c] for c in cols])
        query = _Compiled(self.backend, rows, lo, hi)
        assert self.path is not None
        path = self.path
        extra = [c for c in (_open_arrow(path) for _ in range(_READERS - 1)) if c is not None]
        free: queue.Queue[Any] = queue.Queue()
        for con in (arrow, *extra):
            free.put(con)

        def read(start: int) -> pl.DataFrame:
            con = free.get()
            try:
                params = {lo: start, hi: start + span}
                sql = query.sql(start, start + span)
                return self._read(con, rows, [_ROWID, *cols], span, params, sql=sql)
            finally:
                free.put(con)

        pool = ThreadPoolExecutor(max_workers=1 + len(extra), thread_name_prefix="kmsg-read")
        ahead: deque[Future[pl.DataFrame]] = deque()
        try:
            for start in starts:
                ahead.append(pool.submit(read, start))
                if len(ahead) > len(extra):
                    yield from self._ranged(ahead.popleft().result())
            while ahead:
                yield from self._ranged(ahead.popleft().result())
        finally:
            for future in ahead:
                future.cancel()
            pool.shutdown(wait=True)
            for con in extra:
                with contextlib.suppress(Exception):
                    con.close()

    def _ranged(self, frame: pl.DataFrame) -> Iterator[pl.DataFrame]:
        """A range's rows without the rowid (nothing for an empty range); notes the rowid."""
        if frame.height == 0:
            return
        top_ = frame.get_column(_ROWID).max()
        if top_ is not None:
            top = int(top_)  # type: ignore[arg-type]
            self.max_rowid = top if self.max_rowid is None else max(self.max_rowid, top)
        yield frame.drop(_ROWID)

    @contextlib.contextmanager
    def _arrow(self) -> Iterator[Any]:
        """A read-only ADBC connection to the SQLite file (``None``: read through Ibis)."""
        arrow = _open_arrow(self.path) if _ARROW_READER and self.path is not None else None
        try:
            yield arrow
        finally:
            if arrow is not None:
                with contextlib.suppress(Exception):
                    arrow.close()

    def _read(
        self,
        arrow: Any,
        expr: Any,
        cols: list[str],
        limit: int,
        params: Mapping[Any, Any] | None = None,
        *,
        sql: str | None = None,
    ) -> pl.DataFrame:
        """A query's rows (at most ``limit``) as Arrow columns from the ADBC driver.

        As rows where they cannot be (see :func:`_typed_frame`). ``sql``: the query as
        compiled already (``expr`` with ``params``).
        """
        import adbc_driver_manager

        if sql is None:
            sql = self.backend.compile(expr, params=params)
        types = {c: pl.Int64 if c == _ROWID else _polars_type(self.dtypes[c]) for c in cols}
        frame: pl.DataFrame | None = None
        with contextlib.suppress(adbc_driver_manager.Error):
            cursor = arrow.cursor()
            try:
                # one batch: the driver infers each column's type from all of the rows
                cursor.adbc_statement.set_options(**{_ADBC_BATCH_ROWS: str(limit + 1)})
                cursor.execute(sql)
                frame = _typed_frame(cursor.fetch_arrow_table(), types)
            finally:
                cursor.close()
        return self._fetch_rows(expr, cols, params) if frame is None else frame

    def _json_chunk(
        self, agg: Any, rows: Any, param: Any, key: int, cols: list[str]
    ) -> tuple[pl.DataFrame, int, int | None]:
        """One chunk as JSON arrays decoded by Polars; as rows where JSON cannot carry it."""
        import sqlite3

        row: tuple[Any, ...] | None = None
        with contextlib.suppress(sqlite3.Error):  # e.g. "JSON cannot hold BLOB values"
            cursor = self.backend.raw_sql(self.backend.compile(agg, params={param: key}))
            try:
                row = cursor.fetchone()
            finally:
                cursor.close()
        if row is not None:
            n, top, *rest = row
            if n == 0:
                return pl.DataFrame(), 0, None
            texts, odd = rest[: len(cols)], rest[len(cols) :]
            with contextlib.suppress(pl.exceptions.PolarsError, ValueError, TypeError):
                return _decode_json(texts, odd, cols, self.dtypes, int(n)), int(n), int(top)
        frame = self._fetch_rows(rows, [_ROWID, *cols], {param: key})
        if frame.height == 0:
            return frame, 0, None
        top_ = frame.get_column(_ROWID).max()
        return frame.drop(_ROWID), frame.height, int(top_) if top_ is not None else None  # type: ignore[arg-type]

    def _keyset_chunks(
        self, cols: list[str], chunk_rows: int, since: Since | None
    ) -> Iterator[pl.DataFrame]:
        """SQLite tables without a rowid: keyset pagination by message id, rows fetched."""
        import ibis

        t = self.expr
        mid = self.columns["message_id"]
        changed = self._since_filter(t, since)
        last: Any = None
        with self._arrow() as arrow:
            while True:
                flt = changed
                if last is not None:
                    after = t[mid] > ibis.literal(last, type=self.dtypes[mid])
                    flt = after if flt is None else flt & after
                expr = t if flt is None else t.filter(flt)
                expr = expr.order_by(mid).limit(chunk_rows).select(*self._picked(cols))
                if arrow is not None:
                    batch = self._read(arrow, expr, cols, chunk_rows)
                else:
                    batch = self._fetch_rows(expr, cols)
                if batch.height == 0:
                    return
                last = batch.get_column(mid)[-1]
                yield batch
                if batch.height < chunk_rows or last is None:
                    return

    def _stream(self, cols: list[str], chunk_rows: int, flt: Any) -> Iterator[pl.DataFrame]:
        """One query, streamed in Arrow batches (PostgreSQL: a server-side cursor)."""
        t = self.expr
        expr = (t if flt is None else t.filter(flt)).select(*self._picked(cols))
        buffered: list[pl.DataFrame] = []
        rows = 0
        with self.backend.to_pyarrow_batches(expr, chunk_size=chunk_rows) as reader:
            for batch in reader:
                if batch.num_rows == 0:
                    continue
                frame = pl.from_arrow(batch)
                assert isinstance(frame, pl.DataFrame)
                buffered.append(frame)
                rows += frame.height
                if rows >= chunk_rows:
                    yield pl.concat(buffered, how="vertical_relaxed")
                    buffered, rows = [], 0
        if buffered:
            yield pl.concat(buffered, how="vertical_relaxed")

    def _picked(self, cols: Sequence[str]) -> list[Any]:
        import ibis

        # UUID columns (k-msg's typeStrategy.messageId "uuid") are read as text
        return [
            ibis._[c].cast("string").name(c) if self.dtypes[c].is_uuid() else ibis._[c]
            for c in cols
        ]

    def _since_filter(self, t: Any, since: Since | None) -> Any:
        """``status_updated_at``/``last_checked_at`` at or past the cutoff (or missing)."""
        import ibis

        if since is None:
            return None
        cutoff = datetime.fromtimestamp(since.cutoff_us / 1e6, tz=UTC)
        conds = []
        for name in WATERMARK_FIELDS:
            column = self.columns.get(name)
            if column is None:
                continue
            dtype = self.dtypes[column]
            if dtype.is_timestamp():
                value = cutoff if dtype.timezone else cutoff.replace(tzinfo=None)
                conds.append(t[column] >= ibis.literal(value, type=dtype))
            elif dtype.is_floating():
                conds.append(t[column] >= ibis.literal(since.cutoff_us / 1000, type=dtype))
            else:  # epoch milliseconds
                conds.append(t[column] >= ibis.literal(since.cutoff_us // 1000, type="int64"))
        conds.append(t[self.columns["status_updated_at"]].isnull())
        if since.max_rowid is not None and self.rowid is not None and _ROWID in t.columns:
            conds.append(t[_ROWID] > since.max_rowid)
        return ibis.or_(*conds)

    def _fetch_rows(
        self, expr: Any, cols: list[str], params: Mapping[Any, Any] | None = None
    ) -> pl.DataFrame:
        """Rows straight off the SQLite cursor, columnar, a few thousand at a time.

        Numbers are kept as such in integer and real columns (as the other paths do);
        a column whose values do not all fit its type (which SQLite allows: ``1.5`` in
        an ``INTEGER`` column) arrives as text and is judged row by row.
        """
        schema = {c: _polars_type(self.dtypes[c]) for c in cols if c != _ROWID}
        if _ROWID in cols:
            schema = {_ROWID: pl.Int64, **schema}
        parts: list[pl.DataFrame] = []
        with self._lock:
            cursor = self.backend.raw_sql(self.backend.compile(expr, params=params))
            try:
                while rows := cursor.fetchmany(_FETCH_ROWS):
                    parts.append(_loose_frame(rows, list(schema), schema))
            finally:
                cursor.close()
        if not parts:
            return pl.DataFrame(schema=schema)
        return pl.concat(parts, how="vertical_relaxed")

    def _scalar(self, expr: Any) -> int:
        if self.kind == "sqlite":
            cursor = self.backend.raw_sql(self.backend.compile(expr))
            try:
                return int(cursor.fetchone()[0])
            finally:
                cursor.close()
        return int(expr.to_pyarrow().as_py())


class _Compiled:
    """A query with ``int64`` parameters, compiled once, their values put in per chunk.

    Ibis inlines a parameter's value as a number literal: the query is compiled with
    unlikely values and those numbers are replaced by each chunk's (compiling it again
    per chunk costs more than some reads). Where a number is not found exactly once the
    query is compiled for each chunk's values.

    Examples
    --------
    >>> import ibis
    >>> backend = ibis.sqlite.connect()
    >>> t = backend.create_table("t", schema=ibis.schema({"x": "int64"}))
    >>> p = ibis.param("int64")
    >>> query = _Compiled(backend, t.filter(t.x > p), p)
    >>> query.sql(-5) == backend.compile(t.filter(t.x > p), params={p: -5})
    True
    >>> lo, hi = ibis.param("int64"), ibis.param("int64")
    >>> query = _Compiled(backend, t.filter((t.x > lo) & (t.x <= hi)), lo, hi)
    >>> query.sql(3, 7) == backend.compile(
    ...     t.filter((t.x > lo) & (t.x <= hi)), params={lo: 3, hi: 7})
    True
    """

    _SENTINEL: Final = 7_316_495_208_833_150_447

    def __init__(self, backend: Any, expr: Any, *params: Any) -> None:
        self.backend = backend
        self.expr = expr
        self.params = params
        marks = [str(self._SENTINEL + 2 * i) for i in range(len(params))]
        text = backend.compile(
            expr, params={p: self._SENTINEL + 2 * i for i, p in enumerate(params)}
        )
        found = all(text.count(mark) == 1 for mark in marks)
        self.marks = marks
        self.text: str | None = text if found else None

    def sql(self, *values: int) -> str:
        """The query for ``values`` (one per parameter, in order)."""
        if self.text is None:
            return str(
                self.backend.compile(self.expr, params=dict(zip(self.params, values, strict=True)))
            )
        text = self.text
        for mark, value in zip(self.marks, values, strict=True):
            text = text.replace(mark, str(int(value)))
        return text


def _open_arrow(path: Path) -> Any:
    """A read-only ADBC SQLite connection (``None`` without the driver, or if it fails)."""
    try:
        import adbc_driver_manager
        import adbc_driver_sqlite.dbapi
    except ImportError:
        return None
    uri = f"file:{quote(str(path))}?mode=ro"
    try:  # autocommit: no transaction outlives a query, so k-msg's writers are not held up
        return adbc_driver_sqlite.dbapi.connect(uri, autocommit=True)
    except adbc_driver_manager.Error:
        return None


def _typed_frame(table: Any, types: Mapping[str, Any]) -> pl.DataFrame | None:
    """Arrow columns in the types of the JSON and row paths (``None``: read them as rows).

    SQLite types each value, not each column: the driver gives a column the type that
    holds all of its values in the batch. Integer columns are kept as ``Int64`` and real
    ones as ``Float64`` when every value is a number; text columns, and number columns
    holding text, become text. A BLOB anywhere, or a real in an integer column (``2.0``
    would read as ``'2.0'``), sends the rows down the row path, which judges each value.
    """
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    exprs: list[pl.Expr] = []
    for c, want in types.items():
        got = frame.schema[c]
        if got == pl.Binary or (want == pl.Int64 and got.is_float()):
            return None
        number = got.is_integer() or got.is_float() or got == pl.Null
        exprs.append(pl.col(c).cast(want if number else pl.String))
    return frame.select(exprs)


def _allowed_types(dtype: Any) -> tuple[str, ...] | None:
    """SQLite storage classes a column's JSON array can be decoded with its declared type."""
    if dtype.is_integer():
        return _INT_TYPES
    if dtype.is_floating():
        return _REAL_TYPES
    return None


def _decode_json(
    texts: Sequence[bytes], odd: Sequence[int], cols: list[str], dtypes: Mapping[str, Any], n: int
) -> pl.DataFrame:
    """Columns of one chunk from their JSON arrays (text where a value strays from its type)."""
    data: dict[str, pl.Series] = {}
    odd_of = iter(odd)
    for c, text in zip(cols, texts, strict=True):
        dtype = dtypes[c]
        inner: Any = pl.String
        if _allowed_types(dtype) is not None and not next(odd_of):
            inner = pl.Int64 if dtype.is_integer() else pl.Float64
        values = pl.Series(c, [text], dtype=pl.Binary).cast(pl.String)
        series = values.str.json_decode(pl.List(inner)).explode()
        if series.len() != n:
            msg = f"column {c}: {series.len()} values for {n} rows"
            raise ValueError(msg)
        data[c] = series
    return pl.DataFrame(data)


def _polars_type(dtype: Any) -> Any:
    """The Polars type a column is read as: ``Int64``, ``Float64`` or text."""
    if dtype.is_integer():
        return pl.Int64
    if dtype.is_floating():
        return pl.Float64
    return pl.String


def _loose_frame(
    rows: list[tuple[Any, ...]], cols: list[str], schema: Mapping[str, Any]
) -> pl.DataFrame:
    """Rows as columns of their types, or as text where a value strays from its type.

    Column by column: a frame built from rows would silently cut ``1.5`` to ``1``.
    """
    data: dict[str, pl.Series] = {}
    for name, values in zip(cols, zip(*rows, strict=True), strict=True):
        try:
            data[name] = pl.Series(name, values, dtype=schema[name], strict=True)
        except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
            text = [None if v is None else str(v) for v in values]
            data[name] = pl.Series(name, text, dtype=pl.String)
    return pl.DataFrame(data)


def _json_group_array_impl(arg) -> str:  # type: ignore[no-untyped-def]
    """SQLite's ``json_group_array``: the values of a group as one JSON array (text)."""
    raise NotImplementedError  # pragma: no cover - never called: the database computes it


_UDF: dict[str, Any] = {}


def _json_group_array(value: Any) -> Any:
    """``json_group_array(value)`` as an Ibis expression (declared once, lazily)."""
    if "json_group_array" not in _UDF:
        import ibis

        _UDF["json_group_array"] = ibis.udf.agg.builtin(
            _json_group_array_impl, name="json_group_array"
        )
    return _UDF["json_group_array"](value)


def _quote_sqlite(table: str) -> str:
    schema_name, _, name = table.rpartition(".")
    quoted = '"' + name.replace('"', '""') + '"'
    return f'"{schema_name.replace(chr(34), chr(34) * 2)}".{quoted}' if schema_name else quoted


def _sqlite_rowid(backend: Any, schema_name: str, name: str, columns: Sequence[str]) -> str | None:
    """The name that reaches a SQLite table's rowid (``None``: a view or ``WITHOUT ROWID``)."""
    import sqlite3

    lowered = {c.lower() for c in columns}
    table = _quote_sqlite(f"{schema_name}.{name}" if schema_name else name)
    for alias in ("rowid", "_rowid_", "oid"):
        if alias in lowered:
            continue
        try:
            cursor = backend.raw_sql(f"SELECT {alias} FROM {table} LIMIT 1")
        except sqlite3.Error:
            return None
        try:
            row = cursor.fetchone()
        finally:
            cursor.close()
        if row is not None and row[0] is None:  # a view: no rowid behind it
            return None
        return alias
    return None


# --------------------------------------------------------------------------- URLs


def describe_url(url: str) -> tuple[str, str, dict[str, Any]]:
    """``(kind, redacted url, connect arguments)`` of a source URL.

    Examples
    --------
    >>> describe_url("postgresql://me:secret@db:5432/kmsg")[:2]
    ('postgres', 'postgresql://me:***@db:5432/kmsg')
    """
    if not isinstance(url, str) or not url.strip():
        invalid("url", url, "e.g. 'sqlite:///path/kmsg.sqlite'")
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
            invalid("url", url, "sqlite:///path/to/kmsg.sqlite")
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
    kind, redacted, args = describe_url(url)
    import ibis

    if kind == "sqlite":
        import sqlite3

        path: Path = args["path"]
        if not path.is_file():
            msg = f"no SQLite database at {path} (from {url!r})"
            raise ImportSourceError(msg)
        # read-only; used by the reader thread while the import converts and writes
        con = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, check_same_thread=False)
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


def source_id(redacted: str, table: str) -> str:
    """The id of a source in the lake's bookkeeping (URL without password, and table)."""
    return hashlib.sha256(f"{redacted}\n{table}".encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- read-ahead


_DONE: Final = object()


class Prefetch:
    """Runs a chunk iterator in a thread, at most ``depth`` chunks ahead of the consumer.

    Reading (SQLite's step and the ADBC driver, or Polars' JSON decoding) then overlaps
    the conversion and the lake writes of the chunks before: the work of each is mostly
    outside the GIL. Errors reach the consumer.

    Examples
    --------
    >>> with Prefetch(iter(range(3))) as items:
    ...     list(items)
    [0, 1, 2]
    """

    def __init__(self, chunks: Iterator[Any], *, depth: int = 2) -> None:
        self._chunks = chunks
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kmsg-import-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._chunks:
                self._queue.put(item)
                if self._stop.is_set():
                    return
            self._queue.put(_DONE)
        except BaseException as err:  # handed to the consumer, raised there
            self._queue.put(err)
        finally:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop the reader (it ends after the chunk in hand) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
            self._thread.join(timeout=0.05)

    def __enter__(self) -> Iterator[Any]:
        return iter(self)

    def __exit__(self, *exc: object) -> None:
        self.close()
