"""The engine of multinomial logistic regression (the closed-form model: :mod:`.model`,
:mod:`.train`, :mod:`.solvers`, :mod:`.score`, :mod:`.loo`), behind the seam of
:mod:`~infl_cli.engines.base`.

Tensors: ``weight`` W [C, d]; and what training certified at Ŵ, kept so that no later stage
recomputes it: ``grad`` (∇R(Ŵ) over the active features, within the record's ``grad_bound``),
``train_probs`` [n, C] (the softmax at Ŵ from certified logits) and ``train_row_error`` [n]
(proven bounds on those probabilities' errors,
:func:`~infl_cli.engines.logreg.model.certified_gradient`)."""

from __future__ import annotations

import torch

from infl_cli.engines.base import Engine
from infl_cli.engines.logreg import loo as loo_mod
from infl_cli.engines.logreg import model, score, train
from infl_cli.engines.logreg.solvers import LogisticOperator
from infl_cli.engines.policy import LogregPolicy
from infl_cli.runtime import memory


class LogregEngine(LogregPolicy, Engine):
    tensor_names = ("weight",)

    def describe(self, spec) -> str:
        return "multinomial logistic regression"

    def fit(self, data, wd: float, tol: float, max_iter: int, spec):
        weight, info = train.fit(data, wd, tol, max_iter)
        cert = info.pop("certificate")
        info["grad_bound"] = cert.bound
        return {"weight": weight, "grad": cert.grad, "train_probs": cert.probs,
                "train_row_error": cert.row_error}, info

    def certificate(self, tensors, mrec):
        """The certified gradient at Ŵ that training kept (None for a model written before it
        was kept: then it is recomputed)."""
        if "train_probs" not in tensors or "grad_bound" not in mrec:
            return None
        return model.CertifiedGradient(tensors["grad"], tensors["train_probs"], None,
                                       float(mrec["grad_bound"]), tensors["train_row_error"])

    def probabilities(self, tensors, x) -> torch.Tensor:
        return model.probabilities(tensors["weight"], x)

    def test_gradients(self, tensors, x, y) -> torch.Tensor:
        return model.test_point_grads(tensors["weight"], x, y)

    def operator(self, tensors, mrec, data, keeper=None) -> LogisticOperator:
        """H(Ŵ) on the data's design; the exact solve's float64 Cholesky factor from
        ``keeper`` when there is one (:func:`~infl_cli.engines.logreg.hessian.kept_factor`)."""
        return LogisticOperator(tensors["weight"], mrec["settings"]["wd"], data.design,
                                dense=lambda: data.x_train,
                                certificate=self.certificate(tensors, mrec), keeper=keeper)

    def scores(self, tensors, mrec, data, ihvps):
        cert = self.certificate(tensors, mrec)
        return score.influence_scores(tensors["weight"], data.design, data.y_train,
                                      mrec["settings"]["wd"], ihvps,
                                      probs=None if cert is None else cert.probs)

    def loo_problem(self, tensors, mrec, data, x_test, y_test, settings, on_block=None,
                    keeper=None):
        """The LOO problem; its preconditioner, the float32 inverse Hessian, from ``keeper``
        when there is one."""
        from infl_cli.engines.logreg.hessian import kept_factor

        weight = tensors["weight"]
        factor = None
        if settings.method == "newton":
            memory.require_hessian(weight.shape[0], data.design.width, 4, "--method newton",
                                   "use --method lbfgs (Hessian-free, slower per removal)")
            if keeper is not None:
                factor = kept_factor(keeper, weight, data.design, mrec["settings"]["wd"],
                                     torch.float32, on_block=on_block)
        return loo_mod.LooProblem(weight, data.design, data.y_train, mrec["settings"]["wd"],
                                  x_test, y_test, factor=factor,
                                  build_factor=settings.method == "newton",
                                  on_block=on_block, certificate=self.certificate(tensors, mrec))

    def auto_chunk_size(self, device, spec, data, settings) -> int:
        return loo_mod.auto_chunk_size(device, data.n_classes, data.n_features,
                                       settings.max_steps)

    def check_memory(self, step: str, data, what: str, **shape) -> None:
        from infl_cli.engines.logreg import footprint

        footprint.require(step, data, what, **shape)

    def hessian_blocks(self, tensors) -> int:
        """Progress units of building the LOO problem (the Gram blocks of the Hessian)."""
        c = tensors["weight"].shape[0]
        return c * (c - 1) // 2


ENGINE = LogregEngine()
