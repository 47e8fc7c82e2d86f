"""The fast path of ``record_send`` gives the careful path's answers and errors, exactly.

``send_values`` reads plain ``dict`` inputs inline and leaves every other shape (our
dataclasses, other mappings) to ``coerce_context``/``coerce_result``. Wrapping the same
input in a read-only mapping proxy sends it down the careful path, so each example is
recorded both ways and must give the same record (every field, the sealed numbers too)
and the same lake row, or the same error. Also: the fast time parser against
``coerce_time``, the record constructor against the dataclass's, the WAL's bytes, and
the number hash (a copied keyed HMAC) against the plain HMAC.
"""

from __future__ import annotations

import os
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kmsg_analytics import (
    DeliveryTrackingService,
    InMemoryTrackingStore,
    ParquetTrackingStore,
    TrackingError,
    TrackingRecord,
)
from kmsg_analytics._lakefs import WriteAheadLog, read_wal_lines
from kmsg_analytics._phone import HashKey
from kmsg_analytics._records import (
    RECORD_FIELDS,
    _fast_time,
    coerce_time,
    record_from_values,
    send_values,
)
from kmsg_analytics._schema import record_to_row
from kmsg_analytics._service import _send_row

KEY = "test-key-123"
KEYS = {"fast": bytes(range(32))}
NOW = datetime(2026, 11, 2, 9, 0, 0, 123456, tzinfo=UTC)
CHECK = settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


class Gateway:
    id = "solapi"


def _service() -> DeliveryTrackingService:
    store = InMemoryTrackingStore(hash_key=KEY, keys=KEYS)
    return DeliveryTrackingService([Gateway()], store=store, clock=lambda: NOW)


SERVICE = _service()


def _outcome(context: object, result: object) -> tuple[Any, ...]:
    try:
        record = SERVICE.build_record(context, result)  # type: ignore[arg-type]
    except Exception as err:  # the error itself is what is compared
        return ("error", type(err), str(err))
    values = tuple(getattr(record, name) for name in RECORD_FIELDS)
    row = record_to_row(record, kind="send", recorded_at=1)
    # record_send's own row (for stores that take rows) is record_to_row's
    fields_, metadata_json = SERVICE._send_fields(context, result)  # type: ignore[arg-type]
    assert fields_ == values
    assert _send_row(fields_, metadata_json, 1) == row
    return ("ok", values, row)


def _careful(value: object) -> object:
    """The same input, but no plain ``dict``: it takes the careful path."""
    return MappingProxyType(value) if type(value) is dict else value


# --------------------------------------------------------------------------- inputs

IDS = ["m1", " m2 ", "", "  ", "x" * 256, "x" * 257, "a\x00b", "한글", "\ud800", None, 5, "\x1cm"]
TIMES: list[object] = [
    1793491200000, 946684800000, 946684799999, 7258118400000, 7258118399999, -1, 0,
    1.5e12, 1793491200000.5, float("nan"), True, 10**30, None, "", "bad",
    "2026-11-01T09:00:00+09:00", "2026-11-01T00:00:00Z", "2026-11-01T00:00:00.123z",
    " 2026-11-01T00:00:00Z ", "2026-11-01Z", "1999-12-31T23:59:59.999999Z",
    "2200-01-01T00:00:00Z", "2026-11-01T00:00:00+00:00Z", "2026-02-30T00:00:00Z",
    datetime(2026, 11, 1), datetime(2026, 11, 1, tzinfo=UTC),
]  # fmt: skip
TYPES = ["SMS", "ALIMTALK", "LMS", "sms", "", None, 3, "RCS_SMS"]
NUMBERS = [
    "010-1234-5678", "+82 10 1234 5678", "01012345678", "12", "", "  ", None, 123,
    "0" * 65, "abc", "02) 123.4567", "\ud800", "０１０-１２３４-５６７８",
]  # fmt: skip
PMIDS = ["G1", " G1 ", "", "  ", None, 7, "y" * 257, "한"]
WARNINGS: list[object] = [
    None, [], (), [{"code": "FAILOVER_UNSUPPORTED_PROVIDER"}], [{"code": "W", "message": "m"}],
    "x", [{"code": ""}], [5], {}, 0,
]  # fmt: skip
SCHEDULED = [None, "", 1793491300000, "2026-11-02T00:00:00Z", "bad", 0]
CUSTOM = [None, {}, {"a": 1}, {"k": [1, 2, {"z": "한"}]}, {"f": float("inf")}, "x", {1: 2}]
FAILOVER = [
    None,
    {"enabled": True, "fallbackChannel": "sms", "fallbackContent": "hi"},
    {"enabled": "yes"},
    {"enabled": False, "fallback_channel": "mms"},
    {"enabled": True, "fallback_channel": "lms", "fallback_title": "t", "fallback_content": "c"},
    "x",
]


