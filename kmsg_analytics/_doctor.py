"""``doctor``: check every file of a lake, report in plain words, and repair what can be.

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
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ._errors import LakeCorruptError
from ._lakefs import LakePaths, orphan_wals, read_wal_lines, writer_lock
from ._phone import HashKey
from ._queries import latest
from ._records import POLLABLE_STATUSES
from ._schema import (
    CURRENT_PARTITION,
    FORMAT_VERSION,
    HISTORY_PARTITION,
    POLARS_SCHEMA,
    SNAPSHOT_SCHEMA,
)

__all__ = ["DoctorReport", "Finding", "check_lake", "lake_read_error"]

Severity = Literal["problem", "warning", "info"]

_HISTORY_NAME: Final = re.compile(r"^([bc])-(\d{20})-(\d{20})(?:-([0-9a-f]{32}))?\.parquet$")
_PART_DIR: Final = re.compile(r"^(ingest_date|requested_date)=(\d{4}-\d{2}-\d{2})$")
_OPEN_SCHEMA: Final = pa.schema([*SNAPSHOT_SCHEMA, pa.field(CURRENT_PARTITION, pa.date32())])
_DAY_US: Final = 86_400_000_000
_SHOW: Final = 5


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the doctor found.

    ``severity`` is ``problem`` (the lake is damaged: answers may be wrong or queries
    fail), ``warning`` (consistent, but something needs a step: a dead writer's log to
    publish, leftovers to clear, data lost earlier) or ``info``.
    """

    severity: Severity
    kind: str
    message: str
    path: str | None = None

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


@dataclass(frozen=True)
class DoctorReport:
    """What :func:`check_lake` found and, with ``repair=True``, did.

    Attributes
    ----------
    lake
        The lake's directory.
    findings
        Everything found by the check (before any repair).
    repaired
        Whether repairs were attempted.
    actions
        What the repair did, one sentence each.
    lost
        What the lake lost, in plain words (the history rows of quarantined files, ...).
    after
        Findings of the check run again after the repair (``None`` without repair).
    quarantine
        The folder damaged files were moved to (``None`` if none were).
    files_checked, rows_checked
        How much was read.
    key_ids
        The ids of the encryption keys the lake's numbers are sealed with.
    """

    lake: Path
    findings: tuple[Finding, ...]
    repaired: bool = False
    actions: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()
    after: tuple[Finding, ...] | None = None
    quarantine: Path | None = None
    files_checked: int = 0
    rows_checked: int = 0
    key_ids: tuple[str, ...] = ()

    @property
    def problems(self) -> list[Finding]:
        """Problems that remain (after the repair, if one was made)."""
        final = self.findings if self.after is None else self.after
        return [f for f in final if f.severity == "problem"]

    @property
    def ok(self) -> bool:
        """Whether the lake is healthy (no problem remains; warnings allowed)."""
        return not self.problems

    def __repr__(self) -> str:
        n = {s: sum(f.severity == s for f in self.findings) for s in ("problem", "warning")}
        return (
            f"DoctorReport({str(self.lake)!r}, ok={self.ok}, problems={n['problem']}, "
            f"warnings={n['warning']}, files={self.files_checked}, repaired={self.repaired})"
        )

    def lines(self) -> list[str]:
        """The report as plain text lines."""
        verdict = "healthy" if self.ok else "NOT healthy"
        if self.repaired:
            found = sum(f.severity == "problem" for f in self.findings)
            verdict = f"{_plural(found, 'problem')} found; {verdict} after the repair"
        out = [
            f"lake {self.lake}: {verdict} ({self.files_checked:,} files, "
            f"{self.rows_checked:,} rows read)"
        ]
        if not self.findings:
            out.append("  nothing to report")
        out.extend(f"  {f}" for f in self.findings)
        if self.repaired:
            out.append("repair:")
            out.extend(f"  {a}" for a in self.actions or ("nothing to repair",))
            out.append("the lake lost:")
            out.extend(f"  {line}" for line in self.lost or ("nothing",))
            if self.after is not None:
                out.append("after the repair:")
                rest = [f for f in self.after if f.severity != "info"]
                out.extend(f"  {f}" for f in rest or ("no problems or warnings left",))
        elif not self.ok:
            out.append(f"run `kmsg-analytics doctor --lake {self.lake} --repair` to repair")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def _repr_html_(self) -> str:
        colour = {"problem": "#b00020", "warning": "#a05a00", "info": "#555"}
        items = "".join(
            f'<li><span style="color:{colour[f.severity]}">{f.severity}</span>: '
            f"{html.escape(f.message)}</li>"
            for f in self.findings
        )
        verdict = "healthy" if self.ok else "not healthy"
        parts = [
            f"<h4>Lake <code>{html.escape(str(self.lake))}</code>: {verdict}</h4>",
            f"<p>{self.files_checked:,} files and {self.rows_checked:,} rows read.</p>",
            f"<ul>{items}</ul>" if items else "<p>Nothing to report.</p>",
        ]
        if self.repaired:
            acts = "".join(f"<li>{html.escape(a)}</li>" for a in self.actions)
            parts.append(f"<h5>Repair</h5><ul>{acts or '<li>nothing to repair</li>'}</ul>")
            if self.lost:
                lost = "".join(f"<li>{html.escape(x)}</li>" for x in self.lost)
                parts.append(f"<h5>Lost</h5><ul>{lost}</ul>")
        return "\n".join(parts)


