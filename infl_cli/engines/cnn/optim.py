"""Training the CNN: TensorFlow's Adam on parameter vectors (one model or a stack of them,
the authors' schedule), the exact Hessian with a progress bar, the gauge of the net's null
direction, and the Levenberg–Marquardt Newton that takes an Adam end point to a certified
stationary point (:func:`lm_newton`)."""

from __future__ import annotations

import math
import time

import torch
from torch.func import grad

from infl_cli.engines.cnn import autodiff
from infl_cli.engines.cnn import net as cnn
from infl_cli.numerics.bounds import fnorm
from infl_cli.runtime import progress
from infl_cli.runtime.progress import progress_bar

EXACT_ADAM = (10_000, 1e-3)   # warm-up steps, learning rate
PAPER_ADAM = (500_000, 1e-4)  # all of training, the authors' schedule
MAX_NEWTON = 50
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
        progress.console.print(f"forming {what} ({p:,} × {p:,}, {p:,} Hessian-vector products) takes "
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


def epoch_batches(n: int, batch: int, generator):
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
    batches = epoch_batches(n, batch, gen)
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
