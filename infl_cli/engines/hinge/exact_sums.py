"""Exact integer sums for the SVM's certificate (:mod:`~infl_cli.engines.hinge.svm`): Σⱼ kᵢⱼ·vⱼ and
Σᵢ kᵢⱼ·vᵢ for int64 pixel integers k (|k| ≤ 255) and arbitrary Python integers v, formed in
int64 in limbs small enough never to overflow and carried in Python integers.

(:mod:`~infl_cli.data.design`'s certified products split floats into exactly-summed pieces and
bound the rest; the SVM's duality gap is first-order in its margins, so it needs these sums
with no rest at all.)
"""

from __future__ import annotations

import numpy as np

LIMB_BITS = 36  # int64 limbs: 255 · 2³⁶ · 11,800 < 2⁶³, and 255 · 2³⁶ · 784 too
MAX_ROWS = (2 ** 62) // (255 * 2 ** LIMB_BITS)  # the most terms an int64 limb sum can take


def _limbs(values) -> list:
    """Signed int64 limbs of Python integers: values = Σₗ limbₗ·2^(36·l)."""
    magnitude = [abs(int(v)) for v in values]
    sign = np.array([1 if int(v) >= 0 else -1 for v in values], dtype=np.int64)
    top = max(magnitude, default=0).bit_length()
    mask = (1 << LIMB_BITS) - 1
    out = []
    for shift in range(0, max(top, 1), LIMB_BITS):
        out.append(sign * np.array([(m >> shift) & mask for m in magnitude], dtype=np.int64))
    return out


def _combine(parts: list) -> list:
    """Σₗ partsₗ·2^(36·l) as Python integers."""
    total = [0] * len(parts[0])
    for index, part in enumerate(parts):
        shift = LIMB_BITS * index
        total = [a + (int(b) << shift) for a, b in zip(total, part.tolist())]
    return total


def exact_matvec(k: np.ndarray, values) -> list:
    """Σⱼ kᵢⱼ·valuesⱼ exactly (k: int64 [n, d] of magnitude ≤ 255; values: Python ints)."""
    if k.shape[1] > MAX_ROWS:
        raise ValueError("too many features for exact int64 limb sums")
    return _combine([k @ limb for limb in _limbs(values)])


def exact_rmatvec(k: np.ndarray, values) -> list:
    """Σᵢ kᵢⱼ·valuesᵢ exactly, in blocks of rows that an int64 limb sum holds."""
    total = [0] * k.shape[1]
    for lo in range(0, k.shape[0], MAX_ROWS):
        block = k[lo:lo + MAX_ROWS]
        part = _combine([limb @ block for limb in _limbs(values[lo:lo + MAX_ROWS])])
        total = [a + b for a, b in zip(total, part)]
    return total
