"""The training inputs as a dense core and a sparse rim: the same exact sums, in less time.

MNIST digits sit in the middle of the frame. Of the 715 pixels that are non-zero in some
training image, the 343 that are non-zero in more than 10 % of them hold 99 % of all
non-zeros; the other 372 (the rim) hold about 385,000 non-zeros among 20 million entries.
:class:`DesignMatrix` keeps the active columns of X [n, d] in that split: the core as a dense
row-major array (BLAS), the rim as a CSR matrix. The products every pass over the data needs,
X·V and Rᵀ·X, become one dense GEMM over the core plus one sparse product over the rim: about
half the time of the dense product over all active columns, and no approximation (the terms
left out are exact zeros). Gram matrices Xᵀ diag(w) X likewise take a dense symmetric product
over the core and a sparse pass for the rim's rows (:func:`weighted_grams`).

Columns are addressed in *active order* (the original order of the active pixels), so callers
see an ordinary [n, d_active] matrix. Arrays are NumPy; float32 copies are made on first use.

**Certified products** (:meth:`DesignMatrix.certified_matmul`, :meth:`~DesignMatrix.certified_rmatmul`)
return a value and a proven bound on its error. For inputs that are integers / scale (pixels)
the products are exact integer sums, so the bound is tiny and relative to the result; for
general real features it is the standard model, |fl(Σ_k a_k b_k) − Σ_k a_k b_k| ≤ γ_m·Σ_k |a_k b_k|
for m terms in any summation order (Higham, ch. 3), about m·1.1e-16 of the terms' size.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

from .bounds import SAFETY, gamma

RIM_DENSITY = 0.10  # a column non-zero in at most this fraction of rows goes to the rim
BLOCK_ROWS = 4096   # rows per block in blocked passes (bounded temporaries, short sums)


class DesignMatrix:
    """X restricted to its active columns, as a dense core and a sparse rim (see module doc).

    ``active`` is the mask [d] of columns non-zero in some row; ``core`` and ``rim`` are
    positions within the active columns. ``n`` rows, ``width`` = number of active columns.
    """

    def __init__(self, x: torch.Tensor, rim_density: float = RIM_DENSITY,
                 block_rows: int = BLOCK_ROWS, scale: float | None = None):
        """``scale``: the inputs are integers divided by it (pixels / 255); makes the
        certified products :meth:`certified_matmul` and :meth:`certified_rmatmul` exact
        integer sums (None: general real features, bounded by the general model)."""
        nonzero = (x != 0).sum(dim=0).numpy()
        self.active = torch.from_numpy(nonzero > 0)
        positions = np.flatnonzero(nonzero)
        self.n, self.width = int(x.shape[0]), int(positions.size)
        density = nonzero[positions] / max(self.n, 1)
        self.core = np.flatnonzero(density > rim_density)
        self.rim = np.flatnonzero(density <= rim_density)
        xd = x.to(torch.float64)
        core = np.ascontiguousarray(xd[:, torch.from_numpy(positions[self.core])].numpy())
        rim = sp.csr_matrix(xd[:, torch.from_numpy(positions[self.rim])].numpy())
        self.block_rows = max(1, int(block_rows))
        self._core = {np.float64: core}
        self._rim = {np.float64: rim}
        self._rim_blocks = {}
        self.rim_nnz = int(rim.nnz)
        self.row_sq_norms = np.square(core).sum(axis=1) + np.asarray(
            rim.multiply(rim).sum(axis=1)).ravel()
        self.scale = scale
        self._integers = None
        self._abs = None
        # general real features: ‖x_i‖ as an upper bound, its own rounding included
        self.row_norms = np.sqrt(self.row_sq_norms) * (1 + gamma(self.width + 3))
        if scale is not None:
            int_core, int_rim = np.rint(core * scale), rim.copy()
            int_rim.data = np.rint(rim.data * scale)
            off = max(float(np.abs(int_core - core * scale).max(initial=0)),
                      float(np.abs(int_rim.data - rim.data * scale).max(initial=0)))
            if off > 1e-6:
                raise ValueError(f"the inputs are not integers divided by {scale}")
            # the data are these integers / scale exactly; the float64 x differ from them by
            # at most one rounding, covered by the +1 in the γ of every product bound
            self._integers = (int_core, int_rim)
            self.row_sums = int_core.sum(axis=1) + np.asarray(int_rim.sum(axis=1)).ravel()
            self.col_sums = np.empty(self.width)  # exact: integers below 2^53
            self.col_sums[self.core] = int_core.sum(axis=0)
            self.col_sums[self.rim] = np.asarray(int_rim.sum(axis=0)).ravel()
            squares = np.square(int_core).sum(axis=1) + np.asarray(
                int_rim.multiply(int_rim).sum(axis=1)).ravel()
            self.row_norms = np.sqrt(squares) / scale * (1 + 4 * 2.0 ** -53)

    @property
    def rounding_model(self) -> str:
        """How certified products bound their rounding: exact integer sums or the general
        γ_m model (module doc)."""
        return "exact integer products" if self._integers is not None else \
            "general (γ_m per sum of m terms)"

    # ------------------------------------------------------------------------- storage
    def core_array(self, dtype=np.float64) -> np.ndarray:
        """The core columns [n, len(core)] in ``dtype`` (float32 made once, on first use)."""
        dtype = np.dtype(dtype).type
        if dtype not in self._core:
            self._core[dtype] = self._core[np.float64].astype(dtype)
        return self._core[dtype]

    def rim_matrix(self, dtype=np.float64) -> sp.csr_matrix:
        dtype = np.dtype(dtype).type
        if dtype not in self._rim:
            self._rim[dtype] = self._rim[np.float64].astype(dtype)
        return self._rim[dtype]

    def blocks(self, dtype=np.float64):
        """(lo, hi, core rows [b, len(core)], rim rows CSR [b, len(rim)]) per block of rows."""
        dtype = np.dtype(dtype).type
        if dtype not in self._rim_blocks:
            rim = self.rim_matrix(dtype)
            self._rim_blocks[dtype] = [rim[lo:lo + self.block_rows]
                                       for lo in range(0, self.n, self.block_rows)]
        core = self.core_array(dtype)
        for i, lo in enumerate(range(0, self.n, self.block_rows)):
            hi = min(lo + self.block_rows, self.n)
            yield lo, hi, core[lo:hi], self._rim_blocks[dtype][i]

    def rows(self, index) -> np.ndarray:
        """Dense float64 rows [len(index), width] (active order)."""
        index = np.asarray(index, dtype=np.int64)
        out = np.zeros((index.shape[0], self.width))
        out[:, self.core] = self._core[np.float64][index]
        out[:, self.rim] = self._rim[np.float64][index].toarray()
        return out

    def dense(self, dtype=np.float64) -> np.ndarray:
        """The whole [n, width] matrix (a temporary copy)."""
        out = np.zeros((self.n, self.width), dtype=dtype)
        out[:, self.core] = self.core_array(dtype)
        out[:, self.rim] = self.rim_matrix(dtype).toarray()
        return out

    # ------------------------------------------------------------------------ products
    def matmul(self, v: np.ndarray) -> np.ndarray:
        """X·v for v [width, m] (its dtype picks the arithmetic): [n, m]. Dense products go
        through torch's MKL, whose results do not depend on the number of threads."""
        dtype = v.dtype.type
        core = torch.from_numpy(self.core_array(dtype))
        out = torch.mm(core, torch.from_numpy(np.ascontiguousarray(v[self.core]))).numpy()
        out += self.rim_matrix(dtype) @ np.ascontiguousarray(v[self.rim])
        return out

    def rmatmul(self, r: np.ndarray) -> np.ndarray:
        """rᵀ·X for r [n, m]: [m, width] (float64 accumulation for float64 r)."""
        dtype = r.dtype.type
        out = np.empty((r.shape[1], self.width), dtype=dtype)
        core = torch.from_numpy(self.core_array(dtype))
        out[:, self.core] = torch.mm(torch.from_numpy(r).T, core).numpy()
        out[:, self.rim] = (self.rim_matrix(dtype).T @ r).T
        return out


    def _abs_parts(self):
        """|core| and |rim| in float64, made on first use (general features only)."""
        if self._abs is None:
            self._abs = (np.abs(self._core[np.float64]), abs(self._rim[np.float64]))
        return self._abs

    def certified_matmul(self, v: np.ndarray):
        """X·v for float64 v [width, m]: (value [n, m], bound [n, m] on |value − X·v|).

        With X = integers/scale, v is split into integer pieces small enough that every
        partial sum of integer pixels times a piece stays below 2⁵³, so each BLAS product is
        exact in any summation order; only combining the pieces and dividing by the scale
        round (and the part of v below the last piece, bounded). General features: the
        float64 product, off by at most γ_{width+1}·(|X|·|v|) (core and rim sums, then their
        sum), |X|·|v| computed too and enlarged by its own rounding."""
        if self._integers is None:
            core, rim = self._abs_parts()
            av = np.abs(v)
            size = core @ np.ascontiguousarray(av[self.core]) + rim @ np.ascontiguousarray(
                av[self.rim])
            g = gamma(self.width + 1)
            return self.matmul(v), SAFETY * g * (1 + 2 * g) * size
        bits = _piece_bits(float(self.row_sums.max()))
        pieces, weights, tail = _integer_pieces(v, bits)
        core, rim = self._integers
        parts = [(core @ np.ascontiguousarray(q[self.core]) + rim @ np.ascontiguousarray(
            q[self.rim])) * w for q, w in zip(pieces, weights)]
        return _combine(parts, self.scale, self.row_sums[:, None] * tail)

    def certified_rmatmul(self, r: np.ndarray):
        """rᵀ·X for float64 r [n, m]: (value [m, width], bound on |value − rᵀX|), as
        :meth:`certified_matmul` (general features: γ_{n+1}·(|r|ᵀ|X|))."""
        if self._integers is None:
            core, rim = self._abs_parts()
            ar = np.abs(r)
            size = np.empty((r.shape[1], self.width))
            size[:, self.core] = ar.T @ core
            size[:, self.rim] = (rim.T @ ar).T
            g = gamma(self.n + 1)
            return self.rmatmul(r), SAFETY * g * (1 + 2 * g) * size
        bits = _piece_bits(float(self.col_sums.max()))
        pieces, weights, tail = _integer_pieces(r, bits)
        core, rim = self._integers
        parts = []
        for q, w in zip(pieces, weights):
            part = np.empty((r.shape[1], self.width))
            part[:, self.core] = q.T @ core
            part[:, self.rim] = (rim.T @ q).T
            parts.append(part * w)
        return _combine(parts, self.scale, self.col_sums[None, :] * tail)


