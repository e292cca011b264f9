"""The logistic model's Hessian as the solvers use it: :class:`HessianFactor` (H(W) formed in
closed form from Gram blocks over the active features, Cholesky-factored or inverted, for exact
solves) and :class:`SubspacePreconditioner` (H exact on the inputs' principal subspace, for
conjugate gradients). Vectors are [k, C, d] (k right-hand sides, solved together)."""

from __future__ import annotations

import torch

from infl_cli.engines.logreg import model


class SubspacePreconditioner:
    """M⁻¹ ≈ H⁻¹ for conjugate gradients, exact on the inputs' principal subspace.

    Q [d, r] holds the top ``rank`` eigenvectors of the curvature-weighted input Gram matrix
    Σ_i (1 − ‖p_i‖²)·x_i x_iᵀ (tr S_i = 1 − ‖p_i‖² weighs each example by its curvature).
    On the subspace I_C ⊗ Q, M is H's exact restriction (:func:`model.hessian_in_basis`,
    Cholesky-factored); on its orthogonal complement M = μ·I with μ = wd + the mean data
    curvature there. M is symmetric positive definite, costs one to two seconds to build on
    full MNIST (r = 64), and leaves CG the flat low-curvature part of the spectrum only.
    Vectors are [k, C, d] for the same x given here.
    """

    def __init__(self, weight: torch.Tensor, x, wd: float, rank: int = 64,
                 probs: torch.Tensor | None = None):
        """``x``: the inputs [n, d] or a design over their active columns (then ``weight``
        is [C, d_active])."""
        c, d = weight.shape
        n = model.n_rows(x)
        p = model.probabilities(weight, x) if probs is None else probs
        curvature = (1.0 - p.square().sum(1)).clamp_min(0)  # tr S_i
        rank = max(1, min(rank, d))
        gram = model.gram(x, curvature, dtype=torch.float32).to(torch.float64) / n
        self.basis = torch.linalg.eigh(gram)[1][:, -rank:].flip(1).contiguous()  # [d, r]
        z = model.times(x, self.basis)
        self.chol = torch.linalg.cholesky(model.hessian_in_basis(weight, x, wd, self.basis, p, z))
        self.classes, self.rank = c, rank
        if rank < d:
            outside = (model.row_sq_norms(x) - z.square().sum(1)).clamp_min(0)
            mean_curv = float((curvature * outside).sum()) / (n * c * (d - rank))
        else:
            mean_curv = 0.0
        self.complement = wd + mean_curv

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        k = v.shape[0]
        proj = v @ self.basis  # [k, C, r]
        inside = torch.cholesky_solve(proj.reshape(k, -1).T, self.chol).T
        inside = inside.reshape(k, self.classes, self.rank)
        return (v - proj @ self.basis.T) / self.complement + inside @ self.basis.T


