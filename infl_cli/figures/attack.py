"""The paper's Figure 5: each attacked test image beside its most influential training image,
original and perturbed, and the perturbation amplified (``infl attack``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from infl_cli.figures.fig2 import _save

ROWS = 6  # test points drawn (the proven flips first)
NAMES = {1: "flipped (proven)", 0: "not flipped (proven)", -1: "undecided"}


def _chosen(verdict: np.ndarray) -> tuple[int, int]:
    """(ε index, budget index) drawn: the smallest budget, at the smallest ε where some
    prediction flips (proven), else the largest ε."""
    b = 0
    for e in range(verdict.shape[0]):
        if (verdict[e, b, 0] == 1).any():
            return e, b
    return verdict.shape[0] - 1, b


def _image(data, active: np.ndarray, values: np.ndarray):
    full = np.zeros(active.shape[0])
    full[active] = values
    return data.image(full)


def draw_attack(record: dict, tensors: dict, data, active: np.ndarray, png: Path,
                write) -> str | None:
    """Draw Figure 5 into ``png`` (and its PDF); None when the features are not images."""
    if data.image_shape is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    verdict = tensors["verdict"].numpy()
    e, b = _chosen(verdict)
    eps, budget = record["settings"]["eps"][e], record["settings"]["budgets"][b]
    order = np.argsort(-(verdict[e, b, 0] == 1).astype(int), kind="stable")[:ROWS]
    tests = record["test_indices"]
    x_test = data.x_test.cpu().numpy()
    fig, axes = plt.subplots(len(order), 4, figsize=(7.2, 1.9 * len(order)), squeeze=False)
    for row, t in enumerate(order):
        original = tensors["original"][t, 0].numpy().astype(np.float64)
        perturbed = tensors["perturbed"][e, b, t, 0].numpy().astype(np.float64)
        diff = perturbed - original
        span = max(float(np.abs(diff).max()), 1e-12)
        index = int(tensors["train_index"][t, 0])
        panels = [
            (x_test[tests[t]][:-1] if data.bias else x_test[tests[t]], "gray_r", None,
             f"test {tests[t]} ({data.class_name(int(data.y_test[tests[t]]))})"),
            (_image(data, active, original), "gray_r", (0, 255),
             f"train {index}, original"),
            (_image(data, active, perturbed), "gray_r", (0, 255), "perturbed"),
            (_image(data, active, diff), "RdBu_r", (-span, span),
             f"perturbation ×{255 / span:.0f}" if span < 255 else "perturbation"),
        ]
        for col, (values, cmap, limits, title) in enumerate(panels):
            ax = axes[row, col]
            image = values if col else np.asarray(values).reshape(data.image_shape)
            kw = {} if limits is None else {"vmin": limits[0], "vmax": limits[1]}
            ax.imshow(image, cmap=cmap, **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=7)
        after = data.class_name(int(tensors["retrained_class"][e, b, 0, t]))
        axes[row, 0].set_ylabel(f"{NAMES[int(verdict[e, b, 0, t])]}\nretrained: {after}",
                                fontsize=7)
    fig.suptitle(f"Training-set attack, ε = {eps:g} (pixels 0..255), {budget} image"
                 f"{'s' if budget > 1 else ''} perturbed; first shown", fontsize=8)
    _save(fig, png, write)
    return str(png)
