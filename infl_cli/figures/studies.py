"""The studies' figures: the self-influence truth check (a Figure-2 panel of each point's own
loss), the training labels to check first, and the paper's Figure 6 (fixing mislabelled
examples)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from infl_cli.figures.fig2 import _note, _save, _scatter, agreement


def draw_self_check(actual: np.ndarray, bound: np.ndarray, predicted: np.ndarray, png: Path,
                    write) -> dict:
    """The self-influence truth check as a Figure-2 panel: for each of the points of largest
    self-influence, the actual change of its own loss when it is removed (certified LOO, its
    error bar) against the predicted −I_up,loss(z, z)/n. Returns the agreement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = agreement(actual, predicted)
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    _scatter(ax, actual, predicted, np.nan_to_num(bound, nan=0.0), log_axes=False)
    # the frame the points fill (and 0): these changes are all of one sign
    values = np.concatenate([actual, predicted])
    lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
    pad = 0.06 * (hi - lo or 1.0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("Actual change of its own loss (removed)")
    ax.set_ylabel("Predicted change, −I(z, z)/n")
    ax.set_title(f"Self-influence, {len(actual)} largest", fontsize=9)
    ax.text(0.04, 0.96, _note(m, bound, "certified"), transform=ax.transAxes, va="top",
            fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    _save(fig, png, write)
    return {"figure": str(png), **m}


def draw_check_first(data, rows: list, order: str, png: Path, write, columns: int = 8) -> None:
    """The training images whose labels to check first, captioned with index, given label,
    predicted class and its probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(rows)
    cols = min(columns, count)
    lines = math.ceil(count / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(1.45 * cols, 1.75 * lines), squeeze=False)
    stored = data.train_x
    scale = data.pixel_scale if stored.dtype.kind in "iu" else 1.0
    lo, hi = min(0.0, float(stored.min()) / scale), max(float(stored.max()) / scale, 1e-300)
    for ax, r in zip(axes.flat, rows):
        ax.imshow(data.image(data.features("train", [r["train_index"]])[0]), cmap="gray_r",
                  vmin=lo, vmax=hi)
        ax.set_title(f"#{r['train_index']} label {r['label_name']}\npred "
                     f"{r['predicted_name']} ({r['predicted_probability']:.2f})", fontsize=6.5)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.axis("off")
    fig.suptitle(f"Training labels to check first (by {order})", fontsize=9)
    fig.tight_layout()
    write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    plt.close(fig)


ORDER_STYLE = {"self-influence": ("tab:blue", "o", "-"), "loss": ("tab:orange", "s", "--"),
               "random": ("0.45", "^", "-"), "loo-loss": ("tab:green", "D", ":"),
               "koh": ("tab:purple", "v", "-.")}


def draw_mislabel(metrics: dict, png: Path, write) -> None:
    """Figure 6 of Koh & Liang: test accuracy (left; the clean model's dashed) and the fraction
    of flipped labels fixed (right) against the fraction of the training data checked, means
    over seeds with standard-error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checks = np.asarray(metrics["checks"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
    names = list(metrics["per_ordering"])
    step = float(np.min(np.diff(checks))) if checks.size > 1 else 0.05
    for position, name in enumerate(names):
        entry = metrics["per_ordering"][name]
        color, marker, style = ORDER_STYLE.get(name, ("k", ".", "-"))
        label = f"{name} (AUC {entry['auc']:.3f})"
        # side by side at each fraction, so that orderings that agree stay visible
        x = checks + (position - (len(names) - 1) / 2) * 0.06 * step
        for ax, key in ((axes[0], "test_accuracy"), (axes[1], "fraction_fixed")):
            ax.errorbar(x, entry[key], yerr=entry[f"{key}_se"], color=color, marker=marker,
                        ms=4, capsize=2, ls=style, lw=1.2, label=label, alpha=0.9)
    axes[0].axhline(metrics["clean"]["test_accuracy"], color="k", ls="--", lw=1,
                    label="clean data")
    axes[0].set_ylabel("Test accuracy (proven)")
    axes[1].set_ylabel("Fraction of flips fixed")
    for ax in axes:
        ax.set_xlabel("Fraction of training data checked")
        ax.legend(fontsize=7)
    s = metrics["settings"]
    fig.suptitle(f"Fixing mislabelled examples: {s['flip']:.0%} flipped, {metrics['seeds']} "
                 f"seeds; every model certified (‖∇R‖ ≤ {metrics['max_grad_bound']:.1e}); "
                 "bars: ± one standard error over the seeds; the orderings are drawn side by "
                 "side at each fraction", fontsize=8)
    _save(fig, png, write)
