"""k-msg's own answers over its own database, reproduced after importing it into a lake.

``kmsg-small.sqlite`` was written by k-msg 0.30.0's real ``DeliveryTrackingService`` and
``kmsg-small.answers.json`` holds what k-msg answered to ``countRecords``, ``countBy``,
``listRecords``, ``listDue`` and the analytics ``getSummary`` over it. Each query is a
test here, run against the imported lake as it is and after ``compact()`` (merge-on-read
and folded current state must agree with k-msg alike).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from kmsg_analytics import ParquetTrackingStore
from kmsg_analytics._kmsg_import import import_kmsg_table
from kmsg_analytics._records import coerce_filter, coerce_time
from tests._helpers import KMSG_FIXTURES
from tests._model import TEST_KEY

FIXTURES = KMSG_FIXTURES
DB = FIXTURES / "kmsg-small.sqlite"
ANSWERS_FILE = FIXTURES / "kmsg-small.answers.json"

pytestmark = pytest.mark.skipif(
    not DB.is_file() or not ANSWERS_FILE.is_file(),
    reason=f"k-msg fixtures not found at {FIXTURES}",
)


def _answers() -> dict[str, Any]:
    if not ANSWERS_FILE.is_file():
        return {"queries": []}
    data = json.loads(ANSWERS_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


ANSWERS = _answers()
QUERIES = {q["id"]: q for q in ANSWERS["queries"]}


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture database imported once into a fresh lake (default keep_numbers=False)."""
    lake = tmp_path_factory.mktemp("kmsg-fixture") / "lake"
    report = import_kmsg_table(f"sqlite:///{DB}", lake, hash_key=TEST_KEY)
    assert (report.rows_read, report.new, report.skipped) == (ANSWERS["messages"], 3000, 0)
    return lake


@pytest.fixture(scope="module", params=["merge-on-read", "compacted"])
def lake(
    request: pytest.FixtureRequest, imported: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ParquetTrackingStore]:
    path = imported
    if request.param == "compacted":
        path = tmp_path_factory.mktemp("kmsg-fixture-compacted") / "lake"
        shutil.copytree(imported, path)
    store = ParquetTrackingStore(path, hash_key=TEST_KEY)
    if request.param == "compacted":
        store.compact()
    try:
        yield store
    finally:
        store.close()


def _filter(raw: dict[str, Any]) -> Any:
    """k-msg's filter (camelCase, ISO times) as ours; ``_epochMs`` is only documentation."""
    return coerce_filter({k: v for k, v in raw.items() if not k.startswith("_")})


def _of_kind(call: str) -> list[str]:
    return [qid for qid, q in QUERIES.items() if q["call"].startswith(call)]


def test_the_fixture_is_what_this_suite_expects() -> None:
    assert ANSWERS["table"] == "kmsg_delivery_tracking"
    assert ANSWERS["kmsg"]["messagingVersion"] == "0.30.0"
    kinds = {q["call"].split("(")[0] for q in QUERIES.values()}
    assert {"store.countRecords", "store.countBy", "store.listRecords", "store.listDue"} <= kinds


@pytest.mark.parametrize("qid", _of_kind("store.countRecords"))
def test_count_records(lake: ParquetTrackingStore, qid: str) -> None:
    q = QUERIES[qid]
    assert lake.count_records(_filter(q["filter"])) == q["result"]


@pytest.mark.parametrize("qid", _of_kind("store.countBy"))
def test_count_by(lake: ParquetTrackingStore, qid: str) -> None:
    q = QUERIES[qid]
    groups = list(q["groupBy"])
    got = lake.count_by(_filter(q["filter"]), groups).collect()
    names = [c for c in got.columns if c != "count"]
    assert len(names) == len(groups)
    ours = {(tuple(row[n] for n in names), row["count"]) for row in got.iter_rows(named=True)}
    theirs = {(tuple(r["key"][g] for g in groups), r["count"]) for r in q["result"]}
    assert ours == theirs


