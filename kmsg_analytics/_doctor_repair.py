"""The doctor's repair: quarantine damaged and stray files, rebuild what can be derived again."""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ._doctor_ranges import _count, _subtract
from ._doctor_report import _plural
from ._doctor_scan import _HISTORY_NAME, _OPEN_SCHEMA, _Scan, _scan_files
from ._lakefs import LakePaths
from ._maintenance import relative
from ._queries import latest
from ._records import POLLABLE_STATUSES
from ._schema import CURRENT_PARTITION, POLARS_SCHEMA, SNAPSHOT_SCHEMA


class _Quarantine:
    def __init__(self, paths: LakePaths) -> None:
        self.paths = paths
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.folder = paths.root / "_quarantine" / stamp
        self.entries: list[dict[str, Any]] = []

    def move(self, path: Path, reason: str, lost: list[tuple[int, int]] | None = None) -> str:
        rel = relative(self.paths, path)
        dest = self.folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, dest)
        entry: dict[str, Any] = {"path": rel, "reason": reason}
        if lost:
            entry["lost_seq_ranges"] = [list(r) for r in lost]
        self.entries.append(entry)
        self._write()
        return rel

    def _write(self) -> None:
        tmp = self.folder / "REASONS.json.tmp"
        tmp.write_text(json.dumps(self.entries, indent=1), encoding="utf-8")
        os.replace(tmp, self.folder / "REASONS.json")


def _write_table(paths: LakePaths, frame: pl.DataFrame, schema: pa.Schema, target: Path) -> None:
    table = frame.select(schema.names).to_arrow()
    table = pa.Table.from_arrays(
        [table.column(n).cast(f.type) for n, f in zip(schema.names, schema, strict=True)],
        schema=pa.schema([f.with_nullable(True) for f in schema]),
    )
    staged = paths.staging_file()
    pq.write_table(table, staged, compression="zstd")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, target)


def _rebuild_current(
    scan: _Scan, paths: LakePaths, days: set[date], actions: list[str], lost: list[str]
) -> None:
    """Current partitions of ``days`` again from the (readable) history up to the watermark."""
    w = scan.watermark
    files = [f.path for f in scan.history if f.path.exists()]
    schema = {**POLARS_SCHEMA}
    if files:
        hist = _scan_files(files).filter(pl.col("seq") <= w)
        on_days = pl.col("requested_at").dt.date().is_in(sorted(days))
        ids = hist.filter(on_days).select("message_id").unique()
        winners = (
            latest(hist.join(ids, on="message_id", how="semi"))
            .filter(on_days)
            .collect(engine="streaming")
        )
    else:
        winners = pl.DataFrame(schema=schema)
    for day in sorted(days):
        target = paths.current_file(day)
        rows = winners.filter(pl.col("requested_at").dt.date() == day).sort("requested_at")
        before: pl.DataFrame | None = None
        if target.exists():
            with contextlib.suppress(Exception):
                before = pl.read_parquet(target, hive_partitioning=False).select("message_id")
        if rows.is_empty() and not target.exists():
            with contextlib.suppress(OSError):
                target.parent.rmdir()
            actions.append(
                f"current/{CURRENT_PARTITION}={day}: the history holds no message for this day, "
                "so the partition stays empty"
            )
            continue
        _write_table(paths, rows, SNAPSHOT_SCHEMA, target)
        actions.append(
            f"rebuilt current/{CURRENT_PARTITION}={day} from the history: "
            f"{_plural(rows.height, 'message')}"
        )
        if before is not None:
            gone = before.join(rows.select("message_id"), on="message_id", how="anti")
            gone = gone.unique()
            moved = gone.height
            if moved:
                lost.append(
                    f"current/{CURRENT_PARTITION}={day}: {moved:,} rows it held are not this "
                    "day's current state by the history (moved to their own day, or their "
                    "history was lost)"
                )


