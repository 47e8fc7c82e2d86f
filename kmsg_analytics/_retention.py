"""Retention: k-msg's retention classes, the ``kr-b2b-baseline`` preset, and removal from a lake.

Every record carries a ``retention_class`` (``opsLogs``, ``telecomMetadata`` or
``billingEvidence``). A :class:`RetentionPolicy` says how many days each class is kept:
the preset's days, replaced by a positive tenant override of that class, both replaced
by a positive answer of the contract resolver (k-msg's ``contractOverrideResolver``).
A message is past its retention when ``requested_at + days <= now``; its class, its
``requested_at`` and what the resolver sees are those of its current record.

:func:`plan_retention` shows what would be removed; :func:`apply_retention` removes it,
snapshots included, one partition at a time. Each partition is replaced in one rename
(readers see it whole, old or new), and every replaced partition leaves a JSON line in
``<lake>/_retention/log.jsonl`` with counts per class and keyed hashes of the removed
message ids (never numbers). A run that dies half way is finished by the next run.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, NoReturn

import polars as pl
import pyarrow.parquet as pq

from ._errors import InvalidRecordError, LakeCorruptError
from ._lakefs import LakePaths, read_json, replace_dir, write_json_atomic, writer_lock
from ._records import (
    DEFAULT_RETENTION_CLASS,
    RETENTION_CLASSES,
    TrackingRecord,
    coerce_time,
)
from ._schema import (
    CURRENT_PARTITION,
    HISTORY_PARTITION,
    POLARS_SCHEMA,
    RECORD_COLUMNS,
    SNAPSHOT_SCHEMA,
    row_to_record,
    to_micros,
)

if TYPE_CHECKING:
    from ._lake import ParquetTrackingStore
    from ._phone import HashKey

__all__ = [
    "RETENTION_PRESETS",
    "ContractResolver",
    "RetentionContext",
    "RetentionPlan",
    "RetentionPolicy",
    "RetentionResult",
    "apply_retention",
    "plan_retention",
]

#: Days each retention class is kept, per preset (k-msg's ``KR_B2B_BASELINE_RETENTION_DAYS``).
RETENTION_PRESETS: Final[Mapping[str, Mapping[str, int]]] = MappingProxyType(
    {
        "kr-b2b-baseline": MappingProxyType(
            {"opsLogs": 90, "telecomMetadata": 365, "billingEvidence": 1825}
        )
    }
)

#: Message ids of one partition listed (as keyed hashes) in its log line up to this many.
_MAX_ID_HASHES = 10_000
_RESOLVER_SLICE = 20_000
#: Longest retention accepted (about 270 years; further would leave the calendar).
_MAX_DAYS = 100_000


@dataclass(frozen=True, slots=True)
class RetentionContext:
    """What a contract resolver is asked about one message.

    Attributes
    ----------
    retention_class
        The class of the message's current record.
    default_days
        The days without a contract: the tenant override if positive, else the preset.
    record
        The message's current record.
    tenant_id
        The tenant the policy was made for (``None`` when not given).
    """

    retention_class: str
    default_days: float
    record: TrackingRecord
    tenant_id: str | None = None


#: k-msg's ``contractOverrideResolver``: a positive number of days replaces the tenant
#: override and the preset; ``None``, zero or a negative number keeps ``default_days``.
ContractResolver = Callable[[RetentionContext], "float | None"]


def _invalid(name: str, value: object, expected: str) -> NoReturn:
    raise InvalidRecordError(name, value, expected)


def _days_value(value: object, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or abs(value) > _MAX_DAYS
    ):
        _invalid(name, value, f"a number of days (at most {_MAX_DAYS:,})")
    return value


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each retention class is kept.

    Parameters
    ----------
    preset
        The preset's days per class; only ``"kr-b2b-baseline"`` (90 / 365 / 1825) exists.
    tenant_override_days
        Days per class replacing the preset when positive (zero or negative: no override).
    contract_resolver
        Called once per message with a :class:`RetentionContext`; a positive number of
        days replaces both the override and the preset for that message. Costs a Python
        call per message: prefer overrides where a class-wide rule is enough.
    tenant_id
        Passed to the resolver.

    Examples
    --------
    >>> policy = RetentionPolicy(tenant_override_days={"opsLogs": 30, "billingEvidence": 0})
    >>> [policy.default_days(c) for c in ("opsLogs", "telecomMetadata", "billingEvidence")]
    [30, 365, 1825]
    """

    preset: str = "kr-b2b-baseline"
    tenant_override_days: Mapping[str, float] = field(default_factory=dict)
    contract_resolver: ContractResolver | None = None
    tenant_id: str | None = None

    def __post_init__(self) -> None:
        if self.preset not in RETENTION_PRESETS:
            _invalid("preset", self.preset, f"one of {sorted(RETENTION_PRESETS)}")
        if not isinstance(self.tenant_override_days, Mapping):
            _invalid(
                "tenant_override_days", self.tenant_override_days, "a mapping of class to days"
            )
        overrides: dict[str, float] = {}
        for cls, days in self.tenant_override_days.items():
            if cls not in RETENTION_CLASSES:
                _invalid(
                    "tenant_override_days", cls, f"a retention class, one of {RETENTION_CLASSES}"
                )
            overrides[cls] = _days_value(days, f"tenant_override_days[{cls!r}]")
        object.__setattr__(self, "tenant_override_days", MappingProxyType(overrides))
        if self.contract_resolver is not None and not callable(self.contract_resolver):
            _invalid("contract_resolver", self.contract_resolver, "a callable or None")

    def default_days(self, retention_class: str) -> float:
        """Days of ``retention_class`` without a contract (override if positive, else preset).

        An unknown class counts as ``telecomMetadata`` (the default class of a record).
        """
        if retention_class not in RETENTION_CLASSES:
            retention_class = DEFAULT_RETENTION_CLASS
        override = self.tenant_override_days.get(retention_class)
        if override is not None and override > 0:
            return override
        return RETENTION_PRESETS[self.preset][retention_class]

    def days_for(self, record: TrackingRecord) -> float:
        """Days ``record`` is kept: the contract's answer if positive, else the default days.

        Examples
        --------
        >>> from datetime import UTC, datetime
        >>> t = datetime(2026, 1, 1, tzinfo=UTC)
        >>> rec = TrackingRecord("m1", "solapi", "g1", "SMS", "h", "010****5678", t, "SENT", t, t,
        ...                      retention_class="opsLogs")
        >>> RetentionPolicy(contract_resolver=lambda ctx: ctx.default_days * 2).days_for(rec)
        180
        """
        default = self.default_days(record.retention_class)
        if self.contract_resolver is None:
            return default
        answer = self.contract_resolver(
            RetentionContext(record.retention_class, default, record, self.tenant_id)
        )
        if answer is None:
            return default
        days = _days_value(answer, f"contract_resolver answer for message {record.message_id!r}")
        return days if days > 0 else default

    def describe(self) -> dict[str, Any]:
        """The policy as JSON-ready data (for the log; the resolver by name only)."""
        resolver = self.contract_resolver
        return {
            "preset": self.preset,
            "days": {c: self.default_days(c) for c in RETENTION_CLASSES},
            "tenant_override_days": dict(self.tenant_override_days),
            "contract_resolver": None
            if resolver is None
            else getattr(resolver, "__qualname__", type(resolver).__name__),
            "tenant_id": self.tenant_id,
        }


