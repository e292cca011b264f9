"""The per-removal retrainers of leave-one-out (:mod:`~infl_cli.engines.logreg.loo`): the safe fallback of
the batched Newton method (Newton steps on the exact Hessian by conjugate gradients) and the
``lbfgs`` method (warm-started full-batch L-BFGS). Each returns a change Δ of the weights that
the caller certifies by its float64 pass; neither claims anything itself. ``problem`` is the
caller's :class:`~infl_cli.engines.logreg.loo.LooProblem`, ``changes`` its
:class:`~infl_cli.engines.logreg.changes_mod.Changes`."""

from __future__ import annotations

import math

import numpy as np
import torch

from infl_cli.engines.logreg import model


def weighted_hvp(problem, probs: torch.Tensor, sample_weight: torch.Tensor,
                  v: torch.Tensor) -> torch.Tensor:
    """H₋z v for the objective with per-example weights (0 for the removed point)."""
    k, c, d = v.shape
    design = problem.design
    a = model.times(design, v.reshape(k * c, d).T.contiguous()).reshape(-1, k, c)
    pa = probs[:, None, :] * a
    b = (pa - probs[:, None, :] * pa.sum(dim=2, keepdim=True)) * sample_weight[:, None, None]
    back = model.transposed_times(b.reshape(-1, k * c), design).reshape(k, c, d)
    return back / sample_weight.sum() + problem.wd * v


def removal_weights(problem, index: int) -> torch.Tensor:
    weights = torch.ones(problem.n, dtype=torch.float64, device=problem.device)
    if index >= 0:
        weights[index] = 0.0
    return weights


def newton_cg_retrain(problem, changes, j: int, start: torch.Tensor, tol: float,
                      max_steps: int = 30):
    """The safe fallback for change ``j``: Newton steps whose direction solves the exact
    Hessian of its objective at the current iterate (conjugate gradients on full-data
    products), each halved until the objective decreases (or, where the objective no longer
    resolves the change, the gradient norm does), from ``start`` or from Ŵ, whichever has the
    smaller gradient: the shared Newton core (:func:`~infl_cli.numerics.newton.newton`).
    Returns (Δ, steps); the caller certifies the result."""
    from infl_cli.numerics.linalg import conjugate_gradient
    from infl_cli.numerics.newton import LineSearch, newton

    sample_weight = removal_weights(problem, int(changes.removed[j]))
    y = problem.y
    if changes.relabel_index.size:
        y = torch.as_tensor(changes.labels(problem.y_np, j), device=problem.device)

    swap = _Swap(problem, changes, j, sample_weight)

    def evaluate(wk, rows):
        loss, grad = model.objective_and_grad(wk[0], problem.design, y, problem.wd,
                                              sample_weight)
        loss, grad = swap.objective_and_grad(wk[0], loss, grad)
        gn = torch.tensor([float(grad.norm())], dtype=torch.float64, device=grad.device)
        return loss.reshape(1), grad[None], gn, None

    def direction(wk, grad, gn, rows, state):
        probs = model.probabilities(wk[0], problem.design)
        solved, _, _ = conjugate_gradient(
            lambda v: swap.hvp(wk[0], v, weighted_hvp(problem, probs, sample_weight, v)), grad,
            rtol=max(min(0.1, math.sqrt(float(gn[0]))), 1e-8), max_iter=500)
        return -solved

    w = problem.weight + start
    _, _, gn, _ = evaluate(w[None], None)
    _, _, gn0, _ = evaluate(problem.weight[None], None)
    if not (math.isfinite(float(gn[0])) and float(gn[0]) <= float(gn0[0])):
        w = problem.weight.clone()
    w, steps, _, _ = newton(evaluate, direction, w[None],
                            lambda gn, previous, rows: gn > 0.1 * tol, max_steps,
                            LineSearch(gradient_decrease=True))
    return w[0] - problem.weight, int(steps[0])


def lbfgs_retrain(problem, index: int, tol: float, max_iter: int = 2000):
    """Warm-started full-batch L-BFGS on R₋z for one removal, stopped at ‖∇R₋z‖ ≤ tol (SciPy's
    L-BFGS on the CPU, its gradients where the data are). Returns (Δ, iterations); the caller
    certifies the result."""
    from scipy.optimize import minimize

    weight = problem.weight
    shape = tuple(weight.shape)
    sample_weight = removal_weights(problem, index)
    last = {"gn": math.inf}

    def fun(flat):
        w = torch.from_numpy(flat).reshape(shape).to(problem.device)
        loss, grad = model.objective_and_grad(w, problem.design, problem.y, problem.wd,
                                              sample_weight)
        last["gn"] = float(grad.norm())
        return float(loss), grad.reshape(-1).cpu().numpy()

    def callback(intermediate_result):
        if last["gn"] <= tol:
            raise StopIteration

    result = minimize(fun, weight.reshape(-1).cpu().numpy().copy(), jac=True,
                      method="L-BFGS-B", callback=callback,
                      options={"maxiter": max_iter, "maxcor": 30, "gtol": 0.0, "ftol": 0.0})
    w = torch.from_numpy(np.asarray(result.x).copy()).reshape(shape).to(problem.device)
    return w - weight, int(result.nit)


class _Swap:
    """The perturbed rows of change ``j`` (:meth:`Changes.perturbed`): the objective over
    the unchanged design, corrected by (1/S)·Σ_b CE(x'_b) − CE(x_b) in its value, gradient and
    Hessian-vector products (nothing where the change perturbs no row)."""

    def __init__(self, problem, changes, j: int, sample_weight: torch.Tensor):
        index, rows = changes.perturbed(j)
        self.active = rows is not None and len(index) > 0
        if not self.active:
            return
        device = problem.device
        self.x = torch.cat([torch.as_tensor(rows, dtype=torch.float64, device=device),
                            problem.design.rows(index).to(device)])
        self.sign = torch.cat([torch.ones(len(index)), -torch.ones(len(index))]).to(
            device, torch.float64)
        self.y = problem.y[problem.index(np.concatenate([index, index]))]
        self.total = sample_weight.sum()

    def objective_and_grad(self, w, loss, grad):
        if not self.active:
            return loss, grad
        logp = torch.log_softmax(self.x @ w.T, dim=1)
        ce = -logp.gather(1, self.y[:, None])[:, 0]
        r = logp.exp()
        r[torch.arange(len(self.y), device=r.device), self.y] -= 1.0
        loss = loss + (self.sign * ce).sum() / self.total
        grad = grad + (r * self.sign[:, None]).T @ self.x / self.total
        return loss, grad

    def hvp(self, w, v, out):
        """``out`` (the unchanged rows' H v [k, C, d]) plus the swapped rows' curvature."""
        if not self.active:
            return out
        p = torch.softmax(self.x @ w.T, dim=1)  # [m, C]
        a = torch.einsum("md,kcd->kmc", self.x, v)
        pa = p[None] * a
        b = (pa - p[None] * pa.sum(dim=2, keepdim=True)) * self.sign[None, :, None]
        return out + torch.einsum("kmc,md->kcd", b, self.x) / self.total
