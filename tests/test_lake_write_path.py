"""Bulk loads hand the lake string views; the lake stores the rows it stored before.

``frame_to_table`` returns text as string views (:data:`LOAD_SCHEMA`, no copy of
Polars's strings). A load in requested order or not, split in two files or not, on the
default backend or another Ibis backend, must publish the rows a plain-Python model
expects: every row once, each file in requested order (ties in ``seq`` order), and the
fold's current rows the model's.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ibis
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kmsg_analytics._lake as lake_module
from kmsg_analytics import ParquetTrackingStore
from kmsg_analytics._loading import LOAD_SCHEMA, frame_to_table
from kmsg_analytics._phone import HashKey
from kmsg_analytics._schema import SNAPSHOT_SCHEMA

KEY = "test-key-123"
BASE = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def records(n: int, seed: int) -> pl.DataFrame:
    """``n`` records on a few days, requested times shuffled (with repeats: ties)."""
    rng = random.Random(seed)
    minutes = [rng.randrange(0, 5 * 24 * 60, 30) for _ in range(n)]
    return pl.DataFrame(
        {
            "message_id": [f"m{i:04d}" for i in range(n)],
            "provider_id": "solapi",
            "type": "SMS",
            "to_hash": [f"{i % 7:064x}" for i in range(n)],
            "requested_at": [BASE + timedelta(minutes=m) for m in minutes],
            "status": [rng.choice(["SENT", "DELIVERED", "FAILED"]) for _ in range(n)],
            "provider_message_id": [f"  G{i} " if i % 3 else None for i in range(n)],
            "last_error": [
                {"code": "E1", "message": "no"} if i % 5 == 0 else None for i in range(n)
            ],
        }
    )


def test_frame_to_table_gives_views_of_the_lake_rows() -> None:
    frame = records(50, seed=1)
    table = frame_to_table(frame, HashKey(KEY), keep_numbers=False)
    assert table.schema == LOAD_SCHEMA
    assert table.schema.names == SNAPSHOT_SCHEMA.names
    plain = table.cast(SNAPSHOT_SCHEMA)
    assert plain.column("message_id").to_pylist() == frame.get_column("message_id").to_list()
    assert plain.column("provider_message_id").to_pylist() == [
        f"G{i}" if i % 3 else "" for i in range(50)
    ]
    assert plain.column("last_error").to_pylist()[0] == {"code": "E1", "message": "no"}


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("backend", ["duckdb", "polars"])
def test_a_shuffled_load_is_published_in_requested_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split: bool, backend: str
) -> None:
    if split:  # two files written at once, swapped in together
        monkeypatch.setattr(lake_module, "_SPLIT_ROWS", 16)
    frame = records(300, seed=2)
    options = {"backend": ibis.polars.connect()} if backend == "polars" else {}
    with ParquetTrackingStore(tmp_path / "lake", hash_key=KEY, **options) as store:
        store.append_table(frame_to_table(frame, store.hash_key, keep_numbers=False))
        files = store.paths.history_files()
        assert len(files) == (2 if split and backend == "duckdb" else 1)
        # the model: seq numbers the rows as given; a file holds its seq range, stably
        # sorted by requested time
        given = frame.with_row_index("seq", offset=1).with_columns(pl.col("seq").cast(pl.Int64))
        for f in files:
            got = pl.read_parquet(f.path).select("seq", "message_id", "requested_at")
            want = (
                given.filter(pl.col("seq").is_between(f.lo, f.hi))
                .sort("requested_at", maintain_order=True)
                .select("seq", "message_id", "requested_at")
            )
            assert got.equals(want)
            # the file's types are the lake's own: text as plain Parquet strings
            assert pq.read_schema(f.path).field("message_id").type == pa.string()
        store.compact()
        current = store.current().collect().sort("message_id")
    assert current.get_column("message_id").to_list() == frame.get_column("message_id").to_list()
    assert current.get_column("status").to_list() == frame.get_column("status").to_list()
    assert current.get_column("provider_message_id").to_list() == [
        f"G{i}" if i % 3 else "" for i in range(300)
    ]
