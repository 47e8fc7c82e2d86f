"""The explorer driven from code: every control changes the figures as the analytics API says.

No browser: set ``dash.controls[...]`` and read ``dash.figures``, ``dash.results``,
``dash.records`` and ``dash.error`` (the browser test does the same by clicking).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from kmsg_analytics import InvalidRecordError
from kmsg_analytics._analytics import DeliveryAnalytics
from kmsg_analytics.widgets import TABS, Explorer, explore
from tests.test_report import chart_cache, demo_lake

ZONE = ZoneInfo("Asia/Seoul")
MASKED = re.compile(r"^[0-9]{3}\*+[0-9]{4}$")


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chart_cache(tmp_path_factory)
    return demo_lake(tmp_path_factory)


@pytest.fixture(scope="module")
def an(lake: Path) -> Iterator[DeliveryAnalytics]:
    with DeliveryAnalytics(lake, tz="Asia/Seoul") as analytics:
        yield analytics


@pytest.fixture
def dash(an: DeliveryAnalytics) -> Iterator[Explorer]:
    explorer = explore(an, chart_view="interactive")
    yield explorer
    explorer.widget.close()


def _window(d: Explorer) -> tuple[datetime, datetime]:
    start: date = d.controls["start"].value
    end: date = d.controls["end"].value
    return (
        datetime.combine(start, time.min, ZONE).astimezone(UTC),
        datetime.combine(end, time.max, ZONE).astimezone(UTC),
    )


def _chart_rows(chart: Any) -> pl.DataFrame:
    spec = chart.to_dict()
    (rows,) = [r for r in spec["datasets"].values() if r]
    return pl.DataFrame(rows, infer_schema_length=None)


def test_opens_on_the_last_30_days(dash: Explorer, an: DeliveryAnalytics) -> None:
    s, e = _window(dash)
    assert dash.controls["end"].value - dash.controls["start"].value == timedelta(days=29)
    summary = an.summary(s, e)
    kpis = dash.figures["kpis"]
    assert kpis["total"] == summary.total > 0
    reached = summary.metrics.filter(pl.col("rate") == "delivered_of_total").row(0, named=True)
    assert kpis["delivered_of_total"]["numerator"] == reached["numerator"]
    assert kpis["delivered_of_total"]["denominator"] == reached["denominator"]
    assert kpis["matching_records"] == summary.total
    assert dash.error is None
    assert dash.working.layout.visibility == "hidden"
    assert set(dash.figures) >= {"status_mix", "delivery_rate"}  # the visible tab only
    assert "latency" not in dash.figures
    assert f"{summary.total:,}" in dash.kpis.value
    # the pickers offer the whole lake's providers and types; the window ends on its last day
    lake = an.store.current().select("provider_id", "type", "requested_at").collect()
    assert list(dash.controls["provider"].options) == sorted(set(lake["provider_id"]))
    assert list(dash.controls["type"].options) == sorted(set(lake["type"]))
    last = lake["requested_at"].max()
    assert isinstance(last, datetime)
    assert dash.controls["end"].value == last.astimezone(ZONE).date()


def test_records_are_paged_and_masked(dash: Explorer, an: DeliveryAnalytics) -> None:
    page = dash.records
    assert page.height == dash.page_size
    assert "to" not in page.columns
    assert "from_" not in page.columns
    assert all(MASKED.match(v) for v in page.get_column("to_masked"))
    assert "010-" not in dash.table.value
    first = page.get_column("message_id").to_list()
    dash.next_button.click()
    assert dash.page == 1
    assert dash.records.get_column("message_id").to_list() != first
    dash.go_to_page(10_000)
    last = dash.page
    assert dash.next_button.disabled
    assert dash.records.height == dash.figures["matching_records"] - last * dash.page_size


def test_provider_and_type_pickers(dash: Explorer, an: DeliveryAnalytics) -> None:
    s, e = _window(dash)
    provider = dash.controls["provider"].options[-1]
    dash.controls["provider"].value = (provider,)
    assert dash.figures["kpis"]["total"] == an.summary(s, e, provider_id=provider).total
    assert set(dash.records.get_column("provider_id")) <= {provider}
    rates = dash.results["rates"]
    assert set(rates.get_column("provider_id")) == {provider}
    mix = _chart_rows(dash.figures["status_mix"])
    assert mix.get_column("count").sum() == an.summary(s, e, provider_id=provider).total
    kind = "SMS"
    dash.controls["type"].value = (kind,)
    want = an.summary(s, e, provider_id=provider, type=kind).total
    assert dash.figures["kpis"]["total"] == want


def test_status_picker_narrows_records_not_rates(dash: Explorer, an: DeliveryAnalytics) -> None:
    s, e = _window(dash)
    total = dash.figures["kpis"]["total"]
    dash.controls["status"].value = ("FAILED",)
    failed = an.summary(s, e).by_status["FAILED"]
    assert dash.figures["matching_records"] == failed
    assert dash.figures["kpis"]["total"] == total  # rates are over every status
    assert set(dash.records.get_column("status")) <= {"FAILED"}
    statuses = set(_chart_rows(dash.figures["status_mix"]).get_column("status"))
    assert statuses == {"FAILED"}


def test_bucket_and_definition(dash: Explorer, an: DeliveryAnalytics) -> None:
    s, e = _window(dash)
    with dash.batch():
        dash.controls["bucket"].value = "1w"
        dash.controls["definition"].value = "delivered_of_finalized"
    refreshes = dash.refreshes
    rates = dash.results["rates"]
    gaps = rates.get_column("bucket_start").unique().sort().diff().drop_nulls()
    assert set(gaps.dt.total_days()) == {7}
    assert set(rates.get_column("definition")) == {"delivered_of_finalized"}
    want = an.rates(s, e, every="1w", by="provider_id", definition="delivered_of_finalized")
    assert rates.equals(want)
    kpi = dash.figures["kpis"]["delivered_of_finalized"]
    row = (
        an.summary(s, e)
        .metrics.filter(pl.col("rate") == "delivered_of_finalized")
        .row(0, named=True)
    )
    assert (kpi["numerator"], kpi["denominator"]) == (row["numerator"], row["denominator"])
    spec = dash.figures["delivery_rate"].to_dict()
    assert "확정 건 대비 성공률" in spec["title"]["text"]
    assert dash.refreshes == refreshes  # one recompute for the whole batch


def test_tabs_compute_their_charts(dash: Explorer, an: DeliveryAnalytics) -> None:
    assert dash.wait_prepared(300)  # (before it, the maturity tab says it is preparing)
    s, e = _window(dash)
    for index, (key, (_title, figures)) in enumerate(TABS.items()):
        dash.controls["view"].selected_index = index
        assert dash.state()["view"] == key
        for fig in figures:
            assert dash.figures[fig] is not None, fig
            assert dash.slots[fig].renders >= 1
    latency = dash.results["latency"]
    assert latency.table.equals(an.latency(s, e, by="provider_id").table)
    assert dash.results["failures"].codes.equals(an.failures(s, e).codes)
    funnel = dash.results["failover"].stages
    assert funnel.equals(an.failover_funnel(s, e).stages)
    assert dash.results["maturity"].equals(an.rate_maturity(s, e))
    hourly = dash.results["hourly"]
    cells = _chart_rows(dash.figures["heatmap"])
    assert cells.get_column("denominator").sum() == hourly.get_column("denominator").sum()


def test_maturity_comes_from_the_background_rollup(dash: Explorer, an: DeliveryAnalytics) -> None:
    from kmsg_analytics import _rollups
    from kmsg_analytics._analytics_common import DEFAULT_AGES, _ages

    assert dash.wait_prepared(300)
    assert dash.background.layout.visibility == "hidden"
    # the hidden tabs' answers for the opening filters were computed meanwhile
    assert {"latency", "failures", "hourly", "failover"} <= {k[0] for k in dash._cache}
    _labels, ages = _ages(DEFAULT_AGES)
    assert _rollups.cached_rollup(an.store, ages, an._now(None, None)) is not None
    s, e = _window(dash)
    provider = dash.controls["provider"].options[0]
    with dash.batch():
        dash.controls["view"].selected_index = list(TABS).index("maturity")
        dash.controls["provider"].value = (provider,)
        dash.controls["definition"].value = "reached"
    assert dash.error is None
    want = an.rate_maturity(s, e, definition="reached", provider_id=[provider])
    assert dash.results["maturity"].equals(want)
    assert dash.figures["maturity"] is not None


def test_the_maturity_tab_does_not_wait_for_the_background(
    an: DeliveryAnalytics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened while the rollup is being built, the tab says so; it is drawn once built."""
    import threading

    from kmsg_analytics import _rollups

    gate = threading.Event()
    build = _rollups.build_rollup

    def held(*args: Any, **kwargs: Any) -> Any:
        gate.wait(120)
        return build(*args, **kwargs)

    monkeypatch.setattr(_rollups, "build_rollup", held)
    dash = explore(an, chart_view="interactive")
    try:
        dash.controls["view"].selected_index = list(TABS).index("maturity")
        assert "maturity" not in dash.figures  # not drawn, and the control did not wait
        assert "준비" in dash.slots["maturity"].note.value
        assert not dash.wait_prepared(0.01)
        gate.set()
        assert dash.wait_prepared(300)
        assert dash.error is None
        s, e = _window(dash)
        assert dash.results["maturity"].equals(an.rate_maturity(s, e))
        assert dash.slots["maturity"].widget.children == (dash.slots["maturity"].inner,)
    finally:
        gate.set()
        dash.close()