# --------------------------------------------------------------------------- plans


_PLAN_SCHEMA: Final = pl.Schema(
    {
        "dataset": pl.String,
        "partition": pl.String,
        "retention_class": pl.String,
        "messages": pl.Int64,
        "snapshots": pl.Int64,
    }
)


@dataclass(frozen=True)
class RetentionPlan:
    """What retention would remove from a lake at ``now``.

    Attributes
    ----------
    now
        The moment retention is measured at.
    policy
        The policy applied.
    current
        One row per current partition and class: ``requested_date``,
        ``retention_class``, ``messages``.
    history
        One row per history partition and class: ``ingest_date``, ``retention_class``,
        ``snapshots`` (rows) and ``messages`` (distinct ids).
    expired
        The messages past retention: ``message_id``, ``retention_class``,
        ``requested_date`` (the current partition holding it), ``requested_at``.
    """

    now: datetime
    policy: RetentionPolicy
    current: pl.DataFrame
    history: pl.DataFrame
    expired: pl.DataFrame = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"RetentionPlan(now={self.now.isoformat()}, messages={self.messages:,}, "
            f"snapshots={self.snapshots:,}, current_partitions={self.current_partitions}, "
            f"history_partitions={self.history_partitions})"
        )

    @property
    def messages(self) -> int:
        """Messages past retention."""
        return self.expired.height

    @property
    def snapshots(self) -> int:
        """History rows (snapshots) of those messages."""
        return int(self.history.get_column("snapshots").sum())

    @property
    def current_partitions(self) -> int:
        """Current partitions that would be rewritten."""
        return self.current.get_column(CURRENT_PARTITION).n_unique()

    @property
    def history_partitions(self) -> int:
        """History partitions that would be rewritten."""
        return self.history.get_column(HISTORY_PARTITION).n_unique()

    def by_class(self) -> dict[str, dict[str, int]]:
        """``{class: {"messages": n, "snapshots": n}}`` for every class (zeros included)."""
        out = {c: {"messages": 0, "snapshots": 0} for c in RETENTION_CLASSES}
        for row in self.expired.group_by("retention_class").len().iter_rows():
            out.setdefault(row[0], {"messages": 0, "snapshots": 0})["messages"] = int(row[1])
        hist = self.history.group_by("retention_class").agg(pl.col("snapshots").sum())
        for row in hist.iter_rows():
            out.setdefault(row[0], {"messages": 0, "snapshots": 0})["snapshots"] = int(row[1])
        return out

    def to_polars(self) -> pl.DataFrame:
        """One row per dataset, partition and class (``messages``, ``snapshots``).

        Examples
        --------
        >>> import tempfile
        >>> from kmsg_analytics import ParquetTrackingStore
        >>> with ParquetTrackingStore(tempfile.mkdtemp(), hash_key="doctest-key") as lake:
        ...     plan_retention(lake, now="2030-01-01T00:00:00Z").to_polars().columns
        ['dataset', 'partition', 'retention_class', 'messages', 'snapshots']
        """
        current = self.current.select(
            pl.lit("current").alias("dataset"),
            pl.format(f"{CURRENT_PARTITION}={{}}", pl.col(CURRENT_PARTITION)).alias("partition"),
            "retention_class",
            "messages",
            pl.col("messages").alias("snapshots"),
        )
        history = self.history.select(
            pl.lit("history").alias("dataset"),
            pl.format(f"{HISTORY_PARTITION}={{}}", pl.col(HISTORY_PARTITION)).alias("partition"),
            "retention_class",
            "messages",
            "snapshots",
        )
        return (
            pl.concat([current, history])
            .cast(_PLAN_SCHEMA)
            .sort("dataset", "partition", "retention_class")
        )

    def lines(self) -> list[str]:
        """The plan in plain words, one line per item."""
        days = ", ".join(
            f"{c} {_days_text(self.policy.default_days(c))}" for c in RETENTION_CLASSES
        )
        contract = " (and a contract resolver)" if self.policy.contract_resolver else ""
        out = [
            f"retention at {self.now.isoformat()}: {days}{contract}",
            f"{self.messages:,} messages past retention, {self.snapshots:,} snapshots in history",
        ]
        for cls, n in self.by_class().items():
            if n["messages"] or n["snapshots"]:
                out.append(f"  {cls}: {n['messages']:,} messages, {n['snapshots']:,} snapshots")
        out.append(
            f"{self.current_partitions} current and {self.history_partitions} history "
            "partitions would be rewritten"
        )
        return out

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(c)}</td><td>{_days_text(self.policy.default_days(c))}</td>"
            f"<td>{n['messages']:,}</td><td>{n['snapshots']:,}</td></tr>"
            for c, n in self.by_class().items()
        )
        contract = (
            "; a contract resolver may change single messages"
            if (self.policy.contract_resolver)
            else ""
        )
        return (
            f"<h4>Retention plan at {html.escape(self.now.isoformat())}</h4>"
            f"<p>{self.messages:,} messages past retention ({self.snapshots:,} snapshots); "
            f"{self.current_partitions} current and {self.history_partitions} history "
            f"partitions to rewrite{html.escape(contract)}.</p>"
            "<table><thead><tr><th>class</th><th>kept for</th><th>messages</th>"
            f"<th>snapshots</th></tr></thead><tbody>{rows}</tbody></table>"
            f"{_partitions_html(self.to_polars())}"
        )