def _usually(good: object, odd: list[Any]) -> st.SearchStrategy[Any]:
    """``good``, or one of ``odd`` about one time in twelve."""
    return st.integers(0, 11).flatmap(lambda i: st.sampled_from(odd) if i == 0 else st.just(good))


@st.composite
def send_pairs(draw: st.DrawFn) -> tuple[object, object]:
    """A (context, result) pair as dicts in k-msg's or our spelling, often valid."""
    camel = draw(st.booleans())
    mid = draw(_usually(f"m{draw(st.integers(0, 10**6))}", IDS))
    opts: dict[str, Any] = {}
    if draw(st.integers(0, 19)):
        opts["type"] = draw(_usually("SMS", [*TYPES, "ALIMTALK"]))
    if draw(st.integers(0, 19)):
        opts["to"] = draw(_usually("010-1234-5678", NUMBERS))
    if draw(st.booleans()):
        opts["from" if camel else "from_"] = draw(_usually("02-123-4567", NUMBERS))
    for key, camel_key, choices in (
        ("scheduled_at", "scheduledAt", SCHEDULED),
        ("custom_fields", "customFields", CUSTOM),
        ("failover", "failover", FAILOVER),
    ):
        if not draw(st.integers(0, 3)):
            opts[camel_key if camel else key] = draw(st.sampled_from(choices))
    context: dict[str, Any] = {("messageId" if camel else "message_id"): mid}
    if draw(st.integers(0, 19)):
        key = draw(st.sampled_from(["timestamp", "timestamp", "requestedAt"]))
        ms = st.integers(1793491200000, 1793491200000 + 10**10)
        context[key] = draw(_usually(draw(ms), TIMES))
    shape = draw(_usually("options", ["sendOptions", "flat", "flat", "odd"]))
    if shape == "flat":
        context.update(opts)
    elif shape == "odd":
        context["options"] = draw(st.sampled_from([None, "x", 5, MappingProxyType(opts)]))
    else:
        context[shape] = opts
    result: dict[str, Any] = {
        ("messageId" if camel else "message_id"): draw(_usually(mid, IDS)),
        ("providerId" if camel else "provider_id"): draw(_usually("solapi", ["", None, 3])),
        "type": draw(_usually(opts.get("type", "SMS"), TYPES)),
        "to": draw(_usually(opts.get("to", "01012345678"), NUMBERS)),
    }
    if draw(st.integers(0, 19)):
        key = "providerMessageId" if camel else "provider_message_id"
        result[key] = draw(_usually("G1", PMIDS))
    if not draw(st.integers(0, 3)):
        result["warnings"] = draw(st.sampled_from(WARNINGS))
    return context, result


# --------------------------------------------------------------------------- properties


