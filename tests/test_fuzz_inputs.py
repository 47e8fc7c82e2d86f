"""Random hostile input at every entry point: a clean error and an untouched lake, or a sound lake.

Hypothesis feeds wrong types, NaN and infinite numbers, naive, far-past and far-future
times (with odd UTC offsets), lone surrogates (text that is not valid UTF-8), SQL- and
path-looking strings, huge strings and odd unicode to ``record_send`` (our dataclasses,
snake_case mappings and k-msg's camelCase shape), ``record_sends``, ``load_records``
(Polars and Arrow frames with wrong dtypes and nulls), the filters and options of
``list_records``/``count_records``/``count_by``, ``ingest_events``, the k-msg importer
(a SQLite table holding anything SQLite holds) and the key/value metadata of a lake
file. The property, for every call: either it succeeds and the lake is consistent, or
it raises a :class:`KmsgAnalyticsError` (never a bare ``KeyError``/``TypeError`` or a
Polars/Arrow exception) and the lake's files and answers are exactly as before. Each
test ends with ``doctor`` finding the lake healthy.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kmsg_analytics import (
    DeliveryTrackingService,
    FailoverOptions,
    HookContext,
    KmsgAnalyticsError,
    ParquetTrackingStore,
    SendOptions,
    SendResult,
    SendWarning,
)
from kmsg_analytics._doctor import check_lake
from kmsg_analytics._kmsg_import import import_kmsg_table
from kmsg_analytics._schema import row_to_record

KEY = "test-key-123"
KEYS = {"fz": bytes(range(32))}
NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
    derandomize=not os.environ.get("FUZZ_RANDOM"),  # FUZZ_RANDOM=1 explores new examples
)
#: An aware time whose UTC is past ``datetime.max`` (found by these tests: an OverflowError).
FAR = datetime.max.replace(tzinfo=timezone(timedelta(hours=-5)))


class Gateway:
    id = "solapi"


# --------------------------------------------------------------------------- hostile values

SPECIAL = [
    "", " ", "\x00", "a\x00b", "\ud800", "x\udfffy", "\ufeff", "\u202e5678-4321-010",
    "'; DROP TABLE kmsg_delivery_tracking; --", '" OR 1=1 --', "Robert'); --",
    "../../../etc/passwd", "..\\..\\windows\\system32", "/dev/zero", "history/ingest_date=x",
    "%s%n%x", "{0}{1}", "${jndi:ldap://x}", "<script>alert(1)</script>", "\n\r\t\x0b",
    "０１０-１２３４-５６７８", "٠١٠١٢٣٤٥٦٧٨", "𝟘𝟙𝟘𝟙𝟚𝟛𝟜𝟝𝟞𝟟𝟠", "010-1234-5678", "+82 10 1234 5678",
    "SENT", "DELIVERED", "FAILED", "sent", "SMS", "ALIMTALK", "alimtalk", "NaN", "1e309",
    "-0", "null", "{}", "[]", '{"a":', "2026-11-01T09:00:00+09:00", "2026-02-30T00:00:00Z",
    "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00", "1999-12-31T23:59:59Z",
    "2199-12-31T23:59:59.999999Z", "x" * 257, "x" * 5000, "ß" * 300, "İ",
]  # fmt: skip

offsets = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23)),
)
datetimes = st.one_of(
    st.datetimes(),  # naive, 0001..9999
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(timezones=offsets),
    st.sampled_from(
        [
            datetime.max.replace(tzinfo=timezone(timedelta(hours=-5))),
            datetime.min.replace(tzinfo=timezone(timedelta(hours=5))),
            datetime(2199, 12, 31, 23, 59, tzinfo=UTC),
            datetime(2000, 1, 1),
        ]
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e300]),
    st.text(max_size=20),
    st.sampled_from(SPECIAL),
    st.binary(max_size=8),
    datetimes,
    st.dates(),
    st.decimals(allow_nan=True),
    st.timedeltas(),
)
hostile = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=6), scalars, max_size=3),
    st.just(object()),
    st.just({f"k{i}": i for i in range(1001)}),
    st.just("y" * 2_000_000),
)


# --------------------------------------------------------------------------- the lake


@dataclass
class Lake:
    """One lake shared by a test's examples (each call must leave it sound)."""

    root: Path
    store: ParquetTrackingStore
    svc: DeliveryTrackingService
    calls: int = 0
    refused: int = 0

    def files(self) -> dict[str, str]:
        return {
            str(p.relative_to(self.root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(self.root.rglob("*"))
            if p.is_file() and p.name != "_lock" and p.suffix != ".lock"  # locks hold no data
        }

    def answers(self) -> tuple[int, pl.DataFrame, pl.DataFrame]:
        return (
            self.svc.count_records(),
            self.svc.list_records(limit=100_000, order_by="requested_at").collect(),
            self.svc.count_by(group_by=["provider_id", "status", "type"]).collect(),
        )

    def check_sound(self) -> None:
        count, records, groups = self.answers()
        assert records.height == count
        assert records.get_column("message_id").n_unique() == count
        assert int(groups.get_column("count").sum()) == count
        assert records.get_column("to_masked").str.contains(r"^\S*$").all()
        sizes = records.select(pl.col("raw", "metadata").str.len_bytes().max()).row(0)
        assert all(n is None or n <= 1_000_000 for n in sizes), f"JSON of {sizes} bytes got in"
        for row in records.to_dicts():  # what get_record would make of every row
            assert isinstance(row_to_record(row).metadata, dict)
        for mid in records.get_column("message_id").head(3).to_list():
            rec = self.svc.get_record(mid)
            assert rec is not None
            assert rec.message_id == mid

    def attempt(self, call: Callable[[], object]) -> object | None:
        """Run ``call``: a result and a sound lake, or our error and the lake as it was."""
        self.calls += 1
        files, answers = self.files(), self.answers()
        refusal: KmsgAnalyticsError | None = None
        out: object = None
        try:
            out = call()
            if isinstance(out, pl.LazyFrame):
                out = out.collect()
        except KmsgAnalyticsError as err:
            refusal = err
        except Exception as err:
            raise AssertionError(escaped(err)) from err
        if refusal is None:
            self.check_sound()
            return out
        self.refused += 1
        assert str(refusal), "an error without a message"
        assert self.files() == files, f"refused ({refusal}) but the lake's files changed"
        after = self.answers()
        assert after[0] == answers[0]
        assert after[1].equals(answers[1])
        return None

    def healthy(self) -> None:
        self.store.flush()
        report = check_lake(self.root, hash_key=KEY, keys=KEYS)
        assert report.ok, str(report)


def escaped(err: BaseException) -> str:
    return f"{type(err).__module__}.{type(err).__name__} escaped: {err!r}"[:2000]


def _context(i: int) -> dict[str, Any]:
    return {
        "message_id": f"seed-{i}",
        "timestamp": NOW - timedelta(hours=i),
        "type": "ALIMTALK" if i % 2 else "SMS",
        "to": f"010-2222-{i:04d}",
        "from_": "02-123-4567",
        "scheduled_at": None,
        "custom_fields": {"campaign": "fuzz", "n": i},
        "failover": {"enabled": True, "fallback_channel": "sms", "fallback_content": "hi"},
        "provider_id": "solapi",
        "provider_message_id": f"G-{i}",
        "result_type": "ALIMTALK" if i % 2 else "SMS",
        "result_to": f"010-2222-{i:04d}",
        "warnings": [{"code": "W1", "message": "w"}],
        "result_message_id": f"seed-{i}",
    }


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[Lake]:
    root = tmp_path / "lake"
    store = ParquetTrackingStore(root, hash_key=KEY, keys=KEYS, flush_seconds=3600)
    svc = DeliveryTrackingService([Gateway()], store=store, clock=lambda: NOW)
    svc.record_sends(render(_context(i), "camel") for i in range(6))
    store.compact()
    svc.record_send(*render(_context(6), "snake"))
    svc.ingest_events([{"message_id": "seed-1", "status": "DELIVERED"}])
    fuzzed = Lake(root, store, svc)
    try:
        yield fuzzed
        fuzzed.healthy()  # after every example of the test: doctor finds nothing wrong
    finally:
        store.close()


# --------------------------------------------------------------------------- sends


_MISSING = object()


def render(v: dict[str, Any], shape: str) -> tuple[Any, Any]:
    """A (context, result) pair in one of the shapes record_send takes."""

    def put(target: dict[str, Any], key: str, name: str) -> None:
        if v.get(name, _MISSING) is not _MISSING:
            target[key] = v[name]

    fo = v.get("failover", _MISSING)
    if shape == "dataclass":
        failover = fo
        if isinstance(fo, dict):
            failover = FailoverOptions(
                enabled=fo.get("enabled"),  # type: ignore[arg-type]
                fallback_channel=fo.get("fallback_channel"),  # type: ignore[arg-type]
                fallback_content=fo.get("fallback_content"),
            )
        warnings = v.get("warnings")
        if isinstance(warnings, list):
            warnings = tuple(
                SendWarning(w.get("code"), w.get("message"))  # type: ignore[arg-type]
                if isinstance(w, dict)
                else w
                for w in warnings
            )
        ctx = HookContext(
            message_id=v.get("message_id"),  # type: ignore[arg-type]
            timestamp=v.get("timestamp"),  # type: ignore[arg-type]
            options=SendOptions(
                type=v.get("type"),  # type: ignore[arg-type]
                to=v.get("to"),  # type: ignore[arg-type]
                from_=v.get("from_"),
                scheduled_at=v.get("scheduled_at"),
                custom_fields=v.get("custom_fields"),
                failover=None if failover is _MISSING else failover,  # type: ignore[arg-type]
            ),
        )
        res = SendResult(
            message_id=v.get("result_message_id"),  # type: ignore[arg-type]
            provider_id=v.get("provider_id"),  # type: ignore[arg-type]
            provider_message_id=v.get("provider_message_id"),
            type=v.get("result_type"),  # type: ignore[arg-type]
            to=v.get("result_to"),  # type: ignore[arg-type]
            warnings=warnings if warnings is not None else (),  # type: ignore[arg-type]
        )
        return ctx, res
    camel = shape == "camel"
    names = {
        "message_id": "messageId" if camel else "message_id",
        "scheduled_at": "scheduledAt" if camel else "scheduled_at",
        "custom_fields": "customFields" if camel else "custom_fields",
        "from_": "from" if camel else "from_",
        "provider_id": "providerId" if camel else "provider_id",
        "provider_message_id": "providerMessageId" if camel else "provider_message_id",
    }
    options: dict[str, Any] = {}
    for name in ("type", "to", "from_", "scheduled_at", "custom_fields"):
        put(options, names.get(name, name), name)
    if fo is not _MISSING:
        if isinstance(fo, dict) and camel:
            fo = {("fallbackChannel" if k == "fallback_channel" else
                   "fallbackContent" if k == "fallback_content" else k): x
                  for k, x in fo.items()}  # fmt: skip
        options["failover"] = fo
    context: dict[str, Any] = {"options": v.get("options", options)}
    put(context, names["message_id"], "message_id")
    put(context, "timestamp", "timestamp")
    result: dict[str, Any] = {}
    for src, dst in (
        ("result_message_id", names["message_id"]),
        ("provider_id", names["provider_id"]),
        ("provider_message_id", names["provider_message_id"]),
        ("result_type", "type"),
        ("result_to", "to"),
        ("warnings", "warnings"),
    ):
        put(result, dst, src)
    return context, result


SEND_FIELDS = sorted(_context(0))
_ids = itertools.count()


@st.composite
def send_values(draw: st.DrawFn) -> dict[str, Any]:
    """A good send with a few fields made hostile (or removed)."""
    v = _context(100 + next(_ids) % 50)
    mid = f"fz-{draw(st.integers(0, 30))}"
    v["message_id"] = v["result_message_id"] = mid
    for name in draw(st.lists(st.sampled_from(SEND_FIELDS), max_size=3, unique=True)):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            v[name] = _MISSING
        elif name == "failover" and choice < 4:
            v[name] = {
                "enabled": draw(st.one_of(st.booleans(), hostile)),
                "fallback_channel": draw(st.one_of(st.sampled_from(["sms", "lms"]), hostile)),
                "fallback_content": draw(hostile),
            }
        elif name == "warnings" and choice < 4:
            v[name] = [{"code": draw(hostile), "message": draw(hostile)}]
        elif name == "custom_fields" and choice < 4:
            v[name] = draw(st.dictionaries(st.sampled_from(SPECIAL), hostile, max_size=3))
        else:
            v[name] = draw(hostile)
    if draw(st.integers(0, 19)) == 0:
        v["options"] = draw(hostile)
    return v


@FUZZ
@given(v=send_values(), shape=st.sampled_from(["camel", "snake", "dataclass"]))
@example(v={**_context(7), "timestamp": FAR}, shape="camel")
@example(v={**_context(7), "scheduled_at": FAR}, shape="dataclass")
def test_record_send(lake: Lake, v: dict[str, Any], shape: str) -> None:
    try:
        ctx, res = render(v, shape)
    except Exception:  # our test could not even build the dataclass: nothing to send
        return
    record = lake.attempt(lambda: lake.svc.record_send(ctx, res))
    if record is not None:
        got = lake.svc.get_record(v["message_id"])
        assert got is not None
        assert got.to is None  # numbers are never stored in clear here
        assert got.to_enc is not None
        assert got.to_enc.startswith("v1.fz.")
        opened = lake.store.reveal_numbers(got)[0]
        assert opened is not None
        assert opened.isdigit()


@FUZZ
@given(
    batch=st.lists(
        st.tuples(send_values(), st.sampled_from(["camel", "snake", "dataclass"])), max_size=4
    ),
    wrap=st.integers(0, 9),
)
@example(batch=[], wrap=1)  # not an iterable
@example(batch=[(_context(8), "snake")], wrap=2)  # triples
@example(batch=[(_context(8), "camel")], wrap=0)  # contexts without results
def test_record_sends(lake: Lake, batch: list[tuple[dict[str, Any], str]], wrap: int) -> None:
    try:
        pairs: Any = [render(v, shape) for v, shape in batch]
    except Exception:
        return
    if wrap == 0:
        pairs = [p[0] for p in pairs]  # not pairs at all
    elif wrap == 1:
        pairs = 5
    elif wrap == 2:
        pairs = [(*p, "extra") for p in pairs]
    lake.attempt(lambda: lake.svc.record_sends(pairs))


# --------------------------------------------------------------------------- bulk frames


def good_frame(n: int = 2) -> dict[str, list[Any]]:
    k = next(_ids)
    return {
        "message_id": [f"load-{k}-{i}" for i in range(n)],
        "provider_id": ["solapi", "iwinv"][:n] + ["solapi"] * max(0, n - 2),
        "type": ["SMS", "LMS"][:n] + ["SMS"] * max(0, n - 2),
        "to": [f"010-3333-{i:04d}" for i in range(n)],
        "from_": ["02-123-4567"] * n,
        "requested_at": [NOW - timedelta(days=1, minutes=i) for i in range(n)],
        "status": ["SENT", "DELIVERED"][:n] + ["SENT"] * max(0, n - 2),
        "attempt_count": list(range(n)),
        "metadata": ['{"a":1}'] * n,
        "raw": [None] * n,
    }


FRAME_COLUMNS = [*good_frame(), "sent_at", "status_updated_at", "next_check_at", "last_error",
                 "retention_class", "to_hash", "to_masked", "scheduled_at", "to_enc", "from_enc",
                 "weird column"]  # fmt: skip

column_values = st.one_of(
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), min_size=2, max_size=2),
    st.lists(st.floats(), min_size=2, max_size=2),
    st.lists(st.one_of(st.none(), st.sampled_from(SPECIAL), st.text(max_size=10)), min_size=2,
             max_size=2),
    st.lists(st.booleans(), min_size=2, max_size=2),
    st.lists(st.none(), min_size=2, max_size=2),
    st.lists(st.one_of(st.none(), st.datetimes()), min_size=2, max_size=2),
    st.lists(st.datetimes(timezones=st.just(UTC)), min_size=2, max_size=2),
    st.lists(st.dates(), min_size=2, max_size=2),
    st.lists(st.lists(st.integers(0, 9), max_size=2), min_size=2, max_size=2),
    st.lists(st.fixed_dictionaries({"code": st.sampled_from(SPECIAL)}), min_size=2, max_size=2),
    st.lists(st.binary(max_size=4), min_size=2, max_size=2),
    st.lists(st.timedeltas(), min_size=2, max_size=2),
    st.just(["z" * 1_100_000, None]),
)  # fmt: skip

