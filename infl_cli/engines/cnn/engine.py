"""The engine of Koh & Liang's CNN (Figure 2, right): All-CNN-C (:mod:`cnn`) on "small MNIST",
every derivative by automatic differentiation (:mod:`autodiff`), two protocols.

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
from dataclasses import asdict

import numpy as np
import torch
from torch.func import grad, vmap

from infl_cli.engines.cnn import autodiff, net as cnn
from infl_cli.numerics.bounds import fnorm
from infl_cli.engines.spec import CnnPolicy
from infl_cli.errors import InflError
from infl_cli.engines.logreg.solvers import cg_with_progress
from infl_cli.engines.logreg.solvers import lissa as lissa_recursion
from infl_cli.numerics.linalg import batched_norm
from infl_cli.runtime.progress import console, progress_bar

EXACT_ADAM = (10_000, 1e-3)   # warm-up steps, learning rate
PAPER_ADAM = (500_000, 1e-4)  # all of training, the authors' schedule
MAX_NEWTON = 50
CPU_CHUNK, DEVICE_CHUNK = 10, 100
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # TensorFlow's AdamOptimizer defaults


def adam_settings(spec) -> tuple[int, float]:
    steps, lr = EXACT_ADAM if spec.protocol == "exact" else PAPER_ADAM
    return (steps if spec.adam_steps is None else spec.adam_steps,
            lr if spec.adam_lr is None else spec.adam_lr)


def learning_rate(spec, step: int, steps_per_epoch: int) -> float:
    """The protocol's learning rate at ``step``: paper: ×1, ×0.1, ×0.01 by epoch (the
    authors' ``decay_epochs``); exact: constant (a warm-up only)."""
    _, lr = adam_settings(spec)
    if spec.protocol == "exact":
        return lr
    epoch = step // steps_per_epoch
    first, second = spec.decay_epochs
    return lr * (1.0 if epoch < first else 0.1 if epoch < second else 0.01)


def _architecture(theta: torch.Tensor) -> cnn.Architecture:
    """The architecture a parameter vector belongs to (its width, from its length)."""
    p = theta.shape[-1]
    for width in range(1, 257):
        arch = cnn.Architecture(width)
        if arch.n_params == p:
            return arch
    raise InflError(f"no All-CNN-C width has {p} parameters")


def _activations(arch: cnn.Architecture) -> int:
    w = arch.width
    return 784 + w * (26 * 26 + 12 * 12 + 10 * 10 + 4 * 4 + 2 * 2) + cnn.CLASSES * 4


def _objective(arch: cnn.Architecture, data, wd: float, dtype=torch.float64):
    return autodiff.Objective(arch.logits, cnn.images(data.x_train).to(dtype), data.y_train,
                              wd, arch.decay_mask(dtype, data.device), _activations(arch))


def _estimate_hessian_time(obj, theta):
    """(Seconds to form the exact Hessian, from one chunk of HVPs; that chunk: H's first rows,
    kept for :meth:`~infl_cli.engines.cnn.autodiff.Objective.hessian`)."""
    probe = min(8, theta.shape[0])
    start = time.perf_counter()
    rows = obj.hvp(theta, torch.eye(theta.shape[0], dtype=theta.dtype,
                                    device=theta.device)[:probe])
    return (time.perf_counter() - start) * theta.shape[0] / probe, rows


def exact_hessian(obj, theta, what: str = "the exact Hessian") -> torch.Tensor:
    """H(θ) [P, P] with a progress bar, after printing the estimated time when it is long
    (the full-width net on a CPU: hours)."""
    p = theta.shape[0]
    estimate, first_rows = _estimate_hessian_time(obj, theta)
    if estimate > 120:
        console.print(f"forming {what} ({p:,} × {p:,}, {p:,} Hessian-vector products) takes "
                      f"about {estimate / 3600:.1f} h on {theta.device}; going on",
                      highlight=False, soft_wrap=True)
    with progress_bar(f"hessian ({p} HVPs)", total=p) as update:
        return obj.hessian(theta, on_chunk=lambda done: update(completed=done),
                           first_rows=first_rows)


