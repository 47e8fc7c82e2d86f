"""The notebooks run top to bottom (nbclient) against a small lake the tests build.

They are committed without outputs; ``KMSG_ANALYTICS_LAKE`` points them at the lake.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.test_report import chart_cache, demo_lake

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_are_there_without_outputs() -> None:
    names = [p.name for p in NOTEBOOKS]
    assert names == [
        "01-quickstart.ipynb",
        "02-delivery-rate-analysis.ipynb",
        "03-explorer.ipynb",
    ]
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        nbformat.validate(book)
        for cell in book.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name} is committed with outputs"
                assert cell.execution_count is None, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(
    path: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lake = demo_lake(tmp_path_factory)
    monkeypatch.setenv("KMSG_ANALYTICS_LAKE", str(lake))
    monkeypatch.setenv("KMSG_ANALYTICS_CACHE_DIR", str(chart_cache(tmp_path_factory)))
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(
        book,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [
        out
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert errors == []
    outputs = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs]
    assert outputs, "the notebook showed nothing"
    assert os.environ["KMSG_ANALYTICS_LAKE"] == str(lake)
