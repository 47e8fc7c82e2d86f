"""The object lake against a real S3 API: its log, racing writers, half-done writes, bad endpoints.

Every test talks HTTP to moto's S3 server on 127.0.0.1 (``tests/_s3server.py``); the
fault tests put a small proxy on 127.0.0.1 in front of it that fails or delays chosen
requests. The contract suite (``test_contract.py``) runs against the same store too.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kmsg_analytics import InvalidRecordError, RecordFilter, TrackingRecord
from kmsg_analytics._errors import LakeError, LakeFormatError
from kmsg_analytics._objectlake import CHECKPOINT_EVERY, LAST_CHECKPOINT, ObjectLakeStore, log_key
from kmsg_analytics._objectstore import LakeUnavailableError
from kmsg_analytics._schema import SNAPSHOT_SCHEMA, record_to_row, rows_to_table
from tests._model import TEST_KEY, hash_number, mask_number
from tests._s3server import BUCKET, FaultProxy, S3Server, shared_server

REQ = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def record(i: int, *, status: str = "SENT", day: int = 0) -> TrackingRecord:
    at = REQ + timedelta(days=day, minutes=i)
    return TrackingRecord(
        message_id=f"m{i:05d}",
        provider_id="solapi",
        provider_message_id=f"G-{i}",
        type="SMS",
        to_hash=hash_number("010-1234-5678"),
        to_masked=mask_number("010-1234-5678"),
        requested_at=at,
        status=status,
        status_updated_at=at,
        next_check_at=at + timedelta(seconds=30),
    )


@pytest.fixture(scope="module")
def server() -> S3Server:
    return shared_server()


@pytest.fixture
def url(server: S3Server) -> str:
    return server.new_url()


@pytest.fixture
def lake(server: S3Server, url: str) -> Iterator[ObjectLakeStore]:
    store = ObjectLakeStore(url, storage_options=server.options(), hash_key=TEST_KEY)
    yield store
    store.close()


@pytest.fixture
def proxy(server: S3Server) -> Iterator[FaultProxy]:
    p = FaultProxy(server.endpoint)
    yield p
    p.stop()


def through(proxy: FaultProxy, server: S3Server, url: str, **options: Any) -> ObjectLakeStore:
    """A store over ``url`` that reaches the server through ``proxy``, failing fast."""
    opts = server.options(proxy.endpoint, **{"max_retries": 0, "timeout": 2, **options})
    return ObjectLakeStore(url, storage_options=opts, hash_key=TEST_KEY)


def ids(store: ObjectLakeStore) -> list[str]:
    frame = store.list_records(RecordFilter(), 100_000, 0, "requested_at", "asc").collect()
    return sorted(frame.get_column("message_id").to_list())


def log_entries(server: S3Server, url: str) -> list[dict[str, Any]]:
    prefix = url.removeprefix(f"s3://{BUCKET}/")
    client = server.client()
    out = []
    for key in sorted(k for k in server.keys(url) if k.startswith("_log/")):
        body = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["Body"].read()
        out.append(json.loads(body))
    return out


# --------------------------------------------------------------------------- the log


def test_every_write_is_one_file_and_one_log_entry(
    lake: ObjectLakeStore, server: S3Server, url: str
) -> None:
    lake.upsert(record(1))
    lake.append_snapshots([record(2), record(3)], kind="load")
    keys = server.keys(url)
    assert [k for k in keys if k.startswith("_log/")] == [log_key(v) for v in range(3)]
    data = sorted(k for k in keys if k.endswith(".parquet"))
    assert len(data) == 2
    assert all(k.startswith("history/ingest_date=") for k in data)
    entries = log_entries(server, url)
    assert [e["version"] for e in entries] == [0, 1, 2]
    assert entries[0]["lake"]["hash_key_id"] == lake.hash_key.key_id
    named = sorted(f["path"] for e in entries for f in e.get("add", ()))
    assert named == data
    assert [(f["lo"], f["hi"]) for e in entries[1:] for f in e["add"]] == [(1, 1), (2, 3)]
    # the files hold the lake's columns; a raw engine reads what the manifest names
    manifest = lake.manifest()
    assert manifest["version"] == 2
    assert manifest["watermark"] == 0
    raw = pl.scan_parquet(manifest["history"], storage_options=lake.store.options.for_polars())
    assert raw.collect().get_column("seq").sort().to_list() == [1, 2, 3]
    client = server.client()
    prefix = url.removeprefix(f"s3://{BUCKET}/")
    body = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{data[0]}")["Body"].read()
    assert pq.read_schema(pa.BufferReader(body)).names == SNAPSHOT_SCHEMA.names


def test_compaction_swaps_file_sets_in_one_version(
    lake: ObjectLakeStore, server: S3Server, url: str
) -> None:
    lake.append_snapshots([record(i) for i in range(5)], kind="send")
    lake.append_snapshots([record(i, status="DELIVERED") for i in range(3)], kind="poll")
    lake.upsert(record(7, day=1))
    before = lake.manifest()
    report = lake.compact()
    after = lake.manifest()
    assert after["version"] == before["version"] + 1
    assert after["watermark"] == after["seq"] == 9
    assert report.snapshot_rows == 6
    assert report.partitions_rewritten == 2
    assert len(after["history"]) == 1  # three batches merged into one file
    assert [u.rsplit("/", 2)[1] for u in after["current"]] == [
        "requested_date=2026-03-02",
        "requested_date=2026-03-03",
    ]
    entry = log_entries(server, url)[-1]
    assert entry["operation"] == "compact"
    assert sorted(entry["remove"]) == sorted(
        u.removeprefix(f"{lake.url}/") for u in before["history"]
    )
    # the replaced files stay for readers of older versions until the grace has passed
    assert all(u.removeprefix(f"{lake.url}/") in server.keys(url) for u in before["history"])
    assert lake.count_by(RecordFilter(), ["status"]).collect().rows() == [
        ("DELIVERED", 3),
        ("SENT", 3),
    ]
    lake.compact(orphan_grace=timedelta(0))
    keys = set(server.keys(url))
    assert not any(u.removeprefix(f"{lake.url}/") in keys for u in before["history"])
    assert lake.count_records(RecordFilter()) == 6


def test_folds_by_itself_once_enough_files_wait(server: S3Server, url: str) -> None:
    store = ObjectLakeStore(
        url, storage_options=server.options(), hash_key=TEST_KEY, compact_files=3
    )
    store.upsert(record(1))
    store.upsert(record(2))
    assert store.stats()["watermark"] == 0
    store.upsert(record(3))
    stats = store.stats()
    assert stats["watermark"] == stats["seq"] == 3
    assert stats["history_files"] == 1
    assert ids(store) == ["m00001", "m00002", "m00003"]


def test_a_new_reader_starts_from_the_checkpoint(
    lake: ObjectLakeStore, server: S3Server, url: str
) -> None:
    for i in range(CHECKPOINT_EVERY + 1):
        lake.upsert(record(i))
    keys = server.keys(url)
    assert LAST_CHECKPOINT in keys
    assert f"_checkpoints/{CHECKPOINT_EVERY:020d}.json" in keys
    reader = ObjectLakeStore(url, storage_options=server.options(), hash_key=TEST_KEY)
    assert reader.manifest() == lake.manifest()
    assert ids(reader) == [f"m{i:05d}" for i in range(CHECKPOINT_EVERY + 1)]


def test_files_scanned_in_place_give_the_same_answers(
    lake: ObjectLakeStore, server: S3Server, url: str
) -> None:
    """With no cache every file is scanned by Polars over HTTP (hive columns from the URLs)."""
    lake.append_snapshots([record(i, day=i % 3) for i in range(30)], kind="send")
    lake.compact()
    lake.append_snapshots([record(i, status="DELIVERED", day=i % 3) for i in range(5)], kind="poll")
    lake.upsert(record(40, day=5))
    scanner = ObjectLakeStore(
        url, storage_options=server.options(), hash_key=TEST_KEY, cache_bytes=0
    )
    flt = RecordFilter(
        requested_at_from=REQ + timedelta(days=1), requested_at_to=REQ + timedelta(days=2)
    )
    for store in (lake, scanner):
        assert store.count_by(RecordFilter(), ["status", "requested_at_day"]).collect().rows() == [
            ("DELIVERED", datetime(2026, 3, 2, tzinfo=UTC), 2),
            ("DELIVERED", datetime(2026, 3, 3, tzinfo=UTC), 2),
            ("DELIVERED", datetime(2026, 3, 4, tzinfo=UTC), 1),
            ("SENT", datetime(2026, 3, 2, tzinfo=UTC), 8),
            ("SENT", datetime(2026, 3, 3, tzinfo=UTC), 8),
            ("SENT", datetime(2026, 3, 4, tzinfo=UTC), 9),
            ("SENT", datetime(2026, 3, 7, tzinfo=UTC), 1),
        ]
        assert store.count_records(flt) == 10
        assert len(store.list_due(REQ + timedelta(days=9), 100)) == 26
        history = store.history().collect()
        assert history.height == 36
        assert history.get_column("ingest_date").null_count() == 0
    # only the snapshots past the watermark were fetched whole (they are merged in memory)
    assert all(path.startswith("history/") for path in scanner._cache)


# --------------------------------------------------------------------------- concurrency


def test_two_writers_racing_lose_nothing_and_duplicate_nothing(
    server: S3Server, url: str, proxy: FaultProxy
) -> None:
    """Two stores (two clients, two caches) write at once; every version has one author."""
    writers = [through(proxy, server, url) for _ in range(2)]
    n = 12
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            start.wait()
            for i in range(n):
                writers[w].upsert(record(w * 1000 + i))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    lost_races = [s for m, p, s in proxy.fault.seen if m == "PUT" and "/_log/" in p and s == 412]
    assert lost_races  # the writers did race for versions
    reader = ObjectLakeStore(url, storage_options=server.options(), hash_key=TEST_KEY)
    expected = sorted(f"m{w * 1000 + i:05d}" for w in range(2) for i in range(n))
    assert ids(reader) == expected
    history = reader.history().collect()
    assert history.height == 2 * n
    assert sorted(history.get_column("seq").to_list()) == list(range(1, 2 * n + 1))
    entries = log_entries(server, url)
    assert [e["version"] for e in entries] == list(range(2 * n + 1))
    # losers deleted the files they wrote with a stale seq: every data object is named
    named = {f["path"] for e in entries for f in e.get("add", ())}
    assert {k for k in server.keys(url) if k.endswith(".parquet")} == named


def test_concurrent_sends_share_files_and_log_entries(
    server: S3Server, url: str, proxy: FaultProxy
) -> None:
    """Group commit: threads of one store publish together, each returning once published."""
    store = through(proxy, server, url)
    proxy.fault.delay = 0.05  # a slow endpoint: callers queue up behind the one publishing
    threads = [
        threading.Thread(target=lambda k=k: [store.upsert(record(k * 10 + i)) for i in range(5)])
        for k in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    proxy.fault.delay = 0.0
    assert ids(store) == sorted(f"m{k * 10 + i:05d}" for k in range(8) for i in range(5))
    versions = store.manifest()["version"]
    assert versions < 40  # fewer log entries than calls
    assert len(store.manifest()["history"]) == versions


_WRITER = """
import json, sys
from tests.test_object_lake import record
from tests._model import TEST_KEY
from kmsg_analytics._objectlake import ObjectLakeStore
url, options, first = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
store = ObjectLakeStore(url, storage_options=options, hash_key=TEST_KEY)
print("ready", flush=True)
sys.stdin.readline()
for i in range(first, first + 10):
    store.upsert(record(i))
