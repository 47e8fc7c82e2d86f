"""The explorer: an ipywidgets dashboard over a tracking lake, drivable from code.

Open it on a lake, display it (the last expression of a cell), drive it::

    dash = explore("data/lake", tz="Asia/Seoul")
    dash
    dash.controls["provider"].value = ("solapi",)
    dash.figures["kpis"]["total"]

Controls (``dash.controls``): ``start`` and ``end`` dates (inclusive, in the analytics'
time zone), ``provider``, ``type`` and ``status`` pickers (nothing picked means all),
``bucket`` (hour/day/week/month), ``definition`` (which named rate the charts show)
and ``view`` (the tab on screen). Every change recomputes what is on screen; KPI tiles
and the paged record table always, the charts of the visible tab only (the others when
their tab is opened), each answer cached per filter; a chart whose inputs did not
change is not sent again. The "matching records" count comes from the summary (no
extra scan) and a table page reads only the days it shows.

Right after opening, a background thread computes the hidden tabs' answers for the
opening filters and then the lake's rate-maturity rollup (``_rollups``): from then on
every maturity curve is a small aggregation, whatever the filters (a banner shows
while it runs; :meth:`Explorer.wait_prepared` waits for it).

Rates are never filtered by status (a delivery rate among only delivered messages
would mean nothing): the status picker narrows the record table, the "matching
records" tile and the status-mix chart.

While a query runs the dashboard says so ("working"); an error shows as a readable
message in the dashboard, never as a traceback. Phone numbers appear only masked.

Needs the notebook extra: ``pip install "kmsg-analytics[notebook]"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn
from zoneinfo import ZoneInfo

import polars as pl

from . import _metrics as m
from . import _rollups
from ._analytics_common import DEFAULT_AGES, _ages
from ._errors import InvalidRecordError
from ._records import DELIVERY_STATUSES, RecordFilter
from ._schema import CURRENT_PARTITION

try:
    import ipywidgets as w

    from . import charts as _charts
except ImportError as _err:  # pragma: no cover - exercised in a subprocess test
    _msg = (
        "kmsg_analytics.widgets needs ipywidgets and altair, which come with the notebook "
        'extra: pip install "kmsg-analytics[notebook]"'
    )
    raise ImportError(_msg) from _err

if TYPE_CHECKING:
    from ._analytics import DeliveryAnalytics

__all__ = ["TABS", "Explorer", "explore"]

#: The dashboard's tabs: key -> (title, the figures it shows).
TABS: Final[Mapping[str, tuple[str, tuple[str, ...]]]] = {
    "overview": ("개요", ("status_mix", "delivery_rate")),
    "latency": ("지연", ("latency",)),
    "failures": ("실패", ("failure_codes", "heatmap")),
    "failover": ("대체발송", ("failover",)),
    "maturity": ("성숙", ("maturity",)),
}

_BUCKETS: Final = (("시간", "1h"), ("일", "1d"), ("주", "1w"), ("월", "1mo"))
_BUCKET_SECONDS: Final = {"1h": 3_600, "1d": 86_400, "1w": 604_800, "1mo": 2_592_000}
_MAX_BUCKETS: Final = 2_000
_RECORD_COLUMNS: Final = (
    "message_id",
    "requested_at",
    "provider_id",
    "type",
    "status",
    "to_masked",
    "provider_status_code",
    "provider_status_message",
)
_CACHE_SIZE: Final = 96
_KPI_RATES: Final = ("failed_of_total", "delivered_of_finalized", "in_flight_of_total")

ChartView = Literal["interactive", "svg"]


# --------------------------------------------------------------------------- chart views


def _invalid(field: str, value: object, expected: str) -> NoReturn:
    """Raise :class:`InvalidRecordError` naming the field, the value and what is valid."""
    raise InvalidRecordError(field, value, expected)


_OFFLINE_CHART: list[type[Any]] = []


def _cache_dir() -> Path:
    """``$KMSG_ANALYTICS_CACHE_DIR``, else ``$XDG_CACHE_HOME/kmsg-analytics`` (``~/.cache``)."""
    own = os.environ.get("KMSG_ANALYTICS_CACHE_DIR")
    if own:
        return Path(own)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "kmsg-analytics"


def _offline_chart_class() -> type[Any]:
    """``alt.JupyterChart`` with its JavaScript bundled (no CDN), built once and cached.

    vl-convert bundles vega-embed for the widget (a few seconds, once); the bundle is
    kept in the user's cache folder, keyed by the altair and vl-convert versions.
    """
    if _OFFLINE_CHART:
        return _OFFLINE_CHART[0]
    import altair as alt
    import vl_convert as vlc

    version = f"{alt.__version__}-{getattr(vlc, '__version__', 'x')}"
    cached = _cache_dir() / f"jupyterchart-{version}.js"
    bundle: str | None = None
    try:
        bundle = cached.read_text(encoding="utf-8")
    except OSError:
        bundle = None
    if not bundle:
        alt.JupyterChart.enable_offline()
        bundle = str(alt.JupyterChart._esm)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(bundle, encoding="utf-8")
            tmp.replace(cached)
        except OSError:
            pass
    offline = type("OfflineJupyterChart", (alt.JupyterChart,), {"_esm": bundle})
    _OFFLINE_CHART.append(offline)
    return offline


_WARMING: list[threading.Thread] = []


def _warm_up(view: ChartView) -> None:
    """Pay altair's once-per-process costs in a thread while the first queries run.

    The first chart a process validates loads and compiles the Vega-Lite schema (about
    as long as a query over millions of rows); the interactive view also reads the
    offline JavaScript bundle. Polars releases the GIL while it scans, so this runs
    beside the explorer's first queries; :func:`_warmed` waits for it.
    """
    if _WARMING:
        return

    def work() -> None:
        try:
            import altair as alt

            alt.Chart(pl.DataFrame({"x": [1]})).mark_point().encode(x="x:Q").to_dict()
            if view == "interactive":
                _offline_chart_class()
        except Exception:  # only a head start: the real call reports any error
            return

    thread = threading.Thread(target=work, name="kmsg-explorer-warm-up", daemon=True)
    _WARMING.append(thread)
    thread.start()


def _warmed() -> None:
    """Wait for :func:`_warm_up` (if it was started) to finish."""
    for thread in _WARMING:
        thread.join()


def _default_view() -> ChartView:
    try:
        import anywidget  # noqa: F401
        import vl_convert  # noqa: F401
    except ImportError:
        return "svg"
    return "interactive"


class _ChartSlot:
    """Where one chart is shown: an offline JupyterChart widget, or inline SVG.

    The chart widget and the note are made once and swapped in and out (never
    recreated), so a long session does not pile up widgets in the kernel; showing the
    chart already on screen, or the note already shown, sends nothing.
    """

    def __init__(self, view: ChartView) -> None:
        self.view = view
        self.widget: Any = w.Box(layout=w.Layout(min_height="60px", width="100%"))
        self.inner: Any = None
        self.note: Any = None
        self.chart: Any = None
        self.renders = 0

    def show(self, chart: Any) -> None:
        _warmed()
        if chart is self.chart and self.inner is not None:
            if self.widget.children != (self.inner,):
                self.widget.children = (self.inner,)
            return
        if self.view == "interactive":
            if self.inner is None:
                self.inner = _offline_chart_class()(chart)
            else:
                self.inner.chart = chart
        else:
            import vl_convert as vlc

            svg = vlc.vegalite_to_svg(chart.to_dict())
            if self.inner is None:
                self.inner = w.HTML()
            self.inner.value = f'<div class="kmsg-chart">{svg}</div>'
        if self.widget.children != (self.inner,):
            self.widget.children = (self.inner,)
        self.chart = chart
        self.renders += 1

    def clear(self, text: str) -> None:
        value = f"<i>{html.escape(text)}</i>"
        if self.note is None:
            self.note = w.HTML(value)
        elif self.note.value != value:
            self.note.value = value
        if self.widget.children != (self.note,):
            self.widget.children = (self.note,)


# --------------------------------------------------------------------------- the explorer


def _tile(title: str, value: str, detail: str = "", key: str = "") -> str:
    return (
        f'<div class="kmsg-kpi" data-kpi="{html.escape(key)}" style="border:1px solid #e5e7eb;'
        'border-radius:8px;padding:6px 12px;min-width:150px">'
        f'<div style="color:#6b7280;font-size:12px">{html.escape(title)}</div>'
        f'<div class="kmsg-kpi-value" style="font-size:22px;font-weight:600">'
        f"{html.escape(value)}</div>"
        f'<div style="color:#6b7280;font-size:11px">{html.escape(detail)}</div></div>'
    )


def _rate_value(row: Mapping[str, Any]) -> tuple[str, str]:
    num, den = int(row["numerator"]), int(row["denominator"])
    ci = (
        f" · 95% {row['ci_low_pct']:.1f}–{row['ci_high_pct']:.1f}%"
        if row.get("ci_low_pct") is not None
        else ""
    )
    if row.get("rate_pct") is None:
        return "데이터 부족", f"{num:,} / {den:,}{ci}"
    return f"{row['rate_pct']:.1f}%", f"{num:,} / {den:,}{ci}"


class Explorer:
    """The dashboard: controls, KPI tiles, charts in tabs and a paged record table.

    Build it with :func:`explore`. Drive it from code by setting
    ``dash.controls[name].value`` (or several at once inside ``with dash.batch():``)
    and read ``dash.figures`` (charts and KPI numbers), ``dash.results`` (the analytics
    answers they were built from), ``dash.records`` (the table page) and
    ``dash.error`` (the message shown, or ``None``).

    Parameters
    ----------
    analytics
        The :class:`~kmsg_analytics.DeliveryAnalytics` to ask.
    start, end
        The first date range (default: the 30 days up to the last request in the lake).
    page_size
        Records per table page.
    chart_view
        ``"interactive"`` (offline Vega widgets with tooltips; needs anywidget) or
        ``"svg"`` (static pictures rendered in the kernel). Default: interactive where
        possible.
    lazy
        Compute the charts of the visible tab only (default); ``False`` computes all.
    prepare
        Right after opening, compute the hidden tabs' answers for the opening filters
        and the rate-maturity rollup of the lake in a background thread (default; the
        dashboard shows that it runs): the maturity curves of any later filter are then
        small aggregations of it.
    """

    def __init__(
        self,
        analytics: DeliveryAnalytics,
        *,
        start: date | datetime | str | None = None,
        end: date | datetime | str | None = None,
        page_size: int = 20,
        chart_view: ChartView | None = None,
        lazy: bool = True,
        owned: bool = False,
        prepare: bool = True,
    ) -> None:
        if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size < 1:
            _invalid("page_size", page_size, "a whole number >= 1")
        view = _default_view() if chart_view is None else chart_view
        if view not in ("interactive", "svg"):
            _invalid("chart_view", chart_view, "'interactive' or 'svg'")
        self.analytics = analytics
        self._owned = owned
        self.page_size = page_size
        self.lazy = lazy
        self.zone = ZoneInfo(analytics.tz)
        self.figures: dict[str, Any] = {}
        self.results: dict[str, Any] = {}
        self.records: pl.DataFrame = pl.DataFrame()
        self.error: str | None = None
        self.refreshes = 0
        self.timings: dict[str, float] = {}
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._running: dict[tuple[Any, ...], threading.Event] = {}
        self._holding = 0
        self._pending = False
        self._page = 0
        self._matching = 0
        self._preparing: threading.Thread | None = None
        self._redraw_prepared = False  # a tab waits for the background: redraw it after
        self._prepared_done = False
        self._refreshing = threading.RLock()  # a control's refresh, or the background's

        _warm_up(view)
        providers, types, first, last = self._choices()
        end_day = _as_date(end, "end", self.zone) if end is not None else last
        start_day = (
            _as_date(start, "start", self.zone)
            if start is not None
            else max(first, end_day - timedelta(days=29))
        )
        rate_options = [(f"{r.label} ({name})", name) for name, r in m.RATES.items()]
        tab_titles = [title for title, _figs in TABS.values()]
        self.tabs: Any = w.Tab()
        self.controls: dict[str, Any] = {
            "start": w.DatePicker(description="시작", value=start_day),
            "end": w.DatePicker(description="끝", value=end_day),
            "provider": w.SelectMultiple(
                description="게이트웨이", options=providers, rows=min(max(len(providers), 2), 5)
            ),
            "type": w.SelectMultiple(
                description="유형", options=types, rows=min(max(len(types), 2), 5)
            ),
            "status": w.SelectMultiple(
                description="상태",
                options=[(f"{m.STATUS_LABELS[s]} ({s})", s) for s in DELIVERY_STATUSES],
                rows=6,
            ),
            "bucket": w.Dropdown(description="구간", options=_BUCKETS, value="1d"),
            "definition": w.Dropdown(
                description="비율 정의", options=rate_options, value="delivered_of_total"
            ),
            "view": self.tabs,
        }
        self.working: Any = w.HTML(
            '<span class="kmsg-working">⏳ 계산 중…</span>',
            layout=w.Layout(visibility="hidden"),
        )
        self.message: Any = w.HTML("", layout=w.Layout(display="none"))
        self.background: Any = w.HTML(
            '<span class="kmsg-background">⏳ 다른 탭과 성숙 곡선을 미리 계산하는 중'
            " (백그라운드)</span>",
            layout=w.Layout(visibility="hidden"),
        )
        self.kpis: Any = w.HTML()
        self.slots: dict[str, _ChartSlot] = {}
        pages = []
        for _key, (_title, figs) in TABS.items():
            boxes = []
            for fig in figs:
                slot = _ChartSlot(view)
                self.slots[fig] = slot
                boxes.append(slot.widget)
            pages.append(w.VBox(boxes))
        self.table: Any = w.HTML()
        self.prev_button: Any = w.Button(description="◀ 이전", layout=w.Layout(width="90px"))
        self.next_button: Any = w.Button(description="다음 ▶", layout=w.Layout(width="90px"))
        self.page_label: Any = w.Label()
        self.prev_button.on_click(lambda _b: self.go_to_page(self._page - 1))
        self.next_button.on_click(lambda _b: self.go_to_page(self._page + 1))
        self.tabs.children = pages
        self.tabs.titles = tab_titles
        c = self.controls
        filters = w.HBox(
            [
                w.VBox([c["start"], c["end"], c["bucket"], c["definition"]]),
                c["provider"],
                c["type"],
                c["status"],
            ],
            layout=w.Layout(flex_flow="row wrap"),
        )
        pager = w.HBox([self.prev_button, self.page_label, self.next_button])
        self.widget: Any = w.VBox(
            [
                w.HTML("<h3 style='margin:4px 0'>전송 분석 탐색기</h3>"),
                filters,
                w.HBox([self.working, self.background, self.message]),
                self.kpis,
                self.tabs,
                w.HTML("<h4 style='margin:8px 0 4px'>조건에 맞는 메시지 (번호 마스킹)</h4>"),
                self.table,
                pager,
            ],
            layout=w.Layout(width="100%"),
        )
        self.widget.add_class("kmsg-explorer")
        for name, control in c.items():
            trait = "selected_index" if name == "view" else "value"
            control.observe(self._on_change(name), names=trait)
        self.refresh()
        if prepare:
            self._prepare()

    # ------------------------------------------------------------------ display

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"Explorer({self.analytics!r}, filters={self.state()!r})"

    def close(self) -> None:
        """Close the widgets (and the lake, when :func:`explore` opened it)."""
        self.widget.close()
        if self._owned:
            self.analytics.close()

    def _prepare(self) -> None:
        """Prepare the hidden tabs in a background thread, right after opening.

        First the analytics answers of the latency, failures and failover tabs for the
        opening filters (skipped once the filters change), then the rate-maturity
        rollup of the lake (see ``_rollups``): one pass over the whole snapshot history,
        counted per request hour, provider and type for every rate definition; once it
        is kept, every maturity curve the controls ask for is a small aggregation of it.
        A tab opened before its answer is ready waits for it (nothing is computed
        twice), except the maturity tab: it says that the curve is being prepared and
        is drawn when the rollup is ready, so no control waits for the whole pass. A
        failure here only means the tab computes its answer itself (and shows any error
        then).
        """
        an = self.analytics
        _labels, ages_us = _ages(DEFAULT_AGES)
        opened = self.state()

        def filters(st: Mapping[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in st.items() if k != "view"}

        def work() -> None:
            try:
                # the other tabs' answers for the opening filters, while they still hold
                for key, (_title, figs) in TABS.items():
                    for fig in figs:
                        if key in ("overview", "maturity") or filters(self.state()) != filters(
                            opened
                        ):
                            continue
                        try:
                            self._prefetch(fig, opened)
                        except Exception:  # the tab reports it when it is opened
                            continue
                _rollups.build_rollup(an.store, ages_us, an._now(None, None))
            except Exception:  # the tab computes the curve (and reports errors) itself
                pass
            finally:
                with self._refreshing:  # (a control's refresh checks these under it)
                    self._prepared_done = True
                    redraw, self._redraw_prepared = self._redraw_prepared, False
                with contextlib.suppress(Exception):  # (the dashboard may be closed by now)
                    self.background.layout.visibility = "hidden"
                    if redraw:  # the maturity tab said "preparing": draw it now
                        self.refresh(tables=False)

        self.background.layout.visibility = "visible"
        thread = threading.Thread(target=work, name="kmsg-explorer-rollup", daemon=True)
        self._preparing = thread
        thread.start()

    def _prefetch(self, fig: str, st: Mapping[str, Any]) -> None:
        """Compute (and keep) the analytics answers figure ``fig`` needs for ``st``."""
        s, e = self._window(st)
        self._figure(fig, st, s, e, {})

    def wait_prepared(self, timeout: float | None = None) -> bool:
        """Wait for the background rollup (if one was started); ``True`` once it is done.

        A maturity tab that showed "preparing" meanwhile is drawn before this returns.
        """
        thread = self._preparing
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    # ------------------------------------------------------------------ driving

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Change several controls and recompute once, at the end of the block."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if self._holding == 0 and self._pending:
                self._pending = False
                self.refresh()

    def _on_change(self, name: str) -> Callable[[Any], None]:
        def handler(_change: Any) -> None:
            if name != "view":
                self._page = 0
            if self._holding:
                self._pending = True
            else:
                self.refresh(tables=name != "view")

        return handler

    def go_to_page(self, page: int) -> None:
        """Show page ``page`` (0-based) of the matching records."""
        last = max((self._matching - 1) // self.page_size, 0)
        self._page = min(max(page, 0), last)
        self._run(lambda: self._records(self.state()))

    @property
    def page(self) -> int:
        """The record table page on screen (0-based)."""
        return self._page

    def state(self) -> dict[str, Any]:
        """The current filters, as plain values."""
        c = self.controls
        return {
            "start": c["start"].value,
            "end": c["end"].value,
            "provider": tuple(c["provider"].value),
            "type": tuple(c["type"].value),
            "status": tuple(c["status"].value),
            "bucket": c["bucket"].value,
            "definition": c["definition"].value,
            "view": list(TABS)[c["view"].selected_index or 0],
        }

    # ------------------------------------------------------------------ computing

    def refresh(self, *, tables: bool = True) -> None:
        """Recompute what is on screen for the current controls."""
        with self._refreshing:
            self._run(lambda: self._compute(tables=tables))

    def _run(self, work: Callable[[], None]) -> None:
        self.working.layout.visibility = "visible"
        self.timings = {}
        started = time.perf_counter()
        try:
            work()
        except Exception as err:  # shown in the dashboard, not as a traceback
            self._show_error(err)
        else:
            self.error = None
            self.message.value = ""
            self.message.layout.display = "none"
        finally:
            self.timings["last_refresh_s"] = time.perf_counter() - started
            self.working.layout.visibility = "hidden"

    def _show_error(self, err: BaseException) -> None:
        text = str(err) or type(err).__name__
        self.error = text
        self.figures["error"] = text
        self.message.value = (
            '<div class="kmsg-error" style="background:#fdecea;border:1px solid #d9534f;'
            f'padding:4px 10px;border-radius:6px">⚠ {html.escape(text)}</div>'
        )
        self.message.layout.display = "block"

    def _window(self, st: Mapping[str, Any]) -> tuple[datetime, datetime]:
        s_day, e_day = st["start"], st["end"]
        if s_day is None or e_day is None:
            msg = "pick both a start and an end date"
            _invalid("start/end", (s_day, e_day), msg)
        if s_day > e_day:
            _invalid(
                "start", s_day.isoformat(), f"a date on or before the end ({e_day.isoformat()})"
            )
        s = datetime.combine(s_day, dtime.min, self.zone).astimezone(UTC)
        e = datetime.combine(e_day, dtime.max, self.zone).astimezone(UTC)
        return s, e

    def _cached(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        """``make()``, kept per ``key``; an answer the background is computing is awaited."""
        while True:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key]
                running = self._running.get(key)
                if running is None:
                    running = self._running[key] = threading.Event()
                    break
            running.wait()  # then read it (or, if that failed, compute it here)
        try:
            value = make()
            with self._lock:
                self._cache[key] = value
                while len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
        finally:
            with self._lock:
                self._running.pop(key, None)
            running.set()
        return value

    def _compute(self, *, tables: bool) -> None:
        st = self.state()
        s, e = self._window(st)
        self.refreshes += 1
        started = time.perf_counter()
        if tables:
            self.figures = {}
            self.results = {}
            summary = self._summary(st)
            self.results["summary"] = summary
            self._records(st)
            self._kpis(summary, st)
        self.timings["kpis_s"] = time.perf_counter() - started
        wanted = (
            [f for _t, figs in TABS.values() for f in figs]
            if not self.lazy
            else list(TABS[st["view"]][1])
        )
        for fig in wanted:
            if fig in self.figures:
                continue
            t0 = time.perf_counter()
            if fig == "maturity" and self._maturity_pending():
                self._redraw_prepared = True  # drawn when the background is done
                self.slots[fig].clear(_PREPARING)
                self.timings[f"{fig}_s"] = time.perf_counter() - t0
                continue
            chart = self._drawn(fig, st, s, e)
            self.figures[fig] = chart
            if chart is None:
                self.slots[fig].clear("이 기간에는 그릴 데이터가 없습니다")
            else:
                self.slots[fig].show(chart)
            self.timings[f"{fig}_s"] = time.perf_counter() - t0
        for fig, slot in self.slots.items():
            if fig not in self.figures and not (fig == "maturity" and self._redraw_prepared):
                slot.clear("탭을 열면 계산합니다")

    def _maturity_pending(self) -> bool:
        """Whether the background is still preparing the rate-maturity rollup."""
        return self._preparing is not None and not self._prepared_done

    def _inputs(self, fig: str, st: Mapping[str, Any], s: datetime, e: datetime) -> tuple[Any, ...]:
        """What figure ``fig`` depends on (its cache key)."""
        base = (s, e, st["provider"], st["type"])
        if fig == "status_mix":
            return (*base, st["bucket"], st["definition"], st["status"])
        if fig == "delivery_rate":
            return (*base, st["bucket"], st["definition"])
        if fig in ("heatmap", "maturity"):
            return (*base, st["definition"])
        if fig == "failover":  # AlimTalk only: the type picker does not change it
            return (s, e, st["provider"])
        return base

    def _drawn(self, fig: str, st: Mapping[str, Any], s: datetime, e: datetime) -> Any:
        """Figure ``fig`` for ``st``: the very chart object drawn before for the same inputs.

        Reusing the object lets the slot skip re-sending a chart already on screen; the
        analytics answers it was built from go back into :attr:`results`.
        """
        found: dict[str, Any] = {}
        chart, found = self._cached(
            ("chart", fig, *self._inputs(fig, st, s, e)),
            lambda: (self._figure(fig, st, s, e, found), found),
        )
        self.results.update(found)
        return chart

    def _result(
        self, found: dict[str, Any], name: str, key: tuple[Any, ...], make: Callable[[], Any]
    ) -> Any:
        """An analytics answer (cached per ``key``), noted in ``found`` as ``name``."""
        value = self._cached((name, *key), make)
        found[name] = value
        return value

    def _figure(
        self, fig: str, st: Mapping[str, Any], s: datetime, e: datetime, found: dict[str, Any]
    ) -> Any:
        an = self.analytics
        base = (s, e, st["provider"], st["type"])
        providers = list(st["provider"]) or None
        types = list(st["type"]) or None
        definition = st["definition"]
        every = st["bucket"]
        if fig in ("status_mix", "delivery_rate"):
            _check_buckets(s, e, every)
            rates = self._result(
                found,
                "rates",
                (*base, every, definition),
                lambda: an.rates(
                    s,
                    e,
                    every=every,
                    by="provider_id",
                    definition=definition,
                    provider_id=providers,
                    type=types,
                ),
            )
            if fig == "status_mix":
                statuses = list(st["status"]) or None
                return _charts.status_mix(rates, statuses=statuses)
            return _charts.delivery_rate(rates, min_n=an.min_n)
        if fig == "latency":
            latency = self._result(
                found,
                "latency",
                base,
                lambda: an.latency(s, e, by="provider_id", provider_id=providers, type=types),
            )
            if latency.curve.is_empty():
                return None
            return _charts.latency_distribution(latency)
        if fig == "failure_codes":
            failures = self._result(
                found,
                "failures",
                base,
                lambda: an.failures(s, e, provider_id=providers, type=types),
            )
            if failures.codes.is_empty():
                return None
            return _charts.top_failure_codes(failures)
        if fig == "heatmap":
            if e - s > timedelta(days=400):
                msg = "the hour-of-day heatmap needs a window of at most 400 days"
                _invalid("start/end", (s.date(), e.date()), msg)
            hourly = self._result(
                found,
                "hourly",
                (*base, definition),
                lambda: an.rates(
                    s, e, every="1h", definition=definition, provider_id=providers, type=types
                ),
            )
            return _charts.delivery_heatmap(hourly, min_n=an.min_n)
        if fig == "failover":
            funnel = self._result(
                found,
                "failover",
                (s, e, st["provider"]),
                lambda: an.failover_funnel(s, e, provider_id=providers),
            )
            return _charts.failover_funnel(funnel)
        if fig == "maturity":
            curve = self._result(
                found,
                "maturity",
                (*base, definition),
                # from the lake's rollup (built once, in the background after opening)
                lambda: _rollups.rate_maturity(
                    an, s, e, definition=definition, provider_id=providers, type=types
                ),
            )
            return _charts.rate_maturity(curve)
        msg = f"unknown figure {fig!r}"  # pragma: no cover - TABS lists every figure
        raise KeyError(msg)

    def _filter(self, st: Mapping[str, Any]) -> RecordFilter:
        s, e = self._window(st)
        return RecordFilter(
            requested_at_from=s,
            requested_at_to=e,
            provider_id=list(st["provider"]) or None,
            type=list(st["type"]) or None,
            status=list(st["status"]) or None,
        )

    def _summary(self, st: Mapping[str, Any]) -> Any:
        """The KPI summary of the window, provider and type (cached; status is not a key)."""
        s, e = self._window(st)
        providers = list(st["provider"]) or None
        types = list(st["type"]) or None
        an = self.analytics
        return self._cached(
            ("summary", s, e, st["provider"], st["type"]),
            lambda: an.summary(s, e, provider_id=providers, type=types),
        )

    def _records(self, st: Mapping[str, Any]) -> None:
        flt = self._filter(st)
        # the matching count is the summary's count of the picked statuses: no scan
        summary = self._summary(st)
        picked = st["status"] or DELIVERY_STATUSES
        self._matching = sum(int(summary.by_status.get(x, 0)) for x in picked)
        last = max((self._matching - 1) // self.page_size, 0)
        self._page = min(self._page, last)
        page = self._cached(
            ("page", flt, self._page, self.page_size),
            lambda: self._page_rows(st, flt, self._page * self.page_size),
        )
        self.records = page
        self.figures["matching_records"] = self._matching
        self.table.value = _records_html(page, self.zone)
        self.page_label.value = (
            f"{self._page + 1:,} / {last + 1:,} 쪽 · {self._matching:,}건"
            if self._matching
            else "0건"
        )
        self.prev_button.disabled = self._page == 0
        self.next_button.disabled = self._page >= last

    def _page_rows(self, st: Mapping[str, Any], flt: RecordFilter, offset: int) -> pl.DataFrame:
        """One page of ``store.list_records(flt, page_size, offset)``, reading a few days only.

        The records are ordered by ``requested_at`` (newest first), ties by ``message_id``,
        so the records requested at or after any time ``t`` (ties included) are a prefix
        of that order, and those at or before ``t`` a suffix: listing the narrower window
        gives the same page while reading only the days it covers. For a page near the
        newest, ``t`` is first guessed from the window's average rate (the page is right
        as soon as the narrow listing fills it); otherwise one pass over the window's
        ``requested_at`` finds the time of the page's far edge.
        """
        store = self.analytics.store
        limit = self.page_size
        s, e = self._window(st)

        def listing(near: RecordFilter, start: int) -> pl.DataFrame:
            return store.list_records(near, limit, start).select(_RECORD_COLUMNS).collect()

        top = offset + limit <= max(self._matching - offset, 0)
        if top:
            # guess: twice the span that holds offset + limit records at the average rate
            seconds = (e - s).total_seconds() * 2 * (offset + limit) / self._matching
            since = e - timedelta(seconds=max(seconds, 3_600.0))
            if since > s:
                page = listing(dataclasses.replace(flt, requested_at_from=since), offset)
                if page.height == limit:
                    return page
        lf = self.analytics.records(
            s, e, provider_id=list(st["provider"]) or None, type=list(st["type"]) or None
        )
        if st["status"]:
            lf = lf.filter(pl.col("status").is_in(list(st["status"])))
        at = pl.col("requested_at")
        if top:
            # near the newest: the first offset + limit records all start at or after t
            t = lf.select(at.top_k(offset + limit).min()).collect().item()
            if t is None:
                return _empty_page(store, flt, limit)
            return listing(dataclasses.replace(flt, requested_at_from=max(t, s)), offset)
        # near the oldest: the records from offset to the end all start at or before t
        rest = max(self._matching - offset, 1)
        edge = at.bottom_k(rest).max()
        n, t, tail = (
            lf.select(pl.len(), edge.alias("t"), (at <= edge).sum().alias("tail")).collect().row(0)
        )
        if t is None:
            return _empty_page(store, flt, limit)
        if int(n) - int(tail) > offset:  # the lake grew since the count: list it all
            return listing(flt, offset)
        return listing(dataclasses.replace(flt, requested_at_to=min(t, e)), offset - n + tail)

    def _kpis(self, summary: Any, st: Mapping[str, Any]) -> None:
        metrics = {r["rate"]: r for r in summary.metrics.iter_rows(named=True)}
        chosen = st["definition"]
        kpis: dict[str, Any] = {"total": summary.total, "matching_records": self._matching}
        for name in dict.fromkeys([chosen, *_KPI_RATES]):
            row = metrics[name]
            kpis[name] = {
                k: row[k]
                for k in ("numerator", "denominator", "rate_pct", "ci_low_pct", "ci_high_pct")
            }
        self.figures["kpis"] = kpis
        tiles = [_tile("전체 메시지", f"{summary.total:,}", "요청 시각 기준", "total")]
        for name in dict.fromkeys([chosen, *_KPI_RATES]):
            value, detail = _rate_value(metrics[name])
            tiles.append(_tile(m.RATES[name].label, value, detail, name))
        status_note = (
            ", ".join(st["status"]) if st["status"] else "모든 상태"
        )  # the status picker narrows only the records
        tiles.append(
            _tile("조건에 맞는 메시지", f"{self._matching:,}", status_note, "matching_records")
        )
        self.kpis.value = (
            '<div class="kmsg-kpis" style="display:flex;flex-wrap:wrap;gap:8px">'
            + "".join(tiles)
            + "</div>"
        )

    # ------------------------------------------------------------------ choices

    def _choices(self) -> tuple[list[str], list[str], date, date]:
        """The pickers' providers and types and the first and last request day.

        One group-by of (provider, type) over the whole lake; in a lake partitioned by
        request day it reads the partition's day instead of the request times, and the
        first and last request times come from the first and last day's files only.
        """
        current = self.analytics.store.current()
        at = pl.col("requested_at")
        if CURRENT_PARTITION in current.collect_schema().names():
            day = pl.col(CURRENT_PARTITION)
            pairs = (
                current.group_by("provider_id", "type")
                .agg(day.min().alias("first"), day.max().alias("last"))
                .collect(engine="streaming")
            )
            days = [
                d
                for d in (pairs.get_column("first").min(), pairs.get_column("last").max())
                if isinstance(d, date)
            ]
            edges = (
                current.filter(day.is_in(days))
                .select(at.min().alias("first"), at.max().alias("last"))
                .collect()
                .row(0)
            )
        else:
            pairs = (
                current.group_by("provider_id", "type")
                .agg(at.min().alias("first"), at.max().alias("last"))
                .collect(engine="streaming")
            )
            edges = (pairs.get_column("first").min(), pairs.get_column("last").max())
        providers = sorted(p for p in pairs.get_column("provider_id").unique() if p is not None)
        types = sorted(t for t in pairs.get_column("type").unique() if t is not None)
        first, last = edges
        today = datetime.now(UTC).astimezone(self.zone).date()
        first_day = first.astimezone(self.zone).date() if isinstance(first, datetime) else today
        last_day = last.astimezone(self.zone).date() if isinstance(last, datetime) else today
        return providers, types, first_day, last_day


#: what the maturity tab says while the background prepares its rollup
_PREPARING: Final = "⏳ 성숙 곡선을 준비하는 중입니다 (백그라운드에서 계산 후 바로 그려집니다)"


def _check_buckets(s: datetime, e: datetime, every: str) -> None:
    count = (e - s).total_seconds() / _BUCKET_SECONDS.get(every, 86_400)
    if count > _MAX_BUCKETS:
        msg = f"at most {_MAX_BUCKETS:,} buckets: pick a larger bucket or a shorter date range"
        _invalid("bucket", every, msg)


def _as_date(value: date | datetime | str, name: str, zone: ZoneInfo) -> date:
    if isinstance(value, datetime):
        return value.astimezone(zone).date() if value.tzinfo else value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip()[:10])
        except ValueError:
            pass
    _invalid(name, value, "a date such as '2026-11-01'")


def _empty_page(store: Any, flt: RecordFilter, limit: int) -> pl.DataFrame:
    """No records, with the table's columns and types (read from the query plan only)."""
    schema = store.list_records(flt, limit).select(_RECORD_COLUMNS).collect_schema()
    return pl.DataFrame(schema=schema)


