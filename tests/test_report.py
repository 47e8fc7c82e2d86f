"""The batch report end to end on a small demo lake: HTML parsed, numbers equal summary().

Also home of :func:`demo_lake`, the small lake the chart, widget, notebook and browser
tests share: 1,000 synthetic messages of history (send and poll snapshots) and 120
sends polled to completion by simulated gateways on a simulated clock, as the README's
``kmsg-analytics demo`` does, built once per test session.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from kmsg_analytics import (
    ApiFailoverConfig,
    DeliveryTrackingService,
    InvalidRecordError,
    KmsgAnalyticsError,
    LakeError,
    ParquetTrackingStore,
    SimulatedClock,
    SimulatedProvider,
    poll_until_stopped,
)
from kmsg_analytics._analytics import DeliveryAnalytics
from kmsg_analytics._cli_report import add_report_parser
from kmsg_analytics._report import (
    EmptyReportError,
    build_report,
    charts_for_demo,
    parse_since,
    render_charts,
)
from kmsg_analytics._simulated import demo_sends
from kmsg_analytics._synthetic import DEFAULT_END, build_demo_lake

#: A phone number in clear, in any of the usual spellings (never in a report).
CLEAR_NUMBER = re.compile(r"(?<![0-9*.])01[016789]-?[0-9]{3,4}-?[0-9]{4}(?![0-9.])")
SVG = re.compile(r"<svg\b.*?</svg>", re.DOTALL)


def build_small_lake(path: Path, *, n: int = 1_000, sends: int = 120, seed: int = 7) -> Path:
    """A small demo lake: synthetic history, then sends polled on a simulated clock."""
    store = build_demo_lake(path, n=n, seed=seed, history=True)
    clock = SimulatedClock(DEFAULT_END)
    gateways = [
        SimulatedProvider(p, seed=seed, clock=clock, never_resolve_rate=0.0, tail_rate=0.0)
        for p in ("solapi", "iwinv")
    ]
    svc = DeliveryTrackingService(
        gateways,
        store=store,
        clock=clock,
        api_failover=ApiFailoverConfig(gateways[1].send_fallback),
    )
    try:
        svc.record_sends(
            demo_sends(gateways, sends, start=clock(), seed=seed, every=timedelta(seconds=5))
        )
        poll_until_stopped(svc, interval=60, until_idle=True, out=None, handle_signals=False)
        store.compact()
    finally:
        svc.close()
    return path


def demo_lake(factory: pytest.TempPathFactory) -> Path:
    """The session's shared small lake (built by the first test module that asks)."""
    path = factory.getbasetemp() / "shared-demo-lake"
    if not (path / "_demo.json").exists() or not (path / "_state.json").exists():
        build_small_lake(path)
    return path


