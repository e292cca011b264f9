"""How a Dask worker rebuilds the logistic model's LOO problem (:class:`ProblemRecipe`): the
data from the folder the model records (checked by fingerprint), the model and the test
points; the factored Hessian comes separately, broadcast once from the driver
(:mod:`~infl_cli.runtime.cluster`)."""

from __future__ import annotations

from dataclasses import dataclass

from infl_cli.errors import InflError


@dataclass
class ProblemRecipe:
    """How a worker rebuilds the LOO problem: the data (checked by fingerprint), the model
    and the test points; the factored Hessian comes separately (scattered)."""

    settings: dict  # the model's training settings: dataset, data folder, bias, wd
    data_fingerprint: str
    weight: object  # torch.Tensor [C, d]
    test_indices: list
    key: str  # identifies the problem (model fingerprint, test points) across tasks
    certificate: object = None  # training's certified gradient at Ŵ (the driver's too)

    @staticmethod
    def shared(problem):
        """What the driver broadcasts: its problem's factored Hessian."""
        return problem.factor

    def build(self, factor):
        import torch

        from infl_cli.data.datasets import recorded_dataset
        from infl_cli.engines.logreg import loo

        data = recorded_dataset(self.settings, download=False)
        if data.fingerprint != self.data_fingerprint:
            raise InflError(f"the data a worker found at "
                            f"{self.settings['data_dir'] or self.settings['dataset']} differ "
                            "from those the model was trained on")
        sel = torch.tensor(self.test_indices, dtype=torch.int64)
        return loo.LooProblem(self.weight, data.design, data.y_train, self.settings["wd"],
                              data.x_test[sel], data.y_test[sel], factor=factor,
                              certificate=self.certificate)