@CHECK
@given(send_pairs())
@example(
    (
        {"messageId": "m1", "timestamp": 1793491200000,
         "options": {"type": "SMS", "to": "01012345678"}},
        {"messageId": "m1", "providerId": "solapi", "providerMessageId": " G1 ", "type": "SMS",
         "to": "01012345678"},
    )
)  # fmt: skip
@example(({"message_id": "m1", "timestamp": None}, {"message_id": "m2"}))
def test_fast_path_answers_as_the_careful_path(pair: tuple[object, object]) -> None:
    context, result = pair
    fast = _outcome(context, result)
    careful = _outcome(_careful(context), _careful(result))
    assert fast == careful


@CHECK
@given(
    st.one_of(
        st.integers(-(10**16), 10**16),
        st.sampled_from(TIMES),
        st.from_regex(
            r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}(:[0-9]{2}(:[0-9]{2}([.,][0-9]{1,7})?)?)?)?Z",
            fullmatch=True,
        ),
        st.text(alphabet="0123456789-:T.WZz+ ", max_size=30),
    )
)
def test_fast_time_agrees_with_coerce_time(value: object) -> None:
    fast = _fast_time(value)
    if fast is None:
        return  # coerce_time decides
    careful = coerce_time(value, "t")
    assert (fast, fast.tzinfo) == (careful, careful.tzinfo)


@CHECK
@given(
    st.lists(
        st.one_of(
            st.none(), st.text(max_size=5), st.integers(), st.datetimes(timezones=st.just(UTC))
        ),
        min_size=len(RECORD_FIELDS),
        max_size=len(RECORD_FIELDS),
    )
)
def test_record_from_values_is_the_dataclass(values: list[Any]) -> None:
    made = record_from_values(values)
    built = TrackingRecord(**dict(zip(RECORD_FIELDS, values, strict=True)))
    assert type(made) is TrackingRecord
    assert made == built
    assert [getattr(made, n) for n in RECORD_FIELDS] == [getattr(built, n) for n in RECORD_FIELDS]


def test_record_from_values_covers_every_field() -> None:
    # record_from_values sets slots directly: it relies on no __post_init__ and on the
    # field order (the service passes the values positionally)
    assert not hasattr(TrackingRecord, "__post_init__")
    assert tuple(f.name for f in fields(TrackingRecord)) == RECORD_FIELDS
    assert len(RECORD_FIELDS) == 29
    assert TrackingRecord.__slots__ == RECORD_FIELDS


def test_send_values_of_our_dataclasses_and_dicts_agree() -> None:
    from kmsg_analytics import FailoverOptions, HookContext, SendOptions, SendResult, SendWarning

    at = datetime(2026, 11, 1, tzinfo=UTC)
    context = HookContext(
        "m1",
        at,
        SendOptions(
            "ALIMTALK",
            "010-1234-5678",
            "02-123-4567",
            at + timedelta(hours=1),
            {"a": 1},
            FailoverOptions(enabled=True, fallback_channel="lms", fallback_title="t"),
        ),
    )
    result = SendResult(
        "m1", "solapi", " G1 ", "ALIMTALK", "010-1234-5678", (SendWarning("W1", "w"),)
    )
    as_dicts = (
        {
            "messageId": "m1",
            "timestamp": "2026-11-01T00:00:00Z",
            "options": {
                "type": "ALIMTALK",
                "to": "010-1234-5678",
                "from": "02-123-4567",
                "scheduledAt": 1793494800000,
                "customFields": {"a": 1},
                "failover": {"enabled": True, "fallbackChannel": "lms", "fallbackTitle": "t"},
            },
        },
        {
            "messageId": "m1",
            "providerId": "solapi",
            "providerMessageId": " G1 ",
            "type": "ALIMTALK",
            "to": "010-1234-5678",
            "warnings": [{"code": "W1", "message": "w"}],
        },
    )
    assert send_values(context, result) == send_values(*as_dicts)
    assert _outcome(context, result) == _outcome(*as_dicts)
    record = SERVICE.build_record(*as_dicts)
    assert record.status == "PENDING"
    assert record.metadata["failover"]["send_warning_codes"] == ["W1"]


