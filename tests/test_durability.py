"""Durability: a writer killed at any moment loses nothing it acknowledged.

``tests/_crash_writer.py`` runs in a subprocess and prints each message id only
after the call that recorded it returned. The tests kill it with SIGKILL (no
``close()``, no ``atexit``) at various moments, then open the lake here and check
that every acknowledged id is there, once, and that other engines read the lake.
"""

from __future__ import annotations

import random
import shutil
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

from kmsg_analytics import DeliveryTrackingService, ParquetTrackingStore, RecordFilter
from tests._helpers import (
    Gateway,
    Stop,
    after_acks,
    complete_lines,
    mid_fold,
    mid_merge,
    quiet_lake,
    run_writer_until,
    send_pair,
    start_writer,
)

KEY = "test-key-123"
BASE = datetime(2026, 11, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- helpers


def assert_no_visible_debris(lake: Path) -> None:
    """The datasets hold only whole Parquet files (readable footers), nothing else."""
    for sub in ("history", "current", "open"):
        for path in (lake / sub).rglob("*"):
            if path.is_dir():
                continue
            assert path.suffix == ".parquet", path
            pq.read_metadata(path)  # a half-written file would have no footer


def duckdb_counts(pattern: Path) -> tuple[int, int]:
    con = duckdb.connect()
    try:
        row = con.execute(
            "SELECT count(*), count(DISTINCT message_id) "
            "FROM read_parquet($p, hive_partitioning = true)",
            {"p": str(pattern)},
        ).fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0]), int(row[1])


def check_recovered_lake(lake: Path, acked: list[str]) -> None:
    """Everything acknowledged is in the lake once, and other engines read it after compact()."""
    assert acked
    assert_no_visible_debris(lake)
    wanted = set(acked)
    store = ParquetTrackingStore(lake, hash_key=KEY)
    try:
        assert list((lake / "_staging").iterdir()) == []
        svc = DeliveryTrackingService([Gateway()], store=store)
        current = store.current().select("message_id").collect().get_column("message_id")
        missing = wanted - set(current.to_list())
        assert not missing, f"{len(missing)} acknowledged ids lost, e.g. {sorted(missing)[:5]}"
        assert current.n_unique() == current.len(), "a message has more than one current row"
        assert svc.count_records(message_id=sorted(wanted)) == len(wanted)
        for mid in random.Random(len(acked)).sample(sorted(wanted), min(25, len(wanted))):
            record = svc.get_record(mid)
            assert record is not None
            assert record.message_id == mid

        history = store.history().select("seq", "message_id").collect()
        # every acknowledged write is a snapshot, and seqs are 1..n without gaps or repeats
        assert history.height >= len(acked)
        assert history.get_column("seq").sort().to_list() == list(range(1, history.height + 1))
        assert wanted <= set(history.get_column("message_id").to_list())

        store.compact()
        n_messages = svc.count_records(RecordFilter())
        assert n_messages == store.current().select("message_id").collect().height
    finally:
        store.close()

    rows, distinct = duckdb_counts(lake / "current" / "**" / "*.parquet")
    assert rows == distinct, f"current/ holds {rows} rows for {distinct} messages"
    assert distinct == n_messages
    assert duckdb_counts(lake / "history" / "**" / "*.parquet")[0] == history.height
    scan = pl.scan_parquet(lake / "current" / "**" / "*.parquet", hive_partitioning=True)
    ids = scan.select("message_id").collect().get_column("message_id")
    assert ids.len() == ids.n_unique() == n_messages
    assert wanted <= set(ids.to_list())
    assert_no_visible_debris(lake)


# --------------------------------------------------------------------------- crash tests


