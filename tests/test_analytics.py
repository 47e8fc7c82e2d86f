"""DeliveryAnalytics against a plain-Python model, k-msg's own answers and hand-worked examples.

Each property test draws a few messages (sends through ``record_send``, status updates
through ``store.append_snapshots(kind="poll", recorded_at=...)`` with explicit times),
builds a store, and compares every answer with :class:`tests._analytics_model.AnalyticsModel`.
Request times fall on and next to the window's ends, windows may be empty, messages may
all be in flight. "As of" answers are checked against a store replayed only up to that
moment.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from kmsg_analytics import (
    DeliveryTrackingService,
    InMemoryTrackingStore,
    InvalidRecordError,
    LakeError,
    ParquetTrackingStore,
    TrackingError,
    TrackingRecord,
)
from kmsg_analytics._analytics import DeliveryAnalytics, DeliverySummary
from kmsg_analytics._metrics import CODE_RULES, KEYWORD_RULES, RATES
from tests._analytics_model import DELIVERY_STATUSES as STATUSES
from tests._analytics_model import PROVIDERS, TYPES, AnalyticsModel, micros
from tests._helpers import KMSG_FIXTURES
from tests._model import TEST_KEY

US = timedelta(microseconds=1)

T0 = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
START = T0 + timedelta(hours=6)
END = T0 + timedelta(days=2, hours=6)

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MIN_N = 3  # small, so that both sides of the "not enough data" rule are exercised

FIXTURES = KMSG_FIXTURES


# --------------------------------------------------------------------------- building stores


class Gateway:
    def __init__(self, provider_id: str) -> None:
        self.id = provider_id


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Update:
    delay_s: int
    status: str
    code: str | None = None
    message: str | None = None
    sent_s: int | None = None
    delivered_s: int | None = None
    failed_s: int | None = None
    error: str | None = None
    attempt: dict[str, Any] | None = None


@dataclass
class Msg:
    message_id: str
    provider_id: str
    type: str
    requested_at: datetime
    gateway: bool = True
    failover: bool = False
    updates: list[Update] = field(default_factory=list)


def send_pair(m: Msg) -> tuple[dict[str, Any], dict[str, Any]]:
    options: dict[str, Any] = {"type": m.type, "to": "010-1234-5678"}
    if m.failover:
        options["failover"] = {"enabled": True, "fallbackChannel": "sms", "fallbackContent": "대체"}
    context = {"messageId": m.message_id, "timestamp": m.requested_at, "options": options}
    result = {
        "messageId": m.message_id,
        "providerId": m.provider_id,
        "providerMessageId": f"G-{m.message_id}" if m.gateway else "",
        "type": m.type,
        "to": "010-1234-5678",
        "warnings": [{"code": "FAILOVER_PARTIAL_PROVIDER"}] if m.failover else [],
    }
    return context, result


def updated(base: TrackingRecord, m: Msg, u: Update) -> TrackingRecord:
    at = m.requested_at + timedelta(seconds=u.delay_s)

    def t(seconds: int | None) -> datetime | None:
        return None if seconds is None else m.requested_at + timedelta(seconds=seconds)

    metadata = dict(base.metadata)
    if u.attempt is not None and "failover" in metadata:
        metadata["failover"] = {**metadata["failover"], "api_attempt": u.attempt}
    return replace(
        base,
        status=u.status,
        provider_status_code=u.code,
        provider_status_message=u.message,
        sent_at=t(u.sent_s),
        delivered_at=t(u.delivered_s),
        failed_at=t(u.failed_s),
        status_updated_at=at,
        last_checked_at=at,
        next_check_at=at,
        attempt_count=base.attempt_count + 1,
        last_error=None if u.error is None else TrackingError(u.error, "e"),
        metadata=metadata,
    )


def build(
    store: InMemoryTrackingStore | ParquetTrackingStore, msgs: Sequence[Msg], model: AnalyticsModel
) -> DeliveryTrackingService:
    """Record every send, then every update in time order, into the store and the model."""
    clock = Clock(T0)
    svc = DeliveryTrackingService([Gateway(p) for p in PROVIDERS], store=store, clock=clock)
    sent: dict[str, TrackingRecord] = {}
    for m in msgs:
        clock.now = m.requested_at
        context, result = send_pair(m)
        record = svc.record_send(context, result)
        model.add("send", record, record.status_updated_at)
        sent[m.message_id] = record
    polls = sorted(
        (
            (m.requested_at + timedelta(seconds=u.delay_s), i, j, m, u)
            for i, m in enumerate(msgs)
            for j, u in enumerate(m.updates)
        ),
        key=lambda x: (x[0], x[1], x[2]),
    )
    by_time: dict[datetime, list[TrackingRecord]] = {}
    for at, _i, _j, m, u in polls:
        by_time.setdefault(at, []).append(updated(sent[m.message_id], m, u))
    for at, records in by_time.items():
        store.append_snapshots(records, kind="poll", recorded_at=micros(at))
        for r in records:
            model.add("poll", r, at)
    return svc


def memory_analytics(msgs: Sequence[Msg]) -> tuple[DeliveryAnalytics, AnalyticsModel]:
    model = AnalyticsModel(min_n=MIN_N)
    svc = build(InMemoryTrackingStore(hash_key=TEST_KEY), msgs, model)
    return DeliveryAnalytics(svc, min_n=MIN_N), model


# --------------------------------------------------------------------------- strategies

EDGE_TIMES = (START - US, START, START + US, END - US, END, END + US, T0, T0 + timedelta(days=1))
request_times = st.one_of(
    st.sampled_from(EDGE_TIMES),
    st.integers(0, 3 * 86_400).map(lambda s: T0 + timedelta(seconds=s)),
)
DELAYS = (0, 1, 10, 30, 59, 60, 61, 299, 300, 301, 3_600, 7 * 3_600, 25 * 3_600, 80 * 3_600)
CODES = (None, "3104", "3059", "4000", "X9", "E105", "3018")
MESSAGES = (None, "카카오톡 미사용자", "스팸 차단", "단말기 전원 꺼짐", "결번", "기타")
ERRORS = (
    None,
    None,
    None,
    "TRACKING_TIMEOUT",
    "UNSUPPORTED_PROVIDER",
    "NETWORK_TIMEOUT",
    "INVALID_REQUEST",
)
ATTEMPTS = (
    None,
    {"attempted": True, "status": "attempting"},
    {"attempted": True, "status": "attempting", "outcome": "sent"},
    {"attempted": True, "status": "attempting", "outcome": "failed", "error_code": "X"},
    {"attempted": True, "status": "skipped"},
)


@st.composite
def updates(draw: st.DrawFn) -> Update:
    delay = draw(st.sampled_from(DELAYS) | st.integers(0, 4 * 86_400))
    status = draw(st.sampled_from(STATUSES))

    def before() -> int | None:
        return draw(st.none() | st.integers(0, delay))

    return Update(
        delay_s=delay,
        status=status,
        code=draw(st.sampled_from(CODES)),
        message=draw(st.sampled_from(MESSAGES)),
        sent_s=before(),
        delivered_s=before() if status == "DELIVERED" else None,
        failed_s=before() if status == "FAILED" else None,
        error=draw(st.sampled_from(ERRORS)),
        attempt=draw(st.sampled_from(ATTEMPTS)),
    )


@st.composite
def scenarios(draw: st.DrawFn, max_messages: int = 12) -> list[Msg]:
    n = draw(st.integers(0, max_messages))
    msgs: list[Msg] = []
    for i in range(n):
        kind = draw(st.sampled_from(TYPES))
        m = Msg(
            message_id=f"m{i}",
            provider_id=draw(st.sampled_from(PROVIDERS)),
            type=kind,
            requested_at=draw(request_times),
            gateway=draw(st.booleans() | st.just(True)),
            failover=kind == "ALIMTALK" and draw(st.booleans()),
            updates=draw(st.lists(updates(), max_size=2)),
        )
        msgs.append(m)
        if kind == "ALIMTALK" and draw(st.booleans()):
            msgs.append(
                Msg(
                    message_id=f"m{i}:api-fallback",
                    provider_id=m.provider_id,
                    type="SMS",
                    requested_at=m.requested_at + timedelta(seconds=draw(st.integers(0, 7_200))),
                    updates=draw(st.lists(updates(), max_size=1)),
                )
            )
    return msgs


# --------------------------------------------------------------------------- comparison helpers


def assert_same(actual: Any, expected: Any, where: str = "") -> None:
    if isinstance(expected, float) and actual is not None:
        assert actual == pytest.approx(expected, rel=1e-9, abs=1e-9), where
    else:
        assert actual == expected, where


def assert_rows(
    actual: pl.DataFrame | list[dict[str, Any]], expected: list[dict[str, Any]]
) -> None:
    rows = actual.to_dicts() if isinstance(actual, pl.DataFrame) else actual
    assert len(rows) == len(expected), (rows, expected)
    for i, (a, e) in enumerate(zip(rows, expected, strict=True)):
        for k, v in e.items():
            assert_same(a[k], v, f"row {i} column {k}: {a} vs {e}")


def metrics_rows(summary: DeliverySummary) -> dict[str, dict[str, Any]]:
    return {r["rate"]: r for r in summary.metrics.to_dicts()}


# --------------------------------------------------------------------------- 1. summary


@SETTINGS
@given(
    msgs=scenarios(), filters=st.sampled_from([{}, {"provider_id": "solapi"}, {"type": "ALIMTALK"}])
)
def test_summary_matches_model(msgs: list[Msg], filters: dict[str, Any]) -> None:
    an, model = memory_analytics(msgs)
    records = model.window(START, END, **filters)
    s = an.summary(START, END, include_by_provider=True, include_by_type=True, **filters)
    assert s.to_kmsg() == model.summary(records, by_provider=True, by_type=True)
    got = metrics_rows(s)
    for name in RATES:
        for k, v in model.rate(records, name).items():
            assert_same(got[name][k], v, f"{name}.{k}")
    plain = an.summary(START, END, **filters)
    assert (plain.by_provider, plain.by_type) == (None, None)
    assert plain.to_kmsg() == model.summary(records, by_provider=False, by_type=False)


@SETTINGS
@given(msgs=scenarios())
def test_summary_breakdown_by_fields(msgs: list[Msg]) -> None:
    an, model = memory_analytics(msgs)
    records = model.window(START, END)
    table = an.summary(START, END, by=["type", "status"]).to_polars()
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["type"], r["status"]), []).append(r)
    expected = []
    for (kind, status), rs in sorted(groups.items()):
        s = model.kmsg_summary(rs)
        expected.append(
            {
                "type": kind,
                "status": status,
                "total": s["total"],
                "delivered_of_total_pct": s["rates"]["deliveredOfTotalPct"],
                "delivered_of_finalized_pct": s["rates"]["deliveredOfFinalizedPct"],
            }
        )
    assert_rows(table, expected)


def test_summary_empty_window_and_bad_window() -> None:
    an, _model = memory_analytics([Msg("a", "solapi", "SMS", START)])
    s = an.summary(END + US, END + timedelta(days=1), include_by_provider=True)
    assert s.total == 0
    assert s.by_status == dict.fromkeys(STATUSES, 0)
    assert (
        s.rates.delivered_of_total_pct,
        s.rates.failed_of_total_pct,
        s.rates.delivered_of_finalized_pct,
    ) == (0, 0, 0)
    assert s.by_provider == {}
    m = s.metrics
    assert m.get_column("rate_pct").null_count() == m.height  # "not enough data", never 0%
    assert not m.get_column("enough_data").any()
    assert "데이터 부족" in s._repr_html_()
    with pytest.raises(ValueError, match="start"):
        an.summary(END, START)
    with pytest.raises(InvalidRecordError):
        an.summary(START, END, by="to_hash")
    one = an.summary(START, START)  # a window of one instant, both ends inclusive
    assert one.total == 1


def test_summary_single_message_all_in_flight() -> None:
    an, _model = memory_analytics([Msg("a", "solapi", "SMS", START), Msg("b", "iwinv", "SMS", END)])
    s = an.summary(START, END, include_by_provider=True, include_by_type=True)
    assert (s.total, s.by_status["SENT"]) == (2, 2)
    assert s.rates.delivered_of_finalized_pct == 0.0  # k-msg parity: empty denominator -> 0
    finalized = metrics_rows(s)["delivered_of_finalized"]
    assert (finalized["denominator"], finalized["rate_pct"], finalized["ci_low_pct"]) == (
        0,
        None,
        None,
    )
    assert set(s.by_provider or {}) == {"solapi", "iwinv"}
    assert s.by_type is not None
    assert s.by_type["SMS"].total == 2


@pytest.mark.skipif(
    not (FIXTURES / "kmsg-small.sqlite").exists(), reason="k-msg fixtures not present"
)
def test_summary_equals_kmsg_get_summary_on_its_fixture() -> None:
    con = sqlite3.connect(FIXTURES / "kmsg-small.sqlite")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("select * from kmsg_delivery_tracking")]
    con.close()
    answers = json.loads((FIXTURES / "kmsg-small.answers.json").read_text())
    query = next(q for q in answers["queries"] if q["id"].startswith("getSummary"))
    svc = DeliveryTrackingService(
        [Gateway(p) for p in ("solapi", "iwinv", "nhn", "aligo")],
        store=InMemoryTrackingStore(hash_key=TEST_KEY),
    )
    assert svc.load_record_objects(rows) == len(rows)
    window = query["query"]["requestedAt"]
    s = DeliveryAnalytics(svc).summary(
        window["start"], window["end"], include_by_provider=True, include_by_type=True
    )
    assert s.to_kmsg() == query["result"]  # exact, including the IEEE doubles of the rates


# --------------------------------------------------------------------------- 3. time series


@SETTINGS
@given(
    msgs=scenarios(),
    unit=st.sampled_from(["hour", "day", "week", "month"]),
    by=st.sampled_from([(), ("provider_id",), ("status",)]),
    name=st.sampled_from(sorted(RATES)),
)
def test_rates_series_matches_model(
    msgs: list[Msg], unit: str, by: tuple[str, ...], name: str
) -> None:
    an, model = memory_analytics(msgs)
    got = an.rates(START, END, every=unit, by=list(by) or None, definition=name)
    expected = model.series(model.window(START, END), START, END, unit, by, name)
    assert_rows(got, expected)
    assert set(got.get_column("definition").to_list()) <= {name}


def test_rates_empty_buckets_are_zero_rows() -> None:
    msgs = [
        Msg("a", "solapi", "SMS", T0 + timedelta(hours=1)),
        Msg("b", "iwinv", "SMS", T0 + timedelta(days=2)),
    ]
    an, _model = memory_analytics(msgs)
    got = an.rates(T0, T0 + timedelta(days=3), every="day", by="provider_id")
    assert got.height == 4 * 2  # 4 days x 2 providers, every bucket present
    empty = got.filter(pl.col("total") == 0)
    assert empty.height == 6
    assert empty.get_column("rate_pct").null_count() == 6
    assert not empty.get_column("enough_data").any()
    assert got.schema["bucket_start"] == pl.Datetime("us", "UTC")
    seoul = DeliveryAnalytics(an.store, tz="Asia/Seoul").rates(
        T0, T0 + timedelta(days=1), every="1d"
    )
    assert seoul.get_column("bucket_start").dt.hour().to_list() == [0, 0]  # midnight in Seoul
    assert seoul.get_column("total").sum() == 1
    with pytest.raises(InvalidRecordError, match="every"):
        an.rates(T0, T0 + timedelta(days=1), every="fortnight")
    with pytest.raises(InvalidRecordError, match="definition"):
        an.rates(T0, T0 + timedelta(days=1), definition="delivery")
    with pytest.raises(InvalidRecordError, match="every"):
        an.rates(T0, T0 + timedelta(days=400), every="1m")  # too many buckets


# --------------------------------------------------------------------------- 4. latency


@SETTINGS
@given(
    msgs=scenarios(),
    by=st.sampled_from([(), ("type",), ("provider_id", "type"), ("status",)]),
    now_s=st.integers(0, 5 * 86_400),
    res=st.sampled_from([None, "1s", "1m"]),
)
def test_latency_matches_model(
    msgs: list[Msg], by: tuple[str, ...], now_s: int, res: str | None
) -> None:
    an, model = memory_analytics(msgs)
    now = T0 + timedelta(seconds=now_s) + US * (now_s % 7)  # off the whole second, sometimes
    report = an.latency(START, END, by=list(by) or None, now=now, resolution=res)
    res_us = {None: 1, "1s": 1_000_000, "1m": 60_000_000}[res]
    expected = model.latency(model.window(START, END), by, now, res_us)
    assert_rows(
        report.table.drop("within_10s_pct", "within_1m_pct", "within_5m_pct"),
        [{k: v for k, v in e.items() if not k.startswith("within")} for e in expected],
    )
    assert_rows(report.table, expected)
    assert report.now == now


def test_latency_default_now_is_the_lakes_last_snapshot() -> None:
    m = Msg("a", "solapi", "SMS", START, updates=[Update(120, "SENT")])
    an, model = memory_analytics(
        [m, Msg("b", "solapi", "SMS", START, updates=[Update(600, "DELIVERED", delivered_s=30)])]
    )
    report = an.latency(START, END)
    assert report.now == START + timedelta(seconds=600) == model.now()
    km = report.table.filter(pl.col("method") == "kaplan_meier").row(0, named=True)
    assert (km["n"], km["events"], km["censored"]) == (2, 1, 1)


def test_kaplan_meier_against_a_hand_worked_example() -> None:
    # six messages requested at START: delivered after 1 s, 3 s, 3 s and 5 s; one failed
    # at 2 s and one still in flight, censored at now = START + 4 s.
    #   t=1: 6 at risk, 1 event  -> S = 5/6
    #   t=2: 1 censored (failed)
    #   t=3: 4 at risk, 2 events -> S = 5/6 * 2/4 = 5/12
    #   t=4: 1 censored (in flight)
    #   t=5: 1 at risk, 1 event  -> S = 0
    # median: first t with S <= 0.5 -> 3 s; p90, p95, p99: 5 s; within 10 s: 100%.
    def delivered(i: int, s: int) -> Msg:
        return Msg(f"d{i}", "solapi", "SMS", START, updates=[Update(s, "DELIVERED", delivered_s=s)])

    msgs = [
        delivered(1, 1),
        delivered(2, 3),
        delivered(3, 3),
        delivered(4, 5),
        Msg("f", "solapi", "SMS", START, updates=[Update(2, "FAILED", failed_s=2)]),
        Msg("p", "solapi", "SMS", START),
    ]
    an, _model = memory_analytics(msgs)
    report = an.latency(START, END, now=START + timedelta(seconds=4))
    km = report.table.filter(pl.col("method") == "kaplan_meier").row(0, named=True)
    assert (km["n"], km["events"], km["censored"]) == (6, 4, 2)
    assert (km["p50_s"], km["p90_s"], km["p95_s"], km["p99_s"]) == (3.0, 5.0, 5.0, 5.0)
    assert km["within_10s_pct"] == pytest.approx(100.0)
    curve = report.curve.select("t_s", "at_risk", "events", "censored", "survival").rows()
    assert curve == [
        (1.0, 6, 1, 0, pytest.approx(5 / 6)),
        (2.0, 5, 0, 1, pytest.approx(5 / 6)),
        (3.0, 4, 2, 0, pytest.approx(5 / 12)),
        (4.0, 2, 0, 1, pytest.approx(5 / 12)),
        (5.0, 1, 1, 0, pytest.approx(0.0)),
    ]
    naive = report.table.filter(
        (pl.col("method") == "finished_only") & (pl.col("segment") == "requested_to_delivered")
    ).row(0, named=True)
    assert (naive["n"], naive["p50_s"], naive["p90_s"]) == (
        4,
        3.0,
        5.0,
    )  # in-flight and failed dropped


def test_kaplan_meier_equals_naive_when_nothing_is_censored() -> None:
    msgs = [
        Msg(f"d{i}", "iwinv", "SMS", START, updates=[Update(s, "DELIVERED", delivered_s=s)])
        for i, s in enumerate([4, 8, 15, 16, 23, 42, 42, 100, 7, 1])
    ]
    an, _model = memory_analytics(msgs)
    table = an.latency(START, END).table.filter(pl.col("segment") == "requested_to_delivered")
    km, naive = (
        table.filter(pl.col("method") == m).row(0, named=True)
        for m in ("kaplan_meier", "finished_only")
    )
    for p in ("p50_s", "p90_s", "p95_s", "p99_s", "within_10s_pct", "within_1m_pct"):
        assert km[p] == pytest.approx(naive[p]), p


# --------------------------------------------------------------------------- 5. failures


@SETTINGS
@given(
    msgs=scenarios(), by=st.sampled_from([("provider_id",), (), ("type",)]), top=st.integers(1, 4)
)
def test_failures_match_model(msgs: list[Msg], by: tuple[str, ...], top: int) -> None:
    an, model = memory_analytics(msgs)
    report = an.failures(START, END, by=list(by) or None, top=top)
    expected = model.failures(model.window(START, END), by, top, CODE_RULES, KEYWORD_RULES)
    assert_rows(report.codes, expected["codes"])
    assert_rows(report.categories, expected["categories"])
    assert_rows(report.tracking, expected["tracking"])


def test_failure_taxonomy_and_tracking_problems_counted_apart() -> None:
    fail = "FAILED"
    msgs = [
        Msg(
            "k1",
            "solapi",
            "ALIMTALK",
            START,
            updates=[Update(5, fail, "3104", "카카오톡 미사용자")],
        ),
        Msg(
            "k2",
            "iwinv",
            "ALIMTALK",
            START,
            updates=[Update(5, fail, "E105", "카카오톡 미사용 사용자")],
        ),
        Msg("p1", "solapi", "SMS", START, updates=[Update(5, fail, "3059", "변작된 발신번호")]),
        Msg("t1", "nhn", "SMS", START, updates=[Update(5, fail, "3019", "단말기 전원 꺼짐")]),
        Msg("x1", "nhn", "SMS", START, updates=[Update(5, fail, "3014", "수신번호 오류")]),
        Msg("u1", "nhn", "SMS", START, updates=[Update(5, "UNKNOWN", error="TRACKING_TIMEOUT")]),
        Msg("u2", "solapi", "SMS", START, gateway=False),  # MISSING_PROVIDER_MESSAGE_ID
        Msg("s1", "iwinv", "SMS", START, updates=[Update(5, "SENT", error="UNSUPPORTED_PROVIDER")]),
    ]
    an, _model = memory_analytics(msgs)
    report = an.failures(START, END, by=None)
    cats = dict(report.categories.select("category", "count").rows())
    assert cats == {
        "permanent": 1,
        "temporary": 1,
        "policy": 1,
        "not_kakao": 2,
        "tracking": 3,
        "unknown": 0,
    }
    tracking = report.tracking.select("provider_id", "code", "count", "in_flight").rows()
    assert sorted(tracking) == [
        ("iwinv", "UNSUPPORTED_PROVIDER", 1, 1),
        ("nhn", "TRACKING_TIMEOUT", 1, 0),
        ("solapi", "MISSING_PROVIDER_MESSAGE_ID", 1, 0),
    ]
    codes = report.codes.filter(pl.col("provider_id") == "solapi")
    assert codes.get_column("code").to_list() == ["3059", "3104"]  # ties by code; tracking excluded
    assert set(report.codes.get_column("action").to_list()) > set()
    assert report.to_polars() is report.codes
    assert "추적 문제" in report._repr_html_()


# --------------------------------------------------------------------------- 6. failover funnel


def _classifier() -> Any:
    def classify(r: dict[str, Any]) -> str:
        code = r.get("provider_status_code")
        if code is None and r.get("last_error") is not None:
            code = r["last_error"]["code"]
        return AnalyticsModel.classify(
            r["provider_id"], code, r.get("provider_status_message"), CODE_RULES, KEYWORD_RULES
        )

    return classify


@SETTINGS
@given(msgs=scenarios())
def test_failover_funnel_matches_model(msgs: list[Msg]) -> None:
    an, model = memory_analytics(msgs)
    funnel = an.failover_funnel(START, END)
    expected = model.funnel(START, END, _classifier())
    assert dict(funnel.stages.select("stage", "count").rows()) == expected
    reached = funnel.rates.filter(pl.col("rate") == "reached_any").row(0, named=True)
    assert (reached["numerator"], reached["denominator"]) == (
        expected["reached_any"],
        expected["alimtalk"],
    )


def test_failover_funnel_joins_the_fallback_record_and_reads_kmsg_camel_case() -> None:
    store = InMemoryTrackingStore(hash_key=TEST_KEY)
    model = AnalyticsModel()
    a = Msg(
        "a",
        "solapi",
        "ALIMTALK",
        START,
        failover=True,
        updates=[
            Update(
                60,
                "FAILED",
                "3104",
                "카카오톡 미사용자",
                attempt={"attempted": True, "status": "attempting", "outcome": "sent"},
            )
        ],
    )
    fb = Msg(
        "a:api-fallback",
        "solapi",
        "SMS",
        START + timedelta(seconds=61),
        updates=[Update(30, "DELIVERED", delivered_s=20)],
    )
    b = Msg(
        "b",
        "iwinv",
        "ALIMTALK",
        START,
        failover=True,
        updates=[Update(60, "FAILED", "E105", "카카오톡 미사용")],
    )
    svc = build(store, [a, fb, b], model)
    # b's attempt written the way k-msg writes it (camelCase, status stuck at "attempting")
    rec = svc.get_record("b")
    assert rec is not None
    meta = {
        "failover": {
            **rec.metadata["failover"],
            "apiAttempt": {
                "attempted": True,
                "status": "attempting",
                "outcome": "failed",
                "errorCode": "INSUFFICIENT_BALANCE",
            },
        }
    }
    meta["failover"].pop("api_attempt")
    store.append_snapshots(
        [replace(rec, metadata=meta)],
        kind="poll",
        recorded_at=micros(START + timedelta(seconds=90)),
    )
    funnel = DeliveryAnalytics(svc).failover_funnel(START, END)
    stages = dict(funnel.stages.select("stage", "count").rows())
    assert [stages[k] for k in ("alimtalk", "failed", "not_kakao", "requested", "attempted")] == [
        2
    ] * 5
    assert (stages["sent"], stages["send_failed"], stages["skipped"]) == (1, 1, 0)
    assert (stages["fallback_tracked"], stages["fallback_delivered"], stages["reached_any"]) == (
        1,
        1,
        1,
    )
    pct = dict(funnel.stages.select("stage", "pct_of_failed").rows())
    assert pct["fallback_delivered"] == 50.0
    # stages that are not a part of the failed messages have no share of them (was > 100%)
    assert pct["alimtalk"] is None
    assert pct["delivered"] is None
    assert pct["reached_any"] is None


# --------------------------------------------------------------------------- 7. history


AGES = (timedelta(seconds=30), timedelta(minutes=5), timedelta(hours=1), timedelta(hours=24))


@SETTINGS
@given(
    msgs=scenarios(),
    name=st.sampled_from(sorted(RATES)),
    now_s=st.integers(0, 6 * 86_400),
    by=st.sampled_from([(), ("provider_id",)]),
)
def test_rate_maturity_matches_model(
    msgs: list[Msg], name: str, now_s: int, by: tuple[str, ...]
) -> None:
    an, model = memory_analytics(msgs)
    now = T0 + timedelta(seconds=now_s)
    got = an.rate_maturity(START, END, ages=AGES, definition=name, now=now, by=list(by) or None)
    expected = model.maturity(START, END, AGES, name, now, by)
    assert_rows(got, expected)


def test_rate_maturity_settles_with_age() -> None:
    msgs = [
        Msg(f"m{i}", "solapi", "SMS", START, updates=[Update(s, "DELIVERED", delivered_s=s)])
        for i, s in enumerate([10, 100, 1_000, 10_000])
    ]
    an, _model = memory_analytics(msgs)
    got = an.rate_maturity(
        START, END, ages=["1m", "5m", "1h", "6h"], now=START + timedelta(hours=2)
    )
    assert got.get_column("age").to_list() == ["1m", "5m", "1h", "6h"]
    assert got.get_column("numerator").to_list() == [1, 2, 3, 0]
    assert got.get_column("messages").to_list() == [4, 4, 4, 0]  # nothing is 6 h old yet


@SETTINGS
@given(msgs=scenarios(), now_s=st.integers(0, 6 * 86_400))
def test_status_durations_match_model(msgs: list[Msg], now_s: int) -> None:
    an, model = memory_analytics(msgs)
    now = T0 + timedelta(seconds=now_s)
    got = an.status_durations(START, END, now=now)
    stays, transitions = model.durations(START, END, now)
    rows = {r["status"]: r for r in got.durations.to_dicts()}
    assert set(rows) == set(stays)
    for status, want in stays.items():
        for k in ("entered", "left", "still_in", "p50_s", "p90_s", "p95_s"):
            assert_same(rows[status][k], want[k], f"{status}.{k}")
    assert {
        (r["from_status"], r["to_status"]): r["count"] for r in got.transitions.to_dicts()
    } == dict(transitions)


def test_status_durations_of_a_known_path() -> None:
    m = Msg(
        "a",
        "solapi",
        "SMS",
        START,
        updates=[Update(60, "SENT"), Update(600, "DELIVERED", delivered_s=500)],
    )
    p = Msg("p", "solapi", "SMS", START, updates=[Update(30, "PENDING")])
    an, _model = memory_analytics([m, p])
    got = an.status_durations(START, END, now=START + timedelta(hours=1))
    sent = got.durations.filter(pl.col("status") == "SENT").row(0, named=True)
    assert (sent["entered"], sent["left"], sent["still_in"], sent["p50_s"]) == (2, 2, 0, 30.0)
    pending = got.durations.filter(pl.col("status") == "PENDING").row(0, named=True)
    assert (pending["still_in"], pending["oldest_still_in_s"]) == (1, 3_570.0)
    assert got.transitions.select("from_status", "to_status", "count").rows() == [
        ("SENT", "DELIVERED", 1),
        ("SENT", "PENDING", 1),
    ]
    with pytest.raises(InvalidRecordError, match="by"):
        an.status_durations(START, END, by="status")


# --------------------------------------------------------------------------- as of


@settings(SETTINGS, max_examples=20)
@given(msgs=scenarios(max_messages=8), pick=st.integers(0, 1_000))
def test_as_of_equals_a_store_replayed_up_to_that_moment(msgs: list[Msg], pick: int) -> None:
    an, model = memory_analytics(msgs)
    times = sorted({s.recorded_at for s in model.snapshots}) or [T0]
    moment = times[pick % len(times)] + (US if pick % 3 == 0 else timedelta(0))
    note(f"as_of={moment}")
    replay = InMemoryTrackingStore(hash_key=TEST_KEY)
    for s in model.snapshots:
        if s.recorded_at <= moment:
            record = TrackingRecord(**{**s.record, "last_error": _error(s.record["last_error"])})
            replay.append_snapshots([record], kind=s.kind, recorded_at=micros(s.recorded_at))  # type: ignore[arg-type]
    then = DeliveryAnalytics(replay, min_n=MIN_N)
    _assert_same_answers(an, then, moment)


def _error(value: dict[str, str] | None) -> TrackingError | None:
    return None if value is None else TrackingError(value["code"], value["message"])


def _assert_same_answers(an: DeliveryAnalytics, then: DeliveryAnalytics, moment: datetime) -> None:
    def same(a: Any, b: Any) -> None:
        if isinstance(a, pl.DataFrame):
            assert_rows(a, b.to_dicts())
        else:
            assert a == b

    same(
        an.summary(
            START, END, include_by_provider=True, include_by_type=True, as_of=moment
        ).to_kmsg(),
        then.summary(START, END, include_by_provider=True, include_by_type=True).to_kmsg(),
    )
    same(an.summary(START, END, as_of=moment).metrics, then.summary(START, END).metrics)
    same(
        an.rates(START, END, every="day", by="provider_id", as_of=moment),
        then.rates(START, END, every="day", by="provider_id"),
    )
    same(an.latency(START, END, as_of=moment).table, then.latency(START, END, now=moment).table)
    f1, f2 = an.failures(START, END, as_of=moment), then.failures(START, END)
    same(f1.codes, f2.codes)
    same(f1.categories, f2.categories)
    same(
        an.failover_funnel(START, END, as_of=moment).stages, then.failover_funnel(START, END).stages
    )
    same(
        an.rate_maturity(START, END, ages=AGES, as_of=moment),
        then.rate_maturity(START, END, ages=AGES, now=moment),
    )
    d1, d2 = (
        an.status_durations(START, END, as_of=moment),
        then.status_durations(START, END, now=moment),
    )
    same(d1.durations, d2.durations)
    same(d1.transitions, d2.transitions)
    half = START + (END - START) / 2
    same(
        an.compare((half, END), (START, half), as_of=moment).slices,
        then.compare((half, END), (START, half)).slices,
    )


def _seeded_messages(n: int, seed: int) -> list[Msg]:
    """A fixed, varied set of messages (a deterministic draw from the same world)."""
    import random

    rng = random.Random(seed)
    msgs = []
    for i in range(n):
        kind = rng.choice(TYPES)
        ups = []
        for _ in range(rng.randrange(3)):
            delay = rng.choice(DELAYS)
            status = rng.choice(STATUSES)
            ups.append(
                Update(
                    delay,
                    status,
                    rng.choice(CODES),
                    rng.choice(MESSAGES),
                    sent_s=rng.randrange(delay + 1),
                    delivered_s=rng.randrange(delay + 1) if status == "DELIVERED" else None,
                    failed_s=rng.randrange(delay + 1) if status == "FAILED" else None,
                    error=rng.choice(ERRORS),
                    attempt=rng.choice(ATTEMPTS),
                )
            )
        msgs.append(
            Msg(
                f"m{i}",
                rng.choice(PROVIDERS),
                kind,
                T0 + timedelta(seconds=rng.randrange(3 * 86_400)),
                gateway=rng.random() > 0.1,
                failover=kind == "ALIMTALK",
                updates=ups,
            )
        )
    return msgs


@pytest.mark.slow
def test_as_of_on_a_lake_equals_a_lake_replayed_up_to_that_moment(tmp_path: Path) -> None:
    model = AnalyticsModel(min_n=MIN_N)
    lake = ParquetTrackingStore(tmp_path / "lake", hash_key=TEST_KEY)
    build(lake, _seeded_messages(60, seed=4), model)
    lake.compact(history=False)  # fold into current/ (merging history files is not needed here)
    times = sorted({s.recorded_at for s in model.snapshots})
    moment = times[len(times) // 2]
    replay = ParquetTrackingStore(tmp_path / "replay", hash_key=TEST_KEY)
    for s in model.snapshots:
        if s.recorded_at <= moment:
            record = TrackingRecord(**{**s.record, "last_error": _error(s.record["last_error"])})
            replay.append_snapshots([record], kind=s.kind, recorded_at=micros(s.recorded_at))  # type: ignore[arg-type]
    try:
        an = DeliveryAnalytics(tmp_path / "lake", hash_key=TEST_KEY, min_n=MIN_N)
        _assert_same_answers(an, DeliveryAnalytics(replay, min_n=MIN_N), moment)
        # and the present answers of the lake equal the model's
        records = model.window(START, END)
        assert an.summary(START, END, include_by_type=True).to_kmsg() == model.summary(
            records, by_provider=False, by_type=True
        )
        an.close()
    finally:
        lake.close()
        replay.close()


# --------------------------------------------------------------------------- 8. what changed


@SETTINGS
@given(
    msgs=scenarios(),
    name=st.sampled_from(["delivered_of_total", "delivered_of_finalized", "reached"]),
)
def test_compare_matches_model_and_contributions_add_up(msgs: list[Msg], name: str) -> None:
    an, model = memory_analytics(msgs)
    half = START + timedelta(days=1)
    dims = ["provider_id", "type", "provider_status_code", "hour"]
    got = an.compare((half, END), (START, half - US), dimensions=dims, definition=name)
    period, baseline = model.window(half, END), model.window(START, half - US)

    def hour(r: dict[str, Any]) -> str:
        return f"{r['requested_at'].hour:02d}"

    overall = {r["period"]: r for r in got.overall.to_dicts()}
    for label, records in (("period", period), ("baseline", baseline)):
        for k, v in model.rate(records, name).items():
            assert_same(overall[label][k], v, f"{label}.{k}")
    change = overall["period"]["change_pp"]
    for dim in dims:
        rows = {r["value"]: r for r in got.slices.filter(pl.col("dimension") == dim).to_dicts()}
        want = AnalyticsModel.compare(period, baseline, dim, name, hour)
        assert set(rows) == set(want), dim
        for value, w in want.items():
            for k, v in w.items():
                assert_same(rows[value][k], v, f"{dim}={value}.{k}")
        if change is not None:
            total = sum(r["contribution_pp"] for r in rows.values())
            assert total == pytest.approx(change, abs=1e-9)
            effects = sum(r["rate_effect_pp"] + r["mix_effect_pp"] for r in rows.values())
            assert effects == pytest.approx(change, abs=1e-9)


def test_compare_ranks_the_slice_that_moved() -> None:
    def batch(prefix: str, at: datetime, provider: str, n: int, status: str) -> list[Msg]:
        return [
            Msg(f"{prefix}{i}", provider, "SMS", at, updates=[Update(30, status, delivered_s=10)])
            for i in range(n)
        ]

    base_t, cur_t = START, START + timedelta(days=1)
    msgs = [
        *batch("a", base_t, "solapi", 20, "DELIVERED"),
        *batch("b", base_t, "iwinv", 20, "DELIVERED"),
        *batch("c", cur_t, "solapi", 20, "DELIVERED"),
        *batch("d", cur_t, "iwinv", 10, "DELIVERED"),
        *batch("e", cur_t, "iwinv", 10, "FAILED"),
    ]
    an, _model = memory_analytics(msgs)
    got = an.compare((cur_t, cur_t), (base_t, base_t), dimensions=["provider_id", "type"], top=1)
    assert got.overall.filter(pl.col("period") == "period").item(0, "change_pp") == pytest.approx(
        -25.0
    )
    top = got.slices.row(0, named=True)
    assert (top["dimension"], top["value"], top["contribution_pp"]) == (
        "provider_id",
        "iwinv",
        pytest.approx(-25.0),
    )
    assert top["rate_effect_pp"] == pytest.approx(-25.0)
    assert top["mix_effect_pp"] == pytest.approx(0.0)
    assert got.slices.height == 2  # top=1 per dimension
    with pytest.raises(InvalidRecordError, match="dimensions"):
        an.compare((cur_t, cur_t), (base_t, base_t), dimensions=["to"])
    with pytest.raises(InvalidRecordError, match="period"):
        an.compare(cur_t, (base_t, base_t))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- sources and output


def test_sources_path_store_and_service(tmp_path: Path) -> None:
    lake = ParquetTrackingStore(tmp_path / "lake", hash_key=TEST_KEY)
    model = AnalyticsModel()
    svc = build(lake, _seeded_messages(20, seed=2), model)
    lake.close()
    with DeliveryAnalytics(str(tmp_path / "lake"), hash_key=TEST_KEY) as by_path:
        a = by_path.summary(START, END).to_kmsg()
        plan = by_path.records(START, END).explain()
        assert "requested_date" in plan  # the window prunes the lake's partitions
    assert a == model.summary(model.window(START, END), by_provider=False, by_type=False)
    reopened = ParquetTrackingStore(tmp_path / "lake", hash_key=TEST_KEY)
    try:
        assert DeliveryAnalytics(reopened).summary(START, END).to_kmsg() == a
        svc2 = DeliveryTrackingService([Gateway("solapi")], store=reopened)
        assert DeliveryAnalytics(svc2).summary(START, END).to_kmsg() == a
    finally:
        reopened.close()
    del svc
    with pytest.raises(LakeError, match="no kmsg-analytics lake"):
        DeliveryAnalytics(tmp_path / "nowhere")
    with pytest.raises(InvalidRecordError, match="source"):
        DeliveryAnalytics(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidRecordError, match="tz"):
        DeliveryAnalytics(InMemoryTrackingStore(hash_key=TEST_KEY), tz="Mars/Olympus")


def test_every_answer_is_small_and_renders() -> None:
    an, _model = memory_analytics(_seeded_messages(40, seed=9))
    results: list[Any] = [
        an.summary(START, END, include_by_provider=True, include_by_type=True, by="provider_id"),
        an.latency(START, END, by="type"),
        an.failures(START, END),
        an.failover_funnel(START, END),
        an.status_durations(START, END),
        an.compare((START + timedelta(days=1), END), (START, START + timedelta(days=1))),
    ]
    for r in results:
        assert isinstance(r.to_polars(), pl.DataFrame)
        page = r._repr_html_()
        assert page.startswith("<h4>")
        assert "<table" in page
    for frame in (an.rates(START, END), an.rate_maturity(START, END)):
        assert isinstance(frame, pl.DataFrame)
    with pytest.raises(InvalidRecordError, match="top"):
        an.failures(START, END, top=0)
    with pytest.raises(InvalidRecordError, match="ages"):
        an.rate_maturity(START, END, ages=["soon"])
    with pytest.raises(InvalidRecordError, match="resolution"):
        an.latency(START, END, resolution="fast")
    coarse = an.latency(START, END, resolution="1m").table.filter(
        pl.col("method") == "kaplan_meier"
    )
    assert all(v is None or v % 60 == 0 for v in coarse.get_column("p50_s").to_list())
    with pytest.raises(InvalidRecordError, match="ages"):
        an.rate_maturity(START, END, ages=[timedelta(seconds=s + 1) for s in range(300)])


# --------------------------------------------------------------------------- speed paths


def _all_answers(an: DeliveryAnalytics) -> list[Any]:
    """Every answer over a window of three requested days (so one day lies wholly inside)."""
    half = START + timedelta(days=1)
    failures = an.failures(START, END, by=["type"], top=2)
    funnel = an.failover_funnel(START, END, by="provider_id")
    durations = an.status_durations(START, END)
    comparison = an.compare((half, END), (START, half - US))
    summary = an.summary(START, END, include_by_provider=True, include_by_type=True)
    return [
        summary.to_kmsg(),
        summary.metrics,
        an.summary(START, END, by=["provider_id", "status"]).breakdown,
        an.rates(START, END, every="6h", by="provider_id", definition="reached"),
        an.latency(START, END, by="type").table,
        an.latency(START, END, by="type").curve,
        failures.codes,
        failures.categories,
        failures.tracking,
        funnel.stages,
        funnel.rates,
        an.rate_maturity(START, END, ages=AGES, by="provider_id"),
        durations.durations,
        durations.transitions,
        comparison.overall,
        comparison.slices,
    ]


def _same(got: list[Any], want: list[Any]) -> None:
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        if isinstance(a, pl.DataFrame):
            assert a.schema == b.schema, i
            assert_rows(a, b.to_dicts())
        else:
            assert a == b, i


def test_a_lake_answers_like_the_memory_store(tmp_path: Path) -> None:
    """Partition-pruned windows (inner days read without a row filter), folded or not."""
    msgs = _seeded_messages(50, seed=11)
    msgs += [  # on and next to the window's ends
        Msg(f"edge{i}", PROVIDERS[i % 3], TYPES[i % 3], at, updates=[Update(5, "DELIVERED")])
        for i, at in enumerate(EDGE_TIMES)
    ]
    memory, _model = memory_analytics(msgs)
    lake = ParquetTrackingStore(tmp_path / "lake", hash_key=TEST_KEY)
    try:
        build(lake, msgs, AnalyticsModel(min_n=MIN_N))
        want = _all_answers(memory)
        _same(_all_answers(DeliveryAnalytics(lake, min_n=MIN_N)), want)  # merge on read
        lake.compact(history=False)
        _same(_all_answers(DeliveryAnalytics(lake, min_n=MIN_N)), want)  # folded
    finally:
        lake.close()


def test_rate_maturity_when_message_hashes_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashed message keys that collide are noticed, and the ids themselves are sorted."""
    import kmsg_analytics._analytics_history as history

    an, model = memory_analytics(_seeded_messages(40, seed=5))
    now = T0 + timedelta(days=2)
    expected = [
        model.maturity(START, END, AGES, "delivered_of_total", now, by)
        for by in ((), ("provider_id",))
    ]

    def collide(mid: pl.Expr) -> pl.Expr:  # "m1" and "m2" share a key, and so on
        return mid.str.len_bytes().cast(pl.UInt64)

    monkeypatch.setattr(history, "_key_hash", collide)
    for by, want in zip(((), ("provider_id",)), expected, strict=True):
        got = an.rate_maturity(START, END, ages=AGES, now=now, by=list(by) or None)
        assert_rows(got, want)


