"""What keeps ``kmsg-analytics import`` fast: lazy public names, and what a start-up loads."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

import kmsg_analytics
from kmsg_analytics._schema import SNAPSHOT_SCHEMA

INIT = Path(kmsg_analytics.__file__)


def _typed_imports() -> dict[str, str]:
    """The names imported in ``__init__``'s ``TYPE_CHECKING`` block, and their modules."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If):
            for item in node.body:
                if isinstance(item, ast.ImportFrom):
                    for alias in item.names:
                        found[alias.asname or alias.name] = "." * item.level + (item.module or "")
    return found


def test_lazy_names_match_the_typed_imports() -> None:
    """Each public name loads from the module mypy and readers are told it comes from."""
    lazy = dict(kmsg_analytics._LAZY)
    assert lazy.pop("explore") == ".widgets"
    assert lazy == _typed_imports()
    assert set(kmsg_analytics.__all__) == {*lazy, "explore", "__version__"}


def test_a_lazy_name_is_the_module_object() -> None:
    from kmsg_analytics._lake import ParquetTrackingStore
    from kmsg_analytics._records import TERMINAL_STATUSES

    assert kmsg_analytics.ParquetTrackingStore is ParquetTrackingStore
    assert kmsg_analytics.TERMINAL_STATUSES is TERMINAL_STATUSES
    assert "ParquetTrackingStore" in dir(kmsg_analytics)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(kmsg_analytics, "no_such_name")  # noqa: B009


def _loaded_after(code: str) -> list[str]:
    watched = (
        "kmsg_analytics._analytics",
        "kmsg_analytics._gateways",
        "kmsg_analytics._objectlake",
        "kmsg_analytics._report",
        "kmsg_analytics._doctor",
        "kmsg_analytics._runner",
        "pandas",
        "ibis",
        "altair",
    )
    report = f"print(json.dumps([m for m in {watched!r} if m in sys.modules]))"
    script = f"{code}\nimport json, sys\n{report}"
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


def test_import_command_path_loads_only_what_it_uses() -> None:
    """The import's start-up is on its clock: no analytics, gateways, reports or pandas."""
    assert _loaded_after("import kmsg_analytics") == []
    assert _loaded_after("import kmsg_analytics.cli") == []
    assert _loaded_after("import kmsg_analytics._kmsg_import") == []


def _chunk(times: list[datetime]) -> pl.DataFrame:
    n = len(times)
    return pl.DataFrame(
        {
            "message_id": [f"m{i}" for i in range(n)],
            "provider_id": ["solapi"] * n,
            "type": ["SMS"] * n,
            "status": ["SENT"] * n,
            "to": ["010-1234-5678"] * n,
            "requested_at": times,
        },
        schema_overrides={"requested_at": pl.Datetime("us", "UTC")},
    ).with_columns(__i=pl.int_range(pl.len(), dtype=pl.UInt32))


def test_native_times_are_kept_between_the_bounds_only() -> None:
    """Times from 2000-01-01 (included) to 2200-01-01 (excluded), as a plain-Python check."""
    from kmsg_analytics._kmsg_convert import Converter, NumberHasher
    from kmsg_analytics._phone import HashKey

    low, high = datetime(2000, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)
    tick = timedelta(microseconds=1)
    times = [low - tick, low, low + tick, high - tick, high, high + tick]
    conv = Converter(
        timestamps="date", hasher=NumberHasher(HashKey("test-key-123")), keep_numbers=False
    )
    good, bad = conv.convert(_chunk(times))
    expected = [f"m{i}" for i, t in enumerate(times) if low <= t < high]
    assert good.column("message_id").to_pylist() == expected
    assert good.column("requested_at").to_pylist() == [t for t in times if low <= t < high]
    assert sorted(bad.get_column("message_id").to_list()) == sorted(
        f"m{i}" for i, t in enumerate(times) if not low <= t < high
    )
    assert set(bad.get_column("column").to_list()) == {"requested_at"}
    assert good.schema == SNAPSHOT_SCHEMA