arrow_columns = st.sampled_from(
    [
        pa.array(["a", "b"]).dictionary_encode(),
        pa.array(["2026-11-01", None], pa.large_string()),
        pa.array([b"\xff\xfe", b"\xc3\x28"], pa.binary()),  # invalid UTF-8
        pa.array([1.5, float("nan")], pa.float64()),
        pa.array([float("nan"), float("nan")], pa.float32()),
        pa.array([1, None], pa.timestamp("s", tz="+09:00")),
        pa.array([2**62, -(2**62)], pa.timestamp("ns")),
        pa.array([10**17, 0], pa.timestamp("us", tz="Asia/Seoul")),
        pa.array([Decimal("1.5"), None], pa.decimal128(5, 2)),
        pa.array([1, 2], pa.uint64()),
        pa.array([None, None], pa.null()),
        pa.array([[1], None], pa.list_(pa.int8())),
        pa.array([{"code": "x", "message": None}, None]),
        pa.array(["SENT", "DELIVERED"], pa.string_view()),
    ]
)


@st.composite
def frames(draw: st.DrawFn) -> object:
    data: dict[str, Any] = good_frame()
    kind = draw(st.sampled_from(["polars", "lazy", "arrow"]))
    changes = draw(st.lists(st.sampled_from(FRAME_COLUMNS), max_size=2, unique=True))
    arrow_changes: dict[str, pa.Array] = {}
    for name in changes:
        how = draw(st.integers(0, 5))
        if how == 0:
            data.pop(name, None)
        elif how == 1 and kind == "arrow":
            arrow_changes[name] = draw(arrow_columns)
        else:
            data[name] = draw(column_values)
    try:
        frame = pl.DataFrame(data, strict=False)
    except Exception:
        frame = pl.DataFrame({k: pl.Series(k, v, dtype=pl.Object) for k, v in data.items()})
    if draw(st.integers(0, 9)) == 0:
        frame = frame.head(0)
    if kind == "lazy":
        return frame.lazy()
    if kind == "arrow":
        try:
            table = frame.to_arrow()
        except Exception:
            return frame
        for name, full in arrow_changes.items():
            arr = full.slice(0, table.num_rows)
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, arr)
            else:
                table = table.append_column(name, arr)
        return table
    return frame


