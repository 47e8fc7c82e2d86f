"""The batch report: one self-contained HTML file (or JSON, CSV, Markdown) from a lake.

:func:`build_report` runs the analytics of one window (headline rates with their
definitions, k-msg's summary, time series, latency, failures, the failover funnel,
rate maturity, what changed against the window before) and writes:

* ``html``: one file that opens offline: charts as inline SVG (rendered by
  vl-convert, no script, no CDN), every table, and the provenance (lake, window,
  snapshot watermark from the lake's ``_state.json``, generated at). Where charts
  cannot be rendered (no notebook extra) the report says why and keeps the tables.
* ``json``: the same numbers as one JSON document.
* ``csv``: the headline metrics in ``out`` and one ``<stem>.<table>.csv`` per table.
* ``md``: the same tables as Markdown.

Phone numbers appear only masked (``010****5678``). :func:`charts_for_demo` writes the
charts as SVG/PNG files (the README's main job calls it).
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn

import polars as pl

from . import _metrics as m
from ._errors import InvalidRecordError, KmsgAnalyticsError
from ._records import DELIVERY_STATUSES, coerce_time

if TYPE_CHECKING:
    from ._analytics import DeliveryAnalytics

__all__ = [
    "EmptyReportError",
    "Report",
    "ReportFormat",
    "build_report",
    "charts_for_demo",
    "parse_since",
    "render_charts",
]

ReportFormat = Literal["html", "json", "csv", "md"]
FORMATS: Final = ("html", "json", "csv", "md")

#: What to install for charts.
INSTALL_HINT: Final = 'pip install "kmsg-analytics[notebook]"'

_SINCE_RE: Final = re.compile(r"^\s*([0-9]+)\s*(m|h|d|w)\s*$")
_SINCE_UNITS: Final = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_SAMPLE_ROWS: Final = 20
#: The columns of the recent-failures sample (numbers masked), in the order shown.
_SAMPLE_COLUMNS: Final = (
    "message_id",
    "provider_id",
    "type",
    "status",
    "to_masked",
    "requested_at",
    "provider_status_code",
    "provider_status_message",
)
_NUMBER_RE: Final = re.compile(r"(?<![0-9*.])01[016789]-?[0-9]{3,4}-?[0-9]{4}(?![0-9.])")
_SVG_RE: Final = re.compile(r"<svg\b.*?</svg>", re.DOTALL)

#: The charts of a report, in order: (key, title).
CHART_TITLES: Final = (
    ("status_mix", "상태별 메시지 추이"),
    ("delivery_rate", "게이트웨이별 성공률 추이"),
    ("latency", "전달 지연 분포"),
    ("heatmap", "요일·시간대별 성공률"),
    ("failure_codes", "상위 실패 코드"),
    ("failover", "알림톡 대체발송 퍼널"),
    ("maturity", "성공률 성숙 곡선"),
    ("what_changed", "무엇이 바뀌었나"),
)


class EmptyReportError(KmsgAnalyticsError):
    """The report window holds no messages (or the lake is empty)."""


def _invalid(field_name: str, value: object, expected: str) -> NoReturn:
    raise InvalidRecordError(field_name, value, expected)


def parse_since(text: str | timedelta) -> timedelta:
    """``30d``, ``12h``, ``2w`` or ``90m`` as a positive ``timedelta``.

    Examples
    --------
    >>> parse_since("30d")
    datetime.timedelta(days=30)
    >>> parse_since("36h").total_seconds()
    129600.0
    """
    if isinstance(text, timedelta):
        if text <= timedelta(0):
            _invalid("since", text, "a positive duration")
        return text
    match = _SINCE_RE.match(text) if isinstance(text, str) else None
    if match is None or int(match[1]) == 0:
        _invalid("since", text, "a positive number and a unit, such as 30d, 12h, 2w or 90m")
    return timedelta(**{_SINCE_UNITS[match[2]]: int(match[1])})


# --------------------------------------------------------------------------- the numbers


@dataclass
class Report:
    """What a report holds: provenance, the headline numbers and every table.

    ``paths`` are the files written; ``charts`` maps a chart key to its inline SVG
    (empty when charts could not be rendered, with the reason in ``charts_note``).
    """

    provenance: dict[str, Any]
    summary: Any
    tables: dict[str, pl.DataFrame]
    charts: dict[str, str] = field(default_factory=dict)
    charts_note: str | None = None
    paths: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


_STEP_SECONDS: Final = (("1h", 3_600), ("1d", 86_400), ("1w", 604_800), ("1mo", 2_592_000))


def _step(window: timedelta, total: int | None = None, groups: int = 1, min_n: int = 30) -> str:
    """A time bucket that gives readable points: fine for short windows, coarser for few data.

    Starts from the window's length (hours up to 3 days, days up to 120, else weeks)
    and coarsens while a bucket of one group would hold fewer than ``min_n`` messages
    on average, keeping at least four buckets.

    Examples
    --------
    >>> _step(timedelta(days=30)), _step(timedelta(days=30), total=600, groups=5)
    ('1d', '1w')
    """
    seconds = max(window.total_seconds(), 1.0)
    first = 0 if seconds <= 3 * 86_400 else 1 if seconds <= 120 * 86_400 else 2
    chosen = _STEP_SECONDS[first][0]
    for name, size in _STEP_SECONDS[first:]:
        if seconds / size < 4 and name != _STEP_SECONDS[first][0]:
            break
        chosen = name
        if total is None or total / (max(seconds / size, 1.0) * max(groups, 1)) >= min_n:
            break
    return chosen


class _Progress:
    def __init__(self, out: Callable[[str], object] | None, total: int) -> None:
        self.out = out
        self.total = total
        self.done = 0
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.done += 1
        started = time.perf_counter()
        if self.out is not None:
            self.out(f"[{self.done}/{self.total}] {name} ...")
        yield
        took = time.perf_counter() - started
        self.timings[name] = took
        if self.out is not None:
            self.out(f"[{self.done}/{self.total}] {name}: {took:.2f} s")


def _lake_state(analytics: DeliveryAnalytics) -> dict[str, Any]:
    """The lake's path and ``_state.json`` (sequence, watermark), where the store has them."""
    paths = getattr(analytics.store, "paths", None)
    root = getattr(paths, "root", None)
    out: dict[str, Any] = {"lake": str(Path(root).resolve()) if root is not None else None}
    state_file = Path(root) / "_state.json" if root is not None else None
    if state_file is not None and state_file.is_file():
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            state = {}
        out["snapshot_seq"] = state.get("seq")
        out["snapshot_watermark"] = state.get("watermark")
        out["last_fold_date"] = state.get("fold_date")
    return out


