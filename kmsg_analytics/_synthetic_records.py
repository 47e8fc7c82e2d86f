"""Synthetic current records: rows ``start:stop`` of a population of ``n`` messages."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import polars as pl

from ._errors import InvalidRecordError
from ._loading import hash_numbers, mask_numbers, normalize_numbers
from ._phone import HashKey, resolve_hash_key
from ._schema import POLARS_SCHEMA, RECORD_COLUMNS
from ._synthetic_random import (
    _PAIRS,
    _U64,
    _base32,
    _bits,
    _choice,
    _gather,
    _grouped_index,
    _normal,
    _unit,
)
from ._synthetic_world import (
    _ALIGO,
    _BACKOFF_S,
    _C_CANCELLED,
    _C_DELIVERED_KAKAO,
    _C_DELIVERED_SMS,
    _C_FAIL_KAKAO,
    _C_FAIL_SMS,
    _C_PENDING,
    _C_PROGRESS,
    _C_UNKNOWN,
    _CHECK_OFFSETS,
    _CODES,
    _DAY,
    _DEFAULT_DELAY,
    _DELIVERY_DELAY,
    _GENERAL_TYPES,
    _GRACE_S,
    _HOUR,
    _HOURLY,
    _INITIAL_DELAY_S,
    _KAKAO_TYPES,
    _KST,
    _MAX_TRACKING_S,
    _MINUTE,
    _N_CAMPAIGNS,
    _N_CLASSES,
    _N_FAILOVER,
    _N_TENANTS,
    _NOT_ATTEMPTED,
    _NOT_KAKAO_USER,
    _O_DELIVERED,
    _O_FAILED,
    _O_MISSING,
    _O_TIMEOUT,
    _O_UNKNOWN_CODE,
    _OUTCOMES_ALIGO,
    _OUTCOMES_KAKAO,
    _OUTCOMES_SMS,
    _PROVIDERS,
    _RETENTION,
    _SECOND,
    _SENDERS,
    _TS,
    _TYPES_BY_PROVIDER,
    _WARNING_INDEX,
    _WEEKEND,
    DEFAULT_END,
    PROVIDER_IDS,
    _metadata_table,
    _micros,
)

# --------------------------------------------------------------------------- recipients


@lru_cache(maxsize=4)
def _recipients(seed: int, population: int, key: HashKey) -> pl.DataFrame:
    """The recipient population: numbers, their keyed hashes and masks (hashed once)."""
    frame = pl.select(_i=pl.int_range(0, population, dtype=_U64)).with_columns(
        to=pl.concat_str(
            pl.lit("010"),
            (_bits(seed, "recipient") % pl.lit(100_000_000, _U64)).cast(pl.String).str.zfill(8),
        )
    )
    return frame.select(
        "to",
        to_hash=hash_numbers(frame.get_column("to"), key),
        to_masked=mask_numbers(pl.col("to")),
    )


@lru_cache(maxsize=4)
def _senders(key: HashKey) -> pl.DataFrame:
    frame = pl.DataFrame({"from_": list(_SENDERS)}).with_columns(
        _norm=normalize_numbers(pl.col("from_"))
    )
    return frame.select(
        "from_",
        from_hash=hash_numbers(frame.get_column("_norm"), key),
        from_masked=mask_numbers(pl.col("_norm")),
    )


# --------------------------------------------------------------------------- generation


def _check(n: int, start: int, stop: int | None, days: int, open_fraction: float) -> int:
    problem: tuple[str, object, str] | None = None
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        problem = ("n", n, "a whole number >= 0")
    elif not isinstance(days, int) or isinstance(days, bool) or days < 1:
        problem = ("days", days, "a whole number of days >= 1")
    elif not 0.0 <= open_fraction <= 0.5:
        problem = ("open_fraction", open_fraction, "a fraction between 0 and 0.5")
    elif not 0 <= start <= (n if stop is None else stop) <= n:
        problem = ("start:stop", (start, stop), f"a slice of range(0, {n})")
    if problem is not None:
        raise InvalidRecordError(*problem)
    return n if stop is None else stop


def _time_grid(end_us: int, days: int) -> tuple[int, list[float]]:
    """Start of the period and the cumulative share of volume at the end of each hour."""
    start_us = end_us - days * _DAY
    start = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=start_us)
    weights = []
    for h in range(days * 24):
        local = start + timedelta(hours=h) + _KST
        weights.append(_HOURLY[local.hour] * (_WEEKEND if local.weekday() >= 5 else 1.0))
    total = sum(weights)
    cum, acc = [], 0.0
    for w in weights:
        acc += w / total
        cum.append(acc)
    cum[-1] = 1.0
    return start_us, cum


def _checks_before(d: pl.Expr) -> pl.Expr:
    """How many checks of the backoff schedule happen at offsets <= ``d`` seconds."""
    expr: Any = pl.when(d < _CHECK_OFFSETS[0]).then(0)
    for k in range(1, 5):
        expr = expr.when(d < _CHECK_OFFSETS[k]).then(k)
    last = _BACKOFF_S[-1]
    result: pl.Expr = expr.otherwise(5 + ((d - _CHECK_OFFSETS[4]) // last)).cast(pl.Int64)
    return result


def _check_offset(k: pl.Expr) -> pl.Expr:
    """Offset in seconds of check ``k`` (1-based) from the tracking anchor."""
    expr: Any = pl.when(k <= 1).then(_CHECK_OFFSETS[0])
    for j in range(2, 6):
        expr = expr.when(k == j).then(_CHECK_OFFSETS[j - 1])
    last = _BACKOFF_S[-1]
    result: pl.Expr = expr.otherwise(_CHECK_OFFSETS[4] + (k - 5) * last).cast(pl.Int64)
    return result


def _generate(
    n: int,
    start: int,
    stop: int,
    *,
    seed: int,
    end: datetime,
    days: int,
    open_fraction: float,
    key: HashKey,
) -> pl.DataFrame:
    """Rows ``start:stop`` of the population, with helper columns (``_*``) for snapshots."""
    end_us = _micros(end)
    period_start, cum = _time_grid(end_us, days)
    streams = (
        "jitter", "provider", "type", "outcome", "code", "open", "pending", "sched", "sched_at",
        "cancel", "accept1", "accept2", "delay1", "delay2", "tail", "tail_len", "poll_jitter",
        "lag", "progress_code", "open_error", "recipient_pick", "tenant", "campaign", "custom",
        "failover", "channel", "retention", "id_a", "id_b", "pmid", "mid_update",
    )  # fmt: skip
    base = (
        pl.LazyFrame({"_i": pl.int_range(start, stop, dtype=_U64, eager=True)})
        .with_columns(
            [_unit(_bits(seed, s)).alias(f"u_{s}") for s in streams if not s.startswith("id_")]
            + [_bits(seed, "id_a").alias("b_id_a"), _bits(seed, "id_b").alias("b_id_b"),
               _bits(seed, "pmid").alias("b_pmid")]
        )
        .collect()
    )  # fmt: skip
    u = pl.col
    grid = pl.Series(cum, dtype=pl.Float64)
    # requested_at: inverse CDF of the hourly volume curve at (i + jitter) / n
    p = (pl.col("_i").cast(pl.Float64) + u("u_jitter")) / max(n, 1)
    base = base.with_columns(
        _pos=p,
        _hour=pl.lit(grid).search_sorted(p, side="right").cast(pl.Int64).clip(0, len(cum) - 1),
    )
    hour = pl.col("_hour")
    lo = pl.when(hour > 0).then(pl.lit(grid).gather((hour - 1).clip(0))).otherwise(0.0)
    hi = pl.lit(grid).gather(hour)
    frac = ((pl.col("_pos") - lo) / (hi - lo)).clip(0.0, 0.999_999)
    requested = pl.lit(period_start) + hour * _HOUR + (frac * _HOUR).cast(pl.Int64)

    types_table = [
        [w for _, w in _TYPES_BY_PROVIDER.get(pid, _GENERAL_TYPES)] for pid in PROVIDER_IDS
    ]
    type_values = [
        t for pid in PROVIDER_IDS for t, _ in _TYPES_BY_PROVIDER.get(pid, _GENERAL_TYPES)
    ]
    df = base.with_columns(
        _req=requested,
        _p=pl.lit(pl.Series(list(range(len(_PROVIDERS))), dtype=pl.Int32)).gather(
            _grouped_index(pl.lit(0), u("u_provider"), [[p[1] for p in _PROVIDERS]])
        ),
    )
    df = df.with_columns(
        provider_id=_gather(PROVIDER_IDS, pl.col("_p")),
        type=_gather(type_values, _grouped_index(pl.col("_p"), u("u_type"), types_table)),
    )
    kakao = pl.col("type").is_in(_KAKAO_TYPES)
    # scheduled sends (3%), 15% of them cancelled before their time
    scheduled = u("u_sched") < 0.03
    df = df.with_columns(
        _kakao=kakao,
        _sched=scheduled,
        scheduled_at=pl.when(scheduled)
        .then(pl.col("_req") + 10 * _MINUTE + (u("u_sched_at") * 6 * _HOUR).cast(pl.Int64))
        .otherwise(None),
        _outcome=pl.when(pl.col("_p") == _ALIGO)
        .then(_choice(u("u_outcome"), list(enumerate(_OUTCOMES_ALIGO)), pl.Int32))
        .when(kakao)
        .then(_choice(u("u_outcome"), list(enumerate(_OUTCOMES_KAKAO)), pl.Int32))
        .otherwise(_choice(u("u_outcome"), list(enumerate(_OUTCOMES_SMS)), pl.Int32)),
    )
    df = df.with_columns(
        _cancel=pl.col("_sched") & (u("u_cancel") < 0.15) & (pl.col("_outcome") != _O_MISSING),
        # tracking anchor: checks happen at anchor + S(k); scheduled ones from scheduled + grace
        _anchor=pl.when(pl.col("_sched"))
        .then(pl.col("scheduled_at") + (_GRACE_S - _INITIAL_DELAY_S) * _SECOND)
        .otherwise(pl.col("_req")),
        _send_base=pl.coalesce("scheduled_at", "_req"),
    )
    med = pl.lit(_DEFAULT_DELAY[0])
    sig = pl.lit(_DEFAULT_DELAY[1])
    for t, (m, s) in _DELIVERY_DELAY.items():
        med = pl.when(pl.col("type") == t).then(m).otherwise(med)
        sig = pl.when(pl.col("type") == t).then(s).otherwise(sig)
    z = _normal(u("u_delay1"), u("u_delay2"))
    fail_like = pl.col("_outcome").is_in([_O_FAILED, _O_UNKNOWN_CODE])
    delay_s = (
        pl.when(fail_like).then(4.0 * (1.3 * z).exp()).otherwise(med * (sig * z).exp())
        + pl.when(u("u_tail") < 0.015).then(-1800.0 * (1.0 - u("u_tail_len")).log()).otherwise(0.0)
    ).clip(0.2, 3 * 86_400.0)
    accept_s = (0.6 * (0.7 * _normal(u("u_accept1"), u("u_accept2"))).exp()).clip(0.05, 120.0)
    df = df.with_columns(
        _sent=pl.col("_send_base") + (accept_s * _SECOND).cast(pl.Int64),
        _delay=(delay_s * _SECOND).cast(pl.Int64),
        _poll_jitter=(u("u_poll_jitter") * 5 * _SECOND).cast(pl.Int64),
    )
    df = df.with_columns(_event=pl.col("_sent") + pl.col("_delay"))
    # when the terminal state is seen: the first check after the event (or the timeout)
    d_event = (pl.col("_event") - pl.col("_anchor")) // _SECOND
    timeout_k = 5 + math.ceil(
        (_MAX_TRACKING_S + _INITIAL_DELAY_S - _CHECK_OFFSETS[4]) / _BACKOFF_S[-1]
    )
    k_final = (
        pl.when(pl.col("_cancel"))
        .then(1)
        .when(pl.col("_outcome") == _O_TIMEOUT)
        .then(timeout_k)
        .when(pl.col("_outcome") == _O_MISSING)
        .then(0)
        .otherwise(_checks_before(d_event) + 1)
    )
    df = df.with_columns(_k=k_final.cast(pl.Int64))
    seen = pl.col("_anchor") + _check_offset(pl.col("_k")) * _SECOND + pl.col("_poll_jitter")
    df = df.with_columns(_seen=pl.when(pl.col("_k") > 0).then(seen).otherwise(pl.col("_req")))
    # open: drawn (half recent, half stuck), or the terminal state not yet seen at `end`
    recent = min(2, days) / days
    if recent >= 1.0:
        p_recent = p_old = open_fraction
    else:
        p_recent = min(1.0, 0.5 * open_fraction / recent)
        p_old = min(1.0, (open_fraction - p_recent * recent) / (1.0 - recent))
    is_recent = pl.col("_req") >= end_us - 2 * _DAY
    drawn = u("u_open") < pl.when(is_recent).then(p_recent).otherwise(p_old)
    missing = (pl.col("_outcome") == _O_MISSING) & ~pl.col("_cancel")
    df = df.with_columns(_open=~missing & (drawn | (pl.col("_seen") > end_us)))
    # the runner's progress at `end` for open messages: checks done, next check (partly due)
    lag = (-20.0 * 60 * (1.0 - u("u_lag")).log() * _SECOND).cast(pl.Int64)
    d_obs = (pl.lit(end_us) - lag - pl.col("_anchor")) // _SECOND
    k_open = pl.when(d_obs < 0).then(0).otherwise(_checks_before(d_obs)).clip(0, 2**31 - 2)
    not_yet_scheduled = pl.col("_sched") & (
        pl.lit(end_us) < pl.col("scheduled_at") + _GRACE_S * _SECOND
    )
    df = df.with_columns(
        _k_open=pl.when(not_yet_scheduled).then(0).otherwise(k_open).cast(pl.Int64),
        _pending=pl.col("_open")
        & (
            not_yet_scheduled
            | (u("u_pending") < 0.2)
            | (pl.col("_sched") & (pl.col("_sent") > end_us))
        ),
    )

    # statuses and gateway codes
    status = (
        pl.when(pl.col("_open"))
        .then(pl.when(pl.col("_pending")).then(pl.lit("PENDING")).otherwise(pl.lit("SENT")))
        .when(pl.col("_cancel"))
        .then(pl.lit("CANCELLED"))
        .otherwise(
            _gather(["DELIVERED", "FAILED", "UNKNOWN", "UNKNOWN", "UNKNOWN"], pl.col("_outcome"))
        )
    )
    code_class = (
        pl.when(pl.col("_open"))
        .then(pl.when(pl.col("_pending")).then(_C_PENDING).otherwise(_C_PROGRESS))
        .when(pl.col("_cancel"))
        .then(_C_CANCELLED)
        .when(pl.col("_outcome") == _O_DELIVERED)
        .then(pl.when(pl.col("_kakao")).then(_C_DELIVERED_KAKAO).otherwise(_C_DELIVERED_SMS))
        .when(pl.col("_outcome") == _O_FAILED)
        .then(pl.when(pl.col("_kakao")).then(_C_FAIL_KAKAO).otherwise(_C_FAIL_SMS))
        .otherwise(_C_UNKNOWN)
    )
    code_table = [[c[2] for c in _CODES[pid][k]] for pid in PROVIDER_IDS for k in range(_N_CLASSES)]
    flat_codes = [c for pid in PROVIDER_IDS for k in range(_N_CLASSES) for c in _CODES[pid][k]]
    df = df.with_columns(status=status, _class=code_class)
    code_index = _grouped_index(
        pl.col("_p") * _N_CLASSES + pl.col("_class"), u("u_code"), code_table
    )
    has_code = (
        pl.when(pl.col("_open"))
        .then((pl.col("_k_open") > 0) & ((u("u_progress_code") < 0.5) | pl.col("_pending")))
        .otherwise(
            pl.col("_outcome").is_in([_O_DELIVERED, _O_FAILED, _O_UNKNOWN_CODE]) | pl.col("_cancel")
        )
    )
    df = df.with_columns(
        provider_status_code=pl.when(has_code).then(
            _gather([c[0] for c in flat_codes], code_index)
        ),
        provider_status_message=pl.when(has_code).then(
            _gather([c[1] for c in flat_codes], code_index)
        ),
    )

    # times
    is_open, k_open_col = pl.col("_open"), pl.col("_k_open")
    terminal = ~is_open
    reported = pl.col("_p") != _ALIGO
    open_checked = pl.col("_anchor") + _check_offset(k_open_col) * _SECOND + pl.col("_poll_jitter")
    last_checked = (
        pl.when(is_open)
        .then(pl.when(k_open_col > 0).then(open_checked))
        .when(pl.col("_k") > 0)
        .then(pl.col("_seen"))
    )
    next_open = (
        pl.when(pl.col("_sched") & (k_open_col == 0))
        .then(pl.col("scheduled_at") + _GRACE_S * _SECOND)
        .otherwise(pl.col("_anchor") + _check_offset(k_open_col + 1) * _SECOND)
    )
    df = df.with_columns(
        sent_at=pl.when(
            reported
            & ~pl.col("_cancel")
            & ~missing
            & (pl.col("_outcome") != _O_TIMEOUT)
            & (terminal | ((k_open_col > 0) & pl.col("provider_status_code").is_not_null()))
            & (pl.col("_sent") <= end_us)
        ).then(pl.col("_sent")),
        delivered_at=pl.when(terminal & (pl.col("status") == "DELIVERED")).then(pl.col("_event")),
        failed_at=pl.when(terminal & (pl.col("status") == "FAILED")).then(pl.col("_event")),
        status_updated_at=pl.when(is_open).then(pl.col("_req")).otherwise(pl.col("_seen")),
        attempt_count=pl.when(is_open).then(k_open_col).otherwise(pl.col("_k")).cast(pl.Int32),
        last_checked_at=last_checked,
        next_check_at=pl.when(is_open).then(next_open).otherwise(pl.col("_seen")),
    )
    # last_error: timeouts, missing ids, an unsupported gateway, transient poll errors
    err_code = (
        pl.when(terminal & (pl.col("_outcome") == _O_TIMEOUT) & ~pl.col("_cancel"))
        .then(pl.lit("TRACKING_TIMEOUT"))
        .when(missing)
        .then(pl.lit("MISSING_PROVIDER_MESSAGE_ID"))
        .when(is_open & (k_open_col > 0) & ~reported)
        .then(pl.lit("UNSUPPORTED_PROVIDER"))
        .when(is_open & (k_open_col > 0) & (u("u_open_error") < 0.03))
        .then(pl.lit("NETWORK_TIMEOUT"))
        .when(is_open & (k_open_col > 0) & (u("u_open_error") < 0.05))
        .then(pl.lit("RATE_LIMIT_EXCEEDED"))
    )
    messages = {
        "TRACKING_TIMEOUT": "max tracking duration exceeded",
        "MISSING_PROVIDER_MESSAGE_ID": "the send result carries no provider message id",
        "UNSUPPORTED_PROVIDER": "Provider has no getDeliveryStatus()",
        "NETWORK_TIMEOUT": "Request timed out after 10000ms",
        "RATE_LIMIT_EXCEEDED": "Too Many Requests",
    }
    df = df.with_columns(_err=err_code)
    df = df.with_columns(
        last_error=pl.when(pl.col("_err").is_not_null()).then(
            pl.struct(
                code=pl.col("_err"), message=pl.col("_err").replace_strict(messages, default=None)
            )
        )
    )

    # ids
    ms = pl.col("_req") // 1000
    ts_part = pl.concat_str(
        [
            pl.lit(_PAIRS).gather(((ms // (1 << (10 * k))) % 1024).cast(pl.UInt32))
            for k in reversed(range(5))
        ]
    )
    df = df.with_columns(
        message_id=pl.concat_str(
            ts_part, _base32(pl.col("b_id_a"), 12), _base32(pl.col("b_id_b"), 4)
        ),
        provider_message_id=pl.when(missing)
        .then(pl.lit(""))
        .otherwise(
            pl.concat_str(
                _gather([p[2] for p in _PROVIDERS], pl.col("_p")),
                pl.when(_gather([p[3] for p in _PROVIDERS], pl.col("_p"), pl.Boolean))
                .then((pl.col("b_pmid") % pl.lit(10**10, _U64)).cast(pl.String).str.zfill(10))
                .otherwise((pl.col("b_pmid") % pl.lit(10**16, _U64)).cast(pl.String).str.zfill(16)),
            )
        ),
    )

    # numbers: a recipient population (some recipients get many messages), a few senders
    population = max(64, min(n // 8, 2_000_000))
    people = _recipients(seed, population, key)
    senders = _senders(key)
    pick = (u("u_recipient_pick") ** 1.6 * population).cast(pl.Int64).clip(0, population - 1)
    tenant = (u("u_tenant") * _N_TENANTS).cast(pl.Int64).clip(0, _N_TENANTS - 1)
    sender = tenant % len(_SENDERS)
    df = df.with_columns(  # to, to_hash, to_masked, from_, from_hash, from_masked
        **{c: pl.lit(people.get_column(c)).gather(pick) for c in people.columns},
        **{c: pl.lit(senders.get_column(c)).gather(sender) for c in senders.columns},
        _tenant=tenant,
    )

    # metadata: custom fields (70%), AlimTalk failover bookkeeping; few distinct texts,
    # so they are drawn from a table, and only fallback rows get their own text
    custom_index = (
        pl.when(u("u_custom") < 0.7)
        .then(1 + (u("u_campaign") * _N_CAMPAIGNS).cast(pl.Int64) * _N_TENANTS + pl.col("_tenant"))
        .otherwise(0)
    )
    alimtalk = pl.col("type") == "ALIMTALK"
    enabled = alimtalk & (u("u_failover") < 0.35)
    warning_index = _gather(_WARNING_INDEX, pl.col("_p"), pl.Int64)
    failover_index = (
        pl.when(enabled)
        .then(2 + pl.when(u("u_channel") < 0.6).then(0).otherwise(1) * 3 + warning_index)
        .when(alimtalk)
        .then(1)
        .otherwise(0)
    )
    not_kakao_user = pl.concat_str("provider_id", pl.lit(":"), "provider_status_code").is_in(
        [f"{p}:{c}" for p, c in _NOT_KAKAO_USER]
    )
    df = df.with_columns(
        _metadata_send=pl.lit(_metadata_table()).gather(
            custom_index * _N_FAILOVER + failover_index
        ),
        _fallback=enabled
        & (warning_index > 0)
        & terminal
        & (pl.col("status") == "FAILED")
        & not_kakao_user,
        raw=pl.lit(None, pl.String),
        retention_class=_choice(u("u_retention"), _RETENTION),
        requested_at=pl.col("_req"),
    )
    fallback_rows = df.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).filter(pl.col("_fallback"))
    ).to_series()
    attempted = (
        df.select(pl.col("_metadata_send"), "_seen", "message_id", "provider_id")
        .filter(df.get_column("_fallback"))
        .select(
            pl.col("_metadata_send").str.replace(
                _NOT_ATTEMPTED,
                pl.concat_str(
                    pl.lit('{"attempted":true,"status":"sent","attempted_at":"'),
                    pl.col("_seen").cast(pl.Int64).cast(_TS).dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    pl.lit('","outcome":"sent","fallback_message_id":"'),
                    pl.col("message_id"),
                    pl.lit(':api-fallback","fallback_provider_id":"'),
                    pl.col("provider_id"),
                    pl.lit('"}'),
                ),
                literal=True,
            )
        )
        .to_series()
    )
    df = df.with_columns(
        metadata=df.get_column("_metadata_send").scatter(fallback_rows, attempted)
        if fallback_rows.len()
        else pl.col("_metadata_send")
    )
    df = df.with_columns(
        retention_bucket_ym=(
            pl.col("requested_at").cast(_TS).dt.year() * 100
            + pl.col("requested_at").cast(_TS).dt.month()
        ).cast(pl.Int32),
        _missing=missing,
        _mid_update=u("u_mid_update"),
    )
    times = (
        "requested_at", "scheduled_at", "sent_at", "delivered_at", "failed_at",
        "status_updated_at", "last_checked_at", "next_check_at", "_anchor", "_sent",
    )  # fmt: skip
    return df.with_columns([pl.col(c).cast(pl.Int64).cast(_TS) for c in times])


def _population(
    n: int,
    start: int,
    stop: int | None,
    *,
    seed: int,
    end: datetime,
    days: int,
    open_fraction: float,
    hash_key: HashKey | bytes | str | None,
) -> pl.DataFrame:
    """The checked arguments' rows ``start:stop`` with helper columns (see ``_generate``)."""
    stop = _check(n, start, stop, days, open_fraction)
    key = resolve_hash_key(hash_key)
    return _generate(
        n, start, stop, seed=seed, end=end, days=days, open_fraction=open_fraction, key=key
    )