def test_missing_provider_message_id_is_unknown_at_once() -> None:
    record = SERVICE.build_record(
        {"messageId": "m1", "timestamp": 1793491200000, "options": {"type": "SMS", "to": "0101"}},
        {"messageId": "m1", "providerId": "solapi", "providerMessageId": "  ", "type": "SMS",
         "to": "0101"},
    )  # fmt: skip
    assert (record.status, record.next_check_at, record.provider_message_id) == ("UNKNOWN", NOW, "")
    assert record.last_error == TrackingError(
        "MISSING_PROVIDER_MESSAGE_ID", "the send result carries no provider message id"
    )


# --------------------------------------------------------------------------- the WAL


def test_wal_append_writes_whole_lines(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.append([b'{"a":1}'])
    wal.append([b'{"b":2}', b'{"c":"\xed\x95\x9c"}'])
    wal.append([b'{"d":4}'])
    path = tmp_path / f"{wal.id}.wal"
    assert path.read_bytes() == b'{"a":1}\n{"b":2}\n{"c":"\xed\x95\x9c"}\n{"d":4}\n'
    assert read_wal_lines(path) == [{"a": 1}, {"b": 2}, {"c": "한"}, {"d": 4}]
    wal.close()


def test_record_send_rows_reach_the_lake_as_built(tmp_path: Path) -> None:
    store = ParquetTrackingStore(tmp_path / "lake", hash_key=KEY, keys=KEYS, flush_seconds=3600)
    svc = DeliveryTrackingService([Gateway()], store=store, clock=lambda: NOW)
    records = [
        svc.record_send(
            {"messageId": f"m{i}", "timestamp": 1793491200000 + i,
             "options": {"type": "ALIMTALK" if i % 2 else "SMS", "to": f"0101234{i:04d}"}},
            {"messageId": f"m{i}", "providerId": "solapi", "providerMessageId": f"G{i}",
             "type": "ALIMTALK" if i % 2 else "SMS", "to": f"0101234{i:04d}"},
        )
        for i in range(20)
    ]  # fmt: skip
    wal_rows = [
        row for path in (tmp_path / "lake" / "_wal").glob("*.wal") for row in read_wal_lines(path)
    ]
    expected = [
        record_to_row(r, kind="send", recorded_at=wal_rows[0]["recorded_at"]) for r in records
    ]
    assert wal_rows == expected
    svc.close()
    assert [svc.get_record(f"m{i}") for i in range(20)] == records


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_wal_line_survives_a_killed_writer(tmp_path: Path) -> None:
    # the guarantee record_send gives: once append returns, the line is in the file,
    # whatever happens to the process next (here: it dies without closing anything)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        wal = WriteAheadLog(tmp_path)
        wal.append([b'{"m":"acknowledged"}'])
        os._exit(0)
    os.waitpid(pid, 0)
    (path,) = tmp_path.glob("*.wal")
    assert read_wal_lines(path) == [{"m": "acknowledged"}]


# --------------------------------------------------------------------------- number hashes


@CHECK
@given(st.text(max_size=30), st.binary(min_size=8, max_size=80))
def test_hash_key_is_the_plain_hmac(number: str, secret: bytes) -> None:
    import hmac

    key = HashKey(secret)
    try:
        expected = hmac.digest(secret, number.encode(), "sha256").hex()
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            key.hash_normalized(number)
        return
    assert key.hash_normalized(number) == expected
    assert key.hash_many([number, "01012345678", number]) == [
        expected,
        key.hash_normalized("01012345678"),
        expected,
    ]


def test_hash_key_pickles_and_copies_by_its_secret() -> None:
    import copy
    import pickle

    key = HashKey("test-key-123")
    for clone in (pickle.loads(pickle.dumps(key)), copy.deepcopy(key), copy.copy(key)):
        assert clone.key_id == key.key_id
        assert clone.hash_number("010-1234-5678") == key.hash_number("+82 10 1234 5678")
