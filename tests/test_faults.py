"""Faults: writers and compaction killed at random points while readers run; a full disk.

``tests/_crash_writer.py`` writes in a subprocess and prints each message id only after
the call that recorded it returned; it is killed (SIGKILL) at a random moment: among
single sends, inside a fold, inside a history merge. A reader process queries the lake
all along (current state, and "as of" now through the history) and must never fail nor
see the number of messages go down. Afterwards every
acknowledged id is in the lake exactly once, the next writer resumes, and ``doctor``
finds the lake healthy.

The disk fills up in two ways: an injected ``ENOSPC`` (the store's ``_write_parquet``
replaced by one that writes half a file and raises) at each step of publishing,
folding, merging and retention; and, where the machine lets us mount one, a real
tmpfs of a few megabytes written until it is full.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kmsg_analytics import DeliveryTrackingService, ParquetTrackingStore, RecordFilter
from kmsg_analytics._doctor import check_lake
from kmsg_analytics._retention import apply_retention
from tests._helpers import (
    Gateway,
    after_acks,
    mid_fold,
    mid_merge,
    quiet_lake,
    run_writer_until,
    send_pair,
)

KEY = "test-key-123"
KEYS = {"k1": bytes(range(32))}
BASE = datetime(2026, 11, 1, tzinfo=UTC)

READER = """
import json, sys
from datetime import UTC, datetime
from pathlib import Path
from kmsg_analytics import ParquetTrackingStore, RecordFilter
lake, stop, as_of = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "as_of"
store = ParquetTrackingStore(lake, hash_key="test-key-123")
last, n_queries, errors, races = 0, 0, [], []
while not stop.exists():
    try:
        n = store.count_records(RecordFilter())
        store.count_by(RecordFilter(), ["status"]).collect()
        store.list_records(RecordFilter(), 20).collect()
        n_queries += 1
        if n < last:
            errors.append(f"the count went down from {last} to {n}")
        last = max(last, n)
    except Exception as err:
        errors.append(f"{type(err).__name__}: {err}")
    if as_of:
        try:
            store.count_records(RecordFilter(), as_of=datetime.now(UTC))
        except FileNotFoundError as err:  # a history file merged away while being read
            races.append(str(err))
        except Exception as err:
            errors.append(f"as_of: {type(err).__name__}: {err}")
