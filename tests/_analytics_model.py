"""Plain-Python reference answers for :class:`kmsg_analytics.DeliveryAnalytics`.

A list of snapshots in write order, the store's precedence rule, and every metric
written again as loops over dicts: no Polars, and nothing from kmsg_analytics except
the failure taxonomy's rule *tables* (data, applied here by a separate classifier), so
a bug in the library's query code cannot hide in the model too.

A *record* is a dict with the tracking record's field names (times aware UTC
datetimes, ``last_error`` ``None`` or ``{"code", "message"}``, ``metadata`` a dict).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tests._model import bucket_start

__all__ = [
    "DELIVERY_STATUSES",
    "PROVIDERS",
    "RATE_DEFINITIONS",
    "TYPES",
    "AnalyticsModel",
    "as_record",
    "micros",
    "percentile",
    "wilson_pct",
]

DELIVERY_STATUSES = ("PENDING", "SENT", "DELIVERED", "FAILED", "CANCELLED", "UNKNOWN")
#: The providers and message types the analytics tests draw records from.
PROVIDERS = ("solapi", "iwinv", "nhn")
TYPES = ("SMS", "LMS", "ALIMTALK")
POLLABLE = ("PENDING", "SENT")
TERMINAL = ("DELIVERED", "FAILED", "CANCELLED", "UNKNOWN")
TRACKING_CODES = (
    "MISSING_PROVIDER_MESSAGE_ID",
    "TRACKING_TIMEOUT",
    "PROVIDER_NOT_FOUND",
    "UNSUPPORTED_PROVIDER",
)
PRECEDENCE = 1 << 62
Z = 1.959963984540054
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Record = dict[str, Any]
Pred = Callable[[Mapping[str, Any]], bool]


def _status(*names: str) -> Pred:
    return lambda r: r.get("status") in names


def _accepted(r: Mapping[str, Any]) -> bool:
    return r.get("provider_message_id") not in (None, "") and r.get("status") != "CANCELLED"


#: name -> (numerator, denominator), restated from the documented definitions.
RATE_DEFINITIONS: dict[str, tuple[Pred, Pred]] = {
    "delivered_of_total": (_status("DELIVERED"), lambda r: True),
    "failed_of_total": (_status("FAILED"), lambda r: True),
    "delivered_of_finalized": (_status("DELIVERED"), _status("DELIVERED", "FAILED")),
    "reached": (_status("DELIVERED"), _accepted),
    "failure_share": (_status("FAILED", "UNKNOWN"), _status("DELIVERED", "FAILED", "UNKNOWN")),
    "unknown_of_total": (_status("UNKNOWN"), lambda r: True),
    "in_flight_of_total": (_status("PENDING", "SENT"), lambda r: True),
}


def micros(moment: datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def as_record(value: Any) -> Record:
    """A record dict from a TrackingRecord-like object (any dataclass) or a mapping."""
    if is_dataclass(value) and not isinstance(value, type):
        out = {f.name: getattr(value, f.name) for f in fields(value)}
    else:
        out = dict(value)
    err = out.get("last_error")
    if err is not None and not isinstance(err, Mapping):
        out["last_error"] = {"code": err.code, "message": err.message}
    out["metadata"] = dict(out.get("metadata") or {})
    return out


def wilson_pct(k: int, n: int) -> tuple[float | None, float | None]:
    if n <= 0:
        return None, None
    p = k / n
    z2 = Z * Z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half) * 100
    hi = 100.0 if k == n else min(1.0, centre + half) * 100
    return lo, hi


def rate_row(k: int, n: int, min_n: int) -> dict[str, Any]:
    lo, hi = wilson_pct(k, n)
    enough = n >= min_n
    return {
        "numerator": k,
        "denominator": n,
        "rate_pct": (k / n) * 100 if enough else None,
        "ci_low_pct": lo,
        "ci_high_pct": hi,
        "enough_data": enough,
    }


def percentile(values: Sequence[int], per_mille: int) -> int | None:
    """Inverted-CDF percentile: the ceil(n*p)-th smallest value."""
    if not values:
        return None
    ordered = sorted(values)
    idx = -(-len(ordered) * per_mille // 1000) - 1
    return ordered[max(idx, 0)]


def parity(k: int, n: int) -> float:
    return (k / n) * 100 if n else 0.0


@dataclass
class Snapshot:
    record: Record
    kind: str
    recorded_at: datetime
    seq: int


def _key(s: Snapshot) -> int:
    return s.seq + (0 if s.kind == "send" else PRECEDENCE)


def _group(records: Iterable[Record], by: Sequence[str]) -> dict[tuple[Any, ...], list[Record]]:
    out: dict[tuple[Any, ...], list[Record]] = defaultdict(list)
    for r in records:
        out[tuple(r.get(b) for b in by)].append(r)
    return dict(out)


class AnalyticsModel:
    """Snapshots in write order and the analytics answers computed from them."""

    def __init__(self, min_n: int = 30) -> None:
        self.snapshots: list[Snapshot] = []
        self.min_n = min_n

    def add(self, kind: str, record: Any, recorded_at: datetime) -> None:
        self.snapshots.append(
            Snapshot(as_record(record), kind, recorded_at, len(self.snapshots) + 1)
        )

    def upto(self, moment: datetime) -> AnalyticsModel:
        """The model replayed only with snapshots recorded at or before ``moment``."""
        out = AnalyticsModel(self.min_n)
        for s in self.snapshots:
            if s.recorded_at <= moment:
                out.add(s.kind, s.record, s.recorded_at)
        return out

    def now(self) -> datetime:
        return max(s.recorded_at for s in self.current_snapshots().values())

    # ------------------------------------------------------------------ state

    def current_snapshots(self) -> dict[str, Snapshot]:
        out: dict[str, Snapshot] = {}
        for s in self.snapshots:
            mid = s.record["message_id"]
            if mid not in out or _key(s) > _key(out[mid]):
                out[mid] = s
        return out

    def window(
        self,
        start: datetime,
        end: datetime,
        *,
        provider_id: str | None = None,
        type: str | None = None,
    ) -> list[Record]:
        out = []
        for s in self.current_snapshots().values():
            r = s.record
            if not start <= r["requested_at"] <= end:
                continue
            if provider_id is not None and r["provider_id"] != provider_id:
                continue
            if type is not None and r["type"] != type:
                continue
            out.append(r)
        return out

    # ------------------------------------------------------------------ summary and rates

    @staticmethod
    def kmsg_summary(records: Sequence[Record]) -> dict[str, Any]:
        counts = Counter(r["status"] for r in records)
        by_status = {s: counts.get(s, 0) for s in DELIVERY_STATUSES}
        total = len(records)
        d, f = by_status["DELIVERED"], by_status["FAILED"]
        return {
            "total": total,
            "byStatus": by_status,
            "rates": {
                "deliveredOfTotalPct": parity(d, total),
                "failedOfTotalPct": parity(f, total),
                "deliveredOfFinalizedPct": parity(d, d + f),
            },
        }

    def summary(
        self, records: Sequence[Record], *, by_provider: bool, by_type: bool
    ) -> dict[str, Any]:
        out = self.kmsg_summary(records)
        if by_provider:
            out["byProviderId"] = {
                k[0]: self.kmsg_summary(v)
                for k, v in sorted(_group(records, ["provider_id"]).items())
            }
        if by_type:
            out["byType"] = {
                k[0]: self.kmsg_summary(v) for k, v in sorted(_group(records, ["type"]).items())
            }
        return out

    def rate(self, records: Sequence[Record], name: str) -> dict[str, Any]:
        num, den = RATE_DEFINITIONS[name]
        n = sum(1 for r in records if den(r))
        k = sum(1 for r in records if den(r) and num(r))
        return rate_row(k, n, self.min_n)

    def series(
        self,
        records: Sequence[Record],
        start: datetime,
        end: datetime,
        unit: str,
        by: Sequence[str],
        name: str,
    ) -> list[dict[str, Any]]:
        step = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7)}
        buckets = []
        b = bucket_start(start, unit)
        last = bucket_start(end, unit)
        while b <= last:
            buckets.append(b)
            b = (
                (b.replace(year=b.year + b.month // 12, month=b.month % 12 + 1))
                if unit == "month"
                else b + step[unit]
            )
        groups = sorted(_group(records, by)) if by else [()]
        rows = []
        for b in buckets:
            for g in groups:
                members = [
                    r
                    for r in records
                    if bucket_start(r["requested_at"], unit) == b
                    and tuple(r.get(x) for x in by) == g
                ]
                counts = Counter(r["status"] for r in members)
                row = {"bucket_start": b, **dict(zip(by, g, strict=True)), "total": len(members)}
                row.update({s.lower(): counts.get(s, 0) for s in DELIVERY_STATUSES})
                row.update(self.rate(members, name))
                rows.append(row)
        return rows

    # ------------------------------------------------------------------ latency

    def latency(
        self, records: Sequence[Record], by: Sequence[str], now: datetime, res: int = 1
    ) -> list[dict[str, Any]]:
        """Latency rows; every duration floored to ``res`` microseconds."""
        rows = []
        segments = {
            "requested_to_sent": ("requested_at", "sent_at"),
            "requested_to_delivered": ("requested_at", "delivered_at"),
            "sent_to_delivered": ("sent_at", "delivered_at"),
        }
        for g, members in sorted(_group(records, by).items()):
            key = dict(zip(by, g, strict=True))
            for seg, (a, b) in segments.items():
                gaps = [
                    max(0, micros(r[b]) - micros(r[a])) // res * res
                    for r in members
                    if r.get(a) is not None and r.get(b) is not None
                ]
                if gaps:
                    rows.append(
                        {**key, "segment": seg, "method": "finished_only", **self._naive(gaps)}
                    )
                if seg == "requested_to_delivered":
                    km = self._km(members, now, res)
                    rows.append({**key, "segment": seg, "method": "kaplan_meier", **km})
        return rows

    @staticmethod
    def _naive(gaps: Sequence[int]) -> dict[str, Any]:
        out: dict[str, Any] = {"n": len(gaps), "events": len(gaps), "censored": 0}
        for p in (500, 900, 950, 990):
            v = percentile(gaps, p)
            out[f"p{p // 10}_s"] = None if v is None else v / 1e6
        for label, sec in (("10s", 10), ("1m", 60), ("5m", 300)):
            out[f"within_{label}_pct"] = (
                sum(1 for g in gaps if g <= sec * 1_000_000) / len(gaps) * 100
            )
        return out

    @staticmethod
    def km_observations(
        members: Sequence[Record], now: datetime, res: int = 1
    ) -> list[tuple[int, bool]]:
        obs = []
        for r in members:
            st = r["status"]
            if st == "DELIVERED":
                end = r.get("delivered_at") or r["status_updated_at"]
            elif st in POLLABLE:
                end = now
            elif st == "FAILED":
                end = r.get("failed_at") or r["status_updated_at"]
            else:
                end = r["status_updated_at"]
            gap = max(0, micros(end) - micros(r["requested_at"])) // res * res
            obs.append((gap, st == "DELIVERED"))
        return obs

    @staticmethod
    def km_curve(obs: Sequence[tuple[int, bool]]) -> list[tuple[int, float]]:
        """(time, survival) at each distinct time, the product-limit estimator."""
        at_risk = len(obs)
        s = 1.0
        curve = []
        for t in sorted({t for t, _e in obs}):
            d = sum(1 for u, e in obs if u == t and e)
            c = sum(1 for u, e in obs if u == t and not e)
            s *= 1 - d / at_risk
            curve.append((t, s))
            at_risk -= d + c
        return curve

    def _km(self, members: Sequence[Record], now: datetime, res: int) -> dict[str, Any]:
        obs = self.km_observations(members, now, res)
        curve = self.km_curve(obs)
        events = sum(1 for _t, e in obs if e)
        out: dict[str, Any] = {"n": len(obs), "events": events, "censored": len(obs) - events}
        for p in (500, 900, 950, 990):
            hit = [t for t, s in curve if s <= 1 - p / 1000 + 1e-9]
            out[f"p{p // 10}_s"] = hit[0] / 1e6 if hit else None
        for label, sec in (("10s", 10), ("1m", 60), ("5m", 300)):
            before = [s for t, s in curve if t <= sec * 1_000_000]
            out[f"within_{label}_pct"] = (1 - before[-1]) * 100 if before else 0.0
        return out

    # ------------------------------------------------------------------ failures

    @staticmethod
    def classify(
        provider: str | None,
        code: str | None,
        message: str | None,
        code_rules: Any,
        keyword_rules: Any,
    ) -> str:
        for rule in code_rules:
            if rule.provider_id is not None and rule.provider_id == provider and rule.code == code:
                return str(rule.category)
        for rule in code_rules:
            if rule.provider_id is None and rule.code == code:
                return str(rule.category)
        text = message or ""
        for rule in keyword_rules:
            if rule.provider_id is not None and rule.provider_id != provider:
                continue
            if all(k in text for k in rule.keywords):
                return str(rule.category)
        return "unknown"

    def failures(
        self,
        records: Sequence[Record],
        by: Sequence[str],
        top: int,
        code_rules: Any,
        keyword_rules: Any,
    ) -> dict[str, list[dict[str, Any]]]:
        keys = list(dict.fromkeys([*by, "provider_id"]))

        def err(r: Record) -> str | None:
            return None if r.get("last_error") is None else r["last_error"]["code"]

        def raw_code(r: Record) -> str | None:
            c = r.get("provider_status_code")
            return c if c is not None else err(r)

        def code(r: Record) -> str:
            c = raw_code(r)
            return "(없음)" if c is None else c

        def category(r: Record) -> str:
            return self.classify(
                r["provider_id"],
                raw_code(r),
                r.get("provider_status_message"),
                code_rules,
                keyword_rules,
            )

        tracked = [r for r in records if err(r) in TRACKING_CODES]
        failed = [
            r
            for r in records
            if r["status"] in ("FAILED", "UNKNOWN") and err(r) not in TRACKING_CODES
        ]
        failed_ids = {r["message_id"] for r in failed}
        tracked_ids = {r["message_id"] for r in tracked}
        totals = {
            g: (len(v), sum(1 for r in v if r["message_id"] in failed_ids))
            for g, v in _group(records, keys).items()
        }
        code_rows = []
        for g, members in _group(failed, keys).items():
            by_code: dict[str, list[Record]] = defaultdict(list)
            for r in members:
                by_code[code(r)].append(r)
            rows = []
            for c, rs in by_code.items():
                messages = Counter(
                    r["provider_status_message"]
                    for r in rs
                    if r.get("provider_status_message") is not None
                )
                cats = Counter(category(r) for r in rs)
                rows.append(
                    {
                        **dict(zip(keys, g, strict=True)),
                        "code": c,
                        "message": _mode(messages),
                        "count": len(rs),
                        "failed": sum(1 for r in rs if r["status"] == "FAILED"),
                        "unknown": sum(1 for r in rs if r["status"] == "UNKNOWN"),
                        "share_of_failures_pct": len(rs) / totals[g][1] * 100,
                        "share_of_messages_pct": len(rs) / totals[g][0] * 100,
                        "category": _mode(cats),
                    }
                )
            rows.sort(key=lambda x: (-x["count"], x["code"]))
            for i, row in enumerate(rows[:top], start=1):
                row["rank"] = i
                code_rows.append(row)
        code_rows.sort(key=lambda x: (tuple(x[k] for k in keys), x["rank"]))
        # categories per `by` group, tracking counted apart
        cat_rows = []
        group_totals = _group(records, by) if by else {(): list(records)}
        for g in sorted(group_totals):
            members = group_totals[g]
            fails = [r for r in members if r["message_id"] in failed_ids]
            counts = Counter(category(r) for r in fails)
            n_tracked = sum(1 for r in members if r["message_id"] in tracked_ids)
            for cat in ("permanent", "temporary", "policy", "not_kakao", "tracking", "unknown"):
                n = n_tracked if cat == "tracking" else counts.get(cat, 0)
                cat_rows.append(
                    {
                        **dict(zip(by, g, strict=True)),
                        "category": cat,
                        "count": n,
                        "delivery_failure": cat != "tracking",
                        "share_of_failures_pct": None
                        if cat == "tracking" or not fails
                        else n / len(fails) * 100,
                    }
                )
        track_rows = []
        for g, members in _group(tracked, keys).items():
            for c, n in Counter(str(err(r)) for r in members).items():
                in_flight = sum(1 for r in members if err(r) == c and r["status"] in POLLABLE)
                track_rows.append(
                    {
                        **dict(zip(keys, g, strict=True)),
                        "code": c,
                        "count": n,
                        "in_flight": in_flight,
                        "share_of_messages_pct": n / totals[g][0] * 100,
                    }
                )
        track_rows.sort(key=lambda x: (tuple(x[k] for k in keys), -x["count"], x["code"]))
        return {"codes": code_rows, "categories": cat_rows, "tracking": track_rows}

    # ------------------------------------------------------------------ failover

    def funnel(
        self, start: datetime, end: datetime, classify: Callable[[Record], str]
    ) -> dict[str, int]:
        current = {s.record["message_id"]: s.record for s in self.current_snapshots().values()}
        stages: Counter[str] = Counter()
        for r in self.window(start, end, type="ALIMTALK"):
            if r["message_id"].endswith(":api-fallback"):
                continue
            fo = r["metadata"].get("failover") or {}
            attempt = fo.get("api_attempt") or fo.get("apiAttempt") or {}
            request = fo.get("request") or {}
            outcome = attempt.get("outcome")
            if outcome is None and attempt.get("status") in ("sent", "failed", "skipped"):
                outcome = attempt.get("status")
            fb_id = (
                attempt.get("fallback_message_id")
                or attempt.get("fallbackMessageId")
                or r["message_id"] + ":api-fallback"
            )
            fb = current.get(fb_id)
            if fb is not None and (
                fb["requested_at"] < start or not fb["message_id"].endswith(":api-fallback")
            ):
                fb = None
            st = r["status"]
            fb_delivered = fb is not None and fb["status"] == "DELIVERED"
            flags = {
                "alimtalk": True,
                "delivered": st == "DELIVERED",
                "failed": st == "FAILED",
                "not_kakao": st == "FAILED" and classify(r) == "not_kakao",
                "requested": st == "FAILED" and request.get("enabled") is True,
                "attempted": attempt.get("attempted") is True,
                "sent": outcome == "sent",
                "skipped": outcome == "skipped",
                "send_failed": outcome == "failed",
                "in_progress": attempt.get("attempted") is True and outcome is None,
                "fallback_tracked": fb is not None,
                "fallback_delivered": fb_delivered,
                "reached_any": st == "DELIVERED" or fb_delivered,
            }
            for k, v in flags.items():
                stages[k] += int(v)
        return {
            k: stages.get(k, 0)
            for k in (
                "alimtalk",
                "delivered",
                "failed",
                "not_kakao",
                "requested",
                "attempted",
                "sent",
                "skipped",
                "send_failed",
                "in_progress",
                "fallback_tracked",
                "fallback_delivered",
                "reached_any",
            )
        }

    # ------------------------------------------------------------------ history

    def cohort(self, start: datetime, end: datetime) -> dict[str, list[Snapshot]]:
        out: dict[str, list[Snapshot]] = defaultdict(list)
        for s in self.snapshots:
            if start <= s.record["requested_at"] <= end:
                out[s.record["message_id"]].append(s)
        return dict(out)

    def maturity(
        self,
        start: datetime,
        end: datetime,
        ages: Sequence[timedelta],
        name: str,
        now: datetime,
        by: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        num, den = RATE_DEFINITIONS[name]
        cells: dict[tuple[Any, ...], list[int]] = {}
        groups: set[tuple[Any, ...]] = set()
        for snaps in self.cohort(start, end).values():
            first = snaps[0].record
            g = tuple(first.get(b) for b in by)
            groups.add(g)
            req = first["requested_at"]
            for i, a in enumerate(ages):
                cell = cells.setdefault((*g, i), [0, 0, 0])
                if now - req < a:
                    continue
                seen = [s for s in snaps if s.recorded_at <= req + a]
                state: Mapping[str, Any] = max(seen, key=_key).record if seen else {}
                cell[0] += 1
                if den(state):
                    cell[2] += 1
                    if num(state):
                        cell[1] += 1
        rows = []
        for g in sorted(groups if by else {()}):
            for i in range(len(ages)):
                msgs, k, n = cells.get((*g, i), [0, 0, 0])
                rows.append(
                    {
                        **dict(zip(by, g, strict=True)),
                        "age_s": ages[i].total_seconds(),
                        "messages": msgs,
                        **rate_row(k, n, self.min_n),
                    }
                )
        return rows

    def durations(
        self, start: datetime, end: datetime, now: datetime
    ) -> tuple[dict[str, dict[str, Any]], Counter[tuple[str, str]]]:
        stays: dict[str, dict[str, Any]] = {}
        transitions: Counter[tuple[str, str]] = Counter()
        for snaps in self.cohort(start, end).values():
            ordered = sorted(snaps, key=lambda s: (s.recorded_at, s.seq))
            path: list[tuple[str, datetime]] = []
            best: Snapshot | None = None
            for s in ordered:
                if best is None or _key(s) >= _key(best):
                    best = s
                    if not path or path[-1][0] != s.record["status"]:
                        path.append((s.record["status"], s.recorded_at))
            for i, (status, at) in enumerate(path):
                row = stays.setdefault(status, {"entered": 0, "left": 0, "still_in": 0, "done": []})
                row["entered"] += 1
                if i + 1 < len(path):
                    row["left"] += 1
                    row["done"].append(max(0, micros(path[i + 1][1]) - micros(at)))
                    transitions[(status, path[i + 1][0])] += 1
                elif status in POLLABLE:
                    row["still_in"] += 1
        for row in stays.values():
            for p in (500, 900, 950):
                v = percentile(row["done"], p)
                row[f"p{p // 10}_s"] = None if v is None else v / 1e6
        return stays, transitions

    # ------------------------------------------------------------------ compare

    @staticmethod
    def compare(
        period: Sequence[Record],
        baseline: Sequence[Record],
        dim: str,
        name: str,
        hour: Callable[[Record], str],
    ) -> dict[str, dict[str, Any]]:
        num, den = RATE_DEFINITIONS[name]

        def value(r: Record) -> str:
            v = hour(r) if dim == "hour" else r.get(dim)
            return "(없음)" if v is None else str(v)

        def tally(records: Sequence[Record]) -> tuple[dict[str, list[int]], int]:
            out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            total = 0
            for r in records:
                if den(r):
                    out[value(r)][1] += 1
                    total += 1
                    if num(r):
                        out[value(r)][0] += 1
                else:
                    out[value(r)]
            return out, total

        t1, d1 = tally(period)
        t0, d0 = tally(baseline)
        rows = {}
        for v in set(t1) | set(t0):
            n1, e1 = t1.get(v, [0, 0])
            n0, e0 = t0.get(v, [0, 0])
            contribution = (n1 / d1 - n0 / d0) * 100 if d1 and d0 else None
            rows[v] = {
                "period_n": e1,
                "baseline_n": e0,
                "period_numerator": n1,
                "baseline_numerator": n0,
                "contribution_pp": contribution,
            }
        return rows


def _mode(counter: Counter[Any]) -> Any:
    if not counter:
        return None
    top = max(counter.values())
    return min(k for k, v in counter.items() if v == top)
