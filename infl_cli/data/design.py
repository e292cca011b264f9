"""The training inputs X [n, d], as the products every pass over the data needs: one interface,
two implementations.

* :class:`DesignMatrix` (the CPU). MNIST digits sit in the middle of the frame. Of the 715
  pixels that are non-zero in some training image, the 343 that are non-zero in more than
  10 % of them hold 99 % of all non-zeros; the other 372 (the rim) hold about 385,000
  non-zeros among 20 million entries. The active columns are kept in that split: the core as
  a dense row-major array (BLAS), the rim as a CSR matrix. X·V and Rᵀ·X become one dense GEMM
  over the core plus one sparse product over the rim: about half the time of the dense
  product, and no approximation (the terms left out are exact zeros). Gram matrices
  Xᵀ diag(w) X take a symmetric product over the core and a sparse pass for the rim's rows.
* :class:`DenseDesign` (any torch device: a GPU, or the CPU in tests). The active columns as
  one dense float64 tensor on the device (a float32 copy on first use), every product a
  ``torch.mm``, passes over the rows in blocks sized to the device's free memory.

Both take and return torch tensors on ``design.device``; columns are addressed in *active
order* (the original order of the active columns), so callers see an ordinary [n, d_active]
matrix. :func:`make_design` picks the implementation for a device.

**Certified products** (``certified_matmul``, ``certified_rmatmul``) return a value and a
proven bound on its error. For inputs that are integers / scale (pixels) the products are
exact integer sums, whatever the order of summation or the hardware (any IEEE float64 GEMM,
FMA or not, split over threads or thread blocks: every partial sum is an integer below 2⁵³),
so the bound is tiny and relative to the result; for general real features it is the
standard model, |fl(Σ_k a_k b_k) − Σ_k a_k b_k| ≤ γ_m·Σ_k |a_k b_k| for m terms in any
summation order (Higham, ch. 3), about m·1.1e-16 of the terms' size.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from infl_cli.data.parts import RIM_DENSITY  # a column this sparse goes to the rim
from infl_cli.numerics.bounds import SAFETY, UNIT_ROUNDOFF, gamma
from infl_cli.numerics.exact import combine_pieces, integer_pieces, piece_bits
from infl_cli.runtime import memory

# the design never writes through the tensors it makes of its arrays, which may be read-only
# (a user's arrays, an NPZ mapped while it is decoded): torch's warning about those does not apply
warnings.filterwarnings("ignore", message="The given NumPy array is not writable",
                        category=UserWarning)

BLOCK_ROWS = 4096   # rows per block in blocked passes (bounded temporaries, short sums)
CONVERT_BYTES = 32 * 2 ** 20  # a block of rows converted to float64 at a time
DEVICE_PASS_MEMORY = 0.25  # a device pass takes at most this fraction of the free memory


def make_design(x=None, scale: float | None = None, device=None, dense: bool = False,
                parts: dict | None = None):
    """The design of training inputs ``x`` [n, d] (a CPU tensor of float64 features; or, with
    ``parts``, their precomputed pieces, :mod:`~infl_cli.data.parts`) for ``device``: the
    core/rim :class:`DesignMatrix` on the CPU, :class:`DenseDesign` on any other device (or
    with ``dense``, on the CPU too: the device code path, for tests)."""
    device = torch.device(device or "cpu")
    if parts is None:
        parts = parts_of(x, scale)
    if device.type == "cpu" and not dense:
        return DesignMatrix(parts=parts, scale=scale)
    return DenseDesign(parts=parts, scale=scale, device=device)


def parts_of(x: torch.Tensor, scale: float | None, rim_density: float = RIM_DENSITY) -> dict:
    """The pieces of the design of float64 features ``x`` [n, d] (a tensor or an array) that
    are integers divided by ``scale`` (checked), or general real features (``scale`` None)."""
    from infl_cli.data import parts as design_parts

    xn = x.detach().to("cpu", torch.float64).numpy() if isinstance(x, torch.Tensor) \
        else np.asarray(x, dtype=np.float64)
    if scale is not None:
        ints = np.rint(xn * scale)
        if float(np.abs(ints - xn * scale).max(initial=0)) > 1e-6:
            raise ValueError(f"the inputs are not integers divided by {scale}")
        xn = ints.astype(np.int64)
    return design_parts.compute(xn, scale, rim_density)


class _Common:
    """What both designs derive alike from the data: active columns, norms, integer sums."""

    def _init_common(self, parts: dict, scale: float | None) -> None:
        """Active columns, their split and the norms, from the design's pieces."""
        from infl_cli.data import parts as design_parts

        self.positions = np.asarray(parts["positions"], dtype=np.int64)
        self.core = np.asarray(parts["core"], dtype=np.int64)
        self.rim = np.asarray(parts["rim"], dtype=np.int64)
        self.n, self.width = design_parts.n_rows(parts), int(self.positions.size)
        self.active = torch.zeros(int(np.asarray(parts["n_features"]).reshape(-1)[0]),
                                  dtype=torch.bool)
        self.active[torch.from_numpy(self.positions)] = True  # [d], on the CPU
        self.scale = scale
        squares = np.asarray(parts["row_sq"], dtype=np.float64)
        if scale is None:
            self._set_norms(squares)
        else:
            self._set_norms(squares, (np.asarray(parts["row_int_sq"]),
                                      np.asarray(parts["row_int_abs"]),
                                      np.asarray(parts["col_int_abs"])))

    def _set_norms(self, squares: np.ndarray, integers=None) -> None:
        """Row norms (upper bounds) from the float64 squares per row, or, with ``integers``
        = (Σ_j n_ij², Σ_j |n_ij| per row, Σ_i |n_ij| per column) of the integer inputs n, from
        those exact integer sums (below 2⁵³)."""
        self.row_sq_norms = self._tensor(squares)
        self._integer_sums = None
        if integers is None:
            # general real features: ‖x_i‖ as an upper bound, its own rounding included
            self.row_norms = self._tensor(np.sqrt(squares) * (1 + gamma(self.width + 3)))
            return
        int_squares, row_sums, col_sums = integers
        self._integer_sums = (row_sums, col_sums)
        self.row_norms = self._tensor(np.sqrt(int_squares) / self.scale
                                      * (1 + 4 * UNIT_ROUNDOFF))

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    @property
    def rounding_model(self) -> str:
        """How certified products bound their rounding: exact integer sums or the general
        γ_m model (module doc)."""
        return "exact integer products" if self._integer_sums is not None else \
            "general (γ_m per sum of m terms)"

    @property
    def exact(self) -> bool:
        return self._integer_sums is not None

    def certified_matmul(self, v: torch.Tensor):
        """X·v for float64 v [width, m]: (value [n, m], bound [n, m] on |value − X·v|).

        With X = integers/scale, v is split into integer pieces small enough that every
        partial sum of integer inputs times a piece stays below 2⁵³, so each product is exact
        in any summation order; only combining the pieces and dividing by the scale round
        (and the part of v below the last piece, bounded). General features: the float64
        product, off by at most γ_{width+1}·(|X|·|v|), |X|·|v| computed too and enlarged by
        its own rounding."""
        if not self.exact:
            g = gamma(self.width + 1)
            return self.matmul(v), SAFETY * g * (1 + 2 * g) * self._abs_matmul(v.abs())
        row_sums = self._integer_sums[0]
        pieces, weights, tail = integer_pieces(v, piece_bits(float(row_sums.max())))
        parts = [self._integer_matmul(q) * w for q, w in zip(pieces, weights)]
        return combine_pieces(parts, self.scale, self._tensor(row_sums)[:, None] * tail)

    def certified_rmatmul(self, r: torch.Tensor):
        """rᵀ·X for float64 r [n, m]: (value [m, width], bound on |value − rᵀX|), as
        :meth:`certified_matmul` (general features: γ_{n+1}·(|r|ᵀ|X|))."""
        if not self.exact:
            g = gamma(self.n + 1)
            return self.rmatmul(r), SAFETY * g * (1 + 2 * g) * self._abs_rmatmul(r.abs())
        col_sums = self._integer_sums[1]
        pieces, weights, tail = integer_pieces(r, piece_bits(float(col_sums.max())))
        parts = [self._integer_rmatmul(q) * w for q, w in zip(pieces, weights)]
        return combine_pieces(parts, self.scale, self._tensor(col_sums)[None, :] * tail)


