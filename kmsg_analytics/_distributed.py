"""The delivery report on a distributed engine: the same metric definitions through Ibis.

:mod:`kmsg_analytics._metrics` defines every count and rate once, as predicates that
compile to Polars or to Ibis. This module points the Ibis side at a lake: it reads the
lake's compacted ``current/`` files and the snapshots past the watermark with any Ibis
backend (PySpark, DuckDB, ...), applies the store's latest-snapshot rule
(:func:`kmsg_analytics._metrics.ibis_latest`) where the watermark has not caught up,
and returns the very :class:`~kmsg_analytics._analytics.DeliverySummary` that
:meth:`DeliveryAnalytics.summary <kmsg_analytics._analytics.DeliveryAnalytics.summary>`
returns. Counts run in the engine (one aggregation per fine group); the rollups, the
rates and the Wilson intervals are computed from those counts by the same functions the
Polars path uses, so both give the same numbers.

:func:`spark_session` builds a local Spark session with settings for a small machine.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

import polars as pl
import pyarrow as pa

from . import _metrics as m
from ._analytics import (
    DeliverySummary,
    _fields,
    _parity_columns,
    _summary_from_row,
    _window,
    assemble_summary,
    summary_keys,
)
from ._errors import InvalidRecordError, KmsgAnalyticsError, LakeError
from ._lake import ParquetTrackingStore
from ._lakefs import LakePaths
from ._schema import CURRENT_PARTITION, SNAPSHOT_SCHEMA

if TYPE_CHECKING:
    import ibis.expr.types as ir

__all__ = [
    "LAKE_COLUMNS",
    "LakeFiles",
    "fetch",
    "ibis_report",
    "lake_files",
    "lake_table",
    "spark_backend",
    "spark_session",
]

#: The record columns :func:`lake_table` reads by default: the precedence rule's, the
#: metrics' (:data:`kmsg_analytics._metrics.PREDICATE_COLUMNS`) and the group fields.
LAKE_COLUMNS: Final = (
    "message_id",
    "seq",
    "snapshot_kind",
    "requested_at",
    "status",
    "provider_message_id",
    "last_error",
    "provider_id",
    "type",
    "provider_status_code",
    "retention_class",
)

_KEYS: Final = ("message_id", "seq", "snapshot_kind")
_SPARK_HINT: Final = 'pip install "kmsg-analytics[spark]"'


# --------------------------------------------------------------------------- the lake's files


@dataclass(frozen=True)
class LakeFiles:
    """The files that make up a lake's current state at one moment.

    ``current``: the compacted current state (one row per message, as of
    ``watermark``). ``delta``: the history files holding snapshots past the watermark
    (only their rows with ``seq > watermark`` count). Paths are whatever the engine can
    read: local paths, or URIs such as ``s3a://bucket/lake/...`` for a Spark cluster.
    """

    current: tuple[str, ...]
    delta: tuple[str, ...]
    watermark: int


def lake_files(lake: str | os.PathLike[str] | ParquetTrackingStore) -> LakeFiles:
    """The files of a local lake directory (or of a :class:`ParquetTrackingStore`).

    Reads ``_state.json`` for the watermark and lists ``current/`` and the history
    files whose sequence range passes the watermark; nothing is written and no lock is
    taken, so a report can run beside a writer. Acknowledged rows still in the writer's
    log (not yet published) are not seen.

    Examples
    --------
    >>> import tempfile
    >>> from kmsg_analytics._synthetic import load_snapshots, synthetic_snapshots
    >>> lake = ParquetTrackingStore(tempfile.mkdtemp(), hash_key="doctest-key")
    >>> _ = load_snapshots(lake, synthetic_snapshots(50, seed=1, hash_key="doctest-key"))
    >>> files = lake_files(lake)
    >>> len(files.current), files.watermark, len(files.delta) > 0  # nothing folded yet
    (0, 0, True)
    >>> _ = lake.compact(history=False)
    >>> files = lake_files(lake)
    >>> len(files.current) > 0, files.watermark > 0, files.delta
    (True, True, ())
    >>> lake.close()
    """
    if isinstance(lake, ParquetTrackingStore):
        lake.flush()
        root = lake.paths.root
    else:
        root = Path(lake)
    paths = LakePaths(root)
    if not paths.manifest.is_file():
        msg = (
            f"no kmsg-analytics lake at {str(root)!r} (no _lake.json there): pass the "
            "directory a ParquetTrackingStore wrote"
        )
        raise LakeError(msg)
    state = json.loads(paths.state.read_text()) if paths.state.is_file() else {}
    watermark = int(state.get("watermark", 0))
    prefix = f"{CURRENT_PARTITION}="
    current = (
        sorted(
            str(p / "part-0.parquet")
            for p in paths.current.iterdir()
            if p.name.startswith(prefix) and (p / "part-0.parquet").is_file()
        )
        if paths.current.is_dir()
        else []
    )
    delta = [str(f.path) for f in paths.history_files() if f.hi > watermark]
    return LakeFiles(tuple(current), tuple(delta), watermark)


# --------------------------------------------------------------------------- reading


def _scan(con: Any, files: Sequence[str], columns: Sequence[str]) -> ir.Table:
    """``columns`` of the Parquet ``files`` as an Ibis table on ``con`` (typed as the lake)."""
    import ibis

    schema = pa.schema([SNAPSHOT_SCHEMA.field(c).with_nullable(True) for c in columns])
    name = getattr(con, "name", "")
    if name == "pyspark":
        from pyspark.sql.pandas.types import from_arrow_schema

        session = con._session  # the backend's SparkSession
        spark_schema = from_arrow_schema(schema)
        # an explicit schema: no inference job over the footers, old files that lack a
        # column read it as null, and only these columns are decoded
        frame = (
            session.read.schema(spark_schema).parquet(*files)
            if files
            else session.createDataFrame([], spark_schema)
        )
        view = f"kmsg_lake_{uuid.uuid4().hex}"
        frame.createOrReplaceTempView(view)
        return con.table(view)
    if not files:
        return ibis.memtable(schema.empty_table())
    options = {"union_by_name": True} if name == "duckdb" else {}
    table = con.read_parquet(list(files), **options)
    return table.select(*(table[c].cast(ibis.dtype(schema.field(c).type)).name(c) for c in columns))


def lake_table(
    con: Any,
    lake: str | os.PathLike[str] | ParquetTrackingStore | LakeFiles,
    *,
    columns: Sequence[str] = LAKE_COLUMNS,
) -> ir.Table:
    """The current records of a lake as an Ibis table on the backend ``con``.

    The compacted ``current/`` rows (those at or below the watermark, and rows a fold
    wrote after the files were listed) plus the snapshots past the watermark, reduced
    to each message's current state by the store's rule
    (:func:`kmsg_analytics._metrics.ibis_latest`: highest ``seq``, a ``send`` never
    beating another kind). When the watermark has caught up, the
    ``current/`` files are read as they are. ``columns`` are the record columns to
    keep (``message_id``, ``seq`` and ``snapshot_kind`` are always read).

    Examples
    --------
    >>> import ibis, tempfile
    >>> from kmsg_analytics._synthetic import load_snapshots, synthetic_snapshots
    >>> lake = ParquetTrackingStore(tempfile.mkdtemp(), hash_key="doctest-key")
    >>> _ = load_snapshots(lake, synthetic_snapshots(200, seed=1, hash_key="doctest-key"))
    >>> con = ibis.duckdb.connect()
    >>> table = lake_table(con, lake)  # merge-on-read: nothing folded yet
    >>> fetch(con, table.aggregate(n=table.count())).item()
    200
    >>> lake.close()
    """
    files = lake if isinstance(lake, LakeFiles) else lake_files(lake)
    wanted = list(dict.fromkeys([*_KEYS, *columns]))
    for c in wanted:
        if c not in SNAPSHOT_SCHEMA.names:
            _invalid("columns", c, "columns of the lake's snapshot schema")
    current = _scan(con, files.current, wanted)
    if not files.delta:
        return current.select(*columns)
    delta = _scan(con, files.delta, wanted)
    delta = delta.filter(delta["seq"] > files.watermark)
    # rows past the watermark in current/ were written by a fold after the files were
    # listed (or by one that died): a message's row there stands unless the delta has
    # the message (that fold may have taken its older row away); usually there are none
    later = current.filter(current["seq"] > files.watermark)
    later = later.anti_join(delta.select("message_id"), "message_id")
    base = current.filter(current["seq"] <= files.watermark).union(later)
    return m.ibis_latest(base.union(delta)).select(*columns)


def fetch(con: Any, expr: ir.Table) -> pl.DataFrame:
    """Run ``expr`` on ``con`` and return a Polars frame (through Arrow, not pandas).

    Examples
    --------
    >>> import ibis
    >>> con = ibis.duckdb.connect()
    >>> table = ibis.memtable(pa.table({"a": [1, 2]}))
    >>> fetch(con, table.mutate(b=table.a * 2)).rows()
    [(1, 2), (2, 4)]
    """
    if getattr(con, "name", "") == "pyspark":
        frame = con.raw_sql(con.compile(expr))
        if hasattr(frame, "toArrow"):  # PySpark 4: straight to Arrow
            # PySpark leaves the socket it reads the result from to the garbage
            # collector (a ResourceWarning each call); it is done with it on return
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                arrow = frame.toArrow()
                del frame
            out = pl.from_arrow(arrow)
            assert isinstance(out, pl.DataFrame)
            return out
    result = con.to_pyarrow(expr)
    out = pl.from_arrow(result)
    assert isinstance(out, pl.DataFrame)
    return out


# --------------------------------------------------------------------------- the report


def _in(table: ir.Table, column: str, values: str | Sequence[str] | None) -> ir.Table:
    if values is None:
        return table
    items = [values] if isinstance(values, str) else list(values)
    return table.filter(table[column].isin(items))


def ibis_report(
    con: Any,
    lake: str | os.PathLike[str] | ParquetTrackingStore | LakeFiles,
    start: Any,
    end: Any,
    *,
    provider_id: str | Sequence[str] | None = None,
    type: str | Sequence[str] | None = None,
    include_by_provider: bool = False,
    include_by_type: bool = False,
    by: str | Sequence[str] | None = None,
    min_n: int = m.DEFAULT_MIN_N,
) -> DeliverySummary:
    """:meth:`DeliveryAnalytics.summary` computed by an Ibis backend (Spark, DuckDB, ...).

    Same arguments, same answer: ``total``, ``by_status``, k-msg's three rates, every
    named rate in ``metrics`` with its Wilson interval, ``by_provider``/``by_type`` on
    request and the ``by=`` breakdown table. The engine reads the lake (see
    :func:`lake_table`) and computes the counts of every metric per finest group in
    one aggregation; coarser groups are sums of those counts.

    Examples
    --------
    >>> import ibis, tempfile
    >>> from kmsg_analytics._synthetic import load_snapshots, synthetic_snapshots
    >>> lake = ParquetTrackingStore(tempfile.mkdtemp(), hash_key="doctest-key")
    >>> _ = load_snapshots(lake, synthetic_snapshots(300, seed=2, hash_key="doctest-key"))
    >>> _ = lake.compact(history=False)
    >>> con = ibis.duckdb.connect()  # or spark_backend() for Spark
    >>> report = ibis_report(con, lake, "2026-01-01", "2026-12-31", by="provider_id")
    >>> from kmsg_analytics._analytics import DeliveryAnalytics
    >>> local = DeliveryAnalytics(lake).summary("2026-01-01", "2026-12-31", by="provider_id")
    >>> report.total == local.total == 300, report.rates == local.rates
    (True, True)
    >>> report.breakdown.equals(local.breakdown)
    True
    >>> lake.close()
    """
    s, e = _window(start, end)
    if not isinstance(min_n, int) or isinstance(min_n, bool) or min_n < 1:
        _invalid("min_n", min_n, "a whole number >= 1")
    by_cols = _fields(by, "by")
    keys = summary_keys(by_cols, include_by_provider, include_by_type)
    rates = tuple(m.RATES.values())
    columns = ["requested_at", "provider_id", "type", *sorted(m.metric_columns(m.COUNTS, rates))]
    table = lake_table(con, lake, columns=list(dict.fromkeys([*columns, *keys])))
    table = table.filter((table["requested_at"] >= s) & (table["requested_at"] <= e))
    table = _in(_in(table, "provider_id", provider_id), "type", type)
    counts = table.aggregate(m.ibis_aggregations(table, m.COUNTS, rates), by=keys)
    count_cols = [c.name for c in m.COUNTS] + [
        f"{r.name}_{half}" for r in rates for half in ("num", "den")
    ]
    fine = fetch(con, counts).with_columns(pl.col(count_cols).cast(pl.Int64))
    if keys:
        fine = fine.with_columns(pl.col(keys).cast(pl.String))

    def level(cols: Sequence[str]) -> pl.DataFrame:
        sums = pl.col(count_cols).sum()
        out = fine.group_by(list(cols)).agg(sums).sort(list(cols)) if cols else fine.select(sums)
        return out.with_columns(_parity_columns())

    def make(row: Mapping[str, Any]) -> DeliverySummary:
        return _summary_from_row(row, min_n, s, e, None)

    return assemble_summary(level, make, by_cols, include_by_provider, include_by_type, s, e, None)


# --------------------------------------------------------------------------- Spark


def spark_session(
    *,
    master: str = "local[2]",
    app_name: str = "kmsg-analytics",
    shuffle_partitions: int = 4,
    driver_memory: str = "2g",
    conf: dict[str, str] | None = None,
) -> Any:
    """A Spark session for the report, tuned for a small machine by default.

    ``local[2]`` (two worker threads), few shuffle partitions (the aggregations are
    tiny), a modest driver heap, no web UI or progress bar, everything bound to
    127.0.0.1 and the session time zone UTC (the lake's). ``conf`` adds or overrides
    Spark settings (for a cluster pass ``master="spark://host:7077"`` or
    ``"yarn"`` and its settings). Needs Java 17+ and the ``spark`` extra.

    Examples
    --------
    Starting a JVM takes seconds, so this example is shown, not run as a doctest
    (``tests/test_spark.py`` runs it)::

        spark = spark_session(shuffle_partitions=2)
        spark.conf.get("spark.sql.shuffle.partitions")  # '2'
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as err:
        msg = f"Spark is not installed: {_SPARK_HINT} (it also needs Java 17 or newer)"
        raise KmsgAnalyticsError(msg) from err
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        msg = (
            "Spark needs a Java runtime (17 or newer) and none was found: install one "
            "(Debian/Ubuntu: apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
        )
        raise KmsgAnalyticsError(msg)
    local = master.startswith("local")
    if local:  # no network: bind the driver to the loopback address
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    settings = {
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.driver.memory": driver_memory,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.catalogImplementation": "in-memory",
        # list a lake's files on the driver, not with a job (one per read otherwise)
        "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
    }
    if local:
        settings.update({"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"})
    settings.update(conf or {})
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def spark_backend(session: Any = None, **options: Any) -> Any:
    """An Ibis PySpark backend on ``session`` (by default a new :func:`spark_session`).

    ``options`` go to :func:`spark_session` when no session is given.

    Examples
    --------
    Shown, not run as a doctest (``tests/test_spark.py`` runs it on a 1M-message lake)::

        con = spark_backend(master="local[2]")
        ibis_report(con, "lake/", "2026-10-01", "2026-10-31").total
    """
    import ibis

    if session is None:
        session = spark_session(**options)
    elif options:
        _invalid("options", options, "no options when a session is given")
    return ibis.pyspark.connect(session)


def _invalid(field: str, value: object, expected: str) -> NoReturn:
    """Raise :class:`InvalidRecordError` naming the field, the value and what is valid."""
    raise InvalidRecordError(field, value, expected)
