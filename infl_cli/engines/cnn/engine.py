"""The engine of Koh & Liang's CNN (Figure 2, right): All-CNN-C (:mod:`.net`) on "small MNIST",
every derivative by automatic differentiation (:mod:`.autodiff`), two protocols.

**exact** (the default). Training: Adam (float32) warm-up, then Newton steps on the exact
Hessian (float64) with a Levenberg–Marquardt shift, until ‖∇R‖ ≤ ``tol`` (1e-10)
(:func:`lm_newton`); a local minimum is claimed only when that is reached and λ_min(H) > 0
(computed eigenvalues on the complement of the net's null direction, reported with λ_max and
the number of negative ones); otherwise the record says so (``converged``,
``local_minimum``) and no claim is made. Inverse-HVPs: the exact Hessian, Cholesky (``cg`` and ``lissa`` too,
with ``--damping``). LOO: from θ̂, Newton steps on R₋z with the Newton matrix
H₋z = (n·(H − wd·M) − ∇²CE_z)/(n − 1) + wd·M at θ̂ (the removed example's own Hessian is P
HVPs on one input), until ‖∇R₋z‖ ≤ ``tol``; λ_min(H₋z) is reported for each removal, and a
removal whose chord steps stall, diverge or start from an H₋z that is not positive definite
is finished by the Levenberg–Marquardt Newton of training on R₋z itself (flagged). The error bar of each actual change is a first-order *estimate*,
‖∇f_t‖·‖∇R₋z‖/λ_min(H₋z) (the distance to the nearby minimum for a locally convex R₋z), not
a proof: nothing here bounds the CNN's Hessian away from the iterate.

**paper** (the authors' protocol). Training: Adam in float32 at learning rate 1e-4, ×0.1
after ``decay_epochs[0]`` epochs and ×0.01 after ``decay_epochs[1]``, mini-batches of 500,
500,000 steps (options: their values are the defaults). Inverse-HVPs: conjugate gradients on
H + 0.01·I (damping 0.01). "Actual" changes: from θ̂, its Adam state restored, ``retrain``
(30,000) more mini-batch steps at the final learning rate on the data without the point, for
a chunk of removals at once (``vmap`` over the parameter vectors; the removals share one
stream of mini-batches, each with its own point left out), compared with θ̂'s test loss.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from infl_cli.engines.base import Engine
from infl_cli.engines.cnn import autodiff
from infl_cli.engines.cnn import net as cnn
from infl_cli.engines.cnn.loo import CnnLooProblem
from infl_cli.engines.cnn.optim import (
    MAX_NEWTON,
    Gauge,
    adam_settings,
    adam_train,
    exact_hessian,
    learning_rate,
    lm_newton,
)
from infl_cli.engines.policy import CnnPolicy
from infl_cli.errors import InflError
from infl_cli.numerics.bounds import fnorm
from infl_cli.numerics.ihvp import cg_with_progress
from infl_cli.numerics.linalg import batched_norm
from infl_cli.numerics.solvers import Operator
from infl_cli.runtime import progress

CPU_CHUNK, DEVICE_CHUNK = 10, 100


class CnnEngine(CnnPolicy, Engine):
    tensor_names = ("params", "hessian")

    def describe(self, spec) -> str:
        arch = cnn.Architecture(spec.width)
        return (f"All-CNN-C, width {spec.width} ({arch.n_params:,} parameters), "
                f"{spec.protocol} protocol")

    # --------------------------------------------------------------------------- train
    def fit(self, data, wd: float, tol: float, max_iter: int, spec):
        start = time.perf_counter()
        arch = cnn.Architecture(spec.width)
        steps, _ = adam_settings(spec)
        theta32 = arch.init(spec.seed, torch.float32).to(data.device)
        images32 = cnn.images(data.x_train).to(torch.float32)
        theta32, state = adam_train(arch, theta32, images32, data.y_train, wd, spec, steps,
                                    description=f"train: Adam ({spec.protocol})")
        adam_seconds = time.perf_counter() - start
        obj = cnn.objective(arch, data, wd)
        theta = theta32.to(torch.float64)
        tensors = {"params": theta}
        info = {"adam_steps": steps, "adam_seconds": adam_seconds,
                "adam_final_lr": learning_rate(spec, max(state.t - 1, 0),
                                               max(1, data.n_train // min(spec.train_batch,
                                                                          data.n_train)))}
        if spec.protocol == "exact":
            gauge = Gauge(arch, theta.dtype, theta.device)
            steps = []

            def show(gn):  # one line per accepted step (each Hessian has its own bar)
                steps.append(gn)
                progress.console.print(f"train: Newton step {len(steps)}: ‖∇R‖ = {gn:.2e} "
                              f"(goal {tol:.0e})", highlight=False)

            theta, newton, hessian = lm_newton(obj, gauge, theta, tol,
                                               min(max_iter, MAX_NEWTON), show=show)
            info.update(newton)
            tensors = {"params": theta, "hessian": hessian}
            info.update(gauge.spectrum(hessian))
        else:
            tensors.update(adam_m=state.m, adam_v=state.v,
                           adam_step=torch.tensor([state.t], dtype=torch.int64))
        loss, g = obj.value_and_grad(theta)
        gn = fnorm(g)
        if not math.isfinite(gn):
            raise InflError("CNN training diverged (non-finite gradient); lower --adam-lr")
        info.update(train_loss=float(loss), grad_norm=gn, n_params=arch.n_params,
                    width=spec.width, seconds=time.perf_counter() - start)
        if spec.protocol == "exact":  # claims only at a stationary point with H ≻ 0
            info["converged"] = gn <= tol
            info["local_minimum"] = info["converged"] and info["lambda_min"] > 0
        return tensors, info

    def probabilities(self, tensors, x) -> torch.Tensor:
        theta = tensors["params"]
        arch = cnn.architecture_of(theta)
        out = [torch.softmax(arch.logits(theta, cnn.images(x[lo:lo + 2048]).to(theta.dtype)), 1)
               for lo in range(0, x.shape[0], 2048)]
        return torch.cat(out)

    def test_gradients(self, tensors, x, y) -> torch.Tensor:
        theta = tensors["params"]
        arch = cnn.architecture_of(theta)
        obj = autodiff.Objective(arch.logits, cnn.images(x), y, 0.0,
                                 arch.decay_mask(device=theta.device), cnn.activations(arch))
        return obj.all_example_grads(theta, cnn.images(x), y)

    # ---------------------------------------------------------------------------- ihvp
    @staticmethod
    def hessian(tensors, obj):
        """The Hessian at θ̂: kept with the model (the exact protocol), else formed."""
        if "hessian" in tensors:
            return tensors["hessian"]
        return exact_hessian(obj, tensors["params"], "the Hessian at this end point")

    def operator(self, tensors, mrec, data, keeper=None) -> "CnnOperator":
        return CnnOperator(self, tensors, mrec, data)

    # --------------------------------------------------------------------------- score
    def scores(self, tensors, mrec, data, ihvps):
        theta = tensors["params"]
        arch = cnn.architecture_of(theta)
        wd = mrec["settings"]["wd"]
        obj = cnn.objective(arch, data, wd)
        g = obj.all_example_grads(theta, obj.x, obj.y)  # ∇CE_i [n, P]
        reg = wd * (obj.mask * theta)  # the regulariser's part of every ∇L_i
        influence = -(ihvps @ g.T + (ihvps @ reg)[:, None])
        return influence, -influence / data.n_train

    # ----------------------------------------------------------------------------- loo
    def auto_chunk_size(self, device, spec, data, settings) -> int:
        return DEVICE_CHUNK if device.type == "cuda" else CPU_CHUNK

    def result_keys(self, settings) -> tuple:
        return ("lambda_min",) if settings.method == "newton" else ()

    def loo_summary(self, arrays, settings) -> dict:
        if settings.method == "newton":
            lam = arrays["lambda_min"]
            return {"error_kind": "estimate",
                    "lambda_min_smallest": float(np.nanmin(lam)) if np.isfinite(lam).any()
                    else None,
                    "all_newton_matrices_positive_definite": bool((lam > 0).all())}
        return {"error_kind": "none"}

    def loo_problem(self, tensors, mrec, data, x_test, y_test, settings, on_block=None,
                    keeper=None):
        problem = CnnLooProblem(lambda obj: self.hessian(tensors, obj), tensors, mrec, data,
                                x_test, y_test, settings)
        if on_block is not None:
            on_block()
        return problem


class CnnOperator(Operator):
    """The CNN's curvature at θ̂, with the damping λ of H + λI: solves on the complement of the
    net's null direction (test gradients are orthogonal to it). The exact solve's error bound
    is an estimate from the computed λ_min of H + λI (float64 eigenvalues), not a proof; CG
    and LiSSA have none."""

    def __init__(self, engine: CnnEngine, tensors, mrec, data):
        self.engine, self.tensors = engine, tensors
        self.theta = tensors["params"]
        self.arch = cnn.architecture_of(self.theta)
        self.obj = cnn.objective(self.arch, data, mrec["settings"]["wd"])
        self.gauge = Gauge(self.arch, self.theta.dtype, self.theta.device)
        self.lam_min = None

    def prepare(self, rhs):
        return self.gauge.project(rhs)  # ∇L_test ⟂ U up to rounding: solves on the complement

    def exact(self, rhs, damping: float):
        h = self.engine.hessian(self.tensors, self.obj)
        a = h + damping * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
        report = {"settings": {"damping": damping}, **self.gauge.spectrum(h)}
        self.lam_min = report["lambda_min"] + damping
        if self.lam_min > 0:
            chol = torch.linalg.cholesky(self.gauge.shifted(a))
            est = torch.cholesky_solve(rhs.T, chol).T
            report["factorisation"] = "Cholesky (positive definite on the complement of U)"
        else:  # indefinite: the solve on its eigenbasis (no zero eigenvalue expected)
            evals, evecs = torch.linalg.eigh(self.gauge.shifted(a))
            est = ((rhs @ evecs) / evals) @ evecs.T
            report["factorisation"] = (f"eigendecomposition (indefinite: "
                                       f"{report['negative_eigenvalues']} negative "
                                       f"eigenvalues)")
        report.update(iterations=1, hvps=0)
        return est, report

    def cg(self, rhs, settings, damping: float):
        def apply_h(v):
            return self.obj.hvp(self.theta, v) + damping * v

        est, iters, hvps = cg_with_progress(apply_h, rhs, settings)
        return est, {"iterations": iters, "hvps": hvps,
                     "settings": {"damping": damping, "rtol": settings.rtol,
                                  "max_iter": settings.max_iter}}

    def curvature(self):
        return CnnCurvature(self.obj, self.theta)

    def error(self, est, rhs, damping: float):
        residual = batched_norm(self.obj.hvp(self.theta, est) + damping * est - rhs)
        residual = residual.cpu().numpy()
        note = ("from the computed λ_min of H + λI (float64 eigenvalues), not a proof"
                if self.lam_min is not None else
                "not available: no eigenvalue bound without the Hessian")
        return residual, np.zeros_like(residual), self.lam_min, False, note


class CnnCurvature:
    """Mini-batch HVPs of the CNN's objective, for the shared LiSSA recursion."""

    def __init__(self, obj, theta):
        self.obj, self.theta = obj, theta
        self.n = obj.n
        self.floor = obj.wd  # a guess for the divergence check only: the CNN's H is not ⪰ wd

    def permute(self, perm):
        self.xp, self.yp = self.obj.x[perm], self.obj.y[perm]

    def _hvp(self, x, y, v):
        sub = autodiff.Objective(self.obj.logits, x, y, self.obj.wd, self.obj.mask,
                                 self.obj.activations)
        return sub.hvp(self.theta, v)

    def block(self, lo, hi, v):
        return self._hvp(self.xp[lo:hi], self.yp[lo:hi], v)

    def rows(self, idx, v):
        return self._hvp(self.obj.x[idx], self.obj.y[idx], v)


ENGINE = CnnEngine()
