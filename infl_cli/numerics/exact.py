"""Exact arithmetic in float64: a tensor split into integer-valued pieces whose products with
integer data sum exactly (every partial sum below 2⁵³), and the recombination of such exact
partial products with a proven bound (the certified products of :mod:`~infl_cli.data.design`)."""

from __future__ import annotations

import math

import torch

from infl_cli.numerics.bounds import SAFETY, gamma


def piece_bits(max_abs_sum: float) -> int:
    """Bits per integer piece such that max_abs_sum · 2^bits < 2^53."""
    return 52 - math.ceil(math.log2(max(max_abs_sum, 1.0)))


def integer_pieces(a: torch.Tensor, bits: int, n_pieces: int = 3):
    """a = Σ_k q_k·w_k + tail with integer-valued q_k (|q_k| ≤ 2^bits), w_k powers of two and
    |tail| ≤ ``tail`` (returned). Every step is exact: scaling by powers of two, rounding to an
    integer (half to even), and subtracting it (the remainder is representable)."""
    top = float(a.abs().max()) if a.numel() else 0.0
    exponent = math.frexp(top)[1] if top > 0 else 0  # |a| < 2^exponent
    rest = a * 2.0 ** -exponent  # |rest| < 1
    pieces, weights = [], []
    for k in range(n_pieces):
        rest = rest * 2.0 ** bits
        q = torch.round(rest)
        rest = rest - q
        pieces.append(q)
        weights.append(2.0 ** (exponent - (k + 1) * bits))
    return pieces, weights, 0.5 * weights[-1]


def combine_pieces(parts, scale: float, tail_bound):
    """Σ parts / scale with its error bound: γ_{len(parts)} of Σ|parts| for the sum and the
    division, plus the bounded tail (exact-product contributions of the unsplit rest)."""
    total = parts[0].clone()
    size = parts[0].abs()
    for part in parts[1:]:
        total += part
        size += part.abs()
    value = total / scale
    bound = SAFETY * (gamma(len(parts)) * size / scale + tail_bound / scale)
    return value, bound
