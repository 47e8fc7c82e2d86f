"""Resends read before they are folded, through a requested-at window.

A message sent again keeps the state polling reached: a send never replaces a poll's
snapshot. When the resend carries another requested time, its row sits on a day the
message does not live on; a windowed query between folds must not count it there.
The in-memory store is the reference.
"""

from __future__ import annotations

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
DAYS = 3

#: steps after the first sends: ("poll", i, status) | ("send", i, day) | ("fold", 0, "")
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("poll"), st.integers(0, 5), st.sampled_from(["SENT", "DELIVERED", "FAILED"])
        ),
        st.tuples(st.just("send"), st.integers(0, 7), st.integers(0, DAYS - 1)),
        st.tuples(st.just("fold"), st.just(0), st.just(0)),
    ),
    max_size=12,
)


def _run(
    store: ParquetTrackingStore | InMemoryTrackingStore, plan: list[tuple[str, int, object]]
) -> list[tuple[object, ...]]:
    svc = DeliveryTrackingService([Gateway()], store=store)
    for i in range(6):
        svc.record_send(*send_pair(f"m{i}", DAY0 + timedelta(days=i % DAYS, minutes=i)))
    lake = store if isinstance(store, ParquetTrackingStore) else None
    for kind, i, arg in plan:
        if kind == "poll":
            rec = svc.get_record(f"m{i}")
            assert rec is not None
            store.append_snapshots([replace(rec, status=str(arg))], kind="poll")
        elif kind == "send":
            at = DAY0 + timedelta(days=int(str(arg)), minutes=30 + i)
            svc.record_send(*send_pair(f"m{i}", at))
        elif lake is not None:
            lake.compact()
    return [record_answers(svc, DAY0 + timedelta(days=d)) for d in range(DAYS)]


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=steps)
def test_windowed_answers_between_folds_are_the_in_memory_stores(
    tmp_path_factory: object, plan: list[tuple[str, int, object]]
) -> None:
    root = tmp_path_factory.mktemp("lake")  # type: ignore[attr-defined]
    lake = quiet_lake(root / "lake")
    try:
        got = _run(lake, plan)
        want = _run(InMemoryTrackingStore(hash_key=TEST_KEY), plan)
        assert got == want
    finally:
        lake.close()


def test_a_resend_on_a_new_day_that_loses_is_not_counted_there(tmp_path: object) -> None:
    plan: list[tuple[str, int, object]] = [
        ("poll", 0, "DELIVERED"),
        ("fold", 0, 0),
        ("send", 0, 1),  # m0 lives on day 0: the resend on day 1 loses
    ]
    lake = quiet_lake(tmp_path / "lake")  # type: ignore[operator]
    try:
        got = _run(lake, plan)
        assert got == _run(InMemoryTrackingStore(hash_key=TEST_KEY), plan)
        assert got[1][1] == 2  # day 1: m1 and m4 only
    finally:
        lake.close()


def test_a_lookup_by_id_reads_only_the_files_that_can_hold_the_ids(tmp_path: object) -> None:
    lake = quiet_lake(tmp_path / "lake")  # type: ignore[operator]
    try:
        _run(lake, [("fold", 0, 0)])  # m0..m5 on days 0, 1, 2, 0, 1, 2
        day = f"requested_date={(DAY0 + timedelta(days=1)).date().isoformat()}"
        held = lake._files_holding(pl.Series(["m1", "m4"]))
        assert [Path(f).parent.name for f in held] == [day]
        assert lake._files_holding(pl.Series(["m9", "new"])) == []
        assert len(lake._files_holding(pl.Series([f"m{i}" for i in range(6)]))) == DAYS
    finally:
        lake.close()
