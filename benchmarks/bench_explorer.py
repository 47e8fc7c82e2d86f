"""Benchmark the explorer widget and its speed targets on an existing lake.

Usage::

    python benchmarks/bench_explorer.py [--lake /tmp/scale/n10m/lake] [--k 1] [--out r.json]
        [--only open,provider,...] [--skip failover,maturity] [--chart-view interactive]
        [--no-prepare]

Target, at 10M messages on this machine: opening the explorer under 3 s, each
interaction (change a control and redraw what is on screen) under 1 s.

Each of ``--k`` runs is a fresh process that opens ``kmsg_analytics.explore(lake)`` and
drives it from code as the tests do, timing each step end to end (the control's
``value`` is set and the call returns once the KPI tiles, the record table and the
visible tab's charts are recomputed and handed to their widgets):

=============  ===================================================================
step           what is set
=============  ===================================================================
``open``       ``explore(lake)``: pickers' choices, the last 30 days, overview tab
``prepared``   waiting for the rate-maturity rollup the explorer starts in the background
               right after opening (what is left of it; skip this step to drive the
               tabs while it runs, as an impatient user would)
``latency``    the latency tab (then ``failures``, ``failover``, ``maturity``)
``overview``   back to the overview tab (answers cached: what a revisit costs)
``provider``   the provider picker: one provider
``type``       the type picker: ``SMS``
``status``     the status picker: ``FAILED`` (narrows the table and the status mix)
``bucket``     the bucket: a week
``definition`` the rate definition: ``delivered_of_finalized``
``dates``      the date range: the last 7 days of the window
``next_page``  the table's next page; ``last_page``: its last page
``m_type``     back on the maturity tab: the type picker ``LMS`` (then ``m_definition``:
               ``reached``, ``m_dates``: the last 14 days): curves of the rollup
=============  ===================================================================

``--no-prepare`` opens the explorer without the background rollup (the maturity tab then
builds it on its first visit).

**Baseline**, in the same process right after each step: the bare calls a notebook
would make for the same view without the widget, on a separate
:class:`~kmsg_analytics.DeliveryAnalytics` over the same lake: the
``DeliveryAnalytics`` methods the view shows (``analytics`` column: ``summary`` for
the tiles, ``rates`` for the overview, ``latency``, ``failures`` and an hourly
``rates`` for the failures tab, ``failover_funnel``, ``rate_maturity``) plus, when
the record table changes, ``store.count_records`` and ``store.list_records(...)`` of
the page (``table`` column). ``ratio`` is the widget's time over the whole baseline;
``over`` is the widget's time minus the analytics calls (its own work: choices,
paging, charts, widget updates). Steps whose answers the widget has cached keep a
baseline of zero.

Peak RSS is the worker's ``VmHWM`` (interpreter and imports included); the load
average is printed per step, since the machine is shared. The lake is only read; the
run checks that no file under it changed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

KEY = "bench-key-0123456789"  # the key bench_lake.py / bench_scale.py build lakes with
DEFAULT_LAKE = Path("/tmp/scale/n10m/lake")
STEPS = (
    "open",
    "prepared",
    "latency",
    "failures",
    "failover",
    "maturity",
    "overview",
    "provider",
    "type",
    "status",
    "bucket",
    "definition",
    "dates",
    "next_page",
    "last_page",
    "m_type",
    "m_definition",
    "m_dates",
)
TARGETS = {"open": 3.0}  # seconds; every other step: 1 s
BACKGROUND = ("prepared",)  # not an interaction: no target


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident set size (``VmHWM``), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tree_stamp(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``root``: the lake must not change."""
    out: dict[str, tuple[int, int]] = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            out[path] = (st.st_size, st.st_mtime_ns)
    return out


# =========================================================================== worker


