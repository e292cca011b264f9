"""``infl plot``: Figure 2 (predicted against actual change in test loss) and
``metrics.json``; reads artifacts as NumPy arrays and draws, without torch."""

from __future__ import annotations

from pathlib import Path

from infl_cli.engines import spec_of
from infl_cli.errors import BadInput, InflError
from infl_cli.runtime import artifacts as art
from infl_cli.stages.common import available_scores, load_scores, model_policy, score_rows


def loo_artifact(workdir: Path, method: str | None = None) -> Path:
    """The LOO artifact to read: the one ``method`` writes for the folder's model kind
    (newton and lbfgs: loo.safetensors; the CNN's adam: loo-adam.safetensors), or by default
    loo.safetensors, else the kind's other LOO artifact."""
    policy = model_policy(art.checked_record(workdir / art.MODEL, "train", "infl train"))
    if method is not None:
        policy.check_method(method)
        return workdir / policy.loo_name(method)
    plain = workdir / art.LOO
    others = [workdir / policy.loo_name(m) for m in policy.methods]
    return plain if plain.is_file() else next((p for p in others if p.is_file()), plain)


def dataset_name(mrec: dict) -> str:
    """The dataset a model was trained on, as a figure names it (an NPZ by its file name)."""
    s = mrec["settings"]
    name = Path(s["dataset"]).name
    if s.get("classes"):
        name += f" ({' vs '.join(map(str, s['classes']))})"
    return name


def _records(workdir: Path, solvers: list[str] | None, loo_method: str | None):
    """(LOO path, LOO record, model record, the solvers drawn) from the records alone."""
    path = loo_artifact(workdir, loo_method)
    lrec = art.checked_record(path, "loo", "infl loo")
    mrec = art.read_record(workdir / art.MODEL)
    if lrec["inputs"]["model"] != mrec["fingerprint"]:
        raise InflError(f"{path.name} was computed for another model than {art.MODEL}; "
                        "rerun `infl loo`")
    return path, lrec, mrec, list(solvers) if solvers else [lrec["settings"]["solver"]]


def _plot_inputs(workdir: Path, solvers: list[str] | None, loo_method: str | None):
    """(LOO view, panels, LOO record, model record) of one work folder (see :mod:`~infl_cli.figures.fig2`)."""
    from infl_cli.figures import fig2 as plot

    path, lrec, mrec, solvers = _records(workdir, solvers, loo_method)
    ltensors, lrec = art.load_arrays(path, "loo", hint="infl loo")
    test_indices = [int(t) for t in ltensors["test_indices"].tolist()]
    train_idx = ltensors["train_indices"]
    panels = {}
    for solver in solvers:
        stensors, srec = load_scores(workdir, solver, lrec["inputs"]["model"], numpy=True)
        rows = score_rows(stensors, test_indices, art.scores_name(solver))
        ipath = workdir / art.ihvp_name(solver)
        irec = art.read_record(ipath) if ipath.is_file() else {}
        panels[solver] = {"predicted": stensors["predicted_loss_diff"][rows][:, train_idx],
                          "ihvp": irec.get("report", {}),
                          "title": model_policy(mrec).panel_title(
                              spec_of(mrec), solver, lrec["settings"]["method"]),
                          "dataset": dataset_name(mrec),
                          "device": f"{irec.get('device', 'cpu')}, {srec.get('device', 'cpu')}"}
    view = plot.LooView(test_indices=test_indices, train_indices=train_idx,
                        actual=ltensors["actual_loss_diff"],
                        bound=ltensors["actual_error_bound"],
                        selected=ltensors["selected"], select=lrec["settings"]["select"],
                        error_kind=lrec.get("error_kind", "certified"))
    return view, panels, lrec, mrec


def plot_settings(workdir: Path, solvers: list[str] | None, out: Path | None,
                  beside=(), loo_method: str | None = None):
    """(settings, inputs, figure paths) of the figures ``infl plot`` would draw, from the
    records alone: what ``metrics.json`` records, so that ``infl run`` redraws nothing whose
    inputs have not changed."""

    path, lrec, mrec, solvers = _records(workdir, solvers, loo_method)
    n_tests = len(lrec["test_indices"])
    png = Path(out) if out else workdir / model_policy(mrec).figure_name(
        lrec["settings"]["select"], n_tests)
    if png.suffix.lower() != ".png":
        raise BadInput(f"--out must end in .png (a .pdf copy is written beside it), got {png}")
    figures = [png, png.with_suffix(".pdf")]
    if n_tests > 1:
        figures.append(png.with_name(png.stem + "_summary.png"))
    scores = {}
    for solver in solvers:
        spath = workdir / art.scores_name(solver)
        scores[solver] = art.read_record(spath)["fingerprint"] if spath.is_file() else None
    others = {}
    for folder in beside:
        _, orec, _, osolvers = _records(Path(folder), None, None)
        others[str(Path(folder).resolve())] = orec["fingerprint"]
    settings = {"solvers": solvers, "figure": str(png), "loo": path.name,
                "beside": list(others)}
    inputs = {"loo": lrec["fingerprint"], "model": mrec["fingerprint"], "scores": scores,
              "beside": others}
    return settings, inputs, figures


