"""The five stages as functions over a work folder; the CLI is a thin layer on top.

Each stage reads its inputs' artifacts, refuses inputs made from another model or data,
computes, and writes its own artifact atomically. Later stages take the dataset, data
folder and weight decay recorded by ``train``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import artifacts as art
from . import ihvp as ihvp_mod
from . import loo as loo_mod
from . import model, plot, score, train
from .data import Dataset, load_dataset
from .errors import InflError, Interrupted
from .linalg import HessianFactor
from .progress import progress_bar

SOLVER_PRIORITY = ("exact", "cg", "lissa")  # most accurate first


def _resolve_data_dir(data_dir: Path | None) -> str | None:
    return str(Path(data_dir).expanduser().resolve()) if data_dir is not None else None


def train_settings(dataset: str, data_dir: Path | None, wd: float, tol: float) -> dict:
    return {"dataset": dataset, "data_dir": _resolve_data_dir(data_dir), "wd": wd, "tol": tol}


def is_current(path: Path, settings: dict, inputs: dict) -> bool:
    """True when ``path`` exists and was made with these settings from these inputs."""
    if not path.is_file():
        return False
    try:
        record = art.read_record(path)
    except InflError:
        return False
    return record.get("settings") == settings and record.get("inputs") == inputs


# ---------------------------------------------------------------------------------- train

def validate_train(wd: float, tol: float) -> None:
    if not wd > 0:
        raise InflError(f"--wd must be > 0 (the Hessian must be invertible), got {wd}")
    if not tol > 0:
        raise InflError(f"--train-tol must be > 0, got {tol}")


def run_train(workdir: Path, dataset: str, data_dir: Path | None, wd: float, tol: float,
              max_iter: int, download: bool = True, data: Dataset | None = None) -> dict:
    validate_train(wd, tol)
    data = data or load_dataset(dataset, data_dir, download)
    weight, info = train.fit(data, wd, tol, max_iter)
    pred = model.probabilities(weight, data.x_test).argmax(1)
    info["test_accuracy"] = float((pred == data.y_test).double().mean())
    info["train_accuracy"] = float(
        (model.probabilities(weight, data.x_train).argmax(1) == data.y_train).double().mean())
    record = {
        "stage": "train",
        "settings": train_settings(dataset, data_dir, wd, tol),
        "inputs": {"data": data.fingerprint},
        "n_train": data.n_train,
        "n_test": data.n_test,
        **info,
    }
    return art.save_artifact(workdir / art.MODEL, {"weight": weight}, record)


def load_model(workdir: Path, data: Dataset | None = None):
    """(weight, model record, dataset) with the data checked against the model's record."""
    tensors, record = art.load_artifact(workdir / art.MODEL, "train", hint="infl train")
    s = record["settings"]
    if data is None:
        data = load_dataset(s["dataset"], Path(s["data_dir"]) if s["data_dir"] else None)
    if data.fingerprint != record["inputs"]["data"]:
        raise InflError(f"the data now at {s['data_dir'] or s['dataset']} differ from those the "
                        f"model in {workdir / art.MODEL} was trained on; rerun `infl train`")
    return tensors["weight"], record, data


def check_test_indices(indices: list[int], data: Dataset) -> list[int]:
    if not indices:
        raise InflError("give at least one --test-index")
    bad = [i for i in indices if not 0 <= i < data.n_test]
    if bad:
        raise InflError(f"test index {bad[0]} out of range: {data.name} has {data.n_test} "
                        f"test points (0..{data.n_test - 1})")
    if len(set(indices)) != len(indices):
        raise InflError("--test-index values repeat")
    return list(indices)


# ----------------------------------------------------------------------------------- ihvp

def ihvp_settings(solver: str, test_indices: list[int], lissa: ihvp_mod.LissaSettings,
                  cg: ihvp_mod.CgSettings) -> dict:
    base = {"solver": solver, "test_indices": list(test_indices)}
    if solver == "lissa":
        base["lissa"] = asdict(lissa)
    elif solver == "cg":
        base["cg"] = asdict(cg)
    return base


