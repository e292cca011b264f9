"""The engines of the linear SVM (``--model svm``) and of the smooth-hinge model
(``--model smooth-hinge``), behind :mod:`engines`' interface, so that ``train``, ``ihvp``,
``score``, ``loo``, ``plot`` and ``run`` work on them as on the logistic model
(:mod:`~infl_cli.engines.hinge.svm` holds the mathematics; ``infl hinge`` runs the whole Figure 3 study).

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

from infl_cli.engines.hinge import svm
from infl_cli.engines.spec import HingePolicy
from infl_cli.errors import InflError
from infl_cli.engines.hinge.loo import Retrainer


def _numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy()


class _Problem:
    """A binary data set as the SVM needs it: int64 pixel integers, ±1 labels, float64."""

    def __init__(self, data):
        self.k = np.asarray(data.train_x, dtype=np.int64)
        self.y = 1.0 - 2.0 * np.asarray(data.train_y, dtype=np.float64)
        self.scale = int(data.pixel_scale)
        self.x = self.k / self.scale


class HingeEngine(HingePolicy):
    tensor_names = ("weight", "alpha", "temperature")

    def describe(self, spec) -> str:
        t = spec.temperature
        if self.kind == "svm":
            return f"linear SVM (hinge; influence through the smooth hinge at t = {t:g})"
        return f"smooth-hinge linear model, trained at t = {t:g}"

    # --------------------------------------------------------------------------- train
    def fit(self, data, wd: float, tol: float, max_iter: int, spec):
        start = time.perf_counter()
        p = _Problem(data)
        device = data.device
        if self.kind == "svm":
            cert, report = svm.train_svm(p.k, p.y, wd, p.scale, p.k[:0], p.y[:0])
            weight = cert.weight
            info = {"duality_gap": cert.gap, "radius": cert.radius, "train_loss": cert.primal,
                    "grad_bound": wd * cert.radius, "kkt": report.kkt,
                    "dual_rounds": report.rounds, "dual_sweeps": report.sweeps,
                    "free_support_vectors": int(((cert.alpha > 0) & (cert.alpha < 1)).sum()),
                    "bounded_support_vectors": int((cert.alpha >= 1).sum()),
                    "certificate": "exact duality gap: ‖w − w*‖ ≤ √(2·gap/wd)"}
            tensors = {"alpha": torch.from_numpy(cert.alpha).to(device)}
        else:
            t = spec.temperature
            model = svm.train_smooth(p.x, p.y, wd, t, tol=min(tol, 1e-14))
            weight = model.weight
            info = {"grad_norm": model.grad_norm, "grad_bound": model.grad_bound,
                    "radius": model.radius, "newton_steps": model.steps,
                    "train_loss": svm.smooth_objective(p.x, p.y, weight, wd, t,
                                                       np.ones(p.y.size, dtype=bool)),
                    "certificate": "gradient: ‖w − w*‖ ≤ (‖∇R‖ + rounding)/wd"}
            tensors = {}
        info["seconds"] = time.perf_counter() - start
        info["temperature"] = spec.temperature
        tensors["temperature"] = torch.tensor(spec.temperature, dtype=torch.float64,
                                              device=device)
        tensors["weight"] = torch.from_numpy(np.ascontiguousarray(weight)).to(device)
        return tensors, info

    def probabilities(self, tensors, x) -> torch.Tensor:
        """[σ(s), σ(−s)] of the score s = wᵀx: the decision as two columns (class 0 where
        s > 0); the logistic link of the score, not a calibrated probability."""
        s = x @ tensors["weight"]
        return torch.stack([torch.sigmoid(s), torch.sigmoid(-s)], dim=1)

    # --------------------------------------------------------------------------- ihvp/score
    @staticmethod
    def _t(tensors) -> float:
        """The temperature of influence (the SVM) or of training and influence (the smooth
        model), kept with the weights."""
        return float(tensors["temperature"])

    def test_gradients(self, tensors, x, y) -> torch.Tensor:
        """∇ℓ_t(z_test) per test point (no regulariser), at the model's t."""
        g = svm.test_gradient(_numpy(x), 1.0 - 2.0 * _numpy(y).astype(np.float64),
                              _numpy(tensors["weight"]), self._t(tensors))
        return torch.from_numpy(g).to(x.device)

    def solve(self, tensors, mrec, data, solver, rhs, lissa, cg, damping=0.0, keeper=None):
        """H_t⁻¹·rhs by a dense Cholesky (d × d); proven error ‖s − s*‖ ≤ ‖Hs − g‖/wd (the
        residual evaluated in float64: its rounding is below 1e-13 of ‖g‖ here)."""
        start = time.perf_counter()
        wd = mrec["settings"]["wd"]
        t = self._t(tensors)
        p = _Problem(data)
        g = _numpy(rhs)
        s, residual = svm.solve_h(p.x, p.y, _numpy(tensors["weight"]), wd, t, g)
        g_norm = np.maximum(np.linalg.norm(g, axis=1), 1e-300)
        s_norm = np.linalg.norm(s, axis=1)
        e = residual / wd
        report = {"settings": {"temperature": t}, "iterations": 1, "hvps": 0,
                  "factorisation": "Cholesky of H_t (d × d)",
                  "relative_residual": (residual / g_norm).tolist(),
                  "residual_rounding_bound": [0.0] * len(residual),
                  "error_bound_relative": np.where(s_norm > e, e / np.maximum(s_norm - e,
                                                                              1e-300),
                                                   np.where(s_norm == 0, 0.0, np.inf)).tolist(),
                  "error_bound_certified": True,
                  "seconds": time.perf_counter() - start}
        return torch.from_numpy(s).to(rhs.device), report

    def scores(self, tensors, mrec, data, ihvps):
        """I_up,loss(z, test) = −∇L_testᵀ H_t⁻¹ ∇L(z), ∇L(z) = ℓ_t'(m_z)·y_z x_z + wd·w; and the
        predicted change −I/n (:func:`~infl_cli.engines.hinge.svm.predicted_from_ihvp`)."""
        p = _Problem(data)
        predicted = svm.predicted_from_ihvp(p.x, p.y, _numpy(tensors["weight"]),
                                            mrec["settings"]["wd"], self._t(tensors),
                                            _numpy(ihvps))
        out = torch.from_numpy(predicted).to(ihvps.device)
        return -out * p.y.size, out

    # --------------------------------------------------------------------------- loo
    def loo_problem(self, tensors, mrec, data, x_test, y_test, settings, on_block=None,
                    keeper=None):
        return HingeLooProblem(self.kind, tensors, mrec, data, x_test, y_test)

    def auto_chunk_size(self, device, spec, data, settings) -> int:
        return 10

    def result_keys(self, settings) -> tuple:
        return ("duality_gap",) if self.kind == "svm" else ()

    def loo_summary(self, arrays, settings) -> dict:
        out = {"error_kind": "certified"}
        if self.kind == "svm":
            out["max_duality_gap"] = float(np.nanmax(arrays["duality_gap"]))
        return out

    def hessian_blocks(self, tensors) -> int:
        return 1


