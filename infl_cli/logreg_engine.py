"""The engine of multinomial logistic regression (the closed-form model: :mod:`model`,
:mod:`train`, :mod:`ihvp`, :mod:`score`, :mod:`loo`), behind :mod:`engines`' interface.
Tensors: ``weight`` W [C, d]."""

from __future__ import annotations

import torch

from . import ihvp as ihvp_mod
from . import loo as loo_mod
from . import memory, model, score, train
from .errors import BadInput

SOLVERS = ihvp_mod.SOLVERS
METHODS = loo_mod.METHODS
DEFAULT_WD = 0.01
DEFAULT_TEST = 8  # the paper's test point (0 for a test set of 8 points or fewer)


class LogregEngine:
    kind = "logreg"
    default_wd = DEFAULT_WD
    default_tol = 1e-8  # every LOO ‖∇R₋z‖, certified
    solvers = SOLVERS
    methods = METHODS
    tensor_names = ("weight",)

    def training_data(self, data, spec):
        return data

    def default_test(self, data) -> int:
        return DEFAULT_TEST if data.n_test > DEFAULT_TEST else 0

    def describe(self, spec) -> str:
        return "multinomial logistic regression"

    def fit(self, data, wd: float, tol: float, max_iter: int, spec):
        weight, info = train.fit(data, wd, tol, max_iter)
        return {"weight": weight}, info

    def probabilities(self, tensors, x) -> torch.Tensor:
        return model.probabilities(tensors["weight"], x)

    def test_gradients(self, tensors, x, y) -> torch.Tensor:
        return model.test_point_grads(tensors["weight"], x, y)

    def default_damping(self, spec) -> float:
        return 0.0

    def check_solver(self, solver: str, damping: float) -> None:
        if damping and solver != "lissa":
            raise BadInput(f"--damping {damping:g} with --solver {solver}: the logistic "
                           "model's Hessian is positive definite (λ_min ≥ wd); damping is a "
                           "LiSSA setting here")

    def solve(self, tensors, mrec, data, solver, rhs, lissa, cg, damping=0.0):
        weight = tensors["weight"]
        if solver == "exact":
            memory.require_hessian(weight.shape[0], data.design.width, 8, "--solver exact",
                                   "use --solver cg or --solver lissa (Hessian-free)")
        elif solver == "cg" and cg.rank > 0:
            memory.require_gram(data.design.width, "--solver cg's preconditioner",
                                "use --cg-rank 0 (plain CG) or --solver lissa")
        return ihvp_mod.solve(solver, weight, data.x_train, mrec["settings"]["wd"], rhs, lissa,
                              cg, design=data.design)

    def scores(self, tensors, mrec, data, ihvps):
        return score.influence_scores(tensors["weight"], data.x_train, data.y_train,
                                      mrec["settings"]["wd"], ihvps)

    def check_method(self, method: str) -> None:
        if method not in METHODS:
            raise BadInput(f"unknown method {method!r} for the logistic model; choose one of: "
                           f"{', '.join(METHODS)}")

    def loo_problem(self, tensors, mrec, data, x_test, y_test, settings, on_block=None):
        weight = tensors["weight"]
        if settings.method == "newton":
            memory.require_hessian(weight.shape[0], data.design.width, 4, "--method newton",
                                   "use --method lbfgs (Hessian-free, slower per removal)")
        return loo_mod.LooProblem(weight, data.design, data.y_train, mrec["settings"]["wd"],
                                  x_test, y_test, build_factor=settings.method == "newton",
                                  on_block=on_block)

    def default_solver(self, spec) -> str:
        return "lissa"

    def default_method(self, spec) -> str:
        return "newton"

    def auto_chunk_size(self, device, spec, data, settings) -> int:
        return loo_mod.auto_chunk_size(device, data.n_classes, data.n_features,
                                       settings.max_steps)

    def result_keys(self, settings) -> tuple:
        return ()

    def loo_summary(self, arrays, settings) -> dict:
        """What the LOO record says of its error figures: proofs."""
        return {"error_kind": "certified"}

    def hessian_blocks(self, tensors) -> int:
        """Progress units of building the LOO problem (the Gram blocks of the Hessian)."""
        c = tensors["weight"].shape[0]
        return c * (c - 1) // 2


ENGINE = LogregEngine()
