"""The explorer in a real browser: JupyterLab on 127.0.0.1, headless Chromium, Selenium.

Opens ``notebooks/03-explorer.ipynb`` against the session's small demo lake, runs it,
checks that the KPI tiles and a chart are drawn, picks a gateway in the provider
picker like a person would, and checks that the KPI tiles show the new numbers (the
same ones ``DeliveryAnalytics.summary`` gives) and that the chart was drawn again.

Skipped (with the reason) only where Chromium, its driver, Selenium or JupyterLab is
not installed; ``.ci/run`` installs them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kmsg_analytics._analytics import DeliveryAnalytics
from kmsg_analytics._cli_report import (
    BrowserUnavailable,
    browser_paths,
    headless_chromium,
    jupyter_lab,
    kpi_values,
    run_notebook_in_lab,
)
from tests.test_report import chart_cache, demo_lake

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03-explorer.ipynb"


def _requirements() -> str | None:
    try:
        browser_paths()
    except BrowserUnavailable as err:
        return str(err)
    for module in ("selenium", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    missing = _requirements()
    if missing is not None:
        pytest.skip(f"no browser test here: {missing}")
    lake = demo_lake(tmp_path_factory)
    cache = chart_cache(tmp_path_factory)
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    env = dict(os.environ, KMSG_ANALYTICS_LAKE=str(lake), KMSG_ANALYTICS_CACHE_DIR=str(cache))
    with jupyter_lab(root, env=env) as url:
        yield url, lake


def _wait(driver: Any, check: Any, what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check(driver)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


_MARK_CHARTS = """
const drawn = [...document.querySelectorAll('.kmsg-explorer .vega-embed canvas, '
  + '.kmsg-explorer .vega-embed svg.marks')].filter(el => el.getBoundingClientRect().width > 0);
drawn.forEach(el => el.dataset.kmsgSeen = '1');
return drawn.length;
"""

_NEW_CHARTS = """
return [...document.querySelectorAll('.kmsg-explorer .vega-embed canvas, '
  + '.kmsg-explorer .vega-embed svg.marks')]
  .filter(el => el.getBoundingClientRect().width > 0 && !el.dataset.kmsgSeen).length;
"""


def test_explorer_in_jupyterlab(lab: tuple[str, Path], tmp_path: Path) -> None:
    url, lake = lab
    with headless_chromium() as driver:
        run_notebook_in_lab(driver, url, NOTEBOOK.name)
        before = _wait(driver, lambda d: kpi_values(d).get("total"), "the KPI tiles")
        _wait(driver, lambda d: d.execute_script(_MARK_CHARTS), "the first charts")
        driver.save_screenshot(str(tmp_path / "before.png"))

        # pick the first gateway in the provider picker, as a person would
        select = driver.find_element(
            "css selector", ".kmsg-explorer .widget-select-multiple select"
        )
        option = select.find_elements("css selector", "option")[0]
        provider = option.text
        option.click()

        after = _wait(
            driver,
            lambda d: (v := kpi_values(d).get("total")) and v != before and v,
            "the KPI tiles to change",
        )
        redrawn = _wait(driver, lambda d: d.execute_script(_NEW_CHARTS), "a chart re-render")
        assert redrawn >= 1
        driver.save_screenshot(str(tmp_path / "after.png"))
        errors = driver.find_elements("css selector", ".kmsg-explorer .kmsg-error")
        assert not [e.text for e in errors if e.is_displayed()]

    # the tiles show what the analytics API says for that gateway and the same dates
    zone = ZoneInfo("Asia/Seoul")
    with DeliveryAnalytics(lake, tz="Asia/Seoul") as an:
        from kmsg_analytics.widgets import explore

        dash = explore(an, chart_view="svg")
        end_day = dash.controls["end"].value
        start_day = dash.controls["start"].value
        start = datetime.combine(start_day, dtime.min, zone).astimezone(UTC)
        end = datetime.combine(end_day, dtime.max, zone).astimezone(UTC)
        label = dash.controls["provider"].options[0]
        dash.widget.close()
        whole = an.summary(start, end).total
        one = an.summary(start, end, provider_id=label).total
    assert before == f"{whole:,}"
    assert after == f"{one:,}", (provider, label)
