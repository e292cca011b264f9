"""``infl show``: one test prediction explained by its most helpful and most harmful training
points (:mod:`~infl_cli.figures.explain`); reads records and arrays and draws, without torch for a
model that kept its test probabilities (every model trained since they are kept)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from infl_cli.errors import BadInput
from infl_cli.runtime import artifacts as art
from infl_cli.runtime import progress
from infl_cli.stages.common import (
    choose_artifact,
    load_scores,
    model_dataset,
    model_engine,
    score_rows,
)


def show_settings(workdir: Path, test_index: int | None, count: int, solver: str | None,
                  out: Path | None):
    """(settings, inputs, image path, sidecar path) of an explanation, from the records alone:
    the sidecar ``explain-<t>.json`` records them with the table, so that ``infl run`` redraws
    nothing whose inputs have not changed."""
    if count < 1:
        raise BadInput(f"-n must be ≥ 1, got {count}")
    mrec = art.checked_record(workdir / art.MODEL, "train", "infl train")
    n_test = mrec.get("n_test")
    if test_index is not None and n_test is not None and not 0 <= test_index < n_test:
        raise BadInput(f"test index {test_index} out of range: the test set has "
                       f"{n_test} points (0..{n_test - 1})")
    if out is not None and Path(out).suffix.lower() != ".png":
        raise BadInput(f"--out must end in .png, got {out}")
    solver = choose_artifact(workdir, "scores", solver, mrec["fingerprint"],
                             None if test_index is None else [test_index], "show")
    srec = art.checked_record(workdir / art.scores_name(solver), "score",
                              f"infl score --solver {solver}")
    if test_index is None:
        test_index = int(srec["settings"]["test_indices"][0])
    png = Path(out) if out else workdir / f"explain-{test_index}.png"
    loo = workdir / art.LOO
    settings = {"test_index": test_index, "count": count, "solver": solver, "figure": str(png)}
    inputs = {"model": mrec["fingerprint"], "scores": srec["fingerprint"],
              "loo": art.read_record(loo)["fingerprint"] if loo.is_file() else None}
    return settings, inputs, png, png.with_suffix(".json")


def drawn(settings: dict, inputs: dict, png: Path, sidecar: Path) -> dict | None:
    """The recorded explanation when it was made from these settings and inputs and its image
    (where it has one) is there; else None."""
    try:
        made = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if made.get("settings") != settings or made.get("inputs") != inputs:
        return None
    result = made.get("result") or {}
    if result.get("figure") is not None and not png.is_file():
        return None
    return result


def run_show(workdir: Path, test_index: int | None, count: int, solver: str | None,
             out: Path | None, csv: Path | None = None) -> dict:
    """The explanation of one test prediction as images (see
    :mod:`~infl_cli.figures.explain`); by default of the first test point scored. Writes only
    the image and its sidecar (it takes no lock), and with ``csv`` every training point's
    scores for this test point as CSV (``-``: stdout)."""
    from infl_cli.figures import explain

    settings, inputs, png, sidecar = show_settings(workdir, test_index, count, solver, out)
    test_index, solver = settings["test_index"], settings["solver"]
    arrays, mrec = art.load_arrays(workdir / art.MODEL, "train", hint="infl train")
    data = model_dataset(mrec)
    if not 0 <= test_index < data.n_test:
        raise BadInput(f"test index {test_index} out of range: the test set has "
                       f"{data.n_test} points (0..{data.n_test - 1})")
    stensors, _ = load_scores(workdir, solver, mrec["fingerprint"], numpy=True)
    row = score_rows(stensors, [test_index], art.scores_name(solver))[0]
    predicted = stensors["predicted_loss_diff"][row]
    actual = None
    if (workdir / art.LOO).is_file():
        ltensors, lrec = art.load_arrays(workdir / art.LOO, "loo")
        lt = [int(t) for t in ltensors["test_indices"].tolist()]
        if lrec["inputs"]["model"] == mrec["fingerprint"] and test_index in lt:
            t = lt.index(test_index)
            actual = (ltensors["train_indices"], ltensors["actual_loss_diff"][t],
                      ltensors["actual_error_bound"][t])
    if data.image_shape is None:
        if out is not None:
            raise BadInput(f"--out: the {data.n_features - data.bias} features of "
                           f"{mrec['settings']['dataset']} are not an image (not a perfect "
                           "square); `infl show` prints the table alone")
        png = None
    if "test_probs" in arrays:
        probs = arrays["test_probs"][test_index]
    else:  # a model written before test probabilities were kept
        tensors, mrec_, data_t = _torch_model(workdir, data)
        probs = model_engine(mrec).probabilities(
            tensors, data_t.x_test[test_index][None])[0].cpu().numpy()
    result = explain.explain(np.asarray(probs), data, test_index, predicted, actual, count,
                             solver, png, art.atomic_write)
    art.write_json(sidecar, {"settings": settings, "inputs": inputs, "result": result})
    _say_counts(result)
    if csv is not None:
        result["csv"] = write_csv(csv, data, stensors["influence"][row], predicted, actual)
    return result


def _say_counts(result: dict) -> None:
    """One line where fewer rows are listed than asked, or fewer images drawn."""
    count = result["count"]
    short = [f"{result[key]:,} training points have a {sign} predicted change ({kind})"
             for key, sign, kind in (("positive", "positive", "helpful"),
                                     ("negative", "negative", "harmful"))
             if result[key] < count]
    if short:
        progress.notice(f"-n {count}: only " + "; ".join(short) + "; all of them are listed")
    if result["figure"] and count > result["drawn"]:
        progress.notice(f"the image draws the first {result['drawn']} of each; the table lists "
                        f"all of them (--csv writes every training point)")


def write_csv(path: Path, data, influence, predicted, actual) -> str:
    """Every training point's scores for the test point, one row each, as CSV: its index, label
    (and label name), I_up,loss, the predicted change of the test loss on removing it and,
    where ``infl loo`` retrained without it, the actual change with its proven bound."""
    import csv as csv_mod
    import io
    import sys

    lookup = {}
    if actual is not None:
        lookup = {int(j): (float(a), float(b)) for j, a, b in zip(*actual)}
    buffer = io.StringIO()
    out = csv_mod.writer(buffer, lineterminator="\n")
    out.writerow(["train_index", "label", "label_name", "influence", "predicted_change",
                  "actual_change", "actual_error_bound"])
    for j in range(data.n_train):
        label = int(data.train_y[j])
        a, b = lookup.get(j, ("", ""))
        out.writerow([j, label, data.class_name(label), repr(float(influence[j])),
                      repr(float(predicted[j])), "" if a == "" else repr(a),
                      "" if b == "" else repr(b)])
    if str(path) == "-":
        sys.stdout.write(buffer.getvalue())
        return "-"
    path = Path(path)
    art.atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))
    return str(path)


def _torch_model(workdir: Path, data):
    from infl_cli.stages.common import load_model

    return load_model(workdir, data)
