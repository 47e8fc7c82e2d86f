"""Key rotation re-seals every number under the current key and changes nothing else.

A lake sealed with an old key is rotated to a new one: afterwards every envelope is
under the new key, every row is otherwise the same value for value (``seq`` included),
and the new key alone opens every number. A rotation killed half way (SIGKILL in a
subprocess) leaves a readable lake whose numbers each open with one of the keys, and
running it again finishes it. Keys the lake needs but the provider lacks stop the
rotation before anything is written.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kmsg_analytics import DeliveryTrackingService, ParquetTrackingStore, RecordFilter
from kmsg_analytics._crypto import KeyUnavailableError, NumberCipher, StaticKeyProvider
from kmsg_analytics._doctor import check_lake
from kmsg_analytics._keys import key_usage, rotate_keys
from kmsg_analytics.cli import main
from tests._helpers import Gateway

KEY = "test-key-123"
OLD = bytes(range(32))
NEW = bytes(range(100, 132))
BOTH = {"new": NEW, "old": OLD}
ENC = ("to_enc", "from_enc")
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _pair(i: int, day: int) -> tuple[dict[str, Any], dict[str, Any]]:
    to = f"010-{1000 + i % 700:04d}-{i % 9973:04d}"
    at = START + timedelta(days=day, minutes=i)
    ctx = {
        "messageId": f"m{i}",
        "timestamp": at.isoformat(),
        "options": {"type": "SMS", "to": to, "from": "02-123-4567" if i % 3 else None},
    }
    res = {"messageId": f"m{i}", "providerId": "solapi", "providerMessageId": f"G{i}",
           "type": "SMS", "to": to}  # fmt: skip
    return ctx, res


def build_lake(path: Path, n: int = 300) -> None:
    """A lake sealed with key ``old``: compacted history, a merged day, and a tail past it."""
    store = ParquetTrackingStore(path, hash_key=KEY, keys={"old": OLD})
    with DeliveryTrackingService([Gateway()], store=store) as svc:
        svc.record_sends(_pair(i, i % 4) for i in range(n // 3))
        svc.record_sends(_pair(i, i % 4) for i in range(n // 3, 2 * n // 3))
        store.compact()
        for i in range(2 * n // 3, 2 * n // 3 + 5):  # single sends through the log
            svc.record_send(*_pair(i, 1))
        store.flush()
        svc.ingest_events([{"messageId": "m1", "status": "DELIVERED"}])
        svc.record_sends(_pair(i, 5) for i in range(2 * n // 3 + 5, n))


def lake_bytes(path: Path) -> dict[str, str]:
    """A digest of every file under the lake (the lock file aside)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "_lock"
    }


def history(path: Path) -> pl.DataFrame:
    with ParquetTrackingStore(path, hash_key=KEY, keys=BOTH) as store:
        return store.history().collect().sort("seq")


def all_files(path: Path) -> pl.DataFrame:
    """Every row of every dataset file, with the file it came from."""
    frames = []
    for f in sorted(path.glob("*/**/*.parquet")):
        if "_staging" in f.parts:
            continue
        frame = pl.read_parquet(f, hive_partitioning=False)
        frames.append(frame.select(*ENC, "message_id", "seq").with_columns(file=pl.lit(str(f))))
    return pl.concat(frames)


def kids(frame: pl.DataFrame) -> set[str]:
    out: set[str] = set()
    for name in ENC:
        out |= set(frame.get_column(name).drop_nulls().str.split(".").list.get(1).to_list())
    return out


def numbers(path: Path, keys: dict[str, bytes]) -> dict[str, tuple[str | None, str | None]]:
    with ParquetTrackingStore(path, hash_key=KEY, keys=keys) as store:
        ids = store.current().select("message_id").collect().get_column("message_id")
        out = {}
        for mid in ids.to_list():
            rec = store.get(mid)
            assert rec is not None
            out[mid] = store.reveal_numbers(rec)
        return out


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    path = tmp_path / "lake"
    build_lake(path)
    return path