def test_an_answer_being_computed_is_awaited_not_computed_again(dash: Explorer) -> None:
    import threading

    started, gate = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow() -> int:
        calls.append("first")
        started.set()
        gate.wait()
        return 1

    def again() -> int:
        calls.append("again")
        return 2

    got: list[int] = []
    first = threading.Thread(target=lambda: got.append(dash._cached(("k",), slow)))
    first.start()
    started.wait()
    second = threading.Thread(target=lambda: got.append(dash._cached(("k",), again)))
    second.start()
    gate.set()
    first.join()
    second.join()
    assert got == [1, 1]
    assert calls == ["first"]


def test_working_indicator_and_errors(dash: Explorer) -> None:
    seen: list[str] = []
    dash.working.layout.observe(lambda ch: seen.append(ch["new"]), names="visibility")
    dash.controls["bucket"].value = "1h"
    assert seen == ["visible", "hidden"]

    good_start = dash.controls["start"].value
    dash.controls["start"].value = dash.controls["end"].value + timedelta(days=3)
    assert dash.error is not None
    assert "start" in dash.error
    assert dash.message.layout.display == "block"
    assert "kmsg-error" in dash.message.value
    assert "Traceback" not in dash.message.value
    dash.controls["start"].value = good_start
    assert dash.error is None
    assert dash.message.layout.display == "none"

    with dash.batch():  # too many buckets: a readable message, not an exception
        dash.controls["start"].value = dash.controls["end"].value - timedelta(days=200)
        dash.controls["bucket"].value = "1h"
    assert dash.error is not None
    assert "bucket" in dash.error


