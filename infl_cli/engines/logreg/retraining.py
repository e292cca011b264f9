"""The certified retraining core of the logistic model: a batch of changes (:class:`~infl_cli.engines.logreg.changes.Changes`)
retrained from Ŵ on a :class:`~infl_cli.engines.logreg.loo.LooProblem`, each change
certified (:func:`solve_changes`; leave-one-out's chunks are :func:`solve_chunk`). The method
is the problem module's doc: a first step by the removal-corrected inverse Hessian
(:class:`RemovalPreconditioner`), a float32 correction, then float64 delta-form passes that
certify, with secant updates (:func:`_secant_direction`); a change not within ``tol`` after
``max_steps`` is finished by Newton-CG on its exact Hessian (:mod:`.fallback`)."""

from __future__ import annotations

import math

import numpy as np
import torch

from infl_cli import settings
from infl_cli.engines.logreg import model
from infl_cli.engines.logreg.changes import Changes, Chunk
from infl_cli.engines.logreg.fallback import lbfgs_retrain, newton_cg_retrain
from infl_cli.engines.logreg.hessian import HessianFactor
from infl_cli.numerics import bounds
from infl_cli.numerics.linalg import batched_dot, batched_norm

FLOOR_FACTOR = 4.0  # a gradient within this factor of its rounding bound is at the floor
DIVERGENCE = 8.0  # a change whose gradient grew this much over its best is left to the fallback
LooSettings = settings.LooSettings