def stop_after_ids(seed: int) -> Stop:
    return after_acks(random.Random(seed).randint(300, 1200))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("seed", "when"),
    [(1, "ids"), (2, "ids"), (3, "ids"), (5, "fold"), (6, "merge")],
)
def test_killed_writer_loses_no_acknowledged_send(tmp_path: Path, seed: int, when: str) -> None:
    lake = tmp_path / "lake"
    stop = {"ids": stop_after_ids(seed), "fold": mid_fold(200, 4), "merge": mid_merge(200)}[when]
    acked = run_writer_until(lake, tmp_path / "writer.log", seed, stop)
    check_recovered_lake(lake, acked)


@pytest.mark.slow
def test_a_second_crash_after_recovery_loses_nothing(tmp_path: Path) -> None:
    """Kill, let a new writer recover and write more, kill again: both runs' sends survive."""
    lake = tmp_path / "lake"
    log = tmp_path / "writer.log"
    first = run_writer_until(lake, log, 11, stop_after_ids(11))
    second = run_writer_until(lake, log, 12, stop_after_ids(12))
    check_recovered_lake(lake, first + second)


@pytest.mark.slow
def test_two_processes_appending_concurrently_lose_nothing(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    log = tmp_path / "writer.log"
    common = ["--count", "300", "--p-compact", "0.02"]
    procs = [
        start_writer(lake, log, "--seed", str(seed), "--prefix", prefix, *common)
        for seed, prefix in ((21, "a"), (22, "b"))
    ]
    outputs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], log.read_text()[-2000:]
    lines = [complete_lines(out) for out in outputs]
    assert all(out[-1] == "#done" for out in lines)
    acked = [line for out in lines for line in out if not line.startswith("#")]
    assert len(acked) == 600

    with ParquetTrackingStore(lake, hash_key=KEY) as store:
        history = store.history().select("seq", "message_id").collect()
        # exactly the acknowledged writes, each once, with unique consecutive seqs
        assert history.height == len(acked)
        assert history.get_column("seq").sort().to_list() == list(range(1, len(acked) + 1))
        assert sorted(history.get_column("message_id").to_list()) == sorted(acked)
        current = store.current().select("message_id").collect().get_column("message_id")
        assert sorted(current.to_list()) == sorted(set(acked))
    check_recovered_lake(lake, acked)


# --------------------------------------------------------------------------- the write-ahead log


def history_rows(lake: Path) -> int:
    files = list((lake / "history").rglob("*.parquet"))
    return sum(pq.read_metadata(f).num_rows for f in files)


