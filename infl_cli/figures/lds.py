"""The benchmark figure: one bar per method, its LDS on certified subset truth (the whisker:
the range the truth's error bars allow) and, where certified LOO truth is present, its LOO
Spearman and Pearson correlations. Horizontal bars, one row per method, each value written at
the end of its bar: labels never overlap, however many methods."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _limits(values) -> tuple[float, float]:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return (min(0.0, min(finite, default=0.0) - 0.05), 1.18)


def draw_lds(section: dict, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from infl_cli.figures.fig2 import _save
    from infl_cli.runtime.artifacts import atomic_write

    names = [n for n, e in section["methods"].items() if e.get("lds") is not None]
    loo = [n for n in names if (section["methods"][n].get("loo") or {}).get("test_points")]
    panels = 2 if loo else 1
    height = 1.6 + 0.42 * max(len(names), 1)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels + 1.2, height), squeeze=False,
                             sharey=True)
    y = np.arange(len(names))[::-1]  # the first method on top
    ax = axes[0, 0]
    values = np.array([section["methods"][n]["lds"] for n in names], dtype=float)
    lo = np.array([section["methods"][n]["lds_lo"] for n in names], dtype=float)
    hi = np.array([section["methods"][n]["lds_hi"] for n in names], dtype=float)
    ax.barh(y, values, color="tab:blue", height=0.6)
    if np.isfinite(lo).all() and np.isfinite(hi).all():
        ax.errorbar(values, y, xerr=[values - lo, hi - values], fmt="none", ecolor="k",
                    capsize=3)
    for yi, v in zip(y, values):
        ax.text(max(v, 0.0) + 0.02, yi, f"{v:.3f}", va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(*_limits(values))
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_xlabel("LDS (mean Spearman over the test points)")
    ax.set_title(f"LDS: {_plural(section['subsets'], 'subset')} of "
                 f"{section['subset_size']:,} points, {section['measure']}, "
                 f"{_plural(section['test_points'], 'test point')}", fontsize=9)
    if loo:
        ax = axes[0, 1]
        rows = {n: yi for n, yi in zip(names, y)}
        spearman = np.array([section["methods"][n]["loo"]["spearman_mean"] for n in loo],
                            dtype=float)
        pearson = np.array([section["methods"][n]["loo"]["pearson_mean"] for n in loo],
                           dtype=float)
        ys = np.array([rows[n] for n in loo])
        ax.barh(ys + 0.17, spearman, height=0.32, label="Spearman ρ", color="tab:orange")
        ax.barh(ys - 0.17, pearson, height=0.32, label="Pearson R", color="tab:green")
        for yi, a, b in zip(ys, spearman, pearson):
            ax.text(max(a, 0.0) + 0.02, yi + 0.17, f"{a:.3f}", va="center", fontsize=7)
            ax.text(max(b, 0.0) + 0.02, yi - 0.17, f"{b:.3f}", va="center", fontsize=7)
        ax.set_xlim(*_limits(list(spearman) + list(pearson)))
        ax.axvline(0, color="0.6", lw=0.8)
        ax.set_xlabel("LOO correlation (mean over the test points)")
        s = section["loo"]
        ax.set_title(f"certified LOO: --select {s['select']}, {_plural(s['pairs'], 'pair')}",
                     fontsize=9)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.5 / height - 0.12),
                  ncol=2, frameon=False)
    _save(fig, png, atomic_write)
    return png
