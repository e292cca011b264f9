"""Stage 4: leave-one-out retraining, certified by each removal's own gradient norm.

For a removed point z the retrained parameters Ŵ₋z minimise
R₋z(W) = (1/(n−1))·Σ_{j≠z} L(z_j, W) = (n·R(W) − L(z, W))/(n−1), the ε = −1/n problem whose
first-order prediction is the influence score. Its gradient is
∇R₋z(W) = (n·∇R(W) − ∇L(z, W))/(n−1).

``newton`` (default): warm start at Ŵ and take Newton-type steps Δ ← Δ − H⁻¹∇R₋z(Ŵ + Δ)
with the exact Hessian H = ∇²R(Ŵ), Cholesky-factored once and corrected per removal for
the removed point's own curvature (Woodbury, :class:`RemovalPreconditioner`). Because one
removal moves Ŵ by O(1/n), H⁻¹ is an excellent preconditioner and the error contracts by
orders of magnitude per step. The first step needs no pass over the data (∇R₋z(Ŵ) is known
in closed form) and is the influence prediction itself; the second takes its gradient from
the float32 delta-form :class:`CorrectionPass`; each further step costs one float64
full-data pass, batched over a chunk of removals as two matrix products. A removal is done
when its full float64 gradient norm ‖∇R₋z‖ ≤ tol; one that does not certify within
``max_steps`` is finished by
Newton steps on its own exact Hessian at each iterate (preconditioned CG), which converge
quadratically.

``lbfgs``: the usual approach, warm-started full-batch L-BFGS per removed point.

actual change = CE(z_test, Ŵ₋z) − CE(z_test, Ŵ).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from . import model
from .linalg import HessianFactor, batched_dot, batched_norm

METHODS = ("newton", "lbfgs")


def loo_gradients(weight, x, y, wd, logits0, removed, deltas, active=None, x_active=None):
    """∇R₋z(Ŵ + Δ_k) for removals ``removed`` [K] and offsets ``deltas`` [K, C, d]: [K, C, d].

    One pass over the data for all K: logits (X Δᵀ) and back-projection (Rᵀ X) are single
    matrix products. ``logits0`` = X Ŵᵀ [n, C] is shared. ``active`` (a feature mask, see
    :func:`model.active_features`) restricts both products to the features that are non-zero
    in some training row; on the others the data term vanishes and the gradient is wd·W.
    ``x_active`` = x[:, active], when the caller keeps that copy across passes.
    """
    n = x.shape[0]
    k, c, d = deltas.shape
    w = weight[None] + deltas  # [K, C, d]
    xa = x if active is None else (x[:, active] if x_active is None else x_active)
    da_ = deltas if active is None else deltas[:, :, active]
    logits = logits0[:, None, :] + model.mm(xa, da_.reshape(k * c, -1).T).reshape(n, k, c)
    r = torch.softmax(logits, dim=2)
    del logits
    r[torch.arange(n), :, y] -= 1.0  # p − onehot(y), per removal
    back = model.mm(r.reshape(n, k * c).T, xa).reshape(k, c, -1)  # Σ_j r_j x_jᵀ
    del r
    if active is None:
        data_term = back
    else:
        data_term = torch.zeros(k, c, d, dtype=x.dtype)
        data_term[:, :, active] = back
    xz, yz = x[removed], y[removed]
    own_r = torch.softmax(torch.einsum("kcd,kd->kc", w, xz), dim=1)
    own_r[torch.arange(k), yz] -= 1.0
    own = own_r[:, :, None] * xz[:, None, :]  # CE gradient of the removed point at its W
    return (data_term - own) / (n - 1) + wd * w


class CorrectionPass:
    """A cheap full-data pass for the intermediate Newton steps: ∇R₋z(Ŵ + Δ) in delta form,

        ∇R₋z(Ŵ + Δ) = ∇R₋z(Ŵ) + [Σ_j δp_j x_jᵀ − δp_z x_zᵀ]/(n − 1) + wd·Δ,
        δp_j = softmax(l_j + x_j Δᵀ) − softmax(l_j) = p_j ⊙ (m_j − ⟨p_j, m_j⟩)/(1 + ⟨p_j, m_j⟩),
        m_j = expm1(x_j Δᵀ),

    with ∇R₋z(Ŵ) exact in float64 (closed form) and only the two products and δp in
    float32. Its errors are relative to the change Σ δp_j x_jᵀ, not to the gradient's terms,
    so it is accurate to about 1e-10 here, ample for a Newton direction, and about twice as
    fast as the float64 pass. It never certifies: that is the float64 pass's job.
    """

    def __init__(self, logits0, x_active, active):
        """``logits0`` = X Ŵᵀ [n, C] and ``x_active`` = x[:, active], as the caller keeps them."""
        self.active = active
        self.x32 = x_active.to(torch.float32)
        self.p32 = torch.softmax(logits0, dim=1).to(torch.float32)  # softmax(l_j) at Ŵ

    def __call__(self, weight, x, wd, removed, deltas, grad_at_hat):
        n = x.shape[0]
        k, c, d = deltas.shape
        p = self.p32[:, None, :]
        m = model.mm(self.x32, deltas[:, :, self.active].reshape(k * c, -1).to(torch.float32).T)
        m = torch.special.expm1(m.reshape(n, k, c), out=m.reshape(n, k, c))
        dp = m * p
        s = dp.sum(2, keepdim=True)  # ⟨p_j, m_j⟩
        dp.sub_(p * s).div_(1.0 + s)
        del m, s
        back = model.mm(dp.reshape(n, k * c).T, self.x32).reshape(k, c, -1).to(torch.float64)
        del dp
        data_term = torch.zeros(k, c, d, dtype=torch.float64)
        data_term[:, :, self.active] = back
        xz = x[removed]
        logits_z = xz @ weight.T
        own = (torch.softmax(logits_z + torch.einsum("kcd,kd->kc", deltas, xz), dim=1)
               - torch.softmax(logits_z, dim=1))
        data_term -= own[:, :, None] * xz[:, None, :]
        return grad_at_hat + data_term / (n - 1) + wd * deltas


def test_loss_change(weight, deltas, x_test, y_test):
    """CE(z_test, Ŵ + Δ_k) − CE(z_test, Ŵ) for each k: [K]."""
    base = model.cross_entropy(weight, x_test[None], y_test[None])[0]
    logits = torch.einsum("kcd,d->kc", weight[None] + deltas, x_test)
    after = -torch.log_softmax(logits, dim=1)[:, int(y_test)]
    return after - base


class RemovalPreconditioner:
    """Exact inverse of the LOO Hessian at Ŵ for a chunk of removals, by Woodbury.

    H₋z(Ŵ) = (n·H − ∇²L(z))/(n−1) with ∇²CE(z) = U Uᵀ, U = F ⊗ x_z and F Fᵀ = diag(p) − p pᵀ
    (rank ≤ C). Dropping the wd·I/(n−1) part of ∇²L(z) (relative size ≤ 1/n),
    P_z⁻¹ g = (n−1)·[H⁻¹g/n + (H⁻¹U/n)(I − Uᵀ H⁻¹ U/n)⁻¹(Uᵀ H⁻¹ g/n)],
    which costs C extra solves per removal once, and makes each Newton step account for
    the removed point's own curvature (essential when n is small).
    """

    def __init__(self, factor: HessianFactor, weight, x_removed, n: int):
        k, d = x_removed.shape
        c = weight.shape[0]
        p = model.probabilities(weight, x_removed)  # [K, C]
        curv = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        evals, evecs = torch.linalg.eigh(curv)
        f = evecs * evals.clamp_min(0).sqrt()[:, None, :]  # [K, C, m]: F Fᵀ = curvature
        f = f.transpose(1, 2).contiguous()  # [K, m, C]: column m of U is f_m ⊗ x_z
        u = f[:, :, :, None] * x_removed[:, None, None, :]  # [K, m, C, d]
        self.n = n
        self.y = factor.solve_kron(f, x_removed)  # H⁻¹U [K, m, C, d]
        s = torch.einsum("kmcd,kqcd->kmq", u, self.y) / n
        self.inner = torch.linalg.inv(torch.eye(c, dtype=s.dtype) - s)  # [K, m, m]
        self.factor = factor

    def solve(self, g: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """P_z⁻¹ g for the removals ``rows`` of the chunk; g [len(rows), C, d]."""
        n = self.n
        y = self.y[rows]
        coef = torch.einsum("kmq,kqcd,kcd->km", self.inner[rows], y, g) / n
        return (n - 1) * (self.factor.solve(g) / n + torch.einsum("kmcd,km->kcd", y, coef) / n)


def _secant_direction(grad, rows, history, apply_p):
    """H_k⁻¹·grad by the L-BFGS two-loop recursion with the initial inverse P_z⁻¹
    (``apply_p``) and the secant pairs (s, y) gathered so far (``history``: full-chunk
    tensors, read at ``rows``). The pairs add the curvature change along the path from Ŵ
    that the fixed P_z misses; a pair with sᵀy ≤ 0 (impossible for a strongly convex R₋z
    but for rounding) is skipped."""
    q = grad.clone()
    kept = []
    for s_full, y_full in reversed(history):
        s, yv = s_full[rows], y_full[rows]
        sy = batched_dot(s, yv)
        ok = sy > 1e-12 * batched_norm(s) * batched_norm(yv)
        rho = torch.where(ok, 1.0 / torch.where(ok, sy, torch.ones_like(sy)),
                          torch.zeros_like(sy))
        alpha = rho * batched_dot(s, q)
        q -= alpha[:, None, None] * yv
        kept.append((s, yv, rho, alpha))
    r = apply_p(q)
    for s, yv, rho, alpha in reversed(kept):
        beta = rho * batched_dot(yv, r)
        r += (alpha - beta)[:, None, None] * s
    return r


def newton_chunk(weight, x, y, wd, factor: HessianFactor, logits0, grad_r_full, removed,
                 tol: float, max_steps: int, x_active=None, correction: CorrectionPass = None):
    """Certified Newton-type LOO for one chunk. Returns (deltas, grad_norms, steps,
    {"float64": full passes, "correction": cheap passes}, preconditioner).

    Step k solves with P_z (exact Hessian of R₋z at Ŵ) updated by the secant pairs of the
    previous steps (:func:`_secant_direction`: L-BFGS with P_z⁻¹ as its initial inverse, unit
    steps): one removal's path from Ŵ is short, so this is Newton's method to within the
    curvature change along it. ``x_active`` = x[:, factor.active], kept by the caller
    across chunks. With ``correction`` the first pass (after the first step, which is still
    far from certifying) is the cheap :class:`CorrectionPass`; every later pass is the
    float64 one, and only a float64 pass certifies."""
    n = x.shape[0]
    k = removed.shape[0]
    precond = RemovalPreconditioner(factor, weight, x[removed], n)
    u = model.train_point_grads(weight, x[removed], y[removed], wd)  # ∇L(z, Ŵ) [K, C, d]
    g = (n * grad_r_full[None] - u) / (n - 1)  # ∇R₋z(Ŵ), closed form
    everyone = torch.arange(k)
    last_step = -precond.solve(g, everyone)
    deltas = last_step.clone()
    last_grad = g.clone()
    history = []
    steps = torch.ones(k, dtype=torch.int64)
    norms = torch.full((k,), math.inf, dtype=torch.float64)
    passes = {"float64": 0, "correction": 0}

    def step(rows, grad):
        """Record the secant pair that ``grad`` completes for ``rows``, then step them."""
        s_full, y_full = torch.zeros_like(deltas), torch.zeros_like(deltas)
        s_full[rows], y_full[rows] = last_step[rows], grad - last_grad[rows]
        history.append((s_full, y_full))
        last_grad[rows] = grad
        last_step[rows] = -_secant_direction(grad, rows, history,
                                             lambda q: precond.solve(q, rows))
        deltas[rows] += last_step[rows]
        steps[rows] += 1

    if correction is not None and max_steps > 1:
        step(everyone, correction(weight, x, wd, removed, deltas, g))
        passes["correction"] += 1
    todo = everyone
    while todo.numel() > 0:
        g = loo_gradients(weight, x, y, wd, logits0, removed[todo], deltas[todo],
                          factor.active, x_active)
        passes["float64"] += 1
        gn = batched_norm(g)
        norms[todo] = gn
        open_ = (gn > tol) & torch.isfinite(gn)
        if not bool(open_.any()) or int(steps[todo].max()) >= max_steps:
            break
        todo = todo[open_]
        step(todo, g[open_])
    return deltas, norms, steps, passes, precond


def newton_cg_retrain(weight, x, y, wd, index: int, tol: float, start: torch.Tensor,
                      precondition, max_steps: int = 20):
    """The safe fallback for one removal: Newton steps whose direction solves the exact
    Hessian of R₋z at the current iterate (full-data HVPs) by conjugate gradients
    preconditioned with the removal's P_z⁻¹. Returns (delta, grad_norm, steps)."""
    from .linalg import conjugate_gradient

    keep = torch.ones(x.shape[0], dtype=torch.bool)
    keep[index] = False
    xk, yk = x[keep], y[keep]
    w = start.clone()
    gn, steps = math.inf, 0
    for steps in range(max_steps + 1):
        grad = model.objective_and_grad(w, xk, yk, wd)[1]
        gn = float(grad.norm())
        if gn <= tol or not math.isfinite(gn) or steps == max_steps:
            break
        probs = model.probabilities(w, xk)
        step, _, _ = conjugate_gradient(lambda v: model.hvp(w, xk, wd, v, probs=probs),
                                        grad[None], rtol=1e-3, max_iter=200,
                                        precondition=precondition)
        w = w - step[0]
    return w - weight, gn, steps


