"""``doctor``: every kind of damage we can inflict is found, and repair never deletes.

Each test copies one small lake built through the public API, damages it the way a
disk, a person or a killed process could (a truncated file, garbage, a file with other
columns, a batch published twice, a row in the wrong partition, a stray temporary file,
a dead writer's log), and checks that ``check_lake`` names the damage in plain words,
that ``repair=True`` moves the damaged file to ``_quarantine/`` byte for byte, and that
the lake answers correctly afterwards.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from kmsg_analytics import (
    SNAPSHOT_SCHEMA,
    DeliveryTrackingService,
    LakeCorruptError,
    ParquetTrackingStore,
    RecordFilter,
)
from kmsg_analytics._cli_admin import add_admin_parsers
from kmsg_analytics._doctor import DoctorReport, check_lake, lake_read_error
from tests._helpers import Gateway, send_pair

KEY = "test-key-123"
KEYS = {"k1": bytes(range(32))}
BASE = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
SENDER = "02-123-4567"


def open_lake(path: Path, **options: Any) -> ParquetTrackingStore:
    return ParquetTrackingStore(path, hash_key=KEY, keys=KEYS, **options)


def build(lake: Path) -> None:
    """Three requested days, two history files, polls, everything folded."""
    with open_lake(lake, flush_rows=10_000, flush_seconds=3600) as store:
        svc = DeliveryTrackingService([Gateway()], store=store)
        svc.record_sends(
            [send_pair(f"m{i:02d}", BASE + timedelta(hours=9 * i), sender=SENDER) for i in range(9)]
        )
        store.compact()
        svc.record_sends(
            [
                send_pair(f"n{i:02d}", BASE + timedelta(hours=9 * i + 1), sender=SENDER)
                for i in range(6)
            ]
        )
        polled = [r for r in (store.get(f"m{i:02d}") for i in range(0, 9, 2)) if r is not None]
        store.append_snapshots(
            [r.__class__(**{**_fields(r), "status": "DELIVERED"}) for r in polled], kind="poll"
        )
        store.compact(history=False)


def _fields(record: Any) -> dict[str, Any]:
    return {f: getattr(record, f) for f in record.__dataclass_fields__}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("pristine") / "lake"
    build(lake)
    return lake


@pytest.fixture
def lake(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "lake"
    shutil.copytree(pristine, copy)
    return copy


def history_files(lake: Path) -> list[Path]:
    return sorted((lake / "history").glob("*/*.parquet"))


def current_files(lake: Path) -> list[Path]:
    return sorted((lake / "current").glob("*/part-0.parquet"))


def kinds(report: DoctorReport, severity: str = "problem") -> set[str]:
    return {f.kind for f in report.findings if f.severity == severity}


def quarantined(lake: Path, original: Path) -> Path:
    rel = original.relative_to(lake)
    (found,) = list((lake / "_quarantine").glob(f"*/{rel}"))
    return found


def check_then_repair(lake: Path, problems: set[str], says: str) -> DoctorReport:
    """The check finds ``problems`` and ``says`` so; the repair leaves a healthy lake."""
    report = check_lake(lake, hash_key=KEY)
    assert problems <= kinds(report)
    assert says in str(report)
    fixed = check_lake(lake, hash_key=KEY, repair=True)
    assert fixed.ok, str(fixed)
    return fixed


def answers(lake: Path) -> tuple[int, list[tuple[str, str]]]:
    with open_lake(lake) as store:
        frame = store.current().select("message_id", "status").collect().sort("message_id")
        return store.count_records(RecordFilter()), list(frame.iter_rows())


# --------------------------------------------------------------------------- healthy


def test_a_healthy_lake_in_every_state(tmp_path: Path, pristine: Path) -> None:
    report = check_lake(pristine, hash_key=KEY, keys=KEYS)
    assert report.ok, str(report)
    assert kinds(report, "warning") == set()
    assert report.files_checked == len(list(pristine.rglob("*.parquet")))
    assert report.rows_checked > 0
    assert "healthy" in str(report)
    assert "<h4>" in report._repr_html_()
    assert any(f.kind == "key" for f in report.findings)
    # unfolded snapshots past the watermark are a normal state, not a problem
    lake = tmp_path / "lake"
    with open_lake(lake, flush_rows=10_000, flush_seconds=3600) as store:
        svc = DeliveryTrackingService([Gateway()], store=store)
        svc.record_sends([send_pair(f"x{i}", BASE, sender=SENDER) for i in range(4)])
    report = check_lake(lake, hash_key=KEY)
    assert report.ok, str(report)
    assert kinds(report, "warning") == set()
    assert check_lake(tmp_path / "nowhere").ok is False


# --------------------------------------------------------------------------- damage


def test_truncated_history_file(lake: Path) -> None:
    victim = history_files(lake)[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    fixed = check_then_repair(lake, {"unreadable"}, victim.name)
    assert quarantined(lake, victim).read_bytes() == data[: len(data) // 2]
    assert not victim.exists()
    lo, hi = (int(x) for x in re.findall(r"\d{20}", victim.name))
    assert any(f"{lo}–{hi}" in line for line in fixed.lost)
    # the report now says what was lost, as a warning, and the lake still answers
    again = check_lake(lake, hash_key=KEY)
    assert again.ok
    assert "lost" in kinds(again, "warning")
    assert answers(lake)[0] == 15


def test_garbage_current_file_is_rebuilt_from_history(lake: Path) -> None:
    before = answers(lake)
    victim = current_files(lake)[1]
    victim.write_bytes(b"PAR1 this is not a parquet file at all")
    report = check_lake(lake, hash_key=KEY)
    assert "unreadable" in kinds(report)
    # a query names the file and the doctor (through lake_read_error, or by itself once the
    # lake raises LakeCorruptError on reads)
    with pytest.raises((pl.exceptions.ComputeError, LakeCorruptError)) as err:
        answers(lake)
    found = (
        err.value if isinstance(err.value, LakeCorruptError) else lake_read_error(lake, err.value)
    )
    assert isinstance(found, LakeCorruptError)
    assert str(victim) in str(found)
    assert "kmsg-analytics doctor" in str(found)
    fixed = check_lake(lake, hash_key=KEY, repair=True)
    assert fixed.ok, str(fixed)
    assert any("rebuilt current/" in a for a in fixed.actions)
    assert quarantined(lake, victim).read_bytes().startswith(b"PAR1 this is not")
    assert answers(lake) == before


def test_file_with_other_columns(lake: Path) -> None:
    victim = history_files(lake)[-1]
    table = pq.read_table(victim)
    idx = table.schema.get_field_index("attempt_count")
    table = table.set_column(idx, "attempt_count", table["attempt_count"].cast(pa.int64()))
    pq.write_table(table, victim)
    check_then_repair(lake, {"schema"}, "attempt_count is int64, expected int32")
    assert pq.read_table(quarantined(lake, victim)).equals(table)


def test_a_batch_published_twice(lake: Path) -> None:
    source = history_files(lake)[-1]
    other = lake / "history" / "ingest_date=2020-01-01"
    other.mkdir()
    lo, hi = re.findall(r"\d{20}", source.name)
    twin = other / f"b-{lo}-{hi}-{'f' * 32}.parquet"
    shutil.copy(source, twin)
    check_then_repair(lake, {"seq-duplicate"}, "count twice")
    with open_lake(lake) as store:
        seqs = store.history().select("seq").collect()["seq"]
    assert seqs.n_unique() == seqs.len()
    assert len(list((lake / "_quarantine").glob("*/history/*/*.parquet"))) == 1


def test_a_row_in_the_wrong_partition(lake: Path) -> None:
    before = answers(lake)
    first, second = current_files(lake)[:2]
    moved = pq.read_table(first).slice(0, 1)
    pq.write_table(pa.concat_tables([pq.read_table(second), moved]), second)
    check_then_repair(lake, {"partition", "duplicate-message"}, "requested on other days")
    assert answers(lake) == before
    assert check_lake(lake, hash_key=KEY).ok


def test_a_wrong_gateway_flag(lake: Path) -> None:
    before = answers(lake)
    path = current_files(lake)[0]
    with pq.ParquetFile(path) as pf:
        table = pf.read()
    i = table.schema.get_field_index("has_gateway_id")
    flipped = pc.invert(table.column(i))  # what a rate of accepted messages counts
    pq.write_table(table.set_column(i, table.schema.field(i), flipped), path)
    check_then_repair(lake, {"gateway-flag"}, "disagrees with their provider_message_id")
    assert answers(lake) == before
    assert check_lake(lake, hash_key=KEY).ok


def test_stray_and_temporary_files(lake: Path) -> None:
    day = current_files(lake)[0].parent
    stray = day / "part-0.parquet.tmp-4242"
    stray.write_bytes(b"half a file")
    extra = lake / "history" / "notes.txt"
    extra.write_text("hello")
    debris = lake / "_staging" / "0123abcd.parquet"
    debris.write_bytes(b"PAR1 partial")
    report = check_lake(lake, hash_key=KEY)
    assert "stray" in kinds(report)
    assert "staging" in kinds(report, "warning")
    assert "part-0.parquet.tmp-4242" in str(report)
    fixed = check_lake(lake, hash_key=KEY, repair=True)
    assert fixed.ok, str(fixed)
    assert fixed.after is not None
    assert not [f for f in fixed.after if f.severity == "warning"]
    for path, data in ((stray, b"half a file"), (extra, b"hello"), (debris, b"PAR1 partial")):
        assert not path.exists()
        assert quarantined(lake, path).read_bytes() == data


DEAD_WRITER = """
import os, signal, sys
from datetime import UTC, datetime
from kmsg_analytics import DeliveryTrackingService, ParquetTrackingStore
class G:
    id = "solapi"
