"""The ``report`` and ``screenshots`` commands of ``kmsg-analytics`` (wired in by :mod:`.cli`).

``kmsg-analytics report --lake PATH --since 30d --out report.html [--format json|csv|md]``
writes the batch report (:func:`kmsg_analytics._report.build_report`); progress goes to
stderr, a bad window or an empty lake exits non-zero with a readable message.

``kmsg-analytics screenshots --lake PATH --out DIR`` writes every chart as PNG and SVG
and, where JupyterLab and Chromium are installed, a screenshot of the explorer
dashboard running in a real browser: JupyterLab on 127.0.0.1 and headless Chromium from
the system's packages, driven with Selenium (:func:`dashboard_screenshots`; the browser
test uses the same helpers).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from ._errors import KmsgAnalyticsError

__all__ = [
    "CHROMIUM_ARGS",
    "BrowserUnavailable",
    "add_report_parser",
    "browser_paths",
    "cmd_report",
    "cmd_screenshots",
    "dashboard_screenshots",
    "headless_chromium",
    "jupyter_lab",
    "kpi_values",
    "run_notebook_in_lab",
]

_DEFAULT_LAKE = Path("data") / "lake"

#: How Chromium is started: headless, no sandbox (root in CI), nothing phoning home.
CHROMIUM_ARGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1400,2000",
)


#: Optional modules the report's process does without: when installed, jsonschema
#: (imported by altair for the charts) imports rfc3987_syntax, which builds its IRI
#: grammar on import (about 2.5 s of CPU), only to check the "iri" string format that
#: no chart uses.
SKIPPED_IMPORTS: Final = ("rfc3987_syntax",)


def skip_slow_imports() -> None:
    """Mark :data:`SKIPPED_IMPORTS` as unavailable, unless jsonschema is imported already.

    Only for a process of our own (the ``report`` command): in it, jsonschema then
    checks every string format but those rfc3987_syntax would ("iri", "iri-reference").
    Does nothing when jsonschema was imported before (it has its checks by then).
    """
    if "jsonschema" in sys.modules:
        return
    modules: dict[str, Any] = sys.modules  # (a None entry: ``import name`` raises ImportError)
    for name in SKIPPED_IMPORTS:
        modules.setdefault(name, None)


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_report(args: argparse.Namespace) -> int:
    """Write the batch report of a lake."""
    from ._report import build_report

    skip_slow_imports()
    report = build_report(
        args.lake,
        out=args.out,
        since=args.since,
        start=args.start,
        end=args.end,
        format=args.format,
        tz=args.tz,
        charts=not args.no_charts,
        progress=None if args.quiet else _err,
    )
    if report.charts_note:
        _err(f"note: {report.charts_note}")
    p = report.provenance
    print(
        f"wrote {', '.join(str(x) for x in report.paths)}: {report.summary.total:,} messages "
        f"requested {p['window_start']} .. {p['window_end']}"
    )
    return 0


def cmd_screenshots(args: argparse.Namespace) -> int:
    """Write PNG/SVG files of every chart and, with a browser, of the explorer dashboard."""
    from ._analytics import DeliveryAnalytics
    from ._report import charts_for_demo

    out_dir = Path(args.out)
    with DeliveryAnalytics(args.lake, tz=args.tz) as analytics:
        written = charts_for_demo(analytics, out_dir / "charts", out=_err)
    for path in written:
        print(path)
    if args.no_dashboard:
        return 0 if written else 1
    try:
        shots = dashboard_screenshots(args.lake, out_dir, progress=_err)
    except BrowserUnavailable as err:
        _err(f"dashboard screenshot skipped: {err}")
        return 0 if written else 1
    for path in shots:
        print(path)
    return 0


def add_report_parser(sub: Any) -> None:
    """Add the ``report`` and ``screenshots`` commands to the ``kmsg-analytics`` parser."""
    report = sub.add_parser(
        "report",
        help="write the batch report (self-contained HTML, or JSON/CSV/Markdown)",
        description=(
            "Write the delivery report of one window: headline rates with their definitions, "
            "charts, tables and provenance. Numbers are masked."
        ),
    )
    report.add_argument("--lake", type=Path, default=_DEFAULT_LAKE)
    report.add_argument("--out", type=Path, default=Path("report.html"), help="file to write")
    report.add_argument(
        "--format", choices=("html", "json", "csv", "md"), default=None,
        help="default: from the --out suffix, else html",
    )  # fmt: skip
    report.add_argument(
        "--since", default=None, help="window length before --end, such as 30d, 12h, 2w"
    )
    report.add_argument("--start", default=None, help="window start (ISO time); instead of --since")
    report.add_argument(
        "--end", default=None, help="window end (ISO time, or 'now'); default: last request"
    )
    report.add_argument("--tz", default="UTC", help="time zone of buckets, e.g. Asia/Seoul")
    report.add_argument("--no-charts", action="store_true", help="tables only")
    report.add_argument("--quiet", action="store_true", help="no progress lines")
    report.set_defaults(func=_report_with_format)

    shots = sub.add_parser(
        "screenshots",
        help="PNG/SVG of every chart and a screenshot of the explorer dashboard",
    )
    shots.add_argument("--lake", type=Path, default=_DEFAULT_LAKE)
    shots.add_argument("--out", type=Path, default=Path("screenshots"))
    shots.add_argument("--tz", default="UTC")
    shots.add_argument(
        "--no-dashboard", action="store_true", help="charts only (no JupyterLab/Chromium)"
    )
    shots.set_defaults(func=cmd_screenshots)


def _report_with_format(args: argparse.Namespace) -> int:
    if args.format is None:
        suffix = Path(args.out).suffix.lower().lstrip(".")
        args.format = {"htm": "html", "markdown": "md"}.get(suffix, suffix)
        if args.format not in ("html", "json", "csv", "md"):
            args.format = "html"
    return cmd_report(args)


# --------------------------------------------------------------------------- the browser


class BrowserUnavailable(KmsgAnalyticsError):
    """JupyterLab, Selenium or Chromium (with its driver) is not installed here."""


def browser_paths() -> tuple[str, str]:
    """Chromium and chromedriver from the system (``apt-get install chromium chromium-driver``).

    ``KMSG_ANALYTICS_CHROMIUM`` / ``KMSG_ANALYTICS_CHROMEDRIVER`` override the lookup.
    """
    browser = os.environ.get("KMSG_ANALYTICS_CHROMIUM") or next(
        (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()),
        None,
    )
    driver = os.environ.get("KMSG_ANALYTICS_CHROMEDRIVER") or shutil.which("chromedriver")
    if browser is None or not Path(browser).exists():
        msg = "no Chromium installed (apt-get install chromium chromium-driver)"
        raise BrowserUnavailable(msg)
    if driver is None:
        msg = "no chromedriver installed (apt-get install chromium-driver)"
        raise BrowserUnavailable(msg)
    return browser, driver


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def jupyter_lab(
    root: Path, *, env: Mapping[str, str] | None = None, timeout: float = 120.0
) -> Iterator[str]:
    """Run JupyterLab on 127.0.0.1 serving ``root``; yields its base URL (token included).

    Settings, workspaces and runtime files live in a temporary folder; no update check
    or news is fetched. The server is stopped (its process group ended) on exit.
    """
    if importlib.util.find_spec("jupyterlab") is None:
        msg = "JupyterLab is not installed (pip install jupyterlab)"
        raise BrowserUnavailable(msg)
    port = _free_port()
    token = secrets.token_hex(16)
    home = Path(tempfile.mkdtemp(prefix="kmsg-lab-"))
    child_env = dict(os.environ if env is None else env)
    child_env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        IPYTHONDIR=str(home / "ipython"),
    )
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.news_url=None",
        "--ServerApp.allow_root=True",
    ]
    log = (home / "lab.log").open("wb")
    proc = subprocess.Popen(
        command, cwd=root, env=child_env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.flush()
                tail = (home / "lab.log").read_text(errors="replace")[-2000:]
                msg = f"JupyterLab exited with code {proc.returncode}: {tail}"
                raise BrowserUnavailable(msg)
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    msg = f"JupyterLab did not answer on {base} within {timeout:.0f} s"
                    raise BrowserUnavailable(msg) from None
                time.sleep(0.25)
        yield f"{base}/lab?token={token}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=20)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def headless_chromium(*, width: int = 1400, height: int = 2000) -> Iterator[Any]:
    """A Selenium driver of the system's headless Chromium with a fresh profile."""
    browser, driver_path = browser_paths()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        msg = "Selenium is not installed (pip install selenium)"
        raise BrowserUnavailable(msg) from err
    profile = Path(tempfile.mkdtemp(prefix="kmsg-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.set_script_timeout(300)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


_RUN_ALL: Final = """
const done = arguments[arguments.length - 1];
const path = arguments[0];
(async () => {
  for (let i = 0; i < 600 && !window.jupyterapp; i++) {
    await new Promise(r => setTimeout(r, 100));
  }
  const app = window.jupyterapp;
  await app.restored;
  const panel = await app.commands.execute('docmanager:open', {path: path});
  await panel.context.ready;
  await panel.sessionContext.ready;
  app.shell.activateById(panel.id);
  await panel.content.fullyRendered;
  const ok = await app.commands.execute('notebook:run-all-cells');
  for (let i = 0; i < 3000; i++) {
    const busy = panel.sessionContext.session?.kernel?.status === 'busy';
    const pending = panel.content.widgets.some(c => c.model.type === 'code' &&
      (c.promptNode?.textContent || '').includes('*'));
    if (!busy && !pending) break;
    await new Promise(r => setTimeout(r, 100));
  }
  const errors = panel.content.widgets
    .filter(c => c.model.type === 'code')
    .flatMap(c => c.model.outputs.toJSON())
    .filter(o => o.output_type === 'error')
    .map(o => o.ename + ': ' + o.evalue);
  done(JSON.stringify({ok: ok, errors: errors}));
})().catch(e => done(JSON.stringify({ok: false, errors: [String(e)]})));
"""


def run_notebook_in_lab(driver: Any, url: str, notebook: str, *, timeout: float = 300) -> None:
    """Open ``notebook`` in the JupyterLab at ``url`` and run all its cells; raise on errors."""
    driver.set_script_timeout(timeout)
    driver.get(url)
    answer = json.loads(driver.execute_async_script(_RUN_ALL, notebook))
    if answer.get("errors"):
        msg = f"running {notebook} in JupyterLab failed: {'; '.join(answer['errors'])}"
        raise KmsgAnalyticsError(msg)


def kpi_values(driver: Any) -> dict[str, str]:
    """The dashboard's KPI tiles on screen: key -> the value shown."""
    script = """
    const out = {};
    for (const tile of document.querySelectorAll('.kmsg-kpi')) {
      const value = tile.querySelector('.kmsg-kpi-value');
      out[tile.dataset.kpi] = value ? value.textContent : '';
    }
    return out;
    """
    return dict(driver.execute_script(script))


def _wait(driver: Any, check: Callable[[Any], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check(driver)
        if value:
            return value
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout:.0f} s waiting for {what}"
            raise KmsgAnalyticsError(msg)
        time.sleep(0.2)


def _explorer_notebook(path: Path, lake: Path) -> None:
    """A one-cell notebook that opens the explorer on ``lake`` (nbformat 4, no outputs)."""
    source = (
        "from kmsg_analytics.widgets import explore\n"
        f"dash = explore({str(lake)!r}, tz='Asia/Seoul')\n"
        "dash"
    )
    book = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "cells": [
            {
                "cell_type": "code",
                "id": "explorer",
                "metadata": {},
                "execution_count": None,
                "outputs": [],
                "source": source,
            }
        ],
    }
    path.write_text(json.dumps(book, indent=1), encoding="utf-8")


def dashboard_screenshots(
    lake: str | Path,
    out_dir: str | Path,
    *,
    progress: Callable[[str], object] | None = None,
) -> list[Path]:
    """Screenshots of the explorer dashboard in JupyterLab and headless Chromium.

    Writes ``dashboard.png`` (as opened) and ``dashboard-<tab>.png`` for each chart tab.
    Raises :class:`BrowserUnavailable` where JupyterLab, Selenium or Chromium is missing.
    """
    from .widgets import TABS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    browser_paths()
    root = Path(tempfile.mkdtemp(prefix="kmsg-explorer-"))
    written: list[Path] = []
    try:
        _explorer_notebook(root / "explorer.ipynb", Path(lake).resolve())
        with jupyter_lab(root) as url, headless_chromium() as driver:
            if progress is not None:
                progress(f"JupyterLab at {url.split('?')[0]}; running the explorer")
            run_notebook_in_lab(driver, url, "explorer.ipynb")
            _wait(driver, kpi_values, "the KPI tiles")
            _wait(driver, _chart_drawn, "a chart")
            for index, key in enumerate(TABS):
                if index:
                    tabs = driver.find_elements("css selector", ".kmsg-explorer .lm-TabBar-tab")
                    tabs[index].click()
                    time.sleep(1.0)
                    _wait(driver, _chart_drawn, f"the {key} charts")
                path = out / ("dashboard.png" if index == 0 else f"dashboard-{key}.png")
                _screenshot(driver, path)
                written.append(path)
                if progress is not None:
                    progress(f"wrote {path}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return written


def _chart_drawn(driver: Any) -> bool:
    script = """
    const root = document.querySelector('.kmsg-explorer');
    if (!root) return false;
    return [...root.querySelectorAll('.vega-embed canvas, .vega-embed svg.marks, .kmsg-chart svg')]
      .some(el => el.getBoundingClientRect().width > 0);
    """
    return bool(driver.execute_script(script))


def _screenshot(driver: Any, path: Path) -> None:
    element = driver.find_element("css selector", ".kmsg-explorer")
    driver.execute_script("arguments[0].scrollIntoView()", element)
    element.screenshot(str(path))