def _records_html(page: pl.DataFrame, zone: ZoneInfo) -> str:
    if page.is_empty():
        return "<p><i>조건에 맞는 메시지가 없습니다</i></p>"
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{c}</th>" for c in page.columns)
    rows = []
    for row in page.iter_rows(named=True):
        cells = []
        for k, v in row.items():
            if isinstance(v, datetime):
                v = v.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
            text = "" if v is None else str(v)
            cells.append(
                f"<td data-col='{k}' style='padding:2px 8px;border-top:1px solid #eef0f3'>"
                f"{html.escape(text)}</td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        "<div style='overflow-x:auto'><table class='kmsg-records' "
        "style='border-collapse:collapse;font-size:12px'>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def explore(
    lake: Any,
    *,
    start: date | datetime | str | None = None,
    end: date | datetime | str | None = None,
    tz: str = "UTC",
    min_n: int = m.DEFAULT_MIN_N,
    page_size: int = 20,
    chart_view: ChartView | None = None,
    lazy: bool = True,
    hash_key: Any = None,
    prepare: bool = True,
) -> Explorer:
    """Open the explorer dashboard on a lake (or a store, a service, a ``DeliveryAnalytics``).

    Parameters
    ----------
    lake
        A lake directory, a tracking store or service, or a ``DeliveryAnalytics``.
    start, end
        The first date range (default: the 30 days up to the lake's last request).
    tz
        Time zone of dates, buckets and hours (e.g. ``"Asia/Seoul"``).
    min_n
        Denominators under this show "not enough data".
    page_size
        Records per table page.
    chart_view
        ``"interactive"`` or ``"svg"`` (see :class:`Explorer`).
    lazy
        Compute only the visible tab's charts.
    prepare
        Start the rate-maturity rollup in the background right after opening, so the
        maturity tab answers any filter at once (see :meth:`Explorer.wait_prepared`).

    Returns
    -------
    Explorer
        Display it (last expression of a cell); drive it through ``.controls``.
    """
    from ._analytics import DeliveryAnalytics

    if isinstance(lake, DeliveryAnalytics):
        return Explorer(
            lake,
            start=start,
            end=end,
            page_size=page_size,
            chart_view=chart_view,
            lazy=lazy,
            prepare=prepare,
        )
    analytics = DeliveryAnalytics(lake, hash_key=hash_key, tz=tz, min_n=min_n)
    try:
        return Explorer(
            analytics,
            start=start,
            end=end,
            page_size=page_size,
            chart_view=chart_view,
            lazy=lazy,
            owned=True,
            prepare=prepare,
        )
    except BaseException:
        analytics.close()
        raise