@pytest.mark.parametrize("qid", _of_kind("store.listRecords"))
def test_list_records(lake: ParquetTrackingStore, qid: str) -> None:
    q = QUERIES[qid]
    options = dict(q["options"])
    limit = options.pop("limit")
    offset = options.pop("offset", 0)
    order_by = {"requestedAt": "requested_at", "statusUpdatedAt": "status_updated_at"}[
        options.pop("orderBy", "requestedAt")
    ]
    direction = options.pop("orderDirection", "desc")
    frame = lake.list_records(_filter(options), limit, offset, order_by, direction).collect()
    assert frame.get_column("message_id").to_list() == q["result"]
    # the detail k-msg printed agrees too
    detail = {d["messageId"]: d for d in q.get("detail", [])}
    for row in frame.iter_rows(named=True):
        if row["message_id"] in detail:
            d = detail[row["message_id"]]
            assert row["requested_at"] == coerce_time(d["requestedAt"], "requestedAt")
            assert (row["provider_id"], row["type"]) == (d["providerId"], d["type"])


@pytest.mark.parametrize("qid", _of_kind("store.listDue"))
def test_list_due(lake: ParquetTrackingStore, qid: str) -> None:
    q = QUERIES[qid]
    now = coerce_time(q["now"], "now")
    due = lake.list_due(now, q["limit"])
    assert [r.message_id for r in due] == q["result"]
    everything_due = lake.list_due(now, 10_000)
    assert len(everything_due) == q["totalDueAtNow"]


@pytest.mark.parametrize("qid", _of_kind("new DeliveryTrackingAnalyticsService"))
def test_summary(lake: ParquetTrackingStore, qid: str) -> None:
    from kmsg_analytics._analytics import DeliveryAnalytics

    q = QUERIES[qid]
    window = q["query"]["requestedAt"]
    options = q.get("options", {})
    summary = DeliveryAnalytics(lake).summary(
        coerce_time(window["start"], "start"),
        coerce_time(window["end"], "end"),
        include_by_provider=bool(options.get("includeByProviderId")),
        include_by_type=bool(options.get("includeByType")),
    )
    assert summary.to_kmsg() == q["result"]


def test_summary_counts_equal_count_by(lake: ParquetTrackingStore) -> None:
    """The summary's totals are count_by over the same window (independent of analytics)."""
    (qid,) = _of_kind("new DeliveryTrackingAnalyticsService")
    q = QUERIES[qid]
    window = q["query"]["requestedAt"]
    flt = coerce_filter(requested_at_from=window["start"], requested_at_to=window["end"])
    by_status = lake.count_by(flt, ["status"]).collect()
    got = dict(zip(by_status["status"].to_list(), by_status["count"].to_list(), strict=True))
    expected = {k: v for k, v in q["result"]["byStatus"].items() if v}
    assert got == expected
    assert lake.count_records(flt) == q["result"]["total"]
    by_provider = lake.count_by(flt, ["provider_id"]).collect()
    assert {r["provider_id"]: r["count"] for r in by_provider.iter_rows(named=True)} == {
        k: v["total"] for k, v in q["result"]["byProviderId"].items()
    }


def test_every_record_survives_the_import(lake: ParquetTrackingStore) -> None:
    """Field by field against the SQLite rows (numbers only as hash and mask)."""
    import sqlite3

    con = sqlite3.connect(f"file:{DB}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    rows = {r["message_id"]: dict(r) for r in con.execute("SELECT * FROM kmsg_delivery_tracking")}
    con.close()
    frame = lake.current().collect()
    assert frame.height == len(rows)
    assert frame.get_column("to").null_count() == frame.height  # keep_numbers=False
    ms = pl.col("requested_at").dt.epoch("ms")
    got = frame.select("message_id", ms.alias("requested_ms")).iter_rows()
    assert all(rows[mid]["requested_at"] == value for mid, value in got)
    for row in frame.filter(pl.col("metadata") != "{}").iter_rows(named=True):
        meta = json.loads(row["metadata"])
        assert meta == _snake_metadata(json.loads(rows[row["message_id"]]["metadata"]))
    for row in frame.head(200).iter_rows(named=True):
        src = rows[row["message_id"]]
        assert row["status"] == src["status"]
        assert row["provider_message_id"] == src["provider_message_id"]
        assert row["attempt_count"] == src["attempt_count"]
        err = None if src["last_error"] is None else json.loads(src["last_error"])
        assert row["last_error"] == err
        if src["metadata"] is None:
            assert row["metadata"] == "{}"
        assert isinstance(row["status_updated_at"], datetime)


def _snake(key: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def _snake_metadata(value: Any, *, inside_custom: bool = False) -> Any:
    """k-msg's metadata with every key in snake_case, except inside custom fields."""
    if isinstance(value, dict):
        if inside_custom:
            return value
        return {
            _snake(k): _snake_metadata(v, inside_custom=k == "customFields")
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_snake_metadata(v) for v in value]
    return value
