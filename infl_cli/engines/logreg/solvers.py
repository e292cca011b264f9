"""The logistic model's curvature for the inverse-HVP solvers
(:mod:`~infl_cli.numerics.solvers`): s_t = H⁻¹ ∇CE(z_test_t, Ŵ), one per test point, all in
float64 on closed-form Hessian-vector products (:mod:`~infl_cli.engines.logreg.model`).

* exact: the closed-form dense Hessian over the active features, Cholesky-factored (the
  reference; the work folder's kept factor when there is one, :mod:`.hessian`);
* CG: conjugate gradients with full-batch Hessian-vector products over the active features,
  preconditioned by :class:`~infl_cli.engines.logreg.hessian.SubspacePreconditioner`
  (``cg_rank`` 0: plain CG, as the authors ran it); on the other features H = wd·I and the
  solution is g/wd exactly;
* LiSSA: mini-batch Hessian-vector products on rows of the dense inputs
  (:class:`LogisticCurvature`).

Every solve ends with the true residual ‖Hs − g‖ from certified products with the design, its
rounding bounded (:func:`~infl_cli.engines.logreg.model.certified_residual`); λ_min(H) ≥ wd
turns it into a proven error bound.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from infl_cli.engines.logreg import model
from infl_cli.engines.logreg.hessian import SubspacePreconditioner
from infl_cli.numerics.ihvp import cg_with_progress
from infl_cli.numerics.solvers import Operator
from infl_cli.runtime import memory
from infl_cli.runtime.progress import progress_bar
from infl_cli.settings import CgSettings


class LogisticCurvature:
    """Mini-batch Hessian-vector products of the logistic model, for LiSSA: the data and their
    probabilities at W are permuted once (one copy) so that a batch is a contiguous block."""

    def __init__(self, weight, x, wd: float):
        self.weight, self.x, self.wd = weight, x, wd
        self.probs = model.probabilities(weight, x)
        self.n = int(x.shape[0])
        self.floor = wd  # λ_min(H) ≥ wd

    def permute(self, perm: torch.Tensor) -> None:
        self.xp, self.pp = self.x[perm], self.probs[perm]

    def block(self, lo: int, hi: int, v: torch.Tensor) -> torch.Tensor:
        return model.hvp(self.weight, self.xp[lo:hi], self.wd, v, probs=self.pp[lo:hi])

    def rows(self, idx: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return model.hvp(self.weight, self.x[idx], self.wd, v, probs=self.probs[idx])


class LogisticOperator(Operator):
    """H(W) of the logistic model W [C, d] on ``design`` (the training inputs), for the
    solvers. ``dense``: a function giving the dense inputs [n, d] (LiSSA samples their rows;
    the design's own when not given, made only when LiSSA runs); ``certificate``: training's certified gradient at W (its probabilities are
    reused); ``keeper``: the work folder's kept matrices (the exact solve takes its Cholesky
    factor from there, and keeps it there)."""

    def __init__(self, weight, wd: float, design, dense=None, certificate=None, keeper=None):
        self.weight, self.wd, self.design = weight, float(wd), design
        self.dense = dense or design.dense
        self.certificate, self.keeper = certificate, keeper

    def exact(self, rhs, damping: float):
        from infl_cli.engines.logreg.hessian import HessianFactor, kept_factor

        c = self.weight.shape[0]
        memory.require_hessian(c, self.design.width, 8, "--solver exact",
                               "use --solver cg or --solver lissa (Hessian-free)")
        if self.keeper is not None:
            factor = kept_factor(self.keeper, self.weight, self.design, self.wd, torch.float64)
        else:
            with progress_bar("ihvp exact: Hessian blocks", total=c * (c - 1) // 2) as update:
                factor = HessianFactor(self.weight, self.design, self.wd, on_block=update)
        return factor.solve(rhs), {"settings": {}, "iterations": 1, "hvps": 0,
                                   "factored_dimension": factor.dimension}

    def cg(self, rhs, settings: CgSettings, damping: float):
        """(Preconditioned) CG over the features active in the training data; on the others H
        is wd·I and the solution is rhs/wd exactly."""
        if settings.rank > 0:
            memory.require_gram(self.design.width, "--solver cg's preconditioner",
                                "use --cg-rank 0 (plain CG) or --solver lissa")
        design, weight, wd = self.design, self.weight, self.wd
        active = design.active.to(weight.device)
        wa = weight[:, active].contiguous()
        probs = self.certificate.probs if self.certificate is not None else \
            model.probabilities(wa, design)
        start = time.perf_counter()
        precondition = (SubspacePreconditioner(wa, design, wd, settings.rank, probs)
                        if settings.rank > 0 else None)
        setup = time.perf_counter() - start
        sol, iters, hvps = cg_with_progress(lambda v: model.hvp(wa, design, wd, v, probs=probs),
                                            rhs[:, :, active].contiguous(), settings,
                                            precondition)
        est = rhs / wd
        est[:, :, active] = sol
        return est, {"settings": asdict(settings), "iterations": iters, "hvps": hvps,
                     "preconditioner_seconds": setup}

    def curvature(self):
        return LogisticCurvature(self.weight, self.dense(), self.wd)

    def error(self, est, rhs, damping: float):
        residual, rounding = model.certified_residual(self.weight, self.design, self.wd, est,
                                                      rhs, self.certificate)
        return residual, rounding, self.wd, True, None