@dataclass(frozen=True)
class RetentionResult:
    """What :func:`apply_retention` removed.

    Attributes
    ----------
    run_id
        The run's id in the log.
    plan
        The plan applied (computed under the writer lock, after folding).
    partitions
        The log line of every partition replaced, in order.
    resumed
        Whether the run finished an earlier run that had been interrupted.
    log_path
        Where the log lines were appended.
    """

    run_id: str
    plan: RetentionPlan
    partitions: tuple[dict[str, Any], ...]
    resumed: bool
    log_path: Path

    def __repr__(self) -> str:
        return (
            f"RetentionResult(run_id={self.run_id!r}, messages={self.messages_removed:,}, "
            f"snapshots={self.snapshots_removed:,}, partitions={len(self.partitions)}, "
            f"resumed={self.resumed})"
        )

    @property
    def messages_removed(self) -> int:
        """Current rows removed (one per message)."""
        return sum(p["messages_removed"] for p in self.partitions if p["dataset"] == "current")

    @property
    def snapshots_removed(self) -> int:
        """History rows removed."""
        return sum(p["snapshots_removed"] for p in self.partitions if p["dataset"] == "history")

    def to_polars(self) -> pl.DataFrame:
        """One row per replaced partition: dataset, partition, rows before/after, removed."""
        return pl.DataFrame(
            [
                {
                    "dataset": p["dataset"],
                    "partition": p["partition"],
                    "rows_before": p["rows_before"],
                    "rows_after": p["rows_after"],
                    "messages_removed": p["messages_removed"],
                    "snapshots_removed": p["snapshots_removed"],
                }
                for p in self.partitions
            ],
            schema={
                "dataset": pl.String,
                "partition": pl.String,
                "rows_before": pl.Int64,
                "rows_after": pl.Int64,
                "messages_removed": pl.Int64,
                "snapshots_removed": pl.Int64,
            },
        )

    def lines(self) -> list[str]:
        """What was removed, in plain words."""
        head = "finished an interrupted run: " if self.resumed else ""
        out = [
            f"{head}removed {self.messages_removed:,} messages and {self.snapshots_removed:,} "
            f"snapshots past retention at {self.plan.now.isoformat()} "
            f"({len(self.partitions)} partitions replaced)",
        ]
        out.extend(
            f"  {p['dataset']}/{p['partition']}: {p['rows_before']:,} -> {p['rows_after']:,} rows"
            for p in self.partitions
        )
        out.append(f"record of the run: {self.log_path} (run {self.run_id})")
        return out

    def _repr_html_(self) -> str:
        head = "Finished an interrupted retention run" if self.resumed else "Retention applied"
        return (
            f"<h4>{head} at {html.escape(self.plan.now.isoformat())}</h4>"
            f"<p>{self.messages_removed:,} messages and {self.snapshots_removed:,} snapshots "
            f"removed; {len(self.partitions)} partitions replaced. Record: "
            f"<code>{html.escape(str(self.log_path))}</code> (run "
            f"<code>{html.escape(self.run_id)}</code>).</p>"
            f"{_partitions_html(self.to_polars())}"
        )


