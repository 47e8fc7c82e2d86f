"""Importing k-msg's tracking table: every layout, bad rows, strict mode, re-imports, PostgreSQL.

Tables are written here with plain ``sqlite3`` (and ``psycopg`` for PostgreSQL) in the
shapes k-msg's ``sql-schema.ts`` generates; the importer reads them through Ibis. The
PostgreSQL tests use the real server ``.ci/run`` starts (``tests/_pg_server.py``: k-msg's
table with the fixture's rows, ``$KMSG_TEST_POSTGRES_URL``), or start one the same way
from the system's binaries (Debian: ``apt-get install postgresql``) in a temporary
directory on 127.0.0.1, and skip, saying so, only where no PostgreSQL is installed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from kmsg_analytics import InvalidRecordError, ParquetTrackingStore, RecordFilter
from kmsg_analytics._kmsg_import import (
    ImportReport,
    ImportSourceError,
    UnreadableRowError,
    _describe_url,
    import_kmsg_table,
    read_source_state,
)
from kmsg_analytics._records import TrackingRecord
from tests import _pg_server as pg_server
from tests._helpers import KMSG_FIXTURES
from tests._model import TEST_KEY, hash_number

FIXTURES = KMSG_FIXTURES
FIXTURE_DB = FIXTURES / "kmsg-small.sqlite"

T0 = 1_793_491_200_000  # 2026-11-01T00:00:00Z in ms
T0_DT = datetime(2026, 11, 1, tzinfo=UTC)

#: k-msg's default (legacy) layout, in its column order.
DEFAULT_COLUMNS: dict[str, str] = {
    "message_id": "TEXT PRIMARY KEY",
    "provider_id": "TEXT NOT NULL",
    "provider_message_id": "TEXT NOT NULL",
    "type": "TEXT NOT NULL",
    "to": "TEXT NOT NULL",
    "from": "TEXT",
    "status": "TEXT NOT NULL",
    "provider_status_code": "TEXT",
    "provider_status_message": "TEXT",
    "sent_at": "INTEGER",
    "delivered_at": "INTEGER",
    "failed_at": "INTEGER",
    "requested_at": "INTEGER NOT NULL",
    "scheduled_at": "INTEGER",
    "status_updated_at": "INTEGER NOT NULL",
    "attempt_count": "INTEGER NOT NULL DEFAULT 0",
    "last_checked_at": "INTEGER",
    "next_check_at": "INTEGER NOT NULL",
    "last_error": "TEXT",
    "metadata": "TEXT",
}

#: k-msg's field-crypto "secure" layout without plain columns (compatPlainColumns false).
SECURE_COLUMNS: dict[str, str] = {
    "message_id": "TEXT PRIMARY KEY",
    "provider_id": "TEXT NOT NULL",
    "provider_message_id": "TEXT NOT NULL",
    "type": "TEXT NOT NULL",
    "to_enc": "TEXT NOT NULL",
    "to_hash": "TEXT NOT NULL",
    "to_masked": "TEXT NOT NULL",
    "from_enc": "TEXT",
    "from_hash": "TEXT",
    "from_masked": "TEXT",
    "status": "TEXT NOT NULL",
    "provider_status_code": "TEXT",
    "provider_status_message": "TEXT",
    "sent_at": "INTEGER",
    "delivered_at": "INTEGER",
    "failed_at": "INTEGER",
    "requested_at": "INTEGER NOT NULL",
    "scheduled_at": "INTEGER",
    "status_updated_at": "INTEGER NOT NULL",
    "attempt_count": "INTEGER NOT NULL DEFAULT 0",
    "last_checked_at": "INTEGER",
    "next_check_at": "INTEGER NOT NULL",
    "last_error": "TEXT",
    "metadata_enc": "TEXT",
    "metadata_hashes": "TEXT",
    "crypto_kid": "TEXT",
    "crypto_version": "INTEGER NOT NULL DEFAULT 1",
    "crypto_state": "TEXT",
    "retention_class": "TEXT",
    "retention_bucket_ym": "INTEGER",
}


def kmsg_row(message_id: str, **changes: Any) -> dict[str, Any]:
    """A row as k-msg's SQL store writes it (times in epoch ms, JSON as text)."""
    row: dict[str, Any] = {
        "message_id": message_id,
        "provider_id": "solapi",
        "provider_message_id": f"G-{message_id}",
        "type": "SMS",
        "to": "010-1234-5678",
        "from": "0215881234",
        "status": "SENT",
        "provider_status_code": None,
        "provider_status_message": None,
        "sent_at": None,
        "delivered_at": None,
        "failed_at": None,
        "requested_at": T0,
        "scheduled_at": None,
        "status_updated_at": T0,
        "attempt_count": 0,
        "last_checked_at": None,
        "next_check_at": T0 + 30_000,
        "last_error": None,
        "metadata": None,
    }
    row.update(changes)
    return row


def write_table(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    *,
    table: str = "kmsg_delivery_tracking",
    columns: Mapping[str, str] = DEFAULT_COLUMNS,
    rename: Mapping[str, str] | None = None,
) -> str:
    """Create (or add to) a k-msg table in a SQLite file; returns its ``sqlite:///`` URL."""
    rename = dict(rename or {})
    con = sqlite3.connect(path)
    cols = {rename.get(c, c): t for c, t in columns.items()}
    body = ", ".join(f'"{c}" {t}' for c, t in cols.items())
    con.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({body})')
    for row in rows:
        data = {rename.get(k, k): v for k, v in row.items() if rename.get(k, k) in cols}
        names = ", ".join(f'"{k}"' for k in data)
        marks = ", ".join("?" for _ in data)
        con.execute(
            f'INSERT OR REPLACE INTO "{table}" ({names}) VALUES ({marks})', list(data.values())
        )
    con.commit()
    con.close()
    return f"sqlite:///{path}"


def update_rows(path: Path, sql: str, *params: Any) -> None:
    con = sqlite3.connect(path)
    con.execute(sql, params)
    con.commit()
    con.close()


@pytest.fixture
def lake_path(tmp_path: Path) -> Path:
    return tmp_path / "lake"


def open_lake(path: Path, **kwargs: Any) -> ParquetTrackingStore:
    return ParquetTrackingStore(path, hash_key=TEST_KEY, **kwargs)


def run(url: str, lake: Path | ParquetTrackingStore, **kwargs: Any) -> ImportReport:
    if isinstance(lake, Path):
        kwargs.setdefault("hash_key", TEST_KEY)
    return import_kmsg_table(url, lake, **kwargs)


def current(lake: Path) -> dict[str, TrackingRecord]:
    with open_lake(lake) as store:
        frame = store.current().select("message_id").collect()
        return {
            mid: rec
            for mid in frame.get_column("message_id").to_list()
            if (rec := store.get(mid)) is not None
        }