def _frame(**changes: Any) -> pl.DataFrame:
    return pl.DataFrame({**good_frame(), **changes}, strict=False)


@FUZZ
@given(frame=frames())
@example(frame=_frame(retention_class=[5, 6]))
@example(frame=_frame(to=[1012345678, None]))
@example(frame=_frame(to=[None, None]))
@example(frame=_frame(attempt_count=["1", "2"]))
@example(frame=_frame(attempt_count=[2**40, 1]))
@example(frame=_frame(metadata=["{", "{}"]))
@example(frame=_frame(raw=["z" * 1_100_000, None]))
@example(frame=_frame(last_error=[[1], None]))
@example(frame=_frame(status_updated_at=[None, NOW]))
@example(frame=_frame(retention_class=[None, "opsLogs"]))
def test_load_records(lake: Lake, frame: object) -> None:
    lake.attempt(lambda: lake.svc.load_records(frame))  # type: ignore[arg-type]


@FUZZ
@given(frame=st.one_of(hostile, st.lists(hostile, max_size=2)))
def test_load_records_of_non_frames(lake: Lake, frame: object) -> None:
    lake.attempt(lambda: lake.svc.load_records(frame))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- queries

FILTER_NAMES = [
    "message_id", "messageId", "provider_id", "provider_message_id", "type", "status", "to",
    "to_hash", "from_", "from", "from_hash", "requested_at_from", "requestedAtTo",
    "status_updated_at_from", "status_updated_at_to", "seq", "__class__", "'; --", "",
]  # fmt: skip
filter_values = st.one_of(
    hostile,
    st.sampled_from(["seed-1", "solapi", "SMS", "SENT", "010-2222-0003", "fz-1"]),
    st.lists(st.sampled_from(["seed-2", "SENT", "FAILED", "LMS", "010-2222-0004"]), max_size=3),
)