# --------------------------------------------------------------------------- helpers


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _text(err: BaseException) -> str:
    return " ".join(str(err).split())


def _rel(paths: LakePaths, path: Path) -> str:
    try:
        return str(path.relative_to(paths.root))
    except ValueError:
        return str(path)


def _norm_type(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_struct(t):
        inner = ",".join(f"{f.name}:{_norm_type(f.type)}" for f in t)
        return f"struct<{inner}>"
    if pa.types.is_timestamp(t):
        tz = t.tz if t.tz not in ("+00:00", "Etc/UTC") else "UTC"
        return f"timestamp[{t.unit},{tz}]"
    return str(t)


def _schema_problem(actual: pa.Schema, expected: pa.Schema) -> str | None:
    """Why ``actual`` is not the lake's schema (``None`` when it is)."""
    if actual.names != expected.names:
        missing = [n for n in expected.names if n not in actual.names]
        extra = [n for n in actual.names if n not in expected.names]
        if missing or extra:
            return f"columns differ (missing {missing or 'none'}, unexpected {extra or 'none'})"
        return "columns are in another order"
    wrong = [
        f"{a.name} is {_norm_type(a.type)}, expected {_norm_type(b.type)}"
        for a, b in zip(actual, expected, strict=True)
        if _norm_type(a.type) != _norm_type(b.type)
    ]
    return "; ".join(wrong) or None


def _ranges_text(ranges: Sequence[tuple[int, int]]) -> str:
    shown = ", ".join(f"{lo}" if lo == hi else f"{lo}–{hi}" for lo, hi in ranges[:_SHOW])
    more = f" and {len(ranges) - _SHOW} more ranges" if len(ranges) > _SHOW else ""
    return shown + more


def _runs(values: np.ndarray[Any, Any]) -> list[tuple[int, int]]:
    """Sorted unique integers as contiguous ``(lo, hi)`` runs."""
    if values.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(values) != 1)
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [values.size - 1]))
    return [(int(values[s]), int(values[e])) for s, e in zip(starts, ends, strict=True)]