class DesignMatrix(_Common):
    """X restricted to its active columns, as a dense core and a sparse rim on the CPU (see
    module doc). ``core`` and ``rim`` are positions within the active columns."""

    device = torch.device("cpu")

    def __init__(self, x: torch.Tensor | None = None, rim_density: float = RIM_DENSITY,
                 block_rows: int = BLOCK_ROWS, scale: float | None = None,
                 parts: dict | None = None):
        """``scale``: the inputs are integers divided by it (pixels / 255); makes the
        certified products exact integer sums (None: general real features, bounded by the
        general model). ``parts``: the design's pieces (:mod:`~infl_cli.data.parts`) instead
        of ``x``."""
        import scipy.sparse as sp

        from infl_cli.data import parts as design_parts

        parts = parts if parts is not None else parts_of(x, scale, rim_density)
        self._init_common(parts, scale)
        shape = (self.n, self.rim.size)
        # the core as stored (general features keep their own float dtype, float32 included:
        # exact in float64, converted a block at a time), or the scaled integers' float64
        core = design_parts.core_float(parts, scale)
        rim = sp.csr_matrix((design_parts.rim_float(parts, scale), parts["rim_indices"],
                             parts["rim_indptr"]), shape=shape)
        self.block_rows = max(1, int(block_rows))
        self._core = {np.dtype(core.dtype).type: core}
        self._rim = {np.float64: rim}
        self._rim_blocks = {}
        self.rim_nnz = int(rim.nnz)
        self._parts = parts  # the integers are made on the first certified product
        self._integer_arrays = None

    @property
    def _integers(self):
        """(core, rim) of the integer inputs as float64 (exact), made on first use: the data
        are these integers / scale exactly; the float64 x differ from them by at most one
        rounding, covered by the +1 in the γ of every product bound."""
        if self._integer_arrays is None and self.scale is not None:
            import scipy.sparse as sp

            parts = self._parts
            int_rim = sp.csr_matrix((np.asarray(parts["rim_int"], dtype=np.float64),
                                     parts["rim_indices"], parts["rim_indptr"]),
                                    shape=(self.n, self.rim.size))
            self._integer_arrays = (np.asarray(parts["core_int"], dtype=np.float64), int_rim)
        return self._integer_arrays

    # ------------------------------------------------------------------------- storage
    @property
    def stored_dtype(self):
        """The dtype the core is held in (float64 for scaled integers)."""
        return next(iter(self._core))

    def _has_core(self, dtype) -> bool:
        """Whether the core is held in ``dtype``, or a copy in it is small enough to keep
        (at most one pass's workspace): else products convert it a block of rows at a time."""
        dtype = np.dtype(dtype).type
        return dtype in self._core or \
            self.n * self.core.size * np.dtype(dtype).itemsize <= memory.PASS_BYTES

    def core_array(self, dtype=np.float64) -> np.ndarray:
        """The core columns [n, len(core)] in ``dtype`` (a copy in another dtype made once, on
        first use; see :meth:`core_rows` for a block without the whole copy)."""
        dtype = np.dtype(dtype).type
        if dtype not in self._core:
            self._core[dtype] = next(iter(self._core.values())).astype(dtype)
        return self._core[dtype]

    def core_rows(self, lo: int, hi: int, dtype=np.float64) -> np.ndarray:
        """Core rows lo..hi in ``dtype`` (a view where the core is held in it)."""
        dtype = np.dtype(dtype).type
        if self._has_core(dtype):
            return self.core_array(dtype)[lo:hi]
        return np.asarray(self._core[self.stored_dtype][lo:hi], dtype=dtype)

    def _row_blocks(self, bytes_per_row: float):
        """(lo, hi) of the blocks of a pass whose temporaries take ``bytes_per_row``: one block
        when they fit a pass's workspace (the unblocked product, bit for bit), else blocks of
        :data:`CONVERT_BYTES` (large enough for BLAS to run at full speed)."""
        rows = memory.rows_per_pass(bytes_per_row, self.n, CONVERT_BYTES, minimum=1)
        return [(lo, min(lo + rows, self.n)) for lo in range(0, self.n, rows)]

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
        for i, lo in enumerate(range(0, self.n, self.block_rows)):
            hi = min(lo + self.block_rows, self.n)
            yield lo, hi, self.core_rows(lo, hi, dtype), self._rim_blocks[dtype][i]

    def rows(self, index) -> torch.Tensor:
        """Dense float64 rows [len(index), width] (active order)."""
        index = np.asarray(index, dtype=np.int64)
        out = np.zeros((index.shape[0], self.width))
        out[:, self.core] = self._core[self.stored_dtype][index]
        out[:, self.rim] = self._rim[np.float64][index].toarray()
        return torch.from_numpy(out)

    def dense(self, dtype=torch.float64) -> torch.Tensor:
        """The whole [n, width] matrix (a temporary copy)."""
        np_dtype = _numpy_dtype(dtype)
        out = np.zeros((self.n, self.width), dtype=np_dtype)
        for lo, hi in self._row_blocks(self.core.size * 8):
            out[lo:hi, self.core] = self.core_rows(lo, hi, np_dtype)
        out[:, self.rim] = self.rim_matrix(np_dtype).toarray()
        return torch.from_numpy(out)

    # ------------------------------------------------------------------------ products
    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        """X·v for v [width, m] (its dtype picks the arithmetic): [n, m]. Dense products go
        through torch's MKL, whose results do not depend on the number of threads; a core
        held in another dtype is converted a block of rows at a time."""
        vn = v.numpy()
        dtype = vn.dtype.type
        v_core = torch.from_numpy(np.ascontiguousarray(vn[self.core]))
        if self._has_core(dtype):
            out = torch.mm(torch.from_numpy(self.core_array(dtype)), v_core).numpy()
        else:
            out = np.empty((self.n, vn.shape[1]), dtype=dtype)
            for lo, hi in self._row_blocks(self.core.size * vn.itemsize):
                out[lo:hi] = torch.mm(torch.from_numpy(self.core_rows(lo, hi, dtype)),
                                      v_core).numpy()
        out += self.rim_matrix(dtype) @ np.ascontiguousarray(vn[self.rim])
        return torch.from_numpy(out)

    def rmatmul(self, r: torch.Tensor) -> torch.Tensor:
        """rᵀ·X for r [n, m]: [m, width] (float64 accumulation for float64 r)."""
        rn = r.numpy()
        dtype = rn.dtype.type
        out = np.empty((rn.shape[1], self.width), dtype=dtype)
        if self._has_core(dtype):
            out[:, self.core] = torch.mm(r.T, torch.from_numpy(self.core_array(dtype))).numpy()
        else:
            acc = torch.zeros((rn.shape[1], self.core.size), dtype=r.dtype)
            for lo, hi in self._row_blocks(self.core.size * rn.itemsize):
                acc += torch.mm(r[lo:hi].T, torch.from_numpy(self.core_rows(lo, hi, dtype)))
            out[:, self.core] = acc.numpy()
        out[:, self.rim] = (self.rim_matrix(dtype).T @ rn).T
        return torch.from_numpy(out)

    def _abs_core(self, lo: int, hi: int) -> np.ndarray:
        """|core rows lo..hi| in float64, for the bounds of general features (a new array:
        no whole |X| copy is kept)."""
        rows = self.core_rows(lo, hi)
        return np.abs(rows) if self._has_core(np.float64) else np.abs(rows, out=rows)

    def _abs_matmul(self, av: torch.Tensor) -> torch.Tensor:
        a = av.numpy()
        a_core = np.ascontiguousarray(a[self.core])
        out = np.empty((self.n, a.shape[1]))
        for lo, hi in self._row_blocks(self.core.size * 8):
            out[lo:hi] = self._abs_core(lo, hi) @ a_core
        out += abs(self._rim[np.float64]) @ np.ascontiguousarray(a[self.rim])
        return torch.from_numpy(out)

    def _abs_rmatmul(self, ar: torch.Tensor) -> torch.Tensor:
        a = ar.numpy()
        out = np.empty((a.shape[1], self.width))
        acc = np.zeros((a.shape[1], self.core.size))
        for lo, hi in self._row_blocks(self.core.size * 8):
            acc += a[lo:hi].T @ self._abs_core(lo, hi)
        out[:, self.core] = acc
        out[:, self.rim] = (abs(self._rim[np.float64]).T @ a).T
        return torch.from_numpy(out)

    def _integer_matmul(self, q: torch.Tensor) -> torch.Tensor:
        core, rim = self._integers
        qn = q.numpy()
        return torch.from_numpy(core @ np.ascontiguousarray(qn[self.core])
                                + rim @ np.ascontiguousarray(qn[self.rim]))

    def _integer_rmatmul(self, q: torch.Tensor) -> torch.Tensor:
        core, rim = self._integers
        qn = q.numpy()
        part = np.empty((qn.shape[1], self.width))
        part[:, self.core] = qn.T @ core
        part[:, self.rim] = (rim.T @ qn).T
        return torch.from_numpy(part)

    def grams(self, weights: torch.Tensor, dtype=torch.float32, on_gram=None) -> torch.Tensor:
        """G_k = Xᵀ diag(weights[:, k]) X for each column k of ``weights`` [n, m] (weights ≥ 0):
        [m, width, width] in ``dtype``.

        The core block of each is one symmetric product (NumPy's ``AᵀA`` path, BLAS syrk) of the
        core rows scaled by √w; the rows and columns of the rim come from a sparse pass: for each
        rim column j, the rows where x_ij ≠ 0 are gathered once and contracted with all m weight
        columns at once. ``on_gram()`` is called after each core product (progress).
        """
        np_dtype = _numpy_dtype(dtype)
        w_np = weights.numpy()
        n_w = w_np.shape[1]
        width, core, rim = self.width, self.core, self.rim
        out = np.empty((n_w, width, width), dtype=np_dtype)
        root = np.sqrt(w_np).astype(np_dtype)
        itemsize = np.dtype(np_dtype).itemsize
        blocks = self._row_blocks(2 * core.size * itemsize)  # the rows and their scaled copy
        for k in range(n_w):
            acc = None
            for lo, hi in blocks:  # one block when it fits: the unblocked product
                xc = self.core_rows(lo, hi, np_dtype)
                scaled = np.multiply(xc, root[lo:hi, k:k + 1])
                part = scaled.T @ scaled
                acc = part if acc is None else acc + part
            out[k][np.ix_(core, core)] = acc
            if on_gram is not None:
                on_gram()
        if rim.size:
            xc = self.core_array(np_dtype)
            # rows in design order (core columns, then rim columns): a plain concatenation
            full = np.hstack([xc, self.rim_matrix(np_dtype).toarray()])
            order = np.concatenate([core, rim])
            w = w_np.astype(np_dtype)
            csc = self.rim_matrix(np_dtype).tocsc()
            for j_pos, j in enumerate(rim):
                lo, hi = csc.indptr[j_pos], csc.indptr[j_pos + 1]
                rows, vals = csc.indices[lo:hi], csc.data[lo:hi]
                block = (w[rows] * vals[:, None]).T @ full[rows]  # [m, width]: row j of every G_k
                out[:, j, order] = block
                out[:, core, j] = block[:, :core.size]
        return torch.from_numpy(out)

    def pass_rows(self, v: torch.Tensor, transform, dtype=torch.float64):
        """Σ over row blocks b of X_bᵀ·transform(X_b·v, lo, hi) for v [width, m]: ([m, width]
        float64, rows per block). Per block the products are a dense GEMM over the core
        (torch's MKL: the same bits on any number of threads) plus a sparse product over the
        rim, in ``dtype``; ``transform(u [b, m], lo, hi)`` returns a [b, m] tensor of that
        dtype (it may work in place on u); block results accumulate in float64."""
        np_dtype = _numpy_dtype(dtype)
        m = v.shape[1]
        vn = v.to(dtype).numpy()
        v_core = torch.from_numpy(np.ascontiguousarray(vn[self.core]))
        v_rim = np.ascontiguousarray(vn[self.rim])
        acc_core = torch.zeros((m, self.core.size), dtype=torch.float64)
        acc_rim = np.zeros((self.rim.size, m))
        for lo, hi, x_core, x_rim in self.blocks(np_dtype):
            xc = torch.from_numpy(x_core)
            u = torch.mm(xc, v_core)
            u += torch.from_numpy(x_rim @ v_rim)
            dp = transform(u, lo, hi)
            acc_core += torch.mm(dp.T, xc)
            acc_rim += x_rim.T @ dp.numpy()
        out = torch.empty((m, self.width), dtype=torch.float64)
        out[:, self.core] = acc_core
        out[:, self.rim] = torch.from_numpy(acc_rim.T)
        return out, self.block_rows