@FUZZ
@given(
    flt=st.dictionaries(st.sampled_from(FILTER_NAMES), filter_values, max_size=3),
    how=st.sampled_from(["mapping", "kwargs", "hostile"]),
    query=st.sampled_from(["list", "count", "count_by"]),
    limit=st.one_of(st.integers(-5, 10**12), hostile),
    offset=st.one_of(st.integers(-5, 50), hostile),
    order_by=st.one_of(st.sampled_from(["requested_at", "status", "message_id"]), hostile),
    direction=st.one_of(st.sampled_from(["asc", "desc"]), hostile),
    group_by=st.one_of(
        st.lists(st.sampled_from(["provider_id", "status", "requested_at_day", "to"]), max_size=3),
        hostile,
    ),
    as_of=st.one_of(st.none(), st.none(), hostile),
)
@example(
    flt={"requested_at_from": FAR},
    how="mapping",
    query="count",
    limit=10,
    offset=0,
    order_by="requested_at",
    direction="desc",
    group_by=["status"],
    as_of=None,
)
@example(
    flt={"status": "SENT"}, how="kwargs", query="list", limit=10, offset=0,
    order_by="requested_at", direction="desc", group_by=["status"], as_of=FAR,
)  # fmt: skip
def test_queries(
    lake: Lake,
    flt: dict[str, Any],
    how: str,
    query: str,
    limit: Any,
    offset: Any,
    order_by: Any,
    direction: Any,
    group_by: Any,
    as_of: Any,
) -> None:
    svc = lake.svc
    given_filter: Any = flt if how == "mapping" else None
    if how == "hostile":
        given_filter = flt.get("to", flt.get("status", [1]))
    kwargs = flt if how == "kwargs" and all(k.isidentifier() for k in flt) else {}
    files = lake.files()
    if query == "list":
        out = lake.attempt(
            lambda: svc.list_records(
                given_filter, limit, offset, order_by=order_by, order_direction=direction,
                as_of=as_of, **kwargs,
            )
        )  # fmt: skip
        if isinstance(out, pl.DataFrame):
            assert out.height <= max(0, limit)
            assert "to_enc" not in out.columns
    elif query == "count":
        out = lake.attempt(lambda: svc.count_records(given_filter, as_of=as_of, **kwargs))
        if out is not None:
            assert isinstance(out, int)
            assert 0 <= out <= lake.answers()[0] or as_of is not None
    else:
        lake.attempt(lambda: svc.count_by(given_filter, group_by, as_of=as_of, **kwargs))
    lake.store.flush()
    assert lake.files() == files  # a query never writes


