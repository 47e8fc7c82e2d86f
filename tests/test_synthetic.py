"""The synthetic data generator: deterministic, realistic, and loadable into every store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kmsg_analytics import (
    DELIVERY_STATUSES,
    POLLABLE_STATUSES,
    DeliveryTrackingService,
    HashKey,
    InMemoryTrackingStore,
    InvalidRecordError,
    LakeError,
    ParquetTrackingStore,
    RecordFilter,
    mask_number,
)
from kmsg_analytics._schema import POLARS_SCHEMA, RECORD_COLUMNS
from kmsg_analytics._synthetic import (
    DEFAULT_END,
    PROVIDER_IDS,
    build_demo_lake,
    load_snapshots,
    synthetic_poll_updates,
    synthetic_records,
    synthetic_snapshots,
)
from tests._model import TEST_KEY

N = 2000


class _Gateway:
    def __init__(self, provider_id: str) -> None:
        self.id = provider_id


@pytest.fixture(scope="module")
def records() -> pl.DataFrame:
    return synthetic_records(N, seed=11, hash_key=TEST_KEY)


def _share(frame: pl.DataFrame, predicate: pl.Expr) -> float:
    return frame.filter(predicate).height / frame.height


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_rows_and_other_seed_other_rows(records: pl.DataFrame) -> None:
    assert_frame_equal(records, synthetic_records(N, seed=11, hash_key=TEST_KEY))
    other = synthetic_records(N, seed=12, hash_key=TEST_KEY)
    assert not other.get_column("message_id").equals(records.get_column("message_id"))


def test_chunks_are_slices_of_the_whole(records: pl.DataFrame) -> None:
    parts = [
        synthetic_records(N, seed=11, hash_key=TEST_KEY, start=lo, stop=min(lo + 700, N))
        for lo in range(0, N, 700)
    ]
    assert_frame_equal(pl.concat(parts), records)


def test_snapshot_chunks_are_slices_of_the_whole() -> None:
    whole = synthetic_snapshots(300, seed=2, hash_key=TEST_KEY)
    parts = pl.concat(
        [
            synthetic_snapshots(300, seed=2, hash_key=TEST_KEY, stop=120),
            synthetic_snapshots(300, seed=2, hash_key=TEST_KEY, start=120),
        ]
    )
    key = ["step", "message_id"]
    assert_frame_equal(parts.sort(key), whole.sort(key))


# --------------------------------------------------------------------------- shape


def test_columns_and_dtypes_are_the_records(records: pl.DataFrame) -> None:
    expected = [c for c in RECORD_COLUMNS if c not in ("to", "from_")]
    assert records.columns == expected
    for name, dtype in records.schema.items():
        assert dtype == POLARS_SCHEMA[name], name
    with_numbers = synthetic_records(10, seed=11, hash_key=TEST_KEY, with_numbers=True)
    assert with_numbers.columns == list(RECORD_COLUMNS)


def test_ids_and_times(records: pl.DataFrame) -> None:
    ids = records.get_column("message_id")
    assert ids.n_unique() == N
    assert ids.str.len_chars().unique().to_list() == [26]
    requested = records.get_column("requested_at")
    assert requested.is_sorted()
    assert requested.min() >= DEFAULT_END - timedelta(days=90)  # type: ignore[operator]
    assert requested.max() < DEFAULT_END  # type: ignore[operator]
    late = records.filter(
        (pl.col("status_updated_at") < pl.col("requested_at"))
        | (pl.col("status_updated_at") > DEFAULT_END)
        | (pl.col("sent_at") > pl.col("delivered_at"))
        | (pl.col("sent_at") > pl.col("failed_at"))
        | (pl.col("last_checked_at") > DEFAULT_END)
    )
    assert late.height == 0
    bucket = pl.col("requested_at").dt.year() * 100 + pl.col("requested_at").dt.month()
    assert records.filter(pl.col("retention_bucket_ym") != bucket).height == 0


def test_times_agree_with_statuses(records: pl.DataFrame) -> None:
    delivered = records.filter(pl.col("status") == "DELIVERED")
    assert delivered.get_column("delivered_at").null_count() == 0
    assert delivered.get_column("failed_at").null_count() == delivered.height
    failed = records.filter(pl.col("status") == "FAILED")
    assert failed.get_column("failed_at").null_count() == 0
    assert failed.get_column("provider_status_code").null_count() == 0
    terminal = records.filter(~pl.col("status").is_in(POLLABLE_STATUSES))
    assert terminal.filter(pl.col("next_check_at") != pl.col("status_updated_at")).height == 0


def test_delays_are_long_tailed() -> None:
    frame = synthetic_records(20_000, seed=3, hash_key=TEST_KEY)
    seconds = (
        frame.filter(pl.col("status") == "DELIVERED")
        .select((pl.col("delivered_at") - pl.col("sent_at")).dt.total_milliseconds() / 1000)
        .to_series()
    )
    median, p99 = float(seconds.median()), float(seconds.quantile(0.99))  # type: ignore[arg-type]
    assert 1.0 < median < 15.0
    assert p99 > 20 * median


# --------------------------------------------------------------------------- realism


def test_shares_are_realistic(records: pl.DataFrame) -> None:
    assert set(records.get_column("provider_id").unique()) <= set(PROVIDER_IDS)
    assert 0.29 < _share(records, pl.col("provider_id") == "solapi") < 0.41
    assert _share(records, pl.col("type").is_in(["ALIMTALK", "SMS", "LMS"])) > 0.80
    assert 0.84 < _share(records, pl.col("status") == "DELIVERED") < 0.93
    assert 0.03 < _share(records, pl.col("status") == "FAILED") < 0.10
    assert 0.002 < _share(records, pl.col("status").is_in(POLLABLE_STATUSES)) < 0.03
    assert set(records.get_column("status").unique()) <= set(DELIVERY_STATUSES)
    assert _share(records, pl.col("status").is_in(["UNKNOWN", "CANCELLED"])) > 0.005


def test_gateway_codes_are_each_gateways_own(records: pl.DataFrame) -> None:
    solapi_3104 = records.filter(
        (pl.col("provider_id") == "solapi") & (pl.col("provider_status_code") == "3104")
    )
    assert solapi_3104.height > 0
    assert solapi_3104.get_column("provider_status_message").unique().to_list() == [
        "카카오톡 미사용자"
    ]
    assert solapi_3104.get_column("status").unique().to_list() == ["FAILED"]
    aligo = records.filter(pl.col("provider_id") == "aligo")
    assert aligo.get_column("provider_status_code").null_count() == aligo.height


def test_open_messages_are_partly_due() -> None:
    frame = synthetic_records(N, seed=5, hash_key=TEST_KEY, open_fraction=0.2)
    open_ = frame.filter(pl.col("status").is_in(POLLABLE_STATUSES))
    assert 0.15 < open_.height / N < 0.3
    due = open_.filter(pl.col("next_check_at") <= DEFAULT_END).height
    assert 0 < due < open_.height
    store = InMemoryTrackingStore(hash_key=TEST_KEY)
    service = DeliveryTrackingService([_Gateway(p) for p in PROVIDER_IDS], store=store)
    service.load_records(frame)
    listed = service.list_due(DEFAULT_END, limit=10_000)
    assert len(listed) == due


def test_numbers_are_hashed_and_masked_with_the_key() -> None:
    frame = synthetic_records(50, seed=4, hash_key=TEST_KEY, with_numbers=True)
    key = HashKey(TEST_KEY)
    for row in frame.head(10).iter_rows(named=True):
        assert row["to_hash"] == key.hash_number(row["to"])
        assert row["to_masked"] == mask_number(row["to"])
        assert row["from_hash"] == key.hash_number(row["from_"], field="from_")
    other = synthetic_records(50, seed=4, hash_key="another-key-456")
    assert not other.get_column("to_hash").equals(frame.get_column("to_hash"))


# --------------------------------------------------------------------------- loading


def _make(kind: str, path: Path) -> InMemoryTrackingStore | ParquetTrackingStore:
    if kind == "memory":
        return InMemoryTrackingStore(hash_key=TEST_KEY)
    return ParquetTrackingStore(path, hash_key=TEST_KEY)


@pytest.mark.parametrize("kind", ["memory", "parquet"])
def test_records_load_through_the_service(kind: str, tmp_path: Path, records: pl.DataFrame) -> None:
    store = _make(kind, tmp_path / "lake")
    with DeliveryTrackingService([_Gateway(p) for p in PROVIDER_IDS], store=store) as service:
        assert service.load_records(records) == N
        assert service.count_records() == N
        got = service.count_by(group_by=["provider_id", "status"]).collect()
        expected = (
            records.group_by(["provider_id", "status"])
            .agg(pl.len().cast(pl.Int64).alias("count"))
            .sort(["provider_id", "status"])
        )
        assert_frame_equal(got, expected)
        solapi = records.filter(pl.col("provider_id") == "solapi").height
        assert service.count_records(provider_id="solapi") == solapi


@pytest.mark.parametrize("kind", ["memory", "parquet"])
def test_folding_the_snapshots_gives_the_records(kind: str, tmp_path: Path) -> None:
    n = 600
    snapshots = synthetic_snapshots(n, seed=8, hash_key=TEST_KEY)
    assert snapshots.get_column("step").is_sorted()
    assert 2.0 < snapshots.height / n < 2.4
    sends = snapshots.filter(pl.col("step") == 0)
    assert sends.height == n
    assert set(sends.get_column("status").unique()) <= {"SENT", "PENDING", "UNKNOWN"}
    assert set(sends.get_column("snapshot_kind").unique()) == {"send"}
    store = _make(kind, tmp_path / "lake")
    try:
        assert load_snapshots(store, snapshots) == snapshots.height
        if isinstance(store, ParquetTrackingStore):
            store.compact(history=False)  # the fold is what is checked here
        current = store.current().select(RECORD_COLUMNS).collect().sort("message_id")
    finally:
        store.close()
    expected = (
        synthetic_records(n, seed=8, hash_key=TEST_KEY)
        .with_columns(to=pl.lit(None, pl.String), from_=pl.lit(None, pl.String))
        .select(RECORD_COLUMNS)
        .sort("message_id")
    )
    assert_frame_equal(current, expected)


def test_poll_updates_move_open_messages_on() -> None:
    frame = synthetic_records(N, seed=6, hash_key=TEST_KEY, open_fraction=0.1)
    open_ = frame.filter(pl.col("status").is_in(POLLABLE_STATUSES))
    polls = synthetic_poll_updates(open_, now=DEFAULT_END, seed=1)
    assert polls.columns == open_.columns
    assert polls.get_column("message_id").equals(open_.get_column("message_id"))
    assert (polls.get_column("attempt_count") == open_.get_column("attempt_count") + 1).all()
    finished = polls.filter(pl.col("status") == "DELIVERED")
    assert 0.4 < finished.height / polls.height < 0.9
    assert finished.filter(pl.col("delivered_at") > DEFAULT_END).height == 0


# --------------------------------------------------------------------------- demo lake


def test_build_demo_lake(tmp_path: Path) -> None:
    path = tmp_path / "demo"
    lake = build_demo_lake(path, n=300, seed=1, hash_key=TEST_KEY)
    try:
        assert lake.count_records(RecordFilter()) == 300
        assert lake.stats()["current_files"] > 0
        counts = lake.count_by(RecordFilter(), ["status"]).collect()
        assert counts.get_column("count").sum() == 300
    finally:
        lake.close()
    again = build_demo_lake(path, n=100, seed=1, hash_key=TEST_KEY)  # a demo lake is replaced
    try:
        assert again.count_records(RecordFilter()) == 100
    finally:
        again.close()


def test_build_demo_lake_refuses_other_data(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(LakeError, match="not empty"):
        build_demo_lake(tmp_path, n=10, hash_key=TEST_KEY)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": -1}, "n"),
        ({"n": 10, "days": 0}, "days"),
        ({"n": 10, "open_fraction": 0.9}, "open_fraction"),
        ({"n": 10, "start": 5, "stop": 20}, "start:stop"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict[str, int | float], field: str) -> None:
    with pytest.raises(InvalidRecordError) as err:
        synthetic_records(hash_key=TEST_KEY, **kwargs)  # type: ignore[arg-type]
    assert err.value.field == field


def test_snapshots_per_message_is_checked() -> None:
    with pytest.raises(InvalidRecordError, match="snapshots_per_message"):
        synthetic_snapshots(10, hash_key=TEST_KEY, snapshots_per_message=1.5)