def test_rotation_reseals_everything_and_changes_nothing_else(lake: Path) -> None:
    before_hist = history(lake)
    before_numbers = numbers(lake, {"old": OLD})
    with ParquetTrackingStore(lake, hash_key=KEY, keys=BOTH) as store:
        before_counts = store.count_by(RecordFilter(), ["status", "type"]).collect()
    assert kids(all_files(lake)) == {"old"}
    seen: list[str] = []

    result = rotate_keys(lake, keys=BOTH, hash_key=KEY, progress=seen.append)

    assert result.active_kid == "new"
    assert result.files_rewritten
    assert seen[-1] == "done"
    assert result.after.rotated
    assert result.after.can_retire("old")
    assert set(result.envelopes_resealed) == {"old"}
    assert sum(result.envelopes_resealed.values()) == sum(result.before.envelopes.values())
    assert kids(all_files(lake)) == {"new"}
    after_hist = history(lake)
    assert_frame_equal(after_hist.drop(*ENC), before_hist.drop(*ENC))
    assert (after_hist.get_column("to_enc").is_null() == before_hist["to_enc"].is_null()).all()
    # the new key alone opens every number, and they are the same numbers
    assert numbers(lake, {"new": NEW}) == before_numbers
    with ParquetTrackingStore(lake, hash_key=KEY, keys={"new": NEW}) as store:
        after_counts = store.count_by(RecordFilter(), ["status", "type"]).collect()
        assert store.count_records(RecordFilter(to="010-1001-0001")) == 1
    assert_frame_equal(after_counts, before_counts)
    assert check_lake(lake, hash_key=KEY, keys={"new": NEW}).ok
    # a second run has nothing left to do and touches no file
    snapshot = lake_bytes(lake)
    again = rotate_keys(lake, keys=BOTH, hash_key=KEY)
    assert again.files_rewritten == ()
    assert again.after.rotated
    assert lake_bytes(lake) == snapshot


def test_envelopes_are_those_the_new_key_seals(lake: Path) -> None:
    rotate_keys(lake, keys=BOTH, hash_key=KEY)
    cipher = NumberCipher(StaticKeyProvider({"new": NEW}))
    frame = all_files(lake).filter(pl.col("to_enc").is_not_null()).head(20)
    for env in frame.get_column("to_enc").to_list():
        assert cipher.seal(cipher.open(env, "to"), "to") == env


def test_a_missing_old_key_stops_the_rotation_before_anything_is_written(lake: Path) -> None:
    before = lake_bytes(lake)
    with pytest.raises(KeyUnavailableError, match=r"old.*Nothing was changed"):
        rotate_keys(lake, keys={"new": NEW}, hash_key=KEY)
    after = lake_bytes(lake)
    # the keys are checked before anything is folded or rewritten
    assert {k: v for k, v in after.items() if k.endswith(".parquet")} == {
        k: v for k, v in before.items() if k.endswith(".parquet")
    }


def test_key_usage_counts_per_kid_and_dataset(lake: Path) -> None:
    usage = key_usage(lake, keys=BOTH)
    files = all_files(lake)
    expected = sum(files.get_column(c).drop_nulls().len() for c in ENC)
    assert dict(usage.envelopes) == {"old": expected}
    assert set(usage.by_dataset) == {"history", "current", "open"}
    assert usage.active_kid == "new"
    assert not usage.rotated
    assert not usage.can_retire("old")
    assert len(usage.stale_files) == usage.files
    text = "\n".join(usage.lines())
    assert "key old" in text
    assert "keys rotate" in text
    # without keys it still counts (no key is needed to count)
    bare = key_usage(lake, keys={"other": NEW})
    assert dict(bare.envelopes) == {"old": expected}
    assert "cannot be decrypted" in "\n".join(bare.lines())