def _days_text(days: float) -> str:
    return f"{days:g} days"


def _partitions_html(frame: pl.DataFrame, limit: int = 40) -> str:
    if frame.is_empty():
        return "<p>Nothing to remove.</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{v:,}</td>" if isinstance(v, int) else f"<td>{html.escape(str(v))}</td>"
            for v in row
        )
        + "</tr>"
        for row in frame.head(limit).iter_rows()
    )
    more = f"<p>… and {frame.height - limit:,} more rows</p>" if frame.height > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


# --------------------------------------------------------------------------- deciding


_EXPIRED_SCHEMA: Final = pl.Schema(
    [
        ("message_id", pl.String()),
        ("retention_class", pl.String()),
        (CURRENT_PARTITION, pl.Date()),
        ("requested_at", pl.Datetime("us", "UTC")),
    ]
)


def _expired(current: pl.LazyFrame, policy: RetentionPolicy, now: datetime) -> pl.DataFrame:
    """The current records past retention at ``now`` (see :data:`_EXPIRED_SCHEMA`)."""
    keep = list(_EXPIRED_SCHEMA)
    if policy.contract_resolver is None:
        cutoffs = {
            c: to_micros(now - timedelta(days=policy.default_days(c))) for c in RETENTION_CLASSES
        }
        fallback = cutoffs[DEFAULT_RETENTION_CLASS]
        newest = now - timedelta(days=min(policy.default_days(c) for c in RETENTION_CLASSES))
        cutoff = pl.col("retention_class").replace_strict(
            cutoffs, default=fallback, return_dtype=pl.Int64
        )
        frame = (
            current.filter(pl.col("requested_at") <= newest)  # prunes younger partitions
            .filter(pl.col("requested_at").dt.epoch("us") <= cutoff)
            .select(keep)
            .collect()
        )
    else:
        now_us = to_micros(now)
        assert now_us is not None
        parts: list[pl.DataFrame] = []
        rows = current.select(*RECORD_COLUMNS, CURRENT_PARTITION).collect()
        for chunk in rows.iter_slices(_RESOLVER_SLICE):
            hit = []
            for row in chunk.iter_rows(named=True):
                days = policy.days_for(row_to_record(row))
                requested = to_micros(row["requested_at"])
                assert requested is not None
                hit.append(requested + _days_micros(days) <= now_us)
            parts.append(chunk.filter(pl.Series(hit, dtype=pl.Boolean)).select(keep))
        frame = pl.concat(parts) if parts else pl.DataFrame(schema=_EXPIRED_SCHEMA)
    return frame.cast(_EXPIRED_SCHEMA).sort(CURRENT_PARTITION, "message_id")


def _days_micros(days: float) -> int:
    delta = timedelta(days=days)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _scan_history(files: list[Path]) -> pl.LazyFrame:
    return pl.scan_parquet(
        [str(f) for f in files],
        schema=POLARS_SCHEMA,
        hive_partitioning=False,
        glob=False,
        include_file_paths="file",
    )


def _history_hits(files: list[Path], expired: pl.DataFrame) -> pl.DataFrame:
    """Per history file and class: snapshots and messages of the expired ids it holds."""
    schema = pl.Schema(
        {"file": pl.String, "retention_class": pl.String, "snapshots": pl.UInt32,
         "messages": pl.UInt32}
    )  # fmt: skip
    if not files or expired.is_empty():
        return pl.DataFrame(schema=schema)
    ids = expired.select("message_id", "retention_class").lazy()
    with _corrupt_as_error(files):
        out = (
            _scan_history(files)
            .select("file", "message_id")
            .join(ids, on="message_id", how="inner")
            .group_by("file", "retention_class")
            .agg(snapshots=pl.len(), messages=pl.col("message_id").n_unique())
            .collect(engine="streaming")
        )
    return out.cast(schema)


@contextlib.contextmanager
def _corrupt_as_error(files: list[Path]) -> Iterator[None]:
    try:
        yield
    except (pl.exceptions.ComputeError, OSError) as err:
        bad = [f for f in files if not _footer_ok(f)]
        where = f"{bad[0]} cannot be read" if bad else "a lake file cannot be read"
        root = _lake_root(bad[0]) if bad else None
        hint = f" --lake {root}" if root else ""
        msg = f"{where} ({err}); run `kmsg-analytics doctor{hint}` to find and quarantine it"
        raise LakeCorruptError(msg) from err


