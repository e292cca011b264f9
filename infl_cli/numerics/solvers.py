"""The inverse-HVP solvers, s = (H + λI)⁻¹g, as objects: :class:`ExactSolver`,
:class:`CgSolver` and :class:`LissaSolver`, each knowing its settings, its label and how its
error is reported. ``--solver`` is parsed into one once, at the edge (:func:`make_solver`),
and nothing downstream tests its name.

A solver works on an engine's :class:`Operator`, the model's curvature at its trained point:
the exact solver asks it for its exact solve, CG for its (preconditioned) CG solve, LiSSA for
its mini-batch curvature, over which the recursion of :func:`~infl_cli.numerics.ihvp.lissa`
runs. Every solver then measures its residual through the operator and reports, once for all
engines (:func:`error_report`), the relative residual and the error bound it implies.

Torch-free at import: the command line parses and checks ``--solver`` before torch loads.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

from infl_cli.errors import BadInput, InflError
from infl_cli.settings import SOLVERS, CgSettings, LissaSettings


class Operator:
    """An engine's curvature at its trained point, for the solvers. ``prepare(rhs)`` gives
    the right-hand sides as the operator solves them (the CNN's, with the net's null direction
    projected out); ``error(est, rhs, λ)``
    returns (residual norms ‖(H + λI)s − g‖ [T], proven bounds on their rounding [T] (zeros
    when not bounded), a lower bound on λ_min(H + λI) or None, whether that bound and the
    rounding are proofs, and a note for the record or None)."""

    def prepare(self, rhs):
        return rhs

    def exact(self, rhs, damping: float):
        """(H + λI)⁻¹ rhs by a factorisation: (estimate, report fields)."""
        raise NotImplementedError

    def cg(self, rhs, settings: CgSettings, damping: float):
        """(H + λI)⁻¹ rhs by conjugate gradients: (estimate, report fields)."""
        raise NotImplementedError

    def curvature(self):
        """Mini-batch Hessian-vector products for LiSSA (:mod:`~infl_cli.numerics.ihvp`)."""
        raise NotImplementedError

    def error(self, est, rhs, damping: float):
        raise NotImplementedError


class Solver:
    """One inverse-HVP method with its settings; ``damping`` is λ of (H + λI)."""

    name = ""

    def __init__(self, damping: float = 0.0):
        self.damping = float(damping)

    def label(self) -> str:
        """How its inverse-HVPs and scores are named: the solver, with λ when it is not 0
        (``exact-damping0.01``)."""
        return f"{self.name}-damping{self.damping:g}" if self.damping else self.name

    def record(self, test_indices: list[int]) -> dict:
        """The settings an ``ihvp-<label>.safetensors`` records."""
        out = {"solver": self.name, "test_indices": list(test_indices)}
        out.update(self._settings_record())
        if self.damping:
            out["damping"] = self.damping
        return out

    def _settings_record(self) -> dict:
        return {}

    def solve(self, operator: Operator, rhs):
        """(estimate, report): the report holds the solver's own figures, its seconds, and the
        error figures of :func:`error_report`."""
        import torch

        start = time.perf_counter()
        rhs = operator.prepare(rhs)
        est, report = self._solve(operator, rhs)
        report["seconds"] = time.perf_counter() - start
        if not bool(torch.isfinite(est).all()):
            raise InflError(f"{self.name} produced a non-finite inverse-HVP")
        report.update(error_report(est, rhs, *operator.error(est, rhs, self.damping)))
        return est, report

    def _solve(self, operator: Operator, rhs):
        raise NotImplementedError


class ExactSolver(Solver):
    """A factorisation of H + λI (the reference)."""

    name = "exact"

    def _solve(self, operator, rhs):
        return operator.exact(rhs, self.damping)


class CgSolver(Solver):
    """Conjugate gradients on full-batch Hessian-vector products (preconditioned where the
    engine has a preconditioner: ``settings.rank``)."""

    name = "cg"

    def __init__(self, settings: CgSettings, damping: float = 0.0):
        super().__init__(damping)
        self.settings = settings

    def _settings_record(self) -> dict:
        return {"cg": asdict(self.settings)}

    def _solve(self, operator, rhs):
        return operator.cg(rhs, self.settings, self.damping)


class LissaSolver(Solver):
    """LiSSA's stochastic recursion; its damping is the recursion's (one of its settings),
    so λ of (H + λI) is 0."""

    name = "lissa"

    def __init__(self, settings: LissaSettings):
        super().__init__(0.0)
        self.settings = settings

    def _settings_record(self) -> dict:
        return {"lissa": asdict(self.settings)}

    def _solve(self, operator, rhs):
        from infl_cli.numerics.ihvp import lissa

        est, info = lissa(operator.curvature(), rhs, self.settings)
        return est, {"settings": asdict(self.settings), **info, "iterations": info["steps"]}


@dataclass(frozen=True)
class SolverChoice:
    """What ``--solver`` and its options ask for, checked on construction (one line for each
    bad value, before any model is read); :meth:`for_model` makes the :class:`Solver` for a
    model, with that model's defaults. ``name`` None: the model's default solver;
    ``damping``: LiSSA's recursion damping, or λ of (H + λI) for cg and exact (None: the
    model's default)."""

    name: str | None = None
    lissa: LissaSettings = field(default_factory=LissaSettings)
    cg: CgSettings = field(default_factory=CgSettings)
    damping: float | None = None

    def __post_init__(self):
        if self.name is not None and self.name not in SOLVERS:
            raise BadInput(f"unknown solver {self.name!r}; choose one of: {', '.join(SOLVERS)}")
        if self.damping is not None:
            if self.name == "lissa" and not 0 <= self.damping < 1:
                raise BadInput(f"--damping must be in [0, 1) for LiSSA's recursion, got "
                               f"{self.damping}")
            if not self.damping >= 0:
                raise BadInput(f"--damping must be ≥ 0, got {self.damping}")
        _validate_lissa(self.lissa)
        _validate_cg(self.cg)

    def for_model(self, policy, spec) -> Solver:
        """The solver for a model of ``policy`` (:mod:`~infl_cli.engines.policy`) and
        ``spec``: its default where none was named, its damping where none was given, and
        the solvers it has."""
        name = self.name or policy.default_solver(spec)
        if name == "lissa":
            lissa = self.lissa
            if self.damping is not None:
                lissa = replace(lissa, damping=self.damping)
                _validate_lissa(lissa)
            solver = LissaSolver(lissa)
        else:
            lam = float(self.damping) if self.damping is not None else \
                policy.default_damping(spec)
            solver = ExactSolver(lam) if name == "exact" else CgSolver(self.cg, lam)
        policy.check_solver(solver.name, solver.damping)
        return solver