def _rebuild_open(paths: LakePaths, actions: list[str]) -> None:
    files = sorted(paths.current.glob(f"{CURRENT_PARTITION}=*/part-0.parquet"))
    if files:
        rows = (
            _scan_files(files, {CURRENT_PARTITION: pl.Date})
            .filter(pl.col("status").is_in(POLLABLE_STATUSES))
            .collect()
        )
    else:
        rows = pl.DataFrame(schema={**POLARS_SCHEMA, CURRENT_PARTITION: pl.Date})
    _write_table(paths, rows, _OPEN_SCHEMA, paths.open_file())
    actions.append(
        f"rebuilt open/part-0.parquet from current/: {_plural(rows.height, 'open message')}"
    )


def _repair(scan: _Scan, paths: LakePaths, actions: list[str], lost: list[str]) -> Path | None:
    q = _Quarantine(paths)
    w = scan.watermark
    # damaged files and strays leave the datasets
    for path, why in sorted(scan.bad.items()):
        if path in (paths.manifest, paths.state):
            continue
        m = _HISTORY_NAME.match(path.name)
        seqs = [(int(m[2]), int(m[3]))] if m and path.parent.parent == paths.history else None
        rel = q.move(path, why, seqs)
        actions.append(f"moved {rel} ({why}) to {relative(paths, q.folder)}")
        if seqs:
            lo, hi = seqs[0]
            unfolded = _count(_subtract(seqs, [(1, w)]))
            tail = (
                f"; {unfolded:,} of them were newer than the last compaction, so those changes "
                "are missing from the current state too"
                if unfolded
                else "; the current state already holds their effect"
            )
            lost.append(
                f"history snapshots {lo}–{hi} ({hi - lo + 1:,} by the file name, ingested "
                f"{path.parent.name.split('=', 1)[1]}): as-of queries before that day no "
                f"longer see them{tail}"
            )
    for path in sorted(set(scan.redundant)):
        if path.exists():
            rel = q.move(path, "every sequence number it holds is also in another file")
            actions.append(f"moved {rel} (a duplicate of other history files) to quarantine")
    for path, why in sorted(scan.stray.items()):
        if path.exists():
            rel = q.move(path, f"stray: {why}")
            actions.append(f"moved stray {rel} to quarantine")
    for path in scan.debris:
        if path.exists():
            rel = q.move(path, "temporary file left by a writer that died")
            actions.append(f"moved leftover {rel} to quarantine")
    if paths.manifest in scan.bad or scan.manifest is None:
        actions.append(
            "not repaired: _lake.json (the lake's format and key id) cannot be derived from "
            "the data; restore it from a backup or another copy of the lake"
        )
    # state
    if paths.state in scan.bad:
        top = max((f for f in scan.history), key=lambda f: f.hi, default=None)
        q.move(paths.state, scan.bad[paths.state])
        state = {
            "seq": top.hi if top else 0,
            "watermark": 0,
            "last_wal": top.wal if top else None,
            "fold_date": None,
        }
        _write_state(paths, state)
        scan.state = state
        actions.append(
            f"rewrote _state.json from the history file names (seq {state['seq']}); the "
            "watermark starts again at 0, so the next compaction refolds everything "
            "(run `kmsg-analytics compact`)"
        )
    elif scan.state_fix and scan.state is not None:
        state = {**scan.state, **scan.state_fix}
        _write_state(paths, state)
        scan.state = state
        actions.append(
            f"corrected _state.json ({', '.join(f'{k}={v}' for k, v in scan.state_fix.items())})"
        )
    # derived data
    if scan.rebuild_days and paths.state not in scan.bad:
        _rebuild_current(scan, paths, scan.rebuild_days, actions, lost)
        scan.rebuild_open = True
    if scan.rebuild_open:
        _rebuild_open(paths, actions)
    return q.folder if q.entries else None


def _write_state(paths: LakePaths, state: dict[str, Any]) -> None:
    tmp = paths.staging_file(".json")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, paths.state)
