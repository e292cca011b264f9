"""Training the logistic model: multinomial logistic regression (no bias) to a certified optimum.

Minimises R(W) = mean CE + (wd/2)·‖W‖² over the training set in float64: full-batch L-BFGS
(scipy's L-BFGS-B, unbounded) from W = 0 until ‖∇R‖ has dropped by ``NEWTON_SWITCH``, then
Newton steps whose directions are solved by preconditioned conjugate gradients on exact
Hessian-vector products, until ‖∇R‖ ≤ ``tol``. L-BFGS converges linearly (about 12 passes
per decade here) and stalls where the loss no longer resolves its steps; Newton converges
quadratically, so on MNIST it takes the gradient from 1e-2 to 1e-12 in 4 to 5 steps.
"""

from __future__ import annotations

import math
import time

import torch

from infl_cli.data.dataset import Dataset
from infl_cli.engines.logreg import model
from infl_cli.engines.logreg.hessian import SubspacePreconditioner
from infl_cli.errors import InflError
from infl_cli.numerics.bounds import fnorm
from infl_cli.numerics.linalg import conjugate_gradient
from infl_cli.numerics.newton import LineSearch, newton
from infl_cli.runtime import memory
from infl_cli.runtime.progress import progress_bar

NEWTON_SWITCH = 0.03  # hand over to Newton once ‖∇R‖ ≤ this × ‖∇R(0)‖
MAX_NEWTON = 50


def fit(data: Dataset, wd: float, tol: float, max_iter: int = 5000):
    """Return (weight [C, d] float64, info dict with loss, grad norm, iterations, seconds,
    certificate: the :class:`~infl_cli.engines.logreg.model.CertifiedGradient` at Ŵ over the active
    features)."""
    import numpy as np
    from scipy.optimize import minimize

    start = time.perf_counter()
    # Pixels blank in every training image get zero gradient from the data, so their weights
    # are exactly 0 at the optimum: optimise over the active ones only, held as a design
    # (dense core, sparse rim: the same products in about half the time).
    x, y = data.design, data.y_train
    device = x.device
    active = x.active.to(device)
    shape = (data.n_classes, x.width)
    evals = 0

    def loss_and_grad(flat):  # SciPy's L-BFGS on the CPU, the products where the data are
        nonlocal evals
        evals += 1
        w = torch.from_numpy(flat).reshape(shape).to(device)
        loss, grad = model.objective_and_grad(w, x, y, wd)
        last["grad_norm"] = float(grad.norm())
        return float(loss), grad.reshape(-1).cpu().numpy()

    last = {"grad_norm": math.inf}
    g0 = float(model.objective_and_grad(torch.zeros(shape, dtype=torch.float64, device=device),
                                        x, y, wd)[1].norm())
    goal = max(tol, NEWTON_SWITCH * g0)
    span = max(math.log10(g0 / tol), 1.0)
    with progress_bar("train: log10 |grad| reduced", total=round(span, 1)) as update:
        def callback(intermediate_result):
            gn = last["grad_norm"]
            _show(update, g0, gn, span)
            if gn <= goal:
                raise StopIteration

        result = minimize(loss_and_grad, np.zeros(math.prod(shape)), jac=True, method="L-BFGS-B",
                          callback=callback,
                          options={"maxiter": max_iter, "maxcor": 30, "gtol": 0.0, "ftol": 0.0})
        lbfgs_iters = int(result.nit)
        w = torch.from_numpy(result.x.copy()).reshape(shape).to(device)
        w, newton_iters, cg_iters, precondition = _newton(
            w, x, y, wd, tol, lambda gn: _show(update, g0, gn, span))
        certified = _polish(w, x, y, wd, precondition)
    w = certified.pop("weight")
    full = torch.zeros(data.n_classes, data.n_features, dtype=torch.float64, device=device)
    full[:, active] = w
    loss, grad = model.objective_and_grad(w, x, y, wd)  # over the active features: the
    gn = float(grad.norm())                            # others' gradient is wd·0 = 0
    w = full
    if not math.isfinite(gn):
        raise InflError("training diverged (non-finite gradient); check the data")
    if gn > tol:
        raise InflError(f"training stopped at gradient norm {gn:.2e} > tol {tol:.0e}; "
                        "raise --tol or --max-iter")
    info = {
        "train_loss": float(loss),
        "grad_norm": gn,
        "lbfgs_iterations": lbfgs_iters,
        "function_evaluations": evals,
        "newton_iterations": newton_iters,
        "newton_cg_iterations": cg_iters,
        **certified,
        "rounding_model": x.rounding_model,
        "seconds": time.perf_counter() - start,
    }
    return w, info


