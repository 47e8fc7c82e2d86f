"""``record_sends``' columnar reading agrees with the pair-by-pair reading and the single send.

``sends_to_table`` reads a batch of plain dicts with Polars (``_read_columnar``) and
anything else pair by pair (``_read_rows``). Both must give the same raw columns, refuse
the same batches with the same error, and end in the rows ``build_record`` makes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmsg_analytics import DeliveryTrackingService, InMemoryTrackingStore
from kmsg_analytics._batch import _read_columnar, _read_rows, sends_to_table
from kmsg_analytics._errors import InvalidRecordError
from kmsg_analytics._schema import records_to_table
from tests._helpers import Gateway

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
MS = int((NOW - timedelta(days=1)).timestamp() * 1000)

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Values that are sometimes wrong: of the wrong type, empty, too long, out of range.
odd = st.one_of(
    st.none(),
    st.just(""),
    st.just("   "),
    st.just("x" * 300),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.floats(allow_nan=True),
    st.just("2026-11-19T09:00:00+09:00"),
    st.just({"nested": 1}),
    st.just([]),
)


@st.composite
def pair(draw: st.DrawFn, camel: bool, i: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """One (context, result) pair as plain dicts, mostly good, sometimes odd."""
    mid = f"b{draw(st.integers(0, 40))}"
    typ = draw(st.sampled_from(["SMS", "LMS", "ALIMTALK"]))
    to = draw(st.sampled_from(["010-1234-5678", "+82 10 2222 3333", "01099998888"]))
    opts: dict[str, Any] = {"type": typ, "to": to}
    if draw(st.booleans()):
        opts["from" if camel else "from_"] = draw(st.sampled_from(["02-123-4567", ""]))
    if draw(st.integers(0, 4)) == 0:
        opts["scheduledAt" if camel else "scheduled_at"] = MS + draw(st.integers(0, 10**7))
    if draw(st.integers(0, 5)) == 0:
        opts["customFields" if camel else "custom_fields"] = {"campaign": f"c{i}"}
    if draw(st.integers(0, 5)) == 0:
        opts["failover"] = {
            "enabled": True,
            "fallbackChannel" if camel else "fallback_channel": "sms",
        }
    ctx: dict[str, Any] = {
        "messageId" if camel else "message_id": mid,
        "timestamp": MS + draw(st.integers(-(10**9), 10**9)),
        "options": opts,
    }
    pmid = draw(st.sampled_from([f"G-{mid}", "", "  ", None]))
    res: dict[str, Any] = {
        "messageId" if camel else "message_id": mid,
        "providerId" if camel else "provider_id": draw(st.sampled_from(["solapi", "iwinv"])),
        "providerMessageId" if camel else "provider_message_id": pmid,
        "type": draw(st.sampled_from([typ, typ, "SMS"])),
        "to": to,
    }
    if draw(st.integers(0, 5)) == 0:
        res["warnings"] = draw(st.sampled_from([[], [{"code": "W1", "message": "m"}]]))
    if draw(st.integers(0, 9)) == 0:  # one field made odd
        side = draw(st.sampled_from([ctx, res, opts]))
        side[draw(st.sampled_from(sorted(side)))] = draw(odd)
    return ctx, res


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    camel = draw(st.booleans())
    n = draw(st.integers(1, 6))
    return [draw(pair(camel, i)) for i in range(n)]


@pytest.fixture(scope="module")
def svc() -> DeliveryTrackingService:
    store = InMemoryTrackingStore(hash_key="test-key-123")
    return DeliveryTrackingService([Gateway()], store=store, clock=lambda: NOW)


def _outcome(read: Any) -> tuple[str, Any]:
    try:
        return "ok", read()
    except InvalidRecordError as err:
        return "refused", str(err)


@PROPS
@given(pairs=batches())
def test_columnar_reading_agrees_with_pair_by_pair(
    svc: DeliveryTrackingService, pairs: list[tuple[dict[str, Any], dict[str, Any]]]
) -> None:
    rows = _outcome(lambda: _read_rows(pairs, svc.build_record))
    columnar = _outcome(lambda: _read_columnar(pairs, svc.build_record))
    if columnar[0] == "ok" and columnar[1] is None:  # not for columns: read pair by pair
        return
    if columnar[0] != rows[0]:
        # one reading refuses at once what the other leaves to the rules applied after
        # it (a time out of range, say): the batch is refused all the same (the next
        # test checks record_sends's error against the single-send one)
        assert _first_refusal(svc, pairs) is not None, (columnar, rows)
        return
    assert columnar[0] == rows[0], (columnar, rows)
    if rows[0] == "ok":
        assert columnar[1].equals(rows[1])
    else:
        assert columnar[1] == rows[1]


def _first_refusal(
    svc: DeliveryTrackingService, pairs: list[tuple[dict[str, Any], dict[str, Any]]]
) -> tuple[int, InvalidRecordError] | None:
    for i, (c, r) in enumerate(pairs):
        try:
            svc.build_record(c, r)
        except InvalidRecordError as err:
            return i, err
    return None


@PROPS
@given(pairs=batches())
def test_a_batch_makes_the_rows_single_sends_make(
    svc: DeliveryTrackingService, pairs: list[tuple[dict[str, Any], dict[str, Any]]]
) -> None:
    now = int(NOW.timestamp() * 1_000_000)

    def batch() -> pa.Table:
        return sends_to_table(
            pairs,
            key=svc.store.hash_key,
            keep_numbers=False,
            cipher=svc.store.cipher,  # type: ignore[attr-defined]
            now=now,
            initial_delay_us=int(svc._initial_delay.total_seconds() * 1e6),
            grace_us=int(svc._scheduled_grace.total_seconds() * 1e6),
            careful=svc.build_record,
        )

    def single() -> pa.Table:
        records = [svc.build_record(c, r) for c, r in pairs]
        return records_to_table(records, kind="send", recorded_at=now)

    first = _first_refusal(svc, pairs)
    if first is not None:  # the batch names the first bad pair: pairs[i].<field>
        i, refused = first
        with pytest.raises(InvalidRecordError) as caught:
            batch()
        assert caught.value.field == f"pairs[{i}].{refused.field}"
        assert repr(caught.value.value) == repr(refused.value)
        return
    got = batch()
    assert got.equals(single())


def test_plain_kmsg_batches_are_read_as_columns(svc: DeliveryTrackingService) -> None:
    pairs = [
        (
            {
                "messageId": f"m{i}",
                "timestamp": MS + i,
                "options": {"type": "SMS", "to": "01012345678"},
            },
            {
                "messageId": f"m{i}",
                "providerId": "solapi",
                "providerMessageId": f"G{i}",
                "type": "SMS",
                "to": "01012345678",
            },
        )
        for i in range(5)
    ]
    frame = _read_columnar(pairs, svc.build_record)
    assert frame is not None
    assert frame.equals(_read_rows(pairs, svc.build_record))
    mixed = [*pairs[:2], ({**pairs[2][0], "extra": 1}, pairs[2][1])]  # key sets differ
    assert _read_columnar(mixed, svc.build_record) is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("custom_fields", ""),
        ("custom_fields", 0),
        ("custom_fields", False),
        ("custom_fields", []),
        ("customFields", []),
        ("failover", []),
        ("failover", ""),
    ],
)
def test_falsy_extras_are_refused_in_a_batch_as_in_a_single_send(
    svc: DeliveryTrackingService, key: str, value: Any
) -> None:
    """An empty string or list is no mapping: the batch refuses it as build_record does."""

    def pair(i: int, odd: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        options: dict[str, Any] = {"type": "SMS", "to": "01012345678"}
        if odd:
            options[key] = value
        context = {"messageId": f"x{i}", "timestamp": MS + i, "options": options}
        result = {"messageId": f"x{i}", "providerId": "solapi", "providerMessageId": f"G{i}",
                  "type": "SMS", "to": "01012345678"}  # fmt: skip
        return context, result

    with pytest.raises(InvalidRecordError) as single:
        svc.build_record(*pair(0, True))
    before = svc.count_records()
    for pairs, at in (([pair(0, True)], 0), ([pair(i, True) for i in range(4)], 0),
                      ([pair(0, False), pair(1, True)], 1)):  # fmt: skip
        with pytest.raises(InvalidRecordError) as caught:
            svc.record_sends(pairs)
        assert caught.value.field == f"pairs[{at}].{single.value.field}", caught.value
    assert svc.count_records() == before
