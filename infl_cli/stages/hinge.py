"""``infl hinge``: the paper's Figure 3. A linear SVM trained to a certified optimum (exact
duality gap, :mod:`~infl_cli.engines.hinge.svm`), influence at its weights through the smooth hinge at
several temperatures, and the truth: the SVM retrained without each of the points of largest
|influence| at t = 0, every change certified. Beyond the paper, the smooth-hinge model trained
at its own t, predicted and retrained on the same points.

Conventions (REFERENCE.md's, with the hinge): N training points, y ∈ {±1} (class 0 of
``--classes`` is +1), per-point loss ℓ_t(y wᵀx) + (wd/2)‖w‖², test loss ℓ_t without the
regulariser. At a temperature t, with margins mᵢ at the model's weights,

    H_t = (1/N)·Σ ℓ_t''(mᵢ)·xᵢxᵢᵀ + wd·I,    ∇L(z) = ℓ_t'(m_z)·y_z x_z + wd·w,

and the predicted change of the test loss on removing z is (1/N)·∇L_testᵀ H_t⁻¹ ∇L(z)
(= −I_up,loss/N). The SVM's "actual" change is that of the hinge test loss when the SVM is
retrained on the other N − 1 points (the authors' C = 1/((N − 1)·wd)); the same actual changes
serve every t, as in the paper.

Writes ``hinge.safetensors`` (with ``hinge.partial.safetensors`` while the retrainings run,
resumable), ``fig_hinge.png``/``.pdf`` and the ``hinge`` section of ``metrics.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infl_cli.errors import BadInput
from infl_cli.runtime import artifacts as art

ARTIFACT = "hinge.safetensors"
PARTIAL = "hinge.partial.safetensors"
FIGURE = "fig_hinge.png"
PAPER_TEST = 1597  # the authors' test point (a 7 the SVM gets wrong)
PAPER_R = {"0": 0.632, "0.001": 0.950, "0.1": 0.914}  # the authors' notebook
ROUND_TO = 100  # the authors trim both sets to a multiple of 100 ("for batching")


@dataclass(frozen=True)
class HingeSettings:
    """What the study is made of (recorded; a rerun with the same settings is reused)."""

    wd: float = 0.01
    temperatures: tuple = (0.0, 0.001, 0.1)
    smooth: tuple = (0.001, 0.1)
    num: int = 100
    test_index: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    chunk_size: int = 10

    def record(self) -> dict:
        return {"wd": self.wd, "temperatures": list(self.temperatures),
                "smooth": list(self.smooth), "num": self.num, "test_index": self.test_index,
                "train_size": self.train_size, "test_size": self.test_size}


def parse_temperatures(text: str, name: str, positive: bool = False) -> tuple:
    """``--temperatures 0,0.001,0.1`` (≥ 0; ``positive``: > 0) as floats, in order given."""
    if text.strip() == "":
        return ()
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise BadInput(f"{name} must be numbers separated by commas, got {text!r}") from None
    for t in values:
        if not math.isfinite(t) or t < 0 or (positive and t == 0):
            raise BadInput(f"{name}: a temperature must be {'> 0' if positive else '≥ 0'} "
                           f"(t = 0 is the hinge itself), got {t:g}")
    if len(set(values)) != len(values):
        raise BadInput(f"{name} lists a temperature twice: {text!r}")
    return values


def validate(settings: HingeSettings, classes) -> None:
    if classes is None or len(classes) != 2:
        got = "every class" if classes is None else f"{len(classes)} classes"
        raise BadInput(f"the SVM tells two classes apart: give --classes A,B (the paper: 1,7), "
                       f"got {got}")
    if not settings.wd > 0:
        raise BadInput(f"--wd must be > 0 (the SVM's objective must be strongly convex), got "
                       f"{settings.wd}")
    if not settings.temperatures:
        raise BadInput("--temperatures must name at least one temperature")
    if 0.0 not in settings.temperatures:
        raise BadInput("--temperatures must include 0: the points retrained are those of "
                       "largest |influence| at t = 0, as in the paper")
    if settings.num < 2:
        raise BadInput(f"--num must be ≥ 2 (a correlation needs two points), got {settings.num}")
    for name in ("train_size", "test_size", "test_index"):
        value = getattr(settings, name)
        least = 0 if name == "test_index" else 2
        if value is not None and value < least:
            raise BadInput(f"--{name.replace('_', '-')} must be ≥ {least}, got {value}")


# ----------------------------------------------------------------------------- the data
@dataclass
class HingeData:
    k_train: np.ndarray  # int64 pixel integers [N, d]
    k_test: np.ndarray
    y: np.ndarray  # ±1 float64 [N]
    y_test: np.ndarray
    x: np.ndarray  # float64 features k/scale [N, d]
    x_test: np.ndarray
    scale: int
    fingerprint: str
    name: str
    image_shape: tuple | None


def hinge_data(data, settings: HingeSettings) -> HingeData:
    """The SVM's training and test sets: the first ``train_size``/``test_size`` points (default:
    the authors' trim to a multiple of 100), labels ±1 (class 0 → +1), features as integers
    over their scale (the exact certificate needs them)."""
    from infl_cli.engines.policy import check_exact_features

    check_exact_features(data)
    n = settings.train_size or _trimmed(data.n_train)
    m = settings.test_size or _trimmed(data.n_test)
    for what, size, have in (("--train-size", n, data.n_train), ("--test-size", m, data.n_test)):
        if size > have:
            raise BadInput(f"{what} {size:,} exceeds the {have:,} points of {data.name}")
    k = data.train_x[:n].astype(np.int64)
    kt = data.test_x[:m].astype(np.int64)
    scale = int(data.pixel_scale)
    y = 1.0 - 2.0 * data.train_y[:n].astype(np.float64)
    if np.unique(y).size < 2:
        raise BadInput(f"the first {n:,} training points of {data.name} hold one class only")
    from infl_cli.data.dataset import fingerprint_of

    return HingeData(k_train=k, k_test=kt, y=y, y_test=1.0 - 2.0 * data.test_y[:m]
                     .astype(np.float64), x=k / scale, x_test=kt / scale, scale=scale,
                     fingerprint=fingerprint_of(np.array([n, m]),
                                                       extra=data.fingerprint),
                     name=data.name, image_shape=data.image_shape)


def _trimmed(size: int) -> int:
    """The authors' trim: down to a multiple of 100 (sets smaller than 100 are kept whole)."""
    return size // ROUND_TO * ROUND_TO if size >= ROUND_TO else size