def _resolve_window(
    analytics: DeliveryAnalytics, since: Any, start: Any, end: Any
) -> tuple[datetime, datetime, str]:
    """The report window; ``end`` defaults to the last request the lake holds."""
    how = "given"
    if end is None or (isinstance(end, str) and end.strip().lower() == "last"):
        latest = analytics.store.current().select(pl.col("requested_at").max()).collect().item()
        if not isinstance(latest, datetime):
            msg = (
                "the lake holds no messages: record or import some first "
                "(or build a demo lake with `kmsg-analytics demo`)"
            )
            raise EmptyReportError(msg)
        e = latest
        how = "last request in the lake"
    elif isinstance(end, str) and end.strip().lower() == "now":
        e = datetime.now(UTC)
        how = "now"
    else:
        e = coerce_time(end, "end")
    if start is not None and since is not None:
        _invalid("since", since, "either since or start, not both")
    if start is not None:
        s = coerce_time(start, "start")
    else:
        s = e - parse_since("30d" if since is None else since)
    if s > e:
        _invalid("start", start, f"a time at or before end ({e.isoformat()})")
    return s, e, how


def collect_report(
    analytics: DeliveryAnalytics,
    *,
    since: str | timedelta | None = None,
    start: Any = None,
    end: Any = None,
    progress: Callable[[str], object] | None = None,
    charts: bool = True,
) -> Report:
    """Run every analysis of the report window (what :func:`build_report` writes).

    The analyses share their reductions of the window's records: one pass per UTC hour,
    provider and type gives the summary, its per-provider and per-type tables and every
    series (a pass per time step in other time zones). Charts are drawn on a background
    thread as their results arrive.
    """
    drawers: list[_BackgroundCharts] = []
    try:
        with analytics._reusing():
            return _collect_report(
                analytics,
                since=since,
                start=start,
                end=end,
                progress=progress,
                drawers=drawers if charts else None,
            )
    finally:
        for drawer in drawers:
            drawer.close()