def test_a_report_reuses_its_reductions_and_answers_the_same() -> None:
    an, _model = memory_analytics(_seeded_messages(40, seed=6))
    alone = [
        an.summary(START, END, by="provider_id").breakdown,
        an.summary(START, END, by="type").breakdown,
        an.rates(START, END, every="1d"),
    ]
    with an._reusing():
        first = an.summary(START, END, include_by_provider=True, include_by_type=True)
        reused = [
            an.summary(START, END, by="provider_id").breakdown,
            an.summary(START, END, by="type").breakdown,
        ]
        an.rates(START, END, every="1d", by="provider_id")
        reused.append(an.rates(START, END, every="1d"))
        assert an._memo  # the reductions were kept ...
    assert an._memo is None  # ... only inside the block
    assert first.total == sum(first.by_status.values())
    _same(reused, alone)


def test_one_hourly_reduction_answers_the_summary_and_every_series() -> None:
    """Inside a report: summaries and whole-hour series are sums of one per-hour pass."""
    an, _model = memory_analytics(_seeded_messages(60, seed=8))

    def answers() -> list[Any]:
        s = an.summary(START, END, include_by_provider=True, include_by_type=True)
        out: list[Any] = [s.total, s.by_status, s.rates, s.metrics]
        out += [{k: (v.total, v.by_status) for k, v in (s.by_provider or {}).items()}]
        out += [{k: (v.total, v.by_status) for k, v in (s.by_type or {}).items()}]
        out += [an.summary(START, END, by=["provider_id", "status"]).breakdown]
        for every in ("1h", "6h", "1d", "1w", "1mo", "15m"):
            out.append(an.rates(START, END, every=every))
            out.append(an.rates(START, END, every=every, by="provider_id"))
        out.append(an.rates(START, END, every="1d", by="type", definition="reached"))
        return out

    alone = answers()
    with an._reusing():
        an._reduce_hourly(START, END)
        assert an._memo is not None
        assert len(next(iter(an._memo.values()))) == 1
        reused = answers()
        kept = next(iter(an._memo.values()))
        # only the 15-minute series and the breakdown by status needed passes of their own
        assert len(kept) == 1 + 2 + 1
    _same(reused, alone)


