"""``infl components``: the paper's Figure 1, what influence is made of, for the binary
logistic model in the work folder (``infl train --classes A,B``).

Our two-class model is multinomial, W = [w₀, w₁]; it *is* binary logistic regression in
v = w₀ − w₁ (class 0 is y = +1), at half its weight decay: at the optimum w₁ = −w₀, so
(wd/2)(‖w₀‖² + ‖w₁‖²) = (wd/4)‖v‖². The paper's wd = 0.01 is ``--wd 0.02`` here (the preset
does this), and every quantity below is the binary one, in v, at wd_binary = wd/2.

With σᵢ = σ(−yᵢ vᵀxᵢ), H = (1/n)Σ σᵢ(1 − σᵢ) xᵢxᵢᵀ + wd_binary·I, ∇L(z_test) = −y_t σ_t x_t
and ∇L(z) = −y σ x + wd_binary·v (REFERENCE.md: the training gradient includes wd·θ), the
full influence, as the authors plot it, is

    −I_up,loss(z) = ∇L(z_test)ᵀ H⁻¹ ∇L(z)

(n × the predicted change of the test loss on removing z), and the variants are the authors'
(``get_influence_on_test_loss`` with ``ignore_training_error`` / ``ignore_hessian``):

* without the training-loss term: ∇L(z) replaced by −y x (σ(−y vᵀx) → 1, and no wd·v);
* without H: H replaced by I;
* without both.

Writes ``components.safetensors`` (``full``, ``no_train_loss``, ``no_hessian``, ``no_both``
[n], ``same_label`` [n], the images), ``fig_components.png``/``.pdf`` and the ``components``
section of ``metrics.json`` (Pearson R of each variant against the full influence).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from infl_cli.engines import spec_of
from infl_cli.errors import BadInput
from infl_cli.runtime import artifacts as art
from infl_cli.stages.common import load_model, model_policy, model_record, study_figure

ARTIFACT = "components.safetensors"
FIGURE = "fig_components.png"
PAPER_TEST = 30  # the authors' test point (a 7)
HARMFUL_RANK = 4  # the authors show the 5th most harmful training image of the test's label
VARIANTS = ("no_train_loss", "no_hessian", "no_both")


def binary_weight(weight):
    """v = w₀ − w₁ of a two-class multinomial W [2, d] (class 0 is y = +1)."""
    return weight[0] - weight[1]


def components(v, x, y_sign, x_test, y_test_sign, wd_binary: float) -> dict:
    """The full −I_up,loss and the three variants for every training point (torch, float64,
    on the inputs' device), with the exact solve's proven error. ``y_sign`` ∈ {±1}."""
    import torch

    n = x.shape[0]
    sig = torch.sigmoid(-y_sign * (x @ v))
    h = (x.T * (sig * (1 - sig) / n)) @ x
    h.diagonal().add_(wd_binary)
    sig_t = torch.sigmoid(-y_test_sign * (x_test @ v))
    g_test = -y_test_sign * sig_t * x_test
    chol = torch.linalg.cholesky(h)
    s = torch.cholesky_solve(g_test[:, None], chol)[:, 0]
    residual = torch.linalg.vector_norm(h @ s - g_test)
    coef = -y_sign * sig  # ∇L(z) = coef·x + wd·v
    xs, xg = x @ s, x @ g_test
    out = {"full": coef * xs + wd_binary * (v @ s),
           "no_train_loss": -y_sign * xs,
           "no_hessian": coef * xg + wd_binary * (v @ g_test),
           "no_both": -y_sign * xg}
    return out, {"ihvp_residual": float(residual),
                 "ihvp_error_bound": float(residual) / wd_binary,
                 "ihvp_norm": float(torch.linalg.vector_norm(s))}


def run_components(workdir: Path, test_index: int | None = None, device=None) -> dict:
    """Compute (or reuse, when current: decided from the records, without torch or the
    data) the components of the model in ``workdir`` for one test point; draw the figure;
    return the record with its metrics."""
    mrec = model_record(workdir)
    classes, n_test = mrec.get("n_classes"), mrec["n_test"]
    if not model_policy(mrec).closed_form or classes != 2:
        raise BadInput(f"components: Figure 1 is for a binary logistic model; "
                       f"{workdir / art.MODEL} holds a {classes}-class "
                       f"{spec_of(mrec).kind}: train with --classes A,B (the paper: "
                       "--classes 1,7 --wd 0.02)")
    test = test_index if test_index is not None else (PAPER_TEST if n_test > PAPER_TEST else 0)
    if not 0 <= test < n_test:
        raise BadInput(f"--test-index {test} is out of range: the test set has "
                       f"{n_test:,} points")
    path = workdir / ARTIFACT
    settings = {"test_index": test}
    inputs = {"model": mrec["fingerprint"]}
    if not art.is_current(path, settings, inputs):
        import torch

        from infl_cli.runtime import device as device_mod

        tensors, mrec, data = load_model(workdir, device=device)
        start = time.perf_counter()
        wd_binary = mrec["settings"]["wd"] / 2
        v = binary_weight(tensors["weight"])
        y_sign = 1.0 - 2.0 * data.y_train.double()
        y_t = 1.0 - 2.0 * float(data.test_y[test])
        out, report = components(v, data.x_train, y_sign, data.x_test[test], y_t, wd_binary)
        same = data.y_train == int(data.test_y[test])
        full = out["full"]
        same_idx = torch.nonzero(same).flatten()
        order = torch.argsort(full[same_idx])  # most negative: removing it lowers the loss
        harmful = int(same_idx[order[min(HARMFUL_RANK, order.numel() - 1)]])
        arrays = {**out, "same_label": same,
                  "test_image": data.x_test[test], "harmful_image": data.x_train[harmful]}
        record = {"stage": "components", "settings": settings, "inputs": inputs,
                  "test_index": test, "test_label": data.class_name(int(data.test_y[test])),
                  "harmful_index": harmful, "wd_binary": wd_binary,
                  "n_train": data.n_train,
                  "image_shape": list(data.image_shape) if data.image_shape else None,
                  "device": device_mod.describe(data.device),
                  "seconds": time.perf_counter() - start, **report}
        art.save_artifact(path, arrays, record)
    arrays, record = art.load_arrays(path, "components")
    return {**record, "metrics": draw(workdir, arrays, record)}


def metrics_of(arrays: dict) -> dict:
    from scipy.stats import pearsonr, spearmanr

    full = np.asarray(arrays["full"])
    same = np.asarray(arrays["same_label"]).astype(bool)
    out = {"pearson": {}, "spearman": {}}
    for key in VARIANTS:
        variant = np.asarray(arrays[key])
        out["pearson"][key] = float(pearsonr(full, variant)[0])
        out["spearman"][key] = float(spearmanr(full, variant)[0])
    # −I_up,loss < 0: removing the point lowers the test loss, so it is harmful
    out["harmful_same_label"] = int(((full < 0) & same).sum())
    out["harmful_other_label"] = int(((full < 0) & ~same).sum())
    out["n"] = int(full.size)
    return out


def draw(workdir: Path, arrays: dict, record: dict) -> dict:
    """The figure and its metrics (redrawn only when the artifact changed)."""
    png = workdir / FIGURE

    def made():
        from infl_cli.figures import paper as plot_paper

        metrics = metrics_of(arrays)
        plot_paper.draw_components(arrays, record, metrics, png, art.atomic_write)
        return metrics

    return study_figure(workdir, "components", record["fingerprint"], png, made)
