"""The store interface every tracking store implements, and the in-memory store.

A store keeps snapshots: every change to a message is a new row, and the current
state of a message is its latest snapshot, except that a ``send`` snapshot never
replaces a state reached by polling, a load or a patch (a repeated ``record_send``
never moves a message backwards).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import polars as pl
import pyarrow as pa

from . import _queries as q
from ._crypto import NumberCipher, resolve_key_provider
from ._errors import InvalidRecordError
from ._phone import HashKey, mask_number, normalize_number, resolve_hash_key
from ._records import POLLABLE_STATUSES, RecordFilter, TrackingRecord, coerce_time
from ._schema import (
    CURRENT_PARTITION,
    FULL_RECORD_COLUMNS,
    POLARS_SCHEMA,
    LazyRecords,
    SnapshotKind,
    frame_to_records,
    record_to_row,
    row_to_record,
    rows_to_table,
    to_micros,
)

__all__ = ["InMemoryTrackingStore", "NumberStorage", "TrackingStore"]

#: How many distinct numbers a store remembers the protected fields of.
_NUMBER_MEMO_SIZE = 65_536

#: How a store keeps phone numbers: sealed with AES-256-GCM (default), as keyed hashes and
#: masks only, or in clear (only when asked for). Hash and mask are always kept.
NumberStorage = Literal["encrypted", "hashed", "plain"]

_T = TypeVar("_T")


@runtime_checkable
class TrackingStore(Protocol):
    """What :class:`DeliveryTrackingService` needs from a store."""

    hash_key: HashKey
    keep_numbers: bool

    def init(self) -> None: ...
    def upsert(self, record: TrackingRecord, *, recorded_at: int | None = None) -> None: ...
    def append_snapshots(
        self,
        records: Sequence[TrackingRecord],
        *,
        kind: SnapshotKind = "poll",
        recorded_at: int | None = None,
    ) -> None: ...
    def append_table(
        self, table: pa.Table, *, kind: SnapshotKind = "load", recorded_at: int | None = None
    ) -> None: ...
    def history(self) -> pl.LazyFrame: ...
    def current_as_of(self, moment: datetime) -> pl.LazyFrame: ...
    def get(self, message_id: str) -> TrackingRecord | None: ...
    def list_due(self, now: datetime, limit: int) -> list[TrackingRecord]: ...
    def current(self, flt: RecordFilter | None = None) -> pl.LazyFrame: ...
    def list_records(
        self,
        flt: RecordFilter,
        limit: int,
        offset: int = 0,
        order_by: str = "requested_at",
        order_direction: str = "desc",
        *,
        as_of: datetime | None = None,
    ) -> pl.LazyFrame: ...
    def count_records(self, flt: RecordFilter, *, as_of: datetime | None = None) -> int: ...
    def count_by(
        self, flt: RecordFilter, group_by: Sequence[str], *, as_of: datetime | None = None
    ) -> pl.LazyFrame: ...
    def patch(self, message_id: str, changes: Mapping[str, Any]) -> TrackingRecord | None: ...
    def close(self) -> None: ...


class BaseStore:
    """Query methods shared by the stores, written once over :meth:`current`."""

    hash_key: HashKey
    keep_numbers: bool
    _partitioned: bool = False

    def __init__(
        self,
        *,
        hash_key: HashKey | bytes | str | None,
        keep_numbers: bool,
        numbers: NumberStorage | None = None,
        keys: Any = None,
    ) -> None:
        self.hash_key = resolve_hash_key(hash_key)
        if numbers is None:
            numbers = "plain" if keep_numbers else "encrypted"
        if numbers not in ("encrypted", "hashed", "plain"):
            expected = "'encrypted', 'hashed' or 'plain'"
            raise InvalidRecordError("numbers", numbers, expected)
        self.numbers: NumberStorage = numbers
        self.keep_numbers = numbers == "plain"
        self._keys = keys
        self._cipher: NumberCipher | None = None
        self._number_memo: dict[tuple[str, str], dict[str, Any]] = {}

    @property
    def cipher(self) -> NumberCipher | None:
        """What seals numbers at rest (``None`` unless numbers are stored encrypted)."""
        if self.numbers != "encrypted":
            return None
        if self._cipher is None:
            self._cipher = NumberCipher(resolve_key_provider(self._keys))
        return self._cipher

    def reveal_numbers(self, record: TrackingRecord) -> tuple[str | None, str | None]:
        """``(to, from_)`` in clear: the only way numbers leave an encrypted store.

        Raises :class:`KeyUnavailableError` where the key is not available.
        """
        if record.to is not None or record.to_enc is None:
            return record.to, record.from_
        cipher = self.cipher or NumberCipher(resolve_key_provider(self._keys))
        to = cipher.open(record.to_enc, "to")
        frm = None if record.from_enc is None else cipher.open(record.from_enc, "from_")
        return to, frm

    # the one thing a store must provide for reading
    def current(self, flt: RecordFilter | None = None) -> pl.LazyFrame:  # pragma: no cover
        raise NotImplementedError

    def _predicate(self, flt: RecordFilter) -> pl.Expr:
        return q.filter_expr(flt, self._hash_number, partitioned=self._partitioned)

    def _hash_number(self, number: str, field: str) -> str:
        return self.hash_key.hash_number(number, field=field)

    def _base(self, flt: RecordFilter, as_of: datetime | None) -> pl.LazyFrame:
        if as_of is None:
            return self.current(flt)
        return self.current_as_of(as_of)

    def list_records(
        self,
        flt: RecordFilter,
        limit: int,
        offset: int = 0,
        order_by: str = "requested_at",
        order_direction: str = "desc",
        *,
        as_of: datetime | None = None,
    ) -> pl.LazyFrame:
        """Current records (or those ``as_of`` a past moment) matching ``flt``, paged."""
        return q.list_records(
            self._base(flt, as_of),
            self._predicate(flt),
            limit=limit,
            offset=offset,
            order_by=order_by,
            order_direction=order_direction,
        )

    def count_records(self, flt: RecordFilter, *, as_of: datetime | None = None) -> int:
        """How many current records (or records ``as_of`` a past moment) match ``flt``."""
        return q.count_records(self._base(flt, as_of), self._predicate(flt))

    def count_by(
        self, flt: RecordFilter, group_by: Sequence[str], *, as_of: datetime | None = None
    ) -> pl.LazyFrame:
        """Counts of current records (or records ``as_of`` a past moment) per group."""
        return q.count_by(self._base(flt, as_of), self._predicate(flt), group_by)

    def get(self, message_id: str) -> TrackingRecord | None:
        """The current record of ``message_id``, or ``None``."""
        rows = self.current(RecordFilter(message_id=message_id)).filter(
            pl.col("message_id") == message_id
        )
        found = rows.select(FULL_RECORD_COLUMNS).collect().to_dicts()
        return row_to_record(found[0]) if found else None

    def list_due(self, now: datetime, limit: int) -> list[TrackingRecord]:
        """Non-terminal records whose next check is due, earliest first (ties by id)."""
        return frame_to_records(self.due_frame(now, limit))

    def due_records(self, now: datetime, limit: int) -> Sequence[TrackingRecord]:
        """:meth:`list_due` for a polling round: each record made when first read.

        A round reads its due list in order while it waits on gateways, so making the
        records then overlaps the waits. A store whose ``list_due`` is its own (a
        subclass overriding it) is answered by that ``list_due``.
        """
        if type(self).list_due not in (BaseStore.list_due, RetriedReads.list_due):
            return self.list_due(now, limit)
        return LazyRecords(self.due_frame(now, limit))

    def due_frame(self, now: datetime, limit: int) -> pl.DataFrame:
        """:meth:`list_due` as a frame of the record columns."""
        limit = q.whole("limit", limit)
        now = coerce_time(now, "now")
        return (
            self._open()
            .filter(pl.col("status").is_in(POLLABLE_STATUSES) & (pl.col("next_check_at") <= now))
            .select(FULL_RECORD_COLUMNS)
            .sort(["next_check_at", "message_id"])
            .head(max(limit, 0))
            .collect()
        )

    def _open(self) -> pl.LazyFrame:
        return self.current()

    def history(self) -> pl.LazyFrame:  # pragma: no cover
        raise NotImplementedError

    def current_as_of(self, moment: datetime) -> pl.LazyFrame:
        """The current records as the store knew them at ``moment`` (by ``recorded_at``)."""
        moment = coerce_time(moment, "as_of")
        snapshots = self.history().filter(pl.col("recorded_at") <= moment)
        return q.latest(snapshots).with_columns(
            pl.col("requested_at").dt.date().alias(CURRENT_PARTITION)
        )

    def patch(self, message_id: str, changes: Mapping[str, Any]) -> TrackingRecord | None:
        """Apply ``changes`` to the current record as a new ``patch`` snapshot."""
        record = self.get(message_id)
        if record is None:
            return None
        updated = replace(record, **dict(changes))
        self.append_snapshots([updated], kind="patch")
        return updated

    def append_snapshots(
        self,
        records: Sequence[TrackingRecord],
        *,
        kind: SnapshotKind = "poll",
        recorded_at: int | None = None,
    ) -> None:  # pragma: no cover
        raise NotImplementedError

    def number_fields(self, to: str | None, from_: str | None) -> dict[str, Any]:
        """``to``/``from_`` as the store keeps them: hash and mask, the number only if kept."""
        out: dict[str, Any] = {
            "to": to if self.keep_numbers else None,
            "from_": from_ if self.keep_numbers else None,
        }
        for name, number in (("to", to), ("from", from_)):
            if number is not None:
                out.update(self._protected(number, name))
        return out

    def _protected(self, number: str, name: str) -> dict[str, Any]:
        """Hash, mask and envelope of one number, memoised (senders and repeat recipients)."""
        memo = self._number_memo
        found = memo.get((number, name))
        if found is not None:
            return found
        field = "from_" if name == "from" else name
        norm = normalize_number(number, field=field)
        fields = {
            f"{name}_hash": self.hash_key.hash_normalized(norm),
            f"{name}_masked": mask_number(norm),
        }
        cipher = self.cipher
        if cipher is not None:
            fields[f"{name}_enc"] = cipher.seal(norm, field)
        if len(memo) >= _NUMBER_MEMO_SIZE:
            memo.clear()
        memo[(number, name)] = fields
        return fields

    def protect(self, record: TrackingRecord) -> TrackingRecord:
        """Fill hashes and masks of the numbers and drop them unless numbers are kept."""
        return replace(record, **self.number_fields(record.to, record.from_))


def wins(new_kind: str, old_kind: str | None) -> bool:
    """Whether a snapshot of ``new_kind`` replaces a current state written as ``old_kind``."""
    return old_kind is None or new_kind != "send" or old_kind == "send"


class RetriedReads(BaseStore):
    """A lake store's eager reads, each run through the store's ``_retrying``.

    A lake's reader can list a file that a concurrent compaction then replaces; the
    store retries such a read on the newer files (see each store's ``_retrying``).
    """

    def _retrying(self, read: Callable[[], _T]) -> _T:
        raise NotImplementedError  # pragma: no cover - every lake store has its own

    def count_records(self, flt: RecordFilter, *, as_of: datetime | None = None) -> int:
        """How many current records (or records ``as_of`` a past moment) match ``flt``."""
        return self._retrying(lambda: BaseStore.count_records(self, flt, as_of=as_of))

    def get(self, message_id: str) -> TrackingRecord | None:
        """The current record of ``message_id``, or ``None``."""
        return self._retrying(lambda: BaseStore.get(self, message_id))

    def list_due(self, now: datetime, limit: int) -> list[TrackingRecord]:
        """Non-terminal records whose next check is due, earliest first (ties by id)."""
        return self._retrying(lambda: BaseStore.list_due(self, now, limit))

    def due_frame(self, now: datetime, limit: int) -> pl.DataFrame:
        """:meth:`list_due` as a frame of the record columns."""
        return self._retrying(lambda: BaseStore.due_frame(self, now, limit))


class InMemoryTrackingStore(BaseStore):
    """A tracking store that lives in this process only (the default of the service).

    Parameters
    ----------
    hash_key
        Key of the number hashes; see :func:`kmsg_analytics.resolve_hash_key`.
    numbers
        How numbers are kept at rest: ``"encrypted"`` (default; AES-256-GCM, the key from
        ``keys``, else ``$KMSG_ANALYTICS_KEY``, else ``~/.config/kmsg-analytics/lake.key``),
        ``"hashed"`` (hash and mask only) or ``"plain"`` (in clear, only when asked for).
        Hash and mask are always kept; queries show masks.
    keys
        A key provider, a ``{kid: key}`` mapping, a callable returning one, or a key file.
    keep_numbers
        Shorthand for ``numbers="plain"``.

    Examples
    --------
    >>> store = InMemoryTrackingStore(hash_key="doctest-key")
    >>> store.count_records(RecordFilter())
    0
    """

    def __init__(
        self,
        *,
        hash_key: HashKey | bytes | str | None = None,
        keep_numbers: bool = False,
        numbers: NumberStorage | None = None,
        keys: Any = None,
    ) -> None:
        super().__init__(hash_key=hash_key, keep_numbers=keep_numbers, numbers=numbers, keys=keys)
        self._lock = threading.RLock()
        self._current: dict[str, dict[str, Any]] = {}
        self._history: list[dict[str, Any]] = []
        self._frame: pl.DataFrame | None = None
        self._seq = 0

    def __repr__(self) -> str:
        return (
            f"InMemoryTrackingStore(records={len(self._current)}, snapshots={len(self._history)})"
        )

    def init(self) -> None:
        """Nothing to prepare; present for the store interface."""

    def close(self) -> None:
        """Nothing to release; present for the store interface."""

    def _apply(self, rows: Iterable[dict[str, Any]]) -> None:
        with self._lock:
            for row in rows:
                self._seq += 1
                row["seq"] = self._seq
                self._history.append(row)
                old = self._current.get(row["message_id"])
                if wins(row["snapshot_kind"], None if old is None else old["snapshot_kind"]):
                    self._current[row["message_id"]] = row
            self._frame = None

    def upsert(self, record: TrackingRecord, *, recorded_at: int | None = None) -> None:
        """Record a send snapshot."""
        self._apply([record_to_row(record, kind="send", recorded_at=recorded_at or _now_micros())])

    def append_snapshots(
        self,
        records: Sequence[TrackingRecord],
        *,
        kind: SnapshotKind = "poll",
        recorded_at: int | None = None,
    ) -> None:
        """Append one snapshot per record, all at once."""
        now = recorded_at or _now_micros()
        self._apply([record_to_row(r, kind=kind, recorded_at=now) for r in records])

    def append_table(
        self, table: pa.Table, *, kind: SnapshotKind = "load", recorded_at: int | None = None
    ) -> None:
        """Append validated lake rows (an Arrow table in lake form)."""
        rows = table.to_pylist()
        now = recorded_at or _now_micros()
        for row in rows:
            row["snapshot_kind"] = kind
            row["recorded_at"] = now
            for name, value in list(row.items()):
                if isinstance(value, datetime):
                    row[name] = to_micros(value)
        self._apply(rows)

    def current(self, flt: RecordFilter | None = None) -> pl.LazyFrame:
        """Current records as a lazy frame (built once per change)."""
        with self._lock:
            if self._frame is None:
                table = rows_to_table(self._current.values())
                self._frame = pl.from_arrow(table, schema=POLARS_SCHEMA)  # type: ignore[assignment]
            assert self._frame is not None
            return self._frame.lazy()

    def history(self) -> pl.LazyFrame:
        """Every snapshot, in write order."""
        with self._lock:
            return pl.from_arrow(rows_to_table(self._history), schema=POLARS_SCHEMA).lazy()  # type: ignore[union-attr]


def _now_micros() -> int:
    import time

    return time.time_ns() // 1000
