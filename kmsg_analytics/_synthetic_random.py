"""Seeded random streams as Polars expressions: SplitMix64 of (seed, stream name, row index).

The same seed gives the same draws on every machine, in any chunking: a row's draws
depend only on its index, never on the rows around it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any, Final

import polars as pl

_U64: Final = pl.UInt64
_MASK64: Final = (1 << 64) - 1
_GAMMA: Final = 0x9E3779B97F4A7C15
_MIX1: Final = 0xBF58476D1CE4E5B9
_MIX2: Final = 0x94D049BB133111EB
_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS: Final = pl.Series("pairs", [a + b for a in _CROCKFORD for b in _CROCKFORD])


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
