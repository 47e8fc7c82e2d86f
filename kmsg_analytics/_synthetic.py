"""Seeded, realistic synthetic tracking data: the public entry point, loading and the demo lake.

Records are generated in :mod:`._synthetic_records` (from the world of
:mod:`._synthetic_world` and the random streams of :mod:`._synthetic_random`), snapshot
histories and polling rounds in :mod:`._synthetic_snapshots`; this module loads them
into stores and builds the demo lake.

Everything is computed with Polars expressions from the row's index and the seed
(a SplitMix64 stream per attribute, written as expressions), so the same seed gives
the same rows on every machine, in any chunking: rows ``start:stop`` of ``n``
messages are exactly those rows of the whole population.

The world being simulated, all shares approximate:

* providers ``solapi`` 35%, ``nhn`` 26%, ``iwinv`` 22%, ``kakao-biz`` 14% (AlimTalk and
  FriendTalk only) and ``aligo`` 3% (it cannot report status, so its messages end
  ``UNKNOWN`` with ``TRACKING_TIMEOUT`` after the 24 h tracking window);
* types mostly ``ALIMTALK``, ``SMS`` and ``LMS``;
* statuses about 88% ``DELIVERED``, 6% ``FAILED`` with each gateway's own codes and
  Korean texts (SOLAPI ``3104`` "카카오톡 미사용자", IWINV ``E105``, NHN ``3016``, ...),
  a few ``UNKNOWN`` and ``CANCELLED``, and ``open_fraction`` still ``SENT``/``PENDING``
  (half of them from the last two days, half "stuck" older ones), polled on the
  k-msg backoff schedule and partly due at ``end``;
* ``requested_at`` rises with the row index over ``days`` days ending at ``end``, with
  a Korean daytime peak and quieter weekends; delivery delays are long-tailed.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

import polars as pl

from ._errors import LakeError
from ._loading import frame_to_table
from ._phone import HashKey, resolve_hash_key
from ._records import RecordFilter  # noqa: F401  (used by the doctests)
from ._synthetic_records import synthetic_records
from ._synthetic_snapshots import synthetic_poll_updates, synthetic_snapshots
from ._synthetic_world import DEFAULT_END, PROVIDER_IDS

if TYPE_CHECKING:
    from ._lake import ParquetTrackingStore
    from ._store import TrackingStore

__all__ = [
    "DEFAULT_END",
    "PROVIDER_IDS",
    "build_demo_lake",
    "load_snapshots",
    "synthetic_poll_updates",
    "synthetic_records",
    "synthetic_snapshots",
]


def load_snapshots(store: TrackingStore, snapshots: pl.DataFrame) -> int:
    """Write a :func:`synthetic_snapshots` frame into ``store`` in order; returns rows written.

    Each ``(step, snapshot_kind)`` part becomes one batch through
    ``store.append_table`` (validated like :meth:`DeliveryTrackingService.load_records`),
    so sends get lower sequence numbers than the updates that follow them.

    Examples
    --------
    >>> from kmsg_analytics import InMemoryTrackingStore, RecordFilter
    >>> store = InMemoryTrackingStore(hash_key="doctest-key")
    >>> load_snapshots(store, synthetic_snapshots(5, seed=1, hash_key="doctest-key")) >= 5
    True
    >>> store.count_records(RecordFilter())
    5
    """
    written = 0
    for (_step, kind), part in snapshots.group_by(["step", "snapshot_kind"], maintain_order=True):
        table = frame_to_table(
            part.drop("step", "snapshot_kind"),
            store.hash_key,
            keep_numbers=store.keep_numbers,
            cipher=getattr(store, "cipher", None),  # numbers given in clear are sealed too
        )
        store.append_table(table, kind=str(kind))  # type: ignore[arg-type]
        written += table.num_rows
    return written


class _DemoGateway:
    """A provider that can only be named (the demo lake is loaded, never polled)."""

    def __init__(self, provider_id: str) -> None:
        self.id = provider_id


_DEMO_MARKER: Final = "_demo.json"


def build_demo_lake(
    path: str | Path,
    *,
    n: int = 20_000,
    seed: int = 7,
    hash_key: HashKey | bytes | str | None = None,
    end: datetime = DEFAULT_END,
    days: int = 90,
    history: bool = False,
) -> ParquetTrackingStore:
    """Build a compacted demo lake of ``n`` synthetic messages at ``path`` and open it.

    Records are loaded through :meth:`DeliveryTrackingService.load_records` (or, with
    ``history=True``, as send/poll snapshots through :func:`load_snapshots`) and folded
    with ``compact()``. A demo lake built here before is replaced; any other non-empty
    directory is refused.

    Returns
    -------
    ParquetTrackingStore
        The open store; close it when done.

    Examples
    --------
    >>> import tempfile
    >>> lake = build_demo_lake(tempfile.mkdtemp() + "/lake", n=5, hash_key="doctest-key")
    >>> lake.count_records(RecordFilter())
    5
    >>> lake.close()
    """
    from ._lake import ParquetTrackingStore
    from ._service import DeliveryTrackingService

    root = Path(path)
    if root.exists() and any(root.iterdir()):
        if not (root / _DEMO_MARKER).exists():
            msg = (
                f"{root} is not empty and was not built by build_demo_lake: "
                "pass a new directory (the demo never overwrites other data)"
            )
            raise LakeError(msg)
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / _DEMO_MARKER).write_text(
        json.dumps({"n": n, "seed": seed, "end": end.isoformat(), "days": days})
    )
    key = resolve_hash_key(hash_key)
    store = ParquetTrackingStore(root, hash_key=key)
    try:
        if history:
            load_snapshots(
                store, synthetic_snapshots(n, seed=seed, end=end, days=days, hash_key=key)
            )
        else:
            service = DeliveryTrackingService([_DemoGateway(p) for p in PROVIDER_IDS], store=store)
            service.load_records(synthetic_records(n, seed=seed, end=end, days=days, hash_key=key))
        store.compact()
    except BaseException:
        store.close()
        raise
    return store
