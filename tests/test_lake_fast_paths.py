"""The lake's fast write paths give the lake the general paths give.

The shortcut is compared with the general code on random loads, sends and polls: a
fold window without current rows whose snapshots are each their message's only one keeps
them all without the window-max (``_LONE_ROWS_WIN``; a first load).

Both lakes must hold the same history rows, current rows and open rows, and the current
rows must be what a plain-Python fold of the history (the highest ``seq`` per message,
a snapshot of any other kind beating a send) places on each message's requested day.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import kmsg_analytics._lake as lake_module
from kmsg_analytics import ParquetTrackingStore
from kmsg_analytics._loading import frame_to_table
from kmsg_analytics._schema import PRECEDENCE_OFFSET

KEY = "test-key-123"
BASE = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
RECORDED = 1_793_491_200_000_000
STATUSES = ("SENT", "DELIVERED", "FAILED", "PENDING")

#: a snapshot: (message number, requested day, status)
rows_st = st.lists(
    st.tuples(st.integers(0, 30), st.integers(0, 6), st.sampled_from(STATUSES)),
    min_size=1,
    max_size=40,
)
batch_st = st.tuples(rows_st, st.sampled_from(("load", "send", "poll")), st.booleans())


def frame(rows: list[tuple[int, int, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "message_id": [f"m{i:02d}" for i, _, _ in rows],
            "provider_id": "solapi",
            "type": "SMS",
            "to": "010-1234-5678",
            "requested_at": [
                BASE + timedelta(days=d, minutes=i) for i, (_, d, _) in enumerate(rows)
            ],
            "status": [s for _, _, s in rows],
        }
    )


def realistic(
    batches: list[tuple[list[tuple[int, int, str]], str, bool]],
) -> list[tuple[list[tuple[int, int, str]], str, bool]]:
    """The batches with polls as polling makes them: of known messages, on their day."""
    best: dict[int, tuple[int, int]] = {}  # message -> (precedence key, requested day)
    seq = 0
    out = []
    for rows, kind, fold in batches:
        kept = []
        for i, day, status in rows:
            if kind == "poll":
                if i not in best:
                    continue
                day = best[i][1]
            seq += 1
            key = seq + (0 if kind == "send" else PRECEDENCE_OFFSET)
            if i not in best or key > best[i][0]:
                best[i] = (key, day)
            kept.append((i, day, status))
        if kept:
            out.append((kept, kind, fold))
    return out


def build(
    root: Path, batches: list[tuple[list[tuple[int, int, str]], str, bool]]
) -> dict[str, pl.DataFrame]:
    store = ParquetTrackingStore(root, hash_key=KEY, compact_rows=10**9)
    for rows, kind, fold in batches:
        table = frame_to_table(frame(rows), store.hash_key, keep_numbers=False)
        store.append_table(table, kind=kind, recorded_at=RECORDED)  # type: ignore[arg-type]
        if fold:
            store.compact(history=False)
    store.compact()
    out = {
        "history": store.history().drop("ingest_date").collect().sort("seq"),
        "current": pl.read_parquet(
            root / "current" / "**" / "*.parquet", hive_partitioning=True
        ).sort("requested_date", "message_id"),
        "open": pl.read_parquet(store.paths.open_file()).sort("requested_date", "message_id"),
    }
    store.close()
    return out


def reference_current(history: pl.DataFrame) -> pl.DataFrame:
    """Plain Python: per message the snapshot with the highest key, on its requested day."""
    best: dict[str, tuple[int, int, object]] = {}
    for row in history.select("message_id", "seq", "snapshot_kind", "requested_at").iter_rows():
        mid, seq, kind, at = row
        key = seq + (0 if kind == "send" else PRECEDENCE_OFFSET)
        if mid not in best or key > best[mid][0]:
            best[mid] = (key, seq, at)
    return pl.DataFrame(
        {
            "message_id": list(best),
            "seq": [seq for _, seq, _ in best.values()],
            "requested_date": [at.date() for _, _, at in best.values()],  # type: ignore[attr-defined]
        },
        schema={"message_id": pl.String, "seq": pl.Int64, "requested_date": pl.Date},
    ).sort("requested_date", "message_id")


@settings(max_examples=25, deadline=None)
@given(batches=st.lists(batch_st, min_size=1, max_size=4), window=st.sampled_from((3, 10, 10**9)))
def test_fast_paths_give_the_lake_the_general_paths_give(
    batches: list[tuple[list[tuple[int, int, str]], str, bool]], window: int
) -> None:
    batches = realistic(batches)
    if not batches:
        return
    lakes = []
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(lake_module, "_FOLD_WINDOW_ROWS", window)
        for name, fast in (("general", False), ("fast", True)):
            mp.setattr(lake_module, "_LONE_ROWS_WIN", fast)
            lakes.append(build(Path(tmp) / name, batches))
    general, quick = lakes
    for part in ("history", "current", "open"):
        assert_frame_equal(quick[part], general[part])
    want = reference_current(general["history"])
    assert_frame_equal(quick["current"].select(want.columns), want)