def history(lake: Path) -> pl.DataFrame:
    with open_lake(lake) as store:
        return store.history().collect().sort("seq")


# --------------------------------------------------------------------------- URLs


def test_urls_are_parsed_and_passwords_never_kept(tmp_path: Path) -> None:
    kind, redacted, args = _describe_url(
        "postgresql://alice:s3cr%40t@db.example:5433/track?schema=ops"
    )
    assert kind == "postgres"
    assert "s3cr" not in redacted
    assert "***" in redacted
    assert args == {
        "host": "db.example",
        "port": 5433,
        "user": "alice",
        "password": "s3cr@t",
        "database": "track",
        "schema": "ops",
    }
    assert _describe_url("mysql://bob@127.0.0.1/kmsg")[0] == "mysql"
    kind, redacted, args = _describe_url(f"sqlite:///{tmp_path}/k.sqlite")
    assert (kind, args["path"]) == ("sqlite", tmp_path / "k.sqlite")
    assert _describe_url(str(tmp_path / "k.sqlite"))[2]["path"] == tmp_path / "k.sqlite"
    with pytest.raises(InvalidRecordError, match="url"):
        _describe_url("oracle://x/y")


def test_missing_database_table_and_columns_are_explained(tmp_path: Path, lake_path: Path) -> None:
    with pytest.raises(ImportSourceError, match="no SQLite database"):
        run(f"sqlite:///{tmp_path}/nope.sqlite", lake_path)
    assert not (tmp_path / "nope.sqlite").exists()  # opened read-only, never created
    url = write_table(tmp_path / "k.sqlite", [kmsg_row("m1")])
    with pytest.raises(ImportSourceError, match="no table 'other'"):
        run(url, lake_path, table="other")
    url = write_table(tmp_path / "k.sqlite", [], table="renamed", rename={"message_id": "msg_id"})
    with pytest.raises(ImportSourceError, match=r"message_id .*column_map"):
        run(url, lake_path, table="renamed")
    with pytest.raises(InvalidRecordError, match="column_map"):
        run(url, lake_path, column_map={"noSuchKey": "x"})
    with pytest.raises(InvalidRecordError, match="timestamps"):
        run(url, lake_path, timestamps="seconds")


# --------------------------------------------------------------------------- layouts


def test_default_layout_fields_and_metadata_shape(tmp_path: Path, lake_path: Path) -> None:
    failover = {
        "request": {"enabled": True, "fallbackChannel": "sms", "fallbackContent": "대체 본문"},
        "sendWarningCodes": ["FAILOVER_PARTIAL_PROVIDER"],
        "apiAttempt": {
            "attempted": True,
            "status": "attempting",
            "attemptedAt": "2026-11-26T22:21:36.795Z",
            "outcome": "failed",
            "errorCode": "INSUFFICIENT_BALANCE",
            "errorMessage": "잔액 부족",
        },
    }
    custom = {"campaignId": "c-1", "errorCode": "kept as given", "nested": {"fallbackTitle": 1}}
    rows = [
        kmsg_row(
            "m1",
            type="ALIMTALK",
            status="FAILED",
            provider_status_code="3104",
            provider_status_message="카카오톡 미사용자",
            sent_at=T0 + 1_000,
            failed_at=T0 + 5_000,
            status_updated_at=T0 + 6_000,
            attempt_count=2,
            last_checked_at=T0 + 6_000,
            next_check_at=T0 + 6_000,
            last_error=json.dumps({"code": "X", "message": "y"}),
            metadata=json.dumps({"customFields": custom, "failover": failover}),
        ),
        kmsg_row("m2", provider_message_id="", status="UNKNOWN", **{"from": None}),
        kmsg_row("m3", scheduled_at=T0 + 3_600_000, status="PENDING", provider_status_code=""),
    ]
    url = write_table(tmp_path / "k.sqlite", rows)
    report = run(url, lake_path)
    assert (report.rows_read, report.new, report.skipped) == (3, 3, 0)
    recs = current(lake_path)
    m1 = recs["m1"]
    assert m1.to is None
    assert m1.to_hash == hash_number("01012345678")
    assert m1.to_masked == "010****5678"
    assert m1.from_masked == "021***1234"
    assert (m1.status, m1.provider_status_code, m1.attempt_count) == ("FAILED", "3104", 2)
    assert m1.sent_at == T0_DT + timedelta(seconds=1)
    assert m1.failed_at == T0_DT + timedelta(seconds=5)
    assert m1.last_error is not None
    assert (m1.last_error.code, m1.last_error.message) == ("X", "y")
    assert m1.metadata == {
        "custom_fields": custom,
        "failover": {
            "request": {
                "enabled": True,
                "fallback_channel": "sms",
                "fallback_content": "대체 본문",
            },
            "send_warning_codes": ["FAILOVER_PARTIAL_PROVIDER"],
            "api_attempt": {
                "attempted": True,
                "status": "attempting",
                "attempted_at": "2026-11-26T22:21:36.795Z",
                "outcome": "failed",
                "error_code": "INSUFFICIENT_BALANCE",
                "error_message": "잔액 부족",
            },
        },
    }
    assert m1.retention_bucket_ym == 202611
    m2 = recs["m2"]
    assert (m2.provider_message_id, m2.status, m2.from_hash, m2.metadata) == (
        "",
        "UNKNOWN",
        None,
        {},
    )
    m3 = recs["m3"]
    assert m3.scheduled_at == T0_DT + timedelta(hours=1)
    assert m3.provider_status_code is None  # k-msg reads '' as absent
    with open_lake(lake_path) as store:
        assert store.count_records(RecordFilter(to="+82 10-1234-5678")) == 3  # our hash


def test_custom_table_and_column_map(tmp_path: Path, lake_path: Path) -> None:
    rename = {"message_id": "id", "status": "state", "requested_at": "created_ms", "to": "phone"}
    url = write_table(
        tmp_path / "k.sqlite",
        [kmsg_row("a"), kmsg_row("b", status="DELIVERED")],
        table="tracking",
        rename=rename,
    )
    report = run(
        url,
        lake_path,
        table="tracking",
        column_map={
            "messageId": "id",
            "status": "state",
            "requestedAt": "created_ms",
            "to": "phone",
        },
    )
    assert report.new == 2
    assert {m: r.status for m, r in current(lake_path).items()} == {"a": "SENT", "b": "DELIVERED"}
    # our own field names work as keys too
    again = run(
        url,
        tmp_path / "lake2",
        table="tracking",
        column_map={
            "message_id": "id",
            "status": "state",
            "requested_at": "created_ms",
            "to": "phone",
        },
    )
    assert again.new == 2