@FUZZ
@given(mid=st.one_of(st.sampled_from(["seed-1", "seed-6", "nope"]), hostile))
def test_get_record(lake: Lake, mid: Any) -> None:
    lake.attempt(lambda: lake.svc.get_record(mid))


# --------------------------------------------------------------------------- events


statuses = st.one_of(
    st.sampled_from(["SENT", "DELIVERED", "FAILED", "PENDING", "UNKNOWN", "CANCELLED"]), hostile
)
event_ids = st.one_of(st.sampled_from(["seed-2", "seed-3", "seed-6", "nope"]), hostile)
event_extras = {"status_code": hostile, "statusMessage": hostile, "at": hostile, "code": hostile}
event = st.one_of(
    st.fixed_dictionaries({"message_id": event_ids, "status": statuses}, optional=event_extras),
    hostile,
)


@FUZZ
@given(events=st.one_of(st.lists(event, max_size=4), hostile))
@example(events=None)
@example(events=5)
@example(events=[{"message_id": "seed-2", "status": "DELIVERED", "at": FAR}])
def test_ingest_events(lake: Lake, events: Any) -> None:
    report = lake.attempt(lambda: lake.svc.ingest_events(events))
    if report is not None:
        assert report.applied <= report.received  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- k-msg import

KMSG_COLUMNS = {
    "message_id": "TEXT PRIMARY KEY", "provider_id": "TEXT", "provider_message_id": "TEXT",
    "type": "TEXT", "to": "TEXT", "from": "TEXT", "status": "TEXT",
    "provider_status_code": "TEXT", "provider_status_message": "TEXT", "sent_at": "INTEGER",
    "delivered_at": "INTEGER", "failed_at": "INTEGER", "requested_at": "INTEGER",
    "scheduled_at": "INTEGER", "status_updated_at": "INTEGER", "attempt_count": "INTEGER",
    "last_checked_at": "INTEGER", "next_check_at": "INTEGER", "last_error": "TEXT",
    "metadata": "TEXT", "raw": "TEXT", "retention_class": "TEXT",
}  # fmt: skip
T0 = 1_793_491_200_000

