"""Property tests: every store answers random queries over random writes like the model.

Each example builds a fresh store (a Parquet lake in its own temporary directory),
replays a random sequence of writes into it and into :class:`tests._model.TrackingModel`
(sends, polls, loads and patches, as single records, batches and Arrow tables, with
compactions of the lake in between), then compares ``list_records``,
``count_records``, ``count_by`` and ``list_due`` with the model's answers.

The values come from small sets so that groups collide, ties need the message-id
tiebreak, and range ends fall exactly on stored timestamps.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from kmsg_analytics import (
    InMemoryTrackingStore,
    ParquetTrackingStore,
    RecordFilter,
    TrackingError,
    TrackingRecord,
)
from kmsg_analytics._schema import record_to_row, rows_to_table
from tests._model import (
    DELIVERY_STATUSES,
    TEST_KEY,
    TIME_BUCKETS,
    TrackingModel,
    as_model_record,
    hash_number,
    mask_number,
)
from tests.conftest import AnyStore

KST = timezone(timedelta(hours=9))

MESSAGE_IDS = ("m0", "m1", "m2", "m3", "m4", "m5")
PROVIDERS = ("solapi", "iwinv", "aligo")
TYPES = ("SMS", "LMS", "ALIMTALK")
CODES = (None, "0000", "3104")
PMIDS = ("", "G-1", "G-2")
RETENTION = ("opsLogs", "telecomMetadata", "billingEvidence")
SNAPSHOT_KINDS = ("send", "poll", "load", "patch")
GROUP_FIELDS = (
    "provider_id",
    "type",
    "status",
    "provider_status_code",
    "retention_class",
    *TIME_BUCKETS,
)

#: Each number in the formats a user may type it in.
NUMBERS = {
    "01012345678": (
        "01012345678",
        "010-1234-5678",
        "+82 10 1234 5678",
        "(010) 1234.5678",
        "+82-010-1234-5678",
    ),
    "01098765432": ("01098765432", "010 9876 5432", "+82 10-9876-5432"),
    "021234567": ("021234567", "02-123-4567", "+82 2 123 4567", "02) 123.4567"),
}
ALL_FORMATS = tuple(f for formats in NUMBERS.values() for f in formats)

#: Timestamps on and next to hour, day (UTC and Korean), week (Monday) and month edges.
INSTANTS = (
    datetime(2026, 2, 28, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2026, 3, 1, 0, 0, tzinfo=UTC),
    datetime(2026, 3, 1, 14, 59, 59, tzinfo=UTC),
    datetime(2026, 3, 1, 15, 0, tzinfo=UTC),
    datetime(2026, 3, 2, 0, 0, tzinfo=UTC),
    datetime(2026, 3, 2, 0, 0, 0, 1, tzinfo=UTC),
    datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
    datetime(2026, 3, 8, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2026, 3, 9, 10, 0, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 0, tzinfo=UTC),
    datetime(2027, 1, 1, 0, 0, tzinfo=UTC),
)

PROPERTY_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------- strategies

instants = st.sampled_from(INSTANTS)
maybe_instant = st.none() | instants


@st.composite
def records(draw: st.DrawFn, message_id: str, requested_at: datetime) -> dict[str, Any]:
    """One record in model form (numbers hashed and masked; not kept in clear)."""
    to = draw(st.sampled_from(ALL_FORMATS))
    from_ = draw(st.none() | st.sampled_from(ALL_FORMATS))
    status = draw(st.sampled_from(DELIVERY_STATUSES))
    error: dict[str, str] | None = draw(
        st.none()
        | st.builds(dict, code=st.sampled_from(["E1", "TRACKING_TIMEOUT"]), message=st.just("m"))
    )
    return {
        "message_id": message_id,
        "provider_id": draw(st.sampled_from(PROVIDERS)),
        "provider_message_id": draw(st.sampled_from(PMIDS)),
        "type": draw(st.sampled_from(TYPES)),
        "to": None,
        "from_": None,
        "to_hash": hash_number(to),
        "to_masked": mask_number(to),
        "from_hash": None if from_ is None else hash_number(from_),
        "from_masked": None if from_ is None else mask_number(from_),
        "requested_at": requested_at,
        "scheduled_at": draw(maybe_instant),
        "status": status,
        "provider_status_code": draw(st.sampled_from(CODES)),
        "provider_status_message": draw(st.sampled_from([None, "ok", "미사용자"])),
        "sent_at": draw(maybe_instant),
        "delivered_at": draw(maybe_instant),
        "failed_at": None,
        "status_updated_at": draw(instants),
        "attempt_count": draw(st.integers(0, 3)),
        "last_checked_at": draw(maybe_instant),
        "next_check_at": draw(instants),
        "last_error": error,
        "raw": draw(st.sampled_from([None, {"code": 1}, ["x"]])),
        "metadata": draw(st.sampled_from([{}, {"custom_fields": {"k": "v"}}])),
        "retention_class": draw(st.sampled_from(RETENTION)),
        "retention_bucket_ym": requested_at.year * 100 + requested_at.month,
    }


@st.composite
def write_ops(draw: st.DrawFn, *, stable_requested_at: bool = True) -> list[tuple[Any, ...]]:
    """A random sequence of writes.

    With ``stable_requested_at`` every snapshot of a message carries the same
    ``requested_at`` (what record_send and polling produce). Without it a ``send``,
    ``load`` or ``patch`` snapshot may move the message to another time and day (a
    re-send with a new timestamp, a corrected load, a patch), while a ``poll`` keeps
    the ``requested_at`` of the message's current state, as a status check does.
    """
    requested = {m: draw(instants) for m in MESSAGE_IDS}
    # requested_at of each message's latest send and latest other snapshot (precedence rule)
    latest: dict[str, dict[str, datetime]] = {m: {} for m in MESSAGE_IDS}

    def current_requested_at(mid: str) -> datetime:
        seen = latest[mid]
        return seen.get("other") or seen.get("send") or requested[mid]

    def record(kind: str) -> dict[str, Any]:
        mid = draw(st.sampled_from(MESSAGE_IDS))
        if stable_requested_at:
            at = requested[mid]
        elif kind == "poll":
            at = current_requested_at(mid)
        else:
            at = draw(instants)
        latest[mid]["send" if kind == "send" else "other"] = at
        return draw(records(mid, at))

    ops: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 7))):
        op = draw(st.sampled_from(["append", "append", "table", "upsert", "patch", "compact"]))
        if op in ("append", "table"):
            kind = draw(st.sampled_from(SNAPSHOT_KINDS))
            ops.append((op, kind, [record(kind) for _ in range(draw(st.integers(1, 5)))]))
        elif op == "upsert":
            ops.append((op, "send", [record("send")]))
        elif op == "patch":
            changes: dict[str, Any] = draw(
                st.fixed_dictionaries(
                    {"status": st.sampled_from(DELIVERY_STATUSES)},
                    optional={
                        "provider_status_code": st.sampled_from(CODES),
                        "status_updated_at": instants,
                        "next_check_at": instants,
                        "attempt_count": st.integers(0, 5),
                    },
                )
            )
            mid = draw(st.sampled_from([*MESSAGE_IDS, "absent"]))
            if not stable_requested_at and draw(st.booleans()):
                changes["requested_at"] = draw(instants)
            if latest.get(mid):  # a patch of a known message is a snapshot
                latest[mid]["other"] = changes.get("requested_at", current_requested_at(mid))
            ops.append((op, mid, changes))
        else:
            ops.append((op,))
    return ops


def _values(values: tuple[str, ...]) -> st.SearchStrategy[Any]:
    return st.sampled_from(values) | st.lists(st.sampled_from(values), max_size=3)


def _moment(moment: datetime, zone: str) -> datetime:
    if zone == "kst":
        return moment.astimezone(KST)
    if zone == "naive":
        return moment.replace(tzinfo=None)
    return moment


bounds = st.builds(_moment, instants, st.sampled_from(["utc", "kst", "naive"]))
hashes = (*(hash_number(n) for n in NUMBERS), "0" * 64)

filters = st.fixed_dictionaries(
    {},
    optional={
        "message_id": _values((*MESSAGE_IDS, "zz")),
        "provider_id": _values(PROVIDERS),
        "provider_message_id": _values(PMIDS),
        "type": _values(TYPES),
        "status": _values(DELIVERY_STATUSES),
        "to": _values((*ALL_FORMATS, "010-0000-0000")),
        "to_hash": _values(hashes),
        "from_": _values(ALL_FORMATS),
        "from_hash": _values(hashes),
        "requested_at_from": bounds,
        "requested_at_to": bounds,
        "status_updated_at_from": bounds,
        "status_updated_at_to": bounds,
    },
)


@dataclass(frozen=True)
class Query:
    flt: dict[str, Any]
    limit: int
    offset: int
    order_by: str
    order_direction: str
    group_by: list[str]
    now: datetime
    due_limit: int


queries = st.builds(
    Query,
    flt=filters,
    limit=st.integers(-1, 8),
    offset=st.integers(0, 7),
    order_by=st.sampled_from(["requested_at", "status_updated_at"]),
    order_direction=st.sampled_from(["asc", "desc"]),
    group_by=st.lists(st.sampled_from(GROUP_FIELDS), max_size=3),
    now=bounds,
    due_limit=st.integers(-1, 8),
)


def fixed_record(message_id: str, requested_at: datetime, **changes: Any) -> dict[str, Any]:
    """A plain SENT record (for explicit examples)."""
    record: dict[str, Any] = {
        "message_id": message_id,
        "provider_id": "solapi",
        "provider_message_id": "G-1",
        "type": "SMS",
        "to": None,
        "from_": None,
        "to_hash": hash_number("01012345678"),
        "to_masked": mask_number("01012345678"),
        "from_hash": None,
        "from_masked": None,
        "requested_at": requested_at,
        "scheduled_at": None,
        "status": "SENT",
        "provider_status_code": None,
        "provider_status_message": None,
        "sent_at": None,
        "delivered_at": None,
        "failed_at": None,
        "status_updated_at": requested_at,
        "attempt_count": 0,
        "last_checked_at": None,
        "next_check_at": requested_at + timedelta(seconds=30),
        "last_error": None,
        "raw": None,
        "metadata": {},
        "retention_class": "telecomMetadata",
        "retention_bucket_ym": requested_at.year * 100 + requested_at.month,
    }
    record.update(changes)
    return record


ALL_OF_IT = Query(
    flt={},
    limit=100,
    offset=0,
    order_by="requested_at",
    order_direction="asc",
    group_by=["requested_at_day", "status"],
    now=INSTANTS[-1],
    due_limit=100,
)


# --------------------------------------------------------------------------- running it


@contextmanager
def fresh_store(kind: str) -> Iterator[AnyStore]:
    """A store that lives for one example (a lake in its own temporary directory)."""
    if kind == "memory":
        yield InMemoryTrackingStore(hash_key=TEST_KEY)
        return
    with tempfile.TemporaryDirectory(prefix="kmsg-prop-") as tmp:
        lake = ParquetTrackingStore(Path(tmp) / "lake", hash_key=TEST_KEY)
        try:
            yield lake
        finally:
            lake.close()


def to_record(record: dict[str, Any]) -> TrackingRecord:
    values = dict(record)
    err = values["last_error"]
    values["last_error"] = None if err is None else TrackingError(err["code"], err["message"])
    return TrackingRecord(**values)


def apply(store: AnyStore, model: TrackingModel, op: tuple[Any, ...]) -> None:
    """Make one write to the store and the model."""
    name = op[0]
    if name == "append":
        _, kind, recs = op
        store.append_snapshots([to_record(r) for r in recs], kind=kind)
        model.add_many(kind, recs)
    elif name == "table":
        _, kind, recs = op
        rows = [record_to_row(to_record(r), kind=kind, recorded_at=0) for r in recs]
        store.append_table(rows_to_table(rows), kind=kind)
        model.add_many(kind, recs)
    elif name == "upsert":
        store.upsert(to_record(op[2][0]))
        model.add("send", op[2][0])
    elif name == "patch":
        _, mid, changes = op
        got = store.patch(mid, changes)
        expected = model.patch(mid, changes)
        assert (got is None) is (expected is None), mid
    elif name == "compact":
        if isinstance(store, ParquetTrackingStore):
            store.compact()
    else:  # pragma: no cover
        raise AssertionError(name)


def check_queries(store: AnyStore, model: TrackingModel, query: Query) -> None:
    """Compare the four queries of ``store`` with the model for one random query."""
    flt = RecordFilter(**query.flt)
    note(f"query: {query}")

    listed = store.list_records(
        flt, query.limit, query.offset, query.order_by, query.order_direction
    )
    assert isinstance(listed, pl.LazyFrame)
    got = [as_model_record(r) for r in listed.collect().to_dicts()]
    want = model.list_records(
        query.flt, query.limit, query.offset, query.order_by, query.order_direction
    )
    assert [r["message_id"] for r in got] == [r["message_id"] for r in want], "list_records order"
    assert got == want, "list_records values"

    assert store.count_records(flt) == model.count_records(query.flt), "count_records"

    counted = store.count_by(flt, query.group_by)
    assert isinstance(counted, pl.LazyFrame)
    frame = counted.collect()
    want_groups = model.count_by(query.flt, query.group_by)
    names = list(dict.fromkeys(query.group_by))
    if names:
        assert frame.columns == [*names, "count"], "count_by columns"
        assert frame.schema["count"] == pl.Int64
    assert frame.to_dicts() == want_groups, "count_by"

    due = [as_model_record(r) for r in store.list_due(query.now, query.due_limit)]
    assert due == model.list_due(query.now, query.due_limit), "list_due"


def run_case(kind: str, ops: list[tuple[Any, ...]], query_list: list[Query]) -> None:
    model = TrackingModel()
    with fresh_store(kind) as store:
        for op in ops:
            apply(store, model, op)
        note(f"current: {model.records()}")
        for query in query_list:
            check_queries(store, model, query)
        assert store.count_records(RecordFilter()) == len(model.current()), "one record per message"
        for mid in (*MESSAGE_IDS, "absent"):
            record = store.get(mid)
            want = model.get(mid)
            assert (None if record is None else as_model_record(record)) == want, f"get({mid})"


# --------------------------------------------------------------------------- the properties


@pytest.mark.parametrize("kind", ["memory", "parquet"])
@PROPERTY_SETTINGS
@given(ops=write_ops(), query_list=st.lists(queries, min_size=1, max_size=3))
def test_queries_match_model(
    kind: str, ops: list[tuple[Any, ...]], query_list: list[Query]
) -> None:
    """list_records, count_records, count_by, list_due and get agree with the model."""
    run_case(kind, ops, query_list)


@pytest.mark.parametrize("kind", ["memory", "parquet"])
@settings(PROPERTY_SETTINGS, report_multiple_bugs=False)
@given(
    ops=write_ops(stable_requested_at=False), query_list=st.lists(queries, min_size=1, max_size=2)
)
@example(  # a send folded, then a load that moves the message a day on, folded
    ops=[
        ("append", "send", [fixed_record("m0", INSTANTS[0])]),
        ("compact",),
        ("append", "load", [fixed_record("m0", INSTANTS[4], status="DELIVERED")]),
        ("compact",),
    ],
    query_list=[ALL_OF_IT],
)
@example(  # the same two snapshots folded together
    ops=[
        ("append", "send", [fixed_record("m0", INSTANTS[0])]),
        ("append", "load", [fixed_record("m0", INSTANTS[4], status="DELIVERED")]),
        ("compact",),
    ],
    query_list=[ALL_OF_IT],
)
def test_queries_match_model_when_requested_at_moves(
    kind: str, ops: list[tuple[Any, ...]], query_list: list[Query]
) -> None:
    """The same when a later snapshot (load, poll, patch) moves a message to another day."""
    run_case(kind, ops, query_list)


@settings(max_examples=60, deadline=None)
@given(ops=write_ops(), query=queries)
def test_model_invariants(ops: list[tuple[Any, ...]], query: Query) -> None:
    """The model itself: paging slices the full order, groups add up, due is a subset."""
    model = TrackingModel()
    for op in ops:
        if op[0] in ("append", "table"):
            model.add_many(op[1], op[2])
        elif op[0] == "upsert":
            model.add("send", op[2][0])
        elif op[0] == "patch":
            model.patch(op[1], op[2])
    everything = model.list_records(query.flt, 1000, 0, query.order_by, query.order_direction)
    page = model.list_records(
        query.flt, query.limit, query.offset, query.order_by, query.order_direction
    )
    expected_page = everything[query.offset : query.offset + query.limit] if query.limit > 0 else []
    assert page == expected_page
    assert len(everything) == model.count_records(query.flt)
    groups = model.count_by(query.flt, query.group_by)
    assert sum(g["count"] for g in groups) == (len(everything) if query.group_by else 0)
    due = model.list_due(query.now, 1000)
    assert all(r["status"] in ("PENDING", "SENT") for r in due)
    assert [r["next_check_at"] for r in due] == sorted(r["next_check_at"] for r in due)