def _collect_report(
    analytics: DeliveryAnalytics,
    *,
    since: str | timedelta | None,
    start: Any,
    end: Any,
    progress: Callable[[str], object] | None,
    drawers: list[_BackgroundCharts] | None,
) -> Report:
    """The report's numbers; ``drawers`` (when charts are wanted) gets the chart drawer."""
    from . import __version__

    waiting: list[tuple[str, Any]] = []

    def draw(key: str, result: Any) -> None:
        # charts wait for the rate maturity: its long queries hold no interpreter lock,
        # so drawing (which holds it) costs them least
        if drawers:
            drawers[0].submit(key, result)
        else:
            waiting.append((key, result))

    steps = 10 if drawers is not None else 9
    prog = _Progress(progress, steps)
    with prog.step("window and provenance"):
        s, e, how = _resolve_window(analytics, since, start, end)
        provenance: dict[str, Any] = {
            **_lake_state(analytics),
            "window_start": s.isoformat(),
            "window_end": e.isoformat(),
            "window_end_from": how,
            "time_zone": analytics.tz,
            "min_n": analytics.min_n,
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "generator": f"kmsg-analytics {__version__}",
        }
    hourly = e - s <= timedelta(days=400)  # the heatmap's series: the others are its sums
    with prog.step("summary"):
        if hourly:
            analytics._reduce_hourly(s, e)
        summary = analytics.summary(s, e, include_by_provider=True, include_by_type=True)
        if summary.total == 0:
            msg = (
                f"no messages were requested between {s.isoformat()} and {e.isoformat()} "
                f"in {provenance.get('lake') or 'the store'}: choose another window "
                "(--since, --start, --end)"
            )
            raise EmptyReportError(msg)
        provenance["messages"] = summary.total
        by_provider = analytics.summary(s, e, by="provider_id").to_polars()
        by_type = analytics.summary(s, e, by="type").to_polars()
    step = _step(e - s, summary.total, max(by_provider.height, 1), analytics.min_n)
    tables: dict[str, pl.DataFrame] = {
        "metrics": summary.metrics.select(m.RATE_TABLE_COLUMNS).with_columns(
            pl.col("rate")
            .replace_strict({k: r.description for k, r in m.RATES.items()}, default="")
            .alias("description")
        ),
        "by_provider": by_provider,
        "by_type": by_type,
    }
    with prog.step(f"time series ({step} buckets)"):
        tables["rates_by_provider"] = analytics.rates(s, e, every=step, by="provider_id")
        tables["rates"] = analytics.rates(s, e, every=step)
        heatmap = analytics.rates(s, e, every="1h") if hourly else None
    draw("status_mix", tables["rates"])
    draw("delivery_rate", tables["rates_by_provider"])
    draw("heatmap", heatmap)
    with prog.step("latency"):
        latency = analytics.latency(s, e, by="provider_id")
        tables["latency"] = latency.table
    draw("latency", latency)
    with prog.step("failures"):
        failures = analytics.failures(s, e)
        tables["failure_codes"] = failures.codes
        tables["failure_categories"] = failures.categories
        tables["tracking_problems"] = failures.tracking
    draw("failure_codes", failures)
    with prog.step("failover funnel"):
        funnel = analytics.failover_funnel(s, e)
        tables["failover_stages"] = funnel.stages
        tables["failover_rates"] = funnel.rates
    draw("failover", funnel)
    if drawers is not None:
        drawers.append(_BackgroundCharts(analytics.min_n))
        for key, result in waiting:
            draw(key, result)
    with prog.step("rate maturity"):
        maturity = analytics.rate_maturity(s, e)
        tables["maturity"] = maturity
    draw("maturity", maturity)
    with prog.step("what changed (against the window before)"):
        length = e - s
        baseline = (s - length - timedelta(microseconds=1), s - timedelta(microseconds=1))
        comparison = analytics.compare((s, e), baseline, top=5)
        tables["what_changed_overall"] = comparison.overall
        tables["what_changed"] = comparison.slices
    draw("what_changed", comparison)
    with prog.step("recent failures (numbers masked)"):
        tables["recent_failures"] = _recent_failures(analytics, s, e)
    report = Report(provenance=provenance, summary=summary, tables=tables)
    if drawers:
        with prog.step("charts (inline SVG)"):  # drawn meanwhile: waits for the last ones
            report.charts, report.charts_note = drawers[0].finish()
    report.timings = prog.timings
    return report


