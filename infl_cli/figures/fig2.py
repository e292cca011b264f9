"""Figure 2 of Koh & Liang: predicted against actual change in test loss, and its metrics.

x: actual change f(Ŵ₋z) − f(Ŵ) from certified retraining (its certified error bound as a
horizontal error bar, where it is wide enough to see); y: predicted change −I_up,loss/n;
equal limits and the line y = x. Metrics: Pearson R, Spearman ρ and the least-squares fit
predicted ≈ slope·actual + intercept, over each test point's selected removals.

* One test point, ``--select top``: one panel per solver, as in the paper.
* Several test points: a grid of panels (the first :data:`GRID_MAX`) and a summary figure
  of 1 − R and 1 − ρ per test point (log scale: the interesting differences are in the
  fifth decimal); metrics per test point with the median and the worst.
* ``--select random`` / ``all``: effects span many decades, so symmetric-log axes (a density
  plot above :data:`DENSITY_ABOVE` points), and R and ρ by band of |actual change|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GRID_MAX = 20
DENSITY_ABOVE = 5000
BANDS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 0.0)  # lower edges of |actual change| bands


@dataclass
class LooView:
    """What the figures need from loo.safetensors: [T, K] arrays over the union of removals."""

    test_indices: list
    train_indices: np.ndarray
    actual: np.ndarray
    bound: np.ndarray
    selected: np.ndarray
    select: str
    error_kind: str = "certified"  # certified | estimate | none (the CNN's Adam LOO)

    def pairs(self, t: int, values: np.ndarray) -> np.ndarray:
        """Test point t's selected entries of a [T, K] array."""
        return values[t][self.selected[t]]


def agreement(actual: np.ndarray, predicted: np.ndarray) -> dict:
    """Pearson R, Spearman ρ, slope and intercept of predicted ≈ slope·actual + intercept.
    Where they are undefined (fewer than 3 pairs, or no spread) they are NaN (null in JSON)
    and ``undefined`` says why in words."""
    from scipy import stats

    k = int(actual.shape[0])
    reason = None
    if k < 3:
        reason = f"fewer than 3 pairs ({k})"
    elif np.ptp(actual) == 0:
        reason = ("every actual change is 0" if not np.any(actual) else
                  "every actual change is the same")
    elif np.ptp(predicted) == 0:
        reason = ("every predicted change is 0" if not np.any(predicted) else
                  "every predicted change is the same")
    if reason is not None:
        return {"pearson_r": math.nan, "spearman_rho": math.nan, "slope": math.nan,
                "intercept": math.nan, "k": k, "undefined": reason}
    fit = stats.linregress(actual, predicted)
    return {
        "pearson_r": float(stats.pearsonr(actual, predicted)[0]),
        "spearman_rho": float(stats.spearmanr(actual, predicted)[0]),
        "slope": float(fit.slope),
        "intercept": float(fit.intercept),
        "k": k,
    }


def describe(m: dict, key: str, digits: int = 6) -> str:
    """A figure of :func:`agreement` in words: its value, or why it is undefined."""
    value = m[key]
    if value is None or not math.isfinite(value):
        return f"undefined ({m.get('undefined', 'no value')})"
    return f"{value:.{digits}g}"


def bands(actual: np.ndarray, predicted: np.ndarray) -> list[dict]:
    """:func:`agreement` within bands of |actual change| (decades, :data:`BANDS`)."""
    out, upper = [], math.inf
    for lower in BANDS:
        inside = (np.abs(actual) >= lower) & (np.abs(actual) < upper)
        label = f"|actual| ≥ {lower:.0e}" if upper == math.inf else (
            f"{lower:.0e} ≤ |actual| < {upper:.0e}" if lower > 0 else f"|actual| < {upper:.0e}")
        if inside.any():
            out.append({"band": label, **agreement(actual[inside], predicted[inside])})
        upper = lower
    return out


def _summary(per_test: list[dict]) -> dict:
    r = np.array([m["pearson_r"] for m in per_test], dtype=float)
    rho = np.array([m["spearman_rho"] for m in per_test], dtype=float)
    if not np.isfinite(r).any():
        return {"median_pearson_r": math.nan, "worst_pearson_r": math.nan,
                "worst_test_index": int(per_test[0]["test_index"]),
                "median_spearman_rho": math.nan, "worst_spearman_rho": math.nan}
    worst = int(np.nanargmin(r))
    return {"median_pearson_r": float(np.nanmedian(r)), "worst_pearson_r": float(np.nanmin(r)),
            "worst_test_index": int(per_test[worst]["test_index"]),
            "median_spearman_rho": float(np.nanmedian(rho)),
            "worst_spearman_rho": float(np.nanmin(rho))}


