"""What the analytics share: the fields they group by, argument checks, small helpers."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NoReturn

import polars as pl

from ._errors import InvalidRecordError
from ._records import coerce_time

__all__ = ["COMPARE_DIMENSIONS", "DEFAULT_AGES", "GROUP_FIELDS", "Window"]

#: Fields answers can be broken down by.
GROUP_FIELDS: Final = ("provider_id", "type", "status", "provider_status_code", "retention_class")

#: Slices :meth:`DeliveryAnalytics.compare` can rank (``hour`` is the hour of day requested).
COMPARE_DIMENSIONS: Final = (*GROUP_FIELDS, "hour")

#: Message ages at which :meth:`DeliveryAnalytics.rate_maturity` looks by default.
DEFAULT_AGES: Final = ("1m", "5m", "15m", "1h", "6h", "24h", "72h")

_EVERY_ALIASES: Final = {"hour": "1h", "day": "1d", "week": "1w", "month": "1mo"}
_EVERY_RE: Final = re.compile(r"^([1-9][0-9]*)(m|h|d|w|mo)$")
_DURATION_RE: Final = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(s|m|h|d|w)$")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800, "mo": 2_592_000}
_MAX_BUCKETS: Final = 200_000

#: Rate maturity looks at most this many ages (its age indexes are packed in 8 bits).
MAX_AGES: Final = 254

Window = tuple[Any, Any]


def _invalid(field: str, value: object, expected: str) -> NoReturn:
    """Raise :class:`InvalidRecordError` naming the field, the value and what is valid."""
    raise InvalidRecordError(field, value, expected)


def _window(start: Any, end: Any) -> tuple[datetime, datetime]:
    s = coerce_time(start, "start")
    e = coerce_time(end, "end")
    if s > e:
        _invalid("start", start, f"a time at or before end ({e.isoformat()})")
    return s, e


def _pair(value: Any, name: str) -> tuple[Any, Any]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        _invalid(name, value, "a (start, end) pair")
    return value[0], value[1]


def _as_of(value: Any) -> datetime | None:
    return None if value is None else coerce_time(value, "as_of")


def _fields(by: str | Sequence[str] | None, name: str) -> list[str]:
    if by is None:
        return []
    items = [by] if isinstance(by, str) else list(by)
    out: list[str] = []
    for item in items:
        if item not in GROUP_FIELDS:
            _invalid(name, item, "some of " + ", ".join(GROUP_FIELDS))
        if item not in out:
            out.append(item)
    return out


def _dimensions(dims: Sequence[str]) -> list[str]:
    items = [dims] if isinstance(dims, str) else list(dims)
    if not items:
        _invalid("dimensions", dims, "at least one of " + ", ".join(COMPARE_DIMENSIONS))
    out: list[str] = []
    for item in items:
        if item not in COMPARE_DIMENSIONS:
            _invalid("dimensions", item, "some of " + ", ".join(COMPARE_DIMENSIONS))
        if item not in out:
            out.append(item)
    return out


def _check_tz(tz: str) -> str:
    try:
        pl.select(pl.lit(datetime(2026, 1, 1, tzinfo=UTC)).dt.convert_time_zone(tz))
        ok = isinstance(tz, str)
    except Exception:
        ok = False
    if not ok:
        _invalid("tz", tz, "an IANA time zone such as 'UTC' or 'Asia/Seoul'")
    return tz


def _every(every: str) -> str:
    if not isinstance(every, str):
        _invalid("every", every, "hour, day, week, month or a duration like '15m', '1d'")
    step = _EVERY_ALIASES.get(every, every)
    if not _EVERY_RE.match(step):
        _invalid("every", every, "hour, day, week, month or a duration like '15m', '1d'")
    return step


def _check_bucket_count(start: datetime, end: datetime, step: str) -> None:
    match = _EVERY_RE.match(step)
    assert match is not None
    seconds = int(match[1]) * _UNIT_SECONDS[match[2]]
    if (end - start).total_seconds() / seconds > _MAX_BUCKETS:
        msg = f"fewer than {_MAX_BUCKETS:,} buckets (use a larger bucket or a shorter window)"
        _invalid("every", step, msg)


def _duration_us(value: str | timedelta, name: str) -> int:
    if isinstance(value, timedelta):
        us = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        us = round(float(match[1]) * _UNIT_SECONDS[match[2]] * 1_000_000)
    else:
        _invalid(name, value, "a timedelta or a duration such as '30s', '5m', '1h', '3d'")
    if us < 0:
        _invalid(name, value, "a duration >= 0")
    return us


def _resolution(value: str | timedelta | None) -> int:
    if value is None:
        return 1
    us = _duration_us(value, "resolution")
    if us < 1:
        _invalid("resolution", value, "a duration of at least 1 microsecond")
    return us


def _age_label(value: str | timedelta) -> str:
    if isinstance(value, str):
        return value
    us = _duration_us(value, "ages")
    for unit, seconds in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if us and us % (seconds * 1_000_000) == 0:
            return f"{us // (seconds * 1_000_000)}{unit}"
    return f"{us / 1e6:g}s"


def _ages(ages: Sequence[str | timedelta]) -> tuple[list[str], list[int]]:
    items = [ages] if isinstance(ages, str | timedelta) else list(ages)
    if not items:
        _invalid("ages", ages, "at least one age such as '1h'")
    pairs = sorted({_duration_us(a, "ages"): _age_label(a) for a in items}.items())
    if len(pairs) > MAX_AGES:
        _invalid("ages", ages, f"at most {MAX_AGES} distinct ages")
    return [label for _us, label in pairs], [us for us, _label in pairs]


def _over(expr: pl.Expr, by: Sequence[str]) -> pl.Expr:
    return expr.over(list(by)) if by else expr
