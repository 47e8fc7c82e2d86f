"""The rate-maturity rollup: the same curves as ``rate_maturity``, kept until the lake changes.

Histories are drawn with hypothesis, including snapshots that move a message to another
provider, type or request time (such a message is counted exactly, not from the rollup),
send/poll/load kinds in any order, and windows that cover hours in part; every answer is
compared with ``DeliveryAnalytics.rate_maturity`` (``equals``) and, where the model has
the same filters, with the plain-Python model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmsg_analytics import (
    DeliveryTrackingService,
    InMemoryTrackingStore,
    ParquetTrackingStore,
    TrackingRecord,
)
from kmsg_analytics import _rollups as r
from kmsg_analytics._analytics import DeliveryAnalytics
from kmsg_analytics._metrics import RATES
from tests._analytics_model import DELIVERY_STATUSES as STATUSES
from tests._analytics_model import PROVIDERS, TYPES, AnalyticsModel, micros
from tests._helpers import Gateway
from tests._model import TEST_KEY
from tests.conftest import FixedClock

T0 = datetime(2026, 3, 2, tzinfo=UTC)
US = timedelta(microseconds=1)
HOUR = timedelta(hours=1)
AGES = ("30s", "5m", "1h", "24h")
MIN_N = 3

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Snap:
    kind: str
    delay_s: int
    status: str
    move: str  # "", "provider", "type", "requested"


@dataclass
class Msg:
    message_id: str
    provider_id: str
    type: str
    requested_at: datetime
    gateway: bool
    snaps: list[Snap]


def _record(svc: DeliveryTrackingService, clock: FixedClock, m: Msg) -> TrackingRecord:
    clock.now = m.requested_at
    context = {
        "messageId": m.message_id,
        "timestamp": m.requested_at,
        "options": {"type": m.type, "to": "010-1234-5678"},
    }
    result = {
        "messageId": m.message_id,
        "providerId": m.provider_id,
        "providerMessageId": f"G-{m.message_id}" if m.gateway else "",
        "type": m.type,
        "to": "010-1234-5678",
    }
    return svc.record_send(context, result)


def build(store: Any, msgs: Sequence[Msg], model: AnalyticsModel) -> DeliveryTrackingService:
    """Every send, then every later snapshot in time order, into the store and the model."""
    clock = FixedClock(T0)
    svc = DeliveryTrackingService([Gateway(p) for p in PROVIDERS], store=store, clock=clock)
    sent = {}
    for m in msgs:
        rec = _record(svc, clock, m)
        model.add("send", rec, rec.status_updated_at)
        sent[m.message_id] = rec
    later = sorted(
        ((m.requested_at + timedelta(seconds=s.delay_s), i, j, m, s))
        for i, m in enumerate(msgs)
        for j, s in enumerate(m.snaps)
    )
    for at, _i, _j, m, s in later:
        base = sent[m.message_id]
        changes: dict[str, Any] = {"status": s.status, "status_updated_at": at}
        if s.move == "provider":
            changes["provider_id"] = PROVIDERS[(PROVIDERS.index(m.provider_id) + 1) % 3]
        elif s.move == "type":
            changes["type"] = TYPES[(TYPES.index(m.type) + 1) % 3]
        elif s.move == "requested":
            changes["requested_at"] = m.requested_at + timedelta(minutes=50)
        rec = replace(base, **changes)
        store.append_snapshots([rec], kind=s.kind, recorded_at=micros(at))
        model.add(s.kind, rec, at)
    return svc


TIMES = st.one_of(
    st.sampled_from([T0, T0 + HOUR - US, T0 + HOUR, T0 + timedelta(minutes=30)]),
    st.integers(0, 2 * 86_400).map(lambda s: T0 + timedelta(seconds=s)),
)


@st.composite
def histories(draw: st.DrawFn) -> list[Msg]:
    msgs = []
    for i in range(draw(st.integers(0, 10))):
        snaps = draw(
            st.lists(
                st.builds(
                    Snap,
                    st.sampled_from(("poll", "poll", "load", "send")),
                    st.sampled_from((0, 10, 30, 299, 300, 3_600, 86_400)) | st.integers(0, 90_000),
                    st.sampled_from(STATUSES),
                    st.sampled_from(("", "", "", "", "provider", "type", "requested")),
                ),
                max_size=3,
            )
        )
        msgs.append(
            Msg(
                f"m{i}",
                draw(st.sampled_from(PROVIDERS)),
                draw(st.sampled_from(TYPES)),
                draw(TIMES),
                draw(st.booleans()),
                snaps,
            )
        )
    return msgs


WINDOWS = st.one_of(
    # whole hours (as the explorer asks)
    st.tuples(st.integers(-2, 40), st.integers(1, 30)).map(
        lambda x: (T0 + x[0] * HOUR, T0 + (x[0] + x[1]) * HOUR - US)
    ),
    # anything (hours covered in part, a window inside one hour)
    st.tuples(st.integers(-3_600, 2 * 86_400), st.integers(0, 2 * 86_400)).map(
        lambda x: (T0 + timedelta(seconds=x[0]), T0 + timedelta(seconds=x[0] + x[1]))
    ),
)


def memory(msgs: Sequence[Msg]) -> tuple[DeliveryAnalytics, AnalyticsModel]:
    model = AnalyticsModel(min_n=MIN_N)
    svc = build(InMemoryTrackingStore(hash_key=TEST_KEY), msgs, model)
    return DeliveryAnalytics(svc, min_n=MIN_N), model


@SETTINGS
@given(
    msgs=histories(),
    window=WINDOWS,
    name=st.sampled_from(sorted(RATES)),
    by=st.sampled_from([(), ("provider_id",), ("type",), ("provider_id", "type")]),
    picks=st.sampled_from([{}, {"provider_id": "solapi"}, {"type": ["SMS", "LMS"]}]),
    now_s=st.integers(0, 4 * 86_400),
)
def test_rollup_answers_equal_rate_maturity(
    msgs: list[Msg],
    window: tuple[datetime, datetime],
    name: str,
    by: tuple[str, ...],
    picks: dict[str, Any],
    now_s: int,
) -> None:
    an, model = memory(msgs)
    now = T0 + timedelta(seconds=now_s)
    s, e = window
    args: dict[str, Any] = {"ages": AGES, "definition": name, "now": now, "by": list(by) or None}
    want = an.rate_maturity(s, e, **args, **picks)  # no rollup kept yet: from the snapshots
    got = r.rate_maturity(an, s, e, **args, **picks)
    assert r.cached_rollup(an.store, [30_000_000, 300_000_000, 3_600_000_000, 86_400_000_000], now)
    assert got.equals(want), (got, want)
    # the public method now answers from the kept rollup, and the same
    assert an.rate_maturity(s, e, **args, **picks).equals(want)
    # the plain-Python model and the lake disagree on a message whose requested_at a
    # later snapshot moved (which requested_at a state is aged from): a known open
    # question, so the model is compared only where no snapshot moves a message in time
    moved = any(snap.move == "requested" for msg in msgs for snap in msg.snaps)
    if not picks and not moved:
        ages = [timedelta(seconds=x) for x in (30, 300, 3_600, 86_400)]
        expected = model.maturity(s, e, ages, name, now, by)
        assert got.select(*by, "age_s", "messages", "numerator", "denominator").to_dicts() == [
            {k: row[k] for k in (*by, "age_s", "messages", "numerator", "denominator")}
            for row in expected
        ]


def _lake_with(tmp_path: Path, msgs: Sequence[Msg]) -> DeliveryAnalytics:
    store = ParquetTrackingStore(tmp_path / "lake", hash_key=TEST_KEY)
    build(store, msgs, AnalyticsModel(min_n=MIN_N))
    store.flush()
    return DeliveryAnalytics(store, min_n=MIN_N)


MSGS = [
    Msg(f"m{i}", PROVIDERS[i % 3], TYPES[i % 2], T0 + i * timedelta(minutes=37), i % 4 > 0, [])
    for i in range(30)
]
for _i, _m in enumerate(MSGS):
    _m.snaps = [
        Snap("poll", 20 + _i, "SENT", ""),
        Snap("poll", 400 + 97 * _i, STATUSES[_i % 6], ""),
    ]
MSGS[3].snaps.append(Snap("poll", 900, "DELIVERED", "provider"))  # an odd message


@pytest.mark.parametrize("where", ["lake", "memory"])
def test_a_new_snapshot_changes_the_answer(tmp_path: Path, where: str) -> None:
    an = _lake_with(tmp_path, MSGS) if where == "lake" else memory(MSGS)[0]
    s, e = T0, T0 + timedelta(days=1) - US
    now = T0 + timedelta(days=2)
    want = an.rate_maturity(s, e, now=now)  # no rollup kept yet: from the snapshots
    before = r.rate_maturity(an, s, e, now=now)
    assert before.equals(want)
    ages = [60_000_000 * x for x in (1, 5, 15, 60, 360, 1_440, 4_320)]
    kept = r.cached_rollup(an.store, ages, now)
    assert kept is not None
    assert kept.odd.height == 4  # m3's snapshots, counted exactly
    # the same answer again comes from the kept rollup
    assert r.rate_maturity(an, s, e, now=now, build=False).equals(before)
    # a new snapshot: the kept rollup is no longer the lake's
    rec = an.store.get("m0")
    assert rec is not None
    assert rec.status != "DELIVERED"
    an.store.append_snapshots(
        [replace(rec, status="DELIVERED")],
        kind="poll",
        recorded_at=micros(T0 + timedelta(seconds=5)),
    )
    assert r.cached_rollup(an.store, ages, now) is None
    want = an.rate_maturity(s, e, now=now)  # the stale rollup is not used
    after = r.rate_maturity(an, s, e, now=now)
    assert after.equals(want)
    assert not after.equals(before)
    assert r.cached_rollup(an.store, ages, now) is not None


def test_kept_rollups_are_bounded(tmp_path: Path) -> None:
    an = _lake_with(tmp_path, MSGS)
    s, e = T0, T0 + timedelta(days=1) - US
    ages = [60_000_000 * x for x in (1, 5, 15, 60, 360, 1_440, 4_320)]
    moments = [T0 + timedelta(hours=h) for h in (20, 30, 40, 50)]
    for now in moments:
        assert r.rate_maturity(an, s, e, now=now, definition="reached").equals(
            an.rate_maturity(s, e, now=now, definition="reached")
        )
    kept = [r.cached_rollup(an.store, ages, now) is not None for now in moments]
    assert kept == [False] * (len(moments) - r.KEEP) + [True] * r.KEEP


def test_what_a_rollup_does_not_serve_falls_back(tmp_path: Path) -> None:
    from kmsg_analytics._metrics import ErrorCodeIs, RateMetric, StatusIs

    an = _lake_with(tmp_path, MSGS)
    s, e = T0, T0 + timedelta(days=1)
    custom = RateMetric(
        "not_timed_out", "x", StatusIs(("DELIVERED",)), ~ErrorCodeIs(("TRACKING_TIMEOUT",)), "x"
    )
    assert not r.servable([], custom)
    assert not r.servable(["status"], RATES["reached"])
    assert r.servable(["type", "provider_id"], RATES["reached"])
    for kwargs in ({"definition": custom}, {"by": "status"}):
        got = r.rate_maturity(an, s, e, **kwargs)
        assert got.equals(an.rate_maturity(s, e, **kwargs))


@pytest.mark.parametrize("name", ["delivered_of_total", "reached"])
def test_colliding_message_keys_are_sorted_by_id(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    import kmsg_analytics._analytics_history as history

    def collide(mid: pl.Expr) -> pl.Expr:
        return mid.str.len_bytes().cast(pl.UInt64)

    monkeypatch.setattr(history, "_key_hash", collide)
    an = _lake_with(tmp_path, MSGS)
    s, e = T0, T0 + timedelta(days=1) - US
    for by in (None, "provider_id"):
        got = r.rate_maturity(an, s, e, by=by, definition=name)
        assert got.equals(an.rate_maturity(s, e, by=by, definition=name))


def test_cells_carried_beside_the_sort_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """When seq and the cell do not fit in the packed integer, the cell is carried along."""
    monkeypatch.setattr(r, "_PACK_BITS", 20)
    seen = _spy_on_chunks(monkeypatch)
    an = _lake_with(tmp_path, MSGS)
    s, e = T0 + timedelta(minutes=10), T0 + timedelta(days=1)
    for by, name in ((None, "delivered_of_total"), ("type", "failure_share")):
        got = r.rate_maturity(an, s, e, by=by, definition=name)
        assert got.equals(an.rate_maturity(s, e, by=by, definition=name))
    assert seen == ["DataFrame"]  # the cells came along beside the sorted values


def _spy_on_chunks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Note whether rollups sort 128-bit values (a Series) or rows with their cells."""
    seen: list[str] = []
    chunks = r._chunks

    def spy(rows: Any, *args: Any) -> Any:
        seen.append(type(rows).__name__)
        return chunks(rows, *args)

    monkeypatch.setattr(r, "_chunks", spy)
    return seen


@pytest.mark.parametrize("pack_bits", [63, 20])
def test_rollup_in_many_chunks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pack_bits: int
) -> None:
    """Sorted snapshots cut into many small chunks (never inside a message): same curves."""
    import kmsg_analytics._analytics_history as history

    monkeypatch.setattr(history, "_CHUNK_ROWS", 3)
    monkeypatch.setattr(r, "_CHUNK_ROWS", 3)
    monkeypatch.setattr(r, "_PACK_BITS", pack_bits)
    seen = _spy_on_chunks(monkeypatch)
    an = _lake_with(tmp_path, MSGS)
    s, e = T0, T0 + timedelta(days=1) - US
    for by, name in ((None, "delivered_of_total"), ("provider_id", "reached")):
        got = r.rate_maturity(an, s, e, by=by, definition=name)
        assert got.equals(an.rate_maturity(s, e, by=by, definition=name))
    assert seen == ["Series" if pack_bits == 63 else "DataFrame"]
