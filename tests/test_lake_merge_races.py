"""Merge-on-read and the fold against the in-memory store, in the hard cases.

A lazy query read after a later fold, another process folding under a reader, folds
that died part way (before the watermark, or after some days), doctor repairs, bulk
blocks, and polls that move a message between requested days.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmsg_analytics import (
    DeliveryTrackingService,
    InMemoryTrackingStore,
    ParquetTrackingStore,
    RecordFilter,
)
from kmsg_analytics._doctor import check_lake
from tests._helpers import Gateway, quiet_lake, record_answers, send_pair
from tests._model import TEST_KEY

DAY0 = datetime(2026, 11, 1, 9, tzinfo=UTC)


def _poll(svc: DeliveryTrackingService, mid: str, status: str, **changes: Any) -> None:
    rec = svc.get_record(mid)
    assert rec is not None
    svc.store.append_snapshots(
        [replace(rec, status=status, status_updated_at=DAY0, **changes)], kind="poll"
    )


def test_a_query_collected_after_a_later_fold_loses_no_message(tmp_path: Path) -> None:
    """current() is lazy: its files are read at collect time, its delta was taken before.

    n was folded (seq <= watermark); x waits past the watermark, so the query merges.
    A poll of n then folds: n's row in current/ now has a seq past the query's watermark
    and is dropped, yet the query's delta does not hold n: n is counted nowhere.
    """
    lake = quiet_lake(tmp_path / "lake")
    svc = DeliveryTrackingService([Gateway()], store=lake)
    svc.record_send(*send_pair("n", DAY0))
    lake.flush()
    lake.compact()
    svc.record_send(*send_pair("x", DAY0 + timedelta(minutes=1)))
    lake.flush()
    frame = lake.current()  # what a caller holds (list_records/count_by return LazyFrames)
    _poll(svc, "n", "DELIVERED")
    lake.flush()
    lake.compact()
    ids = sorted(frame.collect().get_column("message_id").to_list())
    assert ids == ["n", "x"]
    lake.close()


def test_another_process_folding_during_a_query_loses_no_message(tmp_path: Path) -> None:
    """The same through two stores on one lake (a reader and the runner's writer).

    The reader's merge is taken (watermark w), then the writer polls and folds before
    the reader's files are read: as in a long count_records while the runner folds.
    m was polled past w (the reader's delta holds it) and is polled again; n was not.
    Each must be counted once.
    """
    writer = quiet_lake(tmp_path / "lake")
    svc = DeliveryTrackingService([Gateway()], store=writer)
    for mid in ("m", "n"):
        svc.record_send(*send_pair(mid, DAY0))
    writer.flush()
    writer.compact()
    _poll(svc, "m", "SENT")
    writer.flush()
    reader = quiet_lake(tmp_path / "lake")
    frame = reader.current()
    _poll(svc, "m", "DELIVERED")
    _poll(svc, "n", "FAILED")
    writer.flush()
    writer.compact()
    got = frame.collect().group_by("message_id").len().sort("message_id")
    assert got.rows() == [("m", 1), ("n", 1)]
    reader.close()
    writer.close()


def test_two_polls_that_move_a_message_leave_it_on_one_day_after_the_fold(tmp_path: Path) -> None:
    """m0 is folded on day 0. Past the watermark a poll restates it on day 0, then another
    moves it to day 1. The fold's first pass replaces m0's day-0 row by the first poll;
    the message must still leave day 0 (``_moved_locked`` looks at every current row on
    another day, also those the fold already replaced).
    """
    lake = quiet_lake(tmp_path / "lake")
    svc = DeliveryTrackingService([Gateway()], store=lake)
    svc.record_send(*send_pair("m0", DAY0))
    lake.flush()
    lake.compact()
    _poll(svc, "m0", "SENT")
    _poll(svc, "m0", "SENT", requested_at=DAY0 + timedelta(days=1))
    lake.flush()
    assert svc.count_records() == 1  # merge-on-read
    lake.compact(history=False)
    rows = pl.read_parquet(sorted((tmp_path / "lake" / "current").glob("*/part-0.parquet")))
    assert rows.get_column("message_id").to_list() == ["m0"]
    assert svc.count_records() == 1
    lake.close()


# --------------------------------------------------------------------------- a model check

_STATUSES = ("SENT", "DELIVERED", "FAILED", "UNKNOWN")
_op = st.one_of(
    st.tuples(
        st.just("poll"), st.integers(0, 5), st.sampled_from(_STATUSES), st.sampled_from([0, 1, -2])
    ),
    st.tuples(st.just("send"), st.integers(0, 7), st.just(""), st.sampled_from([0, 1, -1])),
    st.tuples(st.just("fold"), st.integers(0, 1), st.just(""), st.just(0)),  # 1: merge history
    st.tuples(st.just("flush"), st.just(0), st.just(""), st.just(0)),
)


def _answers(svc: DeliveryTrackingService) -> tuple[object, ...]:
    due = svc.list_due(DAY0 + timedelta(days=60), 50)
    return (*record_answers(svc, DAY0), sorted(r.message_id for r in due))


def _run(store: Any, n: int, ops: list[tuple[str, int, str, int]]) -> DeliveryTrackingService:
    svc = DeliveryTrackingService([Gateway()], store=store)
    lake = store if isinstance(store, ParquetTrackingStore) else None
    for i in range(n):
        svc.record_send(*send_pair(f"m{i}", DAY0 + timedelta(days=i % 3, minutes=i)))
    if lake is not None:
        lake.flush()
        lake.compact()
    for what, i, status, days in ops:
        if what == "poll":
            rec = svc.get_record(f"m{i % n}")
            assert rec is not None
            moved = rec.requested_at + timedelta(days=days)
            store.append_snapshots(
                [replace(rec, status=status, requested_at=moved, status_updated_at=DAY0)],
                kind="poll",
            )
        elif what == "send":
            svc.record_send(*send_pair(f"m{i}", DAY0 + timedelta(days=(i % 3) + days, minutes=i)))
        elif lake is not None and what == "fold":
            lake.compact(history=bool(i))
        elif lake is not None:
            lake.flush()
    return svc


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(n=st.integers(1, 6), ops=st.lists(_op, max_size=8), died=st.booleans())
def test_polls_resends_and_dead_folds_answer_as_in_memory(
    tmp_path_factory: Any, n: int, ops: list[tuple[str, int, str, int]], died: bool
) -> None:
    root = tmp_path_factory.mktemp("lake")
    lake = quiet_lake(root / "lake")
    try:
        svc = _run(lake, n, ops)
        want = _answers(_run(InMemoryTrackingStore(hash_key=TEST_KEY), n, ops))
        assert _answers(svc) == want
        if died:  # a fold that rewrote current/ and open/ but not the watermark
            lake.flush()
            state = root / "lake" / "_state.json"
            shutil.copy(state, root / "state-before")
            lake.compact(history=False)
            lake.close()
            shutil.copy(root / "state-before", state)
            lake = ParquetTrackingStore(root / "lake", hash_key=TEST_KEY)
            assert _answers(DeliveryTrackingService([Gateway()], store=lake)) == want
    finally:
        lake.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 6),
    ops=st.lists(_op, max_size=6),
    more=st.lists(_op, max_size=5),
    doctor=st.booleans(),
)
def test_after_a_dead_fold_and_doctor_later_polls_answer_as_in_memory(
    tmp_path_factory: Any,
    n: int,
    ops: list[tuple[str, int, str, int]],
    more: list[tuple[str, int, str, int]],
    doctor: bool,
) -> None:
    root = tmp_path_factory.mktemp("lake")
    lake = quiet_lake(root / "lake")
    _run(lake, n, ops)
    lake.flush()
    state = root / "lake" / "_state.json"
    shutil.copy(state, root / "state-before")
    lake.compact(history=False)
    lake.close()
    shutil.copy(root / "state-before", state)  # the fold died before its watermark
    if doctor:
        check_lake(root / "lake", hash_key=TEST_KEY, repair=True)
    lake = quiet_lake(root / "lake")
    try:
        svc = DeliveryTrackingService([Gateway()], store=lake)
        memory = _run(InMemoryTrackingStore(hash_key=TEST_KEY), n, ops)
        for store, s in ((lake, svc), (memory.store, memory)):
            for what, i, status, days in more:
                if what == "poll":
                    rec = s.get_record(f"m{i % n}")
                    assert rec is not None
                    store.append_snapshots(
                        [
                            replace(
                                rec,
                                status=status,
                                requested_at=rec.requested_at + timedelta(days=days),
                                status_updated_at=DAY0,
                            )
                        ],
                        kind="poll",
                    )
                elif what == "send":
                    s.record_send(
                        *send_pair(f"m{i}", DAY0 + timedelta(days=(i % 3) + days, minutes=i))
                    )
                elif store is lake and what == "flush":
                    lake.flush()
        assert _answers(svc) == _answers(memory)
    finally:
        lake.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 6), ops=st.lists(_op, max_size=8), k=st.integers(0, 6), opened=st.booleans()
)
def test_a_fold_that_died_part_way_answers_as_in_memory(
    tmp_path_factory: Any, n: int, ops: list[tuple[str, int, str, int]], k: int, opened: bool
) -> None:
    """The fold died after writing the first ``k`` days (and ``open/``, when all, if ``opened``)."""
    root = tmp_path_factory.mktemp("lake")
    lake = quiet_lake(root / "lake")
    _run(lake, n, ops)
    lake.flush()
    before = root / "before"
    shutil.copytree(root / "lake", before)
    lake.compact(history=False)
    lake.close()
    shutil.copy(before / "_state.json", root / "lake" / "_state.json")
    days = sorted(p.name for p in (root / "lake" / "current").iterdir())
    # open/ is written after every day: new only when the fold wrote them all
    if (not opened or k < len(days)) and (before / "open").exists():
        shutil.rmtree(root / "lake" / "open")
        shutil.copytree(before / "open", root / "lake" / "open")
    for name in days[k:]:
        shutil.rmtree(root / "lake" / "current" / name)
        if (before / "current" / name).exists():
            shutil.copytree(before / "current" / name, root / "lake" / "current" / name)
    lake = quiet_lake(root / "lake")
    try:
        want = _answers(_run(InMemoryTrackingStore(hash_key=TEST_KEY), n, ops))
        assert _answers(DeliveryTrackingService([Gateway()], store=lake)) == want
    finally:
        lake.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(n=st.integers(1, 6), ops=st.lists(_op, max_size=8))
def test_inside_a_bulk_block_answers_as_in_memory(
    tmp_path_factory: Any, n: int, ops: list[tuple[str, int, str, int]]
) -> None:
    root = tmp_path_factory.mktemp("lake")
    lake = quiet_lake(root / "lake")
    try:
        want = _answers(_run(InMemoryTrackingStore(hash_key=TEST_KEY), n, ops))
        with lake.bulk():
            svc = _run(lake, n, ops)
            assert _answers(svc) == want
            lake.flush()
            assert _answers(svc) == want
        assert _answers(svc) == want
    finally:
        lake.close()


def test_a_fold_between_listing_the_files_and_reading_the_watermark_loses_nothing(
    tmp_path: Path,
) -> None:
    """A fold that writes a new day's file and moves the watermark while a query starts.

    The query must read the watermark before it lists ``current/``: a file listed
    first misses a day the fold then creates, and the watermark read after it says
    that day's snapshots are folded, so they would be counted nowhere.
    """
    writer = quiet_lake(tmp_path / "lake")
    svc = DeliveryTrackingService([Gateway()], store=writer)
    svc.record_send(*send_pair("old", DAY0))
    writer.flush()
    writer.compact()
    for i in range(5):  # a day current/ does not have yet
        svc.record_send(*send_pair(f"new-{i}", DAY0 + timedelta(days=3)))
    writer.flush()
    reader = quiet_lake(tmp_path / "lake")
    assert reader.count_records(RecordFilter()) == 6
    listing = reader._current_files
    folded = []

    def list_then_fold() -> list[str]:
        files = listing()
        if not folded:  # the writer's fold lands right after the reader's listing
            folded.append(writer.compact())
        return files

    reader._current_files = list_then_fold  # type: ignore[method-assign]
    assert reader.count_records(RecordFilter()) == 6
    assert folded
    reader.close()
    writer.close()