def validate_ihvp(solver: str, lissa: ihvp_mod.LissaSettings, cg: ihvp_mod.CgSettings) -> None:
    if solver not in ihvp_mod.SOLVERS:
        raise InflError(f"unknown solver {solver!r}; choose one of: {', '.join(ihvp_mod.SOLVERS)}")
    _validate_lissa(lissa)
    _validate_cg(cg)


def run_ihvp(workdir: Path, solver: str, test_indices: list[int],
             lissa: ihvp_mod.LissaSettings, cg: ihvp_mod.CgSettings | None = None,
             loaded=None) -> dict:
    cg = cg or ihvp_mod.CgSettings()
    validate_ihvp(solver, lissa, cg)
    weight, mrec, data = loaded or load_model(workdir)
    idx = check_test_indices(test_indices, data)
    wd = mrec["settings"]["wd"]
    sel = torch.tensor(idx, dtype=torch.int64)
    rhs = model.test_point_grads(weight, data.x_test[sel], data.y_test[sel])
    est, report = ihvp_mod.solve(solver, weight, data.x_train, wd, rhs, lissa, cg)
    record = {
        "stage": "ihvp",
        "settings": ihvp_settings(solver, idx, lissa, cg),
        "inputs": {"model": mrec["fingerprint"]},
        "report": report,
    }
    return art.save_artifact(workdir / art.ihvp_name(solver),
                             {"ihvp": est, "test_indices": sel}, record)


def _validate_lissa(s: ihvp_mod.LissaSettings) -> None:
    if s.scale != "auto" and not (isinstance(s.scale, (int, float)) and s.scale > 0):
        raise InflError(f"--scale must be 'auto' or a number > 0, got {s.scale!r}")
    if not 0 <= s.damping < 1:
        raise InflError(f"--damping must be in [0, 1), got {s.damping}")
    for name in ("depth", "batch_size", "repeats"):
        if getattr(s, name) < 1:
            raise InflError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(s, name)}")
    if not 0 <= s.average_tail <= 1:
        raise InflError(f"--average-tail must be in [0, 1], got {s.average_tail}")
    if not s.stop_tol >= 0:
        raise InflError(f"--stop-tol must be ≥ 0 (0: no early stop), got {s.stop_tol}")
    if s.check_every < 1:
        raise InflError(f"--check-every must be ≥ 1, got {s.check_every}")


def _validate_cg(s: ihvp_mod.CgSettings) -> None:
    if not s.rtol > 0:
        raise InflError(f"--cg-rtol must be > 0, got {s.rtol}")
    if s.max_iter < 1:
        raise InflError(f"--cg-max-iter must be ≥ 1, got {s.max_iter}")
    if s.rank < 0:
        raise InflError(f"--cg-rank must be ≥ 0, got {s.rank}")


# ---------------------------------------------------------------------------------- score

def run_score(workdir: Path, solver: str, loaded=None) -> dict:
    weight, mrec, data = loaded or load_model(workdir)
    tensors, irec = art.load_artifact(workdir / art.ihvp_name(solver), "ihvp",
                                      hint=f"infl ihvp --solver {solver}")
    if irec["inputs"]["model"] != mrec["fingerprint"]:
        raise InflError(f"{art.ihvp_name(solver)} was computed for another model than "
                        f"{art.MODEL}; rerun `infl ihvp --solver {solver}`")
    start = time.perf_counter()
    with progress_bar("score", total=1) as update:
        influence, predicted = score.influence_scores(
            weight, data.x_train, data.y_train, mrec["settings"]["wd"], tensors["ihvp"])
        update()
    record = {
        "stage": "score",
        "settings": {"solver": solver},
        "inputs": {"model": mrec["fingerprint"], "ihvp": irec["fingerprint"]},
        "n_train": data.n_train,
        "seconds": time.perf_counter() - start,
    }
    return art.save_artifact(workdir / art.scores_name(solver),
                             {"influence": influence, "predicted_loss_diff": predicted,
                              "test_indices": tensors["test_indices"]}, record)