# ----------------------------------------------------------------------------- influence
def predicted_changes(x, y, w, wd, t, x_test, y_test):
    """(1/N)·∇L_testᵀ H_t⁻¹ ∇L(z) for every training point z at weights ``w``, with ∇L(z)
    including wd·w (module doc; :mod:`~infl_cli.engines.hinge.svm`, as the engines), and the exact solve's
    proven error ‖s − H⁻¹g‖ ≤ ‖Hs − g‖/wd."""
    from infl_cli.engines.hinge.svm import predicted_from_ihvp, solve_h, test_gradient

    g = test_gradient(x_test, y_test, w, t)
    s, residual = solve_h(x, y, w, wd, t, g)
    return predicted_from_ihvp(x, y, w, wd, t, s)[0], {
        "ihvp_residual": float(residual[0]), "ihvp_error_bound": float(residual[0]) / wd,
        "ihvp_norm": float(np.linalg.norm(s)), "test_margin": float(y_test * (x_test @ w))}


def top_indices(predicted: np.ndarray, num: int) -> np.ndarray:
    """The ``num`` training points of largest |predicted change| (ties: lower index first)."""
    order = np.lexsort((np.arange(predicted.size), -np.abs(predicted)))
    return np.sort(order[:min(num, predicted.size)])


# ----------------------------------------------------------------------------- retraining
class HingeProblem:
    """Retrains without each removal: the SVM (row 0) and the smooth models (rows 1..), each
    by its retrainer (:mod:`~infl_cli.engines.hinge.loo`: the engines' own), for the study's
    test point."""

    def __init__(self, hd: HingeData, settings: HingeSettings, svm_full, smooth_full: list,
                 test: int):
        from infl_cli.engines.hinge.loo import SmoothRetrainer, SvmRetrainer

        kt, yt = hd.k_test[[test]], hd.y_test[[test]]
        self.retrainers = [SvmRetrainer(hd.k_train, hd.y, hd.scale, settings.wd,
                                        svm_full.alpha, kt, yt)]
        self.retrainers += [SmoothRetrainer(hd.k_train, hd.y, hd.scale, settings.wd, t,
                                            model.weight, kt, yt)
                            for t, model in zip(settings.smooth, smooth_full)]

    def solve_chunk(self, removed, selected, settings):
        rows, k = len(self.retrainers), len(removed)
        out = {"actual_loss_diff": np.zeros((rows, k)), "actual_error_bound": np.zeros((rows, k)),
               "gap": np.zeros(k), "radius": np.zeros((rows, k)),
               "steps": np.zeros(k, dtype=np.int64)}
        for j, z in enumerate(np.asarray(removed).tolist()):
            for r, retrainer in enumerate(self.retrainers):
                done = retrainer.retrain(z)
                out["actual_loss_diff"][r, j] = done.values[0]
                out["actual_error_bound"][r, j] = done.bounds[0]
                out["radius"][r, j] = done.radius
                if r == 0:
                    out["gap"][j] = done.extra["duality_gap"]
                    out["steps"][j] = done.steps
        return out, {}


