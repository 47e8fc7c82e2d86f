"""Retention: k-msg's classes and preset, plan and apply against a plain-Python model.

The model knows only snapshots in write order and the precedence rule; it decides which
messages are past retention as k-msg's ``resolveRetentionDays`` would, and the lake must
remove exactly their current rows and every one of their snapshots. ``apply`` is also
killed (SIGKILL, in a subprocess) at each step of its work: every partition must then be
whole, old or new, and the next run must finish the job and leave one log line per
partition.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ibis
import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from kmsg_analytics import (
    RETENTION_CLASSES,
    InvalidRecordError,
    ParquetTrackingStore,
    RecordFilter,
    TrackingRecord,
)
from kmsg_analytics._cli_admin import add_admin_parsers
from kmsg_analytics._doctor import check_lake
from kmsg_analytics._retention import (
    RETENTION_PRESETS,
    RetentionContext,
    RetentionPolicy,
    apply_retention,
    plan_retention,
)

KEY = "test-key-123"
#: encryption keys given in code, so no key file is created under ~/.config
KEYS = {"k1": bytes(range(32))}
NOW = datetime(2031, 6, 1, 12, 0, tzinfo=UTC)
PROVIDERS = ("solapi", "iwinv", "aligo")
OFFSET = 1 << 62


def open_lake(path: Path, **options: Any) -> ParquetTrackingStore:
    return ParquetTrackingStore(path, hash_key=KEY, keys=KEYS, **options)


def make_record(
    mid: str,
    requested: datetime,
    cls: str,
    *,
    status: str = "SENT",
    provider: str = "solapi",
) -> TrackingRecord:
    return TrackingRecord(
        message_id=mid,
        provider_id=provider,
        provider_message_id=f"G-{mid}",
        type="SMS",
        to_hash="0" * 64,
        to_masked="010****5678",
        requested_at=requested,
        status=status,
        status_updated_at=requested,
        next_check_at=requested + timedelta(seconds=30),
        retention_class=cls,
        retention_bucket_ym=requested.year * 100 + requested.month,
    )


# --------------------------------------------------------------------------- the policy


def test_preset_is_k_msgs_baseline() -> None:
    assert dict(RETENTION_PRESETS["kr-b2b-baseline"]) == {
        "opsLogs": 90,
        "telecomMetadata": 365,
        "billingEvidence": 1825,
    }
    policy = RetentionPolicy()
    assert [policy.default_days(c) for c in RETENTION_CLASSES] == [90, 365, 1825]


def test_tenant_override_replaces_the_preset_only_when_positive() -> None:
    policy = RetentionPolicy(tenant_override_days={"opsLogs": 7, "telecomMetadata": 0,
                                                   "billingEvidence": -3})  # fmt: skip
    assert policy.default_days("opsLogs") == 7
    assert policy.default_days("telecomMetadata") == 365
    assert policy.default_days("billingEvidence") == 1825


def test_contract_resolver_replaces_both_when_positive() -> None:
    seen: list[RetentionContext] = []

    def resolver(ctx: RetentionContext) -> float | None:
        seen.append(ctx)
        return {"aligo": 3, "iwinv": 0, "solapi": None}[ctx.record.provider_id]

    policy = RetentionPolicy(
        tenant_override_days={"opsLogs": 30}, contract_resolver=resolver, tenant_id="t1"
    )
    t = datetime(2026, 1, 1, tzinfo=UTC)
    assert policy.days_for(make_record("a", t, "opsLogs", provider="aligo")) == 3
    assert policy.days_for(make_record("b", t, "opsLogs", provider="iwinv")) == 30
    assert policy.days_for(make_record("c", t, "billingEvidence", provider="solapi")) == 1825
    assert [(c.retention_class, c.default_days, c.tenant_id) for c in seen] == [
        ("opsLogs", 30, "t1"),
        ("opsLogs", 30, "t1"),
        ("billingEvidence", 1825, "t1"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"preset": "eu-default"}, "preset"),
        ({"tenant_override_days": {"smsBodies": 3}}, "tenant_override_days"),
        ({"tenant_override_days": {"opsLogs": "30"}}, "tenant_override_days['opsLogs']"),
        ({"tenant_override_days": {"opsLogs": float("nan")}}, "tenant_override_days['opsLogs']"),
        ({"tenant_override_days": {"opsLogs": True}}, "tenant_override_days['opsLogs']"),
        ({"tenant_override_days": {"opsLogs": 1e9}}, "tenant_override_days['opsLogs']"),
        ({"contract_resolver": 30}, "contract_resolver"),
    ],
)
def test_bad_policies_are_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRecordError) as err:
        RetentionPolicy(**kwargs)
    assert err.value.field == field


def test_a_resolver_answering_nonsense_is_named() -> None:
    policy = RetentionPolicy(contract_resolver=lambda ctx: "forever")  # type: ignore[arg-type,return-value]
    with pytest.raises(InvalidRecordError, match="message 'm1'"):
        policy.days_for(make_record("m1", NOW, "opsLogs"))


# --------------------------------------------------------------------------- the model


@dataclass
class Snap:
    seq: int
    kind: str
    mid: str
    requested: datetime
    cls: str
    provider: str
    status: str


def model_current(snaps: list[Snap]) -> dict[str, Snap]:
    best: dict[str, Snap] = {}
    for s in snaps:
        key = s.seq + (OFFSET if s.kind != "send" else 0)
        old = best.get(s.mid)
        if old is None or key > old.seq + (OFFSET if old.kind != "send" else 0):
            best[s.mid] = s
    return best


def model_days(snap: Snap, overrides: dict[str, float], contracts: dict[str, float]) -> float:
    """k-msg's resolveRetentionDays, written out."""
    preset = {"opsLogs": 90, "telecomMetadata": 365, "billingEvidence": 1825}[snap.cls]
    tenant = overrides.get(snap.cls)
    default = tenant if tenant is not None and tenant > 0 else preset
    contract = contracts.get(snap.provider)
    return contract if contract is not None and contract > 0 else default


