"""Polls past the watermark, read before they are folded (merge-on-read).

Between folds the runner's polls wait in ``history/``. A query drops the rows they replace
from ``current/``: by ``seq``, through ``open/``, when every polled message was open at
the last fold (the runner's case), otherwise by id. Either way the answers are the
in-memory store's, also when a poll moves a message to another requested day and when a
fold died after rewriting ``current/`` but before moving the watermark.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmsg_analytics import DeliveryTrackingService, InMemoryTrackingStore, ParquetTrackingStore
from tests._helpers import Gateway, quiet_lake, record_answers, send_pair
from tests._model import TEST_KEY

DAY0 = datetime(2026, 11, 1, 9, tzinfo=UTC)
STATUSES = ("SENT", "DELIVERED", "FAILED", "UNKNOWN")

#: a poll: (message index, new status, days the poll moves ``requested_at`` by)
polls = st.lists(
    st.tuples(st.integers(0, 7), st.sampled_from(STATUSES), st.sampled_from([0, 0, 0, 1, -2])),
    max_size=10,
)


def _answers(svc: DeliveryTrackingService) -> tuple[object, ...]:
    return record_answers(svc, DAY0)


def _build(
    store: ParquetTrackingStore | InMemoryTrackingStore,
    n: int,
    delivered: list[int],
    moves: list[tuple[int, str, int]],
) -> DeliveryTrackingService:
    svc = DeliveryTrackingService([Gateway()], store=store)
    for i in range(n):
        svc.record_send(*send_pair(f"m{i}", DAY0 + timedelta(days=i % 3, minutes=i)))
    lake = store if isinstance(store, ParquetTrackingStore) else None
    if lake is not None:
        lake.flush()
        lake.compact()
    done = []
    for i in sorted(set(delivered) & set(range(n))):
        rec = svc.get_record(f"m{i}")
        assert rec is not None
        done.append(replace(rec, status="DELIVERED", status_updated_at=rec.requested_at))
    store.append_snapshots(done, kind="poll")
    if lake is not None:
        lake.compact()
    for i, status, days in moves:
        rec = svc.get_record(f"m{i % n}")
        assert rec is not None
        moved = rec.requested_at + timedelta(days=days)
        store.append_snapshots(
            [replace(rec, status=status, requested_at=moved, status_updated_at=DAY0)], kind="poll"
        )
    return svc


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(n=st.integers(1, 8), delivered=st.lists(st.integers(0, 7), max_size=4), moves=polls)
def test_unfolded_polls_answer_as_the_in_memory_store(
    tmp_path_factory: object, n: int, delivered: list[int], moves: list[tuple[int, str, int]]
) -> None:
    root = tmp_path_factory.mktemp("lake")  # type: ignore[attr-defined]
    lake = quiet_lake(root / "lake")
    try:
        got = _answers(_build(lake, n, delivered, moves))
        want = _answers(_build(InMemoryTrackingStore(hash_key=TEST_KEY), n, delivered, moves))
        assert got == want
    finally:
        lake.close()


def test_polls_of_open_messages_replace_their_rows_from_open(tmp_path: Path) -> None:
    lake = quiet_lake(tmp_path / "lake")
    svc = _build(lake, 6, [], [(1, "DELIVERED", 0), (4, "FAILED", 1), (1, "UNKNOWN", 0)])
    want = _answers(_build(InMemoryTrackingStore(hash_key=TEST_KEY), 6, [], []))
    assert _answers(svc) != want  # the polls count
    found = lake._delta(None)
    assert found is not None
    assert found.replaced.len() == 2  # the rows of m1 and m4 as folded, read from open/
    # both on day 1; m4 moves to day 2: both days are patched
    assert found.days == [(DAY0 + timedelta(days=d)).date() for d in (1, 2)]
    assert lake._open_rows(found.last.select("message_id")).height == 2
    lake.close()


def test_a_poll_of_a_message_closed_at_the_fold_is_looked_up_by_id(tmp_path: Path) -> None:
    lake = quiet_lake(tmp_path / "lake")
    svc = _build(lake, 4, [2], [(2, "FAILED", 0)])  # m2 was DELIVERED: not in open/
    assert lake._open_rows(pl.DataFrame({"message_id": ["m2"]})).is_empty()
    memory = _build(InMemoryTrackingStore(hash_key=TEST_KEY), 4, [2], [(2, "FAILED", 0)])
    assert _answers(svc) == _answers(memory)
    lake.close()


def test_a_fold_that_died_before_its_watermark_counts_each_message_once(tmp_path: Path) -> None:
    moves = [(0, "DELIVERED", 0), (3, "FAILED", 1), (5, "UNKNOWN", 0)]
    lake = quiet_lake(tmp_path / "lake")
    svc = _build(lake, 6, [], moves)
    lake.flush()
    want = _answers(svc)
    state = tmp_path / "lake" / "_state.json"
    shutil.copy(state, tmp_path / "state-before")
    lake.compact(history=False)  # rewrites current/ and open/, then the watermark ...
    lake.close()
    shutil.copy(tmp_path / "state-before", state)  # ... which a crash did not write
    again = ParquetTrackingStore(tmp_path / "lake", hash_key=TEST_KEY)
    files = sorted((tmp_path / "lake" / "current").glob("*/part-0.parquet"))
    watermark = pl.read_json(state).get_column("watermark").item()
    assert pl.read_parquet(files).filter(pl.col("seq") > watermark).height > 0
    assert _answers(DeliveryTrackingService([Gateway()], store=again)) == want
    again.close()


def test_the_open_set_is_written_due_first(tmp_path: Path) -> None:
    lake = quiet_lake(tmp_path / "lake")
    svc = _build(lake, 8, [3], [(i, "SENT", 0) for i in (5, 1, 6)])
    lake.compact()
    due = pl.read_parquet(tmp_path / "lake" / "open" / "part-0.parquet")
    assert due.height == 7  # m3 was delivered
    assert due.get_column("next_check_at").is_sorted(nulls_last=True)
    answer = [r.message_id for r in svc.list_due(DAY0 + timedelta(days=30), 3)]
    assert answer == due.sort("next_check_at", "message_id").get_column("message_id")[:3].to_list()
    lake.close()