def _union(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _subtract(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` minus ``cut`` (both sorted, disjoint)."""
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        pos = lo
        for clo, chi in cut:
            if chi < pos or clo > hi:
                continue
            if clo > pos:
                out.append((pos, clo - 1))
            pos = max(pos, chi + 1)
            if pos > hi:
                break
        if pos <= hi:
            out.append((pos, hi))
    return out


def _complement(covered: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    return _subtract([(lo, hi)] if hi >= lo else [], covered)


def _count(ranges: Iterable[tuple[int, int]]) -> int:
    return sum(hi - lo + 1 for lo, hi in ranges)


def _day_of(dirname: str) -> date | None:
    m = _PART_DIR.match(dirname)
    if not m:
        return None
    try:
        return date.fromisoformat(m[2])
    except ValueError:
        return None


# --------------------------------------------------------------------------- one file


@dataclass
class _HistoryFile:
    path: Path
    day: date
    lo: int
    hi: int
    wal: str | None
    rows: int = 0
    runs: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class _Scan:
    """What one pass over the lake found (a repair acts on it)."""

    findings: list[Finding] = field(default_factory=list)
    bad: dict[Path, str] = field(default_factory=dict)  # unreadable / wrong schema
    stray: dict[Path, str] = field(default_factory=dict)
    debris: list[Path] = field(default_factory=list)
    history: list[_HistoryFile] = field(default_factory=list)
    current: dict[date, Path] = field(default_factory=dict)  # readable current files
    rebuild_days: set[date] = field(default_factory=set)
    redundant: list[Path] = field(default_factory=list)  # history files wholly duplicated
    open_ok: bool = True
    rebuild_open: bool = False
    dead_wals: list[tuple[str, Path, int]] = field(default_factory=list)
    state: dict[str, Any] | None = None
    state_fix: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    kids: set[str] = field(default_factory=set)
    files: int = 0
    rows: int = 0

    def add(self, severity: Severity, kind: str, message: str, path: str | None = None) -> None:
        self.findings.append(Finding(severity, kind, message, path))


def _kids(table: pa.Table) -> set[str]:
    out: set[str] = set()
    for name in ("to_enc", "from_enc"):
        if name in table.column_names:
            col = pl.from_arrow(table.column(name))
            assert isinstance(col, pl.Series)
            found = col.str.extract(r"^v\d+\.([^.]+)\.", 1).drop_nulls().unique()
            out.update(found.to_list())
    return out


def check_key_value_metadata(meta: pq.FileMetaData) -> None:
    """Raise ``ValueError`` when a footer's key/value metadata is not UTF-8 (Polars refuses it)."""
    for key, value in (meta.metadata or {}).items():
        try:
            key.decode("utf-8")
            value.decode("utf-8")
        except UnicodeDecodeError:
            msg = f"its key/value metadata is not valid UTF-8 (key {key[:40]!r})"
            raise ValueError(msg) from None


def _read_file(
    scan: _Scan, paths: LakePaths, path: Path, expected: pa.Schema
) -> Iterator[pa.Table]:
    """Every row group of ``path`` (records it as bad and stops at the first failure)."""
    rel = _rel(paths, path)
    scan.files += 1
    try:
        pf = pq.ParquetFile(path)
        check_key_value_metadata(pf.metadata)
    except Exception as err:
        scan.bad[path] = f"cannot be read: {_text(err)}"
        scan.add("problem", "unreadable", f"{rel} cannot be read ({_text(err)})", rel)
        return
    with pf:
        why = _schema_problem(pf.schema_arrow, expected)
        if why is not None:
            scan.bad[path] = f"wrong schema: {why}"
            scan.add("problem", "schema", f"{rel} does not have the lake's columns: {why}", rel)
            return
        for i in range(pf.num_row_groups):
            try:
                table = pf.read_row_group(i)
            except Exception as err:
                scan.bad[path] = f"row group {i} cannot be read: {_text(err)}"
                scan.add(
                    "problem",
                    "unreadable",
                    f"{rel}: row group {i + 1} of {pf.num_row_groups} cannot be read "
                    f"({_text(err)})",
                    rel,
                )
                return
            scan.rows += table.num_rows
            yield table


def _micros(col: pa.ChunkedArray) -> np.ndarray[Any, Any]:
    return np.asarray(col.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def _check_history_file(scan: _Scan, paths: LakePaths, f: _HistoryFile) -> None:
    seqs: list[np.ndarray[Any, Any]] = []
    for table in _read_file(scan, paths, f.path, SNAPSHOT_SCHEMA):
        seqs.append(_micros(table.column("seq")))
        scan.kids |= _kids(table)
    if f.path in scan.bad:
        return
    values = np.sort(np.concatenate(seqs)) if seqs else np.empty(0, np.int64)
    f.rows = int(values.size)
    rel = _rel(paths, f.path)
    if values.size and (values[0] < f.lo or values[-1] > f.hi):
        scan.add(
            "problem",
            "seq-name",
            f"{rel} holds sequence numbers {values[0]}–{values[-1]}, outside the range "
            f"{f.lo}–{f.hi} its name states",
            rel,
        )
    if values.size > 1 and (dups := np.unique(values[1:][np.diff(values) == 0])).size:
        scan.add(
            "problem",
            "seq-duplicate",
            f"{rel} holds {dups.size:,} sequence numbers twice (e.g. {int(dups[0])})",
            rel,
        )
    f.runs = _runs(np.unique(values))
    scan.history.append(f)


def _check_current_file(scan: _Scan, paths: LakePaths, day: date, path: Path) -> None:
    rel = _rel(paths, path)
    day_us = (day - date(1970, 1, 1)).days * _DAY_US
    misplaced = 0
    other_days: set[date] = set()
    for table in _read_file(scan, paths, path, SNAPSHOT_SCHEMA):
        scan.kids |= _kids(table)
        at = _micros(table.column("requested_at"))
        wrong = (at < day_us) | (at >= day_us + _DAY_US)
        if wrong.any():
            misplaced += int(wrong.sum())
            other_days.update(
                date(1970, 1, 1) + timedelta(days=int(d)) for d in np.unique(at[wrong] // _DAY_US)
            )
    if path in scan.bad:
        scan.rebuild_days.add(day)
        return
    scan.current[day] = path
    if misplaced:
        scan.add(
            "problem",
            "partition",
            f"{rel} holds {misplaced:,} rows requested on other days "
            f"({', '.join(sorted(d.isoformat() for d in other_days)[:_SHOW])}): they belong in "
            "other partitions",
            rel,
        )
        scan.rebuild_days |= {day, *other_days}


def _check_open_file(scan: _Scan, paths: LakePaths, path: Path) -> None:
    rel = _rel(paths, path)
    misplaced = 0
    for table in _read_file(scan, paths, path, _OPEN_SCHEMA):
        at = _micros(table.column("requested_at")) // _DAY_US
        day = np.asarray(
            table.column(CURRENT_PARTITION).cast(pa.int32()).to_numpy(zero_copy_only=False)
        )
        misplaced += int((at != day).sum())
    if path in scan.bad:
        scan.open_ok = False
        scan.rebuild_open = True
        return
    if misplaced:
        scan.add(
            "problem",
            "partition",
            f"{rel}: {misplaced:,} rows carry a requested_date that is not their requested_at",
            rel,
        )
        scan.rebuild_open = True


# --------------------------------------------------------------------------- the whole lake


def _check_manifest(scan: _Scan, paths: LakePaths, hash_key: HashKey | bytes | str | None) -> None:
    try:
        with open(paths.manifest, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        scan.add("problem", "manifest", "_lake.json is missing: this is not a lake, or it was lost")
        return
    except ValueError as err:
        scan.bad[paths.manifest] = f"not valid JSON: {err}"
        scan.add("problem", "manifest", f"_lake.json is not valid JSON ({err})", "_lake.json")
        return
    if not isinstance(manifest, dict) or manifest.get("format") != "kmsg-analytics-lake":
        scan.add("problem", "manifest", "_lake.json does not describe a kmsg-analytics lake")
        return
    scan.manifest = manifest
    version = manifest.get("format_version")
    if not isinstance(version, int):
        scan.add("problem", "manifest", f"_lake.json has no valid format_version ({version!r})")
    elif version > FORMAT_VERSION:
        scan.add(
            "problem",
            "format",
            f"the lake has format {version}, newer than this kmsg-analytics reads "
            f"({FORMAT_VERSION}): upgrade with `pip install -U kmsg-analytics`",
        )
    elif version < FORMAT_VERSION:
        scan.add("warning", "format", f"the lake has the older format {version}")
    key_id = manifest.get("hash_key_id")
    if hash_key is not None:
        given = hash_key if isinstance(hash_key, HashKey) else HashKey(hash_key)
        if key_id != given.key_id:
            scan.add(
                "problem",
                "key",
                f"the lake's number-hash key is {key_id!r}, but the key given is "
                f"{given.key_id!r}: filters by number would match nothing",
            )
        else:
            scan.add("info", "key", f"the number-hash key matches the lake ({key_id})")
    elif not isinstance(key_id, str):
        scan.add("problem", "key", "_lake.json does not name its number-hash key")


def _check_state(scan: _Scan, paths: LakePaths) -> None:
    try:
        with open(paths.state, encoding="utf-8") as fh:
            state = json.load(fh)
    except FileNotFoundError:
        state = {"seq": 0, "watermark": 0, "last_wal": None, "fold_date": None}
    except ValueError as err:
        scan.bad[paths.state] = f"not valid JSON: {err}"
        scan.add("problem", "state", f"_state.json is not valid JSON ({err})", "_state.json")
        return
    seq, w = (state.get("seq"), state.get("watermark")) if isinstance(state, dict) else (0, 0)
    if not isinstance(seq, int) or not isinstance(w, int) or seq < 0 or w < 0:
        scan.bad[paths.state] = "seq or watermark is not a number"
        scan.add("problem", "state", f"_state.json has no valid seq/watermark ({state!r})")
        return
    if w > seq:
        scan.add(
            "problem",
            "state",
            f"_state.json: the watermark ({w}) is past the last sequence number ({seq})",
            "_state.json",
        )
        scan.state_fix = {"watermark": seq}
    scan.state = state


def _walk(scan: _Scan, paths: LakePaths) -> None:
    """Classify and read every entry of the three datasets."""
    for dataset in (paths.history, paths.current):
        want = HISTORY_PARTITION if dataset == paths.history else CURRENT_PARTITION
        if not dataset.exists():
            continue
        for entry in sorted(dataset.iterdir()):
            day = _day_of(entry.name)
            if day is None or not entry.name.startswith(want) or not entry.is_dir():
                scan.stray[entry] = "not a partition of the dataset"
                continue
            for item in sorted(entry.iterdir()):
                if dataset == paths.history:
                    m = _HISTORY_NAME.match(item.name)
                    if m and item.is_file():
                        hf = _HistoryFile(item, day, int(m[2]), int(m[3]), m[4])
                        _check_history_file(scan, paths, hf)
                        continue
                elif item.name == "part-0.parquet" and item.is_file():
                    _check_current_file(scan, paths, day, item)
                    continue
                scan.stray[item] = "not a file of the lake"
    if paths.open.exists():
        for item in sorted(paths.open.iterdir()):
            if item.name == "part-0.parquet" and item.is_file():
                _check_open_file(scan, paths, item)
            else:
                scan.stray[item] = "not a file of the lake"
    for path, why in scan.stray.items():
        rel = _rel(paths, path)
        what = "folder" if path.is_dir() else "file"
        scan.add(
            "problem",
            "stray",
            f"{rel} is a stray {what} in a dataset ({why}); engines reading the folder "
            "would see it",
            rel,
        )


def _retention_explained(paths: LakePaths) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    with (
        contextlib.suppress(FileNotFoundError),
        open(paths.root / "_retention" / "log.jsonl", encoding="utf-8") as fh,
    ):
        for line in fh:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == "removed" and entry.get("dataset") == "history":
                out.extend((int(a), int(b)) for a, b in entry.get("seq_ranges", []))
    return _union(out)


def _quarantined(paths: LakePaths) -> tuple[int, list[tuple[int, int]]]:
    """Files in quarantine, and the history seq ranges they took with them."""
    n, lost = 0, list[tuple[int, int]]()
    folder = paths.root / "_quarantine"
    if not folder.exists():
        return 0, []
    for reasons in folder.glob("*/REASONS.json"):
        try:
            entries = json.loads(reasons.read_text(encoding="utf-8"))
        except ValueError:
            continue
        for entry in entries if isinstance(entries, list) else []:
            n += 1
            lost.extend((int(a), int(b)) for a, b in entry.get("lost_seq_ranges", []))
    return n, _union(lost)


def _check_sequences(scan: _Scan, paths: LakePaths) -> None:
    files = scan.history
    names = [(f.lo, f.hi, f) for f in files] + [
        (int(m[2]), int(m[3]), None)
        for p in scan.bad
        if (m := _HISTORY_NAME.match(p.name)) and p.parent.parent == paths.history
    ]
    top = max((hi for _lo, hi, _f in names), default=0)
    state = scan.state
    if state is not None and top > int(state["seq"]):
        scan.add(
            "warning",
            "state",
            f"history holds sequence numbers up to {top} but _state.json says {state['seq']}: "
            "a writer died right after publishing (the next writer corrects it)",
        )
        best = max(files, key=lambda f: f.hi, default=None)
        scan.state_fix = {
            **(scan.state_fix or {}),
            "seq": top,
            "last_wal": best.wal if best and best.hi == top else None,
        }
    # duplicates across files: only files whose contents overlap can share numbers
    spans = sorted(((f.runs[0][0], f.runs[-1][1], f) for f in files if f.runs), key=lambda s: s[:2])
    for i, (_lo, hi, f) in enumerate(spans):
        for lo2, _hi2, g in spans[i + 1 :]:
            if lo2 > hi:
                break
            shared = _overlap(f, g)
            if not shared:
                continue
            a, b = _rel(paths, f.path), _rel(paths, g.path)
            scan.add(
                "problem",
                "seq-duplicate",
                f"{a} and {b} both hold {_count(shared):,} sequence numbers "
                f"({_ranges_text(shared)}): those snapshots would count twice",
                b,
            )
            if _count(shared) == f.rows:
                scan.redundant.append(f.path)
            elif _count(shared) == g.rows:
                scan.redundant.append(g.path)
    # gaps
    seq = int(state["seq"]) if state is not None else top
    covered = _union(r for f in files for r in f.runs)
    gaps = _complement(covered, 1, seq)
    if not gaps:
        return
    retention = _retention_explained(paths)
    _n, quarantined = _quarantined(paths)
    by_retention = _subtract(gaps, _subtract(gaps, retention))
    rest = _subtract(gaps, retention)
    lost_before = _subtract(rest, _subtract(rest, quarantined))
    rest = _subtract(rest, quarantined)
    bad_names = _union((lo, hi) for lo, hi, f in names if f is None)
    unreadable = _subtract(rest, _subtract(rest, bad_names))
    rest = _subtract(rest, bad_names)
    if by_retention:
        scan.add(
            "info",
            "seq-gap",
            f"{_count(by_retention):,} snapshots were removed by retention "
            "(see _retention/log.jsonl)",
        )
    if lost_before:
        scan.add(
            "warning",
            "lost",
            f"{_count(lost_before):,} snapshots ({_ranges_text(lost_before)}) were lost with "
            "files moved to _quarantine by an earlier repair",
        )
    if unreadable:
        scan.add(
            "problem",
            "seq-gap",
            f"{_count(unreadable):,} snapshots ({_ranges_text(unreadable)}) are in files that "
            "cannot be read",
        )
    if rest:
        scan.add(
            "problem",
            "seq-gap",
            f"{_count(rest):,} sequence numbers between 1 and {seq} are in no history file "
            f"({_ranges_text(rest)}): snapshots are missing",
        )


def _overlap(f: _HistoryFile, g: _HistoryFile) -> list[tuple[int, int]]:
    """Sequence ranges both files hold (from their runs)."""
    return _subtract(f.runs, _subtract(f.runs, g.runs))


def _scan_files(files: Iterable[Path], hive: dict[str, Any] | None = None) -> pl.LazyFrame:
    return pl.scan_parquet(
        [str(p) for p in files],
        schema=POLARS_SCHEMA,
        hive_partitioning=hive is not None,
        hive_schema=hive,
        glob=False,
    )


def _check_current_set(scan: _Scan, paths: LakePaths) -> None:
    """One row per message in current; open = its non-terminal rows; current in history."""
    files = [scan.current[d] for d in sorted(scan.current)]
    if not files:
        current = pl.DataFrame(
            schema={"message_id": pl.String, "seq": pl.Int64, "status": pl.String,
                    CURRENT_PARTITION: pl.Date}
        )  # fmt: skip
    else:
        current = (
            _scan_files(files, {CURRENT_PARTITION: pl.Date})
            .select("message_id", "seq", "status", CURRENT_PARTITION)
            .collect()
        )
    dups = (
        current.group_by("message_id")
        .agg(pl.len(), pl.col(CURRENT_PARTITION).unique())
        .filter(pl.col("len") > 1)
    )
    if dups.height:
        days = dups.get_column(CURRENT_PARTITION).explode().unique().sort().to_list()
        scan.add(
            "problem",
            "duplicate-message",
            f"{dups.height:,} messages have more than one current row (on "
            f"{', '.join(d.isoformat() for d in days[:_SHOW])}): they would count twice",
        )
        scan.rebuild_days |= set(days)
    state = scan.state or {}
    w = int(state.get("watermark", 0) or 0)
    if (ahead := current.filter(pl.col("seq") > w).height) and not scan.rebuild_days:
        scan.add(
            "warning",
            "fold",
            f"{ahead:,} current rows are newer than the watermark ({w}): a compaction was "
            "interrupted (the next `kmsg-analytics compact` finishes it)",
        )
    # current rows must be snapshots of the history
    history_files = [f.path for f in scan.history]
    if history_files and current.height:
        orphans = (
            current.lazy()
            .select("seq")
            .join(_scan_files(history_files).select("seq"), on="seq", how="anti")
            .collect(engine="streaming")
            .height
        )
        if orphans:
            scan.add(
                "warning",
                "history",
                f"{orphans:,} current rows have no snapshot in history (history was lost; "
                "as-of queries cannot show them)",
            )
    # the open set
    if not scan.open_ok:
        return
    open_path = paths.open_file()
    if open_path.exists():
        opened = pl.read_parquet(open_path).select("message_id", "seq", CURRENT_PARTITION)
    else:
        opened = pl.DataFrame(
            schema={"message_id": pl.String, "seq": pl.Int64, CURRENT_PARTITION: pl.Date}
        )
    # days whose current partition is damaged are rebuilt anyway: compare the others
    skip = sorted(scan.rebuild_days)
    opened = opened.filter(~pl.col(CURRENT_PARTITION).is_in(skip)).select("message_id", "seq")
    want = current.filter(
        pl.col("status").is_in(POLLABLE_STATUSES) & ~pl.col(CURRENT_PARTITION).is_in(skip)
    ).select("message_id", "seq")
    missing = want.join(opened, on=["message_id", "seq"], how="anti").height
    extra = opened.join(want, on=["message_id", "seq"], how="anti").height
    if missing or extra:
        folding = current.filter(pl.col("seq") > w).height > 0
        retention = (paths.root / "_retention" / "run.json").exists() and not extra
        why = (
            " (an interrupted compaction; the next one fixes it)"
            if folding
            else " (an interrupted retention run; run it again to finish)"
            if retention
            else ""
        )
        scan.add(
            "warning" if (folding or retention) and not scan.rebuild_days else "problem",
            "open-set",
            f"open/part-0.parquet is out of step with current/: {missing:,} non-terminal "
            f"messages missing, {extra:,} rows that are not current{why}",
            "open/part-0.parquet",
        )
        scan.rebuild_open = True


def _check_leftovers(scan: _Scan, paths: LakePaths) -> None:
    if paths.staging.exists():
        scan.debris = sorted(paths.staging.iterdir())
        if scan.debris:
            scan.add(
                "warning",
                "staging",
                f"{len(scan.debris)} temporary files left in _staging by a writer that died "
                "(the next writer removes them)",
                "_staging",
            )
    last = (scan.state or {}).get("last_wal")
    for wal_id, path, _fd in orphan_wals(paths.wal, None):
        rows = len(read_wal_lines(path))
        rel = _rel(paths, path)
        if wal_id == last:
            scan.add(
                "info",
                "wal",
                f"{rel} is the log of a batch already published (removed at the next open)",
                rel,
            )
            continue
        scan.dead_wals.append((wal_id, path, rows))
        scan.add(
            "warning",
            "wal",
            f"{rel}: {rows:,} acknowledged rows of a writer that stopped are waiting to be "
            "published (opening the lake with its key publishes them)",
            rel,
        )
    if paths.wal.exists():
        for entry in sorted(paths.wal.iterdir()):
            if entry.suffix != ".wal":
                rel = _rel(paths, entry)
                scan.add("warning", "stray", f"{rel} is not a write-ahead log", rel)
    if (paths.root / "_retention" / "run.json").exists():
        scan.add(
            "warning",
            "retention",
            "a retention run was interrupted: run `kmsg-analytics retention apply` again to "
            "finish it",
            "_retention/run.json",
        )
    n, _lost = _quarantined(paths)
    if n:
        scan.add("info", "quarantine", f"{n} files were moved to _quarantine by earlier repairs")


def _check_keys(scan: _Scan, keys: Any) -> None:
    if not scan.kids:
        return
    kids = sorted(scan.kids)
    if keys is None:
        scan.add("info", "key", f"numbers are encrypted with key ids {', '.join(kids)}")
        return
    try:
        from ._crypto import resolve_key_provider

        known = set(resolve_key_provider(keys).kids())
    except Exception as err:
        scan.add("warning", "key", f"could not read the encryption keys given ({err})")
        return
    unknown = [k for k in kids if k not in known]
    if unknown:
        scan.add(
            "problem",
            "key",
            f"numbers are encrypted with key ids {', '.join(unknown)} that the keys given do "
            "not hold: those numbers cannot be decrypted here",
        )
    else:
        scan.add("info", "key", f"every encryption key id in the lake is known ({', '.join(kids)})")


def _check(paths: LakePaths, hash_key: HashKey | bytes | str | None, keys: Any) -> _Scan:
    scan = _Scan()
    _check_manifest(scan, paths, hash_key)
    _check_state(scan, paths)
    _walk(scan, paths)
    _check_sequences(scan, paths)
    _check_current_set(scan, paths)
    _check_leftovers(scan, paths)
    _check_keys(scan, keys)
    return scan


# --------------------------------------------------------------------------- repair


class _Quarantine:
    def __init__(self, paths: LakePaths) -> None:
        self.paths = paths
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.folder = paths.root / "_quarantine" / stamp
        self.entries: list[dict[str, Any]] = []

    def move(self, path: Path, reason: str, lost: list[tuple[int, int]] | None = None) -> str:
        rel = _rel(self.paths, path)
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
    w = int((scan.state or {}).get("watermark", 0) or 0)
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
    w = int((scan.state or {}).get("watermark", 0) or 0)
    # damaged files and strays leave the datasets
    for path, why in sorted(scan.bad.items()):
        if path in (paths.manifest, paths.state):
            continue
        m = _HISTORY_NAME.match(path.name)
        seqs = [(int(m[2]), int(m[3]))] if m and path.parent.parent == paths.history else None
        rel = q.move(path, why, seqs)
        actions.append(f"moved {rel} ({why}) to {_rel(paths, q.folder)}")
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
