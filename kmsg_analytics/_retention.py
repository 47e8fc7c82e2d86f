"""Retention: removing what is past retention from a lake (policy and plan: ``_retention_plan``).

:func:`apply_retention` removes what :func:`plan_retention` shows, snapshots included,
one partition at a time. Each partition is replaced in one rename (readers see it whole,
old or new), and every replaced partition leaves a JSON line in
``<lake>/_retention/log.jsonl`` with counts per class and keyed hashes of the removed
message ids (never numbers). A run that dies half way is finished by the next run.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow.parquet as pq

from ._errors import LakeCorruptError
from ._lakefs import LakePaths, read_json, replace_dir, write_json_atomic
from ._maintenance import folded_and_locked, opened_lake
from ._records import coerce_time
from ._retention_plan import (
    _EXPIRED_SCHEMA,
    RETENTION_PRESETS,
    ContractResolver,
    RetentionContext,
    RetentionPlan,
    RetentionPolicy,
    _corrupt_as_error,
    _history_hits,
    _make_plan,
    _partitions_html,
    plan_retention,
)
from ._schema import CURRENT_PARTITION, HISTORY_PARTITION, POLARS_SCHEMA, SNAPSHOT_SCHEMA

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

#: Message ids of one partition listed (as keyed hashes) in its log line up to this many.
_MAX_ID_HASHES = 10_000


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
    return _event(
        run_id,
        "removed",
        now=now.isoformat(),
        dataset=dataset,
        partition=partition,
        rows_before=rows_before,
        rows_after=rows_before - removed.height,
        snapshots_removed=removed.height,
        messages_removed=removed.get_column("message_id").n_unique(),
        by_class=_by_class(removed),
        **_id_fields(removed.get_column("message_id"), key),
        **extra,
    )


def _event(run_id: str, event: str, **fields: Any) -> dict[str, Any]:
    """A line of the run's log: its own id, the run, the event, when, and ``fields``."""
    return {"line_id": uuid.uuid4().hex, "run": run_id, "event": event, "at": _iso_now(), **fields}


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
    with (
        opened_lake(store_or_path, hash_key, field="store_or_path") as store,
        folded_and_locked(store),
    ):
        return _apply_locked(store, moment, policy, progress)


def _apply_locked(
    store: ParquetTrackingStore,
    now: datetime,
    policy: RetentionPolicy,
    progress: Callable[[str], None] | None,
) -> RetentionResult:
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
        _event(
            run_id,
            "resumed" if resumed else "start",
            now=now.isoformat(),
            policy=policy.describe(),
            messages=expired.height,
            by_class={c: n["messages"] for c, n in plan.by_class().items() if n["messages"]},
        )
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
    run.append(_event(run_id, "done", partitions=len(lines)))
    run.finish()
    _say(progress, "done")
    return RetentionResult(run_id, plan, tuple(lines), resumed, log_path)