sql_values = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.sampled_from([s for s in SPECIAL if "\ud800" not in s and "\udfff" not in s]),
    st.text(max_size=10).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)),
    st.binary(max_size=8),
    st.sampled_from(['{"customFields":{"a":1}}', '{"code":"E1","message":"m"}', "[1,2]", "{"]),
)


@st.composite
def kmsg_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    rows = []
    for i in range(draw(st.integers(1, 3))):
        row: dict[str, Any] = {
            "message_id": f"k-{draw(st.integers(0, 20))}-{i}", "provider_id": "solapi",
            "provider_message_id": f"G{i}", "type": "SMS", "to": "010-1234-5678",
            "from": "0215881234", "status": "SENT", "requested_at": T0 + i,
            "status_updated_at": T0 + i, "attempt_count": 0, "next_check_at": T0 + 30_000,
        }  # fmt: skip
        for name in draw(st.lists(st.sampled_from(sorted(KMSG_COLUMNS)), max_size=3, unique=True)):
            row[name] = draw(sql_values)
        rows.append(row)
    return rows


@FUZZ
@given(rows=kmsg_rows(), strict=st.booleans())
def test_kmsg_import(lake: Lake, tmp_path: Path, rows: list[dict[str, Any]], strict: bool) -> None:
    db = tmp_path / f"kmsg-{next(_ids)}.sqlite"
    con = sqlite3.connect(db)
    body = ", ".join(f'"{c}" {t}' for c, t in KMSG_COLUMNS.items())
    con.execute(f'CREATE TABLE "kmsg_delivery_tracking" ({body})')
    for row in rows:
        names = ", ".join(f'"{k}"' for k in row)
        marks = ", ".join("?" for _ in row)
        con.execute(
            f'INSERT OR REPLACE INTO "kmsg_delivery_tracking" ({names}) VALUES ({marks})',
            list(row.values()),
        )
    con.commit()
    con.close()
    lake.store.flush()  # the importer publishes through the store: start from a clean log
    lake.attempt(lambda: import_kmsg_table(f"sqlite:///{db}", lake.store, strict=strict))