class Gauge:
    """The complement of the net's null directions U [P, r] (the dense bias's shift: every
    loss is constant along it, :meth:`cnn.Architecture.null_directions`). Spectra are those
    of H restricted to the complement; solves and Newton steps use H + s·UUᵀ with s = ‖H‖_F + 1,
    which leaves every solution for a right-hand side orthogonal to U unchanged (H·U = 0) and
    puts the gauge eigenvalue above all others."""

    def __init__(self, arch: cnn.Architecture, dtype=torch.float64, device=None):
        self.u = arch.null_directions(dtype, device)
        complete, _ = torch.linalg.qr(self.u, mode="complete")
        self.basis = complete[:, self.u.shape[1]:]  # [P, P − r], orthonormal

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """v [..., P] with its components along U removed."""
        return v - (v @ self.u) @ self.u.T

    def shifted(self, h: torch.Tensor) -> torch.Tensor:
        return h + (float(torch.linalg.matrix_norm(h)) + 1.0) * (self.u @ self.u.T)

    def spectrum(self, h: torch.Tensor) -> dict:
        """λ_min, λ_max and the number of negative eigenvalues of H on the complement of U
        (computed, float64), and ‖H·U‖ (the null direction's curvature: rounding only)."""
        evals = torch.linalg.eigvalsh(self.basis.T @ h @ self.basis)
        return {"lambda_min": float(evals[0]), "lambda_max": float(evals[-1]),
                "negative_eigenvalues": int((evals < 0).sum()),
                "null_direction_curvature": float(torch.linalg.matrix_norm(h @ self.u))}


# ------------------------------------------------------------------------------ Adam

class Adam:
    """TensorFlow's Adam on parameter vectors [..., P] (one model, or a stack of them):
    lr_t = lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ), θ ← θ − lr_t·m/(√v + ε)."""

    def __init__(self, theta: torch.Tensor, m=None, v=None, step: int = 0):
        self.m = torch.zeros_like(theta) if m is None else m.clone()
        self.v = torch.zeros_like(theta) if v is None else v.clone()
        self.t = int(step)

    def update(self, theta: torch.Tensor, g: torch.Tensor, lr: float) -> torch.Tensor:
        b1, b2 = ADAM_BETAS
        self.t += 1
        self.m.mul_(b1).add_(g, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        lr_t = lr * math.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t)
        return theta - lr_t * self.m / (self.v.sqrt() + ADAM_EPS)


