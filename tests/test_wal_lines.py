"""The write-ahead log's JSON lines convert to the very table the rows do.

A flush turns the rows waiting in the log into an Arrow table from their JSON lines
(pyarrow's reader, off the interpreter lock) instead of from the row dicts; both ways
must give the same table for any row the lake accepts.
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsg_analytics._schema import SNAPSHOT_SCHEMA, lines_to_table, rows_to_table

#: any text, including quotes, backslashes, control and non-BMP characters
texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
micros = st.integers(-62_135_596_800_000_000, 253_402_300_799_999_999)  # years 1..9999
int32s = st.integers(-(2**31), 2**31 - 1)


def _value(field: pa.Field) -> st.SearchStrategy[Any]:
    if pa.types.is_timestamp(field.type):
        base: st.SearchStrategy[Any] = micros
    elif pa.types.is_int64(field.type):
        base = st.integers(-(2**63), 2**63 - 1)
    elif pa.types.is_int32(field.type):
        base = int32s
    elif pa.types.is_struct(field.type):
        base = st.fixed_dictionaries({"code": st.none() | texts, "message": st.none() | texts})
    else:
        base = texts
    return st.none() | base if field.nullable else base


rows = st.lists(st.fixed_dictionaries({f.name: _value(f) for f in SNAPSHOT_SCHEMA}), max_size=6)


@settings(max_examples=200, deadline=None)
@given(batch=rows.filter(bool))
def test_lines_give_the_table_the_rows_give(batch: list[dict[str, Any]]) -> None:
    lines = [orjson.dumps(r) for r in batch]
    assert lines_to_table(lines).equals(rows_to_table(batch))


def test_a_line_that_does_not_fit_the_schema_is_refused() -> None:
    with pytest.raises(pa.ArrowInvalid):
        lines_to_table([orjson.dumps({"seq": 1, "no_such_column": "x"})])