class DenseDesign(_Common):
    """X restricted to its active columns as one dense tensor on ``device`` (module doc)."""

    def __init__(self, x: torch.Tensor | None = None, scale: float | None = None,
                 device="cpu", block_rows: int | None = None, parts: dict | None = None):
        """``block_rows``: rows per block in passes (None: from the device's free memory, at
        most :data:`BLOCK_ROWS` × 16 and at least 1,024). ``parts``: the design's pieces
        (:mod:`~infl_cli.data.parts`) instead of ``x``."""
        from infl_cli.data import parts as design_parts

        self.device = torch.device(device)
        parts = parts if parts is not None else parts_of(x, scale)
        self._init_common(parts, scale)
        self._parts = parts
        self._x = {torch.float64: self._assemble(design_parts.core_float(parts, scale),
                                                 design_parts.rim_float(parts, scale))}
        self._abs = None
        self._fixed_block_rows = block_rows
        self.block_rows = block_rows or BLOCK_ROWS
        self._parts = parts  # the integers are made on the first certified product
        self._int_tensor = None

    def _assemble(self, core: np.ndarray, rim_values: np.ndarray) -> torch.Tensor:
        parts = self._parts
        out = np.zeros((self.n, self.width))
        out[:, self.core] = core
        rows = np.repeat(np.arange(self.n), np.diff(parts["rim_indptr"]))
        out[rows, self.rim[parts["rim_indices"]]] = rim_values
        return self._tensor(out)

    @property
    def _ints(self):
        """The integer inputs as a float64 tensor on the device (exact), made on first use."""
        if self._int_tensor is None and self.scale is not None:
            self._int_tensor = self._assemble(
                np.asarray(self._parts["core_int"], dtype=np.float64),
                np.asarray(self._parts["rim_int"], dtype=np.float64))
        return self._int_tensor

    def dense(self, dtype=torch.float64) -> torch.Tensor:
        """The whole [n, width] matrix in ``dtype`` (float32 made once, on first use)."""
        if dtype not in self._x:
            self._x[dtype] = self._x[torch.float64].to(dtype)
        return self._x[dtype]

    def rows(self, index) -> torch.Tensor:
        index = torch.as_tensor(np.asarray(index, dtype=np.int64)).to(self.device)
        return self._x[torch.float64][index]

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        return self.dense(v.dtype) @ v

    def rmatmul(self, r: torch.Tensor) -> torch.Tensor:
        return r.T @ self.dense(r.dtype)

    def _abs_matmul(self, av: torch.Tensor) -> torch.Tensor:
        return self._absolute() @ av

    def _abs_rmatmul(self, ar: torch.Tensor) -> torch.Tensor:
        return ar.T @ self._absolute()

    def _absolute(self) -> torch.Tensor:
        if self._abs is None:
            self._abs = self._x[torch.float64].abs()
        return self._abs

    def _integer_matmul(self, q: torch.Tensor) -> torch.Tensor:
        return self._ints @ q

    def _integer_rmatmul(self, q: torch.Tensor) -> torch.Tensor:
        return q.T @ self._ints

    def _rows_per_block(self, columns: int, itemsize: int) -> int:
        """Rows per pass block: about three [b, columns] temporaries within
        :data:`DEVICE_PASS_MEMORY` of the free device memory."""
        if self._fixed_block_rows:
            return self._fixed_block_rows
        if self.device.type != "cuda":
            return BLOCK_ROWS
        free, _ = torch.cuda.mem_get_info(self.device)
        rows = int(DEVICE_PASS_MEMORY * free / (3 * max(columns, 1) * itemsize))
        return max(1024, min(rows, 16 * BLOCK_ROWS, self.n))

    def grams(self, weights: torch.Tensor, dtype=torch.float32, on_gram=None) -> torch.Tensor:
        """G_k = Xᵀ diag(weights[:, k]) X for each column k of ``weights`` [n, m]:
        [m, width, width] in ``dtype``, each one product of the √w-scaled rows with
        themselves (in blocks of rows where memory is short)."""
        x = self.dense(dtype)
        root = weights.to(dtype).sqrt()
        out = torch.empty((weights.shape[1], self.width, self.width), dtype=dtype,
                          device=self.device)
        rows = self._rows_per_block(self.width, x.element_size())
        for k in range(weights.shape[1]):
            out[k].zero_()
            for lo in range(0, self.n, rows):
                scaled = x[lo:lo + rows] * root[lo:lo + rows, k:k + 1]
                out[k].addmm_(scaled.T, scaled)
            if on_gram is not None:
                on_gram()
        return out

    def pass_rows(self, v: torch.Tensor, transform, dtype=torch.float64):
        """As :meth:`DesignMatrix.pass_rows`, with dense blocks whose size follows the free
        device memory."""
        x = self.dense(dtype)
        vd = v.to(dtype)
        rows = self._rows_per_block(v.shape[1], x.element_size())
        acc = torch.zeros((v.shape[1], self.width), dtype=torch.float64, device=self.device)
        for lo in range(0, self.n, rows):
            hi = min(lo + rows, self.n)
            xb = x[lo:hi]
            dp = transform(xb @ vd, lo, hi)
            acc += dp.T @ xb
        return acc, rows


def _numpy_dtype(dtype):
    return np.float32 if dtype in (torch.float32, np.float32) else np.float64
