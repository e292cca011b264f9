"""``infl lds``: certified ground truth for the field's benchmarks, and every scores artifact
judged on it.

1. **Subset retraining** (:mod:`~infl_cli.engines.logreg.subsets`): ``subsets`` subsets of ``fraction``·n
   training points drawn with ``seed``; the model retrained on each (Newton on R_S from Ŵ),
   certified to ‖∇R_S‖ ≤ tol, and every test point's output (``loss`` or ``margin``) measured
   with a proven bar. Chunked and checkpointed in ``subsets.partial.safetensors`` like ``loo``
   (resumable, bit-identical), on ``--device`` or ``--cluster``; the truth is written to
   ``subsets.safetensors`` with ``subsets.json`` beside it (:data:`TRUTH_SCHEMA`).
2. **The scores** (:mod:`~infl_cli.numerics.datamodels`): for every ``scores-*.safetensors`` present
   (ours and imported), the LDS per test point and its mean with the range the bars allow,
   and, where ``loo.safetensors`` is present, the LOO correlation (Pearson and Spearman) on
   its selection. All of it under ``lds`` in ``metrics.json`` and in ``lds.png``.

``--truth FILE`` judges the scores against a truth file in the same format (one of ours from
elsewhere, or another tool's) without retraining.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infl_cli.errors import BadInput, InflError
from infl_cli.runtime import artifacts as art
from infl_cli.settings import LdsSettings, LooSettings
from infl_cli.stages.common import (
    TestChoice,
    available_scores,
    load_model,
    model_engine,
    model_policy,
    model_record,
)

SIGN_HINT = -0.3  # an imported method's LDS below this: its sign may be flipped
TRUTH = "subsets.safetensors"
TRUTH_JSON = "subsets.json"
PARTIAL = "subsets.partial.safetensors"
FIGURE = "lds.png"
TRUTH_SCHEMA = {
    "keep": "bool [M, n]: keep[m, i] is true when training point i is in subset m",
    "outputs": "float64 [T, M]: each test point's output at the model retrained on subset m "
               "(record.settings.measure: loss = test cross-entropy; margin = correct logit "
               "minus the log-sum-exp of the others)",
    "output_bound": "float64 [T, M]: proven bound on |outputs − the output at the exact "
                    "minimiser of R_S(W) = mean CE over S + (wd/2)·|W|²|",
    "full_output": "float64 [T]: the output at the model trained on all n points",
    "full_output_bound": "float64 [T]: its proven bound",
    "grad_norm": "float64 [M]: |∇R_S| at each retrained model, computed",
    "grad_rounding": "float64 [M]: proven bound on that value's rounding (the true norm is at "
                     "most grad_norm + grad_rounding)",
    "steps": "int64 [M]: Newton steps",
    "test_indices": "int64 [T]: the test points (indices into the test set)",
}


@dataclass
class SubsetJob:
    """The chunk job of subset retraining (:class:`~infl_cli.runtime.chunks.ChunkJob`): the
    subsets ``ids`` (their masks drawn again from the settings' seed) retrained and certified
    (:func:`~infl_cli.engines.logreg.subsets.solve_chunk`)."""

    settings: LdsSettings

    def solve(self, problem, ids, selected):
        from infl_cli.engines.logreg import subsets

        return subsets.solve_chunk(problem, ids, self.settings)


def truth_record(settings: LdsSettings, test_indices: list[int], chunk: int) -> dict:
    return {**settings.record(), "test_indices": list(test_indices), "chunk_size": chunk}


def _default_tests(workdir: Path, tests: TestChoice | None, n_test: int) -> list[int]:
    """The test points: as asked, else those of the most accurate scores present."""
    have = None
    for label in available_scores(workdir):
        have = art.read_record(workdir / art.scores_name(label))["settings"]["test_indices"]
        break
    if (tests is None or (tests.indices is None and tests.sample is None)) and have is None:
        raise InflError("no scores in the work folder to take test points from; give -t or "
                        "--test-sample (or run `infl score` first)")
    return (tests or TestChoice()).resolve(n_test, have or [])


def retrain_subsets(workdir: Path, settings: LdsSettings, tests: TestChoice | None = None,
                    device=None, cluster: str | None = None,
                    cluster_timeout: float | None = None) -> dict:
    """The subset truth (``subsets.safetensors``): retrained unless current."""
    import torch

    from infl_cli.engines.logreg import subsets
    from infl_cli.runtime import chunks
    from infl_cli.runtime import device as device_mod
    from infl_cli.runtime.kept import Keeper
    from infl_cli.stages import loo as loo_stage

    mrec = model_record(workdir)
    model_policy(mrec).require_closed_form("infl lds (certified subset retraining)",
                                           workdir / art.MODEL)
    tensors, mrec, data = load_model(workdir, device=device)
    chosen = _default_tests(workdir, tests, data.n_test)
    chunk = subsets.chunk_size(torch.device(data.device), data.n_train,
                               int(tensors["weight"].shape[0]), settings)
    record_settings = truth_record(settings, chosen, chunk)
    inputs = {"model": mrec["fingerprint"]}
    path = workdir / TRUTH
    if art.is_current(path, record_settings, inputs):
        return art.read_record(path)
    model_engine(mrec).check_memory("lds", data, "infl lds (subset retraining)",
                                    tests=len(chosen), chunk=chunk)
    device_mod.reset_peak(data.device)
    m = settings.subsets
    store = chunks.PartialResults(workdir / PARTIAL, np.arange(m), chosen,
                                  np.zeros((len(chosen), m), dtype=bool), chunk,
                                  record_settings, inputs, layout=chunks.SUBSET_LAYOUT,
                                  stage="subsets-partial")
    built = loo_stage.Built(keeper=Keeper(workdir, mrec))
    start = time.perf_counter()
    runner = loo_stage.cluster_runner(cluster, cluster_timeout, tensors, mrec, chosen)
    run_facts = loo_stage.solve_store(
        "lds: subset retraining", "subsets", store, built,
        lambda: loo_stage.build_problem(tensors, mrec, data, chosen, LooSettings(),
                                        built.keeper, "lds: set-up"),
        SubsetJob(settings), runner,
        finish=lambda problem: _full_outputs(problem(), settings.measure))
    a = store.arrays
    full, full_bound = built.finish
    keep = subsets.draw_subsets(data.n_train, m, settings.fraction, settings.seed)
    grad_bound = a["grad_norm"] + a["grad_rounding"]
    spread = a["outputs"].std(axis=1)
    record = {
        "stage": "subsets",
        "settings": record_settings,
        "inputs": inputs,
        "schema": TRUTH_SCHEMA,
        "n_train": data.n_train,
        "subset_size": int(keep[0].sum()),
        "wd": mrec["settings"]["wd"],
        "certified": int((grad_bound <= settings.tol).sum()),
        "max_grad_norm_bound": float(grad_bound.max()),
        "max_output_bound": float(a["output_bound"].max()),
        "max_bound_over_spread": float((a["output_bound"].max(axis=1)
                                        / np.where(spread > 0, spread, np.nan)).max()),
        "newton_steps_max": int(a["steps"].max()),
        "float64_passes": int(store.stats["float64_passes"]),
        "chunk_seconds": float(store.stats["chunk_seconds"]),
        "problem_seconds": built.seconds,
        "workers": run_facts.get("workers", 1),
        "cluster": cluster,
        "device": device_mod.describe(data.device),
        "peak_device_gib": device_mod.peak_gib(data.device),
        "resumed_from": store.resumed_from,
        "seconds": time.perf_counter() - start,
    }
    tensors_out = {"keep": torch.from_numpy(keep),
                   "outputs": torch.from_numpy(a["outputs"]),
                   "output_bound": torch.from_numpy(a["output_bound"]),
                   "full_output": torch.from_numpy(full),
                   "full_output_bound": torch.from_numpy(full_bound),
                   "grad_norm": torch.from_numpy(a["grad_norm"]),
                   "grad_rounding": torch.from_numpy(a["grad_rounding"]),
                   "steps": torch.from_numpy(a["steps"]),
                   "test_indices": torch.tensor(chosen, dtype=torch.int64)}
    record = art.save_artifact(path, tensors_out, record)
    art.write_json(workdir / TRUTH_JSON, record)
    store.discard()
    if record["certified"] < m:
        raise InflError(f"{m - record['certified']} of {m} subset models did not reach "
                        f"‖∇R_S‖ ≤ {settings.tol:g} (max bound "
                        f"{record['max_grad_norm_bound']:.2e}); see {TRUTH}")
    return record


def _full_outputs(problem, measure: str):
    """The outputs at Ŵ itself, with their bars (the certified gradient at Ŵ)."""
    import torch

    zero = torch.zeros((1,) + tuple(problem.weight.shape), dtype=torch.float64,
                       device=problem.device)
    value, bound = problem.test_outputs(
        zero, torch.tensor([problem.grad_hat_norm_bound], dtype=torch.float64,
                           device=problem.device), measure)
    return value[:, 0].cpu().numpy(), bound[:, 0].cpu().numpy()


def read_truth(path: Path, n_train: int, measure: str | None = None) -> dict:
    """A truth file (ours, or another tool's in :data:`TRUTH_SCHEMA`'s format: ``keep``,
    ``outputs`` and ``test_indices`` required, ``output_bound`` optional), checked: one line
    for each thing wrong. Returns the arrays (NumPy) with ``measure`` and ``source``."""
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"--truth: no file {path}")
    try:
        arrays = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise BadInput(f"--truth: {path} is not a readable safetensors file ({exc})") from None
    missing = [k for k in ("keep", "outputs", "test_indices") if k not in arrays]
    if missing:
        raise BadInput(f"--truth: {path.name} lacks {', '.join(missing)} (see subsets.json's "
                       "schema)")
    keep = np.asarray(arrays["keep"]).astype(bool)
    outputs = np.asarray(arrays["outputs"], dtype=np.float64)
    tests = np.asarray(arrays["test_indices"]).astype(np.int64).reshape(-1)
    bound = np.asarray(arrays.get("output_bound", np.full(outputs.shape, np.nan)),
                       dtype=np.float64)
    if keep.ndim != 2 or keep.shape[1] != n_train:
        raise BadInput(f"--truth: keep must be [M, {n_train}] (subsets × training points), "
                       f"got {list(keep.shape)}")
    if outputs.shape != (tests.size, keep.shape[0]) or bound.shape != outputs.shape:
        raise BadInput(f"--truth: outputs (and output_bound) must be [T, M] = "
                       f"[{tests.size}, {keep.shape[0]}], got {list(outputs.shape)}")
    if not np.isfinite(outputs).all():
        raise BadInput("--truth: outputs hold NaN or infinite values")
    record = {}
    try:
        record = art.read_record(path)
    except Exception:
        pass
    measure = measure or record.get("settings", {}).get("measure", "loss")
    return {"keep": keep, "outputs": outputs, "output_bound": bound,
            "test_indices": tests.tolist(), "measure": measure, "source": str(path),
            "record": record}


def judge(workdir: Path, truth: dict) -> dict:
    """The LDS of every scores artifact on ``truth`` (and the LOO correlation on
    ``loo.safetensors`` where present): the ``lds`` section of ``metrics.json``."""
    from infl_cli.numerics import datamodels

    mrec = model_record(workdir)
    labels = available_scores(workdir)
    if not labels:
        raise InflError(f"no scores in {workdir} to judge; run `infl score` or import some "
                        "(`infl score --import FILE --name NAME`)")
    loo = _loo_truth(workdir, mrec)
    sign = -1.0 if truth["measure"] == "loss" else 1.0
    methods = {}
    for label in labels:
        arrays, srec = art.load_arrays(workdir / art.scores_name(label), "score")
        if srec["inputs"]["model"] != mrec["fingerprint"]:
            continue  # scores of another model: not judged
        have = [int(t) for t in arrays["test_indices"]]
        common = [t for t in truth["test_indices"] if t in have]
        entry = {"imported": srec.get("imported"), "test_points": len(common)}
        if common:
            rows = [have.index(t) for t in common]
            cols = [truth["test_indices"].index(t) for t in common]
            tau = sign * arrays["predicted_loss_diff"][rows]
            result = datamodels.lds(truth["outputs"][cols], truth["output_bound"][cols],
                                    truth["keep"], tau)
            entry.update(lds=result["mean"], lds_lo=result["mean_lo"],
                         lds_hi=result["mean_hi"], certified=result["certified"],
                         largest_group=int(np.nanmax(result["largest_group"])),
                         per_test={str(t): float(v)
                                   for t, v in zip(common, result["per_test"])})
        if loo is not None:
            entry["loo"] = _loo_entry(loo, arrays, have)
        if entry.get("lds") is not None and entry["lds"] < SIGN_HINT and entry["imported"]:
            meaning = (entry["imported"] or {}).get("meaning", "?")
            entry["note"] = (f"LDS {entry['lds']:.3f}: strongly negative, so the imported "
                             f"scores' sign may be the opposite of --meaning {meaning}; "
                             "import them again with the other meaning")
        methods[label] = entry
    truth_rec = truth.get("record", {})
    section = {"measure": truth["measure"], "truth": truth["source"],
               "subsets": int(truth["keep"].shape[0]),
               "subset_size": int(truth["keep"][0].sum()),
               "test_points": len(truth["test_indices"]),
               "truth_certified": truth_rec.get("certified"),
               "max_output_bound": float(np.nanmax(truth["output_bound"]))
               if np.isfinite(truth["output_bound"]).any() else None,
               "sign_convention": "tau = -predicted_loss_diff (measure loss) or "
                                  "+predicted_loss_diff (margin): tau_i predicts how much "
                                  "training on point i raises the output",
               "loo": None if loo is None else {k: loo[k] for k in ("select", "k", "pairs")},
               "methods": methods}
    metrics_path = workdir / art.METRICS
    art.update_json(metrics_path, "lds", section)
    return section


def _loo_truth(workdir: Path, mrec: dict):
    path = workdir / art.LOO
    if not path.is_file():
        return None
    arrays, rec = art.load_arrays(path, "loo")
    if rec["inputs"]["model"] != mrec["fingerprint"]:
        return None
    return {"actual": arrays["actual_loss_diff"], "bound": arrays["actual_error_bound"],
            "selected": arrays["selected"].astype(bool),
            "train": arrays["train_indices"].astype(np.int64),
            "tests": [int(t) for t in arrays["test_indices"]],
            "select": rec["settings"]["select"], "k": rec["settings"].get("k"),
            "pairs": int(arrays["selected"].sum())}


def _loo_entry(loo: dict, arrays: dict, have: list[int]):
    from infl_cli.numerics import datamodels

    common = [i for i, t in enumerate(loo["tests"]) if t in have]
    if not common:
        return None
    rows = [have.index(loo["tests"][i]) for i in common]
    predicted = arrays["predicted_loss_diff"][rows][:, loo["train"]]
    return datamodels.loo_correlation(loo["actual"][common], loo["bound"][common],
                                      loo["selected"][common], predicted)


def draw(workdir: Path, section: dict) -> Path:
    """``lds.png``: one bar per method (LDS, with the certified range) and, where LOO truth
    is present, its LOO Spearman and Pearson correlations beside."""
    from infl_cli.figures.lds import draw_lds

    return draw_lds(section, workdir / FIGURE)


def run_lds(workdir: Path, settings: LdsSettings, tests: TestChoice | None = None,
            device=None, cluster: str | None = None, cluster_timeout: float | None = None,
            truth: Path | None = None) -> dict:
    """Retrain on the subsets (unless ``truth`` is given, or the truth is current), then judge
    every scores artifact; returns the ``lds`` section with the truth's record."""
    if truth is None:
        record = retrain_subsets(workdir, settings, tests, device, cluster, cluster_timeout)
        truth = workdir / TRUTH
    else:
        record = None
    mrec = model_record(workdir)
    loaded = read_truth(truth, int(mrec["n_train"]), None if record else settings.measure)
    section = judge(workdir, loaded)
    section["figure"] = str(draw(workdir, section))
    section["truth_record"] = record or loaded["record"]
    return section