HINGE_LAYOUT = {"actual_loss_diff": ("tk", np.float64), "actual_error_bound": ("tk", np.float64),
                "radius": ("tk", np.float64), "gap": ("k", np.float64),
                "steps": ("k", np.int64)}


# ----------------------------------------------------------------------------- the study
def run_hinge(workdir: Path, data, settings: HingeSettings, classes) -> dict:
    """Train, predict, retrain, write; reuse ``hinge.safetensors`` when it is current.
    Returns the record (with the figure's metrics under ``metrics``)."""
    import torch

    from infl_cli.engines.hinge import svm
    from infl_cli.runtime import chunks
    from infl_cli.runtime.progress import progress_bar
    from infl_cli.settings import LooSettings
    from infl_cli.stages.loo import Built, LooJob, solve_store

    validate(settings, classes)
    hd = hinge_data(data, settings)
    n, m = hd.y.size, hd.y_test.size
    test = settings.test_index
    if test is None and m > PAPER_TEST:
        test = PAPER_TEST
    if test is not None and test >= m:
        raise BadInput(f"--test-index {test} is out of range: the SVM's test set has {m:,} "
                       "points")
    path = workdir / ARTIFACT
    record_settings = {**settings.record(), "classes": list(classes)}
    inputs = {"data": hd.fingerprint}
    if art.is_current(path, record_settings, inputs):
        return _finished(workdir, path)
    start = time.perf_counter()
    timings = {}
    with progress_bar("hinge: SVM (dual coordinate ascent)", total=1) as update:
        t0 = time.perf_counter()
        full, report = svm.train_svm(hd.k_train, hd.y, settings.wd, hd.scale, hd.k_test,
                                     hd.y_test)
        timings["svm"] = time.perf_counter() - t0
        update(status=f"gap {full.gap:.1e}")
    if test is None:  # a small test set: the test point the SVM gets most wrong
        test = int(np.argmin(full.test_margins))
    predicted, reports = {}, {}
    t0 = time.perf_counter()
    for t in settings.temperatures:
        predicted[t], reports[t] = predicted_changes(hd.x, hd.y, full.weight, settings.wd, t,
                                                     hd.x_test[test], hd.y_test[test])
    timings["influence"] = time.perf_counter() - t0
    chosen = top_indices(predicted[0.0], settings.num)
    smooth_full, smooth_pred = [], []
    t0 = time.perf_counter()
    with progress_bar("hinge: smooth models at their own t", total=len(settings.smooth)) as update:
        for t in settings.smooth:
            model = svm.train_smooth(hd.x, hd.y, settings.wd, t, start=full.weight)
            pred, _ = predicted_changes(hd.x, hd.y, model.weight, settings.wd, t,
                                        hd.x_test[test], hd.y_test[test])
            smooth_full.append(model)
            smooth_pred.append(pred[chosen])
            update()
    timings["smooth models"] = time.perf_counter() - t0
    rows = 1 + len(settings.smooth)
    chunk_settings = LooSettings(chunk_size=settings.chunk_size)
    store = chunks.PartialResults(workdir / PARTIAL, chosen, list(range(rows)),
                                  np.ones((rows, chosen.size), dtype=bool),
                                  settings.chunk_size, record_settings, inputs,
                                  layout=HINGE_LAYOUT, stage="hinge-partial",
                                  status=("gap", "max gap"))
    t0 = time.perf_counter()
    solve_store("hinge: retrain without each point", "removals", store, Built(),
                lambda: HingeProblem(hd, settings, full, smooth_full, test),
                LooJob(chunk_settings))
    timings["retraining"] = time.perf_counter() - t0
    a = store.arrays
    tensors = {
        "weight": full.weight, "alpha": full.alpha, "margins": full.margins,
        "test_margins": full.test_margins,
        "predicted": np.stack([predicted[t] for t in settings.temperatures]),
        "train_indices": chosen,
        "actual": a["actual_loss_diff"][0], "actual_bound": a["actual_error_bound"][0],
        "gap": a["gap"], "radius": a["radius"][0], "sweeps": a["steps"],
        "smooth_weight": np.stack([s.weight for s in smooth_full]) if smooth_full
        else np.zeros((0, hd.x.shape[1])),
        "smooth_predicted": np.stack(smooth_pred) if smooth_pred else np.zeros((0, chosen.size)),
        "smooth_actual": a["actual_loss_diff"][1:], "smooth_bound": a["actual_error_bound"][1:],
        "smooth_radius": a["radius"][1:],
        "test_image": hd.x_test[test],
    }
    record = {
        "stage": "hinge", "settings": record_settings, "inputs": inputs,
        "data": hd.name, "n_train": int(n), "n_test": int(m), "test_index": int(test),
        "test_label": "+1" if hd.y_test[test] > 0 else "-1",
        "svm": {"gap": full.gap, "radius": full.radius, "primal": full.primal,
                "kkt": report.kkt, "rounds": report.rounds, "sweeps": report.sweeps,
                "free": int(((full.alpha > 0) & (full.alpha < 1)).sum()),
                "at_bound": int((full.alpha >= 1).sum()),
                "test_margin": float(full.test_margins[test]),
                "test_accuracy": float(np.mean(full.test_margins > 0)),
                "train_accuracy": float(np.mean(full.margins > 0))},
        "influence": {f"{t:g}": reports[t] for t in settings.temperatures},
        "smooth": [{"t": t, "grad_norm": s.grad_norm, "grad_bound": s.grad_bound,
                    "radius": s.radius, "steps": s.steps}
                   for t, s in zip(settings.smooth, smooth_full)],
        "timings": timings, "seconds": time.perf_counter() - start,
    }
    art.save_artifact(path, {key: torch.from_numpy(np.ascontiguousarray(value))
                             for key, value in tensors.items()}, record)
    store.discard()
    return _finished(workdir, path)


