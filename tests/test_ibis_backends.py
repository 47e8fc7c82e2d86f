"""A lake written through an Ibis backend other than DuckDB.

The whole store contract runs against Ibis's Polars backend (``parquet-polars`` in
``conftest.py``); here, a backend that cannot hold the lake's columns is refused by
name before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import ibis
import pytest

from kmsg_analytics import LakeFormatError, ParquetTrackingStore
from tests._model import TEST_KEY


def test_a_backend_that_cannot_hold_the_lake_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(LakeFormatError, match=r"backend='sqlite' cannot write and read back"):
        ParquetTrackingStore(tmp_path / "lake", backend=ibis.sqlite.connect(), hash_key=TEST_KEY)
    assert not (tmp_path / "lake").exists()  # nothing written


def test_the_polars_backend_is_accepted(tmp_path: Path) -> None:
    store = ParquetTrackingStore(
        tmp_path / "lake", backend=ibis.polars.connect(), hash_key=TEST_KEY
    )
    assert store.backend.name == "polars"
    store.close()
