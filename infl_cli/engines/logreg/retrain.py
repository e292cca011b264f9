"""The per-removal retrainers of leave-one-out (:mod:`~infl_cli.engines.logreg.loo`): the safe fallback of
the batched Newton method (Newton steps on the exact Hessian by conjugate gradients) and the
``lbfgs`` method (warm-started full-batch L-BFGS). Each returns a change Δ of the weights that
the caller certifies by its float64 pass; neither claims anything itself. ``problem`` is the
caller's :class:`~infl_cli.engines.logreg.loo.LooProblem`, ``changes`` its
:class:`~infl_cli.engines.logreg.loo.Changes`."""

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


def newton_cg_retrain(problem, changes, j: int, start: torch.Tensor,
                       tol: float, max_steps: int = 30):
    """The safe fallback for change ``j``: Newton steps whose direction solves the exact
    Hessian of its objective at the current iterate (conjugate gradients on full-data
    products), each halved until the objective decreases (or, where the objective no longer
    resolves the change, the gradient norm does), from ``start`` or from Ŵ, whichever has the
    smaller gradient. Returns (Δ, steps); the caller certifies the result."""
    from infl_cli.numerics.linalg import conjugate_gradient

    sample_weight = removal_weights(problem, int(changes.removed[j]))
    y = problem.y
    if changes.relabel_index.size:
        y = torch.as_tensor(changes.labels(problem.y_np, j), device=problem.device)

    def evaluate(w):
        loss, grad = model.objective_and_grad(w, problem.design, y, problem.wd, sample_weight)
        return float(loss), grad, float(grad.norm())

    w = problem.weight + start
    loss, grad, gn = evaluate(w)
    loss0, grad0, gn0 = evaluate(problem.weight)
    if not (math.isfinite(gn) and gn <= gn0):
        w, loss, grad, gn = problem.weight.clone(), loss0, grad0, gn0
    steps = 0
    for steps in range(max_steps + 1):
        if gn <= 0.1 * tol or steps == max_steps:
            break
        probs = model.probabilities(w, problem.design)
        direction, _, _ = conjugate_gradient(
            lambda v: weighted_hvp(problem, probs, sample_weight, v), grad[None],
            rtol=max(min(0.1, math.sqrt(gn)), 1e-8), max_iter=500)
        step = -direction[0]
        slope = float((grad * step).sum())
        for _ in range(40):
            new_loss, new_grad, new_gn = evaluate(w + step)
            if math.isfinite(new_gn) and (new_loss <= loss + 1e-4 * slope or new_gn < gn):
                break
            step = step / 2
        else:
            break  # no step helps: the certificate says how far it got
        w, loss, grad, gn = w + step, new_loss, new_grad, new_gn
    return w - problem.weight, steps


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