def test_raw_column_json_and_plain_text(tmp_path: Path, lake_path: Path) -> None:
    columns = {**DEFAULT_COLUMNS, "raw": "TEXT"}
    rows = [
        kmsg_row("j", raw=json.dumps({"resultCode": "0000", "items": [1, 2]})),
        kmsg_row("t", raw="not json at all"),
        kmsg_row("n", raw=None),
        kmsg_row("s", raw='"a JSON string"'),
        kmsg_row("i", raw="42"),
    ]
    url = write_table(tmp_path / "k.sqlite", rows, columns=columns)
    assert run(url, lake_path).new == 5
    recs = current(lake_path)
    assert recs["j"].raw == {"resultCode": "0000", "items": [1, 2]}
    assert (recs["s"].raw, recs["i"].raw) == ("a JSON string", 42)
    assert recs["t"].raw == "not json at all"
    assert recs["n"].raw is None


def test_iso_and_numeric_string_timestamps(tmp_path: Path, lake_path: Path) -> None:
    """SQLite lets text sit in INTEGER columns; k-msg's reader takes ISO and numeric text."""
    rows = [
        kmsg_row("iso", requested_at="2026-11-01T09:00:00+09:00", sent_at="2026-11-01T00:00:01Z"),
        kmsg_row("num", requested_at=str(T0), sent_at=f"{T0 + 1000}"),
    ]
    url = write_table(tmp_path / "k.sqlite", rows)
    assert run(url, lake_path).new == 2
    recs = current(lake_path)
    for mid in ("iso", "num"):
        assert recs[mid].requested_at == T0_DT
        assert recs[mid].sent_at == T0_DT + timedelta(seconds=1)


def test_secure_layout_keeps_kmsg_hashes_and_never_reads_ciphertext(
    tmp_path: Path, lake_path: Path
) -> None:
    secure = {
        "to_enc": '{"v":1,"kid":"k1","ct":"garbage-that-is-never-decrypted"}',
        "to_hash": "kmsg-own-hmac-of-the-number",
        "to_masked": "010-****-5678",
        "from_enc": "zzz",
        "from_hash": "kmsg-from-hash",
        "from_masked": "02-****-1234",
        "metadata_enc": "also-never-read",
        "metadata_hashes": '{"metadata.customFields.phone":"h"}',
        "crypto_kid": "k1",
        "crypto_version": 1,
        "crypto_state": "encrypted",
        "retention_class": "billingEvidence",
        "retention_bucket_ym": 203111,
    }
    url = write_table(tmp_path / "k.sqlite", [kmsg_row("s1", **secure)], columns=SECURE_COLUMNS)
    assert run(url, lake_path).new == 1
    rec = current(lake_path)["s1"]
    assert (rec.to, rec.to_hash, rec.to_masked) == (
        None,
        "kmsg-own-hmac-of-the-number",
        "010-****-5678",
    )
    assert (rec.from_hash, rec.from_masked) == ("kmsg-from-hash", "02-****-1234")
    assert rec.retention_class == "billingEvidence"
    assert rec.retention_bucket_ym == 202611  # ours: the month of requested_at
    assert rec.metadata == {}  # encrypted metadata stays encrypted (and out of the lake)
    with open_lake(lake_path) as store:
        # k-msg hashed with its own key: filter by its hash, not by the number
        assert store.count_records(RecordFilter(to_hash="kmsg-own-hmac-of-the-number")) == 1
        assert store.count_records(RecordFilter(to="010-1234-5678")) == 0
    all_text = "".join(
        str(v) for v in history(lake_path).row(0, named=True).values() if v is not None
    )
    assert "garbage" not in all_text
    assert "never-read" not in all_text


def test_secure_layout_with_plain_columns_uses_our_hash(tmp_path: Path, lake_path: Path) -> None:
    columns = dict(SECURE_COLUMNS)
    columns = {
        **{k: v for k, v in columns.items() if k != "status"},
        "to": "TEXT NOT NULL",
        "from": "TEXT",
        "status": "TEXT NOT NULL",
        "metadata": "TEXT",
    }
    row = kmsg_row(
        "c1",
        to_enc="x",
        to_hash="theirs",
        to_masked="010-****-5678",
        metadata=json.dumps({"customFields": {"k": "v"}}),
    )
    url = write_table(tmp_path / "k.sqlite", [row], columns=columns)
    assert run(url, lake_path).new == 1
    rec = current(lake_path)["c1"]
    assert (rec.to_hash, rec.to_masked) == (hash_number("01012345678"), "010****5678")
    assert rec.metadata == {"custom_fields": {"k": "v"}}


def test_keep_numbers_lake_keeps_the_number_as_given(tmp_path: Path, lake_path: Path) -> None:
    url = write_table(tmp_path / "k.sqlite", [kmsg_row("m1")])
    with open_lake(lake_path, keep_numbers=True) as store:
        assert import_kmsg_table(url, store).new == 1
        rec = store.get("m1")
    assert rec is not None
    assert (rec.to, rec.from_) == ("010-1234-5678", "0215881234")


# --------------------------------------------------------------------------- bad rows


BAD_ROWS = [
    (kmsg_row("bad-status", status="delivered"), "status", "unknown status"),
    (kmsg_row("bad-type", type="KAKAO"), "type", "unknown message type"),
    (kmsg_row("bad-meta", metadata='{"customFields": {'), "metadata", "not valid JSON"),
    (kmsg_row("bad-error", last_error="{code: X}"), "last_error", "not valid JSON"),
    (kmsg_row("bad-time", sent_at=10**16), "sent_at", "not a time between"),
    (kmsg_row("old-time", requested_at=86_400_000), "requested_at", "not a time between"),
    (kmsg_row("bad-text-time", delivered_at="yesterday"), "delivered_at", "not a time"),
    (kmsg_row("bad-number", to="call me"), "to", "not a phone number"),
    (kmsg_row("bad-attempts", attempt_count=-1), "attempt_count", "whole number"),
    (kmsg_row("bad-provider", provider_id=" "), "provider_id", "empty provider id"),
]


def test_unreadable_rows_are_reported_counted_and_skipped(tmp_path: Path, lake_path: Path) -> None:
    good = [kmsg_row(f"ok-{i}") for i in range(5)]
    url = write_table(tmp_path / "k.sqlite", good + [r for r, _, _ in BAD_ROWS])
    report = run(url, lake_path, chunk_rows=4)
    assert (report.rows_read, report.new, report.skipped) == (15, 5, len(BAD_ROWS))
    got = {e.message_id: e for e in report.errors}
    for row, column, reason in BAD_ROWS:
        err = got[row["message_id"]]
        assert err.column == column
        assert reason in err.reason, (err, reason)
    assert sorted(current(lake_path)) == [f"ok-{i}" for i in range(5)]
    # the bad rows stay bad: reported again, never appended
    again = run(url, lake_path)
    assert (again.new, again.changed, again.unchanged, again.skipped) == (0, 0, 5, len(BAD_ROWS))


