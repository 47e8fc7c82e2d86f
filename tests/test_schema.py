"""Records to lake rows and back: the row-by-row and the column-by-column paths agree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsg_analytics._records import TrackingError, TrackingRecord
from kmsg_analytics._schema import (
    FULL_RECORD_COLUMNS,
    SNAPSHOT_SCHEMA,
    frame_to_records,
    record_to_row,
    records_to_table,
    row_to_record,
    rows_to_table,
)

_T0 = datetime(2026, 1, 1, tzinfo=UTC)
times = st.integers(0, 10**13).map(lambda us: _T0 + timedelta(microseconds=us))
maybe_times = st.none() | times
texts = st.text(max_size=12)  # Korean, surrogates excluded by hypothesis' default alphabet
maybe_texts = st.none() | texts
json_leaves = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | texts
json_values = (
    json_leaves
    | st.lists(json_leaves, max_size=3)
    | st.dictionaries(texts, json_leaves | st.lists(json_leaves, max_size=2), max_size=3)
)

records = st.builds(
    TrackingRecord,
    message_id=texts,
    provider_id=texts,
    provider_message_id=texts,
    type=st.sampled_from(["SMS", "LMS", "MMS", "ALIMTALK"]),
    to_hash=texts,
    to_masked=texts,
    requested_at=times,
    status=st.sampled_from(["PENDING", "SENT", "DELIVERED", "FAILED", "CANCELLED", "UNKNOWN"]),
    status_updated_at=times,
    next_check_at=times,
    to=maybe_texts,
    from_=maybe_texts,
    from_hash=maybe_texts,
    from_masked=maybe_texts,
    scheduled_at=maybe_times,
    provider_status_code=maybe_texts,
    provider_status_message=maybe_texts,
    sent_at=maybe_times,
    delivered_at=maybe_times,
    failed_at=maybe_times,
    attempt_count=st.integers(0, 2**31 - 1),
    last_checked_at=maybe_times,
    last_error=st.none() | st.builds(TrackingError, texts, texts),
    raw=json_values,
    metadata=st.dictionaries(texts, json_values, max_size=3),
    retention_class=texts,
    retention_bucket_ym=st.integers(0, 999_912),
    to_enc=maybe_texts,
    from_enc=maybe_texts,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(records, max_size=6), st.sampled_from(["send", "poll", "load", "patch"]))
def test_columnar_table_equals_the_row_path(batch: list[TrackingRecord], kind: str) -> None:
    rows = [record_to_row(r, kind=kind, recorded_at=1_700_000_000_000_000) for r in batch]  # type: ignore[arg-type]
    expected = rows_to_table(rows)
    got = records_to_table(batch, kind=kind, recorded_at=1_700_000_000_000_000)  # type: ignore[arg-type]
    assert got.schema.equals(SNAPSHOT_SCHEMA)
    assert got.equals(expected)
    back = [row_to_record(row) for row in got.to_pylist()]
    assert back == batch  # every field survives (envelopes are not compared)
    assert [r.to_enc for r in back] == [r.to_enc for r in batch]
    frame = pl.from_arrow(got)
    assert isinstance(frame, pl.DataFrame)
    columnar = frame_to_records(frame.select(FULL_RECORD_COLUMNS))
    assert columnar == [row_to_record(row) for row in frame.to_dicts()] == batch
    assert [r.to_enc for r in columnar] == [r.to_enc for r in batch]