def _epoch_batches(n: int, batch: int, generator):
    """Index batches of the authors' DataSet.next_batch: a fresh permutation each epoch, cut
    into consecutive batches (a last short one dropped)."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for lo in range(0, n - batch + 1, batch):
            yield perm[lo:lo + batch]


def adam_train(arch, theta, x, y, wd, spec, steps: int, state: Adam | None = None,
               description: str = "train: Adam"):
    """``steps`` mini-batch Adam steps (float32, as the authors' TensorFlow code) from θ;
    returns (θ, Adam state)."""
    n = int(y.shape[0])
    batch = min(spec.train_batch, n)
    per_epoch = max(1, n // batch)
    mask = arch.decay_mask(theta.dtype, theta.device)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    state = state or Adam(theta)

    def loss(t, xb, yb):
        return (autodiff.cross_entropy(arch.logits(t, xb), yb).mean()
                + 0.5 * wd * (mask * t).square().sum())

    gradient = grad(loss)
    batches = _epoch_batches(n, batch, gen)
    with progress_bar(description, total=steps) as update:
        for step in range(steps):
            idx = next(batches).to(theta.device)
            lr = learning_rate(spec, state.t, per_epoch)
            theta = state.update(theta, gradient(theta, x[idx], y[idx]), lr)
            if step % 200 == 0 or step == steps - 1:
                update(completed=step + 1, status=f"lr {lr:.0e}")
    return theta, state


# ---------------------------------------------------------------------------- Newton

def lm_newton(obj, gauge: Gauge, theta, tol: float, max_steps: int = MAX_NEWTON, show=None,
              hessian=None, mu0: float = 1e-3):
    """Newton steps on the exact Hessian with a Levenberg–Marquardt shift, until ‖∇R‖ ≤ tol;
    returns (θ, info, H(θ)).

    Each Hessian (P HVPs) is eigendecomposed with the null direction shifted away (:class:`Gauge`);
    the step is d = −(|H| + μI)⁻¹∇R, |H| the Hessian with the signs of its eigenvalues dropped
    ("saddle-free Newton", Dauphin et al. 2014): a descent direction that moves away from
    negative curvature and takes short steps along stiff directions. μ follows Nielsen's rule
    on the ratio ρ of R's actual decrease to the one the quadratic model (with H itself)
    predicts: a step is accepted when ρ > 1e-4, and then μ ← μ·max(⅓, 1 − (2ρ − 1)³);
    otherwise μ ← μ·ν with ν doubling, on the same Hessian. Where R no longer resolves the
    decrease, a step that lowers ‖∇R‖ is accepted. Near a minimum with H ≻ 0, μ shrinks
    geometrically and the steps become Newton's, quadratically convergent. μ starts at
    ``mu0``·max|λ| (1e-3; LOO, starting near its minimum: 1e-8). The Hessian of the last
    iterate is returned: its spectrum decides the claim
    of a local minimum. ``hessian(θ)`` forms each Hessian (default: with a progress bar)."""
    if hessian is None:
        def hessian(t):
            return exact_hessian(obj, t, "the Hessian for Newton's steps")
    history, hessians = [], 0
    loss, g = obj.value_and_grad(theta)
    gn = fnorm(g)
    history.append(gn)
    mu, nu = None, 2.0
    h = evals = evecs = None
    fresh = False
    for _ in range(max_steps):
        if gn <= tol:
            break
        if not fresh:
            h = hessian(theta)
            hessians += 1
            evals, evecs = torch.linalg.eigh(gauge.shifted(h))
            fresh = True
            if mu is None:
                mu = mu0 * float(evals.abs().max())
        gv = evecs.T @ gauge.project(g)
        coef = -gv / (evals.abs() + mu)
        predicted = -(float(gv @ coef) + 0.5 * float((evals * coef * coef).sum()))
        new_loss, new_g = obj.value_and_grad(theta + evecs @ coef)
        new_gn = fnorm(new_g)
        actual = float(loss) - float(new_loss)
        rho = actual / predicted if predicted > 0 else -1.0
        flat = abs(actual) <= 1e-12 * max(1.0, abs(float(loss)))  # R no longer resolves it
        if (rho > 1e-4 and math.isfinite(new_gn)) or (flat and new_gn < gn):
            theta, loss, g, gn = theta + evecs @ coef, new_loss, new_g, new_gn
            history.append(gn)
            fresh = False
            mu *= 1 / 3 if flat else max(1 / 3, 1 - (2 * min(rho, 1.0) - 1) ** 3)
            nu = 2.0
            if show is not None:
                show(gn)
        else:
            mu, nu = mu * nu, 2 * nu
    if not fresh or h is None:
        h = hessian(theta)
        hessians += 1
    return theta, {"newton_steps": len(history) - 1, "hessians_formed": hessians,
                   "grad_norm_history": history}, h


# --------------------------------------------------------------------------- engine

class CnnEngine(CnnPolicy):
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
        obj = _objective(arch, data, wd)
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
                console.print(f"train: Newton step {len(steps)}: ‖∇R‖ = {gn:.2e} "
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
        arch = _architecture(theta)
        out = [torch.softmax(arch.logits(theta, cnn.images(x[lo:lo + 2048]).to(theta.dtype)), 1)
               for lo in range(0, x.shape[0], 2048)]
        return torch.cat(out)

    def test_gradients(self, tensors, x, y) -> torch.Tensor:
        theta = tensors["params"]
        arch = _architecture(theta)
        obj = autodiff.Objective(arch.logits, cnn.images(x), y, 0.0,
                                 arch.decay_mask(device=theta.device), _activations(arch))
        return obj.all_example_grads(theta, cnn.images(x), y)

    # ---------------------------------------------------------------------------- ihvp
    def _hessian(self, tensors, obj):
        if "hessian" in tensors:
            return tensors["hessian"]
        return exact_hessian(obj, tensors["params"], "the Hessian at this end point")

    def solve(self, tensors, mrec, data, solver, rhs, lissa, cg, damping=0.0):
        theta = tensors["params"]
        arch = _architecture(theta)
        obj = _objective(arch, data, mrec["settings"]["wd"])
        start = time.perf_counter()
        report = {"settings": {"damping": damping}}
        lam_min = None
        gauge = Gauge(arch, theta.dtype, theta.device)
        rhs = gauge.project(rhs)  # ∇L_test ⟂ U up to rounding: solves on the complement
        if solver == "exact":
            h = self._hessian(tensors, obj)
            a = h + damping * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
            report.update(gauge.spectrum(h))
            lam_min = report["lambda_min"] + damping
            if lam_min > 0:
                chol = torch.linalg.cholesky(gauge.shifted(a))
                est = torch.cholesky_solve(rhs.T, chol).T
                report["factorisation"] = "Cholesky (positive definite on the complement of U)"
            else:  # indefinite: the solve on its eigenbasis (no zero eigenvalue expected)
                evals, evecs = torch.linalg.eigh(gauge.shifted(a))
                est = ((rhs @ evecs) / evals) @ evecs.T
                report["factorisation"] = (f"eigendecomposition (indefinite: "
                                           f"{report['negative_eigenvalues']} negative "
                                           f"eigenvalues)")
            report.update(iterations=1, hvps=0)
        elif solver == "cg":
            def apply_h(v):
                return obj.hvp(theta, v) + damping * v

            est, iters, hvps = cg_with_progress(apply_h, rhs, cg)
            report.update(iterations=iters, hvps=hvps, settings={"damping": damping,
                                                                  "rtol": cg.rtol,
                                                                  "max_iter": cg.max_iter})
        else:
            est, info = lissa_recursion(CnnCurvature(obj, theta), rhs, lissa)
            report.update(info, iterations=info["steps"], settings=asdict(lissa))
        report["seconds"] = time.perf_counter() - start
        if not bool(torch.isfinite(est).all()):
            raise InflError(f"{solver} produced a non-finite inverse-HVP")
        residual = batched_norm(obj.hvp(theta, est) + damping * est - rhs).cpu().numpy()
        g_norm = batched_norm(rhs).cpu().numpy()
        s_norm = batched_norm(est).cpu().numpy()
        report["relative_residual"] = (residual / g_norm).tolist()
        report["residual_rounding_bound"] = [0.0] * len(residual)
        if lam_min is not None and lam_min > 0:
            e = residual / lam_min
            report["error_bound_relative"] = np.where(s_norm > e, e / (s_norm - e),
                                                      np.inf).tolist()
        else:
            report["error_bound_relative"] = [math.nan] * len(residual)
        report["error_bound_certified"] = False
        report["error_bound_note"] = ("from the computed λ_min of H + λI (float64 "
                                      "eigenvalues), not a proof" if solver == "exact" else
                                      "not available: no eigenvalue bound without the Hessian")
        return est, report

    # --------------------------------------------------------------------------- score
    def scores(self, tensors, mrec, data, ihvps):
        theta = tensors["params"]
        arch = _architecture(theta)
        wd = mrec["settings"]["wd"]
        obj = _objective(arch, data, wd)
        g = obj.all_example_grads(theta, obj.x, obj.y)  # ∇CE_i [n, P]
        reg = wd * (obj.mask * theta)  # the regulariser's part of every ∇L_i
        influence = -(ihvps @ g.T + (ihvps @ reg)[:, None])
        return influence, -influence / data.n_train

    # ----------------------------------------------------------------------------- loo
    def auto_chunk_size(self, device, spec, data, settings) -> int:
        return DEVICE_CHUNK if device.type == "cuda" else CPU_CHUNK

    def result_keys(self, settings) -> tuple:
        return ("lambda_min",) if settings.method == "newton" else ()

    def hessian_blocks(self, tensors) -> int:
        return 1

    def loo_summary(self, arrays, settings) -> dict:
        if settings.method == "newton":
            lam = arrays["lambda_min"]
            return {"error_kind": "estimate",
                    "lambda_min_smallest": float(np.nanmin(lam)) if np.isfinite(lam).any()
                    else None,
                    "all_newton_matrices_positive_definite": bool((lam > 0).all())}
        return {"error_kind": "none"}

    def loo_problem(self, tensors, mrec, data, x_test, y_test, settings, on_block=None):
        problem = CnnLooProblem(self, tensors, mrec, data, x_test, y_test, settings)
        if on_block is not None:
            on_block()
        return problem


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


class CnnLooProblem:
    """Leave-one-out for the CNN, chunk by chunk (the engines' ``solve_chunk``)."""

    result_keys = ("lambda_min",)

    def __init__(self, engine, tensors, mrec, data, x_test, y_test, settings):
        from infl_cli.engines.spec import spec_of

        self.spec = spec_of(mrec)
        self.theta = tensors["params"]
        self.arch = _architecture(self.theta)
        self.wd = mrec["settings"]["wd"]
        self.obj = _objective(self.arch, data, self.wd)
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
            self.hessian = engine._hessian(tensors, self.obj)
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
        batches = _epoch_batches(n, batch, gen)
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


ENGINE = CnnEngine()
