"""Leave-one-out for the CNN, chunk by chunk (:class:`CnnLooProblem`): Newton steps on R₋z
from θ̂ (the exact protocol; each error bar a first-order estimate, not a proof), or the
authors' Adam retraining (the paper protocol; no error bar)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.func import grad, vmap

from infl_cli.engines.cnn import autodiff
from infl_cli.engines.cnn import net as cnn
from infl_cli.engines.cnn.optim import MAX_NEWTON, PAPER_ADAM, Adam, Gauge, epoch_batches, lm_newton
from infl_cli.numerics.bounds import fnorm


class CnnLooProblem:
    """Leave-one-out for the CNN, chunk by chunk (the engines' ``solve_chunk``)."""

    result_keys = ("lambda_min",)

    def __init__(self, hessian, tensors, mrec, data, x_test, y_test, settings):
        """``hessian(obj)``: the Hessian at θ̂ (kept with the model, else formed)."""
        from infl_cli.engines.spec import spec_of

        self.spec = spec_of(mrec)
        self.theta = tensors["params"]
        self.arch = cnn.architecture_of(self.theta)
        self.wd = mrec["settings"]["wd"]
        self.obj = cnn.objective(self.arch, data, self.wd)
        self.n = self.obj.n
        self.device = self.theta.device
        self.x_test = cnn.images(x_test).to(torch.float64)
        self.y_test = y_test
        self.test_loss0 = self._test_losses(self.theta[None])[:, 0]
        self.error_kind = "estimate" if settings.method == "newton" else "none"
        self.hessian = None
        self.baseline_error = torch.full_like(self.test_loss0, math.nan)
        self.gauge = Gauge(self.arch, torch.float64, self.device)
        if settings.method == "newton":
            self.hessian = hessian(self.obj)
            lam = self.gauge.spectrum(self.hessian)["lambda_min"]
            g = self.obj.value_and_grad(self.theta)[1]
            if lam > 0:  # first-order estimate of θ̂'s own distance to its minimum
                self.baseline_error = self._grad_f_norms(self.theta[None])[:, 0] \
                    * g.norm() / lam
        elif "adam_m" in tensors:  # the paper's end point: its Adam state and final rate
            self.adam = (tensors["adam_m"], tensors["adam_v"], int(tensors["adam_step"][0]))
            self.retrain_lr = mrec["adam_final_lr"]
        else:  # the exact minimum has no Adam state: a fresh one, the paper's final rate
            self.adam = (None, None, 0)
            self.retrain_lr = PAPER_ADAM[1] * 0.01

    def _test_losses(self, thetas: torch.Tensor) -> torch.Tensor:
        """CE of every test point at each parameter vector: [T, k] (float64)."""
        return torch.stack([autodiff.cross_entropy(self.arch.logits(t.to(torch.float64),
                                                                    self.x_test), self.y_test)
                            for t in thetas], dim=1)

    def _grad_f_norms(self, thetas):
        """‖∇CE(z_t, θ)‖ for every test point and parameter vector: [T, k]."""
        out = []
        for t in thetas:
            g = self.obj.example_grads(t.to(torch.float64), self.x_test, self.y_test)
            out.append(g.norm(dim=1))
        return torch.stack(out, dim=1)

    def _own_grad(self, theta, z):
        """∇L(z, θ) = ∇CE(z, θ) + wd·M⊙θ for one training point."""
        x1, y1 = self.obj.x[z:z + 1], self.obj.y[z:z + 1]
        return self.obj.example_grads(theta, x1, y1)[0] + self.wd * self.obj.mask * theta

    def _loo_grad(self, theta, z):
        """∇R₋z(θ) = (n·∇R(θ) − ∇L(z, θ))/(n − 1)."""
        full = self.obj.value_and_grad(theta)[1]
        return (self.n * full - self._own_grad(theta, z)) / (self.n - 1)

    def solve_chunk(self, removed, selected, settings):
        removed = [int(z) for z in np.asarray(removed)]
        if settings.method == "adam":
            return self._adam_chunk(removed, settings)
        return self._newton_chunk(removed, settings)

    def _newton_chunk(self, removed, settings):
        """Each removal: chord Newton steps from θ̂ with H₋z(θ̂) (module doc) while they shrink
        ‖∇R₋z‖; where they stall, diverge or H₋z(θ̂) is not positive definite, the
        Levenberg–Marquardt Newton of training (:func:`lm_newton`) on R₋z itself from θ̂
        (flagged as a fallback). ``lambda_min``: λ_min of the last Newton matrix on the
        complement of U: H₋z(θ̂) for chord removals, R₋z's Hessian at its solution for
        fallbacks."""
        n, wd = self.n, self.wd
        mask = self.obj.mask
        k = len(removed)
        thetas = torch.empty((k, self.theta.shape[0]), dtype=torch.float64, device=self.device)
        grad_norm, lam_min = np.full(k, np.nan), np.full(k, np.nan)
        steps, fallback = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=bool)
        for i, z in enumerate(removed):
            own = self.obj.example_hessian(self.theta, self.obj.x[z], self.obj.y[z])
            newton = (n * self.hessian - n * wd * torch.diag(mask) - own) / (n - 1) \
                + wd * torch.diag(mask)
            lam_min[i] = self.gauge.spectrum(newton)["lambda_min"]
            chol, info = torch.linalg.cholesky_ex(self.gauge.shifted(newton))
            theta = self.theta.clone()
            g = self._loo_grad(theta, z)
            gn = fnorm(g)
            if lam_min[i] > 0 and int(info) == 0:
                for _ in range(settings.max_steps):
                    if gn <= settings.tol:
                        break
                    trial = theta - torch.cholesky_solve(self.gauge.project(g)[:, None],
                                                         chol)[:, 0]
                    trial_g = self._loo_grad(trial, z)
                    trial_gn = fnorm(trial_g)
                    steps[i] += 1
                    if not trial_gn < 0.9 * gn:  # stalls or diverges: the fallback
                        break
                    theta, g, gn = trial, trial_g, trial_gn
            if not gn <= settings.tol:
                weights = torch.ones(n, dtype=torch.float64, device=self.device)
                weights[z] = 0.0
                loo = self.obj.reweighted(weights)
                theta, info_z, h_z = lm_newton(loo, self.gauge, theta, settings.tol, MAX_NEWTON,
                                               hessian=loo.hessian, mu0=1e-8)
                gn = fnorm(self._loo_grad(theta, z))
                steps[i] += info_z["newton_steps"]
                lam_min[i] = self.gauge.spectrum(h_z)["lambda_min"]
                fallback[i] = True
            thetas[i], grad_norm[i] = theta, gn
        actual = (self._test_losses(thetas) - self.test_loss0[:, None]).cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            estimate = (self._grad_f_norms(thetas).cpu().numpy() * grad_norm[None, :]
                        / np.where(lam_min > 0, lam_min, np.nan)[None, :])
        results = {"actual_loss_diff": actual, "actual_error_bound": estimate,
                   "grad_norm": grad_norm, "grad_rounding": np.zeros(k), "steps": steps,
                   "fallback": fallback, "lambda_min": lam_min}
        return results, {"newton_steps": int(steps.sum())}

    def _adam_chunk(self, removed, settings):
        """The paper's "actual" change: ``retrain_steps`` Adam steps from θ̂ (its state
        restored) at the protocol's final learning rate, the removals of the chunk together
        (``vmap``), each leaving out its own point from the shared mini-batches."""
        arch, spec = self.arch, self.spec
        k = len(removed)
        theta0 = self.theta.to(torch.float32)
        thetas = theta0[None].repeat(k, 1)
        m, v, t = self.adam
        state = Adam(thetas, None if m is None else m[None].repeat(k, 1).to(torch.float32),
                     None if v is None else v[None].repeat(k, 1).to(torch.float32), t)
        x32 = self.obj.x.to(torch.float32)
        y = self.obj.y
        n = self.n
        batch = min(spec.train_batch, n)
        lr = self.retrain_lr
        mask = arch.decay_mask(torch.float32, self.device)
        gone = torch.tensor(removed, device=self.device)
        gen = torch.Generator().manual_seed(spec.seed + 2)

        def loss(t_, xb, yb, wb):
            ce = autodiff.cross_entropy(arch.logits(t_, xb), yb)
            return (wb * ce).sum() / wb.sum() + 0.5 * self.wd * (mask * t_).square().sum()

        gradient = vmap(grad(loss), in_dims=(0, None, None, 0))
        batches = epoch_batches(n, batch, gen)
        for _ in range(settings.retrain_steps):
            idx = next(batches).to(self.device)
            weights = (idx[None, :] != gone[:, None]).to(torch.float32)  # [k, b]
            thetas = state.update(thetas, gradient(thetas, x32[idx], y[idx], weights), lr)
        finals = thetas.to(torch.float64)
        actual = (self._test_losses(finals) - self.test_loss0[:, None]).cpu().numpy()
        grad_norm = np.array([fnorm(self._loo_grad(th, z)) for th, z in zip(finals, removed)])
        results = {"actual_loss_diff": actual,
                   "actual_error_bound": np.full_like(actual, np.nan),
                   "grad_norm": grad_norm, "grad_rounding": np.zeros(k),
                   "steps": np.full(k, settings.retrain_steps, dtype=np.int64),
                   "fallback": np.zeros(k, dtype=bool)}
        return results, {"adam_steps": settings.retrain_steps * k}
