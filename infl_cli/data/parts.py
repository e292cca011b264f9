"""The data-only pieces of a design (:mod:`~infl_cli.data.design`), in NumPy: computed once per
dataset, kept in the decoded-data cache (:mod:`~infl_cli.data.cache`), and turned into a design
on any device in a fraction of a second.

Every piece is exact and depends only on the training inputs:

* ``n_features`` [1]: d, the number of columns;
* ``positions`` [d_a]: the active columns (non-zero in some training row), in their order;
  ``core`` and ``rim`` [·]: positions *within the active columns* of the dense core (non-zero in
  more than :data:`RIM_DENSITY` of the rows) and of the sparse rim;
* for inputs that are integers divided by a scale (pixels / 255, or an NPZ whose features are
  integers / scale): the integers themselves, ``core_int`` [n, |core|] and the rim as CSR
  (``rim_indptr``, ``rim_indices``, ``rim_int``), in the smallest integer type that holds them,
  and their exact sums (``row_int_sq`` = Σ_j n_ij², ``row_int_abs`` = Σ_j |n_ij| per row,
  ``col_int_abs`` = Σ_i |n_ij| per column, integers below 2⁵³ held in float64);
* for general real features: the float64 core and rim (``core_x``, ``rim_x``);
* ``row_sq`` [n]: the float64 squared row norms, as the float64 features give them.
"""

from __future__ import annotations

import numpy as np

RIM_DENSITY = 0.10  # a column non-zero in at most this fraction of rows goes to the rim
INTEGER_KEYS = ("core_int", "rim_int", "row_int_sq", "row_int_abs", "col_int_abs")


def with_bias_column(x: np.ndarray, scale: float | None) -> np.ndarray:
    """``x`` [n, d] (stored form: integers for a ``scale``, else float64 features) with a last
    column equal to 1 in feature units: the integer ``scale`` (scale/scale = 1), or 1.0."""
    one = scale if scale is not None else 1.0
    dtype = x.dtype
    if scale is not None and np.iinfo(dtype).max < scale:  # e.g. int8 data with scale 255
        dtype = np.int32
    return np.concatenate([x.astype(dtype, copy=False),
                           np.full((x.shape[0], 1), one, dtype=dtype)], axis=1)


def compute(x: np.ndarray, scale: float | None, rim_density: float = RIM_DENSITY) -> dict:
    """The pieces of the design of training inputs ``x`` [n, d] in stored form: integers with
    ``scale`` (the features are x/scale exactly), or float64 features with ``scale`` None."""
    import scipy.sparse as sp

    n = int(x.shape[0])
    nonzero = np.count_nonzero(x, axis=0)
    positions = np.flatnonzero(nonzero).astype(np.int64)
    density = nonzero[positions] / max(n, 1)
    core = np.flatnonzero(density > rim_density).astype(np.int64)
    rim = np.flatnonzero(density <= rim_density).astype(np.int64)
    columns = positions[core]
    if columns.size == x.shape[1] and x.flags.c_contiguous:  # every column dense: no copy
        core_cols = x
    else:
        core_cols = np.ascontiguousarray(x[:, columns])
    rim_csr = sp.csr_matrix(x[:, positions[rim]])
    parts = {"n_features": np.array([x.shape[1]], dtype=np.int64),
             "positions": positions, "core": core, "rim": rim,
             "rim_indptr": rim_csr.indptr.astype(np.int64),
             "rim_indices": rim_csr.indices.astype(np.int32)}
    if scale is None:  # general features: the core in their own float dtype (float32 stays)
        core_x = core_cols if core_cols.dtype in (np.float32, np.float64) else \
            core_cols.astype(np.float64)
        rim_x = rim_csr.data.astype(np.float64, copy=False)
        parts.update(core_x=core_x, rim_x=rim_x)
    else:
        parts.update(core_int=core_cols, rim_int=rim_csr.data)
        core_x = core_cols.astype(np.float64) / scale
        rim_x = rim_csr.data.astype(np.float64) / scale
        ints_core = core_cols.astype(np.float64)
        ints_rim = sp.csr_matrix((rim_csr.data.astype(np.float64), rim_csr.indices,
                                  rim_csr.indptr), shape=rim_csr.shape)
        abs_core, abs_rim = np.abs(ints_core), abs(ints_rim)
        col = np.empty(positions.size)  # exact: integers below 2^53
        col[core] = abs_core.sum(axis=0)
        col[rim] = np.asarray(abs_rim.sum(axis=0)).ravel()
        parts.update(
            row_int_sq=np.square(ints_core).sum(axis=1)
            + np.asarray(ints_rim.multiply(ints_rim).sum(axis=1)).ravel(),
            row_int_abs=abs_core.sum(axis=1) + np.asarray(abs_rim.sum(axis=1)).ravel(),
            col_int_abs=col)
    rim_f = sp.csr_matrix((rim_x, rim_csr.indices, rim_csr.indptr), shape=rim_csr.shape)
    parts["row_sq"] = (_row_squares(core_x)
                       + np.asarray(rim_f.multiply(rim_f).sum(axis=1)).ravel())
    return parts


def _row_squares(core: np.ndarray, rows: int = 1 << 14) -> np.ndarray:
    """Σ_j x_ij² per row in float64, a block of rows at a time (float32 features converted
    exactly, one block at a time)."""
    out = np.empty(core.shape[0])
    for lo in range(0, core.shape[0], rows):
        out[lo:lo + rows] = np.square(core[lo:lo + rows].astype(np.float64, copy=False)).sum(1)
    return out


def core_float(parts: dict, scale: float | None) -> np.ndarray:
    """The float64 core columns [n, |core|] (a new array for scaled integers)."""
    if scale is None:
        return parts["core_x"]
    return parts["core_int"].astype(np.float64) / scale


def rim_float(parts: dict, scale: float | None) -> np.ndarray:
    """The float64 values of the rim's non-zeros."""
    if scale is None:
        return parts["rim_x"]
    return parts["rim_int"].astype(np.float64) / scale


def n_rows(parts: dict) -> int:
    return int(parts["rim_indptr"].shape[0] - 1)