def test_rate_maturity_in_many_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sorted snapshots cut into many small chunks (two at a time) give the same curve."""
    import kmsg_analytics._analytics_history as history

    an, model = memory_analytics(_seeded_messages(40, seed=9))
    now = T0 + timedelta(days=2)
    cases = [((), "delivered_of_total"), (("provider_id",), "reached"), ((), "failure_share")]
    expected = [model.maturity(START, END, AGES, name, now, by) for by, name in cases]
    monkeypatch.setattr(history, "_CHUNK_ROWS", 3)
    for (by, name), want in zip(cases, expected, strict=True):
        got = an.rate_maturity(START, END, ages=AGES, definition=name, now=now, by=list(by) or None)
        assert_rows(got, want)


def test_failover_fields_read_only_the_texts_that_can_hold_them() -> None:
    """The skipped texts are exactly those where reading the JSON path gives nothing."""
    from kmsg_analytics._analytics_failures import _failover_fields

    texts = pl.DataFrame(
        {
            "metadata": [
                None,
                "{}",
                "not json",
                '{"failover":{"request":{"enabled":true}}}',
                '{"failover":{"request":{"enabled":"true"},"api_attempt":{"attempted":true,'
                '"status":"skipped","fallback_message_id":"x:api-fallback"}}}',
                '{"failover":{"apiAttempt":{"attempted":true,"status":"sent",'
                '"outcome":"failed","fallbackMessageId":"y"}}}',
                '{"failover":{"api_attempt":{"status":"failed"},"apiAttempt":{"outcome":"sent"}}}',
                '{"failover":{"api\\u005fattempt":{"attempted":true,"status":"sent"},'
                '"request":{"en\\u0061bled":true}}}',
                '{"failover":{"api_attempt":{"attempted":1,"outcome":{"x":1}}}}',
            ]
        },
        schema={"metadata": pl.String},
    )
    meta = pl.col("metadata")

    def attempt(snake: str, camel: str) -> pl.Expr:
        return pl.coalesce(
            meta.str.json_path_match(f"$.failover.api_attempt.{snake}"),
            meta.str.json_path_match(f"$.failover.apiAttempt.{camel}"),
        )

    status = attempt("status", "status")
    every_text = texts.select(
        "metadata",
        attempt("fallback_message_id", "fallbackMessageId").alias("__fb_id"),
        (meta.str.json_path_match("$.failover.request.enabled") == "true")
        .fill_null(False)
        .alias("__req"),
        (attempt("attempted", "attempted") == "true").fill_null(False).alias("__att"),
        pl.coalesce(
            attempt("outcome", "outcome"),
            pl.when(status.is_in(("sent", "failed", "skipped"))).then(status),
        ).alias("__out"),
    )
    got = _failover_fields(texts)
    assert got.equals(every_text)
    assert got.get_column("__att").to_list()[-2] is True  # the escaped key was read


_TIMES = ("requested_at", "sent_at", "delivered_at", "failed_at", "status_updated_at")


@st.composite
def latency_rows(draw: st.DrawFn) -> pl.LazyFrame:
    """Records as the latency pass reads them: any order of times, missing ones, odd groups."""
    n = draw(st.integers(0, 30))
    offset = st.none() | st.integers(-3_600_000_000, 5 * 86_400_000_000)
    rows = []
    for _ in range(n):
        req = draw(st.integers(0, 86_400_000_000))
        times = [req, *(draw(offset) for _ in range(4))]
        times = [
            None if t is None else micros(T0) + (t if i == 0 else req + t)
            for i, t in enumerate(times)
        ]
        rows.append(
            {
                "provider_id": draw(st.sampled_from(PROVIDERS)),
                "type": draw(st.sampled_from(TYPES)),
                "provider_status_code": draw(st.sampled_from((None, "4000", "3104", ""))),
                "status": draw(st.sampled_from(STATUSES)),
                **dict(zip(_TIMES, times, strict=True)),
            }
        )
    if rows:  # the status_updated_at column is never null
        rows = [
            {**r, "status_updated_at": r["status_updated_at"] or r["requested_at"]} for r in rows
        ]
    ts = pl.Datetime("us", "UTC")
    schema: dict[str, pl.DataType] = {
        "provider_id": pl.String(),
        "type": pl.String(),
        "provider_status_code": pl.String(),
        "status": pl.String(),
        **dict.fromkeys(_TIMES, ts),
    }
    frame = pl.DataFrame(
        [{k: r[k] for k in schema} for r in rows],
        schema={**schema, **dict.fromkeys(_TIMES, pl.Int64())},
        orient="row",
    )
    return frame.with_columns(pl.col(_TIMES).cast(ts)).lazy()


@SETTINGS
@given(
    base=latency_rows(),
    by=st.sampled_from([(), ("provider_id",), ("provider_id", "type"), ("provider_status_code",)]),
    now_s=st.integers(0, 5 * 86_400),
    res_s=st.sampled_from([1, 60, 3_600]),
)
def test_packed_latency_counts_equal_the_general_ones(
    base: pl.LazyFrame, by: tuple[str, ...], now_s: int, res_s: int
) -> None:
    from kmsg_analytics._analytics import _latency_counts_packed
    from kmsg_analytics._analytics_latency import GROUP, _latency_counts, with_by

    now = T0 + timedelta(seconds=now_s, microseconds=now_s % 7)
    res = res_s * 1_000_000
    packed = _latency_counts_packed(base, list(by), now, res)
    assert packed is not None
    general = _latency_counts(base, list(by), now, res)
    packed_groups, general_groups = packed.groups(), general.groups()
    assert packed_groups is not None
    assert general_groups is not None
    pairs = zip([*packed.segments, packed.km], [*general.segments, general.km], strict=True)
    for got_lazy, want_lazy in pairs:  # the same counts per by values (group numbers differ)
        got_numbered, want_numbered = got_lazy.collect(), want_lazy.collect()
        for frame in (got_numbered, want_numbered):  # sorted by group, then duration
            order = [GROUP, "d" if "d" in frame.columns else "t"]
            assert frame.equals(frame.sort(order, nulls_last=True))
        got = with_by(got_numbered, by, packed_groups)
        want = with_by(want_numbered, by, general_groups)
        keys = [c for c in want.columns if c not in ("c", "events", "censored")]
        assert got.sort(keys, nulls_last=True).equals(want.sort(keys, nulls_last=True))
        assert got.height == want.select(keys).unique().height  # one row per key


def test_latency_counts_groups_apart_when_their_hashes_collide() -> None:
    from kmsg_analytics._analytics import _by_code, _numbered_groups

    codes = pl.DataFrame({"provider_status_code": [f"E{i}" for i in range(8_000)]})
    hashed = codes.with_columns(_by_code(["provider_status_code"]).alias("h"))
    a, b = (
        hashed.filter(pl.col("h").is_duplicated())
        .sort("h", "provider_status_code")
        .head(2)["provider_status_code"]
    )
    msgs = [
        Msg(
            f"m{i}",
            "solapi",
            "SMS",
            START + timedelta(seconds=i),
            updates=[Update(60 + i, "DELIVERED", code, sent_s=2, delivered_s=5 + i)],
        )
        for i, code in enumerate([a, b, a, "4000"])
    ]
    an, model = memory_analytics(msgs)
    base = an.records(START, END).select("provider_status_code")
    assert _numbered_groups(base, ["provider_status_code"]) is None  # a and b share a hash
    now = START + timedelta(hours=1)
    report = an.latency(START, END, by="provider_status_code", now=now)
    by = ("provider_status_code",)
    assert_rows(report.table, model.latency(model.window(START, END), by, now, 1_000_000))
    assert report.table.get_column("provider_status_code").n_unique() == 3


def test_packed_latency_counts_give_way_to_durations_too_long_to_pack() -> None:
    from kmsg_analytics._analytics import _latency_counts_packed

    an, _model = memory_analytics(_seeded_messages(20, seed=3))
    base = an.records(START, END).select("type", "status", *_TIMES)
    now = END + timedelta(days=1)
    assert _latency_counts_packed(base, ["type"], now, 1_000_000) is not None
    assert _latency_counts_packed(base, ["type"], now, 1) is None  # under a second
    far = base.with_columns(pl.col("status_updated_at") + timedelta(days=800))
    assert _latency_counts_packed(far, ["type"], now, 1_000_000) is None
    # latency() then counts the general way: the same answer as a coarser resolution shows
    assert an.latency(START, END, by="type", now=now + timedelta(days=900)).table.height > 0
