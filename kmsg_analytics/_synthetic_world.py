"""The world the synthetic data simulates: providers, types, gateway codes, shares, schedule."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final

import polars as pl

from ._schema import dump_json, to_micros

#: The default end of the generated period (the k-msg fixtures' anchor time).
DEFAULT_END: Final = datetime(2026, 11, 1, tzinfo=UTC)

_SECOND: Final = 1_000_000
_MINUTE: Final = 60 * _SECOND
_HOUR: Final = 60 * _MINUTE
_DAY: Final = 24 * _HOUR
_TS: Final = pl.Datetime("us", "UTC")

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
#: offsets in seconds of checks 1..5 of that schedule (later checks: every _BACKOFF_S[-1])
_CHECK_OFFSETS: Final = tuple(_INITIAL_DELAY_S + sum(_BACKOFF_S[:k]) for k in range(5))
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


def _micros(value: datetime) -> int:
    """Microseconds since the epoch of ``value`` (naive means UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    result = to_micros(value)
    assert result is not None
    return result