def make_solver(name: str | None, policy, spec, lissa: LissaSettings | None = None,
                cg: CgSettings | None = None, damping: float | None = None) -> Solver:
    """``SolverChoice(name, lissa, cg, damping).for_model(policy, spec)``."""
    return SolverChoice(name, lissa or LissaSettings(), cg or CgSettings(),
                        damping).for_model(policy, spec)


def _validate_lissa(s: LissaSettings) -> None:
    if s.scale != "auto" and not (isinstance(s.scale, (int, float)) and s.scale > 0):
        raise BadInput(f"--scale must be 'auto' or a number > 0, got {s.scale!r}")
    if not 0 <= s.damping < 1:
        raise BadInput(f"--damping must be in [0, 1), got {s.damping}")
    for name in ("depth", "batch_size", "repeats"):
        if getattr(s, name) < 1:
            raise BadInput(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(s, name)}")
    if not 0 <= s.average_tail <= 1:
        raise BadInput(f"--average-tail must be in [0, 1], got {s.average_tail}")
    if not s.stop_tol >= 0:
        raise BadInput(f"--stop-tol must be ≥ 0 (0: no early stop), got {s.stop_tol}")
    if s.check_every < 1:
        raise BadInput(f"--check-every must be ≥ 1, got {s.check_every}")


def _validate_cg(s: CgSettings) -> None:
    if not s.rtol > 0:
        raise BadInput(f"--cg-rtol must be > 0, got {s.rtol}")
    if s.max_iter < 1:
        raise BadInput(f"--cg-max-iter must be ≥ 1, got {s.max_iter}")
    if s.rank < 0:
        raise BadInput(f"--cg-rank must be ≥ 0, got {s.rank}")


def error_report(est, rhs, residual, rounding, floor, certified: bool, note=None) -> dict:
    """The error figures every inverse-HVP reports, per test point: the relative residual
    ‖(H + λI)s − g‖/‖g‖, the bound on its rounding (relative to ‖g‖), and the relative
    error bound ‖s − s*‖/‖s*‖ ≤ e/(‖s‖ − e) with e = (residual + rounding)/λ_floor
    (:func:`~infl_cli.numerics.bounds.ihvp_error`; NaN without a floor). ``certified``: the
    floor and the rounding are proofs (else the bound is an estimate)."""
    import numpy as np

    from infl_cli.numerics.bounds import ihvp_error
    from infl_cli.numerics.linalg import batched_norm

    g_norm = batched_norm(rhs).cpu().numpy()
    residual = np.asarray(residual, dtype=np.float64)
    rounding = np.asarray(rounding, dtype=np.float64)
    if floor is not None and floor > 0:
        _, relative = ihvp_error(residual + rounding, batched_norm(est).cpu().numpy(), floor)
        relative = relative.tolist()
    else:
        relative = [math.nan] * len(residual)
    out = {"relative_residual": (residual / g_norm).tolist(),
           "residual_rounding_bound": (rounding / g_norm).tolist(),
           "error_bound_relative": relative,
           "error_bound_certified": bool(certified)}
    if note is not None:
        out["error_bound_note"] = note
    return out
