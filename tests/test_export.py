"""Exporting a lake: files of current records or history, numbers masked, and k-msg's table.

The round trip is the strongest check: k-msg's own fixture database imported into a
lake and exported back into k-msg's table layout gives k-msg's rows again (numbers
masked), and importing that export into a fresh lake gives the same lake.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from kmsg_analytics import InvalidRecordError, ParquetTrackingStore, TrackingRecord
from kmsg_analytics._export import ExportError, export_kmsg_table, export_records
from kmsg_analytics._kmsg_import import import_kmsg_table
from kmsg_analytics._schema import RECORD_COLUMNS
from tests._helpers import KMSG_FIXTURES
from tests._model import TEST_KEY

FIXTURES = KMSG_FIXTURES
FIXTURE_DB = FIXTURES / "kmsg-small.sqlite"
needs_fixture = pytest.mark.skipif(
    not FIXTURE_DB.is_file(), reason=f"k-msg fixtures not found at {FIXTURES}"
)

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def record(mid: str, day: int = 0, **changes: Any) -> TrackingRecord:
    t = T0 + timedelta(days=day)
    base = TrackingRecord(
        message_id=mid,
        provider_id="solapi",
        provider_message_id=f"G-{mid}",
        type="ALIMTALK",
        to="010-1234-5678",
        from_="02-1588-1234",
        to_hash="",
        to_masked="",
        requested_at=t,
        status="SENT",
        status_updated_at=t,
        next_check_at=t + timedelta(seconds=30),
        metadata={
            "custom_fields": {"campaignId": "c1", "error_code": "user data, kept"},
            "failover": {
                "request": {"enabled": True, "fallback_channel": "lms"},
                "send_warning_codes": ["FAILOVER_UNSUPPORTED_PROVIDER"],
                "api_attempt": {"attempted": False, "status": "not_attempted"},
            },
        },
    )
    return replace(base, **changes)


def make_lake(path: Path, *, keep_numbers: bool = False) -> ParquetTrackingStore:
    store = ParquetTrackingStore(path, hash_key=TEST_KEY, keep_numbers=keep_numbers)
    first = [store.protect(record(f"m{i}", day=i % 3)) for i in range(6)]
    store.append_snapshots(first, kind="load")
    later = replace(
        first[1],
        status="FAILED",
        provider_status_code="3104",
        failed_at=T0 + timedelta(minutes=3),
        status_updated_at=T0 + timedelta(minutes=3),
        attempt_count=1,
    )
    from kmsg_analytics import TrackingError

    later = replace(later, last_error=TrackingError("X", "problem, with a comma"))
    store.append_snapshots([later], kind="poll")
    return store


@pytest.fixture
def lake(tmp_path: Path) -> Any:
    store = make_lake(tmp_path / "lake")
    yield store
    store.close()


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_current_records_to_a_file_with_numbers_masked(lake: Any, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"records.{fmt}"
    report = export_records(lake, out)
    assert report.rows == 6
    assert report.files == (str(out),)
    frame = {
        "parquet": lambda: pl.read_parquet(out),
        "csv": lambda: pl.read_csv(out),
        "jsonl": lambda: pl.read_ndjson(out),
    }[fmt]().sort("message_id")
    assert frame.height == 6
    for hidden in ("to", "from_", "to_hash", "from_hash"):
        assert hidden not in frame.columns
    text = out.read_bytes()
    assert b"1234-5678" not in text
    assert b"01012345678" not in text
    assert frame.get_column("to_masked").unique().to_list() == ["010****5678"]
    m1 = frame.row(1, named=True)
    assert m1["status"] == "FAILED"
    if fmt == "csv":
        assert (m1["last_error_code"], m1["last_error_message"]) == ("X", "problem, with a comma")
    else:
        assert m1["last_error"] == {"code": "X", "message": "problem, with a comma"}
    assert json.loads(m1["metadata"])["custom_fields"]["campaignId"] == "c1"
    expected = [c for c in RECORD_COLUMNS if c not in ("to", "from_")]
    if fmt == "csv":
        expected = [c for c in expected if c != "last_error"] + [
            "last_error_code",
            "last_error_message",
        ]
    assert sorted(frame.columns) == sorted(c for c in expected if c not in ("to_hash", "from_hash"))


def test_numbers_hashed_and_plain(lake: Any, tmp_path: Path) -> None:
    hashed = pl.read_parquet(export_records(lake, tmp_path / "h.parquet", numbers="hashed").target)
    assert {"to_hash", "from_hash", "to_masked"} <= set(hashed.columns)
    assert "to" not in hashed.columns
    with pytest.raises(ExportError, match="keep_numbers"):
        export_records(lake, tmp_path / "p.parquet", numbers="plain")
    with make_lake(tmp_path / "kept", keep_numbers=True) as kept:
        plain = pl.read_parquet(
            export_records(kept, tmp_path / "p.parquet", numbers="plain").target
        )
    assert plain.get_column("to").unique().to_list() == ["010-1234-5678"]
    with pytest.raises(InvalidRecordError, match="numbers"):
        export_records(lake, tmp_path / "x.parquet", numbers="clear")  # type: ignore[arg-type]


def test_history_has_every_snapshot(lake: Any, tmp_path: Path) -> None:
    report = export_records(lake, tmp_path / "h.jsonl", what="history")
    frame = pl.read_ndjson(tmp_path / "h.jsonl")
    assert report.rows == frame.height == 7
    assert {"seq", "snapshot_kind", "recorded_at"} <= set(frame.columns)
    m1 = frame.filter(pl.col("message_id") == "m1").sort("seq")
    assert m1.get_column("status").to_list() == ["SENT", "FAILED"]
    assert m1.get_column("snapshot_kind").to_list() == ["load", "poll"]


def test_partitioned_export_writes_one_file_per_day(lake: Any, tmp_path: Path) -> None:
    out = tmp_path / "parts"
    lines: list[str] = []
    report = export_records(lake, out, partitioned=True, format="csv", progress=lines.append)
    days = sorted(p.name for p in out.iterdir())
    assert days == [
        "requested_date=2026-11-01",
        "requested_date=2026-11-02",
        "requested_date=2026-11-03",
    ]
    assert len(report.files) == 3
    assert len(lines) == 3
    assert report.rows == 6
    back = pl.read_csv(list(out.glob("*/part-0.csv")))
    assert sorted(back.get_column("message_id").to_list()) == [f"m{i}" for i in range(6)]
    hist = export_records(lake, tmp_path / "hist", partitioned=True, what="history")
    assert all(Path(f).parent.name.startswith("ingest_date=") for f in hist.files)
    assert hist.rows == 7


def test_targets_are_not_overwritten_unless_asked(lake: Any, tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    export_records(lake, out)
    with pytest.raises(ExportError, match="overwrite"):
        export_records(lake, out)
    assert export_records(lake, out, overwrite=True).rows == 6
    with pytest.raises(InvalidRecordError, match="format"):
        export_records(lake, tmp_path / "r.xlsx")
    with pytest.raises(ExportError, match="no lake"):
        export_records(tmp_path / "nowhere", tmp_path / "n.parquet")


def test_kmsg_table_export_if_exists(lake: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.sqlite'}"
    assert export_kmsg_table(lake, url).rows == 6
    with pytest.raises(ExportError, match="exists"):
        export_kmsg_table(lake, url)
    assert export_kmsg_table(lake, url, if_exists="append").rows == 6
    assert export_kmsg_table(lake, url, if_exists="replace").rows == 6
    con = sqlite3.connect(tmp_path / "k.sqlite")
    (n,) = con.execute("SELECT COUNT(*) FROM kmsg_delivery_tracking").fetchone()
    meta, err = con.execute(
        "SELECT metadata, last_error FROM kmsg_delivery_tracking WHERE message_id='m1'"
    ).fetchone()
    con.close()
    assert n == 6
    assert json.loads(meta) == {
        "customFields": {"campaignId": "c1", "error_code": "user data, kept"},
        "failover": {
            "request": {"enabled": True, "fallbackChannel": "lms"},
            "sendWarningCodes": ["FAILOVER_UNSUPPORTED_PROVIDER"],
            "apiAttempt": {"attempted": False, "status": "not_attempted"},
        },
    }
    assert json.loads(err) == {"code": "X", "message": "problem, with a comma"}
    with pytest.raises(InvalidRecordError, match="sqlite"):
        export_kmsg_table(lake, "postgresql://x@h/db")


def _rows(db: Path, table: str = "kmsg_delivery_tracking") -> dict[str, dict[str, Any]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    out = {r["message_id"]: dict(r) for r in con.execute(f'SELECT * FROM "{table}"')}
    con.close()
    return out


@needs_fixture
def test_kmsg_round_trip_gives_kmsg_rows_and_the_same_lake(tmp_path: Path) -> None:
    first = tmp_path / "first"
    import_kmsg_table(f"sqlite:///{FIXTURE_DB}", first, hash_key=TEST_KEY)
    exported = tmp_path / "export.sqlite"
    report = export_kmsg_table(first, f"sqlite:///{exported}", hash_key=TEST_KEY)
    assert report.rows == 3000

    theirs, ours = _rows(FIXTURE_DB), _rows(exported)
    assert theirs.keys() == ours.keys()
    for mid, src in theirs.items():
        out = ours[mid]
        for column, value in src.items():
            if column in ("to", "from"):
                continue  # masked in the export
            if column in ("metadata", "last_error"):
                assert (None if out[column] is None else json.loads(out[column])) == (
                    None if value is None else json.loads(value)
                ), (mid, column)
            else:
                assert out[column] == value, (mid, column)
        assert out["to"].startswith(src["to"].replace("-", "")[:3])
        assert "*" in out["to"]

    second = tmp_path / "second"
    again = import_kmsg_table(f"sqlite:///{exported}", second, hash_key=TEST_KEY)
    assert (again.new, again.skipped) == (3000, 0)

    def comparable(path: Path) -> pl.DataFrame:
        with ParquetTrackingStore(path, hash_key=TEST_KEY) as store:
            frame = store.current().collect()
        return frame.drop("seq", "recorded_at", "requested_date").sort("message_id")

    a, b = comparable(first), comparable(second)
    assert a.drop("metadata").equals(b.drop("metadata"))
    assert [json.loads(m) for m in a["metadata"]] == [json.loads(m) for m in b["metadata"]]


def _cli(argv: list[str]) -> int:
    """Our two commands under a parser like the one ``kmsg-analytics`` builds."""
    import argparse

    from kmsg_analytics._cli_io import add_export_parser, add_import_parser

    parser = argparse.ArgumentParser(prog="kmsg-analytics")
    sub = parser.add_subparsers(dest="command", required=True)
    add_import_parser(sub)
    add_export_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


@needs_fixture
def test_command_line_import_then_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KMSG_ANALYTICS_HASH_KEY", TEST_KEY)
    lake = tmp_path / "lake"
    assert (
        _cli(["import", f"sqlite:///{FIXTURE_DB}", "--lake", str(lake), "--chunk-rows", "1000"])
        == 0
    )
    out, err = capsys.readouterr()
    assert "3,000 new" in out
    assert "rows/s" in err
    assert _cli(["import", f"sqlite:///{FIXTURE_DB}", "--lake", str(lake), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "0 new, 0 changed, 3,000 unchanged" in out
    argv = ["import", f"sqlite:///{FIXTURE_DB}", "--lake", str(lake), "--quiet", "--full"]
    assert _cli(argv) == 0
    out = capsys.readouterr().out
    assert "0 new, 0 changed, 3,000 unchanged" in out
    assert "fetched" not in out  # --full: every row read and compared, none appended

    csv = tmp_path / "out.csv"
    assert _cli(["export", "--lake", str(lake), "--out", str(csv)]) == 0
    assert pl.read_csv(csv).height == 3000
    hist = tmp_path / "hist"
    assert (
        _cli(
            [
                "export",
                "--lake",
                str(lake),
                "--history",
                "--partitioned",
                "--format",
                "jsonl",
                "--out",
                str(hist),
            ]
        )
        == 0
    )
    assert len(list(hist.glob("ingest_date=*/part-0.jsonl"))) >= 1
    db = tmp_path / "k.sqlite"
    assert _cli(["export", "--lake", str(lake), "--to", f"sqlite:///{db}"]) == 0
    assert "3,000 rows" in capsys.readouterr().out
    assert len(_rows(db)) == 3000
    assert _cli(["export", "--lake", str(lake), "--to", f"sqlite:///{db}", "--history"]) == 2


def test_command_line_column_map_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KMSG_ANALYTICS_HASH_KEY", TEST_KEY)
    db = tmp_path / "k.sqlite"
    con = sqlite3.connect(db)
    con.execute(
        'CREATE TABLE t (id TEXT PRIMARY KEY, provider_id TEXT, type TEXT, "to" TEXT, '
        "state TEXT, requested_at INTEGER)"
    )
    con.executemany(
        "INSERT INTO t VALUES (?, 'solapi', 'SMS', '01012345678', ?, 1793491200000)",
        [("a", "SENT"), ("b", "GONE")],
    )
    con.commit()
    con.close()
    argv = [
        "import",
        f"sqlite:///{db}",
        "--lake",
        str(tmp_path / "lake"),
        "--table",
        "t",
        "--quiet",
    ]
    assert _cli([*argv, "--column-map", "messageId=id,status=state"]) == 0
    out, err = capsys.readouterr()
    assert "1 new" in out
    assert "1 skipped" in out
    assert "'b': status: unknown status 'GONE'" in err
    assert _cli([*argv, "--column-map", '{"messageId": "id", "status": "state"}']) == 0
    with pytest.raises(SystemExit):
        _cli([*argv, "--column-map", "messageId"])