class HingeLooProblem:
    """Retrains without each removal through :class:`~infl_cli.engines.hinge.loo.Retrainer` (pure in its
    inputs: chunks may run in any order); the module doc says what is certified."""

    def __init__(self, kind, tensors, mrec, data, x_test, y_test):
        p = _Problem(data)
        xt = _numpy(x_test)
        kt = np.rint(xt * p.scale).astype(np.int64)
        if not np.array_equal(kt / p.scale, xt):
            raise InflError("the test points' features are not integers over the training "
                            "scale; the SVM's exact certificate needs them")
        alpha = _numpy(tensors["alpha"]) if "alpha" in tensors else None
        self.kind, self.wd = kind, mrec["settings"]["wd"]
        self.retrainer = Retrainer(kind, p.k, p.y, p.scale, self.wd,
                                   float(tensors["temperature"]) if kind != "svm" else 0.0,
                                   _numpy(tensors["weight"]), alpha, kt,
                                   1.0 - 2.0 * _numpy(y_test).astype(np.float64))
        r0 = self.retrainer.full.radius
        self.baseline_error = self.retrainer.x_norm * r0  # the full model's share of each bar

    def solve_chunk(self, removed, selected, settings):
        T, k = self.retrainer.y_test.size, len(removed)
        out = {"actual_loss_diff": np.full((T, k), np.nan),
               "actual_error_bound": np.full((T, k), np.nan),
               "grad_norm": np.zeros(k), "grad_rounding": np.zeros(k),
               "steps": np.zeros(k, dtype=np.int64), "fallback": np.zeros(k, dtype=bool)}
        if self.kind == "svm":
            out["duality_gap"] = np.zeros(k)
        picked = np.asarray(selected, dtype=bool)
        for j, z in enumerate(np.asarray(removed).tolist()):
            done = self.retrainer.retrain(z)
            out["actual_loss_diff"][:, j] = np.where(picked[:, j], done.values, np.nan)
            out["actual_error_bound"][:, j] = np.where(picked[:, j], done.bounds, np.nan)
            out["grad_norm"][j] = self.wd * done.radius
            out["steps"][j] = done.steps
            if self.kind == "svm":
                out["duality_gap"][j] = done.gap
        return out, {}


ENGINES = {"svm": HingeEngine("svm"), "smooth-hinge": HingeEngine("smooth-hinge")}