store.compact() if first else store.append_snapshots([record(first)], kind="poll")
"""


@pytest.mark.slow
def test_writers_in_two_processes(server: S3Server, url: str) -> None:
    """Two processes write (and one compacts) at once: every write is there once."""
    root = Path(__file__).parent.parent
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, url, json.dumps(server.options()), str(first)],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for first in (0, 100)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        assert p.wait(timeout=120) == 0
        assert p.stdin is not None
        assert p.stdout is not None
        p.stdin.close()
        p.stdout.close()
    reader = ObjectLakeStore(url, storage_options=server.options(), hash_key=TEST_KEY)
    expected = sorted(f"m{i:05d}" for first in (0, 100) for i in range(first, first + 10))
    assert ids(reader) == expected
    seqs = reader.history().collect().get_column("seq").sort().to_list()
    assert seqs == list(range(1, 22))


def test_compaction_racing_a_writer_keeps_every_write(server: S3Server, url: str) -> None:
    writer = ObjectLakeStore(url, storage_options=server.options(), hash_key=TEST_KEY)
    compactor = ObjectLakeStore(url, storage_options=server.options(), hash_key=TEST_KEY)
    writer.append_snapshots([record(i) for i in range(20)], kind="send")
    done = threading.Event()

    def write() -> None:
        for i in range(20, 30):
            writer.upsert(record(i))
        writer.append_snapshots([record(i, status="DELIVERED") for i in range(5)], kind="poll")
        done.set()

    t = threading.Thread(target=write)
    t.start()
    while not done.is_set():
        compactor.compact()
    t.join()
    compactor.compact()
    assert ids(compactor) == [f"m{i:05d}" for i in range(30)]
    assert compactor.count_records(RecordFilter(status="DELIVERED")) == 5
    assert writer.count_records(RecordFilter(status="SENT")) == 25
    seqs = compactor.history().collect().get_column("seq").sort().to_list()
    assert seqs == list(range(1, 36))


# --------------------------------------------------------------------------- faults


def test_write_failing_halfway_is_invisible_and_cleaned_up(
    server: S3Server, url: str, proxy: FaultProxy
) -> None:
    """The data PUT succeeds, the log PUT fails: not acknowledged, not visible, later deleted."""
    store = through(proxy, server, url)
    store.append_snapshots([record(i) for i in range(3)], kind="send")  # acknowledged
    proxy.fault.before = lambda m, p: 500 if m == "PUT" and "/_log/" in p else None
    with pytest.raises(LakeUnavailableError, match=r"failed PUT s3://.*/_log/0+2\.json") as err:
        store.upsert(record(3))
    assert proxy.endpoint in str(err.value)
    orphans = [k for k in server.keys(url) if k.endswith(".parquet")]
    assert len(orphans) == 2  # the acknowledged batch and the unpublished file
    reader = ObjectLakeStore(url, storage_options=server.options(), hash_key=TEST_KEY)
    assert ids(reader) == ["m00000", "m00001", "m00002"]
    # the endpoint comes back: the same store writes on, nothing acknowledged was lost
    proxy.fault.before = lambda m, p: None
    store.upsert(record(4))
    assert ids(reader) == ["m00000", "m00001", "m00002", "m00004"]
    reader.compact(orphan_grace=timedelta(hours=1))  # too young to be collected
    unnamed = set(orphans) - {u.removeprefix(f"{url}/") for u in reader.manifest()["history"]}
    assert len(unnamed) == 2 or unnamed <= set(server.keys(url))
    reader.compact(orphan_grace=timedelta(0))
    keys = set(server.keys(url))
    assert not any(o in keys for o in orphans if "b-00000000000000000004" in o)
    assert {k for k in keys if k.endswith(".parquet")} == {
        u.removeprefix(f"{url}/")
        for name in ("history", "current", "open")
        for u in reader.manifest()[name]
    }
    assert ids(reader) == ["m00000", "m00001", "m00002", "m00004"]


def test_log_put_whose_answer_was_lost_is_not_written_twice(
    server: S3Server, url: str, proxy: FaultProxy
) -> None:
    """The server stored the entry but the client heard 500: the retry finds its own entry."""
    store = through(proxy, server, url, max_retries=1)
    failed: list[str] = []

    def after(method: str, path: str) -> int | None:
        if method == "PUT" and "/_log/" in path and path not in failed:
            failed.append(path)
            return 500
        return None

    proxy.fault.after = after
    store.upsert(record(1))
    store.upsert(record(2))
    assert len(failed) == 2
    entries = log_entries(server, url)
    assert [e["version"] for e in entries] == [0, 1, 2]
    assert ids(store) == ["m00001", "m00002"]


def test_erroring_endpoint_gives_a_clear_lake_error(
    server: S3Server, url: str, proxy: FaultProxy
) -> None:
    store = through(proxy, server, url)
    store.upsert(record(1))
    proxy.fault.before = lambda m, p: 500
    started = time.monotonic()
    with pytest.raises(LakeUnavailableError) as err:
        store.count_records(RecordFilter())
    message = str(err.value)
    assert proxy.endpoint in message
    assert url in message
    assert "reachable" in message
    with pytest.raises(LakeUnavailableError, match="Nothing was acknowledged"):
        store.upsert(record(2))
    with pytest.raises(LakeUnavailableError):
        through(proxy, server, server.new_url())
    assert time.monotonic() - started < 10
    proxy.fault.before = lambda m, p: None
    assert ids(store) == ["m00001"]


def test_slow_endpoint_times_out_with_a_clear_lake_error(
    server: S3Server, url: str, proxy: FaultProxy
) -> None:
    store = through(proxy, server, url, timeout=0.3)
    store.upsert(record(1))
    proxy.fault.delay = 10.0
    started = time.monotonic()
    with pytest.raises(LakeUnavailableError, match="timeout") as err:
        store.upsert(record(2))
    assert time.monotonic() - started < 8.0  # it gave up after 0.3 s (no retry), not 10
    assert proxy.endpoint in str(err.value)
    proxy.fault.delay = 0.0
    reader = ObjectLakeStore(url, storage_options=server.options(), hash_key=TEST_KEY)
    # the slow PUT may still land later; whatever did is whole and m00001 is there
    assert "m00001" in ids(reader)


def test_endpoint_ignoring_conditional_writes_is_refused(
    server: S3Server, url: str, proxy: FaultProxy
) -> None:
    proxy.fault.drop_headers = ("If-None-Match",)
    with pytest.raises(LakeError, match="ignores conditional writes"):
        through(proxy, server, url)


def test_unreachable_endpoint_and_missing_bucket(server: S3Server) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = f"http://127.0.0.1:{port}"
    opts = server.options(dead, max_retries=0, timeout=1)
    with pytest.raises(LakeUnavailableError, match=f"{dead}.*s3://{BUCKET}/x"):
        ObjectLakeStore(f"s3://{BUCKET}/x", storage_options=opts, hash_key=TEST_KEY)
    with pytest.raises(LakeError, match="bucket 'no-such-bucket' does not exist"):
        ObjectLakeStore(
            "s3://no-such-bucket/x", storage_options=server.options(), hash_key=TEST_KEY
        )


# --------------------------------------------------------------------------- bad input


def test_bad_input_raises_our_errors_and_writes_nothing(
    lake: ObjectLakeStore, server: S3Server, url: str
) -> None:
    lake.upsert(record(1))
    before = server.keys(url)
    with pytest.raises(InvalidRecordError, match="table"):
        lake.append_table(pa.table({"message_id": ["x"]}))
    good = rows_to_table([record_to_row(record(2), kind="load", recorded_at=0)])
    i = SNAPSHOT_SCHEMA.get_field_index("attempt_count")
    with pytest.raises(InvalidRecordError, match="lake's schema"):
        lake.append_table(good.set_column(i, "attempt_count", pa.array(["many"])))
    i = SNAPSHOT_SCHEMA.get_field_index("message_id")
    with pytest.raises(InvalidRecordError, match="message_id"):
        lake.append_table(good.set_column(i, "message_id", pa.array([None], pa.string())))
    assert server.keys(url) == before
    with pytest.raises(InvalidRecordError, match="storage_options"):
        ObjectLakeStore(url, storage_options={"endpoint": 5}, hash_key=TEST_KEY)
    with pytest.raises(InvalidRecordError, match="storage_options"):
        ObjectLakeStore(url, storage_options={"no_such_option": 1}, hash_key=TEST_KEY)
    with pytest.raises(InvalidRecordError, match="s3://bucket/prefix"):
        ObjectLakeStore("gs://bucket/x", hash_key=TEST_KEY)
    with pytest.raises(LakeFormatError, match="number-hash key"):
        ObjectLakeStore(url, storage_options=server.options(), hash_key="another-key")
    assert server.keys(url) == before
    assert ids(lake) == ["m00001"]


def test_closed_store_refuses_writes(lake: ObjectLakeStore) -> None:
    lake.close()
    lake.close()
    with pytest.raises(LakeError, match="closed"):
        lake.upsert(record(1))


def test_parquet_tracking_store_opens_a_url_as_the_object_lake(server: S3Server, url: str) -> None:
    from kmsg_analytics import DeliveryTrackingService, ParquetTrackingStore

    store = ParquetTrackingStore(url, storage_options=server.options(), hash_key=TEST_KEY)
    assert isinstance(store, ObjectLakeStore)
    svc = DeliveryTrackingService([_Named(record(1).provider_id)], store=store)
    svc.store.upsert(record(1))
    assert svc.count_records() == 1
    svc.close()
    with pytest.raises(LakeFormatError, match="flush_rows only apply to a local lake"):
        ParquetTrackingStore(url, storage_options=server.options(), flush_rows=10)


class _Named:
    """A provider that can only be named."""

    def __init__(self, provider_id: str) -> None:
        self.id = provider_id


def test_import_and_export_refuse_an_object_lake_clearly(tmp_path: Path) -> None:
    from kmsg_analytics._export import ExportError, export_records
    from kmsg_analytics._kmsg_import import _open_lake

    with pytest.raises(ExportError, match="local lakes only"):
        export_records("s3://bucket/lake", tmp_path / "out.csv", format="csv")
    with pytest.raises(InvalidRecordError, match="import into object storage"):
        _open_lake("s3://bucket/lake", TEST_KEY)