class RemovalPreconditioner:
    """Exact inverse of the LOO Hessian at Ŵ for a chunk of removals, by Woodbury.

    H₋z(Ŵ) = (n·H − ∇²L(z))/(n−1) with ∇²CE(z) = U Uᵀ, U = F ⊗ x_z and F Fᵀ = diag(p) − p pᵀ
    (rank ≤ C). Dropping the wd·I/(n−1) part of ∇²L(z) (relative size ≤ 1/n),
    P_z⁻¹ g = (n−1)·[H⁻¹g/n + (H⁻¹U/n)(I − Uᵀ H⁻¹ U/n)⁻¹(Uᵀ H⁻¹ g/n)],
    which costs C extra solves per removal once, and makes each Newton step account for
    the removed point's own curvature (essential when n is small). Vectors are [k, C, d]
    over the factor's active features (or all features, as the factor accepts).
    """

    def __init__(self, factor: HessianFactor, weight, x_removed, n: int,
                 denominator: torch.Tensor | None = None):
        """``x_removed`` [K, d]: a zero row where a change removes nothing (then U = 0 and
        P⁻¹ = (S/n)·H⁻¹); ``denominator`` [K]: S_j (default n − 1)."""
        k, d = x_removed.shape
        c = weight.shape[0]
        p = model.probabilities(weight, x_removed)  # [K, C]
        curv = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        evals, evecs = torch.linalg.eigh(curv)
        f = evecs * evals.clamp_min(0).sqrt()[:, None, :]  # [K, C, m]: F Fᵀ = curvature
        f = f.transpose(1, 2).contiguous()  # [K, m, C]: column m of U is f_m ⊗ x_z
        u = f[:, :, :, None] * x_removed[:, None, None, :]  # [K, m, C, d]
        self.n = n
        self.denominator = (torch.full((k,), float(n - 1), dtype=torch.float64,
                                       device=x_removed.device)
                            if denominator is None else denominator.to(torch.float64))
        self.y = factor.solve_kron(f, x_removed)  # H⁻¹U [K, m, C, d]
        s = torch.einsum("kmcd,kqcd->kmq", u, self.y) / n
        self.inner = torch.linalg.inv(torch.eye(c, dtype=s.dtype, device=s.device) - s)
        self.factor = factor

    def solve(self, g: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """P_z⁻¹ g for the removals ``rows`` of the chunk; g [len(rows), C, d]."""
        n = self.n
        y = self.y[rows]
        coef = torch.einsum("kmq,kqcd,kcd->km", self.inner[rows], y, g) / n
        return self.denominator[rows][:, None, None] * (
            self.factor.solve(g) / n + torch.einsum("kmcd,km->kcd", y, coef) / n)


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


class _Certificate:
    """The certified figures of one chunk, filled in as removals settle (on the device)."""

    def __init__(self, t: int, k: int, device):
        def nan(*shape):
            return torch.full(shape, math.nan, dtype=torch.float64, device=device)

        self.actual, self.bound, self.own = nan(t, k), nan(t, k), nan(t, k)
        self.grad_norm, self.rounding = nan(k), nan(k)

    def record(self, problem, rows, deltas, grad, rounding):
        """Certify ``rows`` at offsets ``deltas``: their gradient norms, the rounding bound
        (of the gradient and of its norm), changes and bounds. Returns ‖∇R₋z‖ upper bounds."""
        gn = grad.reshape(len(rows), -1).norm(dim=1)
        rounding = rounding + bounds.gamma(grad[0].numel() + 1) * gn  # the norm's own rounding
        upper = gn + rounding
        actual, bound, own = problem.test_changes(deltas, upper)
        self.actual[:, rows], self.bound[:, rows], self.own[:, rows] = actual, bound, own
        self.grad_norm[rows], self.rounding[rows] = gn, rounding
        return upper

    def settled(self, problem, rows, selected, settings: LooSettings, upper,
                previous_norm):
        """Which of ``rows`` need no further step: certified within ``tol`` and either within
        the relative target on every test point that selected them, or at the float64 floor."""
        within_tol = upper <= settings.tol
        if settings.rel_error <= 0:
            return within_tol
        sel = selected[:, rows]
        meets = torch.where(sel, self.bound[:, rows] <= settings.rel_error
                            * self.actual[:, rows].abs(), True).all(dim=0)
        gn, rounding = self.grad_norm[rows], self.rounding[rows]
        floor = (gn <= FLOOR_FACTOR * rounding) \
            | torch.where(sel, self.own[:, rows] <= problem.baseline_error[:, None],
                          True).all(dim=0) \
            | (gn >= 0.5 * previous_norm)  # the last step did not halve it: noise level
        return within_tol & (meets | floor)


def solve_chunk(problem, removed: np.ndarray, selected: np.ndarray,
                settings: LooSettings):
    """Retrain without each index in ``removed`` [k]; ``selected`` [T, k] marks the test
    points that chose each removal (their changes are driven to the relative target).

    Returns (results, stats): results holds, as NumPy arrays, float64 ``actual_loss_diff``
    and ``actual_error_bound`` [T, k], ``grad_norm`` (‖∇R₋z‖ computed in float64) and
    ``grad_rounding`` (a proven bound on that value's error, so the true norm is at most
    grad_norm + grad_rounding) [k], int64 ``steps`` and bool ``fallback`` [k]; stats counts
    float64 and float32 passes over the data.
    """
    return solve_changes(problem, Changes.removals(removed), selected, settings)


def solve_changes(problem, changes: Changes, selected: np.ndarray,
                  settings: LooSettings, keep_deltas: bool = False, start=None):
    """Retrain each of a batch of :class:`Changes` from Ŵ (the retraining core that
    leave-one-out, label fixes and their studies share), certified: see :func:`solve_chunk`
    for ``selected`` and the results. With ``keep_deltas`` the results also hold ``deltas``
    [k, C, d_a] (a torch tensor: W_j − Ŵ over the active features); ``start`` [k, C, d_a]
    continues from those offsets (a model certified before, driven further)."""
    device = problem.device
    selected = torch.as_tensor(np.asarray(selected, dtype=bool)).to(device)
    chunk = problem.chunk(changes)
    base, base_error = problem.base_gradient(chunk)
    k = chunk.k
    cert = _Certificate(len(problem.y_test), k, device)
    stats = {"float64_passes": 0, "float32_passes": 0}
    fallback = np.zeros(k, dtype=bool)
    everyone = torch.arange(k, device=device)
    if settings.method == "lbfgs":
        if chunk.corrected or not (chunk.removed_np >= 0).all():
            raise ValueError("--method lbfgs retrains removals only")
        runs = [lbfgs_retrain(problem, int(z), settings.tol) for z in chunk.removed_np]
        deltas = torch.stack([delta for delta, _ in runs])
        steps = np.array([iterations for _, iterations in runs], dtype=np.int64)
        grad, rounding = problem.gradient(chunk, everyone, deltas, base, base_error, True)
        stats["float64_passes"] += 1
        cert.record(problem, everyone, deltas, grad, rounding)
    else:
        deltas, steps = _newton(problem, chunk, base, base_error, selected, settings, cert,
                                stats, start)
        upper = (cert.grad_norm + cert.rounding).cpu().numpy()
        for i in np.flatnonzero(~(upper <= settings.tol)):  # not certified: exact Hessian
            delta, iters = newton_cg_retrain(problem, changes, i, deltas[i], settings.tol)
            one = torch.tensor([i], device=device)
            grad, rounding = problem.gradient(chunk, one, delta[None], base[one],
                                              base_error[one], True)
            stats["float64_passes"] += 1
            cert.record(problem, one, delta[None], grad, rounding)
            deltas[i] = delta
            steps[i] += iters
            fallback[i] = True
    results = {"actual_loss_diff": cert.actual, "actual_error_bound": cert.bound,
               "grad_norm": cert.grad_norm, "grad_rounding": cert.rounding}
    results = {key: value.cpu().numpy() for key, value in results.items()}
    results.update(steps=steps.astype(np.int64), fallback=fallback)
    if keep_deltas:
        results["deltas"] = deltas
    return results, stats


def _newton(problem, chunk: Chunk, base, base_error, selected, settings, cert,
            stats, start=None):
    """The certified Newton iteration of one chunk (module doc). Returns (Δ [k, C, d_a],
    steps [k] as a NumPy array); fills ``cert``. ``start``: offsets to continue from (no
    first step and no float32 correction: straight to the certifying passes)."""
    k = chunk.k
    device = problem.device
    precond = RemovalPreconditioner(problem.factor, problem.weight, chunk.xz, problem.n,
                                    chunk.denominator)
    everyone = torch.arange(k, device=device)
    if start is None:
        last_step = -precond.solve(base, everyone)
        deltas = last_step.clone()
        steps = np.ones(k, dtype=np.int64)
    else:
        deltas = start.to(device, torch.float64).clone()
        last_step = torch.zeros_like(deltas)
        steps = np.zeros(k, dtype=np.int64)
    last_grad = base.clone()
    history = []
    fresh = start is not None  # the first certified gradient starts the secant pairs

    def step(rows, grad):
        """Record the secant pair that ``grad`` completes for ``rows``, then step them."""
        nonlocal fresh
        if not fresh:
            s_full, y_full = torch.zeros_like(deltas), torch.zeros_like(deltas)
            s_full[rows], y_full[rows] = last_step[rows], grad - last_grad[rows]
            history.append((s_full, y_full))
        fresh = False
        last_grad[rows] = grad
        last_step[rows] = -_secant_direction(grad, rows, history,
                                             lambda q: precond.solve(q, rows))
        deltas[rows] += last_step[rows]
        steps[rows.cpu().numpy()] += 1

    if start is None and settings.fast_correction and settings.max_steps > 1:
        grad, _ = problem.gradient(chunk, everyone, deltas, base, base_error, False)
        stats["float32_passes"] += 1
        step(everyone, grad)
    todo = everyone
    previous = torch.full((k,), math.inf, dtype=torch.float64, device=device)
    best = torch.full((k,), math.inf, dtype=torch.float64, device=device)
    best_deltas = deltas.clone()
    while len(todo):
        d = deltas[todo]
        grad, rounding = problem.gradient(chunk, todo, d, base[todo], base_error[todo], True)
        stats["float64_passes"] += 1
        upper = cert.record(problem, todo, d, grad, rounding)
        finite = torch.isfinite(upper)
        better = finite & (upper < best[todo])
        best[todo[better]] = upper[better]
        best_deltas[todo[better]] = d[better]
        # a large change can take the fixed-curvature steps away from its optimum: such a
        # change stops here and is finished by the safeguarded fallback from its best iterate
        diverging = upper > DIVERGENCE * best[todo]
        done = cert.settled(problem, todo, selected, settings, upper, previous[todo]) \
            | ~finite | diverging
        previous[todo] = cert.grad_norm[todo]
        if bool(done.all()) or int(steps[todo.cpu().numpy()].max()) >= settings.max_steps:
            break
        todo, grad = todo[~done], grad[~done]
        step(todo, grad)
    short = ~(cert.grad_norm + cert.rounding <= settings.tol)
    deltas[short] = best_deltas[short]  # the fallback starts from the best one
    return deltas, steps