def _finished(workdir: Path, path: Path) -> dict:
    """The study's record, with the figure's metrics under ``metrics``."""
    arrays, record = art.load_arrays(path, "hinge")
    return {**record, "metrics": draw(workdir, arrays, record)}


def paper_setting(record: dict) -> bool:
    """Whether a study ran the authors' Figure 3 setting (full MNIST 1 vs 7, their trim to
    11,800 training points, test 1597, wd 0.01): only then are their R values beside ours."""
    s = record["settings"]
    return (record.get("data", "").startswith("mnist [classes 1,7]")
            and record.get("n_train") == 11_800 and record.get("test_index") == PAPER_TEST
            and s.get("wd") == 0.01)


def metrics_of(arrays: dict, record: dict) -> dict:
    """Pearson R of predicted against actual per temperature (the SVM's truth) and per smooth
    model (its own truth), the bounds' share of each change, and the authors' numbers."""
    from infl_cli.figures.fig2 import agreement

    temps = record["settings"]["temperatures"]
    chosen = np.asarray(arrays["train_indices"])
    actual = np.asarray(arrays["actual"])
    bound = np.asarray(arrays["actual_bound"])
    out = {"svm": {}, "smooth": {}, "paper_r": PAPER_R if paper_setting(record) else {}}
    rel = bound / np.maximum(np.abs(actual), 1e-300)
    for i, t in enumerate(temps):
        pred = np.asarray(arrays["predicted"][i])[chosen]
        m = agreement(actual, pred)
        out["svm"][f"{t:g}"] = {"pearson": m["pearson_r"], "spearman": m["spearman_rho"],
                                **({"undefined": m["undefined"]} if "undefined" in m else {})}
    out["svm_truth"] = {"max_bound": float(bound.max()), "max_relative_bound": float(rel.max()),
                        "within_1pct": int((rel <= 0.01).sum()), "n": int(actual.size),
                        # e.g. a point that is no support vector, with every α of the SVM
                        # strictly inside (0, 1): its removal leaves w unchanged
                        "zero_within_bound": int((np.abs(actual) <= bound).sum()),
                        "max_gap": float(np.max(arrays["gap"]))}
    for i, t in enumerate(record["settings"]["smooth"]):
        act = np.asarray(arrays["smooth_actual"][i])
        b = np.asarray(arrays["smooth_bound"][i])
        pred = np.asarray(arrays["smooth_predicted"][i])
        m = agreement(act, pred)
        out["smooth"][f"{t:g}"] = {
            "pearson": m["pearson_r"], "spearman": m["spearman_rho"],
            "max_relative_error": float(np.max(np.abs(pred - act) / np.maximum(np.abs(act),
                                                                                1e-300))),
            "max_relative_bound": float(np.max(b / np.maximum(np.abs(act), 1e-300)))}
    return out


def draw(workdir: Path, arrays: dict, record: dict) -> dict:
    """The figure and its metrics (redrawn only when the artifact changed)."""
    from infl_cli.stages.common import study_figure

    png = workdir / FIGURE

    def made():
        from infl_cli.figures import paper as plot_paper

        metrics = metrics_of(arrays, record)
        plot_paper.draw_hinge(arrays, record, metrics, png, art.atomic_write)
        return metrics

    return study_figure(workdir, "hinge", record["fingerprint"], png, made)
