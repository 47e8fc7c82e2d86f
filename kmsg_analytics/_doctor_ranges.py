"""Arithmetic on sorted, disjoint ranges of sequence numbers ``(lo, hi)`` (both included)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import numpy as np

#: Items shown in a message before "and N more".
_SHOW: Final = 5


def _ranges_text(ranges: Sequence[tuple[int, int]]) -> str:
    shown = ", ".join(f"{lo}" if lo == hi else f"{lo}–{hi}" for lo, hi in ranges[:_SHOW])
    more = f" and {len(ranges) - _SHOW} more ranges" if len(ranges) > _SHOW else ""
    return shown + more


def _runs(values: np.ndarray[Any, Any]) -> list[tuple[int, int]]:
    """Sorted unique integers as contiguous ``(lo, hi)`` runs."""
    if values.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(values) != 1)
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [values.size - 1]))
    return [(int(values[s]), int(values[e])) for s, e in zip(starts, ends, strict=True)]


def _union(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _subtract(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` minus ``cut`` (both sorted, disjoint)."""
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        pos = lo
        for clo, chi in cut:
            if chi < pos or clo > hi:
                continue
            if clo > pos:
                out.append((pos, clo - 1))
            pos = max(pos, chi + 1)
            if pos > hi:
                break
        if pos <= hi:
            out.append((pos, hi))
    return out


def _complement(covered: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    return _subtract([(lo, hi)] if hi >= lo else [], covered)


def _count(ranges: Iterable[tuple[int, int]]) -> int:
    return sum(hi - lo + 1 for lo, hi in ranges)


def _intersect(
    ranges: list[tuple[int, int]], other: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The parts of ``ranges`` inside ``other`` (both sorted, disjoint)."""
    return _subtract(ranges, _subtract(ranges, other))