def make_figures(view: LooView, panels: dict, png: Path, write, beside=()) -> dict:
    """Draw the figures for ``panels`` ({solver: {"predicted": [T, K], "ihvp": report,
    "title": str}}) into ``png`` (and a PDF copy; ``<stem>_summary.png`` too for several test
    points), each file written through ``write(path, save_fn)`` (atomic); ``beside``: more
    single-test-point panels, (view, panel) pairs of other work folders, drawn to the right.
    Returns the metrics."""
    import matplotlib

    matplotlib.use("Agg")
    t_count = len(view.test_indices)
    metrics = {"figure": str(png), "select": view.select, "test_indices": list(view.test_indices),
               "k": int(view.actual.shape[1]), "panels": {}}
    for solver, panel in panels.items():
        predicted = panel["predicted"]
        per_test = [{"test_index": int(t), **agreement(view.pairs(i, view.actual),
                                                        view.pairs(i, predicted))}
                    for i, t in enumerate(view.test_indices)]
        pooled_actual = view.actual[view.selected]
        pooled_predicted = predicted[view.selected]
        entry = {**agreement(pooled_actual, pooled_predicted), "per_test": per_test,
                 **_summary(per_test), "ihvp": panel.get("ihvp", {})}
        if view.select != "top":
            entry["bands"] = bands(pooled_actual, pooled_predicted)
        metrics["panels"][solver] = entry
    if t_count == 1:
        drawn = [(view, panel, metrics["panels"][solver]) for solver, panel in panels.items()]
        for other, panel in beside:
            m = agreement(other.pairs(0, other.actual), other.pairs(0, panel["predicted"]))
            metrics.setdefault("beside", []).append({"title": panel.get("title"), **m})
            drawn.append((other, panel, m))
        _draw_single(drawn, png, write)
    else:
        first = next(iter(panels))
        _draw_grid(view, panels[first]["predicted"], first, png, write)
        summary = png.with_name(png.stem + "_summary.png")
        _draw_summary(metrics, summary, write)
        metrics["summary_figure"] = str(summary)
    return metrics


def _save(fig, png: Path, write) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    for path in (png, png.with_suffix(".pdf")):
        write(path, lambda tmp, fmt=path.suffix[1:]: fig.savefig(tmp, format=fmt, dpi=150))
    plt.close(fig)


def _symlog_threshold(actual: np.ndarray) -> float:
    nonzero = np.abs(actual[actual != 0])
    return float(np.percentile(nonzero, 5)) if nonzero.size else 1e-12


def _scatter(ax, actual, predicted, bound, log_axes: bool, small: bool = False) -> None:
    """One predicted-vs-actual panel: y = x, points, certified error bars."""
    lim = 1.08 * float(max(np.abs(actual).max(), np.abs(predicted).max(), 1e-300))
    ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=1, zorder=1)
    if log_axes and actual.size > DENSITY_ABOVE:
        _density(ax, actual, predicted)
        return
    size = 5 if small else 9
    ax.scatter(actual, predicted, s=size, alpha=0.6, color="tab:blue", edgecolors="none",
               zorder=2)
    ax.errorbar(actual, predicted, xerr=bound, fmt="none", ecolor="tab:red", elinewidth=0.8,
                alpha=0.9, zorder=3)
    ax.axhline(0, color="0.85", lw=0.6, zorder=0)
    ax.axvline(0, color="0.85", lw=0.6, zorder=0)
    if log_axes:
        thr = _symlog_threshold(actual)
        ax.set_xscale("symlog", linthresh=thr)
        ax.set_yscale("symlog", linthresh=thr)
        ax.tick_params(axis="x", labelrotation=60)  # decade labels crowd around 0
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal" if not log_axes else "auto")


def _density(ax, actual, predicted) -> None:
    """Hexbin density in symmetric-log coordinates s(v) = sign(v)·log10(1 + |v|/thr)."""
    thr = _symlog_threshold(actual)

    def s(v):
        return np.sign(v) * np.log10(1 + np.abs(v) / thr)

    lim = float(max(np.abs(s(actual)).max(), np.abs(s(predicted)).max())) * 1.05
    ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=1, zorder=1)
    ax.hexbin(s(actual), s(predicted), gridsize=80, bins="log", cmap="viridis", mincnt=1,
              extent=(-lim, lim, -lim, lim), zorder=2)
    top = math.floor(math.log10(thr * (10 ** lim - 1)))
    values = [10.0 ** e for e in range(math.ceil(math.log10(thr)), top + 1)]
    ticks = [0.0] + [s(v) for v in values] + [-s(v) for v in values]
    labels = ["0"] + [f"{v:.0e}" for v in values] + [f"-{v:.0e}" for v in values]
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(ticks, labels, fontsize=6)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")


