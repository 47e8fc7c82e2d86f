"""A snapshot of any kind that moves a message to another requested day.

A poll normally keeps the message's ``requested_at``; one that does not (a gateway or a
caller correcting it) still moves the message, as in :class:`InMemoryTrackingStore`:
after a fold, ``current/`` holds it once, on its new day, for any engine reading the
files.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from kmsg_analytics import DeliveryTrackingService, InMemoryTrackingStore
from tests._helpers import Gateway, quiet_lake, send_pair
from tests._model import TEST_KEY

D1 = datetime(2026, 11, 1, 9, tzinfo=UTC)
D2 = datetime(2026, 11, 5, 9, tzinfo=UTC)


def _current_ids(root: Path) -> list[str]:
    files = sorted(root.glob("current/*/part-0.parquet"))
    return sorted(pl.read_parquet(files).get_column("message_id").to_list()) if files else []


@pytest.mark.parametrize("fold_before_poll", [True, False])
def test_a_poll_that_moves_a_message_leaves_its_old_day(
    tmp_path: Path, fold_before_poll: bool
) -> None:
    lake = quiet_lake(tmp_path / "lake")
    memory = InMemoryTrackingStore(hash_key=TEST_KEY)
    answers = []
    for store in (lake, memory):
        svc = DeliveryTrackingService([Gateway()], store=store)
        for mid in ("m1", "m2"):
            svc.record_send(*send_pair(mid, D1))
        if store is lake:
            lake.flush()
            if fold_before_poll:
                lake.compact()
        moved = svc.get_record("m2")
        assert moved is not None
        store.append_snapshots(
            [replace(moved, requested_at=D2, status="DELIVERED", status_updated_at=D2)],
            kind="poll",
        )
        if store is lake:
            lake.flush()
            lake.compact()
        day = {"requested_at_from": D2 - timedelta(hours=1), "requested_at_to": D2}
        answers.append(
            (
                svc.count_records(),
                svc.count_records(**day),
                sorted(svc.list_records().select("message_id", "status").collect().rows()),
            )
        )
    assert answers[0] == answers[1] == (2, 1, [("m1", "SENT"), ("m2", "DELIVERED")])
    assert _current_ids(tmp_path / "lake") == ["m1", "m2"]  # once each, for any engine
    lake.close()