def _footer_ok(path: Path) -> bool:
    try:
        pq.read_metadata(path)
    except FileNotFoundError:
        return True
    except Exception:
        return False
    return True


def _lake_root(path: Path) -> Path | None:
    for parent in path.parents:
        if (parent / "_lake.json").exists():
            return parent
    return None


def _open_store(
    store_or_path: ParquetTrackingStore | str | os.PathLike[str],
    hash_key: HashKey | bytes | str | None,
) -> tuple[ParquetTrackingStore, bool]:
    from ._lake import ParquetTrackingStore

    if isinstance(store_or_path, ParquetTrackingStore):
        return store_or_path, False
    if isinstance(store_or_path, str | os.PathLike):
        path = Path(store_or_path)
        if not (path / "_lake.json").exists():
            _invalid("lake", str(path), "a directory holding a lake (_lake.json)")
        return ParquetTrackingStore(path, hash_key=hash_key), True
    _invalid("store_or_path", store_or_path, "a ParquetTrackingStore or the path of a lake")


def _history_partitions(hits: pl.DataFrame) -> pl.DataFrame:
    day = (
        pl.col("file")
        .str.extract(rf"{HISTORY_PARTITION}=(\d{{4}}-\d{{2}}-\d{{2}})")
        .str.to_date()
        .alias(HISTORY_PARTITION)
    )
    return (
        hits.select(day, "retention_class", "snapshots", "messages")
        .group_by(HISTORY_PARTITION, "retention_class")
        .agg(pl.col("snapshots").sum().cast(pl.Int64), pl.col("messages").sum().cast(pl.Int64))
        .sort(HISTORY_PARTITION, "retention_class")
    )


def _make_plan(
    store: ParquetTrackingStore, current: pl.LazyFrame, now: datetime, policy: RetentionPolicy
) -> RetentionPlan:
    with _corrupt_as_error(_dataset_files(store.paths)):
        expired = _expired(current, policy, now)
    files = [f.path for f in store.paths.history_files()]
    hits = _history_hits(files, expired)
    current_counts = (
        expired.group_by(CURRENT_PARTITION, "retention_class")
        .agg(messages=pl.len().cast(pl.Int64))
        .sort(CURRENT_PARTITION, "retention_class")
    )
    return RetentionPlan(now, policy, current_counts, _history_partitions(hits), expired)


def _dataset_files(paths: LakePaths) -> list[Path]:
    out = [f.path for f in paths.history_files()]
    out.extend(sorted(paths.current.glob(f"{CURRENT_PARTITION}=*/part-0.parquet")))
    return out


def plan_retention(
    store_or_path: ParquetTrackingStore | str | os.PathLike[str],
    *,
    now: datetime | str | int | None = None,
    policy: RetentionPolicy | None = None,
    hash_key: HashKey | bytes | str | None = None,
) -> RetentionPlan:
    """What :func:`apply_retention` would remove at ``now`` (nothing is changed).

    Parameters
    ----------
    store_or_path
        A :class:`~kmsg_analytics.ParquetTrackingStore` or the path of a lake.
    now
        The moment retention is measured at (default: now); naive means UTC.
    policy
        The retention policy (default: the ``kr-b2b-baseline`` preset).
    hash_key
        The lake's number-hash key, when a path is given.

    Examples
    --------
    >>> import tempfile
    >>> from kmsg_analytics import ParquetTrackingStore
    >>> with ParquetTrackingStore(tempfile.mkdtemp(), hash_key="doctest-key") as lake:
    ...     plan_retention(lake, now="2030-01-01T00:00:00Z").messages
    0
    """
    moment = datetime.now(UTC) if now is None else coerce_time(now, "now")
    policy = RetentionPolicy() if policy is None else policy
    store, owned = _open_store(store_or_path, hash_key)
    try:
        return _make_plan(store, store.current(), moment, policy)
    finally:
        if owned:
            store.close()


# --------------------------------------------------------------------------- applying


