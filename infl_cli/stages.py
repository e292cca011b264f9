"""The stages as functions over a work folder; the CLI is a thin layer on top.

Each stage reads its inputs' artifacts, refuses inputs made from another model or data,
computes, and writes its own artifact atomically. Later stages take the dataset, data
folder and weight decay recorded by ``train``. Every stage works on a set of test points
(:class:`TestChoice`): ``ihvp`` defaults to test index 8, ``score`` to every test point its
inverse-HVPs hold, ``loo`` to every test point its scores hold.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import artifacts as art
from . import chunks
from . import ihvp as ihvp_mod
from . import loo as loo_mod
from . import model, score, selection, train
from . import device as device_mod
from . import memory
from .data import Dataset, is_npz, load_dataset, recorded_dataset
from .errors import BadInput, InflError, Interrupted
from .progress import progress_bar

SOLVER_PRIORITY = ("exact", "cg", "lissa")  # most accurate first
DEFAULT_TEST = 8  # the paper's test point (0 for a test set of 8 points or fewer)


@dataclass
class TestChoice:
    """Test points asked for on the command line: ``-t`` indices, or a ``--test-sample`` of
    that many drawn with ``seed``; neither means the stage's default."""

    indices: list | None = None
    sample: int | None = None
    seed: int = 0

    def resolve(self, n_test: int, default: list[int], available: list[int] | None = None,
                source: str = "") -> list[int]:
        return selection.resolve_test_indices(self.indices, self.sample, self.seed, n_test,
                                              default, available, source)


def _resolve_data_dir(data_dir: Path | None) -> str | None:
    return str(Path(data_dir).expanduser().resolve()) if data_dir is not None else None


def train_settings(dataset: str, data_dir: Path | None, wd: float, tol: float,
                   bias: bool = False) -> dict:
    """What a model is made with. An NPZ dataset is recorded by its absolute path (and needs
    no data folder)."""
    if is_npz(dataset):
        return {"dataset": _resolve_data_dir(Path(dataset)), "data_dir": None, "wd": wd,
                "tol": tol, "bias": bias}
    return {"dataset": dataset, "data_dir": _resolve_data_dir(data_dir), "wd": wd, "tol": tol,
            "bias": bias}


