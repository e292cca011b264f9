"""The stages as functions over a work folder; the CLI is a thin layer on top.

Each stage reads its inputs' artifacts, refuses inputs made from another model or data,
computes, and writes its own artifact atomically. Later stages take the dataset, data
folder and weight decay recorded by ``train``. Every stage works on a set of test points
(:class:`TestChoice`): ``ihvp`` defaults to test index 8, ``score`` to every test point its
inverse-HVPs hold, ``loo`` to every test point its scores hold.
"""

from __future__ import annotations

import math

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import artifacts as art
from . import chunks
from . import device as device_mod
from . import ihvp as ihvp_mod
from . import loo as loo_mod
from . import selection
from .data import Dataset, is_npz, load_dataset, recorded_dataset
from .engines import ModelSpec, engine_for, spec_of
from .errors import BadInput, InflError, Interrupted
from .progress import progress_bar

SOLVER_PRIORITY = ("exact", "cg", "lissa")  # most accurate first


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
                   bias: bool = False, spec: ModelSpec | None = None) -> dict:
    """What a model is made with. An NPZ dataset is recorded by its absolute path (and needs
    no data folder); ``wd`` None is the model kind's default."""
    spec = spec or ModelSpec()
    wd = engine_for(spec.kind).default_wd if wd is None else wd
    where = {"dataset": _resolve_data_dir(Path(dataset)), "data_dir": None} if is_npz(dataset) \
        else {"dataset": dataset, "data_dir": _resolve_data_dir(data_dir)}
    return {**where, "wd": wd, "tol": tol, "bias": bias, "model": spec.record()}


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

def validate_train(wd: float | None, tol: float, spec: ModelSpec | None = None) -> None:
    if wd is not None and not wd > 0:
        raise BadInput(f"--wd must be > 0 (the Hessian must be invertible), got {wd}")
    if not tol > 0:
        raise BadInput(f"--train-tol must be > 0, got {tol}")
    if spec is not None:
        from .engines import validate_spec

        validate_spec(spec)


def run_train(workdir: Path, dataset: str, data_dir: Path | None, wd: float | None, tol: float,
              max_iter: int, download: bool = True, data: Dataset | None = None,
              bias: bool = False, device=None, spec: ModelSpec | None = None) -> dict:
    spec = spec or ModelSpec()
    validate_train(wd, tol, spec)
    engine = engine_for(spec.kind)
    settings = train_settings(dataset, data_dir, wd, tol, bias, spec)
    device = _device(device)
    data = engine.training_data(data or load_dataset(dataset, data_dir, download, bias),
                                spec).to(device)
    tensors, info = engine.fit(data, settings["wd"], tol, max_iter, spec)
    for split, x, y in (("test", data.x_test, data.y_test), ("train", data.x_train, data.y_train)):
        pred = engine.probabilities(tensors, x).argmax(1)
        info[f"{split}_accuracy"] = float((pred == y).double().mean())
    record = {
        "stage": "train",
        "settings": settings,
        "model": engine.describe(spec),
        "inputs": {"data": data.fingerprint},
        "n_train": data.n_train,
        "n_test": data.n_test,
        "n_classes": data.n_classes,
        "n_features": data.n_features,
        "class_names": list(data.class_names) if data.class_names else None,
        "device": device_mod.describe(device),
        **info,
    }
    return art.save_artifact(workdir / art.MODEL, tensors, record)


def load_model(workdir: Path, data: Dataset | None = None, device=None):
    """(model tensors, model record, training data) with the data checked against the model's
    record, the tensors and the data on ``device`` (default: the CPU), wherever the model was
    trained. ``data``: the dataset as loaded (the model kind takes its training set from it)."""
    device = _device(device)
    tensors, record = art.load_artifact(workdir / art.MODEL, "train", hint="infl train")
    s = record["settings"]
    spec = spec_of(record)
    engine = engine_for(spec.kind)
    data = engine.training_data(data if data is not None else recorded_dataset(s), spec)
    if data.fingerprint != record["inputs"]["data"]:
        raise InflError(f"the data now at {s['data_dir'] or s['dataset']} differ from those the "
                        f"model in {workdir / art.MODEL} was trained on; rerun `infl train`")
    return {key: t.to(device) for key, t in tensors.items()}, record, data.to(device)


def model_engine(mrec: dict):
    """The engine of a model record (:mod:`~infl_cli.engines`)."""
    return engine_for(spec_of(mrec).kind)