def _piece_bits(max_abs_sum: float) -> int:
    """Bits per integer piece such that max_abs_sum · 2^bits < 2^53."""
    return 52 - math.ceil(math.log2(max(max_abs_sum, 1.0)))


def _integer_pieces(a: np.ndarray, bits: int, n_pieces: int = 3):
    """a = Σ_k q_k·w_k + tail with integer-valued q_k (|q_k| ≤ 2^bits), w_k powers of two and
    |tail| ≤ ``tail`` (returned). Every step is exact: scaling by powers of two, rounding to an
    integer, and subtracting it (the remainder is representable)."""
    top = float(np.abs(a).max()) if a.size else 0.0
    exponent = math.frexp(top)[1] if top > 0 else 0  # |a| < 2^exponent
    rest = np.ldexp(a, -exponent)  # |rest| < 1
    pieces, weights = [], []
    for k in range(n_pieces):
        rest = np.ldexp(rest, bits)
        q = np.rint(rest)
        rest -= q
        pieces.append(q)
        weights.append(2.0 ** (exponent - (k + 1) * bits))
    return pieces, weights, 0.5 * weights[-1]


def _combine(parts, scale: float, tail_bound):
    """Σ parts / scale with its error bound: γ_{len(parts)} of Σ|parts| for the sum and the
    division, plus the bounded tail (exact-product contributions of the unsplit rest)."""
    total = parts[0].copy()
    size = np.abs(parts[0])
    for part in parts[1:]:
        total += part
        size += np.abs(part)
    value = total / scale
    bound = SAFETY * (gamma(len(parts)) * size / scale + tail_bound / scale)
    return value, bound


