"""Synthetic snapshot histories and polling rounds, derived from the synthetic records."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

import polars as pl

from ._errors import InvalidRecordError
from ._phone import HashKey
from ._schema import POLARS_SCHEMA
from ._synthetic_random import _U64, _bits, _unit
from ._synthetic_records import (
    _population,
    _record_columns,
    synthetic_records,  # noqa: F401  (used by the doctests)
)
from ._synthetic_world import _GRACE_S, _INITIAL_DELAY_S, _SECOND, _TS, DEFAULT_END, _micros


def synthetic_snapshots(
    n: int,
    *,
    seed: int = 0,
    end: datetime = DEFAULT_END,
    days: int = 90,
    open_fraction: float = 0.01,
    hash_key: HashKey | bytes | str | None = None,
    snapshots_per_message: float = 2.2,
    with_numbers: bool = False,
    start: int = 0,
    stop: int | None = None,
) -> pl.DataFrame:
    """The snapshot history of ``n`` synthetic messages: a send, then 1-2 updates.

    Each message gets the snapshot ``record_send`` writes (``SENT``, or ``PENDING``
    when scheduled, or ``UNKNOWN`` without a provider message id), in about
    ``snapshots_per_message - 2`` of cases a progress snapshot, and a final snapshot
    equal to its row of :func:`synthetic_records` (messages that were never polled
    keep only their send snapshot). Folding the history therefore gives exactly
    :func:`synthetic_records` with the same arguments.

    Returns
    -------
    polars.DataFrame
        The record's columns plus ``step`` (0 send, 1 progress, 2 final) and
        ``snapshot_kind`` (``send`` or ``poll``), ordered by ``step`` then
        ``requested_at``: the order in which they must be written. Load them with
        :func:`load_snapshots`, or yourself: for each ``(step, snapshot_kind)`` part in
        order, ``frame_to_table`` it and ``store.append_table(table, kind=snapshot_kind)``.

    Examples
    --------
    >>> snaps = synthetic_snapshots(5, seed=1, hash_key="doctest-key")
    >>> snaps.get_column("step").to_list()[:5]
    [0, 0, 0, 0, 0]
    >>> final = snaps.sort("step").unique("message_id", keep="last", maintain_order=True)
    >>> final.drop("step", "snapshot_kind").sort("requested_at").equals(
    ...     synthetic_records(5, seed=1, hash_key="doctest-key"))
    True
    """
    if not 2.0 <= snapshots_per_message <= 3.0:
        problem = ("snapshots_per_message", snapshots_per_message, "a number between 2 and 3")
        raise InvalidRecordError(*problem)
    frame = _population(
        n,
        start,
        stop,
        seed=seed,
        end=end,
        days=days,
        open_fraction=open_fraction,
        hash_key=hash_key,
    )
    final = _record_columns(frame, with_numbers=with_numbers)
    send_status = (
        pl.when(pl.col("_missing")).then(pl.lit("UNKNOWN"))
        .when(pl.col("_sched")).then(pl.lit("PENDING"))
        .otherwise(pl.lit("SENT"))
    )  # fmt: skip
    send_next = (
        pl.when(pl.col("_missing")).then(pl.col("requested_at"))
        .when(pl.col("_sched")).then(pl.col("scheduled_at") + timedelta(seconds=_GRACE_S))
        .otherwise(pl.col("requested_at") + timedelta(seconds=_INITIAL_DELAY_S))
    )  # fmt: skip
    null_ts = pl.lit(None, _TS)
    send = frame.with_columns(
        **_unanswered(
            status=send_status,
            sent_at=null_ts,
            attempt_count=pl.lit(0, pl.Int32),
            last_checked_at=null_ts,
            next_check_at=send_next,
            last_error=pl.when(pl.col("_missing")).then(pl.col("last_error")),
        )
    )
    # a message polled at least once has a final snapshot; some also a progress one
    updated = ~pl.col("_missing") & (pl.col("attempt_count") > 0)
    progress_share = snapshots_per_message - 2.0
    mid_time = pl.col("requested_at") + (pl.col("status_updated_at") - pl.col("requested_at")) / 2
    progress = frame.filter(updated & (pl.col("_mid_update") < progress_share)).with_columns(
        **_unanswered(
            status=pl.when(pl.col("_sched") & (pl.col("_anchor") > mid_time))
            .then(pl.lit("PENDING"))
            .otherwise(pl.lit("SENT")),
            sent_at=pl.when(pl.col("sent_at") <= mid_time).then(pl.col("sent_at")),
            attempt_count=(pl.col("attempt_count") - 1).clip(0),
            last_checked_at=mid_time,
            next_check_at=pl.col("status_updated_at"),
            last_error=pl.lit(None),
        )
    )
    final_rows = final.filter(frame.select(updated).to_series())
    parts = [
        _record_columns(send, with_numbers=with_numbers).with_columns(
            step=pl.lit(0, pl.Int8), snapshot_kind=pl.lit("send")
        ),
        _record_columns(progress, with_numbers=with_numbers).with_columns(
            step=pl.lit(1, pl.Int8), snapshot_kind=pl.lit("poll")
        ),
        final_rows.with_columns(step=pl.lit(2, pl.Int8), snapshot_kind=pl.lit("poll")),
    ]
    return pl.concat(parts, how="vertical")


def _unanswered(**columns: pl.Expr) -> dict[str, pl.Expr]:
    """A snapshot's columns before the gateway answered: no code, no outcome, no update.

    ``columns`` give the rest (status, times of checks, attempts, error).
    """
    null_ts = pl.lit(None, _TS)
    return {
        "provider_status_code": pl.lit(None, pl.String),
        "provider_status_message": pl.lit(None, pl.String),
        "delivered_at": null_ts,
        "failed_at": null_ts,
        "status_updated_at": pl.col("requested_at"),
        "metadata": pl.col("_metadata_send"),
        **columns,
    }


def synthetic_poll_updates(
    records: pl.DataFrame | pl.LazyFrame,
    *,
    now: datetime,
    seed: int = 0,
    delivered_share: float = 0.7,
) -> pl.DataFrame:
    """What one round of polling would write for open ``records``: one snapshot each.

    About ``delivered_share`` of them reach a terminal status (mostly ``DELIVERED``,
    some ``FAILED``); the rest stay open with one more attempt and a later check.

    Examples
    --------
    >>> recs = synthetic_records(500, seed=3, hash_key="doctest-key", open_fraction=0.2)
    >>> open_ = recs.filter(pl.col("status").is_in(["SENT", "PENDING"]))
    >>> polls = synthetic_poll_updates(open_, now=DEFAULT_END, seed=3)
    >>> polls.height == open_.height, polls.columns == open_.columns
    (True, True)
    """
    frame = records.collect() if isinstance(records, pl.LazyFrame) else records
    now_us = _micros(now)
    now_ts = pl.lit(now_us).cast(_TS)
    u_done = _unit(_bits(seed, "poll-outcome"))
    out = (
        frame.with_columns(_i=pl.int_range(pl.len(), dtype=_U64))
        .with_columns(
            _done=u_done < delivered_share,
            _failed=u_done < delivered_share * 0.07,
            _delay=pl.duration(
                microseconds=(_unit(_bits(seed, "poll-delay")) * 50 * _SECOND).cast(pl.Int64)
            ),
        )
        .with_columns(
            status=_on_answer("FAILED", "DELIVERED", "status"),
            sent_at=pl.coalesce("sent_at", pl.col("requested_at")),
            delivered_at=pl.when(pl.col("_done") & ~pl.col("_failed")).then(
                now_ts - pl.col("_delay")
            ),
            failed_at=pl.when(pl.col("_failed")).then(now_ts - pl.col("_delay")),
            status_updated_at=pl.when(pl.col("_done"))
            .then(now_ts)
            .otherwise(pl.col("status_updated_at")),
            attempt_count=pl.col("attempt_count") + 1,
            last_checked_at=now_ts,
            next_check_at=pl.when(pl.col("_done"))
            .then(now_ts)
            .otherwise(now_ts + timedelta(minutes=30)),
            last_error=pl.lit(None, POLARS_SCHEMA["last_error"]),
        )
    )
    out = out.with_columns(
        provider_status_code=_on_answer("3018", "4000", "provider_status_code"),
        provider_status_message=_on_answer(
            "단말기 전원 꺼짐", "수신완료", "provider_status_message"
        ),
    )
    return out.select(frame.columns)


def _on_answer(failed: str, delivered: str, column: str) -> pl.Expr:
    """``failed`` for rows that failed, ``delivered`` for the others done, else ``column``."""
    return (
        pl.when(pl.col("_failed"))
        .then(pl.lit(failed))
        .when(pl.col("_done"))
        .then(pl.lit(delivered))
        .otherwise(pl.col(column))
    )


#: When a send snapshot is written after the request (the gateway's acceptance).
_SEND_RECORDED_US: Final = 300_000


def with_recorded_at(snapshots: pl.DataFrame) -> pl.DataFrame:
    """:func:`synthetic_snapshots` with ``recorded_at``: when a polling service wrote each.

    A send is written as the gateway accepts it (0.3 s after ``requested_at``), a
    progress snapshot at its check (``last_checked_at``, at the earliest the first check
    30 s after the request), a final one at the check that saw it (``last_checked_at``,
    else ``status_updated_at``). So each message's snapshots are recorded at its request
    time plus the delays of the k-msg polling schedule (seconds to minutes for most,
    hours for a long tail), in the order of their ``step`` (ties are written in that
    order). Sorting by ``(recorded_at, step)`` gives the order a live lake would have
    written them in.

    Examples
    --------
    >>> snaps = with_recorded_at(synthetic_snapshots(50, seed=1, hash_key="doctest-key"))
    >>> late = (pl.col("recorded_at") - pl.col("requested_at")).dt.total_seconds()
    >>> snaps.group_by("step").agg(late.min()).sort("step").get_column("recorded_at").to_list()
    [0, 30, 30]
    >>> in_order = pl.col("recorded_at").sort_by("step").is_sorted()
    >>> snaps.group_by("message_id").agg(in_order).get_column("recorded_at").all()
    True
    """
    req, step = pl.col("requested_at"), pl.col("step")
    first_check = req + timedelta(seconds=_INITIAL_DELAY_S)
    checked = pl.coalesce("last_checked_at", "status_updated_at")
    recorded = (
        pl.when(step == 0)
        .then(req + timedelta(microseconds=_SEND_RECORDED_US))
        .otherwise(pl.max_horizontal(checked, first_check))
    )
    return snapshots.with_columns(recorded.cast(_TS).alias("recorded_at"))