def _note(m: dict, bound: np.ndarray, error_kind: str) -> str:
    if not math.isfinite(m["pearson_r"]):
        text = f"R, ρ and slope undefined:\n{m.get('undefined', '')}\nk = {m['k']}"
    else:
        text = (f"Pearson R = {m['pearson_r']:.6f}\nSpearman ρ = {m['spearman_rho']:.6f}\n"
                f"slope {m['slope']:.4f} (predicted ≈ slope × actual)\nk = {m['k']}")
    if error_kind == "none" or not np.isfinite(bound).any():
        return text + "; actual: no error bars"
    what = "certified" if error_kind == "certified" else "estimated (first order)"
    return text + f"; x error bars: {what},\nlargest {float(np.nanmax(bound)):.1e}"


def _draw_single(drawn: list, png: Path, write) -> None:
    """One panel per (view, panel, metrics) of one test point each, side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(drawn), figsize=(4.6 * len(drawn), 4.6), squeeze=False)
    for ax, (view, panel, m) in zip(axes[0], drawn):
        log_axes = view.select != "top"
        actual, bound = view.pairs(0, view.actual), view.pairs(0, view.bound)
        predicted = view.pairs(0, panel["predicted"])
        _scatter(ax, actual, predicted, np.nan_to_num(bound, nan=0.0), log_axes)
        ax.set_xlabel("Actual diff in loss")
        ax.set_ylabel("Predicted diff in loss")
        what = {"top": "", "random": ", random points", "all": ", all points"}[view.select]
        where = f"{panel['dataset']}, " if panel.get("dataset") else ""
        ax.set_title(f"{panel.get('title', '')}\n{where}test {view.test_indices[0]}{what}",
                     fontsize=9)
        ax.text(0.04, 0.96, _note(m, bound, view.error_kind), transform=ax.transAxes,
                va="top", fontsize=8)
    _save(fig, png, write)


def _draw_grid(view: LooView, predicted: np.ndarray, solver: str, png: Path, write) -> None:
    import matplotlib.pyplot as plt

    shown = min(len(view.test_indices), GRID_MAX)
    cols = min(5, shown)
    rows = math.ceil(shown / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 2.9 * rows), squeeze=False)
    log_axes = view.select != "top"
    for i, ax in enumerate(axes.flat):
        if i >= shown:
            ax.axis("off")
            continue
        actual, pred = view.pairs(i, view.actual), view.pairs(i, predicted)
        _scatter(ax, actual, pred, np.nan_to_num(view.pairs(i, view.bound), nan=0.0), log_axes,
                 small=True)
        m = agreement(actual, pred)
        ax.set_title(f"test {view.test_indices[i]}: R = {describe(m, 'pearson_r', 5)}",
                     fontsize=9)
        ax.tick_params(labelsize=8)
        if not log_axes:  # a symlog axis's locator takes no nbins
            ax.locator_params(nbins=3)
    more = "" if shown == len(view.test_indices) else \
        f" (first {shown} of {len(view.test_indices)} test points)"
    fig.suptitle(f"Predicted (y) against actual (x) change in test loss, {solver} scores{more}",
                 fontsize=10)
    _save(fig, png, write)


def _draw_summary(metrics: dict, png: Path, write) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, name in ((axes[0], "pearson_r", "Pearson R"),
                          (axes[1], "spearman_rho", "Spearman ρ")):
        shown = []
        for solver, entry in metrics["panels"].items():
            values = np.array([m[key] for m in entry["per_test"]], dtype=float)
            tests = [m["test_index"] for m in entry["per_test"]]
            gap = np.clip(1 - values, 1e-12, None)
            shown.append(gap)
            ax.plot(range(len(tests)), gap, "o", ms=4, label=solver)
            if np.isfinite(gap).any():
                ax.axhline(float(np.nanmedian(gap)), lw=0.8, ls="--",
                           color=ax.lines[-1].get_color())
        every = np.concatenate(shown)
        if np.isfinite(every).any():  # some margin, also when every gap is equal (R or ρ = 1)
            ax.set_ylim(np.nanmin(every) / 3, np.nanmax(every) * 3)
        ax.set_yscale("log")
        ax.set_xticks(range(len(tests)), [str(t) for t in tests], rotation=90,
                      fontsize=8 if len(tests) <= 40 else 6)
        ax.set_xlabel("test index")
        ax.set_ylabel(f"1 − {name} (log)")
        ax.legend(fontsize=7)
    first = next(iter(metrics["panels"].values()))
    fig.suptitle(f"Agreement per test point: median R {first['median_pearson_r']:.6f}, worst "
                 f"{first['worst_pearson_r']:.6f} (test {first['worst_test_index']}); "
                 f"median ρ {first['median_spearman_rho']:.6f}", fontsize=9)
    if not np.isfinite(first["median_pearson_r"]):
        fig.suptitle("Agreement per test point: R and ρ undefined (no spread in the changes)",
                     fontsize=9)
    _save(fig, png, write)
