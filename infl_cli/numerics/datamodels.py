"""The field's two benchmark numbers, on certified truth: the linear datamodeling score (LDS)
and the LOO correlation, each with the range its truth's error bars allow.

**LDS** (Park et al. 2023). For M subsets S_m of the training set and a test point t, with the
actual outputs f_t(W*_{S_m}) of the models retrained on them and a method's attributions
τ_i(t), LDS(t) = Spearman( f_t(W*_{S_m}), Σ_{i∈S_m} τ_i(t) ) over m; the score is the mean
over test points. **Sign convention**: τ_i(t) is the method's prediction of how much *training
on* point i raises the measured output. From a scores artifact (its ``predicted_loss_diff``
[T, n]: the predicted change of the test *loss* when i is *removed*, −I_up,loss/n),
τ = −predicted_loss_diff for ``--measure loss`` and τ = +predicted_loss_diff for ``margin``
(the cross-entropy is log(1 + e^{−margin}), a decreasing function of the margin, so one test
point's two LDS values are equal).

**Certified ranks.** Every actual output is known only within a proven bar. Where no two bars
of a test point overlap, the order of the true outputs is the order of the computed ones and
the Spearman correlation is exact. Where some overlap, the bars split the outputs into groups
(connected runs of overlapping intervals); the true order is the computed one between groups
and unknown within each. Spearman's ρ is the Pearson correlation of the ranks, and with the
true outputs distinct their ranks are a permutation of 1..M: ρ is linear in Σ_m r_m·s_m (s: the
prediction's ranks, average ranks for ties), so its largest and smallest values over all orders
within the groups come from sorting each group's ranks with, and against, s (the rearrangement
inequality). That interval contains the true ρ (``lo``, ``hi``); when every group is a single
output, lo = hi = ρ.

**LOO correlation.** Per test point, the Pearson and Spearman correlation between the certified
actual LOO changes and a method's predicted changes over the removals that test point selected,
then the mean over test points; also the Pearson correlation of all selected pairs pooled (as
Koh & Liang's Figure 2). The Spearman values carry the same certified range.
"""

from __future__ import annotations

import math

import numpy as np


def _ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values, method="average")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denominator if denominator > 0 else math.nan


def overlap_groups(values: np.ndarray, bound: np.ndarray) -> list[np.ndarray]:
    """The indices of ``values`` sorted, split into groups of overlapping intervals
    [value − bound, value + bound] (connected runs): the true order is certain between groups
    and unknown within one."""
    order = np.argsort(values, kind="stable")
    lo = values[order] - bound[order]
    hi = values[order] + bound[order]
    groups, start, reach = [], 0, hi[0] if len(order) else 0.0
    for i in range(1, len(order)):
        if lo[i] <= reach:
            reach = max(reach, hi[i])
            continue
        groups.append(order[start:i])
        start, reach = i, hi[i]
    if len(order):
        groups.append(order[start:])
    return groups


def certified_spearman(actual: np.ndarray, bound: np.ndarray, predicted: np.ndarray):
    """(ρ of the computed outputs, lowest and highest ρ the bars allow, largest group size):
    the Spearman correlation of ``actual`` [M] and ``predicted`` [M] (module doc)."""
    actual = np.asarray(actual, dtype=np.float64)
    bound = np.asarray(bound, dtype=np.float64)
    s = _ranks(np.asarray(predicted, dtype=np.float64))
    rho = _pearson(_ranks(actual), s)
    if not math.isfinite(rho) or not np.isfinite(bound).all():
        return rho, math.nan, math.nan, len(actual)
    groups = overlap_groups(actual, bound)
    r_best = np.empty(len(actual))
    r_worst = np.empty(len(actual))
    position = 1.0
    for group in groups:
        ranks = position + np.arange(len(group))
        by_s = group[np.argsort(s[group], kind="stable")]
        r_best[by_s] = ranks
        r_worst[by_s] = ranks[::-1]
        position += len(group)
    hi, lo = _pearson(r_best, s), _pearson(r_worst, s)
    return rho, min(lo, rho), max(hi, rho), max(len(g) for g in groups)


def lds(actual: np.ndarray, bound: np.ndarray, keep: np.ndarray, tau: np.ndarray) -> dict:
    """The LDS of attributions ``tau`` [T, n] (module doc: sign convention) against the actual
    outputs ``actual`` [T, M] with bars ``bound`` [T, M] of the models retrained on ``keep``
    [M, n]: per test point (ρ, lo, hi, largest overlap group) and the means."""
    predicted = np.asarray(tau, dtype=np.float64) @ np.asarray(keep, dtype=np.float64).T
    rows = [certified_spearman(actual[t], bound[t], predicted[t]) for t in range(len(actual))]
    rho, lo, hi, group = (np.array(c, dtype=np.float64) for c in zip(*rows))
    return {"per_test": rho, "per_test_lo": lo, "per_test_hi": hi, "largest_group": group,
            "mean": _mean(rho), "mean_lo": _mean(lo), "mean_hi": _mean(hi),
            "certified": bool((group <= 1).all()), "predicted": predicted}


def _mean(values) -> float:
    """The mean of the finite values (NaN: a test point with constant outputs or scores, or
    a truth without bars), NaN when there are none."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def loo_correlation(actual: np.ndarray, bound: np.ndarray, selected: np.ndarray,
                    predicted: np.ndarray) -> dict:
    """Pearson and Spearman correlations of predicted [T, K] and actual [T, K] LOO changes
    (bars ``bound``) over each test point's ``selected`` [T, K] removals, their means over the
    test points with at least 3 pairs, and the pooled Pearson of all selected pairs."""
    pearson, spearman, lo, hi = [], [], [], []
    for t in range(actual.shape[0]):
        sel = np.asarray(selected[t], dtype=bool)
        if sel.sum() < 3:
            continue
        pearson.append(_pearson(actual[t, sel], predicted[t, sel]))
        rho, low, high, _ = certified_spearman(actual[t, sel], bound[t, sel], predicted[t, sel])
        spearman.append(rho)
        lo.append(low)
        hi.append(high)
    sel = np.asarray(selected, dtype=bool)
    return {"test_points": len(pearson), "pairs": int(sel.sum()),
            "pearson_mean": _mean(pearson), "spearman_mean": _mean(spearman),
            "spearman_mean_lo": _mean(lo), "spearman_mean_hi": _mean(hi),
            "pooled_pearson": _pearson(actual[sel], predicted[sel]) if sel.sum() >= 3
            else math.nan}