def is_drawn(workdir: Path, settings: dict, inputs: dict, figures: list[Path]) -> bool:
    """Whether ``metrics.json`` and every figure were made with these settings and inputs."""
    import json

    try:
        made = json.loads((workdir / art.METRICS).read_text()).get("made_from", {})
    except (OSError, ValueError):
        return False
    return made == {"settings": settings, "inputs": inputs} and all(f.is_file() for f in figures)


def run_plot(workdir: Path, solvers: list[str] | None, out: Path | None,
             beside: list[Path] = (), loo_method: str | None = None) -> dict:
    """Figures of predicted against actual change and ``metrics.json`` (see :mod:`~infl_cli.figures.fig2`).
    ``beside``: other work folders whose panels are drawn to the right (one test point each:
    the paper's three panels from the logistic folder and the CNN's). For a CNN folder the
    metrics also hold the ablation: R and ρ of every scores artifact against every LOO
    artifact present, on the same removals."""
    from infl_cli.figures import fig2 as plot

    made_settings, made_inputs, _ = plot_settings(workdir, solvers, out, beside, loo_method)
    view, panels, lrec, mrec = _plot_inputs(workdir, solvers, loo_method)
    from infl_cli.runtime import progress

    progress.say_later(f"plot: reads {made_settings['loo']} and "
                       f"{', '.join(art.scores_name(s) for s in made_settings['solvers'])}")
    png = Path(made_settings["figure"])
    others = []
    for folder in beside:
        other_view, other_panels, _, _ = _plot_inputs(Path(folder), None, None)
        if len(other_view.test_indices) != 1 or len(view.test_indices) != 1:
            raise BadInput(f"--beside draws single-test-point panels side by side; {folder} or "
                           f"{workdir} holds several test points")
        others += [(other_view, p) for p in other_panels.values()]
    metrics = plot.make_figures(view, panels, png, art.atomic_write, beside=others)
    metrics["loo"] = {key: lrec.get(key) for key in (
        "settings", "error_kind", "max_grad_norm_bound", "pairs_selected", "pairs_within_target",
        "worst_bound_ratio", "max_error_bound", "baseline_error", "seconds")}
    metrics["model"] = {key: mrec.get(key) for key in (
        "settings", "model", "grad_norm", "grad_norm_certified", "train_loss", "test_accuracy",
        "lambda_min", "lambda_max", "negative_eigenvalues", "converged", "local_minimum",
        "null_direction_curvature")}
    metrics["devices"] = {"train": mrec.get("device", "cpu"), "loo": lrec.get("device", "cpu"),
                          **{f"ihvp, score ({solver})": panels[solver]["device"]
                             for solver in panels}}
    if model_policy(mrec).ablation:
        metrics["ablation"] = ablation(workdir, mrec)
    metrics["made_from"] = {"settings": made_settings, "inputs": made_inputs}
    art.write_json(workdir / art.METRICS, art.keep_study_sections(workdir / art.METRICS, metrics))
    return metrics


def ablation(workdir: Path, mrec: dict) -> list[dict]:
    """R and ρ (on each test point's selected removals, pooled) of every scores artifact in
    ``workdir`` against every LOO artifact there, for the removals both LOO artifacts share
    (the same top k when both were selected by the same scores)."""
    from infl_cli.figures import fig2 as plot

    loos = {}
    policy = model_policy(mrec)
    for method in policy.methods:
        path = workdir / policy.loo_name(method)
        if path.is_file():
            tensors, rec = art.load_arrays(path, "loo")
            if rec["inputs"]["model"] == mrec["fingerprint"]:
                loos[method] = (tensors, rec)
    common = None
    for tensors, _ in loos.values():
        idx = set(tensors["train_indices"].tolist())
        common = idx if common is None else common & idx
    rows = []
    for label in available_scores(workdir):
        stensors, _ = load_scores(workdir, label, mrec["fingerprint"], numpy=True)
        for method, (tensors, rec) in loos.items():
            tests = [int(t) for t in tensors["test_indices"].tolist()]
            score_at = score_rows(stensors, tests, art.scores_name(label))
            keep = [i for i, j in enumerate(tensors["train_indices"].tolist()) if j in common]
            train_idx = tensors["train_indices"][keep]
            predicted = stensors["predicted_loss_diff"][score_at][:, train_idx]
            selected = tensors["selected"][:, keep]
            actual = tensors["actual_loss_diff"][:, keep]
            m = plot.agreement(actual[selected], predicted[selected])
            rows.append({"end_point": spec_of(mrec).protocol, "prediction": label,
                         "actual": method, "removals": len(keep),
                         "pearson_r": m["pearson_r"], "spearman_rho": m["spearman_rho"]})
    return rows
