"""The benchmark figure: one bar per method, its LDS on certified subset truth (the whisker:
the range the truth's error bars allow) and, where certified LOO truth is present, its LOO
Spearman and Pearson correlations."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def draw_lds(section: dict, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from infl_cli.figures.fig2 import _save
    from infl_cli.runtime.artifacts import atomic_write

    names = [n for n, e in section["methods"].items() if e.get("lds") is not None]
    loo = [n for n in names if (section["methods"][n].get("loo") or {}).get("test_points")]
    panels = 2 if loo else 1
    width = max(4.0, min(0.55 * len(names) + 2, 13.0))
    fig, axes = plt.subplots(panels, 1, figsize=(width, 3.9 * panels), squeeze=False)
    ax = axes[0, 0]
    x = np.arange(len(names))
    values = np.array([section["methods"][n]["lds"] for n in names])
    lo = np.array([section["methods"][n]["lds_lo"] for n in names])
    hi = np.array([section["methods"][n]["lds_hi"] for n in names])
    ax.bar(x, values, color="tab:blue", width=0.6)
    if np.isfinite(lo).all() and np.isfinite(hi).all():
        ax.errorbar(x, values, yerr=[values - lo, hi - values], fmt="none", ecolor="k",
                    capsize=4)
    for xi, v in zip(x, values):
        ax.text(xi, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(f"LDS (mean Spearman, {section['test_points']} test points)")
    ax.set_ylim(min(0.0, float(np.nanmin(values)) - 0.05) if len(values) else 0, 1.08)
    ax.set_title(f"{section['subsets']} subsets of {section['subset_size']}, "
                 f"measure {section['measure']}", fontsize=9)
    if loo:
        ax = axes[1, 0]
        x = np.arange(len(loo))
        spearman = [section["methods"][n]["loo"]["spearman_mean"] for n in loo]
        pearson = [section["methods"][n]["loo"]["pearson_mean"] for n in loo]
        ax.bar(x - 0.18, spearman, width=0.36, label="Spearman", color="tab:orange")
        ax.bar(x + 0.18, pearson, width=0.36, label="Pearson", color="tab:green")
        for xi, a, b in zip(x, spearman, pearson):
            ax.text(xi - 0.18, a, f"{a:.3f}", ha="center", va="bottom", fontsize=6)
            ax.text(xi + 0.18, b, f"{b:.3f}", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(x, loo, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(min(0.0, float(np.nanmin(spearman + pearson)) - 0.05), 1.08)
        ax.set_ylabel("LOO correlation (mean over test points)")
        s = section["loo"]
        ax.set_title(f"certified LOO: --select {s['select']}, {s['pairs']} pairs", fontsize=9)
        ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    _save(fig, png, atomic_write)
    return png
