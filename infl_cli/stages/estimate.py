"""``infl score --method NAME``: the field's other estimators (:mod:`~infl_cli.engines.logreg.estimators`)
as scores artifacts, ``scores-<label>.safetensors`` in the layout ``score`` writes (``influence``
[T, n] in our sign, ``predicted_loss_diff`` = −influence/n, ``test_indices``), so ``plot``,
``loo`` and ``lds`` judge them as any other scores."""

from __future__ import annotations

import time
from pathlib import Path

from infl_cli.runtime import artifacts as art
from infl_cli.runtime.progress import progress_bar
from infl_cli.settings import EstimatorSettings
from infl_cli.stages.common import (
    TestChoice,
    available_scores,
    load_model,
    model_engine,
    model_record,
)


def _tests(workdir: Path, tests: TestChoice | None, data, engine) -> list[int]:
    """As asked, else those of the most accurate scores present, else the model's default."""

    default = [engine.default_test(data, model_record(workdir))]
    for label in available_scores(workdir):
        default = art.read_record(workdir / art.scores_name(label))["settings"]["test_indices"]
        break
    return (tests or TestChoice()).resolve(data.n_test, default)


def _ensemble(workdir, tensors, mrec, data, chosen, settings: EstimatorSettings):
    """TRAK's M models: Ŵ retrained on M random halves (certified subset retraining), as
    (weight over the active features, probabilities [n, C]) each."""
    import torch

    from infl_cli.engines.logreg import subsets
    from infl_cli.runtime.kept import Keeper
    from infl_cli.settings import LooSettings
    from infl_cli.stages.loo import build_problem

    keeper = Keeper(workdir, mrec)
    try:
        problem = build_problem(tensors, mrec, data, chosen, LooSettings(), keeper,
                                "score (trak): set-up")
    finally:
        keeper.close()
    keep = subsets.draw_subsets(data.n_train, settings.models, 0.5, settings.seed)
    deltas, _, _ = subsets.newton(problem, keep, 1e-8)
    models = []
    for delta in deltas:
        w = problem.weight + delta
        logits = data.design.matmul(w.T.contiguous())
        models.append((w, torch.softmax(logits, dim=1)))
    return models


def run_estimate(workdir: Path, settings: EstimatorSettings, tests: TestChoice | None = None,
                 device=None) -> dict:
    import torch

    from infl_cli.engines.logreg import estimators, model
    from infl_cli.runtime import device as device_mod

    tensors, mrec, data = load_model(workdir, device=device)
    engine = model_engine(mrec)
    engine.require_closed_form(f"--method {settings.method}", workdir / art.MODEL)
    chosen = _tests(workdir, tests, data, engine)
    weight = tensors["weight"]
    cert = engine.certificate(tensors, mrec)
    design = data.design
    active = design.active.to(weight.device)
    probs = cert.probs if cert is not None else model.probabilities(weight[:, active], design)
    fitted = estimators.FittedModel(weight, design, data.y_train, mrec["settings"]["wd"], probs,
                                    data.x_test[chosen][:, active].contiguous(),
                                    data.y_test[chosen])
    estimator = estimators.ESTIMATORS[settings.method](**settings.knobs())
    start = time.perf_counter()
    with progress_bar(f"score ({settings.method})", total=1) as update:
        if getattr(estimator, "models", 1) > 1:  # an ensemble (TRAK): retrained models
            models = _ensemble(workdir, tensors, mrec, data, chosen, settings)
            influence = estimator.influence(fitted, models)
        else:
            influence = estimator.influence(fitted)
        update()
    seconds = time.perf_counter() - start
    label = settings.label()
    record = {
        "stage": "score",
        "settings": {"solver": label, "method": settings.method,
                     "estimator": {**estimator.settings()}, "test_indices": list(chosen)},
        "inputs": {"model": mrec["fingerprint"]},
        "device": device_mod.describe(data.device),
        "n_train": data.n_train,
        "seconds": seconds,
    }
    return art.save_artifact(workdir / art.scores_name(label),
                             {"influence": influence,
                              "predicted_loss_diff": -influence / data.n_train,
                              "test_indices": torch.tensor(chosen, dtype=torch.int64)},
                             record)