def test_strict_fails_on_the_first_bad_row_with_the_lake_untouched(
    tmp_path: Path, lake_path: Path
) -> None:
    rows = [kmsg_row(f"ok-{i:03d}") for i in range(30)] + [kmsg_row("zz-bad", status="LOST")]
    url = write_table(tmp_path / "k.sqlite", rows)
    with pytest.raises(UnreadableRowError, match=r"'zz-bad'.*unknown status 'LOST'"):
        run(url, lake_path, strict=True, chunk_rows=8)
    assert history(lake_path).height == 0
    assert read_source_state(lake_path) == []
    assert not list((lake_path / "_sources").glob(".staging-*"))
    # without the bad row, strict imports everything
    update_rows(
        tmp_path / "k.sqlite", "DELETE FROM kmsg_delivery_tracking WHERE message_id = ?", "zz-bad"
    )
    assert run(url, lake_path, strict=True, chunk_rows=8).new == 30
    assert history(lake_path).height == 30


# --------------------------------------------------------------------------- re-imports


def test_reimport_adds_nothing_and_changes_add_one_snapshot_each(
    tmp_path: Path, lake_path: Path
) -> None:
    db = tmp_path / "k.sqlite"
    url = write_table(db, [kmsg_row(f"m{i:02d}") for i in range(20)])
    first = run(url, lake_path, chunk_rows=6)
    assert (first.new, first.changed, first.unchanged) == (20, 0, 0)
    second = run(url, lake_path, chunk_rows=6)
    assert (second.new, second.changed, second.unchanged, second.appended) == (0, 0, 20, 0)
    assert history(lake_path).height == 20

    # k-msg polls: a status change (with status_updated_at) and a retry (attempts only)
    update_rows(
        db,
        "UPDATE kmsg_delivery_tracking SET status='DELIVERED', delivered_at=?, "
        "status_updated_at=?, attempt_count=1 WHERE message_id='m03'",
        T0 + 9_000,
        T0 + 9_500,
    )
    update_rows(
        db,
        "UPDATE kmsg_delivery_tracking SET attempt_count=1, last_checked_at=?, "
        "next_check_at=? WHERE message_id='m07'",
        T0 + 30_000,
        T0 + 150_000,
    )
    write_table(db, [kmsg_row("m99")])
    third = run(url, lake_path, chunk_rows=6)
    assert (third.new, third.changed, third.unchanged) == (1, 2, 18)
    snaps = history(lake_path)
    assert snaps.height == 23
    m03 = snaps.filter(pl.col("message_id") == "m03")
    assert m03.get_column("status").to_list() == ["SENT", "DELIVERED"]
    assert set(m03.get_column("snapshot_kind")) == {"load"}
    recs = current(lake_path)
    assert recs["m03"].status == "DELIVERED"
    assert recs["m07"].attempt_count == 1
    assert run(url, lake_path).appended == 0

    (state,) = read_source_state(lake_path, url)
    assert state["imports"] == 4
    assert state["snapshots_appended"] == 23
    assert state["max_status_updated_at"].startswith("2026-11-01T00:00:09.5")


def test_lost_fingerprints_cost_time_not_duplicates(tmp_path: Path, lake_path: Path) -> None:
    url = write_table(tmp_path / "k.sqlite", [kmsg_row(f"m{i}") for i in range(10)])
    run(url, lake_path)
    for f in (lake_path / "_sources").glob("*.rows.parquet"):
        f.unlink()
    report = run(url, lake_path)
    assert (report.new, report.changed, report.unchanged) == (0, 0, 10)
    # and the same table under another URL spelling is recognised by content too
    other = run(str(tmp_path / "k.sqlite"), lake_path)
    assert other.appended == 0
    assert history(lake_path).height == 10


def test_a_newer_state_in_the_lake_is_never_moved_back(tmp_path: Path, lake_path: Path) -> None:
    db = tmp_path / "k.sqlite"
    url = write_table(db, [kmsg_row("m1"), kmsg_row("m2")])
    run(url, lake_path)
    # our own poller reached DELIVERED for m1 later than k-msg's table knows
    with open_lake(lake_path) as store:
        rec = store.get("m1")
        assert rec is not None
        from dataclasses import replace

        store.append_snapshots(
            [replace(rec, status="DELIVERED", status_updated_at=T0_DT + timedelta(minutes=5))],
            kind="poll",
        )
    # k-msg now only bumps attempts of m1 (older status_updated_at), and m2 regresses
    update_rows(db, "UPDATE kmsg_delivery_tracking SET attempt_count=3 WHERE message_id='m1'")
    report = run(url, lake_path)
    assert (report.stale, report.appended) == (1, 0)
    assert current(lake_path)["m1"].status == "DELIVERED"


def test_progress_and_chunking_do_not_change_the_result(tmp_path: Path) -> None:
    url = write_table(tmp_path / "k.sqlite", [kmsg_row(f"m{i:03d}") for i in range(50)])
    calls: list[tuple[int, int | None]] = []
    small = run(
        url, tmp_path / "a", chunk_rows=7, progress=lambda n, total: calls.append((n, total))
    )
    big = run(url, tmp_path / "b", chunk_rows=1000)
    assert small.new == big.new == 50
    assert calls[-1] == (50, 50)
    assert len(calls) == 8
    assert [n for n, _ in calls] == sorted(n for n, _ in calls)
    a = history(tmp_path / "a").drop("seq", "recorded_at", "ingest_date").sort("message_id")
    b = history(tmp_path / "b").drop("seq", "recorded_at", "ingest_date").sort("message_id")
    assert a.equals(b)
    with pytest.raises(InvalidRecordError, match="chunk_rows"):
        run(url, tmp_path / "c", chunk_rows=0)


def test_chunks_follow_sparse_and_negative_rowids(tmp_path: Path) -> None:
    """Each chunk's query starts past the last rowid read, whatever its sign or size."""
    db = tmp_path / "k.sqlite"
    url = write_table(db, [kmsg_row(f"m{i}") for i in range(7)])
    # k-msg's table has a rowid of its own: move the rows to far apart ones, some negative
    rowids = [-(2**62), -5, -1, 0, 3, 10**12, 2**62]
    for i, rowid in enumerate(rowids):
        update_rows(
            db, "UPDATE kmsg_delivery_tracking SET rowid=? WHERE message_id=?", rowid, f"m{i}"
        )
    for chunk_rows in (1, 2, 3, 100):
        report = run(url, tmp_path / f"lake{chunk_rows}", chunk_rows=chunk_rows)
        assert (report.rows_read, report.new) == (7, 7)
        assert sorted(current(tmp_path / f"lake{chunk_rows}")) == [f"m{i}" for i in range(7)]
    # rows added later, past the last rowid read, are read by the next import
    write_table(db, [kmsg_row("late")])
    again = run(url, tmp_path / "lake2", chunk_rows=2)
    assert (again.new, again.unchanged) == (1, 7)