def _recent_failures(analytics: DeliveryAnalytics, s: datetime, e: datetime) -> pl.DataFrame:
    """The latest failed messages of the window, with masked numbers only."""
    # list_records' order (requested_at descending, ties by message_id) over only the
    # columns shown: the store's list_records would decode every column of every failure
    frame = (
        analytics.records(s, e)
        .filter(pl.col("status") == "FAILED")
        .select(_SAMPLE_COLUMNS)
        .sort(["requested_at", "message_id"], descending=[True, False])
        .head(_SAMPLE_ROWS)
        .collect()
    )
    return frame.select(_SAMPLE_COLUMNS)


# --------------------------------------------------------------------------- charts


def _chart_builders(min_n: int) -> dict[str, Callable[[Any], Any]]:
    from . import charts as c

    return {
        "status_mix": c.status_mix,
        "delivery_rate": lambda r: c.delivery_rate(r, min_n=min_n),
        "latency": c.latency_distribution,
        "heatmap": lambda r: c.delivery_heatmap(r, min_n=min_n),
        "failure_codes": c.top_failure_codes,
        "failover": c.failover_funnel,
        "maturity": c.rate_maturity,
        "what_changed": c.what_changed,
    }


def render_charts(
    results: Mapping[str, Any], min_n: int = m.DEFAULT_MIN_N
) -> tuple[dict[str, str], str | None]:
    """Each chart of ``results`` as inline SVG text, and why not where they cannot be drawn.

    Never raises for a missing extra or a chart that fails: the report keeps its tables.
    """
    try:
        import vl_convert as vlc

        builders = _chart_builders(min_n)
    except ImportError as err:
        return {}, f"차트를 그리지 못했습니다 ({err}). 설치: {INSTALL_HINT}"
    out: dict[str, str] = {}
    failed: list[str] = []
    for key, result in results.items():
        if result is None or key not in builders:
            continue
        try:
            out[key] = vlc.vegalite_to_svg(builders[key](result).to_dict())
        except Exception as err:  # one broken chart must not lose the report
            failed.append(f"{key}: {type(err).__name__}: {err}")
    note = ("일부 차트를 그리지 못했습니다: " + "; ".join(failed)) if failed else None
    return out, note