def test_rows_waiting_in_a_live_writers_log_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "lake"
    build_lake(path, n=30)
    writer = ParquetTrackingStore(path, hash_key=KEY, keys={"old": OLD}, flush_seconds=3600)
    try:
        svc = DeliveryTrackingService([Gateway()], store=writer)
        svc.record_send(*_pair(999, 2))  # acknowledged in the log, not published
        result = rotate_keys(path, keys=BOTH, hash_key=KEY)
        assert dict(result.after.envelopes).keys() == {"new"}
        assert dict(result.after.pending) == {"old": 1}  # to only (no from_)
        assert not result.after.rotated
        assert not result.after.can_retire("old")
        assert "write-ahead logs" in "\n".join(result.lines())
    finally:
        writer.close()
    # published now (still under the writer's key): a second rotation takes it
    assert rotate_keys(path, keys=BOTH, hash_key=KEY).after.rotated


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from kmsg_analytics._keys import rotate_keys
    lake, stop = sys.argv[1], int(sys.argv[2])
    keys = {"new": bytes(range(100, 132)), "old": bytes(range(32))}
    seen = []
    def progress(line):
        seen.append(line)
        if len(seen) == stop:
            os.kill(os.getpid(), signal.SIGKILL)
    rotate_keys(lake, keys=keys, hash_key="test-key-123", progress=progress)
    """
)


def _kill_rotation(path: Path, stop: int) -> int:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, str(path), str(stop)],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    return proc.returncode


@pytest.mark.slow
@pytest.mark.parametrize("stop", [2, 4])
def test_a_rotation_killed_half_way_leaves_a_readable_lake_and_a_rerun_finishes(
    lake: Path, stop: int
) -> None:
    before_hist = history(lake)
    before_numbers = numbers(lake, {"old": OLD})
    assert _kill_rotation(lake, stop) == -signal.SIGKILL
    # half rotated: both key ids present, every file whole, every number opens
    assert kids(all_files(lake)) == {"old", "new"}
    assert_frame_equal(history(lake).drop(*ENC), before_hist.drop(*ENC))
    assert numbers(lake, BOTH) == before_numbers
    cipher = NumberCipher(StaticKeyProvider(BOTH))
    for name, fld in (("to_enc", "to"), ("from_enc", "from_")):
        for env in all_files(lake).get_column(name).drop_nulls().unique().to_list():
            cipher.open(env, fld)
    # the rerun clears the staged debris and finishes
    result = rotate_keys(lake, keys=BOTH, hash_key=KEY)
    assert result.files_rewritten
    assert result.after.rotated
    assert not list((lake / "_staging").iterdir())
    assert numbers(lake, {"new": NEW}) == before_numbers
    assert check_lake(lake, hash_key=KEY, keys={"new": NEW}).ok


def test_a_reader_sees_whole_files_throughout(lake: Path) -> None:
    reader = ParquetTrackingStore(lake, hash_key=KEY, keys=BOTH)
    try:
        expected = reader.count_by(RecordFilter(), ["status"]).collect()
        expected_numbers = numbers(lake, BOTH)

        def check(_line: str) -> None:
            assert_frame_equal(reader.count_by(RecordFilter(), ["status"]).collect(), expected)
            for mid in ("m1", "m7", "m250"):
                rec = reader.get(mid)
                assert rec is not None
                assert reader.reveal_numbers(rec) == expected_numbers[mid]

        rotate_keys(lake, keys=BOTH, hash_key=KEY, progress=check)
    finally:
        reader.close()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("KMSG_ANALYTICS_HASH_KEY", KEY)
    monkeypatch.setenv("KMSG_ANALYTICS_KEY", f"new:{NEW.hex()},old:{OLD.hex()}")


@pytest.mark.usefixtures("env")
def test_cli_check_then_rotate(lake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "check", "--lake", str(lake)]) == 1
    out = capsys.readouterr().out
    assert "key old" in out
    assert "keys rotate" in out
    assert main(["keys", "rotate", "--lake", str(lake), "-v"]) == 0
    captured = capsys.readouterr()
    assert "re-sealed" in captured.out
    assert "re-sealing history/" in captured.err
    assert main(["keys", "rotate", "--check", "--lake", str(lake)]) == 0
    assert "can be retired" in capsys.readouterr().out


@pytest.mark.usefixtures("env")
def test_cli_refuses_without_the_old_key(
    lake: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KMSG_ANALYTICS_KEY", f"new:{NEW.hex()}")
    assert main(["keys", "rotate", "--lake", str(lake)]) == 2
    assert "old" in capsys.readouterr().err
    assert main(["keys", "rotate", "--lake", str(lake / "nope")]) == 2
    assert "no lake" in capsys.readouterr().err


def test_a_plain_lake_has_nothing_to_rotate(tmp_path: Path) -> None:
    path = tmp_path / "lake"
    store = ParquetTrackingStore(path, hash_key=KEY, numbers="plain")
    with DeliveryTrackingService([Gateway()], store=store) as svc:
        svc.record_sends(_pair(i, 0) for i in range(5))
    result = rotate_keys(path, keys=BOTH, hash_key=KEY)
    assert result.files_rewritten == ()
    assert result.after.rotated
    assert "no encrypted numbers" in "\n".join(result.after.lines())