def test_bad_arguments(an: DeliveryAnalytics) -> None:
    with pytest.raises(InvalidRecordError, match="page_size"):
        explore(an, page_size=0)
    with pytest.raises(InvalidRecordError, match="chart_view"):
        explore(an, chart_view="png")  # type: ignore[arg-type]


def test_svg_view_and_a_lake_path(lake: Path) -> None:
    dash = explore(lake, chart_view="svg", start="2026-10-20", end="2026-10-31", lazy=False)
    try:
        assert dash.controls["start"].value == date(2026, 10, 20)
        assert set(dash.figures) >= {f for _t, figs in TABS.values() for f in figs}
        inner = dash.slots["status_mix"].inner
        assert "<svg" in inner.value
        assert "_repr_mimebundle_" in dir(dash)
        bundle = dash._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in bundle
    finally:
        dash.close()


@pytest.mark.parametrize("end", ["2026-11-03", "2026-11-05"])
def test_pages_equal_the_store_listing_with_tied_request_times(end: str) -> None:
    """Every page (from the top, the middle and the end) is the store's own listing.

    Many records share a request time, so pages cut through runs of ties (ordered by
    ``message_id``); the table reads a narrower window than the store would, never
    other rows. Up to 2026-11-03 the records reach the window's end (the first pages
    come from a guessed narrow window, except the first, whose guess holds only the two
    latest records); up to 2026-11-05 the last two days are empty (every guess comes
    up short and the window's edge is looked up).
    """
    from kmsg_analytics import DeliveryTrackingService, InMemoryTrackingStore, RecordFilter

    class Gateway:
        id = "solapi"

    n = 157
    hours = [7 * (i % 11) if i % 11 < 10 or i < 22 else 0 for i in range(n)]  # 2 at 70 h
    times = [datetime(2026, 11, 1, tzinfo=UTC) + timedelta(hours=h) for h in hours]
    frame = pl.DataFrame(
        {
            "message_id": [f"m{(i * 37) % n:03d}" for i in range(n)],
            "provider_id": ["solapi", "iwinv"] * (n // 2) + ["solapi"],
            "type": ["SMS"] * n,
            "to": ["010-1111-2222"] * n,
            "requested_at": times,
            "status": [("SENT", "DELIVERED", "FAILED")[i % 3] for i in range(n)],
        }
    )
    store = InMemoryTrackingStore(hash_key="test-key-123")
    svc = DeliveryTrackingService([Gateway()], store=store)
    svc.load_records(frame)
    with DeliveryAnalytics(store) as an:
        dash = explore(an, start="2026-11-01", end=end, page_size=7, chart_view="svg")
        try:
            assert dash.controls["provider"].options == ("iwinv", "solapi")
            assert dash.controls["type"].options == ("SMS",)
            for statuses in ((), ("FAILED", "SENT")):
                dash.controls["status"].value = statuses
                s = datetime.combine(dash.controls["start"].value, time.min, UTC)
                e = datetime.combine(dash.controls["end"].value, time.max, UTC)
                flt = RecordFilter(
                    requested_at_from=s, requested_at_to=e, status=list(statuses) or None
                )
                matching = dash.figures["matching_records"]
                assert matching == store.count_records(flt) > 0
                pages = (matching + 6) // 7
                for page in range(pages):
                    dash.go_to_page(page)
                    want = store.list_records(flt, 7, page * 7).collect()
                    assert dash.records.equals(want.select(dash.records.columns)), page
                assert dash.records.height == matching - (pages - 1) * 7
        finally:
            dash.widget.close()