@pytest.fixture(scope="module")
def backend() -> Iterator[Any]:
    con = ibis.duckdb.connect(threads=1)
    yield con
    con.disconnect()


MESSAGE = st.tuples(
    st.sampled_from(RETENTION_CLASSES),
    st.one_of(st.integers(0, 2100), st.sampled_from([7, 30, 90, 365, 400, 1825])),
    st.sampled_from([0, 0, 1, 3600, 86_399]),
    st.sampled_from(["send", "poll", "resend", "poll+resend"]),
    st.sampled_from(PROVIDERS),
)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    messages=st.lists(MESSAGE, min_size=1, max_size=20),
    overrides=st.dictionaries(
        st.sampled_from(RETENTION_CLASSES), st.sampled_from([-5, 0, 1, 30, 400, 2000]), max_size=3
    ),
    contracts=st.one_of(
        st.just({}), st.fixed_dictionaries({"aligo": st.sampled_from([0, 7, 3000])})
    ),
    fold_first=st.booleans(),
)
def test_plan_and_apply_match_the_model(
    backend: Any,
    messages: list[tuple[str, int, int, str, str]],
    overrides: dict[str, float],
    contracts: dict[str, float],
    fold_first: bool,
) -> None:
    snaps: list[Snap] = []
    sends, polls, resends = [], [], []
    for i, (cls, age, secs, what, provider) in enumerate(messages):
        mid = f"m{i:03d}"
        requested = NOW - timedelta(days=age, seconds=secs)
        sends.append(make_record(mid, requested, cls, provider=provider))
        if "poll" in what:
            polls.append(make_record(mid, requested, cls, status="DELIVERED", provider=provider))
        if "resend" in what:  # re-recorded with another requested day: the message moves
            resends.append(make_record(mid, requested + timedelta(days=40), cls, provider=provider))
    for kind, batch in (("send", sends), ("poll", polls), ("send", resends)):
        for r in batch:
            snaps.append(Snap(len(snaps) + 1, kind, r.message_id, r.requested_at,
                              r.retention_class, r.provider_id, r.status))  # fmt: skip
    current = model_current(snaps)
    expired = {
        mid
        for mid, s in current.items()
        if s.requested + timedelta(days=model_days(s, overrides, contracts)) <= NOW
    }
    note(f"expired: {sorted(expired)}")

    resolver = (lambda ctx: contracts.get(ctx.record.provider_id)) if contracts else None
    policy = RetentionPolicy(tenant_override_days=overrides, contract_resolver=resolver)
    with tempfile.TemporaryDirectory() as tmp:
        lake = Path(tmp) / "lake"
        with open_lake(lake, backend=backend, flush_rows=10_000, flush_seconds=3600) as store:
            for r in sends:
                store.upsert(r)
            store.flush()
            if fold_first:
                store.compact()
            store.append_snapshots(polls, kind="poll")
            for r in resends:
                store.upsert(r)
            store.flush()

            plan = plan_retention(store, now=NOW, policy=policy)
            assert set(plan.expired.get_column("message_id").to_list()) == expired
            by_class = plan.by_class()
            for cls in RETENTION_CLASSES:
                mids = {m for m in expired if current[m].cls == cls}
                assert by_class[cls]["messages"] == len(mids)
                assert by_class[cls]["snapshots"] == sum(s.mid in mids for s in snaps)

            result = apply_retention(store, now=NOW, policy=policy)
            assert result.messages_removed == len(expired)
            assert result.snapshots_removed == sum(s.mid in expired for s in snaps)

            survivors = set(current) - expired
            ids = store.current().select("message_id").collect().get_column("message_id")
            assert sorted(ids.to_list()) == sorted(survivors)
            assert store.count_records(RecordFilter()) == len(survivors)
            seqs = store.history().select("seq").collect().get_column("seq").sort().to_list()
            assert seqs == [s.seq for s in snaps if s.mid not in expired]
            for mid in survivors:
                record = store.get(mid)
                assert record is not None
                assert record.requested_at == current[mid].requested
            open_ids = pl.read_parquet(lake / "open" / "part-0.parquet").get_column("message_id")
            assert sorted(open_ids.to_list()) == sorted(
                m for m in survivors if current[m].status == "SENT"
            )
            # a second run finds nothing more
            again = apply_retention(store, now=NOW, policy=policy)
            assert again.messages_removed == again.snapshots_removed == 0
            assert again.partitions == ()
        report = check_lake(lake, hash_key=KEY)
        assert report.ok, str(report)


