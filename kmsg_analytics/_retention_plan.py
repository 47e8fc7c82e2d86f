"""Retention policy and plan: days kept per class, and what is past them (nothing is changed).

Every record carries a ``retention_class`` (``opsLogs``, ``telecomMetadata`` or
``billingEvidence``). A :class:`RetentionPolicy` says how many days each class is kept:
the preset's days, replaced by a positive tenant override of that class, both replaced
by a positive answer of the contract resolver (k-msg's ``contractOverrideResolver``).
A message is past its retention when ``requested_at + days <= now``; its class, its
``requested_at`` and what the resolver sees are those of its current record.
:func:`plan_retention` shows what would be removed; :mod:`._retention` removes it.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, NoReturn

import polars as pl
import pyarrow.parquet as pq

from ._errors import InvalidRecordError, LakeCorruptError
from ._lakefs import LakePaths
from ._maintenance import lake_files, lake_root, opened_lake
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
        root = lake_root(bad[0]) if bad else None
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
    """The files of the history and the current partitions (the open set aside)."""
    return [path for dataset, path in lake_files(paths) if dataset != "open"]


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
    with opened_lake(store_or_path, hash_key, field="store_or_path") as store:
        return _make_plan(store, store.current(), moment, policy)