print(json.dumps({"queries": n_queries, "last": last, "errors": errors[:20], "races": races}))
"""


def check_lake_holds(lake: Path, acked: list[str], **options: Any) -> int:
    """Every acknowledged id is current exactly once; the lake is healthy. Returns messages."""
    wanted = set(acked)
    with ParquetTrackingStore(lake, hash_key=KEY, **options) as store:
        ids = store.current().select("message_id").collect().get_column("message_id")
        assert ids.n_unique() == ids.len(), "a message has two current rows"
        missing = wanted - set(ids.to_list())
        assert not missing, f"{len(missing)} acknowledged ids lost, e.g. {sorted(missing)[:5]}"
        seqs = store.history().select("seq").collect().get_column("seq")
        assert seqs.n_unique() == seqs.len()
        n = store.count_records(RecordFilter())
    report = check_lake(lake, hash_key=KEY)
    assert report.ok, str(report)
    return n


# --------------------------------------------------------------------------- killed writers


class Reader:
    """A process querying the lake until told to stop."""

    def __init__(self, lake: Path, tmp: Path, *, as_of: bool = False) -> None:
        self.stop = tmp / f"stop-{random.random()}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", READER, str(lake), str(self.stop), "as_of" if as_of else ""],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(self) -> dict[str, Any]:
        self.stop.touch()
        out, err = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, err[-3000:]
        result: dict[str, Any] = json.loads(out.splitlines()[-1])
        return result


def prepare(lake: Path) -> None:
    """Create the lake up front, so the reader can open it before the first writer."""
    ParquetTrackingStore(lake, hash_key=KEY).close()


def test_writers_killed_in_a_fold_and_at_random_while_a_reader_runs(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    log = tmp_path / "writer.log"
    prepare(lake)
    reader = Reader(lake, tmp_path, as_of=True)
    try:
        common = ["--p-compact", "0.04", "--compact-rows", "60", "--days", "6"]
        acked = run_writer_until(lake, log, 41, mid_fold(60, 3), *common)
        acked += run_writer_until(lake, log, 42, after_acks(random.Random(42).randint(40, 160)),
                                  *common)  # fmt: skip
    finally:
        seen = reader.finish()
    assert seen["errors"] == [], seen
    assert seen["queries"] > 0
    # History readers can still lose a race with a merge (issue-8 notes: the lake should
    # retry such reads); until it does, these are counted rather than failed.
    assert seen["races"] == [], seen["races"]
    n = check_lake_holds(lake, acked)
    assert n >= seen["last"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [51, 52, 53])
def test_writers_killed_at_many_points_while_readers_run(tmp_path: Path, seed: int) -> None:
    """Three writers in a row, each killed at a point drawn from the seed, two readers."""
    rng = random.Random(seed)
    lake = tmp_path / "lake"
    log = tmp_path / "writer.log"
    prepare(lake)
    readers = [Reader(lake, tmp_path, as_of=as_of) for as_of in (False, True)]
    acked: list[str] = []
    try:
        for k in range(3):
            stop = rng.choice([mid_fold(60, 3), mid_merge(60), after_acks(rng.randint(30, 400))])
            common = ["--p-compact", "0.03", "--compact-rows", str(rng.choice([40, 150]))]
            acked += run_writer_until(lake, log, seed * 10 + k, stop, *common)
    finally:
        seen = [r.finish() for r in readers]
    for s in seen:
        assert s["errors"] == [], s
    n = check_lake_holds(lake, acked)
    assert n >= max(s["last"] for s in seen)
    # and the next writer resumes: more sends, a compaction, all still there
    with ParquetTrackingStore(lake, hash_key=KEY) as store:
        svc = DeliveryTrackingService([Gateway()], store=store)
        svc.record_sends([send_pair(f"after-{i}", BASE) for i in range(10)])
        store.compact()
    check_lake_holds(lake, [*acked, *(f"after-{i}" for i in range(10))])


# --------------------------------------------------------------------------- a full disk


def disk_full_after(
    monkeypatch: pytest.MonkeyPatch, store: ParquetTrackingStore, ok_writes: int
) -> list[Path]:
    """Let ``ok_writes`` Parquet writes through, then fail each with ENOSPC (half a file).

    ``_to_parquet`` is where every Parquet file of the store is written (``_write_parquet``
    goes through it too): batches, folds, merges and retention.
    """
    real = store._to_parquet
    calls: list[Path] = []

    def write(expr: Any, path: Path, **options: Any) -> None:
        calls.append(path)
        if len(calls) > ok_writes:
            if options.get("partition_by"):  # a hive directory: one day written, half a file
                (path / "requested_date=2000-01-01").mkdir(parents=True)
                path = path / "requested_date=2000-01-01" / "part-0.parquet"
            path.write_bytes(b"PAR1" + b"\0" * 100)  # what a full disk leaves
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(expr, path, **options)

    monkeypatch.setattr(store, "_to_parquet", write)
    return calls


@pytest.fixture
def quiet(tmp_path: Path) -> Iterator[ParquetTrackingStore]:
    store = quiet_lake(tmp_path / "lake", keys=KEYS)
    yield store
    store.close()


def sends(svc: DeliveryTrackingService, prefix: str, n: int, days: int = 5) -> list[str]:
    ids = [f"{prefix}{i:03d}" for i in range(n)]
    for i, mid in enumerate(ids):
        svc.record_send(*send_pair(mid, BASE + timedelta(days=i % days, minutes=i)))
    return ids


def three_history_files(store: ParquetTrackingStore) -> list[str]:
    """24 sends published as three history files to merge, folded; their ids."""
    svc = DeliveryTrackingService([Gateway()], store=store)
    acked: list[str] = []
    for batch in range(3):
        acked += sends(svc, f"h{batch}-", 8)
        store.flush()
    store.compact(history=False)
    return acked


def test_enospc_while_publishing_keeps_acknowledged_sends(
    quiet: ParquetTrackingStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = tmp_path / "lake"
    svc = DeliveryTrackingService([Gateway()], store=quiet)
    acked = sends(svc, "a", 30)
    disk_full_after(monkeypatch, quiet, 0)
    with pytest.raises(OSError, match="No space left"):
        quiet.flush()
    # still answered from the log and memory, and the lake is consistent meanwhile
    assert quiet.count_records(RecordFilter()) == 30
    assert check_lake(lake, hash_key=KEY).ok
    monkeypatch.undo()  # space again
    acked += sends(svc, "b", 10)
    quiet.flush()
    quiet.close()
    assert check_lake_holds(lake, acked, keys=KEYS) == 40


DYING_WRITER = """
import errno, os, signal, sys
from kmsg_analytics import DeliveryTrackingService, ParquetTrackingStore
class G:
    id = "solapi"