def worker(
    lake: Path, hash_key: str, tz: str, chart_view: str, steps: list[str], prepare: bool = True
) -> dict[str, Any]:
    """Open the explorer in this fresh process and drive it; time each step and its baseline."""
    t0 = time.perf_counter()
    import polars as pl

    from kmsg_analytics import DeliveryAnalytics, RecordFilter
    from kmsg_analytics.widgets import _RECORD_COLUMNS, TABS, explore

    import_s = time.perf_counter() - t0
    zone = ZoneInfo(tz)
    tab_index = {name: i for i, name in enumerate(TABS)}
    base_an = DeliveryAnalytics(lake, hash_key=hash_key, tz=tz)
    rows: list[dict[str, Any]] = []

    def window(st: dict[str, Any]) -> tuple[datetime, datetime]:
        s_day: date = st["start"]
        e_day: date = st["end"]
        return (
            datetime.combine(s_day, dtime.min, zone).astimezone(UTC),
            datetime.combine(e_day, dtime.max, zone).astimezone(UTC),
        )

    def baseline(
        st: dict[str, Any], *, summary: bool, figures: bool, table: int | None
    ) -> dict[str, float]:
        """The bare calls for the view in ``st``: tiles, its tab's figures, the table page."""
        an = base_an
        s, e = window(st)
        providers = list(st["provider"]) or None
        types = list(st["type"]) or None
        out = {"analytics": 0.0, "table": 0.0}
        calls: list[Callable[[], Any]] = []
        if summary:
            calls.append(lambda: an.summary(s, e, provider_id=providers, type=types))
        view = st["view"]
        if figures and view == "overview":
            calls.append(
                lambda: an.rates(
                    s,
                    e,
                    every=st["bucket"],
                    by="provider_id",
                    definition=st["definition"],
                    provider_id=providers,
                    type=types,
                )
            )
        elif figures and view == "latency":
            calls.append(
                lambda: an.latency(s, e, by="provider_id", provider_id=providers, type=types)
            )
        elif figures and view == "failures":
            calls.append(lambda: an.failures(s, e, provider_id=providers, type=types))
            calls.append(
                lambda: an.rates(
                    s,
                    e,
                    every="1h",
                    definition=st["definition"],
                    provider_id=providers,
                    type=types,
                )
            )
        elif figures and view == "failover":
            calls.append(lambda: an.failover_funnel(s, e, provider_id=providers))
        elif figures and view == "maturity":
            calls.append(
                lambda: an.rate_maturity(
                    s, e, definition=st["definition"], provider_id=providers, type=types
                )
            )
        if calls:
            started = time.perf_counter()
            for call in calls:
                call()
            out["analytics"] = time.perf_counter() - started
        if table is not None:
            flt = RecordFilter(
                requested_at_from=s,
                requested_at_to=e,
                provider_id=providers,
                type=types,
                status=list(st["status"]) or None,
            )
            started = time.perf_counter()
            base_an.store.count_records(flt)
            base_an.store.list_records(flt, 20, table * 20).select(_RECORD_COLUMNS).collect()
            out["table"] = time.perf_counter() - started
        return out

    def record(name: str, took: float, dash: Any, base: dict[str, float]) -> None:
        rows.append(
            {
                "step": name,
                "widget_s": took,
                "analytics_s": base["analytics"],
                "table_s": base["table"],
                "widget_timings": {k: round(v, 4) for k, v in dash.timings.items()},
                "error": dash.error,
                "load1": os.getloadavg()[0],
                "rss_mb": peak_rss_mb(),
            }
        )
        total = base["analytics"] + base["table"]
        log(
            f"  {name:11s} widget {took:7.3f} s  analytics {base['analytics']:7.3f} s  "
            f"table {base['table']:6.3f} s  ratio "
            f"{(took / total) if total else float('nan'):5.2f}  load {os.getloadavg()[0]:.2f}"
            + (f"  ERROR {dash.error}" if dash.error else "")
        )

    def step(
        name: str,
        action: Callable[[], None],
        *,
        figures: bool,
        table: bool,
        summary: bool = False,
        skippable: bool = False,
    ) -> None:
        if name not in steps:
            if not skippable:
                action()  # keep the sequence of states; untimed
            return
        started = time.perf_counter()
        action()
        took = time.perf_counter() - started
        st = dash.state()
        base = baseline(st, summary=summary, figures=figures, table=dash.page if table else None)
        record(name, took, dash, base)

    started = time.perf_counter()
    dash = explore(lake, hash_key=hash_key, tz=tz, chart_view=chart_view, prepare=prepare)  # type: ignore[arg-type]
    open_s = time.perf_counter() - started
    rss_open = peak_rss_mb()
    if "open" in steps:
        record("open", open_s, dash, baseline(dash.state(), summary=True, figures=True, table=0))
    c = dash.controls

    def prepared() -> None:
        dash.wait_prepared()

    step("prepared", prepared, figures=False, table=False, skippable=True)
    prepared_s = time.perf_counter() - started - open_s if "prepared" in steps else None

    def show(tab: str) -> Callable[[], None]:
        def go() -> None:
            c["view"].selected_index = tab_index[tab]

        return go

    for tab in ("latency", "failures", "failover", "maturity"):
        step(tab, show(tab), figures=True, table=False, skippable=True)
    step("overview", show("overview"), figures=False, table=False)

    def pick(name: str, value: Any) -> Callable[[], None]:
        def go() -> None:
            c[name].value = value

        return go

    provider = c["provider"].options[-1]
    step("provider", pick("provider", (provider,)), figures=True, table=True, summary=True)
    step("type", pick("type", ("SMS",)), figures=True, table=True, summary=True)
    step("status", pick("status", ("FAILED",)), figures=False, table=True)
    step("bucket", pick("bucket", "1w"), figures=True, table=False)
    step("definition", pick("definition", "delivered_of_finalized"), figures=True, table=False)
    week = c["end"].value - timedelta(days=6)
    step("dates", pick("start", week), figures=True, table=True, summary=True)
    step("next_page", lambda: dash.next_button.click(), figures=False, table=True)
    step("last_page", lambda: dash.go_to_page(10**9), figures=False, table=True)
    if any(name.startswith("m_") for name in steps):
        show("maturity")()  # untimed: back to the maturity tab
    step("m_type", pick("type", ("LMS",)), figures=True, table=True, summary=True)
    step("m_definition", pick("definition", "reached"), figures=True, table=False)
    step(
        "m_dates",
        pick("start", c["end"].value - timedelta(days=13)),
        figures=True,
        table=True,
        summary=True,
    )
    dash.close()
    base_an.close()
    return {
        "import_s": import_s,
        "open_s": open_s,
        "prepared_after_open_s": prepared_s,
        "rss_after_open_mb": rss_open,
        "peak_rss_mb": peak_rss_mb(),
        "steps": rows,
        "polars": pl.__version__,
    }