def lbfgs_retrain(weight, x, y, wd, index: int, tol: float, max_iter: int = 2000,
                  start: torch.Tensor | None = None):
    """Warm-started full-batch L-BFGS on R₋z for one removal. Returns (delta, grad_norm, iters)."""
    from scipy.optimize import minimize

    shape = tuple(weight.shape)
    sample_weight = torch.ones(x.shape[0], dtype=torch.float64)
    sample_weight[index] = 0.0
    last = {"gn": math.inf}

    def fun(flat):
        loss, grad = model.objective_and_grad(torch.from_numpy(flat).reshape(shape), x, y, wd,
                                              sample_weight=sample_weight)
        last["gn"] = float(grad.norm())
        return float(loss), grad.reshape(-1).numpy()

    def callback(intermediate_result):
        if last["gn"] <= tol:
            raise StopIteration

    w0 = weight if start is None else start
    result = minimize(fun, w0.reshape(-1).numpy().copy(), jac=True, method="L-BFGS-B",
                      callback=callback,
                      options={"maxiter": max_iter, "maxcor": 30, "gtol": 0.0, "ftol": 0.0})
    w = torch.from_numpy(np.asarray(result.x).copy()).reshape(shape)
    grad = model.objective_and_grad(w, x, y, wd, sample_weight=sample_weight)[1]
    return w - weight, float(grad.norm()), int(result.nit)


