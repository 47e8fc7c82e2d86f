"""The public surface: what ``import kmsg_analytics`` pulls in, and what ``__all__`` promises."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import kmsg_analytics

#: Extras of the ``notebook`` install: the headless paths must never import them.
NOTEBOOK_ONLY = ("ipywidgets", "altair", "vl_convert", "anywidget")

HEADLESS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from datetime import UTC, datetime

    import kmsg_analytics
    from kmsg_analytics import (
        DeliveryTrackingService, InMemoryTrackingStore, ParquetTrackingStore, RecordFilter,
    )

    after_import = sorted(m for m in NOTEBOOK_ONLY if m in sys.modules)

    class Gateway:
        id = "solapi"

    def pair(i):
        context = {"messageId": f"m{i}", "timestamp": 1793491200000 + i * 3_600_000,
                   "options": {"type": "SMS", "to": "010-1234-5678"}}
        result = {"messageId": f"m{i}", "providerId": "solapi", "providerMessageId": f"G{i}",
                  "type": "SMS", "to": "010-1234-5678"}
        return context, result

    for store in (InMemoryTrackingStore(hash_key="test-key-123"),
                  ParquetTrackingStore(sys.argv[1], hash_key="test-key-123")):
        with DeliveryTrackingService([Gateway()], store=store) as svc:
            svc.record_send(*pair(0))
            svc.record_sends([pair(i) for i in range(1, 6)])
            assert svc.count_records(status="SENT") == 6
            svc.list_records(RecordFilter(provider_id="solapi"), limit=3).collect()
            svc.count_by(group_by=["status", "requested_at_day"]).collect()
            svc.get_record("m3")
            svc.list_due(datetime(2027, 1, 1, tzinfo=UTC))
            if isinstance(store, ParquetTrackingStore):
                store.compact()
                store.history().collect()
                svc.count_records(to="010-1234-5678")

    after_use = sorted(m for m in NOTEBOOK_ONLY if m in sys.modules)
    print(json.dumps({"after_import": after_import, "after_use": after_use}))
    """
)


def test_headless_paths_import_no_notebook_extras(tmp_path: Path) -> None:
    script = f"NOTEBOOK_ONLY = {NOTEBOOK_ONLY!r}\n{HEADLESS_SCRIPT}"
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("KMSG_ANALYTICS_HASH_KEY", None)
    env["KMSG_ANALYTICS_KEY"] = "k1:" + "ab" * 32  # keys given: no key file is created
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "lake")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found == {"after_import": [], "after_use": []}
    # no key file was needed: every store was given its key
    assert not (tmp_path / "config").exists()


def test_cli_module_imports_no_notebook_extras() -> None:
    if importlib.util.find_spec("kmsg_analytics.cli") is None:  # pragma: no cover
        return
    code = (
        "import sys, kmsg_analytics.cli\n"
        f"print(sorted(m for m in {NOTEBOOK_ONLY!r} if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def _isort_key(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: CONSTANTS, then Classes, then everything else."""
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted_and_unique() -> None:
    names = list(kmsg_analytics.__all__)
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]
    assert names in (sorted(names), sorted(names, key=_isort_key))
    assert all(isinstance(n, str) for n in names)


def test_every_name_in_all_is_importable() -> None:
    for name in kmsg_analytics.__all__:
        assert hasattr(kmsg_analytics, name), name
        namespace: dict[str, object] = {}
        exec(f"from kmsg_analytics import {name}", namespace)
        assert namespace[name] is getattr(kmsg_analytics, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from kmsg_analytics import *", namespace)
    namespace.pop("__builtins__", None)
    assert sorted(namespace) == sorted(kmsg_analytics.__all__)


def test_public_names_are_all_listed() -> None:
    """Nothing public hides outside ``__all__`` (submodules and ``annotations`` aside)."""
    public = {
        name
        for name, value in vars(kmsg_analytics).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert public <= set(kmsg_analytics.__all__), sorted(public - set(kmsg_analytics.__all__))


def test_exported_classes_say_where_they_live() -> None:
    """Public classes come from our package (not re-exported third-party types)."""
    for name in kmsg_analytics.__all__:
        value = getattr(kmsg_analytics, name)
        if isinstance(value, type):
            assert value.__module__.startswith("kmsg_analytics"), (name, value.__module__)