# --------------------------------------------------------------------------- the log


def small_lake(path: Path) -> list[str]:
    """Two history partitions, five requested days, one class of each; returns expired ids."""
    expired = []
    with open_lake(path, flush_rows=10_000, flush_seconds=3600) as store:
        for i in range(12):
            cls = RETENTION_CLASSES[i % 3]
            days_old = [30, 100, 400, 2000][i % 4]
            requested = NOW - timedelta(days=days_old, hours=i)
            store.upsert(make_record(f"msg-{i:02d}", requested, cls))
            if requested + timedelta(days={"opsLogs": 90, "telecomMetadata": 365,
                                           "billingEvidence": 1825}[cls]) <= NOW:  # fmt: skip
                expired.append(f"msg-{i:02d}")
        store.flush()
        store.compact()
    # the first batch was ingested on an earlier day
    (day_dir,) = (path / "history").iterdir()
    day_dir.rename(path / "history" / "ingest_date=2020-01-01")
    with open_lake(path, flush_rows=10_000, flush_seconds=3600) as store:
        polls = [
            make_record(f"msg-{i:02d}", NOW - timedelta(days=[30, 100, 400, 2000][i % 4], hours=i),
                        RETENTION_CLASSES[i % 3], status="DELIVERED")
            for i in range(0, 12, 2)
        ]  # fmt: skip
        store.append_snapshots(polls, kind="poll")
        store.compact(history=False)
    return sorted(expired)