def available_scores(workdir: Path) -> list[str]:
    return [s for s in SOLVER_PRIORITY if (workdir / art.scores_name(s)).is_file()]


def load_scores(workdir: Path, solver: str, model_fp: str):
    tensors, rec = art.load_artifact(workdir / art.scores_name(solver), "score",
                                     hint=f"infl score --solver {solver}")
    if rec["inputs"]["model"] != model_fp:
        raise InflError(f"{art.scores_name(solver)} was computed for another model than "
                        f"{art.MODEL}; rerun `infl ihvp` and `infl score`")
    return tensors, rec


def _row(tensors, test_index: int, name: str) -> int:
    indices = tensors["test_indices"].tolist()
    if test_index not in indices:
        raise InflError(f"{name} has no scores for test index {test_index} (it has {indices})")
    return indices.index(test_index)


# ------------------------------------------------------------------------------------ loo

def loo_settings(solver, test_index, k, method, tol, chunk_size, max_steps) -> dict:
    return {"solver": solver, "test_index": test_index, "k": k, "method": method, "tol": tol,
            "chunk_size": chunk_size, "max_steps": max_steps}


def resolve_loo_choice(workdir: Path, solver: str | None, test_index: int | None):
    """The scores artifact that picks the points (most accurate available by default) and
    the test index (its first by default)."""
    if solver is None:
        have = available_scores(workdir)
        if not have:
            raise InflError(f"no scores in {workdir}; run `infl score` first")
        solver = have[0]
    if test_index is None:
        path = workdir / art.scores_name(solver)
        if not path.is_file():
            raise InflError(f"{path} not found; run `infl score --solver {solver}` first")
        with_indices = art.load_artifact(path, "score")[0]["test_indices"]
        test_index = int(with_indices[0])
    return solver, test_index


def validate_loo(k: int, method: str, tol: float, chunk_size: int, max_steps: int) -> None:
    if method not in loo_mod.METHODS:
        raise InflError(f"unknown method {method!r}; choose one of: {', '.join(loo_mod.METHODS)}")
    if k < 1 or chunk_size < 1 or max_steps < 1:
        raise InflError("--num, --chunk-size and --max-steps must be ≥ 1")
    if not tol > 0:
        raise InflError(f"--tol must be > 0, got {tol}")