def _newton(w, x, y, wd, tol, show):
    """Newton steps from ``w`` until ‖∇R‖ ≤ tol, by the shared Newton core
    (:func:`~infl_cli.numerics.newton.newton`). Each direction solves H d = −∇R by CG
    (relative residual min(0.1, √‖∇R‖), tighter as the optimum nears: superlinear
    convergence), preconditioned once by the subspace preconditioner built at the start.
    A step is halved until it decreases R (Armijo) or, where R no longer resolves the change,
    the gradient norm. Returns (w, Newton iterations, CG iterations, preconditioner)."""
    made = {"precondition": None, "cg_iterations": 0}

    def evaluate(wk, rows):
        loss, grad = model.objective_and_grad(wk[0], x, y, wd)
        gn = torch.tensor([float(grad.norm())], dtype=torch.float64, device=grad.device)
        return loss.reshape(1), grad[None], gn, None

    def direction(wk, grad, gn, rows, state):
        w0 = wk[0]
        probs = model.probabilities(w0, x)
        if made["precondition"] is None and memory.gram_fits(x.width):  # else plain CG
            made["precondition"] = SubspacePreconditioner(w0, x, wd, probs=probs)
        rtol = max(min(0.1, math.sqrt(float(gn[0]))), 1e-6)
        step, iters, _ = conjugate_gradient(lambda v: model.hvp(w0, x, wd, v, probs=probs),
                                            -grad, rtol=rtol, max_iter=500,
                                            precondition=made["precondition"])
        made["cg_iterations"] += iters
        return step

    w, steps, stalled, _ = newton(evaluate, direction, w[None], lambda gn, prev, rows: gn > tol,
                                  MAX_NEWTON, LineSearch(gradient_decrease=True),
                                  on_step=lambda gn: show(float(gn[0])))
    if stalled[0]:
        raise InflError("training stalled: no Newton step decreased the objective")
    return w[0], int(steps[0]), made["cg_iterations"], made["precondition"]


def _polish(w, design, y, wd, precondition=None, max_steps: int = 4):
    """Newton steps on the certified gradient (:func:`model.certified_gradient`) once the
    float64 one is below ``tol``: the float64 gradient of 55,000 terms is itself only good to
    about 1e-13, but every error bar on an actual loss change includes ‖∇R(Ŵ)‖/wd, so Ŵ is taken to
    where the proven bound ‖ĝ‖ + (rounding bound) stops falling. Returns a dict with the
    weight, the certified figures and the ``certificate`` itself (the
    :class:`~infl_cli.engines.logreg.model.CertifiedGradient` at that weight)."""
    x = design
    cert = model.certified_gradient(w, design, y, wd)
    grad, probs, _, rounding, _ = cert
    best = {"weight": w, "grad_norm_certified": fnorm(grad) + rounding,
            "grad_rounding": rounding, "polish_steps": 0, "certificate": cert}
    for step in range(1, max_steps + 1):
        p = probs
        if precondition is None and memory.gram_fits(x.width):
            precondition = SubspacePreconditioner(w, x, wd, probs=p)
        direction, _, _ = conjugate_gradient(lambda v: model.hvp(w, x, wd, v, probs=p),
                                             -grad[None], rtol=1e-6, max_iter=200,
                                             precondition=precondition)
        w = w + direction[0]
        cert = model.certified_gradient(w, design, y, wd)
        grad, probs, _, rounding, _ = cert
        bound = fnorm(grad) + rounding
        if not bound < 0.5 * best["grad_norm_certified"]:
            break
        best = {"weight": w, "grad_norm_certified": bound, "grad_rounding": rounding,
                "polish_steps": step, "certificate": cert}
    return best


def _show(update, g0: float, gn: float, span: float) -> None:
    """Progress in orders of magnitude of gradient-norm reduction."""
    done = min(max(math.log10(g0 / max(gn, 1e-300)), 0.0), span)
    update(completed=round(done, 1), status=f"|grad| {gn:.1e}")
