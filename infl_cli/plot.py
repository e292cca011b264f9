"""Stage 5: Figure 2 (middle) of Koh & Liang: predicted against actual change in test loss.

x: actual change CE(z_test, Ŵ₋z) − CE(z_test, Ŵ) from retraining; y: predicted change
−I_up,loss/n; equal limits, the line y = x, Pearson R on each panel. Metrics: Pearson R,
Spearman ρ, and the least-squares fit predicted ≈ slope·actual + intercept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TITLES = {"lissa": "Linear (approx)", "cg": "Linear (exact)", "exact": "Linear (exact)"}


def agreement(actual: np.ndarray, predicted: np.ndarray) -> dict:
    """Pearson R, Spearman ρ, slope and intercept of predicted ≈ slope·actual + intercept."""
    from scipy import stats

    fit = stats.linregress(actual, predicted)
    return {
        "pearson_r": float(stats.pearsonr(actual, predicted)[0]),
        "spearman_rho": float(stats.spearmanr(actual, predicted)[0]),
        "slope": float(fit.slope),
        "intercept": float(fit.intercept),
        "k": int(actual.shape[0]),
    }


def draw(panels: list[dict], png: Path, pdf: Path, write) -> None:
    """One panel per dict (keys: solver, actual, predicted, pearson_r, test_index); each
    figure file is written through ``write(path, save_fn)`` (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        actual, predicted = panel["actual"], panel["predicted"]
        lim = 1.08 * float(max(np.abs(actual).max(), np.abs(predicted).max()))
        ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=1, zorder=1)
        ax.scatter(actual, predicted, s=9, alpha=0.6, color="tab:blue", edgecolors="none",
                   zorder=2)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.axhline(0, color="0.85", lw=0.6, zorder=0)
        ax.axvline(0, color="0.85", lw=0.6, zorder=0)
        ax.set_xlabel("Actual diff in loss")
        ax.set_ylabel("Predicted diff in loss")
        ax.set_title(f"{TITLES.get(panel['solver'], panel['solver'])} [{panel['solver']}]")
        ax.text(0.04, 0.95, f"Pearson R = {panel['pearson_r']:.6f}\nk = {len(actual)}, "
                f"test {panel['test_index']}", transform=ax.transAxes, va="top", fontsize=9)
    fig.tight_layout()
    for path in (png, pdf):
        write(path, lambda tmp, fmt=path.suffix[1:]: fig.savefig(tmp, format=fmt, dpi=150))
    plt.close(fig)