def retrain(method: str, weight, x, y, wd, x_test, y_test, removed: torch.Tensor, tol: float,
            chunk_size: int, max_steps: int = 10, factor: HessianFactor | None = None,
            done: dict | None = None, on_chunk=None, update=None, fast_correction: bool = True):
    """Retrain without each index in ``removed`` [k]; returns a dict of [k] tensors:
    actual_loss_diff, grad_norm, steps (Newton steps or L-BFGS iterations), fallback (bool).

    Work is split into chunks of ``chunk_size`` removals; ``done`` holds results of chunks
    already finished (resume), and ``on_chunk(results_so_far, n_done)`` is called after each
    chunk (checkpointing). ``update(advance)`` drives a progress bar. ``fast_correction``
    takes the first correction of each Newton removal from the float32 :class:`CorrectionPass`.
    """
    k = removed.shape[0]
    out = {
        "actual_loss_diff": torch.full((k,), math.nan, dtype=torch.float64),
        "grad_norm": torch.full((k,), math.nan, dtype=torch.float64),
        "steps": torch.zeros(k, dtype=torch.int64),
        "fallback": torch.zeros(k, dtype=torch.bool),
    }
    n_done = 0
    if done:
        n_done = int(done["n_done"])
        for key in out:
            out[key][:n_done] = done[key][:n_done]
        if update:
            update(advance=n_done)
    logits0 = x @ weight.T
    x_active = x[:, factor.active].contiguous() if factor is not None else None
    grad_r_full = model.objective_and_grad(weight, x, y, wd)[1]
    stats = {"passes": 0, "correction_passes": 0, "seconds": 0.0}
    correction = CorrectionPass(logits0, x_active, factor.active) \
        if method == "newton" and fast_correction else None
    for lo in range(n_done, k, chunk_size):
        hi = min(lo + chunk_size, k)
        chunk = removed[lo:hi]
        t0 = time.perf_counter()
        if method == "newton":
            deltas, norms, steps, passes, precond = newton_chunk(
                weight, x, y, wd, factor, logits0, grad_r_full, chunk, tol, max_steps, x_active,
                correction)
            stats["passes"] += passes["float64"]
            stats["correction_passes"] += passes["correction"]
            for i in torch.nonzero(~(norms <= tol))[:, 0].tolist():  # uncertified
                row = torch.tensor([i])
                delta, gn, iters = newton_cg_retrain(
                    weight, x, y, wd, int(chunk[i]), tol, weight + deltas[i],
                    lambda r, row=row: precond.solve(r, row.expand(r.shape[0])))
                if gn < norms[i] or not math.isfinite(float(norms[i])):
                    deltas[i], norms[i] = delta, gn
                steps[i] += iters
                out["fallback"][lo + i] = True
        else:
            deltas = torch.empty(hi - lo, *weight.shape, dtype=torch.float64)
            norms = torch.empty(hi - lo, dtype=torch.float64)
            steps = torch.empty(hi - lo, dtype=torch.int64)
            for i in range(hi - lo):
                deltas[i], norms[i], steps[i] = lbfgs_retrain(weight, x, y, wd, int(chunk[i]),
                                                              tol)
        out["actual_loss_diff"][lo:hi] = test_loss_change(weight, deltas, x_test, y_test)
        out["grad_norm"][lo:hi] = norms
        out["steps"][lo:hi] = steps
        stats["seconds"] += time.perf_counter() - t0
        if on_chunk is not None:
            on_chunk(out, hi)
        if update:
            update(advance=hi - lo, status=f"max |grad| {float(out['grad_norm'][:hi].max()):.1e}")
    return out, stats