class _Run:
    """The files of one retention run under ``<lake>/_retention/``.

    ``run.json`` exists while a run is unfinished, beside ``run-ids.parquet`` (the
    messages it removes). ``journal.json`` names the partition being swapped and holds
    its log line: a rerun appends the line when the swap happened, else drops it.
    """

    def __init__(self, store: ParquetTrackingStore) -> None:
        self.store = store
        self.paths = store.paths
        self.folder = store.paths.root / "_retention"
        self.log = self.folder / "log.jsonl"
        self.marker = self.folder / "run.json"
        self.ids = self.folder / "run-ids.parquet"
        self.journal = self.folder / "journal.json"

    # -- the log

    def append(self, line: dict[str, Any]) -> None:
        self._trim_torn_tail()
        data = (json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def _tail(self) -> bytes:
        try:
            with open(self.log, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                block = 1 << 16
                while True:
                    start = max(0, size - block)
                    fh.seek(start)
                    data = fh.read(size - start)
                    if start == 0 or data[:-1].rfind(b"\n") >= 0:
                        return data
                    block *= 4
        except FileNotFoundError:
            return b""

    def _trim_torn_tail(self) -> None:
        """Cut a line a killed run left half written (it was never a record)."""
        data = self._tail()
        if not data or data.endswith(b"\n"):
            return
        keep = os.path.getsize(self.log) - (len(data) - data.rfind(b"\n") - 1)
        os.truncate(self.log, keep)

    def last_line_id(self) -> str | None:
        data = self._tail()
        if not data.endswith(b"\n"):
            return None
        last = data[:-1].rsplit(b"\n", 1)[-1]
        try:
            found = json.loads(last).get("line_id")
        except ValueError:
            return None
        return found if isinstance(found, str) else None

    # -- the unfinished run

    def pending(self) -> tuple[str, pl.DataFrame] | None:
        marker = read_json(self.marker, {})
        run_id = marker.get("run")
        if not isinstance(run_id, str):
            return None
        try:
            ids = pl.read_parquet(self.ids).cast(_EXPIRED_SCHEMA)
        except (FileNotFoundError, pl.exceptions.ComputeError, OSError) as err:
            msg = (
                f"the unfinished retention run {run_id} in {self.folder} lost its list of "
                f"messages ({err}); run `kmsg-analytics doctor --lake {self.paths.root}`"
            )
            raise LakeCorruptError(msg) from err
        return run_id, ids

    def begin(self, run_id: str, expired: pl.DataFrame, now: datetime) -> None:
        self.folder.mkdir(exist_ok=True)
        staged = self.paths.staging_file()
        self.store._write_parquet(expired.to_arrow(), staged)
        os.replace(staged, self.ids)
        write_json_atomic(
            self.marker,
            {"run": run_id, "now": now.isoformat(), "started_at": _iso_now()},
            self.paths.staging,
        )

    def finish(self) -> None:
        self.marker.unlink(missing_ok=True)
        self.ids.unlink(missing_ok=True)

    # -- one partition

    def settle_journal(self) -> None:
        """Log the partition an interrupted run swapped; forget one it did not swap.

        A partition in the journal held some of the run's messages before its swap and
        holds none after it, so its contents tell which happened.
        """
        entry = read_json(self.journal, {})
        line = entry.get("line")
        pending = self.pending()
        if (
            isinstance(line, dict)
            and pending is not None
            and self.last_line_id() != line.get("line_id")
            and not _holds_any(self.paths.root / str(entry.get("target")), pending[1])
        ):
            self.append(line)
        self.journal.unlink(missing_ok=True)

    def swap(
        self,
        line: dict[str, Any],
        target: Path,
        do_swap: Callable[[], None],
        progress: Callable[[str], None] | None,
    ) -> None:
        label = f"{line['dataset']} {line['partition']}"
        write_json_atomic(
            self.journal,
            {"line": line, "target": str(target.relative_to(self.paths.root))},
            self.paths.staging,
        )
        _say(progress, f"swapping {label}")
        do_swap()
        _say(progress, f"swapped {label}")
        self.append(line)
        _say(progress, f"logged {label}")
        self.journal.unlink()


def _holds_any(target: Path, ids: pl.DataFrame) -> bool:
    """Whether the file or partition directory ``target`` holds any of ``ids``."""
    if target.is_dir():
        files = [p for p in target.iterdir() if p.suffix == ".parquet"]
    elif target.exists():
        files = [target]
    else:
        return False
    if not files or ids.is_empty():
        return False
    scan = pl.scan_parquet([str(f) for f in files], hive_partitioning=False, glob=False)
    with _corrupt_as_error(files):
        n = scan.select("message_id").join(ids.lazy(), on="message_id", how="semi").collect()
    return n.height > 0


def _say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress is not None:
        progress(text)


def _iso_now() -> str:
    return datetime.now(UTC).isoformat()


def _seq_ranges(seqs: pl.Series) -> list[list[int]]:
    """Sorted sequence numbers as ``[[lo, hi], ...]`` runs."""
    if seqs.is_empty():
        return []
    s = seqs.sort()
    frame = pl.DataFrame({"seq": s}).with_columns(
        run=(pl.col("seq").diff().fill_null(1) != 1).cum_sum()
    )
    runs = frame.group_by("run", maintain_order=True).agg(
        lo=pl.col("seq").min(), hi=pl.col("seq").max()
    )
    return [[int(lo), int(hi)] for lo, hi in runs.select("lo", "hi").iter_rows()]


def _id_fields(ids: pl.Series, key: HashKey) -> dict[str, Any]:
    """How a log line names removed messages: keyed hashes (or a digest), never the ids."""
    unique = sorted(ids.unique().to_list())
    digest = key.hash_normalized("message_ids\x00" + "\n".join(unique))
    out: dict[str, Any] = {"message_ids_hmac": digest, "hash_key_id": key.key_id}
    if len(unique) <= _MAX_ID_HASHES:
        out["message_id_hashes"] = [key.hash_normalized(f"message_id\x00{i}")[:16] for i in unique]
    return out


def _by_class(removed: pl.DataFrame) -> dict[str, dict[str, int]]:
    """``{class: {messages, snapshots}}`` of removed rows (``message_id``, ``retention_class``)."""
    agg = removed.group_by("retention_class").agg(
        snapshots=pl.len(), messages=pl.col("message_id").n_unique()
    )
    return {
        str(cls): {"messages": int(m), "snapshots": int(s)}
        for cls, s, m in agg.sort("retention_class").iter_rows()
    }


def _line(
    run_id: str,
    dataset: str,
    partition: str,
    now: datetime,
    rows_before: int,
    removed: pl.DataFrame,
    key: HashKey,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "line_id": uuid.uuid4().hex,
        "run": run_id,
        "event": "removed",
        "at": _iso_now(),
        "now": now.isoformat(),
        "dataset": dataset,
        "partition": partition,
        "rows_before": rows_before,
        "rows_after": rows_before - removed.height,
        "snapshots_removed": removed.height,
        "messages_removed": removed.get_column("message_id").n_unique(),
        "by_class": _by_class(removed),
        **_id_fields(removed.get_column("message_id"), key),
        **extra,
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "fetch_arrow_table", DeprecationWarning)
        yield


def _trash(paths: LakePaths, day: date) -> Path:
    return paths.staging / f"retention-trash-{day.isoformat()}-{uuid.uuid4().hex[:8]}"


def _apply_history(
    store: ParquetTrackingStore,
    run: _Run,
    run_id: str,
    expired: pl.DataFrame,
    now: datetime,
    progress: Callable[[str], None] | None,
) -> list[dict[str, Any]]:
    import ibis

    paths = store.paths
    files = paths.history_files()
    hits = _history_hits([f.path for f in files], expired)
    hit_files = set(hits.get_column("file").to_list())
    ids = expired.select("message_id", "retention_class")
    ids_table = ibis.memtable(ids.select("message_id").to_arrow())
    lines: list[dict[str, Any]] = []
    by_day: dict[date, list[Path]] = {}
    for f in files:
        if str(f.path) in hit_files:
            by_day.setdefault(f.ingest_date, []).append(f.path)
    for day, touched in sorted(by_day.items()):
        folder = paths.history / f"{HISTORY_PARTITION}={day.isoformat()}"
        newdir = paths.staging / f"retention-{HISTORY_PARTITION}={day.isoformat()}-{run_id[:8]}"
        shutil.rmtree(newdir, ignore_errors=True)
        newdir.mkdir()
        rows_before = 0
        removed_parts: list[pl.DataFrame] = []
        file_counts: dict[str, dict[str, int]] = {}
        for entry in sorted(folder.iterdir()):
            if entry.is_dir():  # not ours, but kept as it was (hard links, no copy)
                shutil.copytree(entry, newdir / entry.name, copy_function=os.link)
                continue
            if entry not in touched:
                os.link(entry, newdir / entry.name)
                if entry.suffix == ".parquet":
                    rows_before += pq.read_metadata(entry).num_rows
                continue
            n = pq.read_metadata(entry).num_rows
            rows_before += n
            with _corrupt_as_error([entry]):
                gone = (
                    pl.scan_parquet(entry, schema=POLARS_SCHEMA, hive_partitioning=False)
                    .select("seq", "message_id")
                    .join(ids.lazy(), on="message_id", how="inner")
                    .collect()
                )
            removed_parts.append(gone)
            file_counts[entry.name] = {"before": n, "after": n - gone.height}
            if gone.height == n:
                continue  # every row expired: the file goes
            with _quiet():
                table = store.backend.read_parquet(str(entry), hive_partitioning=False)
                kept = (
                    table.select(*SNAPSHOT_SCHEMA.names)
                    .anti_join(ids_table, "message_id")
                    .order_by(["requested_at", "seq"])
                )
            store._to_parquet(kept, newdir / entry.name)
        removed = pl.concat(removed_parts)
        line = _line(
            run_id,
            "history",
            folder.name,
            now,
            rows_before,
            removed.select("message_id", "retention_class"),
            store.hash_key,
            files=file_counts,
            seq_ranges=_seq_ranges(removed.get_column("seq")),
        )

        def swap(newdir: Path = newdir, folder: Path = folder, day: date = day) -> None:
            if any(newdir.iterdir()):
                replace_dir(newdir, folder, _trash(paths, day))
            else:  # nothing left on that ingest day: the partition goes
                trash = _trash(paths, day)
                os.rename(folder, trash)
                shutil.rmtree(trash, ignore_errors=True)
                newdir.rmdir()

        run.swap(line, folder, swap, progress)
        lines.append(line)
    return lines


def _apply_file(
    store: ParquetTrackingStore,
    run: _Run,
    run_id: str,
    dataset: str,
    partition: str,
    target: Path,
    expired: pl.DataFrame,
    now: datetime,
    progress: Callable[[str], None] | None,
) -> dict[str, Any] | None:
    """Rewrite one file (a current partition or the open set) without the expired ids."""
    if not target.exists():
        return None
    with _corrupt_as_error([target]):
        frame = pl.read_parquet(target, hive_partitioning=False)
    ids = expired.select("message_id", "retention_class")
    removed = frame.select("message_id").join(ids, on="message_id", how="inner")
    if removed.is_empty():
        return None
    kept = frame.join(ids.select("message_id"), on="message_id", how="anti")
    line = _line(run_id, dataset, partition, now, frame.height, removed, store.hash_key)

    def swap() -> None:
        staged = store.paths.staging_file()
        store._write_parquet(kept.to_arrow(), staged)
        os.replace(staged, target)

    run.swap(line, target, swap, progress)
    return line


def apply_retention(
    store_or_path: ParquetTrackingStore | str | os.PathLike[str],
    *,
    now: datetime | str | int | None = None,
    policy: RetentionPolicy | None = None,
    hash_key: HashKey | bytes | str | None = None,
    progress: Callable[[str], None] | None = None,
) -> RetentionResult:
    """Remove every message past retention at ``now``, snapshots included.

    Pending snapshots are folded first; then, holding the writer lock, each history
    partition holding expired snapshots is replaced by a copy without them (one
    directory swap), then the open set and each current partition (one rename each).
    Every replaced partition appends a line to ``<lake>/_retention/log.jsonl``. A run
    killed half way leaves each partition old or new, never half; the next call
    finishes it (also with another ``now``: it completes the earlier run's removals).

    Parameters
    ----------
    store_or_path
        A :class:`~kmsg_analytics.ParquetTrackingStore` or the path of a lake.
    now
        The moment retention is measured at (default: now); naive means UTC.
    policy
        The retention policy (default: the ``kr-b2b-baseline`` preset).
    hash_key
        The lake's number-hash key, when a path is given.
    progress
        Called with a short line before and after each partition is replaced.

    Examples
    --------
    >>> import tempfile
    >>> from kmsg_analytics import ParquetTrackingStore
    >>> with ParquetTrackingStore(tempfile.mkdtemp(), hash_key="doctest-key") as lake:
    ...     apply_retention(lake, now="2030-01-01T00:00:00Z").messages_removed
    0
    """
    moment = datetime.now(UTC) if now is None else coerce_time(now, "now")
    policy = RetentionPolicy() if policy is None else policy
    store, owned = _open_store(store_or_path, hash_key)
    try:
        store.compact(history=False)  # takes the writer lock itself
        with store._mutex, writer_lock(store.paths):
            try:
                return _apply_locked(store, moment, policy, progress)
            finally:
                store._cache_w = -1
                store._winners = None
    finally:
        if owned:
            store.close()


def _apply_locked(
    store: ParquetTrackingStore,
    now: datetime,
    policy: RetentionPolicy,
    progress: Callable[[str], None] | None,
) -> RetentionResult:
    state = store._recover()
    if int(state["seq"]) > int(state["watermark"]):  # published since our fold
        store._fold_locked(state, None)
        store._cache_w = -1
        store._winners = None
    run = _Run(store)
    run.folder.mkdir(exist_ok=True)
    run.settle_journal()
    plan = _make_plan(store, store._scan_current(), now, policy)
    expired = plan.expired
    pending = run.pending()
    resumed = pending is not None
    if pending is not None:
        run_id = pending[0]
        expired = (
            pl.concat([pending[1], expired])
            .unique("message_id", keep="first")
            .sort(CURRENT_PARTITION, "message_id")
        )
    else:
        run_id = uuid.uuid4().hex
    log_path = run.log
    if expired.is_empty():
        run.finish()
        return RetentionResult(run_id, plan, (), resumed, log_path)
    run.begin(run_id, expired, now)
    run.append(
        {
            "line_id": uuid.uuid4().hex,
            "run": run_id,
            "event": "resumed" if resumed else "start",
            "at": _iso_now(),
            "now": now.isoformat(),
            "policy": policy.describe(),
            "messages": expired.height,
            "by_class": {c: n["messages"] for c, n in plan.by_class().items() if n["messages"]},
        }
    )
    lines = _apply_history(store, run, run_id, expired, now, progress)
    # the open set before the current partitions: a run stopped in between leaves the
    # runner nothing expired to poll (a poll would bring a removed message back)
    line = _apply_file(
        store, run, run_id, "open", "open", store.paths.open_file(), expired, now, progress
    )
    if line is not None:
        lines.append(line)
    for day in expired.get_column(CURRENT_PARTITION).unique().sort().to_list():
        line = _apply_file(
            store,
            run,
            run_id,
            "current",
            f"{CURRENT_PARTITION}={day.isoformat()}",
            store.paths.current_file(day),
            expired,
            now,
            progress,
        )
        if line is not None:
            lines.append(line)
    run.append(
        {
            "line_id": uuid.uuid4().hex,
            "run": run_id,
            "event": "done",
            "at": _iso_now(),
            "partitions": len(lines),
        }
    )
    run.finish()
    _say(progress, "done")
    return RetentionResult(run_id, plan, tuple(lines), resumed, log_path)
