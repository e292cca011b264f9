"""The engines of the linear SVM (``--model svm``: :class:`SvmEngine`) and of the smooth-hinge
model (``--model smooth-hinge``: :class:`SmoothHingeEngine`), behind the seam of
:mod:`~infl_cli.engines.base`, so that ``train``, ``ihvp``, ``score``, ``loo``, ``plot`` and
``run`` work on them as on the logistic model (:mod:`~infl_cli.engines.hinge.svm` holds the
mathematics; ``infl hinge`` runs the whole Figure 3 study).

Labels y = +1 for class 0 and −1 for class 1 (``--classes A,B``: A is +1); per-point loss
ℓ(y wᵀx) + (wd/2)‖w‖², no bias. Tensors: ``weight`` [d] and, for the SVM, ``alpha`` [n] (its
certified dual point, on the 2⁻⁵² grid).

* ``svm``: trained on the hinge by dual coordinate ascent, certified by its exact duality gap
  (‖w − w*‖ ≤ √(2·gap/wd)); influence through SmoothHinge_t at ``--temperature t`` (the test
  gradient, the training gradients and H_t, all at the SVM's weights: the paper's Figure 3);
  LOO by warm-started dual coordinate ascent, the actual change being that of the **hinge**
  test loss (t = 0), whatever t the influence used, as in the paper.
* ``smooth-hinge``: trained on SmoothHinge_t at its own t (Newton, certified by its gradient,
  rounding bounded); influence and LOO (Newton from the full model) with that same loss.

Every LOO model's certificate is recorded as ``grad_norm`` = wd·r, r its certified radius
(for the smooth model r = (‖∇R‖ + rounding)/wd, so this is its gradient bound; for the SVM
wd·√(2·gap/wd), the gradient bound that would give the same radius), with ``grad_rounding`` 0:
the stage's "certified ‖∇R‖ ≤ tol" means r ≤ tol/wd for both. Each actual change is proven
within ‖x_test‖·(r + r₀) (ℓ is 1-Lipschitz in the margin), plus the smooth loss's float64
evaluation (the SVM's test hinge losses are exact fractions). NumPy on the CPU: a tensor on
another device is brought to the CPU and its results sent back.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from infl_cli.engines.base import Engine
from infl_cli.engines.hinge import svm
from infl_cli.engines.hinge.loo import SmoothRetrainer, SvmRetrainer
from infl_cli.engines.policy import SmoothHingePolicy, SvmPolicy
from infl_cli.errors import InflError
from infl_cli.numerics.solvers import Operator


def _numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy()


class _Problem:
    """A binary data set as the SVM needs it: int64 pixel integers, ±1 labels, float64."""

    def __init__(self, data):
        self.k = np.asarray(data.train_x, dtype=np.int64)
        self.y = 1.0 - 2.0 * np.asarray(data.train_y, dtype=np.float64)
        self.scale = int(data.pixel_scale)
        self.x = self.k / self.scale


class HingeOperator(Operator):
    """H_t at the model's weights (d × d, dense), solved by Cholesky; proven error
    ‖s − s*‖ ≤ ‖H_t s − g‖/wd (the residual evaluated in float64: its rounding is below 1e-13
    of ‖g‖ here)."""

    def __init__(self, data, weight: np.ndarray, wd: float, t: float):
        self.p, self.weight, self.wd, self.t = _Problem(data), weight, wd, t
        self._h = None

    def hessian(self) -> np.ndarray:
        if self._h is None:
            p = self.p
            self._h = svm.smooth_hessian(p.x, p.y, p.y * (p.x @ self.weight), self.wd, self.t,
                                         np.ones(p.y.size, dtype=bool), drop=0.0)
        return self._h

    def exact(self, rhs, damping: float):
        from scipy.linalg import cho_factor, cho_solve

        g = np.atleast_2d(_numpy(rhs))
        s = cho_solve(cho_factor(self.hessian()), g.T).T
        return torch.from_numpy(s).to(rhs.device), {
            "settings": {"temperature": self.t}, "iterations": 1, "hvps": 0,
            "factorisation": "Cholesky of H_t (d × d)"}

    def error(self, est, rhs, damping: float):
        s, g = np.atleast_2d(_numpy(est)), np.atleast_2d(_numpy(rhs))
        residual = np.linalg.norm(s @ self.hessian() - g, axis=1)
        return residual, np.zeros_like(residual), self.wd, True, None


class _HingeEngine(Engine):
    """What the SVM and the smooth-hinge model share: the smooth hinge at the model's t for
    influence, and LOO through a retrainer (:mod:`~infl_cli.engines.hinge.loo`)."""

    tensor_names = ("weight", "alpha", "temperature")

    def probabilities(self, tensors, x) -> torch.Tensor:
        """[σ(s), σ(−s)] of the score s = wᵀx: the decision as two columns (class 0 where
        s > 0); the logistic link of the score, not a calibrated probability."""
        s = x @ tensors["weight"]
        return torch.stack([torch.sigmoid(s), torch.sigmoid(-s)], dim=1)

    @staticmethod
    def _t(tensors) -> float:
        """The temperature of influence (the SVM) or of training and influence (the smooth
        model), kept with the weights."""
        return float(tensors["temperature"])

    def _fitted(self, tensors, data, spec, wd: float, tol: float):
        """(tensors, info) of the trained model (its own kind's training)."""
        raise NotImplementedError

    def fit(self, data, wd: float, tol: float, max_iter: int, spec):
        start = time.perf_counter()
        tensors, info = self._fitted(_Problem(data), data, spec, wd, tol)
        info["seconds"] = time.perf_counter() - start
        info["temperature"] = spec.temperature
        weight = _numpy(tensors["weight"])
        margins = (1.0 - 2.0 * np.asarray(data.test_y, dtype=np.float64)) \
            * (data.features("test") @ weight)
        info["worst_test"] = int(np.argmin(margins))  # the default test point (policy)
        tensors["temperature"] = torch.tensor(spec.temperature, dtype=torch.float64,
                                              device=data.device)
        return tensors, info

    def test_gradients(self, tensors, x, y) -> torch.Tensor:
        """∇ℓ_t(z_test) per test point (no regulariser), at the model's t."""
        g = svm.test_gradient(_numpy(x), 1.0 - 2.0 * _numpy(y).astype(np.float64),
                              _numpy(tensors["weight"]), self._t(tensors))
        return torch.from_numpy(g).to(x.device)

    def operator(self, tensors, mrec, data, keeper=None) -> HingeOperator:
        return HingeOperator(data, _numpy(tensors["weight"]), mrec["settings"]["wd"],
                             self._t(tensors))

    def scores(self, tensors, mrec, data, ihvps):
        """I_up,loss(z, test) = −∇L_testᵀ H_t⁻¹ ∇L(z), ∇L(z) = ℓ_t'(m_z)·y_z x_z + wd·w; and the
        predicted change −I/n (:func:`~infl_cli.engines.hinge.svm.predicted_from_ihvp`)."""
        p = _Problem(data)
        predicted = svm.predicted_from_ihvp(p.x, p.y, _numpy(tensors["weight"]),
                                            mrec["settings"]["wd"], self._t(tensors),
                                            _numpy(ihvps))
        out = torch.from_numpy(predicted).to(ihvps.device)
        return -out * p.y.size, out

    def _retrainer(self, p: _Problem, tensors, wd: float, k_test, y_test):
        raise NotImplementedError

    def loo_problem(self, tensors, mrec, data, x_test, y_test, settings, on_block=None,
                    keeper=None):
        p = _Problem(data)
        xt = _numpy(x_test)
        kt = np.rint(xt * p.scale).astype(np.int64)
        if not np.array_equal(kt / p.scale, xt):
            raise InflError("the test points' features are not integers over the training "
                            "scale; the SVM's exact certificate needs them")
        retrainer = self._retrainer(p, tensors, mrec["settings"]["wd"], kt,
                                    1.0 - 2.0 * _numpy(y_test).astype(np.float64))
        return HingeLooProblem(retrainer, mrec["settings"]["wd"], self.result_keys(settings))

    def auto_chunk_size(self, device, spec, data, settings) -> int:
        return 10


class SvmEngine(SvmPolicy, _HingeEngine):
    """The SVM: dual coordinate ascent to an exact duality gap; LOO warm-started from α."""

    def describe(self, spec) -> str:
        return (f"linear SVM (hinge; influence through the smooth hinge at "
                f"t = {spec.temperature:g})")

    def _fitted(self, p, data, spec, wd, tol):
        cert, report = svm.train_svm(p.k, p.y, wd, p.scale, p.k[:0], p.y[:0])
        info = {"duality_gap": cert.gap, "radius": cert.radius, "train_loss": cert.primal,
                "grad_bound": wd * cert.radius, "kkt": report.kkt,
                "dual_rounds": report.rounds, "dual_sweeps": report.sweeps,
                "free_support_vectors": int(((cert.alpha > 0) & (cert.alpha < 1)).sum()),
                "bounded_support_vectors": int((cert.alpha >= 1).sum()),
                "certificate": "exact duality gap: ‖w − w*‖ ≤ √(2·gap/wd)"}
        return {"alpha": torch.from_numpy(cert.alpha).to(data.device),
                "weight": torch.from_numpy(np.ascontiguousarray(cert.weight)).to(data.device)}, \
            info

    def _retrainer(self, p, tensors, wd, k_test, y_test):
        return SvmRetrainer(p.k, p.y, p.scale, wd, _numpy(tensors["alpha"]), k_test, y_test)

    def result_keys(self, settings) -> tuple:
        return ("duality_gap",)

    def loo_summary(self, arrays, settings) -> dict:
        return {"error_kind": "certified",
                "max_duality_gap": float(np.nanmax(arrays["duality_gap"]))}


class SmoothHingeEngine(SmoothHingePolicy, _HingeEngine):
    """The smooth-hinge model: Newton at its own t, certified by its gradient."""

    def describe(self, spec) -> str:
        return f"smooth-hinge linear model, trained at t = {spec.temperature:g}"

    def _fitted(self, p, data, spec, wd, tol):
        t = spec.temperature
        model = svm.train_smooth(p.x, p.y, wd, t, tol=min(tol, 1e-14))
        info = {"grad_norm": model.grad_norm, "grad_bound": model.grad_bound,
                "radius": model.radius, "newton_steps": model.steps,
                "train_loss": svm.smooth_objective(p.x, p.y, model.weight, wd, t,
                                                   np.ones(p.y.size, dtype=bool)),
                "certificate": "gradient: ‖w − w*‖ ≤ (‖∇R‖ + rounding)/wd"}
        return {"weight": torch.from_numpy(np.ascontiguousarray(model.weight)).to(data.device)}, \
            info

    def _retrainer(self, p, tensors, wd, k_test, y_test):
        return SmoothRetrainer(p.k, p.y, p.scale, wd, self._t(tensors),
                               _numpy(tensors["weight"]), k_test, y_test)


class HingeLooProblem:
    """Retrains without each removal through a retrainer (pure in its inputs: chunks may run
    in any order); the module doc says what is certified. ``extra``: the per-removal results
    the retrainer adds (the SVM's ``duality_gap``)."""

    def __init__(self, retrainer, wd: float, extra: tuple):
        self.retrainer, self.wd, self.extra = retrainer, wd, extra
        self.baseline_error = retrainer.x_norm * retrainer.full.radius  # the full model's share

    def solve_chunk(self, removed, selected, settings):
        T, k = self.retrainer.y_test.size, len(removed)
        out = {"actual_loss_diff": np.full((T, k), np.nan),
               "actual_error_bound": np.full((T, k), np.nan),
               "grad_norm": np.zeros(k), "grad_rounding": np.zeros(k),
               "steps": np.zeros(k, dtype=np.int64), "fallback": np.zeros(k, dtype=bool),
               **{key: np.zeros(k) for key in self.extra}}
        picked = np.asarray(selected, dtype=bool)
        for j, z in enumerate(np.asarray(removed).tolist()):
            done = self.retrainer.retrain(z)
            out["actual_loss_diff"][:, j] = np.where(picked[:, j], done.values, np.nan)
            out["actual_error_bound"][:, j] = np.where(picked[:, j], done.bounds, np.nan)
            out["grad_norm"][j] = self.wd * done.radius
            out["steps"][j] = done.steps
            for key, value in done.extra.items():
                out[key][j] = value
        return out, {}


SVM = SvmEngine()
SMOOTH_HINGE = SmoothHingeEngine()
