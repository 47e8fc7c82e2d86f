"""The metric definitions: predicates, Wilson intervals, the taxonomy, and Ibis = Polars.

The definitions in :mod:`kmsg_analytics._metrics` are compiled twice, to Polars and to
Ibis. These tests check each compilation against the plain-Python definitions of
:mod:`tests._analytics_model`, and the two compilations against each other on the same
lake files (Ibis running on DuckDB), so that a distributed engine reading the lake gets
the numbers the notebook gets.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from kmsg_analytics import InvalidRecordError, ParquetTrackingStore, TrackingError, TrackingRecord
from kmsg_analytics._analytics import DeliveryAnalytics
from kmsg_analytics._metrics import (
    CODE_RULES,
    COUNTS,
    FAILURE_CATEGORIES,
    KEYWORD_RULES,
    KMSG_RATES,
    RATES,
    WEIGHT,
    Always,
    ErrorCodeIs,
    HasGatewayId,
    StatusIs,
    failure_category_expr,
    ibis_latest,
    ibis_rate_table,
    polars_aggregations,
    polars_rate_columns,
    polars_rate_table,
    polars_reduce,
    rate_metric,
    wilson_interval,
)
from kmsg_analytics._schema import POLARS_SCHEMA
from tests._analytics_model import RATE_DEFINITIONS, AnalyticsModel, micros, rate_row, wilson_pct
from tests._model import TEST_KEY
from tests.test_analytics import END, START, T0, _seeded_messages, build

STATUSES = ("PENDING", "SENT", "DELIVERED", "FAILED", "CANCELLED", "UNKNOWN")
ERROR_TYPE = POLARS_SCHEMA["last_error"]

rows: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {
        "provider_id": st.sampled_from(["solapi", "iwinv", "nhn"]),
        "status": st.none() | st.sampled_from(STATUSES),
        "provider_message_id": st.sampled_from([None, "", "G1"]),
        "last_error": st.none()
        | st.builds(dict, code=st.sampled_from(["TRACKING_TIMEOUT", "E1"]), message=st.just("m")),
    }
)


def frame(records: list[dict[str, Any]]) -> pl.DataFrame:
    schema: dict[str, Any] = {
        "provider_id": pl.String,
        "status": pl.String,
        "provider_message_id": pl.String,
        "last_error": ERROR_TYPE,
    }
    return pl.DataFrame(records, schema=schema)


# --------------------------------------------------------------------------- predicates and counts


@settings(max_examples=60, deadline=None)
@given(records=st.lists(rows, max_size=25))
def test_rate_predicates_equal_their_plain_definitions(records: list[dict[str, Any]]) -> None:
    df = frame(records)
    counts = df.select(polars_aggregations(COUNTS, list(RATES.values()))).row(0, named=True)
    assert counts["total"] == len(records)
    for s in STATUSES:
        assert counts[s.lower()] == sum(1 for r in records if r["status"] == s)
    for name, (num, den) in RATE_DEFINITIONS.items():
        assert counts[f"{name}_den"] == sum(1 for r in records if den(r)), name
        assert counts[f"{name}_num"] == sum(1 for r in records if den(r) and num(r)), name


@settings(max_examples=60, deadline=None)
@given(records=st.lists(rows, max_size=25))
def test_reduced_weighted_counts_equal_plain_counts(records: list[dict[str, Any]]) -> None:
    df = frame(records)
    aggs = polars_aggregations(COUNTS, list(RATES.values()))
    weighted = polars_aggregations(COUNTS, list(RATES.values()), weight=WEIGHT)
    plain = df.group_by("provider_id").agg(aggs).sort("provider_id")
    reduced = (
        polars_reduce(df.lazy(), ["provider_id"])
        .group_by("provider_id")
        .agg(weighted)
        .sort("provider_id")
    )
    assert_frame_equal(plain, reduced.collect())
    by_status = polars_reduce(
        df.lazy(), ["status"]
    ).collect()  # a key that is also a predicate column
    assert by_status.get_column(WEIGHT).sum() == len(records)


def test_predicates_describe_themselves_and_reject_bad_statuses() -> None:
    p = (StatusIs(("DELIVERED",)) | ErrorCodeIs(("X",))) & HasGatewayId() & ~Always()
    assert "status DELIVERED" in p.describe()
    assert "gateway" in p.describe()
    with pytest.raises(InvalidRecordError, match="status"):
        StatusIs(("DONE",))
    with pytest.raises(InvalidRecordError, match="definition"):
        rate_metric("delivery_rate")
    assert rate_metric(RATES["reached"]) is RATES["reached"]
    assert [RATES[n].kmsg_name for n in KMSG_RATES] == [
        "deliveredOfTotalPct",
        "failedOfTotalPct",
        "deliveredOfFinalizedPct",
    ]
    for r in RATES.values():
        assert r.label
        assert r.description
        assert "÷" in r.definition()


# --------------------------------------------------------------------------- Wilson, small samples


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 5_000), data=st.data(), min_n=st.integers(1, 50))
def test_rate_columns_equal_plain_wilson(n: int, data: st.DataObject, min_n: int) -> None:
    k = data.draw(st.integers(0, n))
    got = (
        pl.DataFrame({"k": [k], "n": [n]})
        .with_columns(polars_rate_columns("k", "n", min_n=min_n))
        .row(0, named=True)
    )
    want = rate_row(k, n, min_n)
    for col in ("rate_pct", "ci_low_pct", "ci_high_pct", "enough_data"):
        if isinstance(want[col], float):
            assert got[col] == pytest.approx(want[col], rel=1e-12, abs=1e-12), col
        else:
            assert got[col] == want[col], col
    interval = wilson_interval(k, n)
    if n == 0:
        assert (interval, got["ci_low_pct"], got["rate_pct"]) == (None, None, None)
    else:
        assert interval is not None
        assert interval[0] * 100 == pytest.approx(got["ci_low_pct"], abs=1e-12)
        assert 0.0 <= got["ci_low_pct"] <= k / n * 100 <= got["ci_high_pct"] <= 100.0


def test_wilson_known_values_and_not_enough_data() -> None:
    lo, hi = wilson_pct(8, 10)
    assert (round(lo or 0, 2), round(hi or 0, 2)) == (49.02, 94.33)
    zero_lo, zero_hi = wilson_pct(0, 10)
    assert zero_lo == 0.0
    assert zero_hi == pytest.approx(27.75, abs=0.01)
    assert wilson_pct(10, 10)[1] == 100.0
    out = pl.DataFrame({"k": [0, 2, 0], "n": [0, 3, 40]}).with_columns(
        polars_rate_columns("k", "n", min_n=30)
    )
    assert out.get_column("rate_pct").to_list() == [None, None, 0.0]  # 0% only with enough data
    assert out.get_column("enough_data").to_list() == [False, False, True]


# --------------------------------------------------------------------------- taxonomy


@settings(max_examples=200, deadline=None)
@given(
    provider=st.sampled_from(["solapi", "iwinv", "nhn", "aligo"]),
    code=st.none()
    | st.sampled_from(
        ["3104", "3107", "3059", "1030", "3022", "E105", "9999", *(c for c in ("X",))]
    ),
    message=st.none()
    | st.sampled_from(
        [
            "카카오톡 미사용자",
            "알림톡 수신 차단",
            "결번",
            "단말기 전원 꺼짐",
            "성공",
            "카카오 미사용",
        ]
    ),
    error=st.none() | st.sampled_from(["TRACKING_TIMEOUT", "INVALID_REQUEST"]),
)
def test_failure_categories_follow_the_rule_tables(
    provider: str, code: str | None, message: str | None, error: str | None
) -> None:
    df = pl.DataFrame(
        {
            "provider_id": [provider],
            "provider_status_code": [code],
            "provider_status_message": [message],
            "last_error": [None if error is None else {"code": error, "message": ""}],
        },
        schema={
            "provider_id": pl.String,
            "provider_status_code": pl.String,
            "provider_status_message": pl.String,
            "last_error": ERROR_TYPE,
        },
    )
    got = df.select(failure_category_expr()).item()
    want = AnalyticsModel.classify(
        provider, code if code is not None else error, message, CODE_RULES, KEYWORD_RULES
    )
    assert got == want
    assert got in FAILURE_CATEGORIES


def test_failure_taxonomy_examples() -> None:
    def cat(provider: str, code: str | None, message: str | None = None) -> str:
        df = pl.DataFrame(
            {
                "provider_id": [provider],
                "provider_status_code": [code],
                "provider_status_message": [message],
                "last_error": [None],
            },
            schema={
                "provider_id": pl.String,
                "provider_status_code": pl.String,
                "provider_status_message": pl.String,
                "last_error": ERROR_TYPE,
            },
        )
        return str(df.select(failure_category_expr()).item())

    assert cat("solapi", "3104") == "not_kakao"  # k-msg's built-in SOLAPI rule
    assert cat("solapi", "3107") == "not_kakao"
    assert cat("iwinv", "E105", "카카오톡 미사용 사용자") == "not_kakao"  # k-msg's IWINV rule
    assert cat("solapi", "3059") == "policy"
    assert cat("solapi", "1062") == "policy"
    assert cat("solapi", "3043") == "temporary"
    assert cat("solapi", "3032") == "permanent"
    assert cat("nhn", "3104") == "unknown"  # codes are per gateway
    assert cat("nhn", "3014", "수신번호 오류") == "permanent"
    assert cat("iwinv", "16", "스팸 차단") == "policy"
    assert cat("nhn", "TRACKING_TIMEOUT") == "tracking"
    assert not FAILURE_CATEGORIES["tracking"].delivery_failure
    assert all(c.action for c in FAILURE_CATEGORIES.values())


# --------------------------------------------------------------------------- Ibis = Polars


def _normalize(frame: pl.DataFrame) -> pl.DataFrame:
    out = frame
    if "bucket_start" in out.columns:
        col = pl.col("bucket_start")
        dtype = out.schema["bucket_start"]
        if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
            col = col.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        out = out.with_columns(col.dt.cast_time_unit("us"))
    ints = [c for c, t in out.schema.items() if t.is_integer()]
    return out.with_columns(pl.col(ints).cast(pl.Int64))


@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning"
)  # ibis 12 calls a DuckDB API deprecated in 2.0
def test_ibis_on_duckdb_gives_the_polars_numbers_on_the_same_lake(tmp_path: Path) -> None:
    import ibis

    lake = ParquetTrackingStore(tmp_path / "lake", hash_key=TEST_KEY)
    model = AnalyticsModel()
    svc = build(lake, _seeded_messages(70, seed=11), model)
    lake.compact(history=False)
    con = ibis.duckdb.connect(threads=1)
    con.raw_sql("SET TimeZone = 'UTC'")
    rates = list(RATES.values())

    def polars_side(by: list[str], every: str | None) -> pl.DataFrame:
        return polars_rate_table(
            lake.current(), START, END, by=by, every=every, rates=rates, min_n=5
        ).collect()

    def ibis_side(table: Any, by: list[str], every: str | None) -> pl.DataFrame:
        out: pl.DataFrame = ibis_rate_table(
            table, START, END, by=by, every=every, rates=rates, min_n=5
        ).to_polars()
        return out

    def check(table: Any, by: list[str], every: str | None) -> None:
        want = _normalize(polars_side(by, every))
        got = _normalize(ibis_side(table, by, every)).select(want.columns)
        assert_frame_equal(got, want, check_exact=True)

    current = con.read_parquet(
        str(tmp_path / "lake" / "current" / "**" / "*.parquet"), hive_partitioning=True
    )
    for by, every in (
        ([], None),
        (["provider_id"], None),
        (["provider_id", "type"], "1d"),
        ([], "1w"),
    ):
        check(current, by, every)
    # writes after the fold: the current state now needs the history (merge-on-read in
    # Polars; the store's latest-snapshot rule in Ibis over every history file)
    later = [r for r in (svc.get_record(f"m{i}") for i in range(0, 70, 5)) if r is not None]
    lake.append_snapshots(
        [_delivered(r) for r in later], kind="poll", recorded_at=micros(T0 + timedelta(days=5))
    )
    lake.flush()
    history = con.read_parquet(
        str(tmp_path / "lake" / "history" / "**" / "*.parquet"), hive_partitioning=True
    )
    latest = ibis_latest(history)
    for by, every in (([], None), (["provider_id", "status"], "1d")):
        check(latest, by, every)
    # and the analytics summary reads the same counts
    whole = ibis_side(latest, [], None).row(0, named=True)
    summary = DeliveryAnalytics(lake).summary(START, END)
    assert whole["total"] == summary.total
    assert [whole[s.lower()] for s in STATUSES] == [summary.by_status[s] for s in STATUSES]
    assert whole["delivered_of_total_rate_pct"] == pytest.approx(
        summary.rates.delivered_of_total_pct, abs=1e-12
    )
    lake.close()


def _delivered(record: TrackingRecord) -> TrackingRecord:
    return replace(
        record,
        status="DELIVERED",
        delivered_at=record.requested_at + timedelta(seconds=9),
        last_error=TrackingError("E1", "late"),
    )


def test_polars_rate_table_matches_the_model(tmp_path: Path) -> None:
    lake = ParquetTrackingStore(tmp_path / "lake", hash_key=TEST_KEY)
    model = AnalyticsModel(min_n=5)
    build(lake, _seeded_messages(50, seed=3), model)
    table = polars_rate_table(lake.current(), START, END, by=["provider_id"], min_n=5).collect()
    lake.close()
    records = model.window(START, END)
    for row in table.to_dicts():
        members = [r for r in records if r["provider_id"] == row["provider_id"]]
        assert row["total"] == len(members)
        for name in RATES:
            want = model.rate(members, name)
            assert row[f"{name}_num"] == want["numerator"]
            assert row[f"{name}_den"] == want["denominator"]
            assert row[f"{name}_enough_data"] == want["enough_data"]
