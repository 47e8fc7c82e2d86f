"""Seeded, realistic synthetic tracking data: records, snapshot histories and a demo lake.

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
import math
import shutil
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import polars as pl

from ._errors import InvalidRecordError, LakeError
from ._loading import frame_to_table, hash_numbers, mask_numbers, normalize_numbers
from ._phone import HashKey, resolve_hash_key
from ._records import RecordFilter  # noqa: F401  (used by the doctests)
from ._schema import POLARS_SCHEMA, RECORD_COLUMNS, dump_json, to_micros

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

#: The default end of the generated period (the k-msg fixtures' anchor time).
DEFAULT_END: Final = datetime(2026, 11, 1, tzinfo=UTC)

_U64: Final = pl.UInt64
_MASK64: Final = (1 << 64) - 1
_GAMMA: Final = 0x9E3779B97F4A7C15
_MIX1: Final = 0xBF58476D1CE4E5B9
_MIX2: Final = 0x94D049BB133111EB
_SECOND: Final = 1_000_000
_MINUTE: Final = 60 * _SECOND
_HOUR: Final = 60 * _MINUTE
_DAY: Final = 24 * _HOUR
_TS: Final = pl.Datetime("us", "UTC")
_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS: Final = pl.Series("pairs", [a + b for a in _CROCKFORD for b in _CROCKFORD])

# --------------------------------------------------------------------------- the world

#: (provider id, share of messages, provider message id prefix, numeric ids?)
_PROVIDERS: Final = (
    ("solapi", 0.35, "G4V", False),
    ("nhn", 0.26, "", False),
    ("iwinv", 0.22, "", True),
    ("kakao-biz", 0.14, "KB", False),
    ("aligo", 0.03, "", True),
)
PROVIDER_IDS: Final = tuple(p[0] for p in _PROVIDERS)
_ALIGO: Final = PROVIDER_IDS.index("aligo")

_GENERAL_TYPES: Final = (
    ("ALIMTALK", 0.44), ("SMS", 0.26), ("LMS", 0.17), ("FRIENDTALK", 0.05),
    ("MMS", 0.05), ("RCS_SMS", 0.02), ("RCS_LMS", 0.01),
)  # fmt: skip
_TYPES_BY_PROVIDER: Final = {
    "kakao-biz": (("ALIMTALK", 0.86), ("FRIENDTALK", 0.14)),
    "aligo": (("SMS", 0.58), ("LMS", 0.34), ("MMS", 0.08)),
}
_KAKAO_TYPES: Final = ("ALIMTALK", "FRIENDTALK")

# outcome classes whose gateway code and text are drawn per provider
_C_DELIVERED_KAKAO, _C_DELIVERED_SMS, _C_FAIL_KAKAO, _C_FAIL_SMS = 0, 1, 2, 3
_C_UNKNOWN, _C_CANCELLED, _C_PROGRESS, _C_PENDING = 4, 5, 6, 7
_N_CLASSES: Final = 8

_Code = tuple[str | None, str | None, float]
_NONE: Final[tuple[_Code, ...]] = ((None, None, 1.0),)

#: per provider, per outcome class: (provider_status_code, provider_status_message, weight)
_CODES: Final[dict[str, tuple[tuple[_Code, ...], ...]]] = {
    "solapi": (
        (("4000", "수신완료", 1.0),),
        (("4000", "수신완료", 1.0),),
        (
            ("3104", "카카오톡 미사용자", 0.46),
            ("3107", "카카오톡 미사용자 (알림톡 수신 불가)", 0.14),
            ("3108", "메시지 수신 차단", 0.16),
            ("3105", "템플릿 내용 불일치", 0.10),
            ("3022", "결번", 0.08),
            ("3018", "단말기 전원 꺼짐", 0.06),
        ),
        (
            ("3018", "단말기 전원 꺼짐", 0.34),
            ("3022", "결번", 0.30),
            ("3059", "변작된 발신번호", 0.16),
            ("3108", "메시지 수신 차단", 0.20),
        ),
        (("9999", "알 수 없는 상태 코드", 1.0),),
        (("2300", "예약 발송 취소", 1.0),),
        (("3000", "이통사 전달 중", 1.0),),
        (("2000", "발송 대기", 1.0),),
    ),
    "nhn": (
        (("1000", "성공", 1.0),),
        (("1000", "성공", 1.0),),
        (
            ("3016", "카카오톡 미사용자", 0.48),
            ("3021", "카카오톡 최근 이용 이력 없음", 0.20),
            ("3019", "단말기 수신 불가", 0.16),
            ("3018", "메시지를 전송할 수 없음", 0.16),
        ),
        (
            ("3014", "수신번호 오류", 0.48),
            ("3019", "단말기 수신 불가", 0.32),
            ("3018", "메시지를 전송할 수 없음", 0.20),
        ),
        (("UNKNOWN", "결과 미수신", 1.0),),
        (("CANCEL", "발송 취소", 1.0),),
        (("SENDING", "발송 중", 1.0),),
        (("READY", "발송 준비", 1.0),),
    ),
    "iwinv": (
        (("OK", "성공", 1.0),),
        (("06", "전송 성공", 1.0),),
        (
            ("E105", "카카오톡 미사용 사용자", 0.56),
            ("E109", "알림톡 수신 차단", 0.22),
            ("E110", "템플릿 불일치", 0.22),
        ),
        (
            ("07", "전송 실패(결번)", 0.40),
            ("08", "단말기 전원 꺼짐", 0.30),
            ("16", "스팸 차단", 0.30),
        ),
        (("99", "상태 확인 불가", 1.0),),
        (("CA", "예약 취소", 1.0),),
        (("01", "처리중", 1.0),),
        (("00", "대기", 1.0),),
    ),
    "kakao-biz": (
        (("0000", "성공", 1.0),),
        (("0000", "성공", 1.0),),
        (
            ("3019", "톡 유저가 아님 (카카오톡 미사용자)", 0.52),
            ("3020", "알림톡 수신 차단", 0.22),
            ("3018", "메시지를 전송할 수 없음", 0.16),
            ("3016", "메시지 내용이 템플릿과 일치하지 않음", 0.10),
        ),
        (("3018", "메시지를 전송할 수 없음", 1.0),),
        (("9998", "결과 미수신", 1.0),),
        (("9001", "발송 취소", 1.0),),
        _NONE,
        _NONE,
    ),
    "aligo": (_NONE,) * _N_CLASSES,
}

# terminal outcomes (tracked providers): delivered, failed, unknown code, timeout, missing id
_O_DELIVERED, _O_FAILED, _O_UNKNOWN_CODE, _O_TIMEOUT, _O_MISSING = 0, 1, 2, 3, 4
_OUTCOMES_KAKAO: Final = (0.906, 0.079, 0.006, 0.006, 0.003)
_OUTCOMES_SMS: Final = (0.946, 0.039, 0.006, 0.006, 0.003)
_OUTCOMES_ALIGO: Final = (0.0, 0.0, 0.0, 0.997, 0.003)

#: median seconds from sent to delivered (lognormal), and its sigma, per type
_DELIVERY_DELAY: Final = {"ALIMTALK": (2.5, 1.0), "FRIENDTALK": (2.5, 1.0), "SMS": (5.0, 1.1)}
_DEFAULT_DELAY: Final = (9.0, 1.2)

#: the polling schedule of PollingConfig's defaults: check k happens at offset S(k)
_INITIAL_DELAY_S: Final = 30
_BACKOFF_S: Final = (30, 120, 600, 1800, 7200)
_GRACE_S: Final = 120
_MAX_TRACKING_S: Final = 86_400

_SENDERS: Final = ("16445555", "15881234", "0215771234", "07077771234", "0312345678", "15449876")
_N_TENANTS: Final = 8
_N_CAMPAIGNS: Final = 40
_RETENTION: Final = (("telecomMetadata", 0.85), ("billingEvidence", 0.10), ("opsLogs", 0.05))
_FAILOVER_WARNING: Final = {
    "iwinv": "FAILOVER_PARTIAL_PROVIDER",
    "nhn": "FAILOVER_UNSUPPORTED_PROVIDER",
    "kakao-biz": "FAILOVER_UNSUPPORTED_PROVIDER",
}
_NOT_KAKAO_USER: Final = {
    ("solapi", "3104"),
    ("solapi", "3107"),
    ("iwinv", "E105"),
    ("nhn", "3016"),
    ("kakao-biz", "3019"),
}
#: local (KST) hour-of-day weights of sending volume
_HOURLY: Final = (
    0.25, 0.15, 0.10, 0.08, 0.08, 0.15, 0.40, 0.90, 1.60, 2.20, 2.40, 2.30,
    2.00, 2.20, 2.30, 2.20, 2.00, 1.80, 1.60, 1.40, 1.20, 1.00, 0.75, 0.45,
)  # fmt: skip
_WEEKEND: Final = 0.55
_KST: Final = timedelta(hours=9)


_NOT_ATTEMPTED: Final = '{"attempted":false,"status":"not_attempted"}'
_WARNINGS: Final = (None, "FAILOVER_PARTIAL_PROVIDER", "FAILOVER_UNSUPPORTED_PROVIDER")
_WARNING_INDEX: Final = tuple(_WARNINGS.index(_FAILOVER_WARNING.get(p)) for p in PROVIDER_IDS)
_CHANNELS: Final = ("lms", "sms")
_N_FAILOVER: Final = 2 + len(_CHANNELS) * len(_WARNINGS)


@lru_cache(maxsize=1)
def _metadata_table() -> pl.Series:
    """Every metadata text: index ``custom * _N_FAILOVER + failover`` (see ``_generate``)."""
    customs: list[dict[str, Any]] = [{}]
    for campaign in range(_N_CAMPAIGNS):
        for tenant in range(_N_TENANTS):
            fields = {
                "campaign_id": f"cmp-2026-{campaign:03d}",
                "tenant_id": f"tenant-{tenant + 1}",
            }
            customs.append({"custom_fields": fields})
    failovers: list[dict[str, Any] | None] = [None, {"request": {}, "send_warning_codes": []}]
    for channel in _CHANNELS:
        for warning in _WARNINGS:
            request = {
                "enabled": True,
                "fallback_channel": channel,
                "fallback_content": "[알림] 대체발송 본문",
            }
            failovers.append(
                {"request": request, "send_warning_codes": [] if warning is None else [warning]}
            )
    texts = []
    for custom in customs:
        for failover in failovers:
            meta = dict(custom)
            if failover is not None:
                meta["failover"] = {**failover, "api_attempt": json.loads(_NOT_ATTEMPTED)}
            texts.append(dump_json(meta))
    return pl.Series("metadata", texts, dtype=pl.String)


# --------------------------------------------------------------------------- random streams


def _splitmix(x: int) -> int:
    z = (x + _GAMMA) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def _mix(x: pl.Expr) -> pl.Expr:
    """SplitMix64's finaliser as a Polars expression (wrapping UInt64 arithmetic)."""
    z = x + pl.lit(_GAMMA, _U64)
    z = z.xor(z // pl.lit(1 << 30, _U64)) * pl.lit(_MIX1, _U64)
    z = z.xor(z // pl.lit(1 << 27, _U64)) * pl.lit(_MIX2, _U64)
    return z.xor(z // pl.lit(1 << 31, _U64))


def _stream_offset(seed: int, name: str) -> int:
    return _splitmix((_splitmix(seed & _MASK64) ^ zlib.crc32(name.encode())) & _MASK64)


def _bits(seed: int, name: str, index: str = "_i") -> pl.Expr:
    """64 random bits per row: a pure function of (seed, stream name, the row's index)."""
    return _mix(pl.col(index) + pl.lit(_stream_offset(seed, name), _U64))


def _unit(bits: pl.Expr) -> pl.Expr:
    """A uniform float in [0, 1) from 64 random bits."""
    return (bits // pl.lit(1 << 11, _U64)).cast(pl.Float64) * (2.0**-53)


def _normal(u1: pl.Expr, u2: pl.Expr) -> pl.Expr:
    """A standard normal variate (Box-Muller) from two uniforms."""
    return (-2.0 * (1.0 - u1).log()).sqrt() * (2.0 * math.pi * u2).cos()


def _choice(u: pl.Expr, options: Sequence[tuple[Any, float]], dtype: Any = pl.String) -> pl.Expr:
    """The option whose cumulative-weight slot holds ``u`` (weighted choice)."""
    total = sum(w for _, w in options)
    cum, acc = [], 0.0
    for _, w in options[:-1]:
        acc += w / total
        cum.append(acc)
    cum.append(2.0)
    index = pl.lit(pl.Series(cum, dtype=pl.Float64)).search_sorted(u, side="right")
    return pl.lit(pl.Series([v for v, _ in options], dtype=dtype)).gather(index)


def _grouped_index(group: pl.Expr, u: pl.Expr, table: Sequence[Sequence[float]]) -> pl.Expr:
    """Index into the flattened ``table`` of the option drawn with ``u`` in row's ``group``.

    Group ``g`` occupies [2g, 2g + 1) of one sorted array of cumulative weights, so a
    single ``search_sorted`` draws from each row's own distribution.
    """
    cum: list[float] = []
    for g, weights in enumerate(table):
        total = sum(weights)
        acc = 0.0
        for w in weights[:-1]:
            acc += w / total
            cum.append(2 * g + acc)
        cum.append(2 * g + 1.5)
    return pl.lit(pl.Series(cum, dtype=pl.Float64)).search_sorted(
        group.cast(pl.Float64) * 2.0 + u, side="right"
    )


def _gather(values: Sequence[Any], index: pl.Expr, dtype: Any = pl.String) -> pl.Expr:
    return pl.lit(pl.Series(values, dtype=dtype)).gather(index)


def _base32(bits: pl.Expr, chars: int) -> pl.Expr:
    """``chars`` (even, <= 12) Crockford base-32 characters from random bits."""
    parts = []
    for k in range(chars // 2):
        index = (bits // pl.lit(1 << (10 * k), _U64)) % pl.lit(1024, _U64)
        parts.append(pl.lit(_PAIRS).gather(index))
    return pl.concat_str(parts)


def _micros(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    result = to_micros(value)
    assert result is not None
    return result


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
    offsets = [_INITIAL_DELAY_S + sum(_BACKOFF_S[:k]) for k in range(5)]  # checks 1..5
    expr: Any = pl.when(d < offsets[0]).then(0)
    for k in range(1, 5):
        expr = expr.when(d < offsets[k]).then(k)
    last = _BACKOFF_S[-1]
    result: pl.Expr = expr.otherwise(5 + ((d - offsets[4]) // last)).cast(pl.Int64)
    return result


def _check_offset(k: pl.Expr) -> pl.Expr:
    """Offset in seconds of check ``k`` (1-based) from the tracking anchor."""
    offsets = [_INITIAL_DELAY_S + sum(_BACKOFF_S[:j]) for j in range(5)]
    expr: Any = pl.when(k <= 1).then(offsets[0])
    for j in range(2, 6):
        expr = expr.when(k == j).then(offsets[j - 1])
    result: pl.Expr = expr.otherwise(offsets[4] + (k - 5) * _BACKOFF_S[-1]).cast(pl.Int64)
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
        (_MAX_TRACKING_S + _INITIAL_DELAY_S - (_INITIAL_DELAY_S + sum(_BACKOFF_S[:4])))
        / _BACKOFF_S[-1]
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
    df = df.with_columns(
        to=pl.lit(people.get_column("to")).gather(pick),
        to_hash=pl.lit(people.get_column("to_hash")).gather(pick),
        to_masked=pl.lit(people.get_column("to_masked")).gather(pick),
        from_=pl.lit(senders.get_column("from_")).gather(sender),
        from_hash=pl.lit(senders.get_column("from_hash")).gather(sender),
        from_masked=pl.lit(senders.get_column("from_masked")).gather(sender),
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
    stop = _check(n, start, stop, days, open_fraction)
    key = resolve_hash_key(hash_key)
    frame = _generate(
        n, start, stop, seed=seed, end=end, days=days, open_fraction=open_fraction, key=key
    )
    return _record_columns(frame, with_numbers=with_numbers)


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
    stop = _check(n, start, stop, days, open_fraction)
    key = resolve_hash_key(hash_key)
    frame = _generate(
        n, start, stop, seed=seed, end=end, days=days, open_fraction=open_fraction, key=key
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
        status=send_status,
        provider_status_code=pl.lit(None, pl.String),
        provider_status_message=pl.lit(None, pl.String),
        sent_at=null_ts,
        delivered_at=null_ts,
        failed_at=null_ts,
        status_updated_at=pl.col("requested_at"),
        attempt_count=pl.lit(0, pl.Int32),
        last_checked_at=null_ts,
        next_check_at=send_next,
        last_error=pl.when(pl.col("_missing")).then(pl.col("last_error")),
        metadata=pl.col("_metadata_send"),
    )
    # a message polled at least once has a final snapshot; some also a progress one
    updated = ~pl.col("_missing") & (pl.col("attempt_count") > 0)
    progress_share = snapshots_per_message - 2.0
    mid_time = pl.col("requested_at") + (pl.col("status_updated_at") - pl.col("requested_at")) / 2
    progress = frame.filter(updated & (pl.col("_mid_update") < progress_share)).with_columns(
        status=pl.when(pl.col("_sched") & (pl.col("_anchor") > mid_time))
        .then(pl.lit("PENDING"))
        .otherwise(pl.lit("SENT")),
        provider_status_code=pl.lit(None, pl.String),
        provider_status_message=pl.lit(None, pl.String),
        sent_at=pl.when(pl.col("sent_at") <= mid_time).then(pl.col("sent_at")),
        delivered_at=null_ts,
        failed_at=null_ts,
        status_updated_at=pl.col("requested_at"),
        attempt_count=(pl.col("attempt_count") - 1).clip(0),
        last_checked_at=mid_time,
        next_check_at=pl.col("status_updated_at"),
        last_error=pl.lit(None),
        metadata=pl.col("_metadata_send"),
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
            status=pl.when(pl.col("_failed"))
            .then(pl.lit("FAILED"))
            .when(pl.col("_done"))
            .then(pl.lit("DELIVERED"))
            .otherwise(pl.col("status")),
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
        provider_status_code=pl.when(pl.col("_failed"))
        .then(pl.lit("3018"))
        .when(pl.col("_done"))
        .then(pl.lit("4000"))
        .otherwise(pl.col("provider_status_code")),
        provider_status_message=pl.when(pl.col("_failed"))
        .then(pl.lit("단말기 전원 꺼짐"))
        .when(pl.col("_done"))
        .then(pl.lit("수신완료"))
        .otherwise(pl.col("provider_status_message")),
    )
    return out.select(frame.columns)


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