class _BackgroundCharts:
    """Renders the report's charts on one background thread while the rest is computed.

    Charts are submitted as their results arrive; :meth:`finish` waits for them and
    returns what :func:`render_charts` would (the SVG per chart and a note for those that
    could not be drawn). The thread first imports the chart builders (altair takes
    seconds) and draws a tiny chart (vl-convert's first drawing starts its engine, about
    a second). Importing and drawing hold the interpreter lock, so the report starts
    this just before its longest queries, which run without it.
    """

    def __init__(self, min_n: int) -> None:
        self.min_n = min_n
        self.note: str | None = None
        self.builders: dict[str, Callable[[Any], Any]] = {}
        self.futures: dict[str, Future[str | None]] = {}
        self.pool: ThreadPoolExecutor | None = None
        try:
            import vl_convert as vlc
        except ImportError as err:
            self.note = f"차트를 그리지 못했습니다 ({err}). 설치: {INSTALL_HINT}"
            return
        self.convert = vlc.vegalite_to_svg
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kmsg-report-charts")
        self.pool.submit(self._start)

    def _start(self) -> None:
        try:
            self.builders = _chart_builders(self.min_n)
        except ImportError as err:
            self.note = f"차트를 그리지 못했습니다 ({err}). 설치: {INSTALL_HINT}"
            return
        with contextlib.suppress(Exception):  # a real chart will say what is wrong
            self.convert(_WARM_UP_SPEC)

    def submit(self, key: str, result: Any) -> None:
        """Start drawing chart ``key`` of ``result`` (nothing for a missing result)."""
        if self.pool is not None and result is not None:
            self.futures[key] = self.pool.submit(self._render, key, result)

    def _render(self, key: str, result: Any) -> str | None:
        builder = self.builders.get(key)
        return None if builder is None else self.convert(builder(result).to_dict())

    def finish(self) -> tuple[dict[str, str], str | None]:
        """Every submitted chart as SVG (in submission order) and the note of failures."""
        out: dict[str, str] = {}
        failed: list[str] = []
        for key, future in self.futures.items():
            try:
                svg = future.result()
            except Exception as err:  # one broken chart must not lose the report
                failed.append(f"{key}: {type(err).__name__}: {err}")
                continue
            if svg is not None:
                out[key] = svg
        self.close()
        if self.note is not None:  # no chart could be drawn at all
            return {}, self.note
        if failed:
            return out, "일부 차트를 그리지 못했습니다: " + "; ".join(failed)
        return out, None

    def close(self) -> None:
        """Stop the thread (charts not started yet are dropped); safe to call twice."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


#: The smallest chart: drawing it starts vl-convert's engine.
_WARM_UP_SPEC: Final = {
    "data": {"values": [{"x": 0}]},
    "mark": "point",
    "encoding": {"x": {"field": "x", "type": "quantitative"}},
}


def charts_for_demo(
    analytics: DeliveryAnalytics,
    out_dir: str | Path,
    *,
    start: Any = None,
    end: Any = None,
    formats: Sequence[str] = ("svg", "png"),
    out: Callable[[str], object] | None = print,
) -> list[Path]:
    """Write every chart of the lake's data as SVG/PNG files into ``out_dir``.

    The window defaults to everything the lake holds. Returns the files written (none,
    with a line saying what to install, when the notebook extra is missing).
    """
    for f in formats:
        if f not in ("svg", "png"):
            _invalid("formats", f, "'svg' and/or 'png'")
    try:
        import vl_convert as vlc

        from . import charts as _charts  # noqa: F401  (fails early without altair)
    except ImportError:
        if out is not None:
            out(f"charts skipped: the notebook extra is not installed ({INSTALL_HINT})")
        return []
    if start is None or end is None:
        lo, hi = (
            analytics.store.current()
            .select(
                pl.col("requested_at").min().alias("lo"), pl.col("requested_at").max().alias("hi")
            )
            .collect()
            .row(0)
        )
        if not isinstance(lo, datetime) or not isinstance(hi, datetime):
            if out is not None:
                out("charts skipped: the lake holds no messages")
            return []
        start = lo if start is None else start
        end = hi if end is None else end
    s, e = coerce_time(start, "start"), coerce_time(end, "end")
    half = s + (e - s) / 2
    results: dict[str, Any] = {
        "status_mix": analytics.rates(s, e, every=_step(e - s)),
        "delivery_rate": analytics.rates(s, e, every=_step(e - s), by="provider_id"),
        "latency": analytics.latency(s, e, by="type"),
        "heatmap": analytics.rates(s, e, every="1h"),
        "failure_codes": analytics.failures(s, e),
        "failover": analytics.failover_funnel(s, e),
        "maturity": analytics.rate_maturity(s, e, by="provider_id"),
        "what_changed": analytics.compare((half, e), (s, half)),
    }
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    builders = _chart_builders(analytics.min_n)
    for key, result in results.items():
        spec = builders[key](result).to_dict()
        if "svg" in formats:
            path = folder / f"{key}.svg"
            path.write_text(vlc.vegalite_to_svg(spec), encoding="utf-8")
            written.append(path)
        if "png" in formats:
            path = folder / f"{key}.png"
            path.write_bytes(vlc.vegalite_to_png(spec, scale=2))
            written.append(path)
    if out is not None:
        out(f"wrote {len(written)} chart files to {folder}")
    return written


# --------------------------------------------------------------------------- writers


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "예" if value else "아니오"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and value != value:
        return None
    return value


def _rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return [{k: _jsonable(v) for k, v in row.items()} for row in frame.iter_rows(named=True)]


def _rate_text(row: Mapping[str, Any]) -> str:
    if row["rate_pct"] is None:
        return f"데이터 부족 (n={row['denominator']:,})"
    return f"{row['rate_pct']:.2f}%"


def _table_html(frame: pl.DataFrame, key: str, limit: int = 200) -> str:
    if frame.is_empty():
        return f'<p class="empty" data-table="{key}">데이터 없음</p>'
    shown = frame.head(limit)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown.columns)
    body = []
    for row in shown.iter_rows(named=True):
        cells = "".join(
            f'<td data-col="{html.escape(k)}">{html.escape(_cell(v))}</td>' for k, v in row.items()
        )
        body.append(f"<tr>{cells}</tr>")
    more = (
        f'<p class="note">처음 {limit:,}행만 표시 (전체 {frame.height:,}행)</p>'
        if frame.height > limit
        else ""
    )
    return (
        f'<div class="scroll"><table data-table="{key}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>{more}"
    )


_CSS: Final = """
body{font-family:Pretendard,'Noto Sans KR','Noto Sans CJK KR','Apple SD Gothic Neo',
'Malgun Gothic',NanumGothic,system-ui,sans-serif;margin:2rem auto;max-width:1180px;
color:#1f2933;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #e5e7eb;
padding-bottom:.3rem}table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border-bottom:1px solid #eef0f3;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f7f8fa}.scroll{overflow-x:auto}.tiles{display:flex;flex-wrap:wrap;gap:.8rem}
.tile{border:1px solid #e5e7eb;border-radius:8px;padding:.7rem 1rem;min-width:12rem}
.tile .v{font-size:1.5rem;font-weight:600}.tile .l{color:#6b7280;font-size:.85rem}
.note{color:#6b7280;font-size:.85rem}.chart{margin:1rem 0}.chart svg{max-width:100%;height:auto}
.warn{background:#fff7e6;border:1px solid #f0ad4e;padding:.6rem 1rem;border-radius:6px}
"""


def _html(report: Report) -> str:
    p = report.provenance
    s = report.summary
    metrics = report.tables["metrics"]
    tiles = [
        f'<div class="tile" data-key="total" data-value="{s.total}">'
        f'<div class="l">전체 메시지</div><div class="v">{s.total:,}</div></div>'
    ]
    for row in metrics.iter_rows(named=True):
        value = "" if row["rate_pct"] is None else f"{row['rate_pct']:.6f}"
        tiles.append(
            f'<div class="tile" data-rate="{row["rate"]}" data-numerator="{row["numerator"]}" '
            f'data-denominator="{row["denominator"]}" data-rate-pct="{value}">'
            f'<div class="l">{html.escape(row["label"])}</div>'
            f'<div class="v">{html.escape(_rate_text(row))}</div>'
            f'<div class="l">{row["numerator"]:,} / {row["denominator"]:,}'
            + (
                f" · 95% {row['ci_low_pct']:.1f}–{row['ci_high_pct']:.1f}%"
                if row["ci_low_pct"] is not None
                else ""
            )
            + "</div></div>"
        )
    status_cells = "".join(
        f"<tr><td>{html.escape(m.STATUS_LABELS[st])} ({st})</td>"
        f'<td data-status="{st}" data-value="{s.by_status[st]}">{s.by_status[st]:,}</td></tr>'
        for st in DELIVERY_STATUSES
    )
    kmsg_rates = (
        ("deliveredOfTotalPct", s.rates.delivered_of_total_pct),
        ("failedOfTotalPct", s.rates.failed_of_total_pct),
        ("deliveredOfFinalizedPct", s.rates.delivered_of_finalized_pct),
    )
    kmsg_cells = "".join(
        f'<tr><td>{k}</td><td data-kmsg="{k}" data-value="{v!r}">{v:.2f}%</td></tr>'
        for k, v in kmsg_rates
    )
    definitions = "".join(
        f"<tr><td>{html.escape(r['label'])}</td><td><code>{html.escape(r['rate'])}</code></td>"
        f"<td>{html.escape(r['definition'])}</td><td>{html.escape(r['description'])}</td></tr>"
        for r in metrics.iter_rows(named=True)
    )
    prov_rows = "".join(
        f'<tr><th>{html.escape(k)}</th><td data-prov="{html.escape(k)}">'
        f"{html.escape(_cell(v))}</td></tr>"
        for k, v in p.items()
    )
    charts: list[str] = []
    if report.charts_note:
        charts.append(f'<p class="warn">{html.escape(report.charts_note)}</p>')
    for key, title in CHART_TITLES:
        svg = report.charts.get(key)
        if svg:
            charts.append(
                f'<figure class="chart" data-chart="{key}"><figcaption>{html.escape(title)}'
                f"</figcaption>{svg}</figure>"
            )
    sections = [
        ("게이트웨이별 요약", "by_provider"),
        ("유형별 요약", "by_type"),
        ("시간대별 성공률 (게이트웨이별)", "rates_by_provider"),
        ("지연 시간 (게이트웨이별, 초)", "latency"),
        ("실패 분류", "failure_categories"),
        ("상위 실패 코드", "failure_codes"),
        ("추적 문제 (전달 실패와 따로 집계)", "tracking_problems"),
        ("알림톡 대체발송 퍼널", "failover_stages"),
        ("대체발송 비율", "failover_rates"),
        ("성공률 성숙 곡선", "maturity"),
        ("이전 기간 대비", "what_changed_overall"),
        ("변화를 설명하는 분류", "what_changed"),
        ("최근 실패 메시지 (번호 마스킹)", "recent_failures"),
    ]
    tables = "".join(
        f'<h3 id="t-{key}">{html.escape(title)}</h3>{_table_html(report.tables[key], key)}'
        for title, key in sections
    )
    return f"""<!DOCTYPE html>
<html lang="ko"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="{html.escape(str(p.get("generator", "")))}">
<title>전송 리포트 {html.escape(p["window_start"][:10])} ~
{html.escape(p["window_end"][:10])}</title>
<style>{_CSS}</style></head><body>
<h1>전송 리포트</h1>
<p class="note">{html.escape(p["window_start"])} ~ {html.escape(p["window_end"])}
(요청 시각 기준, 양 끝 포함) · 생성 {html.escape(p["generated_at"])}</p>
<h2>핵심 지표</h2><div class="tiles">{"".join(tiles)}</div>
<p class="note">분모가 {p["min_n"]} 미만인 비율은 "데이터 부족"으로 표시합니다 (0%가 아님).
괄호 안은 분자 / 분모, Wilson 95% 구간.</p>
<h2>k-msg 요약 (getSummary)</h2>
<table data-table="summary"><tbody><tr><td>전체</td><td data-key="total" data-value="{s.total}">
{s.total:,}</td></tr>{status_cells}{kmsg_cells}</tbody></table>
<h2>지표 정의</h2><table data-table="definitions"><thead><tr><th>지표</th><th>이름</th>
<th>분자 ÷ 분모</th><th>설명</th></tr></thead><tbody>{definitions}</tbody></table>
<h2>차트</h2>{"".join(charts) or '<p class="note">차트 없음</p>'}
<h2>표</h2>{tables}
<h2>출처</h2><table data-table="provenance"><tbody>{prov_rows}</tbody></table>
<p class="note">전화번호는 마스킹된 형태(010****5678)로만 표시합니다.</p>
</body></html>
"""


def _markdown_table(frame: pl.DataFrame, limit: int = 200) -> str:
    if frame.is_empty():
        return "_데이터 없음_\n"
    shown = frame.head(limit)
    head = "| " + " | ".join(shown.columns) + " |"
    sep = "|" + "|".join("---" for _ in shown.columns) + "|"
    lines = [head, sep]
    for row in shown.iter_rows():
        cells = [_cell(v).replace("|", "\\|").replace("\n", " ") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    if frame.height > limit:
        lines.append(f"\n_처음 {limit:,}행만 (전체 {frame.height:,}행)_")
    return "\n".join(lines) + "\n"


def _markdown(report: Report) -> str:
    p = report.provenance
    parts = [
        "# 전송 리포트\n",
        f"{p['window_start']} ~ {p['window_end']} (요청 시각 기준) · 생성 {p['generated_at']}\n",
        "## 출처\n",
        _markdown_table(pl.DataFrame({"key": list(p), "value": [_cell(v) for v in p.values()]})),
        f"## 요약\n\n전체 {report.summary.total:,}건\n",
    ]
    for key, frame in report.tables.items():
        parts.append(f"## {key}\n")
        parts.append(_markdown_table(frame))
    return "\n".join(parts)


def _json(report: Report) -> str:
    doc = {
        "provenance": report.provenance,
        "summary": report.summary.to_kmsg(),
        "tables": {k: _rows(v) for k, v in report.tables.items()},
        "charts_note": report.charts_note,
    }
    return json.dumps(doc, ensure_ascii=False, indent=2, default=str)


def _csv_frame(frame: pl.DataFrame) -> pl.DataFrame:
    nested = [c for c, t in frame.schema.items() if isinstance(t, pl.Struct | pl.List)]
    return (
        frame.with_columns(pl.col(nested).map_elements(str, return_dtype=pl.String))
        if nested
        else frame
    )


def _check_masked(text: str, where: str) -> None:
    """Refuse to write a report that would show a phone number in clear."""
    found = _NUMBER_RE.search(_SVG_RE.sub("", text))  # charts hold aggregates only
    if found is not None:
        msg = f"refusing to write {where}: it would contain an unmasked phone number"
        raise KmsgAnalyticsError(msg)


def write_report(report: Report, out: str | Path, format: ReportFormat = "html") -> list[Path]:
    """Write ``report`` to ``out`` in ``format``; returns the files written."""
    if format not in FORMATS:
        _invalid("format", format, "one of " + ", ".join(FORMATS))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if format == "csv":
        for key, frame in report.tables.items():
            target = path if key == "metrics" else path.with_name(f"{path.stem}.{key}.csv")
            text = _csv_frame(frame).write_csv()
            _check_masked(text, str(target))
            target.write_text(text, encoding="utf-8")
            written.append(target)
        prov = path.with_name(f"{path.stem}.provenance.json")
        prov.write_text(json.dumps(report.provenance, ensure_ascii=False, indent=2))
        written.append(prov)
        return written
    text = {"html": _html, "json": _json, "md": _markdown}[format](report)
    _check_masked(text, str(path))
    path.write_text(text, encoding="utf-8")
    return [path]


def build_report(
    lake: Any,
    *,
    out: str | Path,
    since: str | timedelta | None = None,
    start: Any = None,
    end: Any = None,
    format: ReportFormat = "html",
    tz: str = "UTC",
    min_n: int = m.DEFAULT_MIN_N,
    charts: bool = True,
    progress: Callable[[str], object] | None = None,
    hash_key: Any = None,
) -> Report:
    """Build the batch report of a lake (or store, service, ``DeliveryAnalytics``) and write it.

    Parameters
    ----------
    lake
        A lake directory, a tracking store or service, or a ``DeliveryAnalytics``.
    out
        The file to write (``csv`` also writes ``<stem>.<table>.csv`` beside it).
    since, start, end
        The window of ``requested_at`` (inclusive): ``start``..``end``, or the
        ``since`` (``30d``, ``12h``, ...) before ``end``. ``end`` defaults to the last
        request in the lake (``"now"`` for the wall clock); ``since`` defaults to 30 days.
    format
        ``html`` (self-contained, offline), ``json``, ``csv`` or ``md``.
    tz
        Time zone of time buckets and hours (e.g. ``Asia/Seoul``).
    charts
        Render charts into the HTML (needs the notebook extra; skipped with a note
        otherwise).
    progress
        Called with one line per step (``print`` to see progress).

    Raises
    ------
    EmptyReportError
        The window (or the lake) holds no messages.
    InvalidRecordError
        A bad window (``start`` after ``end``, an unreadable ``since``) or format.

    Examples
    --------
    >>> import tempfile
    >>> from kmsg_analytics._analytics import _example
    >>> out = tempfile.mkdtemp() + "/report.json"
    >>> report = build_report(_example(), out=out, since="2d", format="json", charts=False)
    >>> report.summary.total, [p.name for p in report.paths]
    (7, ['report.json'])
    """
    from ._analytics import DeliveryAnalytics

    if format not in FORMATS:
        _invalid("format", format, "one of " + ", ".join(FORMATS))
    analytics = (
        lake
        if isinstance(lake, DeliveryAnalytics)
        else DeliveryAnalytics(lake, hash_key=hash_key, tz=tz, min_n=min_n)
    )
    try:
        report = collect_report(
            analytics,
            since=since,
            start=start,
            end=end,
            progress=progress,
            charts=charts and format == "html",
        )
        report.paths = write_report(report, out, format)
    finally:
        if analytics is not lake:
            analytics.close()
    return report
