"""Leave-one-out retraining of the SVM and of the smooth-hinge model, certified
(:class:`Retrainer`): the engines' LOO (:mod:`~infl_cli.engines.hinge.engine`) and the Figure 3 study's
(:mod:`~infl_cli.stages.hinge`) both retrain through it. The mathematics is
:mod:`~infl_cli.engines.hinge.svm`'s."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from infl_cli.engines.hinge.svm import (UNIT, Smooth, certificate, fit_smooth, smooth_hessian,
    smooth_hinge, solve_dual)


def smooth_change(x, y: float, t: float, full: Smooth, loo: Smooth, x_norm: float) -> tuple:
    """The change of the smooth test loss ℓ_t at (x, y) from ``full`` to ``loo``, and its
    proven bound: ℓ_t is 1-Lipschitz in the margin, so the models' radii cost ‖x‖·(r + r₋);
    each margin's float64 evaluation γ_d·|x|ᵀ|w|; ℓ_t's evaluation 4u of its value; the
    difference u of itself."""
    d = x.size
    gam = d * UNIT / (1 - d * UNIT)
    values = [float(smooth_hinge(np.array([y * (x @ m.weight)]), t)[0]) for m in (full, loo)]
    change = values[1] - values[0]
    rounding = sum(gam * float(np.abs(x) @ np.abs(m.weight)) + 4 * UNIT * v
                   for m, v in zip((full, loo), values)) + UNIT * abs(change)
    return change, (x_norm * (full.radius + loo.radius) + rounding) * (1 + 1e-6)


@dataclass
class Retrained:
    """One retraining without a point: the change of each test point's loss (``values`` [T])
    and its proven bound (``bounds`` [T]), the model's certified ``radius``, the SVM's exact
    ``gap`` (NaN for the smooth model), and the solver's ``steps``."""

    values: np.ndarray
    bounds: np.ndarray
    radius: float
    gap: float
    steps: int


class Retrainer:
    """Leave-one-out retraining of one model, certified, for the test points (``k_test``,
    ``y_test`` ∈ {±1}): ``kind`` ``svm`` (warm-started dual coordinate ascent from the full
    α, the change of the exact hinge test loss) or ``smooth-hinge`` (Newton from the full
    model at temperature ``t``, preconditioned by its Hessian; the change of ℓ_t). Pure in
    its inputs, so removals may be retrained in any order."""

    def __init__(self, kind: str, k: np.ndarray, y: np.ndarray, scale: int, wd: float,
                 t: float, weight: np.ndarray, alpha, k_test: np.ndarray, y_test: np.ndarray):
        from scipy.linalg import cho_factor

        self.kind, self.k, self.y, self.scale, self.wd, self.t = kind, k, y, scale, wd, t
        self.x = k / scale
        self.k_test, self.y_test = k_test, y_test
        self.x_test = k_test / scale
        self.x_norm = np.array([math.nextafter(float(np.linalg.norm(r)), math.inf)
                                for r in self.x_test]) * (1 + 1e-15)
        keep = np.ones(y.size, dtype=bool)
        if kind == "svm":
            self.full = certificate(k, y.astype(np.int64), alpha, wd, keep, k_test,
                                    y_test.astype(np.int64), scale)
        else:
            self.full = fit_smooth(self.x, y, wd, t, keep, start=weight)
            m = y * (self.x @ self.full.weight)
            self.factor = cho_factor(smooth_hessian(self.x, y, m, wd, t, keep))

    def retrain(self, z: int) -> Retrained:
        keep = np.ones(self.y.size, dtype=bool)
        keep[z] = False
        if self.kind == "svm":
            alpha, report = solve_dual(self.x, self.y, self.wd, self.full.alpha, keep)
            cert = certificate(self.k, self.y.astype(np.int64), alpha, self.wd, keep,
                               self.k_test, self.y_test.astype(np.int64), self.scale)
            values = np.array([float(a - b) for a, b in zip(cert.test_hinge,
                                                             self.full.test_hinge)])
            bounds = self.x_norm * (cert.radius + self.full.radius) * (1 + 4 * UNIT) \
                + UNIT * np.abs(values)
            return Retrained(values, bounds, cert.radius, cert.gap, report.sweeps)
        loo = fit_smooth(self.x, self.y, self.wd, self.t, keep, start=self.full.weight,
                         factor=self.factor)
        pairs = [smooth_change(self.x_test[i], self.y_test[i], self.t, self.full, loo,
                               self.x_norm[i]) for i in range(self.y_test.size)]
        return Retrained(np.array([v for v, _ in pairs]), np.array([b for _, b in pairs]),
                         loo.radius, math.nan, loo.steps)
