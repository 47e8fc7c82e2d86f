"""Charts: each spec validates and round-trips, its rows match the result, snapshots hold.

The data is deterministic (seeded synthetic records in memory with fixed ``now``, and
the analytics' own worked example), so the Vega-Lite JSON of every chart is stored
under ``tests/snapshots/`` and compared; rerun with ``KMSG_UPDATE_SNAPSHOTS=1`` after a
deliberate change and review the diff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import altair as alt
import polars as pl
import pytest

from kmsg_analytics import (
    DeliveryTrackingService,
    InMemoryTrackingStore,
    InvalidRecordError,
)
from kmsg_analytics import charts as c
from kmsg_analytics._analytics import DeliveryAnalytics, _example
from kmsg_analytics._synthetic import DEFAULT_END, PROVIDER_IDS, synthetic_records
from tests._model import TEST_KEY

SNAPSHOTS = Path(__file__).parent / "snapshots"
START = DEFAULT_END - timedelta(days=28)
END = DEFAULT_END
NOW = DEFAULT_END + timedelta(days=1)


class _Gateway:
    def __init__(self, provider_id: str) -> None:
        self.id = provider_id


@pytest.fixture(scope="module", autouse=True)
def _theme() -> None:
    alt.theme.enable(c.THEME)


@pytest.fixture(scope="module")
def an() -> DeliveryAnalytics:
    store = InMemoryTrackingStore(hash_key=TEST_KEY)
    svc = DeliveryTrackingService([_Gateway(p) for p in PROVIDER_IDS], store=store)
    svc.load_records(synthetic_records(2_000, seed=11, hash_key=TEST_KEY, days=28))
    return DeliveryAnalytics(svc, tz="Asia/Seoul")


@pytest.fixture(scope="module")
def example() -> DeliveryAnalytics:
    return _example()


@pytest.fixture(scope="module")
def results(an: DeliveryAnalytics, example: DeliveryAnalytics) -> dict[str, Any]:
    half = START + (END - START) / 2
    return {
        "status_mix": an.rates(START, END, every="1d"),
        "delivery_rate": an.rates(START, END, every="1w", by="provider_id"),
        "latency": an.latency(START, END, by="type", now=NOW),
        "failure_codes": an.failures(START, END),
        "heatmap": an.rates(START, END, every="1h"),
        "failover": an.failover_funnel(START, END),
        "maturity": example.rate_maturity(
            "2026-11-01", "2026-11-02", ages=["10s", "1m", "2m", "1h"], by="provider_id"
        ),
        "what_changed": an.compare((half, END), (START, half)),
    }


BUILDERS: dict[str, Callable[[Any], Any]] = {
    "status_mix": c.status_mix,
    "delivery_rate": c.delivery_rate,
    "latency": c.latency_distribution,
    "failure_codes": c.top_failure_codes,
    "heatmap": c.delivery_heatmap,
    "failover": c.failover_funnel,
    "maturity": c.rate_maturity,
    "what_changed": c.what_changed,
}

#: For each chart, the tooltip fields that carry its numerator and denominator.
NUM_DEN: dict[str, tuple[str, str]] = {
    "status_mix": ("count", "total"),
    "delivery_rate": ("numerator", "denominator"),
    "latency": ("events", "at_risk"),
    "failure_codes": ("count", "failures"),
    "heatmap": ("numerator", "denominator"),
    "failover": ("count", "alimtalk"),
    "maturity": ("numerator", "denominator"),
    "what_changed": ("period_numerator", "period_n"),
}


def _datasets(spec: dict[str, Any]) -> list[list[dict[str, Any]]]:
    return list(spec.get("datasets", {}).values())


def _tooltips(spec: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(spec, dict):
        for key, value in spec.items():
            if key == "tooltip" and isinstance(value, list):
                found |= {t["field"] for t in value if isinstance(t, dict) and "field" in t}
            else:
                found |= _tooltips(value)
    elif isinstance(spec, list):
        for item in spec:
            found |= _tooltips(item)
    return found


def _normalise(value: Any) -> Any:
    """Floats to 9 significant digits and no ``$schema``: stable across platforms."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items() if k != "$schema"}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_spec_validates_and_round_trips(name: str, results: dict[str, Any]) -> None:
    chart = BUILDERS[name](results[name])
    assert isinstance(chart, alt.Chart | alt.LayerChart)
    spec = chart.to_dict(validate=True)
    again = type(chart).from_dict(spec, validate=True).to_dict(validate=True)
    assert again == spec
    assert json.loads(chart.to_json()) == spec
    # it can still be composed
    composed = (chart | chart).properties(title="x")
    assert composed.to_dict(validate=True)["hconcat"]
    # numerator and denominator in the tooltips
    assert set(NUM_DEN[name]) <= _tooltips(spec), _tooltips(spec)
    # few rows embedded
    assert all(len(rows) <= c.MAX_ROWS for rows in _datasets(spec))
    # the theme's Korean-capable fonts
    assert "Noto Sans KR" in spec["config"]["font"]