def solver_label(solver: str, damping: float) -> str:
    """How an inverse-HVP is named: the solver, with the damping λ of (H + λI) for cg and
    exact when it is not 0 (``exact-damping0.01``); LiSSA's damping is one of its settings."""
    if solver != "lissa" and damping:
        return f"{solver}-damping{damping:g}"
    return solver



# ----------------------------------------------------------------------------------- ihvp

def ihvp_settings(solver: str, test_indices: list[int], lissa: ihvp_mod.LissaSettings,
                  cg: ihvp_mod.CgSettings, damping: float = 0.0) -> dict:
    base = {"solver": solver, "test_indices": list(test_indices)}
    if solver == "lissa":
        base["lissa"] = asdict(lissa)
    elif solver == "cg":
        base["cg"] = asdict(cg)
    if solver != "lissa" and damping:
        base["damping"] = damping
    return base


def validate_ihvp(solver: str | None, lissa: ihvp_mod.LissaSettings, cg: ihvp_mod.CgSettings,
                  damping: float | None = None) -> None:
    """One-line refusals of IHVP settings (``solver`` None: the model's default, checked
    once known)."""
    if solver is not None and solver not in ihvp_mod.SOLVERS:
        raise BadInput(f"unknown solver {solver!r}; choose one of: {', '.join(ihvp_mod.SOLVERS)}")
    if damping is not None:
        if solver == "lissa" and not 0 <= damping < 1:
            raise BadInput(f"--damping must be in [0, 1) for LiSSA's recursion, got {damping}")
        if not damping >= 0:
            raise BadInput(f"--damping must be ≥ 0, got {damping}")
    _validate_lissa(lissa)
    _validate_cg(cg)


def spec_damping(spec: ModelSpec, solver: str, damping: float | None) -> float:
    """λ of (H + λI) for cg and exact: as given, else the model's default (the CNN's paper
    protocol: the authors' 0.01; otherwise 0). LiSSA's damping is one of its settings: 0."""
    if solver == "lissa":
        return 0.0
    if damping is not None:
        return float(damping)
    return engine_for(spec.kind).default_damping(spec)


def ihvp_tests(tests: TestChoice | None, data: Dataset, engine) -> list[int]:
    """The test points of an inverse-HVP: as asked, or the model kind's default."""
    return (tests or TestChoice()).resolve(data.n_test, [engine.default_test(data)])


def run_ihvp(workdir: Path, solver: str, tests: TestChoice | None,
             lissa: ihvp_mod.LissaSettings, cg: ihvp_mod.CgSettings | None = None,
             loaded=None, device=None, damping: float | None = None) -> dict:
    cg = cg or ihvp_mod.CgSettings()
    tensors, mrec, data = loaded or load_model(workdir, device=device)
    engine = model_engine(mrec)
    spec = spec_of(mrec)
    solver = solver or engine.default_solver(spec)
    if solver == "lissa" and damping is not None:
        lissa = replace(lissa, damping=damping)
    validate_ihvp(solver, lissa, cg, damping)
    lam = spec_damping(spec, solver, damping)
    engine.check_solver(solver, lam)
    idx = ihvp_tests(tests, data, engine)
    sel = torch.tensor(idx, dtype=torch.int64, device=data.device)
    rhs = engine.test_gradients(tensors, data.x_test[sel], data.y_test[sel])
    est, report = engine.solve(tensors, mrec, data, solver, rhs, lissa, cg, lam)
    label = solver_label(solver, lam)
    record = {
        "stage": "ihvp",
        "settings": ihvp_settings(solver, idx, lissa, cg, lam),
        "label": label,
        "inputs": {"model": mrec["fingerprint"]},
        "device": device_mod.describe(data.device),
        "report": report,
    }
    return art.save_artifact(workdir / art.ihvp_name(label),
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
    """Scores from the inverse-HVPs named ``solver`` (a label: ``exact``, ``cg``,
    ``lissa`` or e.g. ``exact-damping0.01``)."""
    tensors_m, mrec, data = loaded or load_model(workdir, device=device)
    if solver is None:
        spec = spec_of(mrec)
        default = model_engine(mrec).default_solver(spec)
        solver = solver_label(default, spec_damping(spec, default, None))
    tensors, irec, chosen = score_tests(workdir, solver, tests, data)
    if irec["inputs"]["model"] != mrec["fingerprint"]:
        raise InflError(f"{art.ihvp_name(solver)} was computed for another model than "
                        f"{art.MODEL}; rerun `infl ihvp --solver {solver}`")
    have = tensors["test_indices"].tolist()
    rows = torch.tensor([have.index(t) for t in chosen])
    start = time.perf_counter()
    with progress_bar("score", total=1) as update:
        influence, predicted = model_engine(mrec).scores(
            tensors_m, mrec, data, tensors["ihvp"][rows].to(data.device))
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
    """The score labels present, most accurate first: exact, cg, lissa, then damped ones."""
    present = [s for s in SOLVER_PRIORITY if (workdir / art.scores_name(s)).is_file()]
    damped = sorted(p.name[len("scores-"):-len(".safetensors")]
                    for p in workdir.glob("scores-*-damping*.safetensors"))
    return present + damped


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
            "chunk_size": settings.chunk_size, "max_steps": settings.max_steps,
            **({"retrain_steps": settings.retrain_steps} if settings.method == "adam" else {})}