def weighted_grams(design: DesignMatrix, weights: np.ndarray, dtype=np.float32, on_gram=None):
    """G_k = Xᵀ diag(weights[:, k]) X for each column k of ``weights`` [n, m] (weights ≥ 0):
    [m, width, width] in ``dtype``.

    The core block of each is one symmetric product (NumPy's ``AᵀA`` path, BLAS syrk) of the
    core rows scaled by √w; the rows and columns of the rim come from a sparse pass: for each
    rim column j, the rows where x_ij ≠ 0 are gathered once and contracted with all m weight
    columns at once. ``on_gram()`` is called after each core product (progress).
    """
    n_w = weights.shape[1]
    width = design.width
    core, rim = design.core, design.rim
    out = np.empty((n_w, width, width), dtype=dtype)
    xc = design.core_array(dtype)
    scaled = np.empty_like(xc)
    root = np.sqrt(weights).astype(dtype)
    for k in range(n_w):
        np.multiply(xc, root[:, k:k + 1], out=scaled)
        out[k][np.ix_(core, core)] = scaled.T @ scaled
        if on_gram is not None:
            on_gram()
    if rim.size:
        # rows in design order (core columns, then rim columns): a plain concatenation
        full = np.hstack([xc, design.rim_matrix(dtype).toarray()])
        order = np.concatenate([core, rim])
        w = weights.astype(dtype)
        csc = design.rim_matrix(dtype).tocsc()
        for j_pos, j in enumerate(rim):
            lo, hi = csc.indptr[j_pos], csc.indptr[j_pos + 1]
            rows, vals = csc.indices[lo:hi], csc.data[lo:hi]
            block = (w[rows] * vals[:, None]).T @ full[rows]  # [m, width]: row j of every G_k
            out[:, j, order] = block
            out[:, core, j] = block[:, :core.size]
    return out