def _rename_datasets(spec: dict[str, Any]) -> dict[str, Any]:
    """``data-<hash of the rows>`` names to ``data-0``, ``data-1``, ... (in their order)."""
    text = json.dumps(spec, ensure_ascii=False)
    for i, name in enumerate(spec.get("datasets", {})):
        text = text.replace(f'"{name}"', f'"data-{i}"')
    out: dict[str, Any] = json.loads(text)
    return out


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_snapshot(name: str, results: dict[str, Any]) -> None:
    spec = _rename_datasets(_normalise(BUILDERS[name](results[name]).to_dict()))
    path = SNAPSHOTS / f"{name}.vl.json"
    text = json.dumps(spec, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
    if os.environ.get("KMSG_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no snapshot {path}: run with KMSG_UPDATE_SNAPSHOTS=1"
    assert json.loads(path.read_text(encoding="utf-8")) == json.loads(text)


def test_rows_match_the_results(results: dict[str, Any]) -> None:
    def rows(name: str) -> list[dict[str, Any]]:
        spec = BUILDERS[name](results[name]).to_dict()
        (data,) = [d for d in _datasets(spec) if d]
        return data

    rates = results["delivery_rate"]
    got = sorted((r["group"], r["numerator"], r["denominator"]) for r in rows("delivery_rate"))
    want = sorted(rates.select("provider_id", "numerator", "denominator").rows())
    assert got == want

    mix = results["status_mix"]
    shown = pl.DataFrame(rows("status_mix"))
    assert shown.get_column("count").sum() == mix.get_column("total").sum()
    per_status = dict(shown.group_by("status").agg(pl.col("count").sum()).rows())
    for status, count in per_status.items():
        assert count == mix.get_column(status.lower()).sum()

    hourly = results["heatmap"]
    cells = pl.DataFrame(rows("heatmap"))
    assert cells.height == 168
    assert cells.get_column("numerator").sum() == hourly.get_column("numerator").sum()
    assert cells.get_column("denominator").sum() == hourly.get_column("denominator").sum()

    codes = results["failure_codes"].codes
    bars = pl.DataFrame(rows("failure_codes"))
    top = codes.sort("count", descending=True).head(bars.height)
    assert sorted(bars.get_column("count").to_list()) == sorted(top.get_column("count").to_list())
    totals = dict(
        results["failure_codes"].codes.group_by("provider_id").agg(pl.col("count").sum()).rows()
    )
    for row in bars.iter_rows(named=True):  # the denominator: every failure of the gateway
        assert row["failures"] >= totals[row["group"]]

    stages = results["failover"].stages
    funnel = {r["stage"]: r["count"] for r in rows("failover")}
    assert funnel == {s: n for s, n in stages.select("stage", "count").rows() if s in funnel}

    curve = results["maturity"]
    got_m = sorted(
        (r["group"], r["age"], r["numerator"], r["denominator"]) for r in rows("maturity")
    )
    want_m = sorted(curve.select("provider_id", "age", "numerator", "denominator").rows())
    assert got_m == want_m


def test_latency_marks_are_the_percentiles(results: dict[str, Any]) -> None:
    latency = results["latency"]
    spec = c.latency_distribution(latency).to_dict()
    marks = next(d for d in _datasets(spec) if d and "percentile" in d[0])
    km = latency.table.filter(pl.col("method") == "kaplan_meier")
    for mark in marks:
        row = km.filter(pl.col("type") == mark["group"]).row(0, named=True)
        assert mark["seconds"] == row[f"{mark['percentile']}_s"]


def test_big_results_are_rebucketed_under_the_row_cap() -> None:
    hours = pl.datetime_range(
        datetime(2024, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC), "1h", eager=True
    )
    frames = []
    for i, provider in enumerate(("a", "b", "c")):
        n = hours.len()
        frames.append(
            pl.DataFrame(
                {
                    "bucket_start": hours,
                    "provider_id": [provider] * n,
                    **{k: [10 + i] * n for k in ("total", "delivered")},
                    **{k: [0] * n for k in ("pending", "sent", "failed", "cancelled", "unknown")},
                    "definition": ["delivered_of_total"] * n,
                    "numerator": [10 + i] * n,
                    "denominator": [10 + i] * n,
                    "rate_pct": [None] * n,
                    "ci_low_pct": [50.0] * n,
                    "ci_high_pct": [100.0] * n,
                    "enough_data": [False] * n,
                }
            )
        )
    rates = pl.concat(frames).cast({"rate_pct": pl.Float64})
    assert rates.height > 50_000
    for chart in (c.delivery_rate(rates), c.status_mix(rates)):
        spec = chart.to_dict()
        (data,) = [d for d in _datasets(spec) if d]
        assert len(data) <= c.MAX_ROWS
        subtitle = " ".join(spec["title"]["subtitle"])
        assert "다시 묶음" in subtitle
    spec = c.delivery_rate(rates).to_dict()
    (data,) = [d for d in _datasets(spec) if d]
    assert sum(r["denominator"] for r in data) == rates.get_column("denominator").sum()
    # rates are recomputed from the summed counts (enough data again, but in a last short bucket)
    assert all(r["rate_pct"] == 100.0 or r["denominator"] < 30 for r in data)
    assert sum(r["rate_pct"] is not None for r in data) > len(data) - 4


def test_png_export_works_offline_with_korean(results: dict[str, Any]) -> None:
    import vl_convert as vlc

    chart = c.failover_funnel(results["failover"])
    png = vlc.vegalite_to_png(chart.to_dict(), scale=1)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    svg = vlc.vegalite_to_svg(chart.to_dict())
    assert "알림톡 대체발송 퍼널" in svg


def test_wrong_input_names_the_method(results: dict[str, Any]) -> None:
    with pytest.raises(InvalidRecordError, match=r"DeliveryAnalytics.rates\(\)"):
        c.status_mix(pl.DataFrame({"x": [1]}))
    with pytest.raises(InvalidRecordError, match="LatencyReport"):
        c.latency_distribution(results["status_mix"])
    with pytest.raises(InvalidRecordError, match="every='1h'"):
        c.delivery_heatmap(results["status_mix"])
    with pytest.raises(InvalidRecordError, match="statuses"):
        c.status_mix(results["status_mix"], statuses=["DONE"])
    with pytest.raises(InvalidRecordError, match="stages"):
        c.failover_funnel(results["failover"], stages=["nope"])


def test_theme_is_registered() -> None:
    assert c.THEME in alt.theme.names()
    assert "Noto Sans KR" in c.theme_config()["config"]["font"]


def test_missing_extra_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['altair'] = None\n"
        "import kmsg_analytics\n"
        "assert 'altair' not in sys.modules or sys.modules['altair'] is None\n"
        "for name in ('kmsg_analytics.charts', 'kmsg_analytics.widgets'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError as err:\n"
        "        print(err)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.count('pip install "kmsg-analytics[notebook]"') == 2, out


def test_core_does_not_import_the_extras() -> None:
    code = (
        "import sys, kmsg_analytics\n"
        "from kmsg_analytics._analytics import DeliveryAnalytics\n"
        "from kmsg_analytics import _report\n"
        "print(sorted(m for m in ('altair', 'ipywidgets', 'vl_convert', 'anywidget')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip() == "[]"