def chart_cache(factory: pytest.TempPathFactory) -> Path:
    """One cache folder per session for the bundled chart JavaScript."""
    path = factory.getbasetemp() / "chart-cache"
    path.mkdir(exist_ok=True)
    os.environ["KMSG_ANALYTICS_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_lake(tmp_path_factory)


class _Cells(HTMLParser):
    """Collects the ``data-*`` attributes of a report (where its numbers are)."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[dict[str, str]] = []
        self.tags: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if any(k.startswith("data-") for k in found):
            self.items.append(found)
        for attr in ("src", "href"):
            if attr in found:
                self.srcs.append(found[attr])


def _parse(text: str) -> _Cells:
    cells = _Cells()
    cells.feed(text)
    return cells


@pytest.fixture(scope="module")
def html_report(lake: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    lines: list[str] = []
    report = build_report(lake, out=out, since="30d", tz="Asia/Seoul", progress=lines.append)
    assert any(line.startswith("[1/") for line in lines)
    assert any("charts" in line for line in lines)
    return out, report


def test_html_numbers_equal_summary(html_report: tuple[Path, Any], lake: Path) -> None:
    out, report = html_report
    cells = _parse(out.read_text(encoding="utf-8"))
    p = report.provenance
    with DeliveryAnalytics(lake, tz="Asia/Seoul") as an:
        summary = an.summary(p["window_start"], p["window_end"])
    assert summary.total > 100
    totals = {int(c["data-value"]) for c in cells.items if c.get("data-key") == "total"}
    assert totals == {summary.total}
    by_status = {c["data-status"]: int(c["data-value"]) for c in cells.items if "data-status" in c}
    assert by_status == summary.by_status
    kmsg = {c["data-kmsg"]: float(c["data-value"]) for c in cells.items if "data-kmsg" in c}
    assert kmsg == summary.to_kmsg()["rates"]
    rates = {c["data-rate"]: c for c in cells.items if "data-rate" in c}
    for row in summary.metrics.iter_rows(named=True):
        cell = rates[row["rate"]]
        assert int(cell["data-numerator"]) == row["numerator"]
        assert int(cell["data-denominator"]) == row["denominator"]
        shown = cell["data-rate-pct"]
        assert (shown == "") == (row["rate_pct"] is None)
        if shown:
            assert float(shown) == pytest.approx(row["rate_pct"], abs=1e-6)


def test_html_is_self_contained_and_masked(html_report: tuple[Path, Any]) -> None:
    out, report = html_report
    text = out.read_text(encoding="utf-8")
    cells = _parse(text)
    assert "script" not in cells.tags
    assert "link" not in cells.tags
    assert cells.srcs == []  # nothing is fetched: no src or href at all
    assert "cdn" not in text.lower()
    assert text.count("<svg") >= 7, report.charts_note
    assert report.charts_note is None
    assert CLEAR_NUMBER.search(SVG.sub("", text)) is None
    assert re.search(r"01[0-9]\*{4}[0-9]{4}", text)  # the masked numbers of recent failures
    # provenance: lake, window, snapshot watermark, generated at
    prov = {c["data-prov"] for c in cells.items if "data-prov" in c}
    assert {"lake", "window_start", "window_end", "snapshot_watermark", "generated_at"} <= prov
    state = json.loads(Path(report.provenance["lake"], "_state.json").read_text())
    assert report.provenance["snapshot_watermark"] == state["watermark"]
    # every rate is shown with its definition
    for name in report.tables["metrics"].get_column("rate"):
        assert f"<code>{name}</code>" in text


@pytest.mark.parametrize("fmt", ["json", "csv", "md"])
def test_data_formats_hold_the_same_numbers(lake: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"report.{fmt}"
    report = build_report(lake, out=out, since="30d", format=fmt)  # type: ignore[arg-type]
    assert report.charts == {}
    summary = report.summary
    for path in report.paths:
        assert CLEAR_NUMBER.search(path.read_text(encoding="utf-8")) is None
    if fmt == "json":
        doc = json.loads(out.read_text(encoding="utf-8"))
        assert doc["summary"] == summary.to_kmsg()
        rows = {r["rate"]: r for r in doc["tables"]["metrics"]}
        assert rows["reached"]["numerator"] == summary.metrics.row(3, named=True)["numerator"]
        assert doc["provenance"]["messages"] == summary.total
    elif fmt == "csv":
        metrics = pl.read_csv(out)
        assert (
            metrics.get_column("numerator").to_list()
            == summary.metrics.get_column("numerator").to_list()
        )
        names = {p.name for p in report.paths}
        assert {"report.csv", "report.latency.csv", "report.provenance.json"} <= names
        by_provider = pl.read_csv(tmp_path / "report.by_provider.csv")
        assert by_provider.get_column("total").sum() == summary.total
    else:
        text = out.read_text(encoding="utf-8")
        assert f"전체 {summary.total:,}건" in text
        assert "| rate | label | numerator |" in text


def test_window_and_empty_lake_errors(lake: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    with pytest.raises(InvalidRecordError, match="since"):
        build_report(lake, out=out, since="0d")
    with pytest.raises(InvalidRecordError, match="since"):
        build_report(lake, out=out, since="thirty days")
    with pytest.raises(InvalidRecordError, match="start"):
        build_report(lake, out=out, start="2026-11-02", end="2026-11-01")
    with pytest.raises(EmptyReportError, match="no messages were requested between"):
        build_report(lake, out=out, start="2020-01-01", end="2020-02-01")
    with pytest.raises(InvalidRecordError, match="format"):
        build_report(lake, out=out, format="pdf")  # type: ignore[arg-type]
    with pytest.raises(LakeError, match="no kmsg-analytics lake"):
        build_report(tmp_path / "nowhere", out=out)
    empty = ParquetTrackingStore(tmp_path / "empty")
    empty.init()
    empty.close()
    with pytest.raises(EmptyReportError, match="holds no messages"):
        build_report(tmp_path / "empty", out=out)
    assert not out.exists()
    assert parse_since("2w") == timedelta(weeks=2)


def _cli(argv: list[str]) -> int:
    """``kmsg-analytics`` with the report commands, errors handled as ``cli.main`` does."""
    from kmsg_analytics import cli

    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    if commands is not None and "report" in commands:
        return cli.main(argv)
    import argparse

    parser = argparse.ArgumentParser(prog="kmsg-analytics")
    add_report_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KmsgAnalyticsError as err:
        print(f"kmsg-analytics: {err}", file=sys.stderr)
        return 2


def test_cli_report(lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.md"
    assert _cli(["report", "--lake", str(lake), "--since", "30d", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out
    assert "[2/9] summary" in captured.err
    assert out.read_text(encoding="utf-8").startswith("# 전송 리포트")
    bad = ["report", "--lake", str(lake), "--start", "2020-01-01", "--end", "2020-01-02"]
    assert _cli([*bad, "--out", str(tmp_path / "x.html")]) == 2
    assert "no messages were requested" in capsys.readouterr().err
    assert _cli(["report", "--lake", str(tmp_path / "missing"), "--out", "x.html"]) == 2
    assert "no kmsg-analytics lake" in capsys.readouterr().err


def test_charts_for_demo_writes_images(lake: Path, tmp_path: Path) -> None:
    with DeliveryAnalytics(lake) as an:
        written = charts_for_demo(an, tmp_path / "charts", out=None)
    names = {p.name for p in written}
    assert {"status_mix.png", "delivery_rate.svg", "failover.png", "maturity.svg"} <= names
    assert len(written) == 16
    for path in written:
        head = path.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") or head.startswith(b"<svg")


def test_broken_chart_keeps_the_report() -> None:
    charts, note = render_charts({"status_mix": pl.DataFrame({"x": [1]})})
    assert charts == {}
    assert note is not None
    assert "status_mix" in note


@pytest.mark.slow
def test_report_without_the_notebook_extra(lake: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    code = (
        "import sys; sys.modules['vl_convert'] = None; sys.modules['altair'] = None\n"
        "from kmsg_analytics._report import build_report\n"
        f"r = build_report({str(lake)!r}, out={str(out)!r}, since='30d')\n"
        "print(r.charts_note)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert 'pip install "kmsg-analytics[notebook]"' in done.stdout
    text = out.read_text(encoding="utf-8")
    assert "<svg" not in text
    assert 'pip install "kmsg-analytics[notebook]"' in html.unescape(text)
    assert 'data-table="latency"' in text


def test_the_report_command_does_without_the_iri_grammar() -> None:
    """In the command's process jsonschema skips rfc3987_syntax (seconds to import)."""
    code = (
        "import sys\n"
        "from kmsg_analytics._cli_report import SKIPPED_IMPORTS, skip_slow_imports\n"
        "first = sys.argv[1] == 'first'\n"
        "if first:\n"
        "    skip_slow_imports()\n"
        "import jsonschema\n"
        "skip_slow_imports()  # too late now: changes nothing\n"
        "checks = jsonschema.Draft7Validator.FORMAT_CHECKER.checkers\n"
        "print(all(sys.modules.get(n, 0) is None for n in SKIPPED_IMPORTS), 'iri' in checks)\n"
    )

    def run(arg: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    marked = run("first")
    assert marked.startswith("True")
    if importlib.util.find_spec("rfc3987") is None:  # (which jsonschema would use instead)
        assert marked == "True False"
    found = run("after")
    assert found.startswith("False")  # jsonschema imported first: nothing was marked
