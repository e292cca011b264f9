"""Leave-one-out retraining of the SVM and of the smooth-hinge model, certified
(:class:`SvmRetrainer`, :class:`SmoothRetrainer`): the engines' LOO (:mod:`~infl_cli.engines.hinge.engine`) and the Figure 3 study's
(:mod:`~infl_cli.stages.hinge`) both retrain through it. The mathematics is
:mod:`~infl_cli.engines.hinge.svm`'s."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from infl_cli.engines.hinge.svm import (
    UNIT,
    Smooth,
    certificate,
    fit_smooth,
    smooth_hessian,
    smooth_hinge,
    solve_dual,
)


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
    and its proven bound (``bounds`` [T]), the model's certified ``radius``, the solver's
    ``steps``, and what else its certificate holds (``extra``: the SVM's exact
    ``duality_gap``)."""

    values: np.ndarray
    bounds: np.ndarray
    radius: float
    steps: int
    extra: dict = field(default_factory=dict)


class _Retrainer:
    """Leave-one-out retraining of one model, certified, for the test points (``k_test``,
    ``y_test`` ∈ {±1}). Pure in its inputs, so removals may be retrained in any order."""

    def __init__(self, k: np.ndarray, y: np.ndarray, scale: int, wd: float,
                 k_test: np.ndarray, y_test: np.ndarray):
        self.k, self.y, self.scale, self.wd = k, y, scale, wd
        self.x = k / scale
        self.k_test, self.y_test = k_test, y_test
        self.x_test = k_test / scale
        self.x_norm = np.array([math.nextafter(float(np.linalg.norm(r)), math.inf)
                                for r in self.x_test]) * (1 + 1e-15)

    def retrain(self, z: int) -> Retrained:
        raise NotImplementedError


class SvmRetrainer(_Retrainer):
    """The SVM: warm-started dual coordinate ascent from the full α (``alpha``), the change
    of the exact hinge test loss."""

    def __init__(self, k, y, scale, wd, alpha, k_test, y_test):
        super().__init__(k, y, scale, wd, k_test, y_test)
        self.full = certificate(k, y.astype(np.int64), alpha, wd, np.ones(y.size, dtype=bool),
                                k_test, y_test.astype(np.int64), scale)

    def retrain(self, z: int) -> Retrained:
        keep = np.ones(self.y.size, dtype=bool)
        keep[z] = False
        alpha, report = solve_dual(self.x, self.y, self.wd, self.full.alpha, keep)
        cert = certificate(self.k, self.y.astype(np.int64), alpha, self.wd, keep,
                           self.k_test, self.y_test.astype(np.int64), self.scale)
        values = np.array([float(a - b) for a, b in zip(cert.test_hinge, self.full.test_hinge)])
        bounds = self.x_norm * (cert.radius + self.full.radius) * (1 + 4 * UNIT) \
            + UNIT * np.abs(values)
        return Retrained(values, bounds, cert.radius, report.sweeps,
                         {"duality_gap": cert.gap})


class SmoothRetrainer(_Retrainer):
    """The smooth-hinge model at temperature ``t``: Newton from the full model (``weight``),
    preconditioned by its Hessian; the change of ℓ_t."""

    def __init__(self, k, y, scale, wd, t, weight, k_test, y_test):
        from scipy.linalg import cho_factor

        super().__init__(k, y, scale, wd, k_test, y_test)
        self.t = t
        keep = np.ones(y.size, dtype=bool)
        self.full = fit_smooth(self.x, y, wd, t, keep, start=weight)
        m = y * (self.x @ self.full.weight)
        self.factor = cho_factor(smooth_hessian(self.x, y, m, wd, t, keep))

    def retrain(self, z: int) -> Retrained:
        keep = np.ones(self.y.size, dtype=bool)
        keep[z] = False
        loo = fit_smooth(self.x, self.y, self.wd, self.t, keep, start=self.full.weight,
                         factor=self.factor)
        pairs = [smooth_change(self.x_test[i], self.y_test[i], self.t, self.full, loo,
                               self.x_norm[i]) for i in range(self.y_test.size)]
        return Retrained(np.array([v for v, _ in pairs]), np.array([b for _, b in pairs]),
                         loo.radius, loo.steps)