def _record_columns(frame: pl.DataFrame, *, with_numbers: bool) -> pl.DataFrame:
    columns = [c for c in RECORD_COLUMNS if with_numbers or c not in ("to", "from_")]
    return frame.select([pl.col(c).cast(POLARS_SCHEMA[c]) for c in columns])


def synthetic_records(
    n: int,
    *,
    seed: int = 0,
    end: datetime = DEFAULT_END,
    days: int = 90,
    open_fraction: float = 0.01,
    hash_key: HashKey | bytes | str | None = None,
    with_numbers: bool = False,
    start: int = 0,
    stop: int | None = None,
) -> pl.DataFrame:
    """Current tracking records of ``n`` synthetic messages, in the record's columns.

    Parameters
    ----------
    n
        Size of the message population.
    seed
        The same seed gives the same rows, whatever the chunking.
    end, days
        ``requested_at`` spans ``days`` days ending at ``end`` (UTC), rising with the row.
    open_fraction
        Share of messages still ``SENT``/``PENDING`` at ``end`` (about; messages whose
        result had not come back by ``end`` are open too).
    hash_key
        Key of ``to_hash``/``from_hash``; use the key of the store you load into
        (``None`` resolves it like the stores do).
    with_numbers
        Also return ``to`` and ``from_`` in clear (normalised).
    start, stop
        Return only rows ``start:stop`` of the ``n`` messages (for chunked loading).

    Returns
    -------
    polars.DataFrame
        One row per message with the columns of
        :data:`kmsg_analytics._schema.RECORD_COLUMNS` (without ``to``/``from_`` unless
        ``with_numbers``), ordered by ``requested_at``; ready for
        :meth:`DeliveryTrackingService.load_records`.

    Examples
    --------
    >>> frame = synthetic_records(5, seed=1, hash_key="doctest-key")
    >>> frame.height, frame.get_column("message_id").str.len_chars().unique().to_list()
    (5, [26])
    >>> frame.equals(synthetic_records(5, seed=1, hash_key="doctest-key"))
    True
    >>> synthetic_records(5, seed=1, hash_key="doctest-key", start=3).equals(frame[3:])
    True
    """
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
    return _record_columns(frame, with_numbers=with_numbers)
