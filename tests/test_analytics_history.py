"""Rate maturity where snapshots are visible at no age, against the plain-Python model.

A lake loaded from an older store holds snapshots recorded long after their messages
were requested (all of them, when the import ran days later): the curve then counts
those messages as having no state at every age, and only their first snapshot says
when they were requested. These check that answer against the plain-Python model, with
the sends themselves recorded late, in many chunks, and with colliding keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import polars as pl
import pytest

from kmsg_analytics import DeliveryTrackingService, InMemoryTrackingStore
from kmsg_analytics._analytics import DeliveryAnalytics
from tests._analytics_model import PROVIDERS, AnalyticsModel, micros
from tests._model import TEST_KEY
from tests.test_analytics import (
    AGES,
    END,
    MIN_N,
    START,
    T0,
    Clock,
    Gateway,
    Msg,
    _seeded_messages,
    assert_rows,
    send_pair,
    updated,
)

#: How late each message's send is recorded after its request, by message number.
LATE = (timedelta(0), timedelta(hours=30), timedelta(days=3), timedelta(seconds=40))


def late_analytics(
    msgs: Sequence[Msg], late: Sequence[timedelta] = LATE
) -> tuple[DeliveryAnalytics, AnalyticsModel]:
    """Like ``memory_analytics``, but sends recorded ``late`` (and polls after their send)."""
    model = AnalyticsModel(min_n=MIN_N)
    store = InMemoryTrackingStore(hash_key=TEST_KEY)
    clock = Clock(T0)
    svc = DeliveryTrackingService([Gateway(p) for p in PROVIDERS], store=store, clock=clock)
    for i, m in enumerate(msgs):
        delay = late[i % len(late)]
        clock.now = m.requested_at + delay
        record = svc.record_send(*send_pair(m))
        model.add("send", record, clock.now)
        for u in m.updates:
            at = m.requested_at + delay + timedelta(seconds=u.delay_s)
            poll = updated(record, m, u)
            store.append_snapshots([poll], kind="poll", recorded_at=micros(at))
            model.add("poll", poll, at)
    return DeliveryAnalytics(svc, min_n=MIN_N), model


CASES = [((), "delivered_of_total"), (("provider_id",), "reached"), ((), "failure_share")]


@pytest.mark.parametrize("now_days", [1, 6])
def test_maturity_with_sends_recorded_after_every_age(now_days: int) -> None:
    an, model = late_analytics(_seeded_messages(48, seed=21))
    now = T0 + timedelta(days=now_days)
    for by, name in CASES:
        got = an.rate_maturity(START, END, ages=AGES, definition=name, now=now, by=list(by) or None)
        assert_rows(got, model.maturity(START, END, AGES, name, now, by))


def test_maturity_when_no_snapshot_is_visible_at_any_age() -> None:
    """Ages shorter than every delay: each message counts, with no state, at every age."""
    an, model = late_analytics(_seeded_messages(30, seed=22), [timedelta(hours=30)])
    ages = (timedelta(seconds=1), timedelta(seconds=2))
    now = T0 + timedelta(days=6)
    got = an.rate_maturity(START, END, ages=ages, now=now)
    assert_rows(got, model.maturity(START, END, ages, "delivered_of_total", now, ()))
    assert got.get_column("numerator").to_list() == [0, 0]
    assert got.get_column("messages").to_list() == got.get_column("denominator").to_list()


def test_maturity_in_many_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sorted snapshots cut into chunks of a few rows (two at a time) give the same curves."""
    import kmsg_analytics._analytics_history as history

    an, model = late_analytics(_seeded_messages(40, seed=23))
    now = T0 + timedelta(days=2)
    expected = [model.maturity(START, END, AGES, name, now, by) for by, name in CASES]
    monkeypatch.setattr(history, "_CHUNK_ROWS", 3)
    for (by, name), want in zip(CASES, expected, strict=True):
        got = an.rate_maturity(START, END, ages=AGES, definition=name, now=now, by=list(by) or None)
        assert_rows(got, want)


def test_maturity_late_snapshots_when_keys_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Colliding hashed keys: the rows are sorted by id, and late snapshots dropped alike."""
    import kmsg_analytics._analytics_history as history

    an, model = late_analytics(_seeded_messages(40, seed=24))
    now = T0 + timedelta(days=2)
    expected = [model.maturity(START, END, AGES, name, now, by) for by, name in CASES]

    def collide(mid: pl.Expr) -> pl.Expr:  # "m1" and "m2" share a key, and so on
        return mid.str.len_bytes().cast(pl.UInt64)

    monkeypatch.setattr(history, "_key_hash", collide)
    monkeypatch.setattr(history, "_CHUNK_ROWS", 5)
    for (by, name), want in zip(CASES, expected, strict=True):
        got = an.rate_maturity(START, END, ages=AGES, definition=name, now=now, by=list(by) or None)
        assert_rows(got, want)


def test_visible_or_first_keeps_visible_rows_and_each_first() -> None:
    import numpy as np

    from kmsg_analytics._analytics_history import _MO_BIT, _visible_or_first

    k = 3
    keys = np.array([1, 1, 1, 2, 2, 5, 7, 7], dtype=np.uint64)
    idx = np.array([3, 0, 3, 3, 3, 2, 1, 3], dtype=np.int64)
    p = idx + (np.arange(8, dtype=np.int64) << _MO_BIT)
    rows = pl.DataFrame({"g": list("abcdefgh")})
    kept, packed, groups = _visible_or_first(keys, p, rows, ["g"], k)
    assert list(groups.get_column("g")) == ["a", "b", "d", "f", "g"]
    assert list(np.asarray(kept)) == [1, 1, 2, 5, 7]
    assert list(packed >> _MO_BIT) == [0, 1, 3, 5, 6]
    everything = idx.clip(max=k - 1)
    assert _visible_or_first(keys, everything, rows, ["g"], k)[2] is rows  # nothing dropped
    ids = pl.Series(["x", "x", "y"])
    kept_ids, _, _ = _visible_or_first(ids, np.array([3, 3, 3]), rows.head(3), [], k)
    assert list(kept_ids) == ["x", "y"]


def test_maturity_of_an_empty_window() -> None:
    an, model = late_analytics(_seeded_messages(10, seed=25))
    now = T0 + timedelta(days=2)
    empty = (END + timedelta(days=30), END + timedelta(days=31))
    got = an.rate_maturity(*empty, ages=AGES, now=now)
    assert_rows(got, model.maturity(*empty, AGES, "delivered_of_total", now, ()))
    assert got.get_column("messages").to_list() == [0] * len(AGES)


@pytest.mark.parametrize(
    "by", [["type"], ["provider_id", "type"], ["type", "provider_id"], ["provider_status_code"]]
)
def test_maturity_by_groups_against_the_model(by: list[str]) -> None:
    """Groups travel as categorical codes while sorted: strings (and nulls) come back alike."""
    an, model = late_analytics(_seeded_messages(48, seed=26))
    now = T0 + timedelta(days=2)
    got = an.rate_maturity(START, END, ages=AGES, now=now, by=by)
    assert_rows(got, model.maturity(START, END, AGES, "delivered_of_total", now, by))
    assert all(got.schema[b] == pl.String for b in by)
    if by == ["provider_status_code"]:  # a message's group is that of its send: no code yet
        assert got.get_column("provider_status_code").null_count() == got.height > 0