# =========================================================================== driver


def run_worker(args: argparse.Namespace, steps: list[str]) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "_worker",
        str(args.lake),
        args.key,
        args.tz,
        args.chart_view,
        ",".join(steps),
        "0" if args.no_prepare else "1",
    ]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        msg = f"worker failed ({proc.returncode})"
        raise RuntimeError(msg)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_avg"] = round((load + os.getloadavg()[0]) / 2, 2)
    return result


def summarize(runs: list[dict[str, Any]], steps: list[str]) -> list[dict[str, Any]]:
    table = []
    for name in steps:
        found = [r for run in runs for r in run["steps"] if r["step"] == name]
        if not found:
            continue
        widget = statistics.median(r["widget_s"] for r in found)
        analytics = statistics.median(r["analytics_s"] for r in found)
        tbl = statistics.median(r["table_s"] for r in found)
        base = analytics + tbl
        target = TARGETS.get(name, 1.0)
        table.append(
            {
                "step": name,
                "widget_s": round(widget, 3),
                "analytics_s": round(analytics, 3),
                "table_s": round(tbl, 3),
                "ratio": round(widget / base, 2) if base else None,
                "over_s": round(widget - analytics, 3),
                "target_s": target,
                "result": "bg" if name in BACKGROUND else "PASS" if widget < target else "FAIL",
                "errors": [r["error"] for r in found if r["error"]],
                "load1": round(statistics.median(r["load1"] for r in found), 2),
                "widget_timings": found[-1]["widget_timings"],
            }
        )
    return table


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":
        lake, key, tz, view, names, prepare = argv[1:7]
        result = worker(Path(lake), key, tz, view, names.split(","), prepare == "1")
        print(json.dumps(result, default=str))
        return 0
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--lake", type=Path, default=DEFAULT_LAKE, help="the lake (only read)")
    p.add_argument("--key", default=KEY, help="the lake's number-hash key")
    p.add_argument("--tz", default="UTC", help="the explorer's time zone")
    p.add_argument("--k", type=int, default=1, help="runs, each in a fresh process (median)")
    p.add_argument("--chart-view", default="interactive", choices=("interactive", "svg"))
    p.add_argument("--only", help="comma-separated steps to time (default all)")
    p.add_argument("--skip", help="comma-separated steps not to time")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    p.add_argument(
        "--no-prepare",
        action="store_true",
        help="open without the background rate-maturity rollup (the tab builds it itself)",
    )
    args = p.parse_args(argv)
    steps = list(STEPS)
    if args.only:
        steps = [s for s in args.only.split(",") if s]
    if args.skip:
        steps = [s for s in steps if s not in args.skip.split(",")]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        p.error(f"unknown steps {unknown}; known: {', '.join(STEPS)}")
    if not (args.lake / "_lake.json").is_file():
        p.error(f"no lake at {args.lake}")
    if args.chart_view == "interactive":
        from kmsg_analytics.widgets import _offline_chart_class

        t0 = time.perf_counter()
        _offline_chart_class()  # the offline bundle is built once per machine: not timed
        log(f"chart bundle ready in {time.perf_counter() - t0:.2f} s")
    before = tree_stamp(args.lake)
    load_start = os.getloadavg()
    runs = []
    for i in range(args.k):
        log(f"run {i + 1}/{args.k} (fresh process) on {args.lake}")
        runs.append(run_worker(args, steps))
    load_end = os.getloadavg()
    after = tree_stamp(args.lake)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    table = summarize(runs, steps)
    print(
        f"\n{'step':11s} {'widget s':>9s} {'analytics':>9s} {'table':>7s} {'ratio':>6s} "
        f"{'over s':>7s} {'target':>6s} result"
    )
    for row in table:
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        print(
            f"{row['step']:11s} {row['widget_s']:9.3f} {row['analytics_s']:9.3f} "
            f"{row['table_s']:7.3f} {ratio:>6s} {row['over_s']:7.3f} {row['target_s']:6.1f} "
            f"{row['result']}" + (f" ERROR {row['errors'][0]}" if row["errors"] else "")
        )
    imports = statistics.median(r["import_s"] for r in runs)
    peak = max(r["peak_rss_mb"] for r in runs)
    at_open = max(r["rss_after_open_mb"] for r in runs)
    print(f"\nimport kmsg_analytics.widgets (fresh process, not in 'open'): {imports:.2f} s")
    print(f"peak RSS (VmHWM): {peak:.0f} MB (after open: {at_open:.0f} MB)")
    waited = [r["prepared_after_open_s"] for r in runs if r["prepared_after_open_s"] is not None]
    if waited:
        ready = statistics.median(waited)
        print(f"rate-maturity rollup ready {ready:.2f} s after open (background)")
    print(
        f"load average: start {load_start[0]:.2f} {load_start[1]:.2f}, "
        f"end {load_end[0]:.2f} {load_end[1]:.2f}"
    )
    if changed:
        print(f"WARNING: {len(changed)} files under the lake changed, e.g. {changed[0]}")
    if args.out:
        doc = {
            "lake": str(args.lake),
            "k": args.k,
            "chart_view": args.chart_view,
            "table": table,
            "runs": runs,
            "import_s": imports,
            "peak_rss_mb": peak,
            "load_start": load_start,
            "load_end": load_end,
            "lake_changed": changed,
        }
        args.out.write_text(json.dumps(doc, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
