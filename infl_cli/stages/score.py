"""``infl score``: the influence of every training point on each test loss, written to
``scores-<label>.safetensors``."""

from __future__ import annotations

import time
from pathlib import Path

from infl_cli.errors import InflError
from infl_cli.runtime import artifacts as art
from infl_cli.runtime.progress import progress_bar
from infl_cli.stages.common import TestChoice, choose_artifact, load_model, model_engine


def score_settings(solver: str, test_indices: list[int]) -> dict:
    return {"solver": solver, "test_indices": list(test_indices)}


def score_tests(workdir: Path, solver: str, tests: TestChoice | None, data):
    """(ihvp tensors, ihvp record, chosen test indices): by default every test point the
    inverse-HVPs hold."""
    tensors, irec = art.load_artifact(workdir / art.ihvp_name(solver), "ihvp",
                                      hint=f"infl ihvp --solver {solver}")
    have = tensors["test_indices"].tolist()
    chosen = (tests or TestChoice()).resolve(data.n_test, have, have, art.ihvp_name(solver))
    return tensors, irec, chosen


def run_score(workdir: Path, solver: str, tests: TestChoice | None = None,
              loaded=None, device=None) -> dict:
    """Scores from the inverse-HVPs named ``solver`` (a label: ``exact``, ``cg``,
    ``lissa`` or e.g. ``exact-damping0.01``; None: the newest of this model that hold the test
    points asked for)."""
    import torch

    from infl_cli.runtime import device as device_mod

    tensors_m, mrec, data = loaded or load_model(workdir, device=device)
    solver = choose_artifact(workdir, "ihvp", solver, mrec["fingerprint"],
                             (tests or TestChoice()).asked(data.n_test), "score")
    tensors, irec, chosen = score_tests(workdir, solver, tests, data)
    if irec["inputs"]["model"] != mrec["fingerprint"]:
        raise InflError(f"{art.ihvp_name(solver)} was computed for another model than "
                        f"{art.MODEL}; rerun `infl ihvp --solver {solver}`")
    have = tensors["test_indices"].tolist()
    rows = torch.tensor([have.index(t) for t in chosen])
    engine = model_engine(mrec)
    engine.check_memory("score", data, "infl score", tests=len(chosen))
    start = time.perf_counter()
    with progress_bar("score", total=1) as update:
        influence, predicted = engine.scores(
            tensors_m, mrec, data, tensors["ihvp"][rows].to(data.device))
        update()
    record = {
        "stage": "score",
        "settings": score_settings(solver, chosen),
        "inputs": {"model": mrec["fingerprint"], "ihvp": irec["fingerprint"]},
        "device": device_mod.describe(data.device),
        "n_train": data.n_train,
        "seconds": time.perf_counter() - start,
    }
    return art.save_artifact(workdir / art.scores_name(solver),
                             {"influence": influence, "predicted_loss_diff": predicted,
                              "test_indices": torch.tensor(chosen, dtype=torch.int64)},
                             record)