store = ParquetTrackingStore(sys.argv[1], hash_key="test-key-123", keys={"k1": bytes(range(32))},
                             flush_rows=10**6, flush_seconds=3600)
svc = DeliveryTrackingService([G()], store=store)
for i in range(25):
    mid = f"d{i:03d}"
    svc.record_send(
        {"messageId": mid, "timestamp": "2026-11-02T10:00:00+00:00",
         "options": {"type": "SMS", "to": "010-1111-2222"}},
        {"messageId": mid, "providerId": "solapi", "providerMessageId": "G" + mid,
         "type": "SMS", "to": "010-1111-2222"},
    )
    print(mid, flush=True)
def full(table, path):
    path.write_bytes(b"PAR1" + bytes(50))
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
store._write_parquet = full
try:
    store.flush()
except OSError as err:
    print("#" + err.strerror, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_enospc_then_killed_loses_nothing(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    proc = subprocess.run(
        [sys.executable, "-c", DYING_WRITER, str(lake)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[-1] == "#No space left on device"
    report = check_lake(lake, hash_key=KEY)
    assert report.ok, str(report)
    assert {"wal", "staging"} <= {f.kind for f in report.findings if f.severity == "warning"}
    assert check_lake_holds(lake, lines[:-1], keys=KEYS) == 25
    assert list((lake / "_staging").iterdir()) == []


@pytest.mark.parametrize("ok_writes", [0, 1])
def test_enospc_while_folding(
    quiet: ParquetTrackingStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ok_writes: int
) -> None:
    """The fold writes the requested days (one hive directory), then the open set: fail at each."""
    lake = tmp_path / "lake"
    svc = DeliveryTrackingService([Gateway()], store=quiet)
    acked = sends(svc, "f", 20, days=4)
    quiet.flush()
    before = quiet.count_records(RecordFilter())
    disk_full_after(monkeypatch, quiet, ok_writes)
    with pytest.raises(OSError, match="No space left"):
        quiet.compact(history=False)
    assert quiet.count_records(RecordFilter()) == before
    report = check_lake(lake, hash_key=KEY)
    assert report.ok, str(report)
    monkeypatch.undo()
    quiet.compact()
    quiet.close()
    assert check_lake_holds(lake, acked, keys=KEYS) == 20


def test_enospc_while_merging_history(
    quiet: ParquetTrackingStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = tmp_path / "lake"
    acked = three_history_files(quiet)
    disk_full_after(monkeypatch, quiet, 0)
    with pytest.raises(OSError, match="No space left"):
        quiet.compact()
    assert check_lake(lake, hash_key=KEY).ok
    monkeypatch.undo()
    quiet.compact()
    assert len(list((lake / "history").rglob("*.parquet"))) == 1
    quiet.close()
    assert check_lake_holds(lake, acked, keys=KEYS) == 24


@pytest.mark.parametrize("ok_writes", [0, 1, 2, 3, 5])
def test_enospc_during_retention_is_finished_by_the_next_run(
    quiet: ParquetTrackingStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ok_writes: int
) -> None:
    """Writes of a run: its list of messages, the history partition, open, 4 current days."""
    lake = tmp_path / "lake"
    svc = DeliveryTrackingService([Gateway()], store=quiet)
    old = sends(svc, "old", 12, days=4)  # requested in November 2026
    now = BASE + timedelta(days=400)  # telecomMetadata: 365 days
    young = [f"young{i}" for i in range(5)]
    for mid in young:
        svc.record_send(*send_pair(mid, now - timedelta(days=3)))
    quiet.compact()
    writes = disk_full_after(monkeypatch, quiet, ok_writes)
    with pytest.raises(OSError, match="No space left"):
        apply_retention(quiet, now=now)
    assert len(writes) == ok_writes + 1
    report = check_lake(lake, hash_key=KEY)
    assert report.ok, str(report)
    if ok_writes >= 3:  # open/ is rewritten before current/: nothing expired is polled
        assert not {r.message_id for r in quiet.list_due(now, 100)} & set(old)
    monkeypatch.undo()
    result = apply_retention(quiet, now=now)
    assert result.resumed == (ok_writes > 0)
    assert quiet.count_records(RecordFilter(message_id=old)) == 0
    assert quiet.count_records(RecordFilter()) == 5
    quiet.close()
    assert check_lake_holds(lake, young, keys=KEYS) == 5


# --------------------------------------------------------------------------- a real full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs (needs root and a kernel that lets us mount; skipped otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def grow(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)


def test_a_real_full_disk(small_disk: Path) -> None:
    lake = small_disk / "lake"
    acked: list[str] = []
    store = ParquetTrackingStore(lake, hash_key=KEY, keys=KEYS, flush_rows=40, flush_seconds=3600)
    svc = DeliveryTrackingService([Gateway()], store=store)
    ballast = small_disk / "ballast"
    with ballast.open("wb") as fh:  # leave room for the lake to start, not to finish
        fh.write(b"\0" * (2 * 1024 * 1024))
    full = None
    for i in range(20_000):
        mid = f"full{i:05d}"
        try:
            svc.record_send(*send_pair(mid, BASE + timedelta(minutes=i)))
        except Exception as err:  # the disk is full: ENOSPC from the log or from publishing
            full = err
            break
        acked.append(mid)
    assert full is not None, "the disk never filled up"
    assert acked
    with contextlib.suppress(Exception):  # a fold on a full disk may fail: nothing is lost
        store.compact()
    ballast.unlink()
    grow(small_disk)
    store.close()  # publishes what is pending now that there is room
    assert check_lake_holds(lake, acked, keys=KEYS) >= len(acked)


class _Killed(BaseException):
    """Stands for the process dying at this point (nothing after it runs)."""


def test_killed_between_the_renames_of_a_directory_fallback_loses_no_partition(
    quiet: ParquetTrackingStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the OS cannot exchange directories, a death between the two renames of the
    fallback leaves the old partition in staging: the next writer puts it back."""
    from kmsg_analytics import _lakefs

    lake = tmp_path / "lake"
    acked = three_history_files(quiet)
    real_rename = os.rename

    def dying_rename(src: Any, dst: Any) -> None:
        real_rename(src, dst)
        if "trash-" in os.fspath(dst):  # the partition was moved aside: die right here
            raise _Killed

    monkeypatch.setattr(_lakefs, "exchange_dirs", lambda a, b: False)
    monkeypatch.setattr(_lakefs.os, "rename", dying_rename)
    with pytest.raises(_Killed):
        quiet.compact()
    monkeypatch.undo()
    assert not list((lake / "history").glob("ingest_date=*"))  # the window: it is missing
    reopened = ParquetTrackingStore(lake, hash_key=KEY, keys=KEYS)
    assert reopened.count_records(RecordFilter()) == 24
    assert len(list((lake / "history").rglob("*.parquet"))) == 3
    reopened.compact()
    reopened.close()
    assert check_lake_holds(lake, acked, keys=KEYS) == 24