LOO_METHODS = ("newton", "lbfgs", "adam")  # lbfgs: the logistic model; adam: the CNN


def validate_loo(settings: loo_mod.LooSettings, select: str = "top", k: int = 1) -> None:
    """One-line refusals of LOO settings (``method`` None: the model's default; which methods
    a model has is its engine's check)."""
    if settings.method is not None and settings.method not in LOO_METHODS:
        raise BadInput(f"unknown method {settings.method!r}; choose one of: "
                       f"{', '.join(LOO_METHODS)}")
    if select not in selection.SELECTIONS:
        raise BadInput(f"unknown selection {select!r}; choose one of: "
                        f"{', '.join(selection.SELECTIONS)}")
    if select != "all" and k is not None and k < 1:
        raise BadInput(f"-k must be ≥ 1, got {k}")
    if (settings.chunk_size is not None and settings.chunk_size < 1) or settings.max_steps < 1:
        raise BadInput("--chunk-size and --max-steps must be ≥ 1")
    if settings.tol is not None and not settings.tol > 0:
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


def resolve_chunk_size(settings: loo_mod.LooSettings, device, engine, spec: ModelSpec,
                       data: Dataset) -> loo_mod.LooSettings:
    """The settings with ``--chunk-size auto`` (None) made a number for ``device`` and the
    model (its engine's ``auto_chunk_size``)."""
    if settings.chunk_size is not None:
        return settings
    return replace(settings, chunk_size=engine.auto_chunk_size(torch.device(device), spec, data,
                                                               settings))


def build_problem(tensors, mrec, data: Dataset, test_indices: list[int],
                  settings: loo_mod.LooSettings):
    """The LOO problem of a model (its engine's; the logistic model's factored Hessian, with a
    progress bar), on the data's device."""
    sel = torch.tensor(test_indices, dtype=torch.int64, device=data.device)
    engine = model_engine(mrec)
    with progress_bar("loo: set-up", total=engine.hessian_blocks(tensors)) as update:
        return engine.loo_problem(tensors, mrec, data, data.x_test[sel], data.y_test[sel],
                                  settings, on_block=update)