class HessianFactor:
    """Cholesky factor of H = ∇²R(W) (closed form), for exact solves H⁻¹v.

    Only the features active in the training data enter the dense factor; on the others H
    is wd·I and the solve is v / wd. ``dtype`` float32 builds a preconditioner in about half
    the time (results are then accurate to about 1e-6 relative, fine wherever the caller
    certifies its own result, as LOO does); ``explicit_inverse=True`` forms H⁻¹ and drops
    the factor, which makes solves plain matrix products and :meth:`solve_kron` cheap.
    """

    def __init__(self, weight: torch.Tensor, x, wd: float, on_block=None,
                 dtype: torch.dtype = torch.float64, explicit_inverse: bool = False):
        """``x``: the training inputs [n, d], or a design of them (:mod:`~infl_cli.data.design`,
        reused by callers that keep one); the factor lives on the design's device."""
        from infl_cli.data.design import make_design

        design = make_design(x.cpu(), device=x.device) if isinstance(x, torch.Tensor) else x
        self.shape = tuple(weight.shape)
        self.wd = wd
        self.dtype = dtype
        self.active = design.active.to(design.device)
        h = model.hessian_reduced(weight, design, wd, on_block=on_block, dtype=dtype)
        self.chol, info = torch.linalg.cholesky_ex(h)
        del h
        if int(info) != 0:
            raise ValueError("the Hessian is not positive definite (weight decay must be > 0)")
        self.dimension = int(self.chol.shape[0])  # features active × classes
        self.inverse = None
        if explicit_inverse:
            # cholesky_inverse returns an exactly symmetric matrix in column-major layout, with
            # which torch's products with a few columns run 10x slower; its transpose is the
            # same matrix, row-major, for free
            self.inverse = torch.cholesky_inverse(self.chol).mT
            self.chol = None  # solves are products with the inverse: free the factor

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor, form: str, classes: int, wd: float,
                    active: torch.Tensor) -> "HessianFactor":
        """A factor from a kept matrix over the active features: the Cholesky factor L of H
        (``form`` "cholesky") or H⁻¹ itself ("inverse"); ``active`` the design's mask [d]."""
        self = cls.__new__(cls)
        self.shape = (classes, int(active.sum()))
        self.wd, self.dtype, self.active = wd, matrix.dtype, active.to(matrix.device)
        self.dimension = int(matrix.shape[0])
        self.chol, self.inverse = (matrix, None) if form == "cholesky" else (None, matrix)
        return self

    @property
    def form(self) -> str:
        return "inverse" if self.inverse is not None else "cholesky"

    @property
    def matrix(self) -> torch.Tensor:
        """What the factor holds: H⁻¹, or the Cholesky factor L (H = LLᵀ)."""
        return self.inverse if self.inverse is not None else self.chol

    def inverted(self, dtype: torch.dtype = torch.float32) -> "HessianFactor":
        """The explicit-inverse factor in ``dtype`` made from this Cholesky factor (L rounded
        to ``dtype`` first: as accurate as factoring in ``dtype``, without forming H again)."""
        inverse = torch.cholesky_inverse(self.chol.to(dtype)).mT
        return HessianFactor.from_matrix(inverse, "inverse", self.shape[0], self.wd,
                                         self.active)

    def _solve_reduced(self, red: torch.Tensor) -> torch.Tensor:
        red = red.to(self.dtype)
        if self.inverse is not None:
            return (self.inverse @ red).to(torch.float64)
        return torch.cholesky_solve(red, self.chol).to(torch.float64)

    @property
    def width(self) -> int:
        """Number of active features (the factor is over C × width parameters)."""
        return self.dimension // self.shape[0]

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """H⁻¹ v for v [C, d] or [k, C, d] (float64 in and out). Vectors over the active
        features only ([.., C, d_active]) are solved in that space."""
        single = v.dim() == 2
        vv = v[None] if single else v
        k, c, d = vv.shape
        if d == self.width:
            return self._solve_reduced(vv.reshape(k, -1).T).T.reshape(v.shape)
        out = vv / self.wd
        red = vv[:, :, self.active].reshape(k, -1).T
        sol = self._solve_reduced(red)
        out[:, :, self.active] = sol.T.reshape(k, c, -1)
        return out[0] if single else out

    def solve_kron(self, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """H⁻¹(f_km ⊗ x_k) for f [K, m, C] and x [K, d] (or [K, d_active]): [K, m, C, d].

        With the explicit inverse this contracts H⁻¹'s columns with x first (one product of
        [C·d_a·C, d_a] by [d_a, K]), C times cheaper than solving the K·m vectors."""
        k, m, c = f.shape
        if self.inverse is None:
            u = f[:, :, :, None] * x[:, None, None, :]
            return self.solve(u.reshape(k * m, c, -1)).reshape(k, m, c, -1)
        n_red = self.inverse.shape[0]
        in_active = x.shape[1] == self.width
        xa = (x if in_active else x[:, self.active]).to(self.dtype)  # [K, d_a]
        da = xa.shape[1]
        gx = (self.inverse.reshape(n_red * c, da) @ xa.T).reshape(n_red, c, k)
        # Σ_c gx[r, c, k]·f[k, m, c] as an explicit sum over the C classes: torch's einsum
        # sends it to a batched GEMM whose bits depend on the number of threads
        fs = f.to(self.dtype)
        red = torch.zeros(k, m, n_red, dtype=self.dtype, device=fs.device)
        for cls in range(c):
            red.addcmul_(gx[:, cls, :].T[:, None, :], fs[:, :, cls, None])
        red = red.to(torch.float64)
        if in_active:
            return red.reshape(k, m, c, da)
        out = f[:, :, :, None] * x[:, None, None, :] / self.wd
        out[:, :, :, self.active] = red.reshape(k, m, c, da)
        return out


KEPT_NAMES = {torch.float32: "hessian-inverse32", torch.float64: "hessian-cholesky64"}
KEPT_FORMS = {torch.float32: "inverse", torch.float64: "cholesky"}


def _kept_settings(dtype, wd: float) -> dict:
    return {"dtype": str(dtype).replace("torch.", ""), "form": KEPT_FORMS[dtype], "wd": wd}


def _load_kept(keeper, dtype, classes: int, wd: float, design) -> HessianFactor | None:
    matrix = keeper.load(KEPT_NAMES[dtype], _kept_settings(dtype, wd))
    if matrix is None or matrix.shape[0] != classes * design.width:
        return None
    return HessianFactor.from_matrix(matrix.to(design.device), KEPT_FORMS[dtype], classes, wd,
                                     design.active)


def kept_factor(keeper, weight: torch.Tensor, design, wd: float, dtype=torch.float32,
                on_block=None) -> HessianFactor:
    """H(Ŵ)'s factor for ``dtype`` through the work folder's ``keeper``
    (:class:`~infl_cli.runtime.kept.Keeper`): float32, the explicit inverse (LOO's
    preconditioner; ``hessian-inverse32.safetensors``, 204 MB on MNIST); float64, the Cholesky
    factor (exact solves, self-influence; ``hessian-cholesky64.safetensors``, 409 MB). Kept,
    derived from the kept float64 factor (2 s instead of 7–10 s), or formed (and then kept).

    Forming and factoring the dense Hessian is the costliest set-up here (full MNIST: 7,150 ×
    7,150 over the active pixels; 7–10 s in float32, about 25 s in float64 on two cores). The
    float32 inverse only ever preconditions iterations that float64 passes certify, and the
    float64 factor's solves report their own certified residuals, so a kept factor changes no
    figure's meaning."""
    import time

    from infl_cli.errors import InflError
    from infl_cli.runtime.progress import progress_bar

    classes = int(weight.shape[0])
    found = _load_kept(keeper, dtype, classes, wd, design)
    if found is not None:
        keeper.used[str(dtype)] = "kept"
        return found
    start = time.perf_counter()
    factor = None
    if dtype == torch.float32:
        wider = _load_kept(keeper, torch.float64, classes, wd, design)
        if wider is not None:
            factor = wider.inverted(torch.float32)
            keeper.used[str(dtype)] = "derived from the kept float64 factor"
    if factor is None:
        try:
            if on_block is None:
                with progress_bar(f"Hessian ({str(dtype).replace('torch.', '')}): Gram blocks",
                                  total=classes * (classes - 1) // 2) as update:
                    factor = HessianFactor(weight, design, wd, on_block=update, dtype=dtype,
                                           explicit_inverse=dtype == torch.float32)
            else:
                factor = HessianFactor(weight, design, wd, on_block=on_block, dtype=dtype,
                                       explicit_inverse=dtype == torch.float32)
        except ValueError as exc:
            raise InflError(str(exc)) from None
        keeper.used[str(dtype)] = "formed"
    keeper.keep(KEPT_NAMES[dtype], factor.matrix, _kept_settings(dtype, wd),
                {"dimension": factor.dimension, "seconds": time.perf_counter() - start})
    return factor