def read_log(lake: Path) -> list[dict[str, Any]]:
    text = (lake / "_retention" / "log.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_the_log_records_each_partition_without_numbers_or_ids(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    expired = small_lake(lake)
    assert expired
    with open_lake(lake) as store:
        before = plan_retention(store, now=NOW)
        result = apply_retention(store, now=NOW)
    assert result.messages_removed == len(expired) == before.messages
    lines = read_log(lake)
    assert lines[0]["event"] == "start"
    assert lines[-1]["event"] == "done"
    removed = [x for x in lines if x["event"] == "removed"]
    assert [(x["dataset"], x["partition"]) for x in removed] == [
        (p["dataset"], p["partition"]) for p in result.partitions
    ]
    assert {x["dataset"] for x in removed} == {"history", "current", "open"}
    assert sum(x["messages_removed"] for x in removed if x["dataset"] == "current") == len(expired)
    hist = [x for x in removed if x["dataset"] == "history"]
    assert {x["partition"] for x in hist} == {"ingest_date=2020-01-01", f"ingest_date={_today()}"}
    assert sum(x["snapshots_removed"] for x in hist) == before.snapshots
    for x in removed:
        assert x["rows_after"] == x["rows_before"] - x["snapshots_removed"]
        assert len(x["message_id_hashes"]) == x["messages_removed"]
        assert x["hash_key_id"]
    text = (lake / "_retention" / "log.jsonl").read_text()
    for mid in expired:
        assert mid not in text  # ids appear only as keyed hashes
    assert "****" not in text  # no masked numbers
    assert "0" * 64 not in text  # no number hashes
    assert not (lake / "_retention" / "run.json").exists()
    # the history lost exactly the seqs the log names
    seqs = set(
        pl.scan_parquet(lake / "history" / "**" / "*.parquet").select("seq").collect()["seq"]
    )
    named = {s for x in hist for lo, hi in x["seq_ranges"] for s in range(lo, hi + 1)}
    assert not seqs & named
    assert sorted(seqs | named) == list(range(1, max(seqs | named) + 1))
    report = check_lake(lake, hash_key=KEY)
    assert report.ok, str(report)
    assert any(f.kind == "seq-gap" and f.severity == "info" for f in report.findings)


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


def test_plan_is_readable_and_changes_nothing(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    expired = small_lake(lake)
    files = sorted(p for p in lake.rglob("*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in files]
    plan = plan_retention(lake, now=NOW, hash_key=KEY)
    assert sorted(p for p in lake.rglob("*.parquet")) == files
    assert [p.stat().st_mtime_ns for p in files] == stamps
    assert plan.messages == len(expired)
    frame = plan.to_polars()
    assert frame.columns == ["dataset", "partition", "retention_class", "messages", "snapshots"]
    assert frame.filter(pl.col("dataset") == "current")["messages"].sum() == len(expired)
    assert frame.filter(pl.col("dataset") == "history")["snapshots"].sum() == plan.snapshots
    html = plan._repr_html_()
    assert "Retention plan" in html
    assert "opsLogs" in html
    assert "messages past retention" in "\n".join(plan.lines())
    assert repr(plan).startswith("RetentionPlan(")


def test_cli_plan_and_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    lake = tmp_path / "lake"
    expired = small_lake(lake)
    monkeypatch.setenv("KMSG_ANALYTICS_HASH_KEY", KEY)
    parser = argparse.ArgumentParser()
    add_admin_parsers(parser.add_subparsers(dest="command", required=True))
    common = ["--lake", str(lake), "--now", NOW.isoformat()]
    args = parser.parse_args(["retention", "plan", *common, "--tenant-override", "opsLogs=1"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "opsLogs 1 days" in out
    assert "retention apply" in out
    args = parser.parse_args(["retention", "apply", *common])
    assert args.func(args) == 0
    assert f"removed {len(expired)} messages" in capsys.readouterr().out
    with open_lake(lake) as store:
        assert store.count_records(RecordFilter(message_id=expired)) == 0


# --------------------------------------------------------------------------- killed mid-apply

WORKER = """
import os, signal, sys
from kmsg_analytics import ParquetTrackingStore
from kmsg_analytics._retention import apply_retention
lake, kill_at, now = sys.argv[1], int(sys.argv[2]), sys.argv[3]
calls = []
def progress(line):
    calls.append(line)
    print(line, flush=True)
    if len(calls) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
store = ParquetTrackingStore(lake, hash_key="test-key-123", keys={"k1": bytes(range(32))})
apply_retention(store, now=now, progress=progress)
print("#finished", flush=True)
"""


def partition_contents(lake: Path) -> dict[str, frozenset[tuple[str, int]]]:
    """Each partition (history day, current day, open) as its set of (message_id, seq)."""
    out: dict[str, frozenset[tuple[str, int]]] = {}
    for sub in ("history", "current"):
        for part in sorted((lake / sub).iterdir()):
            files = sorted(part.glob("*.parquet"))
            rows: set[tuple[str, int]] = set()
            for f in files:
                t = pq.read_table(f, columns=["message_id", "seq"])
                rows |= set(zip(t["message_id"].to_pylist(), t["seq"].to_pylist(), strict=True))
            out[f"{sub}/{part.name}"] = frozenset(rows)
    t = pq.read_table(lake / "open" / "part-0.parquet", columns=["message_id", "seq"])
    out["open"] = frozenset(zip(t["message_id"].to_pylist(), t["seq"].to_pylist(), strict=True))
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict[str, Any]]:
    """A small lake, the ids retention removes from it, and its partitions before and after."""
    base = tmp_path_factory.mktemp("prepared")
    lake = base / "lake"
    expired = small_lake(lake)
    before = partition_contents(lake)
    done = base / "done"
    shutil.copytree(lake, done)
    apply_retention(done, now=NOW, hash_key=KEY, policy=RetentionPolicy())
    after = partition_contents(done)
    return lake, expired, {"before": before, "after": after}


def kill_apply_at(lake: Path, step: int) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(lake), str(step), NOW.isoformat()],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    return proc.stdout.splitlines()


def check_killed_and_finished(
    tmp_path: Path, prepared: tuple[Path, list[str], dict[str, Any]], step: int
) -> str:
    source, expired, states = prepared
    lake = tmp_path / "lake"
    shutil.copytree(source, lake)
    said = kill_apply_at(lake, step)
    # every partition is whole: as it was, or as a finished run leaves it
    now = partition_contents(lake)
    for name, rows in now.items():
        old = states["before"].get(name)
        new = states["after"].get(name)
        assert rows in (old, new), f"{name} is half done after a kill at {said[-1]!r}"
    for name in states["before"]:
        if name not in now:
            assert name not in states["after"], f"{name} vanished"
    # the next run finishes the job
    with open_lake(lake) as store:
        finished = apply_retention(store, now=NOW)
        assert finished.resumed
        ids = store.current().select("message_id").collect()["message_id"].to_list()
        assert not set(expired) & set(ids)
    assert partition_contents(lake) == states["after"]
    lines = read_log(lake)
    removed = [(x["run"], x["dataset"], x["partition"]) for x in lines if x["event"] == "removed"]
    assert len(removed) == len(set(removed)), "a partition was logged twice"
    assert len({x["run"] for x in lines}) == 1, "the rerun did not continue the same run"
    logged = {(d, p) for _r, d, p in removed}
    expected = {
        tuple(name.split("/", 1)) if "/" in name else ("open", "open")
        for name in states["before"]
        if states["before"][name] != states["after"].get(name)
    }
    assert logged == expected
    assert lines[-1]["event"] == "done"
    assert not (lake / "_retention" / "run.json").exists()
    assert not (lake / "_retention" / "journal.json").exists()
    report = check_lake(lake, hash_key=KEY)
    assert report.ok, str(report)
    return said[-1]


@pytest.mark.parametrize("step", [1, 2, 3])
def test_apply_killed_mid_partition_is_finished_by_the_next_run(
    tmp_path: Path, prepared: tuple[Path, list[str], dict[str, Any]], step: int
) -> None:
    """Killed before a swap (1), after it (2), after its log line (3); the rest in the sweep."""
    last = check_killed_and_finished(tmp_path, prepared, step)
    assert last.split()[0] == ["swapping", "swapped", "logged"][step - 1]


@pytest.mark.slow
def test_apply_killed_at_every_step(
    tmp_path: Path, prepared: tuple[Path, list[str], dict[str, Any]]
) -> None:
    source = prepared[0]
    probe = tmp_path / "probe"
    shutil.copytree(source, probe)
    steps: list[str] = []
    apply_retention(probe, now=NOW, hash_key=KEY, progress=steps.append)
    assert steps[-1] == "done"
    for step in range(1, len(steps)):
        check_killed_and_finished(tmp_path / f"k{step}", prepared, step)


def test_a_rerun_with_another_now_still_finishes_the_interrupted_run(
    tmp_path: Path, prepared: tuple[Path, list[str], dict[str, Any]]
) -> None:
    source, expired, states = prepared
    lake = tmp_path / "lake"
    shutil.copytree(source, lake)
    said = kill_apply_at(lake, 3)  # one history partition done, the rest not
    assert said[-1].startswith("logged history")
    with open_lake(lake) as store:
        early = apply_retention(store, now=NOW - timedelta(days=3000))
        assert early.resumed
        ids = set(store.current().select("message_id").collect()["message_id"].to_list())
    assert not ids & set(expired)
    assert partition_contents(lake) == states["after"]
    assert check_lake(lake, hash_key=KEY).ok