def run_loo(workdir: Path, solver: str | None, tests: TestChoice | None, select: str, k: int,
            seed: int, settings: loo_mod.LooSettings, loaded=None, cluster: str | None = None,
            cluster_timeout: float | None = None, device=None) -> dict:
    """Retrain without every selected training point; writes loo.safetensors.

    The open chunks are solved in this process (on ``device``), or with ``cluster``
    (``local:N`` or ``tcp://HOST:PORT``) on Dask workers (:mod:`~infl_cli.cluster`)."""
    validate_loo(settings, select, k)
    tensors, mrec, data = loaded or load_model(workdir, device=device)
    engine = model_engine(mrec)
    spec = spec_of(mrec)
    if settings.method is None:
        settings = replace(settings, method=engine.default_method(spec))
    if settings.tol is None:
        settings = replace(settings, tol=engine.default_tol)
    engine.check_method(settings.method)
    if cluster is not None and engine.kind != "logreg":
        raise BadInput("--cluster solves the logistic model's LOO chunks; the CNN's run in "
                       "this process (on a GPU: --device cuda)")
    validate_cluster(cluster, cluster_timeout, data.device)
    settings = resolve_chunk_size(settings, data.device, engine, spec, data)
    loo_path = workdir / art.loo_name(settings.method, engine.kind)
    runner = None
    device_mod.reset_peak(data.device)
    record_settings, inputs, chosen, train_idx, selected = plan_loo(
        workdir, solver, tests, select, k, seed, settings, mrec, data)
    store = chunks.PartialResults(workdir / art.LOO_PARTIAL, train_idx, chosen, selected,
                                  settings.chunk_size, record_settings, inputs,
                                  engine.result_keys(settings))
    total = len(train_idx)
    start = time.perf_counter()
    built = {}
    if cluster is not None:
        from . import cluster as cluster_mod

        s = mrec["settings"]
        runner = cluster_mod.ClusterRunner(
            cluster, lambda: cluster_mod.ProblemRecipe(
                s, mrec["inputs"]["data"], tensors["weight"], chosen,
                f"{mrec['fingerprint']}:{','.join(map(str, chosen))}"),
            cluster_timeout or cluster_mod.CONNECT_TIMEOUT)

    def problem():
        """Built on first use: a rerun with every chunk saved needs no Hessian."""
        if "problem" not in built:
            t0 = time.perf_counter()
            built["problem"] = build_problem(tensors, mrec, data, chosen, settings)
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
    record.update(engine.loo_summary(store.arrays, settings))
    record.update(factor_seconds=built.get("seconds", 0.0), workers=run_facts["workers"],
                  seconds=time.perf_counter() - start, resumed_from=store.resumed_from,
                  removals_per_second=(run_facts.get("solved", 0) / run_facts["seconds"]
                                       if run_facts.get("seconds") else None),
                  cluster=cluster, scatter_seconds=run_facts.get("scatter_seconds"),
                  device=device_mod.describe(data.device),
                  peak_device_gib=device_mod.peak_gib(data.device))
    result = art.save_artifact(loo_path, store.final_tensors(), record)
    store.discard()
    if record["error_kind"] == "certified" and record["certified"] < total:
        raise InflError(f"{total - record['certified']} of {total} removals did not reach "
                        f"gradient norm ≤ {settings.tol:g} (max bound "
                        f"{record['max_grad_norm_bound']:.2e}); see {loo_path.name}")
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
        "max_error_bound": _nanmax(np.where(sel, bound, np.nan)),
        "worst_bound_ratio": _nanmax(ratio),
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

def loo_artifact(workdir: Path, method: str | None = None) -> Path:
    """The LOO artifact to read: the one ``method`` writes (newton and lbfgs:
    loo.safetensors; the CNN's adam: loo-adam.safetensors), or by default loo.safetensors,
    else loo-adam.safetensors."""
    if method is not None:
        return workdir / art.loo_name(method, "cnn")
    plain = workdir / art.LOO
    adam = workdir / art.loo_name("adam", "cnn")
    return plain if plain.is_file() or not adam.is_file() else adam


def _panel_title(mrec: dict, solver: str, lrec: dict) -> str:
    from . import plot

    spec = spec_of(mrec)
    if spec.kind == "cnn":
        return f"CNN, {spec.protocol} [{solver}; LOO {lrec['settings']['method']}]"
    return f"{plot.TITLES.get(solver.split('-')[0], solver)} [{solver}]"


def _plot_inputs(workdir: Path, solvers: list[str] | None, loo_method: str | None):
    """(LOO view, panels, LOO record, model record) of one work folder (see :mod:`plot`)."""
    from . import plot

    path = loo_artifact(workdir, loo_method)
    ltensors, lrec = art.load_artifact(path, "loo", hint="infl loo")
    mrec = art.read_record(workdir / art.MODEL)
    if lrec["inputs"]["model"] != mrec["fingerprint"]:
        raise InflError(f"{path.name} was computed for another model than {art.MODEL}; "
                        "rerun `infl loo`")
    solvers = list(solvers) if solvers else [lrec["settings"]["solver"]]
    test_indices = ltensors["test_indices"].tolist()
    train_idx = ltensors["train_indices"]
    panels = {}
    for solver in solvers:
        stensors, srec = load_scores(workdir, solver, lrec["inputs"]["model"])
        rows = score_rows(stensors, test_indices, art.scores_name(solver))
        irec = art.read_record(workdir / art.ihvp_name(solver)) \
            if (workdir / art.ihvp_name(solver)).is_file() else {}
        panels[solver] = {"predicted": stensors["predicted_loss_diff"][rows][:, train_idx].numpy(),
                          "ihvp": irec.get("report", {}),
                          "title": _panel_title(mrec, solver, lrec),
                          "device": f"{irec.get('device', 'cpu')}, {srec.get('device', 'cpu')}"}
    view = plot.LooView(test_indices=test_indices, train_indices=train_idx.numpy(),
                        actual=ltensors["actual_loss_diff"].numpy(),
                        bound=ltensors["actual_error_bound"].numpy(),
                        selected=ltensors["selected"].numpy(), select=lrec["settings"]["select"],
                        error_kind=lrec.get("error_kind", "certified"))
    return view, panels, lrec, mrec