store = ParquetTrackingStore(sys.argv[1], hash_key="test-key-123", keys={"k1": bytes(range(32))},
                             flush_rows=10**6, flush_seconds=3600)
svc = DeliveryTrackingService([G()], store=store)
for i in range(7):
    svc.record_send(
        {"messageId": f"w{i}", "timestamp": "2026-11-02T10:00:00+00:00",
         "options": {"type": "SMS", "to": "010-1111-2222"}},
        {"messageId": f"w{i}", "providerId": "solapi", "providerMessageId": f"G{i}",
         "type": "SMS", "to": "010-1111-2222"},
    )
    print(f"w{i}", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_dead_writers_log(lake: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", DEAD_WRITER, str(lake)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(proc.stdout.split()) == 7
    report = check_lake(lake, hash_key=KEY)
    assert report.ok  # consistent, but something waits
    assert "wal" in kinds(report, "warning")
    assert "7 acknowledged rows" in str(report)
    without_key = check_lake(lake, repair=True)
    assert any("need the lake's hash key" in a for a in without_key.actions)
    fixed = check_lake(lake, hash_key=KEY, repair=True)
    assert any("published 7 acknowledged rows" in a for a in fixed.actions)
    assert fixed.after is not None
    assert "wal" not in {f.kind for f in fixed.after if f.severity == "warning"}
    assert answers(lake)[0] == 22


def test_state_and_manifest(lake: Path) -> None:
    state = json.loads((lake / "_state.json").read_text())
    (lake / "_state.json").write_text(json.dumps({**state, "watermark": state["seq"] + 5}))
    assert "state" in kinds(check_lake(lake, hash_key=KEY))
    (lake / "_state.json").write_text("{not json")
    report = check_lake(lake, hash_key=KEY)
    assert "state" in kinds(report)
    fixed = check_lake(lake, hash_key=KEY, repair=True)
    assert fixed.ok, str(fixed)
    assert json.loads((lake / "_state.json").read_text())["seq"] == state["seq"]
    assert quarantined(lake, lake / "_state.json").read_text() == "{not json"
    with open_lake(lake) as store:
        store.compact()
    assert answers(lake)[0] == 15

    manifest = json.loads((lake / "_lake.json").read_text())
    (lake / "_lake.json").write_text(json.dumps({**manifest, "format_version": 99}))
    report = check_lake(lake, hash_key=KEY)
    assert "format" in kinds(report)
    assert "pip install -U kmsg-analytics" in str(report)


def test_keys(lake: Path) -> None:
    assert "key" in kinds(check_lake(lake, hash_key="another-key-456"))
    report = check_lake(lake, hash_key=KEY, keys={"k2": bytes(32)})
    assert "key" in kinds(report)
    assert "k1" in str(report)
    assert check_lake(lake, hash_key=KEY, keys=KEYS).ok


def test_cli_doctor_exit_codes(
    lake: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KMSG_ANALYTICS_HASH_KEY", KEY)
    monkeypatch.setenv("KMSG_ANALYTICS_KEY", "k2:" + bytes(32).hex())
    parser = argparse.ArgumentParser()
    add_admin_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["doctor", "--lake", str(lake)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "healthy" in out
    assert "key ids k1 cannot be decrypted" in out  # a note, not a problem
    victim = current_files(lake)[0]
    victim.write_bytes(b"garbage")
    assert args.func(args) == 1
    assert "--repair" in capsys.readouterr().out
    args = parser.parse_args(["doctor", "--lake", str(lake), "--repair"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "_quarantine" in out
    assert "the lake lost" in out


def test_repair_never_deletes(lake: Path) -> None:
    """Every byte that leaves a dataset is in the quarantine."""
    victims = [history_files(lake)[0], current_files(lake)[0]]
    for v in victims:
        v.write_bytes(v.read_bytes()[:100])
    sizes = {v.relative_to(lake): v.stat().st_size for v in victims}
    check_lake(lake, hash_key=KEY, repair=True)
    reasons = json.loads(next((lake / "_quarantine").glob("*/REASONS.json")).read_text())
    assert {Path(r["path"]) for r in reasons} == set(sizes)
    for rel, size in sizes.items():
        assert quarantined(lake, lake / rel).stat().st_size == size


def test_schema_is_the_lakes() -> None:
    # a guard: the doctor compares with SNAPSHOT_SCHEMA, so a new column is checked too
    assert "seq" in SNAPSHOT_SCHEMA.names
    assert pl.DataFrame(SNAPSHOT_SCHEMA.empty_table()).width == len(SNAPSHOT_SCHEMA)