def test_two_readers_of_rowid_ranges_read_what_one_reader_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole table is read by rowid ranges on two connections: same rows, same order.

    Rows deleted here and there leave gaps (short or empty ranges); a row only readable
    as rows (a BLOB) sends its range down the row path while the other range is read.
    """
    pytest.importorskip("adbc_driver_sqlite")
    from kmsg_analytics import _kmsg_source

    db = tmp_path / "k.sqlite"
    rows = [kmsg_row(f"m{i:03d}", attempt_count=i % 4) for i in range(60)]
    rows[23] = kmsg_row("m023", metadata=b"{}")  # a BLOB: read as rows, then skipped
    url = write_table(db, rows)
    update_rows(db, "DELETE FROM kmsg_delivery_tracking WHERE rowid % 7 = 0 OR rowid > 50")
    update_rows(db, "DELETE FROM kmsg_delivery_tracking WHERE rowid BETWEEN 11 AND 19")
    ranged: list[int] = []
    chunks = _kmsg_source.KmsgSource._range_chunks

    def counted(self: Any, *args: Any) -> Iterator[pl.DataFrame]:
        for chunk in chunks(self, *args):
            ranged.append(chunk.height)
            yield chunk

    monkeypatch.setattr(_kmsg_source, "_READERS", 2)
    monkeypatch.setattr(_kmsg_source.KmsgSource, "_range_chunks", counted)
    two = run(url, tmp_path / "two", chunk_rows=5)
    assert sum(ranged) == two.rows_read == 35
    assert max(ranged) <= 5
    monkeypatch.setattr(_kmsg_source, "_READERS", 1)
    one = run(url, tmp_path / "one", chunk_rows=5)
    assert sum(ranged) == 35  # one reader: keyset pagination, no ranges
    assert (two.rows_read, two.new, two.skipped) == (one.rows_read, one.new, one.skipped)
    assert (two.new, two.skipped) == (34, 1)
    assert [str(e) for e in two.errors] == [str(e) for e in one.errors]
    a = history(tmp_path / "two").drop("recorded_at", "ingest_date")
    b = history(tmp_path / "one").drop("recorded_at", "ingest_date")
    assert a.equals(b)  # the same rows in the same order: the same sequence numbers
    states = [read_source_state(tmp_path / n)[0]["watermark"] for n in ("two", "one")]
    assert states[0] == states[1]
    assert states[0]["max_rowid"] == 50


def test_the_fixture_database_imports_in_small_chunks_like_in_one(tmp_path: Path) -> None:
    if not FIXTURE_DB.is_file():
        pytest.skip(f"k-msg fixtures not found at {FIXTURES}")
    url = f"sqlite:///{FIXTURE_DB}"
    report = run(url, tmp_path / "lake", chunk_rows=997)
    assert (report.rows_read, report.new, report.skipped) == (3000, 3000, 0)
    assert run(url, tmp_path / "lake").appended == 0


# --------------------------------------------------------------------------- watermark

DAY_MS = 86_400_000


def test_reimport_reads_only_what_kmsg_wrote_since_the_watermark(
    tmp_path: Path, lake_path: Path
) -> None:
    db = tmp_path / "k.sqlite"
    old = T0 - DAY_MS  # well before the watermark (the latest write time read) less margin
    rows = [kmsg_row(f"m{i:02d}", status_updated_at=old, requested_at=old) for i in range(10)]
    url = write_table(db, [*rows, kmsg_row("m10")])
    assert run(url, lake_path).new == 11
    (state,) = read_source_state(lake_path, url)
    assert state["watermark"]["value_us"] == T0 * 1000
    again = run(url, lake_path)
    # only m10 is within the margin of the watermark: the others are not even fetched
    assert (again.rows_read, again.fetched, again.unchanged, again.appended) == (11, 1, 11, 0)

    # k-msg polls: a status change, and a poll that changes no status (last_checked_at)
    update_rows(
        db,
        "UPDATE kmsg_delivery_tracking SET status='DELIVERED', delivered_at=?, "
        "status_updated_at=?, last_checked_at=?, attempt_count=1 WHERE message_id='m03'",
        T0 + 50_000,
        T0 + 60_000,
        T0 + 60_000,
    )
    update_rows(
        db,
        "UPDATE kmsg_delivery_tracking SET attempt_count=1, last_checked_at=?, "
        "next_check_at=? WHERE message_id='m04'",
        T0 + 60_000,
        T0 + 180_000,
    )
    # a row added with old times (a backfill) is new past the last rowid read
    write_table(db, [kmsg_row("m11", status_updated_at=old - DAY_MS, requested_at=old)])
    # a hand edit that moves no write time is not seen by a watermark read ...
    update_rows(db, "UPDATE kmsg_delivery_tracking SET attempt_count=7 WHERE message_id='m05'")
    third = run(url, lake_path)
    assert (third.new, third.changed, third.unchanged, third.fetched) == (1, 2, 9, 4)
    recs = current(lake_path)
    assert (recs["m03"].status, recs["m04"].attempt_count, recs["m05"].attempt_count) == (
        "DELIVERED",
        1,
        0,
    )
    assert run(url, lake_path).appended == 0
    # ... but by a full one
    full = run(url, lake_path, full=True)
    assert (full.fetched, full.changed, full.unchanged) == (12, 1, 11)
    assert current(lake_path)["m05"].attempt_count == 7
    assert history(lake_path).height == 15


def test_skipped_rows_are_read_again_until_they_can_be_imported(
    tmp_path: Path, lake_path: Path
) -> None:
    db = tmp_path / "k.sqlite"
    old = T0 - DAY_MS
    url = write_table(
        db,
        [
            kmsg_row("good", status_updated_at=old),
            kmsg_row("lost", status="LOST", status_updated_at=old),
            kmsg_row("recent"),
        ],
    )
    first = run(url, lake_path)
    assert (first.new, first.skipped) == (1 + 1, 1)
    again = run(url, lake_path)
    assert (again.fetched, again.skipped, again.unchanged) == (2, 1, 2)
    assert again.errors[0].message_id == "lost"
    update_rows(db, "UPDATE kmsg_delivery_tracking SET status='SENT' WHERE message_id='lost'")
    fixed = run(url, lake_path)
    assert (fixed.new, fixed.skipped) == (1, 0)
    assert sorted(current(lake_path)) == ["good", "lost", "recent"]
    assert run(url, lake_path).fetched == 1  # nothing left to read again


def test_a_changed_table_layout_is_read_in_full(tmp_path: Path, lake_path: Path) -> None:
    db = tmp_path / "k.sqlite"
    old = T0 - DAY_MS
    rows = [kmsg_row(f"m{i}", status_updated_at=old) for i in range(5)]
    url = write_table(db, [*rows, kmsg_row("z")])
    run(url, lake_path)
    assert run(url, lake_path).fetched == 1
    update_rows(db, "ALTER TABLE kmsg_delivery_tracking ADD COLUMN raw TEXT")
    update_rows(db, "UPDATE kmsg_delivery_tracking SET raw='{\"a\":1}' WHERE message_id='m2'")
    report = run(url, lake_path)
    assert (report.fetched, report.changed, report.unchanged) == (6, 1, 5)
    assert current(lake_path)["m2"].raw == {"a": 1}


def test_timestamps_in_a_text_column_are_always_read_in_full(
    tmp_path: Path, lake_path: Path
) -> None:
    columns = {**DEFAULT_COLUMNS, "status_updated_at": "TEXT", "last_checked_at": "TEXT"}
    rows = [kmsg_row(f"m{i}", status_updated_at="2026-10-01T00:00:00Z") for i in range(3)]
    url = write_table(tmp_path / "k.sqlite", rows, columns=columns)
    assert run(url, lake_path).new == 3
    again = run(url, lake_path)
    assert (again.fetched, again.unchanged) == (3, 3)


# --------------------------------------------------------------------------- reading paths


def test_values_json_cannot_carry_fall_back_to_rows(tmp_path: Path) -> None:
    """BLOBs, infinities and reals in INTEGER columns: the chunk is read as rows."""
    columns = {**DEFAULT_COLUMNS, "raw": "TEXT"}
    rows = [kmsg_row(f"ok-{i}") for i in range(6)] + [
        kmsg_row("blob", raw=b"\x00\xffbinary"),
        kmsg_row("inf", sent_at=float("inf")),
        kmsg_row("half", attempt_count=1.5),
        kmsg_row("two", attempt_count=2.0),  # stored as the integer 2
    ]
    url = write_table(tmp_path / "k.sqlite", rows, columns=columns)
    small = run(url, tmp_path / "a", chunk_rows=3)
    big = run(url, tmp_path / "b", chunk_rows=100)
    for report in (small, big):
        assert (report.new, report.skipped) == (8, 2)
        reasons = {e.message_id: (e.column, e.reason) for e in report.errors}
        assert reasons["inf"][0] == "sent_at"
        assert reasons["half"] == ("attempt_count", "'1.5' is not a whole number >= 0")
    assert current(tmp_path / "a")["two"].attempt_count == 2
    assert current(tmp_path / "a")["blob"].raw is not None
    a = history(tmp_path / "a").drop("seq", "recorded_at", "ingest_date").sort("message_id")
    b = history(tmp_path / "b").drop("seq", "recorded_at", "ingest_date").sort("message_id")
    assert a.equals(b)


#: Rows whose values stray from their columns' declared types, as SQLite allows.
ODD_ROWS = [
    *[kmsg_row(f"ok-{i}", metadata='{"customFields":{"a":1}}') for i in range(4)],
    kmsg_row("blob-raw", raw=b"\x00\xffbinary"),
    kmsg_row("blob-meta", metadata=b"{}"),
    kmsg_row("inf", sent_at=float("inf")),
    kmsg_row("half", attempt_count=1.5),
    kmsg_row("two", attempt_count=2.0),  # stored as the integer 2
    kmsg_row("text-count", attempt_count="three"),
    kmsg_row("text-time", delivered_at="2026-11-01T00:00:05Z", status="DELIVERED"),
    kmsg_row("number-text", provider_status_code=4000, provider_status_message=1.5),
    kmsg_row("spaces", provider_status_code="  ", to=" ", from_=None),
    kmsg_row("big", scheduled_at=2**62),
    kmsg_row("unicode", metadata='{"customFields":{"이름":"홍길동"}}', to="+82 10-1234-5678"),
    kmsg_row("error", last_error='{"code":"3018","message":"전원 꺼짐"}', status="FAILED"),
]


@pytest.mark.parametrize("chunk_rows", [2, 5, 1000])
def test_the_arrow_and_json_readers_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_rows: int
) -> None:
    """SQLite through the ADBC driver, or as JSON arrays (without it): the same lake."""
    pytest.importorskip("adbc_driver_sqlite")
    from kmsg_analytics import _kmsg_source

    columns = {**DEFAULT_COLUMNS, "raw": "TEXT"}
    url = write_table(tmp_path / "k.sqlite", ODD_ROWS, columns=columns)
    arrow = run(url, tmp_path / "arrow", chunk_rows=chunk_rows)
    monkeypatch.setattr(_kmsg_source, "_ARROW_READER", False)
    json_ = run(url, tmp_path / "json", chunk_rows=chunk_rows)
    assert (arrow.new, arrow.skipped) == (json_.new, json_.skipped) == (10, 6)
    assert sorted(map(str, arrow.errors)) == sorted(map(str, json_.errors))
    assert {e.message_id: e.column for e in arrow.errors} == {
        "big": "scheduled_at",
        "blob-meta": "metadata",
        "inf": "sent_at",
        "half": "attempt_count",  # a real in an INTEGER column is not cut to 1
        "text-count": "attempt_count",
        "spaces": "to",
    }
    a = history(tmp_path / "arrow").drop("seq", "recorded_at", "ingest_date").sort("message_id")
    b = history(tmp_path / "json").drop("seq", "recorded_at", "ingest_date").sort("message_id")
    assert a.equals(b)
    recs = current(tmp_path / "arrow")
    assert (recs["two"].attempt_count, recs["number-text"].provider_status_code) == (2, "4000")
    assert recs["number-text"].provider_status_message == "1.5"
    assert recs["text-time"].delivered_at == T0_DT + timedelta(seconds=5)
    assert recs["error"].last_error is not None
    assert recs["blob-raw"].raw is not None


def test_a_first_import_folds_the_lake_once_at_the_end(tmp_path: Path, lake_path: Path) -> None:
    """Bulk mode: no fold after each chunk; one at the end, so the lake is folded."""
    db = tmp_path / "k.sqlite"
    url = write_table(db, [kmsg_row(f"m{i:02d}") for i in range(30)])
    with open_lake(lake_path, compact_rows=10) as store:  # would fold at 14 and 28 rows
        assert run(url, store, chunk_rows=7).new == 30
        stats = store.stats()
        assert (stats["seq"], stats["watermark"], stats["history_files"]) == (30, 30, 5)
        assert store.count_records(RecordFilter(status="SENT")) == 30
    # a few changed rows are appended as they are, and folded when the lake decides
    update_rows(db, "UPDATE kmsg_delivery_tracking SET status='DELIVERED' WHERE rowid <= 3")
    with open_lake(lake_path, compact_rows=10) as store:
        assert run(url, store).changed == 3
        assert (store.stats()["seq"], store.stats()["watermark"]) == (33, 30)
        assert store.count_records(RecordFilter(status="DELIVERED")) == 3


@pytest.mark.parametrize("kind", ["without rowid", "view"])
def test_tables_without_a_rowid_are_read_by_message_id(
    tmp_path: Path, lake_path: Path, kind: str
) -> None:
    db = tmp_path / "k.sqlite"
    old = T0 - DAY_MS
    rows = [kmsg_row(f"m{i:02d}", status_updated_at=old) for i in range(12)] + [kmsg_row("z")]
    con = sqlite3.connect(db)
    body = ", ".join(f'"{c}" {t}' for c, t in DEFAULT_COLUMNS.items())
    name = "kmsg_delivery_tracking"
    if kind == "view":
        con.execute(f"CREATE TABLE base ({body})")
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM base")
        name = "base"
    else:
        con.execute(f"CREATE TABLE {name} ({body}) WITHOUT ROWID")
    for row in rows:
        names = ", ".join(f'"{k}"' for k in row)
        con.execute(
            f"INSERT INTO {name} ({names}) VALUES ({', '.join('?' for _ in row)})",
            list(row.values()),
        )
    con.commit()
    con.close()
    url = f"sqlite:///{db}"
    assert run(url, lake_path, chunk_rows=5).new == 13
    again = run(url, lake_path, chunk_rows=5)
    assert (again.fetched, again.unchanged) == (1, 13)
    update_rows(
        db, f"UPDATE {name} SET status='FAILED', status_updated_at=? WHERE message_id='m07'", T0
    )
    assert run(url, lake_path, chunk_rows=5).changed == 1


def test_the_reader_thread_hands_on_errors_and_stops_early() -> None:
    from kmsg_analytics._kmsg_source import Prefetch

    def broken() -> Iterator[int]:
        yield 1
        raise sqlite3.OperationalError("disk I/O error")

    got: list[int] = []
    with Prefetch(broken()) as items, pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        got.extend(items)
    assert got == [1]
    produced: list[int] = []

    def endless() -> Iterator[int]:
        while True:
            produced.append(len(produced))
            yield produced[-1]

    with Prefetch(endless(), depth=2) as items:
        assert next(iter(items)) == 0
    assert len(produced) <= 5  # stopped, not run on


def test_values_met_again_are_looked_up_not_worked_out_again() -> None:
    from kmsg_analytics._kmsg_convert import Memo

    seen: list[list[str]] = []

    def lengths(values: pl.Series) -> pl.DataFrame:
        seen.append(sorted(values.to_list()))
        return values.str.len_chars().alias("n").to_frame()

    memo = Memo(lengths, {"n": pl.UInt32}, limit=3)
    assert memo.lookup(pl.Series(["ab", None, "abc", "ab"])).get_column("n").to_list() == [
        2,
        None,
        3,
        2,
    ]
    assert memo.lookup(pl.Series(["abc", "x", "ab"])).get_column("n").to_list() == [3, 1, 2]
    assert seen == [["ab", "abc"], ["x"]]
    # past the limit only the newest values are kept: the others are worked out again
    assert memo.lookup(pl.Series(["wxyz", "ab"])).get_column("n").to_list() == [4, 2]
    assert seen[2:] == [["wxyz"]]
    assert memo.lookup(pl.Series(["ab", "abc"])).get_column("n").to_list() == [2, 3]
    assert seen[3:] == [["ab", "abc"]]
    # two texts sharing a 64-bit hash are told apart by their text (made here by hand)
    known = memo._known
    memo._known = known.with_columns(pl.col("__value").replace("abc", "zzz"))
    assert memo.lookup(pl.Series(["abc", "ab"])).get_column("n").to_list() == [3, 2]
    assert seen[4:] == [["abc"]]


def test_number_hashes_match_the_lake_key_also_for_long_keys() -> None:
    from kmsg_analytics._kmsg_convert import NumberHasher
    from kmsg_analytics._phone import HashKey

    for secret in ("test-key-123", "k" * 100):
        key = HashKey(secret)
        out = NumberHasher(key).lookup(pl.Series(["+82 10-1234-5678", "02-1588-1234"]))
        assert out.get_column("hash").to_list() == [
            key.hash_normalized("01012345678"),
            key.hash_normalized("0215881234"),
        ]


def test_mysql_without_its_ibis_backend_says_what_to_install(lake_path: Path) -> None:
    try:
        import ibis.backends.mysql  # noqa: F401
    except ImportError:
        with pytest.raises(ImportSourceError, match=r"ibis-framework\[mysql\]"):
            run("mysql://kmsg@127.0.0.1:1/kmsg", lake_path)
    else:
        pytest.skip("the Ibis MySQL backend is installed but no MySQL server is started here")


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_fixture() -> Iterator[str]:
    """The ``kmsg`` database of a PostgreSQL server: k-msg's table with the fixture's rows.

    The server ``.ci/run`` started (``$KMSG_TEST_POSTGRES_URL``, see ``tests/_pg_server.py``),
    else one started here in a temporary directory on 127.0.0.1.
    """
    pytest.importorskip("psycopg", reason="psycopg missing: pip install 'ibis-framework[postgres]'")
    pytest.importorskip("ibis.backends.postgres")
    given = os.environ.get(pg_server.URL_VARIABLE)
    if given:
        try:
            pg_server.load_kmsg_fixture(given)  # (already there: left as it is)
        except Exception as err:
            pytest.fail(f"${pg_server.URL_VARIABLE} is {given!r}, which cannot be used: {err}")
        yield given
        return
    base = Path(tempfile.mkdtemp(prefix="kmsg-pg-"))
    try:
        url = pg_server.start_with_fixture(base)
    except FileNotFoundError as err:  # no server binaries installed
        pytest.skip(str(err))
    except subprocess.SubprocessError as err:
        detail = (getattr(err, "stderr", None), getattr(err, "stdout", None))
        pytest.fail(f"could not start PostgreSQL: {err} {detail!r}")
    try:
        yield url
    finally:
        pg_server.stop(base)


@pytest.fixture(scope="session")
def postgres_url(postgres_fixture: str) -> Iterator[str]:
    """A database of this test session on that server, for tests that write tables of their own.

    Created empty and dropped at the end of the session (each test names its own tables).
    """
    root = postgres_fixture.rsplit("/", 1)[0]
    name = f"scratch_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(f"{root}/postgres", name)
    try:
        yield f"{root}/{name}"
    finally:
        pg_server.drop_database(f"{root}/postgres", name)


def _comparable(lake: Path) -> pl.DataFrame:
    with open_lake(lake) as store:
        frame = store.current().collect()
    return frame.drop("seq", "recorded_at", "requested_date").sort("message_id")


def test_postgres_fixture_imports_exactly_like_sqlite(
    postgres_fixture: str, tmp_path: Path
) -> None:
    from_pg = run(postgres_fixture, tmp_path / "pg", chunk_rows=700)
    assert (from_pg.rows_read, from_pg.new, from_pg.skipped) == (3000, 3000, 0)
    assert "***" not in from_pg.source  # no password in this URL to hide
    run(f"sqlite:///{FIXTURE_DB}", tmp_path / "sqlite")
    pg, lite = _comparable(tmp_path / "pg"), _comparable(tmp_path / "sqlite")
    # JSONB hands back keys in its own order: compare metadata as JSON values
    for frame in (pg, lite):
        assert frame.height == 3000
    assert pg.drop("metadata").equals(lite.drop("metadata"))
    assert [json.loads(m) for m in pg.get_column("metadata")] == [
        json.loads(m) for m in lite.get_column("metadata")
    ]
    assert run(postgres_fixture, tmp_path / "pg").appended == 0


def test_postgres_native_timestamps_jsonb_uuid_ids_and_updates(
    postgres_url: str, tmp_path: Path
) -> None:
    """k-msg's typeStrategy {messageId: 'uuid', timestamp: 'date'}: UUID and TIMESTAMPTZ."""
    table = "kmsg_date_strategy"
    pg_server.execute(
        postgres_url,
        f"""
        DROP TABLE IF EXISTS "{table}";
        CREATE TABLE "{table}" (
          "message_id" UUID PRIMARY KEY, "provider_id" TEXT NOT NULL,
          "provider_message_id" TEXT NOT NULL, "type" VARCHAR(64) NOT NULL,
          "to" VARCHAR(64) NOT NULL, "from" VARCHAR(64), "status" VARCHAR(64) NOT NULL,
          "provider_status_code" VARCHAR(64), "provider_status_message" TEXT,
          "sent_at" TIMESTAMPTZ, "delivered_at" TIMESTAMPTZ, "failed_at" TIMESTAMPTZ,
          "requested_at" TIMESTAMPTZ NOT NULL, "scheduled_at" TIMESTAMPTZ,
          "status_updated_at" TIMESTAMPTZ NOT NULL, "attempt_count" INTEGER NOT NULL DEFAULT 0,
          "last_checked_at" TIMESTAMPTZ, "next_check_at" TIMESTAMPTZ NOT NULL,
          "last_error" JSONB, "raw" JSONB, "metadata" JSONB)
        """,
    )
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(12)]
    rows = [
        (
            mid, "nhn", f"P{i}", "LMS", "01098765432", None, "SENT",
            T0_DT + timedelta(seconds=i), T0_DT + timedelta(seconds=i),
            T0_DT + timedelta(seconds=i + 30),
            json.dumps({"customFields": {"tenantId": "t1"}}),
            json.dumps({"vendor": {"code": i}}),
        )
        for i, mid in enumerate(ids)
    ]  # fmt: skip
    pg_server.execute(
        postgres_url,
        f'INSERT INTO "{table}" (message_id, provider_id, provider_message_id, type, "to", '
        '"from", status, requested_at, status_updated_at, next_check_at, metadata, raw) '
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb)",
        rows,
    )
    lake = tmp_path / "lake"
    with pytest.raises(ImportSourceError, match="timestamps='date'"):
        run(postgres_url, lake, table=table, timestamps="epoch_ms")
    report = run(postgres_url, lake, table=table, timestamps="date", chunk_rows=5)
    assert (report.new, report.skipped) == (12, 0)
    recs = current(lake)
    assert sorted(recs) == ids
    first = recs[ids[3]]
    assert first.requested_at == T0_DT + timedelta(seconds=3)
    assert first.metadata == {"custom_fields": {"tenantId": "t1"}}
    assert first.raw == {"vendor": {"code": 3}}
    assert run(postgres_url, lake, table=table).appended == 0
    pg_server.execute(
        postgres_url,
        f"UPDATE \"{table}\" SET status='DELIVERED', delivered_at=%s, status_updated_at=%s "
        "WHERE message_id=%s",
        [(T0_DT + timedelta(minutes=1), T0_DT + timedelta(minutes=1), ids[5])],
    )
    again = run(postgres_url, lake, table=table, chunk_rows=5)
    assert (again.new, again.changed, again.unchanged) == (0, 1, 11)
    assert current(lake)[ids[5]].status == "DELIVERED"