def run_plot(workdir: Path, solvers: list[str] | None, out: Path | None,
             beside: list[Path] = (), loo_method: str | None = None) -> dict:
    """Figures of predicted against actual change and ``metrics.json`` (see :mod:`plot`).
    ``beside``: other work folders whose panels are drawn to the right (one test point each:
    the paper's three panels from the logistic folder and the CNN's). For a CNN folder the
    metrics also hold the ablation: R and ρ of every scores artifact against every LOO
    artifact present, on the same removals."""
    from . import plot

    view, panels, lrec, mrec = _plot_inputs(workdir, solvers, loo_method)
    kind = spec_of(mrec).kind
    png = Path(out) if out else workdir / plot.default_figure_name(
        view.select, len(view.test_indices), kind)
    if png.suffix.lower() != ".png":
        raise BadInput(f"--out must end in .png (a .pdf copy is written beside it), got {png}")
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
    if kind == "cnn":
        metrics["ablation"] = ablation(workdir, mrec)
    art.write_json(workdir / art.METRICS, metrics)
    return metrics


def _nanmax(a) -> float:
    """The largest non-NaN value; NaN when there is none (Adam LOO has no error bars)."""
    a = np.asarray(a, dtype=float)
    return float(np.nanmax(a)) if np.isfinite(a).any() or np.isinf(a).any() else math.nan


def ablation(workdir: Path, mrec: dict) -> list[dict]:
    """R and ρ (on each test point's selected removals, pooled) of every scores artifact in
    ``workdir`` against every LOO artifact there, for the removals both LOO artifacts share
    (the same top k when both were selected by the same scores)."""
    from . import plot

    loos = {}
    for method in ("newton", "adam"):
        path = workdir / art.loo_name(method, "cnn")
        if path.is_file():
            tensors, rec = art.load_artifact(path, "loo")
            if rec["inputs"]["model"] == mrec["fingerprint"]:
                loos[method] = (tensors, rec)
    common = None
    for tensors, _ in loos.values():
        idx = set(tensors["train_indices"].tolist())
        common = idx if common is None else common & idx
    rows = []
    for label in available_scores(workdir):
        stensors, _ = load_scores(workdir, label, mrec["fingerprint"])
        for method, (tensors, rec) in loos.items():
            tests = tensors["test_indices"].tolist()
            score_at = score_rows(stensors, tests, art.scores_name(label))
            keep = [i for i, j in enumerate(tensors["train_indices"].tolist()) if j in common]
            train_idx = tensors["train_indices"][keep]
            predicted = stensors["predicted_loss_diff"][score_at][:, train_idx].numpy()
            selected = tensors["selected"][:, keep].numpy()
            actual = tensors["actual_loss_diff"][:, keep].numpy()
            m = plot.agreement(actual[selected], predicted[selected])
            rows.append({"end_point": spec_of(mrec).protocol, "prediction": label,
                         "actual": method, "removals": len(keep),
                         "pearson_r": m["pearson_r"], "spearman_rho": m["spearman_rho"]})
    return rows


# ----------------------------------------------------------------------------------- show

def run_show(workdir: Path, test_index: int | None, count: int, solver: str | None,
             out: Path | None) -> dict:
    """The explanation of one test prediction as images (see :mod:`explain`); by default of
    the first test point scored. Writes only the image: it takes no lock."""
    from . import explain

    if count < 1:
        raise BadInput(f"-n must be ≥ 1, got {count}")
    tensors, mrec, data = load_model(workdir)
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
    probs = model_engine(mrec).probabilities(tensors, data.x_test[test_index][None])[0]
    return explain.explain(probs, data, test_index, predicted, actual, count, solver, png,
                           art.atomic_write)
