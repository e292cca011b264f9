"""The figures of the paper's Figures 1 and 3 (matplotlib, Agg): the parts of influence
(:func:`draw_components`) and the smooth hinge (:func:`draw_hinge`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from infl_cli.figures.fig2 import _save, _scatter

CURVES = (0.0, 0.001, 0.01, 0.1)  # panel (a) of Figure 3: the paper's temperatures
VARIANT_TITLES = {"no_train_loss": "without the training-loss term",
                  "no_hessian": "without H",
                  "no_both": "without both"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_components(arrays: dict, record: dict, metrics: dict, png: Path, write) -> None:
    """Figure 1: the test image and a harmful training image of its label, then −I_up,loss
    of every training point (x) against each variant (y), green where the training label is
    the test point's, red where it is not."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6),
                             gridspec_kw={"width_ratios": [0.8, 0.8, 1, 1, 1]})
    shape = record.get("image_shape")
    for ax, key, title in ((axes[0], "test_image", f"test {record['test_index']} "
                                                   f"(label {record['test_label']})"),
                           (axes[1], "harmful_image", f"harmful train {record['harmful_index']}"
                                                      f" (label {record['test_label']})")):
        if shape:
            ax.imshow(np.asarray(arrays[key]).reshape(shape), cmap="gray_r")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    full = np.asarray(arrays["full"])
    same = np.asarray(arrays["same_label"]).astype(bool)
    for ax, key in zip(axes[2:], VARIANT_TITLES):
        variant = np.asarray(arrays[key])
        ax.scatter(full[~same], variant[~same], s=3, color="tab:red", alpha=0.5,
                   edgecolors="none", label="other label")
        ax.scatter(full[same], variant[same], s=3, color="tab:green", alpha=0.5,
                   edgecolors="none", label="same label")
        ax.axhline(0, color="0.85", lw=0.6, zorder=0)
        ax.axvline(0, color="0.85", lw=0.6, zorder=0)
        ax.set_xlabel("−I_up,loss (full)", fontsize=8)
        ax.set_ylabel(VARIANT_TITLES[key], fontsize=8)
        ax.set_title(f"{VARIANT_TITLES[key]}: R = {metrics['pearson'][key]:.3f}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[2].legend(fontsize=7, markerscale=3, loc="best")
    _save(fig, png, write)


def _r(entry: dict, digits: int = 3) -> str:
    value = entry["pearson"]
    return f"{value:.{digits}f}" if value == value else "undefined"


def draw_hinge(arrays: dict, record: dict, metrics: dict, png: Path, write) -> None:
    """Figure 3: (a) the smooth hinge around s = 1; (b) the predicted change at the SVM's
    weights for each temperature against the SVM's certified actual change (error bars:
    the certificates' bounds); below, the smooth models trained at their own t."""
    from infl_cli.engines.hinge.svm import smooth_hinge

    plt = _pyplot()
    temps = record["settings"]["temperatures"]
    smooth = record["settings"]["smooth"]
    cols = 1 + len(temps)
    rows = 2 if smooth else 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows), squeeze=False)
    s = np.linspace(0.5, 1.5, 801)
    ax = axes[0, 0]
    for t in sorted({*CURVES, *temps}):
        ax.plot(s, smooth_hinge(s, t), lw=1.2, label=f"t = {t:g}")
    ax.set_xlabel("s = y·wᵀx", fontsize=8)
    ax.set_ylabel("SmoothHinge(s, t)", fontsize=8)
    ax.set_title("(a) the smooth hinge", fontsize=9)
    ax.legend(fontsize=7)
    chosen = np.asarray(arrays["train_indices"])
    actual = np.asarray(arrays["actual"])
    bound = np.asarray(arrays["actual_bound"])
    paper = metrics["paper_r"]
    letters = iter("bcdefghijklmnop")
    for i, t in enumerate(temps):
        ax = axes[0, 1 + i]
        pred = np.asarray(arrays["predicted"][i])[chosen]
        _scatter(ax, actual, pred, bound, log_axes=False)
        key = f"{t:g}"
        theirs = f" (paper {paper[key]:.3f})" if key in paper else ""
        ax.set_title(f"({next(letters)}) SVM, influence at t = {key}\n"
                     f"R = {_r(metrics['svm'][key])}{theirs}", fontsize=9)
        ax.set_xlabel("actual change of the hinge test loss", fontsize=8)
        ax.set_ylabel("predicted change", fontsize=8)
        ax.tick_params(labelsize=7)
    if smooth:
        axes[1, 0].axis("off")
        axes[1, 0].text(0.98, 0.5, "This row: the smooth-hinge\nmodel trained at its own t,\n"
                        "predicted and retrained\n(certified) on the same\npoints  →",
                        fontsize=9, va="center", ha="right", transform=axes[1, 0].transAxes)
        for i, t in enumerate(smooth):
            ax = axes[1, 1 + i]
            _scatter(ax, np.asarray(arrays["smooth_actual"][i]),
                     np.asarray(arrays["smooth_predicted"][i]),
                     np.asarray(arrays["smooth_bound"][i]), log_axes=False)
            ax.set_title(f"({next(letters)}) smooth model trained at t = {t:g}\n"
                         f"R = {_r(metrics['smooth'][f'{t:g}'], 4)}", fontsize=9)
            ax.set_xlabel(f"actual change of ℓ_{t:g} test loss", fontsize=8)
            ax.set_ylabel("predicted change", fontsize=8)
            ax.tick_params(labelsize=7)
        for j in range(1 + len(smooth), cols):
            axes[1, j].axis("off")
    _save(fig, png, write)