def test_postgres_reimport_reads_only_rows_written_since_the_watermark(
    postgres_url: str, tmp_path: Path
) -> None:
    table = "kmsg_watermark"
    pg_server.execute(
        postgres_url,
        f"""
        DROP TABLE IF EXISTS "{table}";
        CREATE TABLE "{table}" (
          "message_id" TEXT PRIMARY KEY, "provider_id" TEXT NOT NULL,
          "provider_message_id" TEXT NOT NULL, "type" TEXT NOT NULL, "to" TEXT NOT NULL,
          "status" TEXT NOT NULL, "requested_at" TIMESTAMPTZ NOT NULL,
          "status_updated_at" TIMESTAMPTZ NOT NULL, "attempt_count" INTEGER NOT NULL DEFAULT 0,
          "last_checked_at" TIMESTAMPTZ, "next_check_at" TIMESTAMPTZ NOT NULL)
        """,
    )
    old = T0_DT - timedelta(days=1)
    rows = [(f"m{i}", old) for i in range(8)] + [("z", T0_DT)]
    pg_server.execute(
        postgres_url,
        f'INSERT INTO "{table}" (message_id, provider_id, provider_message_id, type, "to", '
        "status, requested_at, status_updated_at, next_check_at) "
        "VALUES (%s, 'nhn', 'P', 'SMS', '01098765432', 'SENT', %s, %s, %s)",
        [(mid, at, at, at) for mid, at in rows],
    )
    lake = tmp_path / "lake"
    assert run(postgres_url, lake, table=table).new == 9
    assert run(postgres_url, lake, table=table).fetched == 1
    pg_server.execute(
        postgres_url,
        f"UPDATE \"{table}\" SET attempt_count=1, last_checked_at=%s WHERE message_id='m3'",
        [(T0_DT + timedelta(minutes=1),)],
    )
    again = run(postgres_url, lake, table=table)
    assert (again.fetched, again.changed, again.unchanged) == (2, 1, 8)
    assert current(lake)["m3"].attempt_count == 1
