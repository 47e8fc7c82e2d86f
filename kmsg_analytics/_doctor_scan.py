"""The doctor's check: one pass over every file of a lake, recording findings and what to repair."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._doctor_ranges import (
    _SHOW,
    _complement,
    _count,
    _intersect,
    _ranges_text,
    _runs,
    _subtract,
    _union,
)
from ._doctor_report import Finding, Severity
from ._lakefs import LakePaths, orphan_wals, read_wal_lines
from ._maintenance import relative
from ._phone import HashKey
from ._records import POLLABLE_STATUSES
from ._schema import (
    CURRENT_PARTITION,
    FORMAT_VERSION,
    GATEWAY_FLAG,
    HISTORY_PARTITION,
    POLARS_SCHEMA,
    SNAPSHOT_SCHEMA,
    with_gateway_flag,
)

_HISTORY_NAME: Final = re.compile(r"^([bc])-(\d{20})-(\d{20})(?:-([0-9a-f]{32}))?\.parquet$")
_PART_DIR: Final = re.compile(r"^(ingest_date|requested_date)=(\d{4}-\d{2}-\d{2})$")
_OPEN_SCHEMA: Final = pa.schema([*SNAPSHOT_SCHEMA, pa.field(CURRENT_PARTITION, pa.date32())])
_DAY_US: Final = 86_400_000_000


# --------------------------------------------------------------------------- helpers


def _text(err: BaseException) -> str:
    return " ".join(str(err).split())


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

    @property
    def watermark(self) -> int:
        """The state's watermark (0 without a readable ``_state.json``)."""
        return int((self.state or {}).get("watermark", 0) or 0)


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


def _flagged(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the gateway flag after the lake's columns (as folded files have it)."""
    return with_gateway_flag(schema.empty_table()).schema


def _read_file(
    scan: _Scan, paths: LakePaths, path: Path, expected: pa.Schema, *, folded: bool = False
) -> Iterator[pa.Table]:
    """Every row group of ``path`` (records it as bad and stops at the first failure).

    A ``folded`` file (current or open) may also carry the gateway flag.
    """
    rel = relative(paths, path)
    scan.files += 1
    try:
        pf = pq.ParquetFile(path)
        check_key_value_metadata(pf.metadata)
    except Exception as err:
        scan.bad[path] = f"cannot be read: {_text(err)}"
        scan.add("problem", "unreadable", f"{rel} cannot be read ({_text(err)})", rel)
        return
    with pf:
        if folded and GATEWAY_FLAG in pf.schema_arrow.names:
            expected = _flagged(expected)
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
    rel = relative(paths, f.path)
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


def _wrong_flags(table: pa.Table) -> int:
    """Rows whose stored gateway flag is not what their gateway id says (0 without a flag)."""
    if GATEWAY_FLAG not in table.column_names:
        return 0
    stored = table.column(GATEWAY_FLAG)
    expected = with_gateway_flag(table).column(GATEWAY_FLAG)
    differ = pc.fill_null(pc.not_equal(stored, expected), True)  # a null flag is wrong too
    return int(pc.sum(differ).as_py() or 0)


def _check_current_file(scan: _Scan, paths: LakePaths, day: date, path: Path) -> None:
    rel = relative(paths, path)
    day_us = (day - date(1970, 1, 1)).days * _DAY_US
    misplaced = 0
    other_days: set[date] = set()
    flags = 0
    for table in _read_file(scan, paths, path, SNAPSHOT_SCHEMA, folded=True):
        scan.kids |= _kids(table)
        flags += _wrong_flags(table)
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
    if flags:
        scan.add(
            "problem",
            "gateway-flag",
            f"{rel}: {flags:,} rows have a has_gateway_id that disagrees with their "
            "provider_message_id (rates of accepted messages would be wrong)",
            rel,
        )
        scan.rebuild_days.add(day)
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
    rel = relative(paths, path)
    misplaced = 0
    for table in _read_file(scan, paths, path, _OPEN_SCHEMA, folded=True):
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
        rel = relative(paths, path)
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
            a, b = relative(paths, f.path), relative(paths, g.path)
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
    by_retention = _intersect(gaps, retention)
    rest = _subtract(gaps, retention)
    lost_before = _intersect(rest, quarantined)
    rest = _subtract(rest, quarantined)
    bad_names = _union((lo, hi) for lo, hi, f in names if f is None)
    unreadable = _intersect(rest, bad_names)
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
    return _intersect(f.runs, g.runs)


def _scan_files(files: Iterable[Path], hive: dict[str, Any] | None = None) -> pl.LazyFrame:
    return pl.scan_parquet(
        [str(p) for p in files],
        schema=POLARS_SCHEMA,
        hive_partitioning=hive is not None,
        hive_schema=hive,
        glob=False,
        extra_columns="ignore",  # a folded file's gateway flag
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
    w = scan.watermark
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
        rel = relative(paths, path)
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
                rel = relative(paths, entry)
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