def test_dead_writers_log_is_replayed_exactly_once(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    log = tmp_path / "writer.log"
    proc = start_writer(
        lake, log, "--seed", "31", "--prefix", "w", "--count", "60", "--self-kill",
        "--p-batch", "0", "--p-compact", "0", "--flush-rows", "1000000", "--flush-seconds", "3600",
    )  # fmt: skip
    out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    acked = complete_lines(out)
    assert len(acked) == 60
    # nothing was published: the sends live only in the dead writer's log
    assert history_rows(lake) == 0
    assert len(list((lake / "_wal").glob("*.wal"))) == 1

    for _ in range(2):  # reopened twice: replayed by the first, not again by the second
        with ParquetTrackingStore(lake, hash_key=KEY) as store:
            assert list((lake / "_wal").iterdir()) == []
            assert history_rows(lake) == 60
            assert store.count_records(RecordFilter()) == len(set(acked))
            seqs = store.history().select("seq").collect().get_column("seq").sort().to_list()
            assert seqs == list(range(1, 61))


@pytest.fixture
def quiet_store(tmp_path: Path) -> Iterator[ParquetTrackingStore]:
    """A store that publishes only when told to (no timer, no size trigger)."""
    store = quiet_lake(tmp_path / "lake")
    yield store
    store.close()


@pytest.mark.parametrize("died", ["before_state_written", "before_log_deleted"])
def test_log_of_a_published_batch_is_not_replayed(
    quiet_store: ParquetTrackingStore, tmp_path: Path, died: str
) -> None:
    """The files a writer killed in the middle of publishing leaves behind, replayed once.

    ``before_state_written``: the batch was renamed into history, but ``_state.json``
    and the log are as before. ``before_log_deleted``: the state was written too, only
    the log is still there.
    """
    lake = tmp_path / "lake"
    svc = DeliveryTrackingService([Gateway()], store=quiet_store)
    for i in range(20):
        svc.record_send(*send_pair(f"p{i:02d}", BASE + timedelta(hours=i)))
    (wal,) = (lake / "_wal").glob("*.wal")
    wal_bytes = wal.read_bytes()
    state = lake / "_state.json"
    state_bytes = state.read_bytes() if state.exists() else None
    quiet_store.flush()
    assert not wal.exists()
    quiet_store.close()

    wal.write_bytes(wal_bytes)
    if died == "before_state_written":
        if state_bytes is None:
            state.unlink()
        else:
            state.write_bytes(state_bytes)

    for n in (20, 21):  # reopened twice; each time one more send is written and closed
        with ParquetTrackingStore(lake, hash_key=KEY) as store:
            assert list((lake / "_wal").iterdir()) == []
            assert history_rows(lake) == n
            assert store.count_records(RecordFilter()) == n
            seqs = store.history().select("seq").collect().get_column("seq").sort().to_list()
            assert seqs == list(range(1, n + 1))
            DeliveryTrackingService([Gateway()], store=store).record_send(*send_pair(f"q{n}", BASE))
    with ParquetTrackingStore(lake, hash_key=KEY) as store:
        assert history_rows(lake) == 22
        assert store.count_records(RecordFilter()) == 22


def test_torn_last_line_of_a_log_is_ignored(
    quiet_store: ParquetTrackingStore, tmp_path: Path
) -> None:
    """A writer killed inside ``write(2)`` leaves a partial line that was never acknowledged."""
    lake = tmp_path / "lake"
    svc = DeliveryTrackingService([Gateway()], store=quiet_store)
    for i in range(5):
        svc.record_send(*send_pair(f"t{i}", BASE))
    (wal,) = (lake / "_wal").glob("*.wal")
    saved = wal.read_bytes()
    quiet_store.flush()
    quiet_store.close()
    shutil.rmtree(lake)
    # a fresh lake holding only that log, plus half of a sixth line
    fresh = ParquetTrackingStore(lake, hash_key=KEY)
    fresh.close()
    torn = saved + saved.split(b"\n")[0][:57]
    (lake / "_wal" / wal.name).write_bytes(torn)
    with ParquetTrackingStore(lake, hash_key=KEY) as store:
        assert store.count_records(RecordFilter()) == 5
        assert history_rows(lake) == 5


def test_interrupted_compaction_is_finished_by_the_next(tmp_path: Path) -> None:
    """Compaction killed after replacing current partitions but before the state says so.

    The next compaction folds the same snapshots again: every message must still be
    one row in ``current/`` (folding is idempotent).
    """
    lake = tmp_path / "lake"
    with ParquetTrackingStore(lake, hash_key=KEY) as store:
        svc = DeliveryTrackingService([Gateway()], store=store)
        svc.record_sends([send_pair(f"c{i:02d}", BASE + timedelta(hours=7 * i)) for i in range(20)])
        store.compact()
        svc.record_sends([send_pair(f"d{i:02d}", BASE + timedelta(hours=7 * i)) for i in range(20)])
        svc.record_sends([send_pair(f"c{i:02d}", BASE + timedelta(hours=7 * i)) for i in range(5)])
        before = (lake / "_state.json").read_bytes()
        store.compact(history=False)
    (lake / "_state.json").write_bytes(before)  # the kill came just before the state write

    with ParquetTrackingStore(lake, hash_key=KEY) as store:
        assert store.count_records(RecordFilter()) == 40
        store.compact()
        assert store.count_records(RecordFilter()) == 40
    rows, distinct = duckdb_counts(lake / "current" / "**" / "*.parquet")
    assert (rows, distinct) == (40, 40)