def _device(device) -> torch.device:
    """The device a stage computes on: as given, or the CPU (the CLI resolves ``auto``)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    device_mod.check_precision()
    return device


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
        raise BadInput(f"--wd must be > 0 (the Hessian must be invertible), got {wd}")
    if not tol > 0:
        raise BadInput(f"--train-tol must be > 0, got {tol}")


def run_train(workdir: Path, dataset: str, data_dir: Path | None, wd: float, tol: float,
              max_iter: int, download: bool = True, data: Dataset | None = None,
              bias: bool = False, device=None) -> dict:
    validate_train(wd, tol)
    device = _device(device)
    data = (data or load_dataset(dataset, data_dir, download, bias)).to(device)
    weight, info = train.fit(data, wd, tol, max_iter)
    pred = model.probabilities(weight, data.x_test).argmax(1)
    info["test_accuracy"] = float((pred == data.y_test).double().mean())
    info["train_accuracy"] = float(
        (model.probabilities(weight, data.x_train).argmax(1) == data.y_train).double().mean())
    record = {
        "stage": "train",
        "settings": train_settings(dataset, data_dir, wd, tol, bias),
        "inputs": {"data": data.fingerprint},
        "n_train": data.n_train,
        "n_test": data.n_test,
        "n_classes": data.n_classes,
        "n_features": data.n_features,
        "class_names": list(data.class_names) if data.class_names else None,
        "device": device_mod.describe(device),
        **info,
    }
    return art.save_artifact(workdir / art.MODEL, {"weight": weight}, record)


def load_model(workdir: Path, data: Dataset | None = None, device=None):
    """(weight, model record, dataset) with the data checked against the model's record, the
    weight and the data on ``device`` (default: the CPU), wherever the model was trained."""
    device = _device(device)
    tensors, record = art.load_artifact(workdir / art.MODEL, "train", hint="infl train")
    s = record["settings"]
    if data is None:
        data = recorded_dataset(s)
    if data.fingerprint != record["inputs"]["data"]:
        raise InflError(f"the data now at {s['data_dir'] or s['dataset']} differ from those the "
                        f"model in {workdir / art.MODEL} was trained on; rerun `infl train`")
    return tensors["weight"].to(device), record, data.to(device)



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
        raise BadInput(f"unknown solver {solver!r}; choose one of: {', '.join(ihvp_mod.SOLVERS)}")
    _validate_lissa(lissa)
    _validate_cg(cg)


def ihvp_tests(tests: TestChoice | None, data: Dataset) -> list[int]:
    return (tests or TestChoice()).resolve(data.n_test,
                                           [DEFAULT_TEST if data.n_test > DEFAULT_TEST else 0])


def run_ihvp(workdir: Path, solver: str, tests: TestChoice | None,
             lissa: ihvp_mod.LissaSettings, cg: ihvp_mod.CgSettings | None = None,
             loaded=None, device=None) -> dict:
    cg = cg or ihvp_mod.CgSettings()
    validate_ihvp(solver, lissa, cg)
    weight, mrec, data = loaded or load_model(workdir, device=device)
    idx = ihvp_tests(tests, data)
    wd = mrec["settings"]["wd"]
    sel = torch.tensor(idx, dtype=torch.int64, device=data.device)
    rhs = model.test_point_grads(weight, data.x_test[sel], data.y_test[sel])
    if solver == "exact":
        memory.require_hessian(weight.shape[0], data.design.width, 8, "--solver exact",
                               "use --solver cg or --solver lissa (Hessian-free)")
    elif solver == "cg" and cg.rank > 0:
        memory.require_gram(data.design.width, "--solver cg's preconditioner",
                            "use --cg-rank 0 (plain CG) or --solver lissa")
    est, report = ihvp_mod.solve(solver, weight, data.x_train, wd, rhs, lissa, cg,
                                 design=data.design)
    record = {
        "stage": "ihvp",
        "settings": ihvp_settings(solver, idx, lissa, cg),
        "inputs": {"model": mrec["fingerprint"]},
        "device": device_mod.describe(data.device),
        "report": report,
    }
    return art.save_artifact(workdir / art.ihvp_name(solver),
                             {"ihvp": est, "test_indices": sel}, record)


def _validate_lissa(s: ihvp_mod.LissaSettings) -> None:
    if s.scale != "auto" and not (isinstance(s.scale, (int, float)) and s.scale > 0):
        raise BadInput(f"--scale must be 'auto' or a number > 0, got {s.scale!r}")
    if not 0 <= s.damping < 1:
        raise BadInput(f"--damping must be in [0, 1), got {s.damping}")
    for name in ("depth", "batch_size", "repeats"):
        if getattr(s, name) < 1:
            raise BadInput(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(s, name)}")
    if not 0 <= s.average_tail <= 1:
        raise BadInput(f"--average-tail must be in [0, 1], got {s.average_tail}")
    if not s.stop_tol >= 0:
        raise BadInput(f"--stop-tol must be ≥ 0 (0: no early stop), got {s.stop_tol}")
    if s.check_every < 1:
        raise BadInput(f"--check-every must be ≥ 1, got {s.check_every}")


def _validate_cg(s: ihvp_mod.CgSettings) -> None:
    if not s.rtol > 0:
        raise BadInput(f"--cg-rtol must be > 0, got {s.rtol}")
    if s.max_iter < 1:
        raise BadInput(f"--cg-max-iter must be ≥ 1, got {s.max_iter}")
    if s.rank < 0:
        raise BadInput(f"--cg-rank must be ≥ 0, got {s.rank}")


# ---------------------------------------------------------------------------------- score

def score_tests(workdir: Path, solver: str, tests: TestChoice | None, data: Dataset):
    """(ihvp tensors, ihvp record, chosen test indices): by default every test point the
    inverse-HVPs hold."""
    tensors, irec = art.load_artifact(workdir / art.ihvp_name(solver), "ihvp",
                                      hint=f"infl ihvp --solver {solver}")
    have = tensors["test_indices"].tolist()
    chosen = (tests or TestChoice()).resolve(data.n_test, have, have, art.ihvp_name(solver))
    return tensors, irec, chosen


def run_score(workdir: Path, solver: str, tests: TestChoice | None = None,
              loaded=None, device=None) -> dict:
    weight, mrec, data = loaded or load_model(workdir, device=device)
    tensors, irec, chosen = score_tests(workdir, solver, tests, data)
    if irec["inputs"]["model"] != mrec["fingerprint"]:
        raise InflError(f"{art.ihvp_name(solver)} was computed for another model than "
                        f"{art.MODEL}; rerun `infl ihvp --solver {solver}`")
    have = tensors["test_indices"].tolist()
    rows = torch.tensor([have.index(t) for t in chosen])
    start = time.perf_counter()
    with progress_bar("score", total=1) as update:
        influence, predicted = score.influence_scores(
            weight, data.x_train, data.y_train, mrec["settings"]["wd"],
            tensors["ihvp"][rows].to(data.device))
        update()
    record = {
        "stage": "score",
        "settings": score_settings(solver, chosen),
        "inputs": {"model": mrec["fingerprint"], "ihvp": irec["fingerprint"]},
        "device": device_mod.describe(data.device),
        "n_train": data.n_train,
        "seconds": time.perf_counter() - start,
    }
    return art.save_artifact(workdir / art.scores_name(solver),
                             {"influence": influence, "predicted_loss_diff": predicted,
                              "test_indices": torch.tensor(chosen, dtype=torch.int64)},
                             record)


def score_settings(solver: str, test_indices: list[int]) -> dict:
    return {"solver": solver, "test_indices": list(test_indices)}


def available_scores(workdir: Path) -> list[str]:
    return [s for s in SOLVER_PRIORITY if (workdir / art.scores_name(s)).is_file()]


def load_scores(workdir: Path, solver: str, model_fp: str):
    tensors, rec = art.load_artifact(workdir / art.scores_name(solver), "score",
                                     hint=f"infl score --solver {solver}")
    if rec["inputs"]["model"] != model_fp:
        raise InflError(f"{art.scores_name(solver)} was computed for another model than "
                        f"{art.MODEL}; rerun `infl ihvp` and `infl score`")
    return tensors, rec


def score_rows(tensors, test_indices: list[int], name: str) -> list[int]:
    """Rows of a scores artifact for these test indices (each must be there)."""
    have = tensors["test_indices"].tolist()
    missing = [t for t in test_indices if t not in have]
    if missing:
        raise InflError(f"{name} has no scores for test index {missing[0]} (it has "
                        f"{', '.join(map(str, have[:12]))}{', …' if len(have) > 12 else ''})")
    return [have.index(t) for t in test_indices]


def most_accurate_scores(workdir: Path, solver: str | None) -> str:
    if solver is not None:
        return solver
    have = available_scores(workdir)
    if not have:
        raise InflError(f"no scores in {workdir}; run `infl score` first")
    return have[0]


# ------------------------------------------------------------------------------------ loo

def loo_settings(solver: str, test_indices: list[int], select: str, k: int, seed: int,
                 settings: loo_mod.LooSettings) -> dict:
    """What a LOO artifact is made with (the seed only matters to ``--select random``)."""
    return {"solver": solver, "test_indices": list(test_indices), "select": select,
            "k": None if select == "all" else k, "seed": seed if select == "random" else None,
            "method": settings.method, "tol": settings.tol, "rel_error": settings.rel_error,
            "chunk_size": settings.chunk_size, "max_steps": settings.max_steps}


def validate_loo(settings: loo_mod.LooSettings, select: str = "top", k: int = 1) -> None:
    if settings.method not in loo_mod.METHODS:
        raise BadInput(f"unknown method {settings.method!r}; choose one of: "
                        f"{', '.join(loo_mod.METHODS)}")
    if select not in selection.SELECTIONS:
        raise BadInput(f"unknown selection {select!r}; choose one of: "
                        f"{', '.join(selection.SELECTIONS)}")
    if select != "all" and k is not None and k < 1:
        raise BadInput(f"-k must be ≥ 1, got {k}")
    if (settings.chunk_size is not None and settings.chunk_size < 1) or settings.max_steps < 1:
        raise BadInput("--chunk-size and --max-steps must be ≥ 1")
    if not settings.tol > 0:
        raise BadInput(f"--tol must be > 0, got {settings.tol}")
    if not 0 <= settings.rel_error < 1:
        raise BadInput(f"--rel-error must be in [0, 1) (0: stop at --tol), "
                        f"got {settings.rel_error}")


def validate_cluster(cluster: str | None, timeout: float | None, device=None) -> None:
    """A bad ``--cluster`` fails before anything runs (Dask is imported only with one). The
    workers solve on their CPUs: ``--cluster`` with a CUDA ``device`` is refused."""
    if cluster is None:
        return
    from . import cluster as cluster_mod

    cluster_mod.parse(cluster)
    if device is not None and torch.device(device).type != "cpu":
        raise BadInput(f"--cluster solves the LOO chunks on the Dask workers' CPUs; it does "
                       f"not combine with --device {device} (one GPU runs all 55,000 MNIST "
                       "removals in seconds: leave out --cluster, or use --device cpu)")
    if timeout is not None and not timeout > 0:
        raise BadInput(f"--cluster-timeout must be > 0, got {timeout}")
    cluster_mod.check_available()


def plan_loo(workdir: Path, solver: str | None, tests: TestChoice | None, select: str, k: int,
             seed: int, settings: loo_mod.LooSettings, mrec: dict, data: Dataset):
    """Everything that decides a LOO run, before any retraining: (settings record, inputs,
    test indices, train indices [K], selected [T, K])."""
    solver = most_accurate_scores(workdir, solver)
    stensors, srec = load_scores(workdir, solver, mrec["fingerprint"])
    have = stensors["test_indices"].tolist()
    chosen = (tests or TestChoice()).resolve(data.n_test, have, have, art.scores_name(solver))
    rows = score_rows(stensors, chosen, art.scores_name(solver))
    k = selection.resolve_k(k, data.n_train)
    selection.check_selection(select, k, data.n_train)
    train_idx, selected = selection.select_removals(select, k, stensors["influence"][rows], seed)
    record = loo_settings(solver, chosen, select, k, seed, settings)
    inputs = {"model": mrec["fingerprint"], "scores": srec["fingerprint"]}
    return record, inputs, chosen, train_idx, selected


def resolve_chunk_size(settings: loo_mod.LooSettings, device, classes: int,
                       features: int) -> loo_mod.LooSettings:
    """The settings with ``--chunk-size auto`` (None) made a number for ``device``."""
    if settings.chunk_size is not None:
        return settings
    return replace(settings, chunk_size=loo_mod.auto_chunk_size(
        torch.device(device), classes, features, settings.max_steps))


def build_problem(weight, mrec, data: Dataset, test_indices: list[int],
                  settings: loo_mod.LooSettings) -> loo_mod.LooProblem:
    """The LOO problem of a model (its factored Hessian, with a progress bar), on the data's
    device."""
    sel = torch.tensor(test_indices, dtype=torch.int64, device=data.device)
    c = weight.shape[0]
    if settings.method == "newton":
        memory.require_hessian(c, data.design.width, 4, "--method newton",
                               "use --method lbfgs (Hessian-free, slower per removal)")
    with progress_bar("loo: Hessian blocks", total=c * (c - 1) // 2) as update:
        return loo_mod.LooProblem(weight, data.design, data.y_train, mrec["settings"]["wd"],
                                  data.x_test[sel], data.y_test[sel],
                                  build_factor=settings.method == "newton", on_block=update)


def run_loo(workdir: Path, solver: str | None, tests: TestChoice | None, select: str, k: int,
            seed: int, settings: loo_mod.LooSettings, loaded=None, cluster: str | None = None,
            cluster_timeout: float | None = None, device=None) -> dict:
    """Retrain without every selected training point, certified; writes loo.safetensors.

    The open chunks are solved in this process (on ``device``), or with ``cluster``
    (``local:N`` or ``tcp://HOST:PORT``) on Dask workers (:mod:`~infl_cli.cluster`)."""
    validate_loo(settings, select, k)
    weight, mrec, data = loaded or load_model(workdir, device=device)
    validate_cluster(cluster, cluster_timeout, data.device)
    settings = resolve_chunk_size(settings, data.device, weight.shape[0], data.n_features)
    runner = None
    device_mod.reset_peak(data.device)
    record_settings, inputs, chosen, train_idx, selected = plan_loo(
        workdir, solver, tests, select, k, seed, settings, mrec, data)
    store = chunks.PartialResults(workdir / art.LOO_PARTIAL, train_idx, chosen, selected,
                                  settings.chunk_size, record_settings, inputs)
    total = len(train_idx)
    start = time.perf_counter()
    built = {}
    if cluster is not None:
        from . import cluster as cluster_mod

        s = mrec["settings"]
        runner = cluster_mod.ClusterRunner(
            cluster, lambda: cluster_mod.ProblemRecipe(
                s, mrec["inputs"]["data"], weight, chosen,
                f"{mrec['fingerprint']}:{','.join(map(str, chosen))}"),
            cluster_timeout or cluster_mod.CONNECT_TIMEOUT)

    def problem():
        """Built on first use: a rerun with every chunk saved needs no Hessian."""
        if "problem" not in built:
            t0 = time.perf_counter()
            built["problem"] = build_problem(weight, mrec, data, chosen, settings)
            built["seconds"] = time.perf_counter() - t0
        return built["problem"]

    run_facts = {"workers": 1, "seconds": 0.0}
    try:
        with progress_bar(f"loo ({settings.method}) removals", total=total) as update:
            update(advance=store.n_done)
            if store.pending():
                if runner is None:
                    run_facts = chunks.run_in_process(problem(), store, settings, update)
                else:
                    run_facts = runner(problem, store, settings, update)
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(f"interrupted; {store.n_done} of {total} removals are saved in "
                          f"{store.path}; rerun the same command to continue") from None
    record = _loo_record(store, record_settings, inputs, settings, built.get("problem"), mrec)
    record.update(factor_seconds=built.get("seconds", 0.0), workers=run_facts["workers"],
                  seconds=time.perf_counter() - start, resumed_from=store.resumed_from,
                  removals_per_second=(run_facts.get("solved", 0) / run_facts["seconds"]
                                       if run_facts.get("seconds") else None),
                  cluster=cluster, scatter_seconds=run_facts.get("scatter_seconds"),
                  device=device_mod.describe(data.device),
                  peak_device_gib=device_mod.peak_gib(data.device))
    result = art.save_artifact(workdir / art.LOO, store.final_tensors(), record)
    store.discard()
    if record["certified"] < total:
        raise InflError(f"{total - record['certified']} of {total} removals did not reach "
                        f"gradient norm ≤ {settings.tol:g} (max bound "
                        f"{record['max_grad_norm_bound']:.2e}); see {art.LOO}")
    return result


def _loo_record(store: chunks.PartialResults, record_settings: dict, inputs: dict,
                settings: loo_mod.LooSettings, problem, mrec: dict) -> dict:
    a = store.arrays
    grad_bound = a["grad_norm"] + a["grad_rounding"]  # proven upper bounds on ‖∇R₋z‖
    sel = store.selected
    actual, bound = a["actual_loss_diff"], a["actual_error_bound"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(sel, bound / np.abs(actual), np.nan)
    within = np.where(sel, bound <= settings.rel_error * np.abs(actual), False)
    below = np.argwhere(sel & ~within)
    worst = sorted(below.tolist(), key=lambda tk: -ratio[tk[0], tk[1]])[:10]
    return {
        "stage": "loo",
        "settings": record_settings,
        "inputs": inputs,
        "test_indices": store.test_indices.tolist(),
        "n_removals": int(len(store.train_indices)),
        "certified": int((grad_bound <= settings.tol).sum()),
        "max_grad_norm": float(np.nanmax(a["grad_norm"])),
        "max_grad_norm_bound": float(np.nanmax(grad_bound)),
        "pairs_selected": int(sel.sum()),
        "pairs_within_target": int(within.sum()),
        "max_error_bound": float(np.nanmax(np.where(sel, bound, np.nan))),
        "worst_bound_ratio": float(np.nanmax(ratio)),
        "below_target": [{"test_index": int(store.test_indices[t]),
                          "train_index": int(store.train_indices[j]),
                          "actual_change": float(actual[t, j]),
                          "error_bound": float(bound[t, j])} for t, j in worst],
        "baseline_error": problem.baseline_error.tolist() if problem is not None else None,
        "train_grad_norm_certified": mrec.get("grad_norm_certified"),
        "fallbacks": int(a["fallback"].sum()),
        "float64_passes": int(store.stats["float64_passes"]),
        "float32_passes": int(store.stats["float32_passes"]),
        "chunk_seconds": float(store.stats["chunk_seconds"]),
    }


# ----------------------------------------------------------------------------------- plot

def run_plot(workdir: Path, solvers: list[str] | None, out: Path | None) -> dict:
    """Figures of predicted against actual change and ``metrics.json`` (see :mod:`plot`)."""
    from . import plot

    ltensors, lrec = art.load_artifact(workdir / art.LOO, "loo", hint="infl loo")
    mrec = art.read_record(workdir / art.MODEL)
    if lrec["inputs"]["model"] != mrec["fingerprint"]:
        raise InflError(f"{art.LOO} was computed for another model than {art.MODEL}; "
                        "rerun `infl loo`")
    solvers = list(solvers) if solvers else [lrec["settings"]["solver"]]
    test_indices = ltensors["test_indices"].tolist()
    select = lrec["settings"]["select"]
    png = Path(out) if out else workdir / plot.default_figure_name(select, len(test_indices))
    if png.suffix.lower() != ".png":
        raise BadInput(f"--out must end in .png (a .pdf copy is written beside it), got {png}")
    train_idx = ltensors["train_indices"]
    panels = {}
    for solver in solvers:
        stensors, srec = load_scores(workdir, solver, lrec["inputs"]["model"])
        rows = score_rows(stensors, test_indices, art.scores_name(solver))
        irec = art.read_record(workdir / art.ihvp_name(solver)) \
            if (workdir / art.ihvp_name(solver)).is_file() else {}
        panels[solver] = {"predicted": stensors["predicted_loss_diff"][rows][:, train_idx].numpy(),
                          "ihvp": irec.get("report", {}),
                          "device": f"{irec.get('device', 'cpu')}, {srec.get('device', 'cpu')}"}
    loo_view = plot.LooView(test_indices=test_indices, train_indices=train_idx.numpy(),
                            actual=ltensors["actual_loss_diff"].numpy(),
                            bound=ltensors["actual_error_bound"].numpy(),
                            selected=ltensors["selected"].numpy(), select=select)
    metrics = plot.make_figures(loo_view, panels, png, art.atomic_write)
    metrics["loo"] = {key: lrec.get(key) for key in (
        "settings", "max_grad_norm_bound", "pairs_selected", "pairs_within_target",
        "worst_bound_ratio", "max_error_bound", "baseline_error", "seconds")}
    metrics["model"] = {key: mrec.get(key) for key in (
        "settings", "grad_norm", "grad_norm_certified", "train_loss", "test_accuracy")}
    metrics["devices"] = {"train": mrec.get("device", "cpu"), "loo": lrec.get("device", "cpu"),
                          **{f"ihvp, score ({solver})": panels[solver]["device"]
                             for solver in solvers}}
    art.write_json(workdir / art.METRICS, metrics)
    return metrics


# ----------------------------------------------------------------------------------- show

def run_show(workdir: Path, test_index: int | None, count: int, solver: str | None,
             out: Path | None) -> dict:
    """The explanation of one test prediction as images (see :mod:`explain`); by default of
    the first test point scored. Writes only the image: it takes no lock."""
    from . import explain

    if count < 1:
        raise BadInput(f"-n must be ≥ 1, got {count}")
    weight, mrec, data = load_model(workdir)
    solver = most_accurate_scores(workdir, solver)
    stensors, _ = load_scores(workdir, solver, mrec["fingerprint"])
    if test_index is None:
        test_index = int(stensors["test_indices"][0])
    if not 0 <= test_index < data.n_test:
        raise BadInput(f"test index {test_index} out of range: the test set has "
                        f"{data.n_test} points (0..{data.n_test - 1})")
    row = score_rows(stensors, [test_index], art.scores_name(solver))[0]
    predicted = stensors["predicted_loss_diff"][row].numpy()
    actual = None
    if (workdir / art.LOO).is_file():
        ltensors, lrec = art.load_artifact(workdir / art.LOO, "loo")
        lt = ltensors["test_indices"].tolist()
        if lrec["inputs"]["model"] == mrec["fingerprint"] and test_index in lt:
            t = lt.index(test_index)
            actual = (ltensors["train_indices"].numpy(), ltensors["actual_loss_diff"][t].numpy(),
                      ltensors["actual_error_bound"][t].numpy())
    png = Path(out) if out else workdir / f"explain-{test_index}.png"
    if png.suffix.lower() != ".png":
        raise BadInput(f"--out must end in .png, got {png}")
    if data.image_shape is None:
        if out is not None:
            raise BadInput(f"--out: the {data.n_features - data.bias} features of "
                            f"{mrec['settings']['dataset']} are not an image (not a perfect "
                            "square); `infl show` prints the table alone")
        png = None
    return explain.explain(weight, data, test_index, predicted, actual, count, solver, png,
                           art.atomic_write)
