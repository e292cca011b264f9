"""``infl show``: one test prediction explained by the training images that drive it.

As in Koh & Liang's Figures 1 and 4: the test image, with its label and the predicted class,
beside the n most *helpful* training images (removing one would raise the test loss the most:
the largest predicted change) and the n most *harmful* (removing one would lower it the most:
the most negative predicted change). Each training image is captioned with its index, its
label, the predicted change and, where ``infl loo`` retrained without it for this test point,
the actual change with its certified error bound. Features that are not an image (an NPZ
whose d, the bias feature left out, is not a perfect square) get the table alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DRAWN = 12  # training images drawn per row (the table lists every one asked for)


def rank(predicted: np.ndarray, count: int):
    """(helpful, harmful): the indices of up to ``count`` points with a positive predicted
    change, largest first, and of up to ``count`` with a negative one, most negative first (a
    sign decides which list a point is in, never its rank)."""
    order = np.argsort(predicted, kind="stable")
    helpful = order[::-1][predicted[order[::-1]] > 0][:count]
    harmful = order[predicted[order] < 0][:count]
    return helpful, harmful


def explain(probs, data, test_index: int, predicted: np.ndarray, actual, count: int,
            solver: str, png: Path | None, write) -> dict:
    """The explanation of test point ``test_index`` (its class probabilities ``probs`` [C]
    under the model): one row per training point shown, and, when the features are images
    and ``png`` is given, the figure drawn into it. ``actual`` is (train indices, actual
    changes, error bounds) from the LOO artifact, or None. Returns the figure's path (None
    without one), the test point's facts, the rows, and how many of each sign there are."""
    label = int(data.test_y[test_index])
    test = {"test_index": test_index, "label": label, "label_name": data.class_name(label),
            "predicted_class": int(probs.argmax()),
            "predicted_name": data.class_name(int(probs.argmax())),
            "probability_of_label": float(probs[label]),
            "loss": float(-np.log(float(probs[label])))}
    lookup = {}
    if actual is not None:
        lookup = {int(j): (float(a), float(b)) for j, a, b in zip(*actual)}
    helpful, harmful = rank(predicted, count)
    rows = []
    for kind, indices in (("helpful", helpful), ("harmful", harmful)):
        for position, j in enumerate(indices.tolist(), start=1):
            a, b = lookup.get(j, (None, None))
            label_j = int(data.train_y[j])
            rows.append({"kind": kind, "rank": position, "train_index": j, "label": label_j,
                         "label_name": data.class_name(label_j),
                         "predicted_change": float(predicted[j]),
                         "actual_change": a, "error_bound": b})
    if png is not None and data.image_shape is not None:
        _draw(data, test, rows, min(count, DRAWN), solver, png, write)
    else:
        png = None
    return {"figure": None if png is None else str(png), "test": test, "rows": rows,
            "solver": solver, "count": count, "drawn": min(count, DRAWN),
            "positive": int((predicted > 0).sum()), "negative": int((predicted < 0).sum())}


def _draw(data, test: dict, rows: list, count: int, solver: str, png: Path, write) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test_index = test["test_index"]
    # one grey scale for every image: the training features' range (pixels: [0, 1])
    stored = data.train_x
    scale = data.pixel_scale if stored.dtype.kind in "iu" else 1.0
    lo = min(0.0, float(stored.min()) / scale)
    hi = max(float(stored.max()) / scale, 1e-300)
    count = max(count, 1)
    fig = plt.figure(figsize=(3.0 + 1.3 * count, 4.4))
    # columns: the test image, a narrow one for the row labels, then the training images
    grid = fig.add_gridspec(2, count + 2, width_ratios=[1.7, 0.45] + [1] * count, wspace=0.2,
                            hspace=0.65)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(data.image(data.features("test", [test_index])[0]), cmap="gray_r", vmin=lo,
              vmax=hi)
    ax.set_title(f"test {test_index}\nlabel {test['label_name']}, predicted "
                 f"{test['predicted_name']}\np(label) = {test['probability_of_label']:.3f}",
                 fontsize=9)
    ax.axis("off")
    for row_index, kind in enumerate(("helpful", "harmful")):
        label_ax = fig.add_subplot(grid[row_index, 1])
        label_ax.axis("off")
        label_ax.text(0.5, 0.5, "helpful\n(removal raises\nthe test loss)" if kind == "helpful"
                      else "harmful\n(removal lowers\nthe test loss)", rotation=90,
                      ha="center", va="center", fontsize=7, transform=label_ax.transAxes)
        chosen = [r for r in rows if r["kind"] == kind][:count]
        if not chosen:
            label_ax.text(1.5, 0.5, f"no training point has a {'positive' if kind == 'helpful' else 'negative'}"
                          " predicted change", fontsize=8, va="center",
                          transform=label_ax.transAxes)
        for col, r in enumerate(chosen, start=2):
            sub = fig.add_subplot(grid[row_index, col])
            sub.imshow(data.image(data.features("train", [r["train_index"]])[0]),
                       cmap="gray_r", vmin=lo, vmax=hi)
            caption = (f"#{r['train_index']} label {r['label_name']}\n"
                       f"pred {r['predicted_change']:+.2e}")
            if r["actual_change"] is not None:
                caption += f"\nactual {r['actual_change']:+.2e}"
            sub.set_title(caption, fontsize=6.5)
            sub.set_xticks([])
            sub.set_yticks([])
    shown = {kind: len([r for r in rows if r["kind"] == kind]) for kind in ("helpful", "harmful")}
    more = "" if max(shown.values()) <= count else \
        f"; the first {count} of each drawn, all in the table"
    fig.suptitle(f"Training images that most affect test {test_index} (predicted change in test "
                 f"loss on removal, {solver} scores{more})", fontsize=9)
    write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight"))
    plt.close(fig)