def run_loo(workdir: Path, solver: str | None, test_index: int | None, k: int, method: str,
            tol: float, chunk_size: int, max_steps: int = 10, loaded=None) -> dict:
    validate_loo(k, method, tol, chunk_size, max_steps)
    weight, mrec, data = loaded or load_model(workdir)
    solver, test_index = resolve_loo_choice(workdir, solver, test_index)
    check_test_indices([test_index], data)
    stensors, srec = load_scores(workdir, solver, mrec["fingerprint"])
    row = _row(stensors, test_index, art.scores_name(solver))
    k = min(k, data.n_train)
    removed = score.top_k_by_magnitude(stensors["influence"][row], k)
    settings = loo_settings(solver, test_index, k, method, tol, chunk_size, max_steps)
    inputs = {"model": mrec["fingerprint"], "scores": srec["fingerprint"]}
    partial_path = workdir / art.LOO_PARTIAL
    done = None
    if partial_path.is_file():
        ptensors, prec = art.load_artifact(partial_path)
        if prec.get("settings") == settings and prec.get("inputs") == inputs and \
                torch.equal(ptensors["train_indices"], removed):
            done = dict(ptensors, n_done=prec["n_done"])

    saved = {"n": int(done["n_done"]) if done else 0}

    def checkpoint(out, n_done):
        art.save_artifact(partial_path, {"train_indices": removed, **out},
                          {"stage": "loo-partial", "settings": settings, "inputs": inputs,
                           "n_done": n_done})
        saved["n"] = n_done

    wd = mrec["settings"]["wd"]
    start = time.perf_counter()
    factor = None
    factor_seconds = 0.0
    if method == "newton":
        c = weight.shape[0]
        with progress_bar("loo: Hessian blocks", total=c * (c - 1) // 2) as update:
            # a float32 preconditioner is enough: every removal is certified in float64
            factor = HessianFactor(weight, data.x_train, wd, on_block=update,
                                   dtype=torch.float32, explicit_inverse=True)
        factor_seconds = time.perf_counter() - start
    try:
        with progress_bar(f"loo ({method}) points", total=k) as update:
            out, stats = loo_mod.retrain(method, weight, data.x_train, data.y_train, wd,
                                         data.x_test[test_index], data.y_test[test_index],
                                         removed, tol, chunk_size, max_steps, factor, done,
                                         checkpoint, update)
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(f"interrupted; {saved['n']} of {k} removals are saved in "
                          f"{partial_path}; rerun the same command to continue") from None
    record = {
        "stage": "loo",
        "settings": settings,
        "inputs": inputs,
        "test_index": test_index,
        "max_grad_norm": float(out["grad_norm"].max()),
        "certified": int((out["grad_norm"] <= tol).sum()),
        "fallbacks": int(out["fallback"].sum()),
        "data_passes": stats["passes"],
        "correction_passes": stats["correction_passes"],
        "factor_seconds": factor_seconds,
        "seconds": time.perf_counter() - start,
        "resumed_from": int(done["n_done"]) if done else 0,
    }
    result = art.save_artifact(workdir / art.LOO, {
        "train_indices": removed, "test_index": torch.tensor([test_index]), **out}, record)
    partial_path.unlink(missing_ok=True)
    if record["certified"] < k:
        raise InflError(f"{k - record['certified']} of {k} removals did not reach gradient norm "
                        f"≤ {tol:g} (max {record['max_grad_norm']:.2e}); see {art.LOO}")
    return result


# ----------------------------------------------------------------------------------- plot

def run_plot(workdir: Path, solvers: list[str] | None, out: Path | None) -> dict:
    ltensors, lrec = art.load_artifact(workdir / art.LOO, "loo", hint="infl loo")
    mrec = art.read_record(workdir / art.MODEL)
    if lrec["inputs"]["model"] != mrec["fingerprint"]:
        raise InflError(f"{art.LOO} was computed for another model than {art.MODEL}; "
                        "rerun `infl loo`")
    solvers = list(solvers) if solvers else [lrec["settings"]["solver"]]
    test_index = int(lrec["test_index"])
    actual = ltensors["actual_loss_diff"].numpy()
    order_idx = ltensors["train_indices"]
    panels, metrics = [], {"test_index": test_index, "k": int(actual.shape[0]),
                           "loo": {"settings": lrec["settings"],
                                   "max_grad_norm": lrec["max_grad_norm"],
                                   "seconds": lrec["seconds"]},
                           "model": {key: mrec.get(key) for key in
                                     ("settings", "grad_norm", "train_loss", "test_accuracy")},
                           "panels": {}}
    for solver in solvers:
        stensors, srec = load_scores(workdir, solver, lrec["inputs"]["model"])
        row = _row(stensors, test_index, art.scores_name(solver))
        predicted = stensors["predicted_loss_diff"][row, order_idx].numpy()
        m = plot.agreement(actual, predicted)
        irec = art.read_record(workdir / art.ihvp_name(solver)) \
            if (workdir / art.ihvp_name(solver)).is_file() else {}
        m["ihvp"] = irec.get("report", {})
        metrics["panels"][solver] = m
        panels.append({"solver": solver, "actual": actual, "predicted": predicted,
                       "pearson_r": m["pearson_r"], "test_index": test_index})
    png = Path(out) if out else workdir / "fig2_middle.png"
    if png.suffix.lower() != ".png":
        raise InflError(f"--out must end in .png (a .pdf copy is written beside it), got {png}")
    plot.draw(panels, png, png.with_suffix(".pdf"), art.atomic_write)
    metrics["figure"] = str(png)
    art.write_json(workdir / art.METRICS, metrics)
    return metrics