# --------------------------------------------------------------------------- file metadata

kv_keys = st.one_of(
    st.sampled_from([b"ARROW:schema", b"pandas", b"kmsg", b"", b"\xff\xfe", b"format_version"]),
    st.binary(max_size=12),
)
kv_values = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b"{", b"null", b'{"columns": 5}', b"/////w==", b"\x00" * 64]),
    st.just(b"A" * 1_000_000),
)


@FUZZ
@given(
    metadata=st.dictionaries(kv_keys, kv_values, min_size=1, max_size=3),
    which=st.sampled_from(["current", "history", "open"]),
)
@example(metadata={b"pandas": b"\x80"}, which="current")
@example(metadata={b"\xff": b"x"}, which="history")
def test_hostile_file_metadata(lake: Lake, metadata: dict[bytes, bytes], which: str) -> None:
    lake.store.flush()
    if which == "current":
        path = sorted((lake.root / "current").glob("*/part-0.parquet"))[0]
    elif which == "history":
        path = sorted((lake.root / "history").glob("*/*.parquet"))[-1]
    else:
        path = lake.root / "open" / "part-0.parquet"
    original = path.read_bytes()
    count, records, groups = lake.answers()
    table = pq.read_table(path)
    staged = path.with_name(".fuzz.tmp")
    try:
        pq.write_table(table.replace_schema_metadata(metadata), staged, compression="zstd")
        os.replace(staged, path)
        reader = ParquetTrackingStore(lake.root, hash_key=KEY, keys=KEYS)
        svc = DeliveryTrackingService([Gateway()], store=reader, clock=lambda: NOW)
        try:
            calls: tuple[Callable[[], object], ...] = (
                lambda: svc.count_records(),
                lambda: svc.list_records(limit=100_000, order_by="requested_at").collect(),
                lambda: svc.count_by(group_by=["provider_id", "status", "type"]).collect(),
                lambda: svc.get_record("seed-3"),
            )
            for call in calls:
                try:
                    out = call()
                except KmsgAnalyticsError as err:
                    out = err
                except Exception as err:
                    raise AssertionError(escaped(err)) from err
                if isinstance(out, KmsgAnalyticsError):
                    assert path.name in str(out) or "doctor" in str(out), str(out)
                    continue
                if isinstance(out, int):
                    assert out == count
                elif isinstance(out, pl.DataFrame) and "count" in out.columns:
                    assert out.equals(groups)
                elif isinstance(out, pl.DataFrame):
                    assert out.equals(records)
            report = check_lake(lake.root, hash_key=KEY, keys=KEYS)
            assert report.ok or any(path.name in str(f) for f in report.problems), str(report)
        finally:
            reader.close()
    finally:
        staged.unlink(missing_ok=True)
        path.write_bytes(original)


# --------------------------------------------------------------------------- the end


def test_every_entry_point_leaves_a_healthy_lake(lake: Lake) -> None:
    """A quick pass of each kind of input in one lake, then ``doctor``."""
    lake.attempt(lambda: lake.svc.record_send(*render(_context(40), "snake")))
    lake.attempt(lambda: lake.svc.record_send({"messageId": "\ud800"}, {}))
    lake.attempt(lambda: lake.svc.load_records(pl.DataFrame(good_frame())))
    lake.attempt(lambda: lake.svc.ingest_events([{"messageId": "seed-4", "status": "FAILED"}]))
    lake.attempt(lambda: lake.svc.count_by(group_by=["requested_at_day"]))
    assert lake.refused == 1
    lake.store.compact()
    lake.check_sound()
    lake.healthy()
