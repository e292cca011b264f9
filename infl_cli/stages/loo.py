"""``infl loo``: retrain without each selected training point, certified; writes
``loo.safetensors`` (the CNN's Adam retraining: ``loo-adam.safetensors``). Also the chunked
runner that ``loo`` and ``lds`` share (:func:`solve_store`: in process or on Dask, under one
progress bar, resumable)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from infl_cli.engines import ModelSpec, spec_of
from infl_cli.errors import InflError, Interrupted
from infl_cli.runtime import artifacts as art
from infl_cli.runtime.cluster import validate_cluster
from infl_cli.runtime.progress import progress_bar
from infl_cli.settings import LooSettings, validate_loo
from infl_cli.stages import selection
from infl_cli.stages.common import (
    TestChoice,
    choose_artifact,
    load_model,
    load_scores,
    model_engine,
    score_rows,
)


@dataclass
class LooJob:
    """The chunk job of leave-one-out (:class:`~infl_cli.runtime.chunks.ChunkJob`): the
    engine's LOO problem retrains without each removal of the chunk."""

    settings: LooSettings

    def solve(self, problem, ids, selected):
        return problem.solve_chunk(ids, selected, self.settings)


@dataclass
class Built:
    """A chunked stage's problem, built on first use (a rerun with every chunk saved needs
    none), with the work folder's keeper of kept matrices and the build's seconds."""

    problem: object = None
    keeper: object = None
    seconds: float = 0.0
    finish: object = None

    def hessian_source(self):
        """What happened to the float32 Hessian factor (kept, derived, formed), or None."""
        return None if self.keeper is None else self.keeper.used.get("torch.float32")


def loo_settings(solver: str, test_indices: list[int], select: str, k: int, seed: int,
                 settings: LooSettings) -> dict:
    """What a LOO artifact is made with (the seed only matters to ``--select random``)."""
    return {"solver": solver, "test_indices": list(test_indices), "select": select,
            "k": None if select == "all" else k, "seed": seed if select == "random" else None,
            "method": settings.method, "tol": settings.tol, "rel_error": settings.rel_error,
            "chunk_size": settings.chunk_size, "max_steps": settings.max_steps,
            **({"retrain_steps": settings.retrain_steps} if settings.method == "adam" else {})}


def plan_loo(workdir: Path, solver: str | None, tests: TestChoice | None, select: str, k: int,
             seed: int, settings: LooSettings, mrec: dict, data):
    """Everything that decides a LOO run, before any retraining: (settings record, inputs,
    test indices, train indices [K], selected [T, K])."""
    solver = choose_artifact(workdir, "scores", solver, mrec["fingerprint"],
                             (tests or TestChoice()).asked(data.n_test), "loo")
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


def resolve_chunk_size(settings: LooSettings, device, engine, spec: ModelSpec,
                       data) -> LooSettings:
    """The settings with ``--chunk-size auto`` (None) made a number for ``device`` and the
    model (its engine's ``auto_chunk_size``)."""
    import torch

    if settings.chunk_size is not None:
        return settings
    return replace(settings, chunk_size=engine.auto_chunk_size(torch.device(device), spec, data,
                                                               settings))


def build_problem(tensors, mrec, data, test_indices: list[int], settings: LooSettings,
                  keeper=None, label: str = "loo: set-up"):
    """The LOO problem of a model (its engine's, with a progress bar ``label`` over its
    set-up: the logistic model's factored Hessian, taken from ``keeper`` when it is kept
    there), on the data's device."""
    import torch

    sel = torch.tensor(test_indices, dtype=torch.int64, device=data.device)
    engine = model_engine(mrec)
    total = engine.hessian_blocks(tensors)
    with progress_bar(label, total=total) as update:
        problem = engine.loo_problem(tensors, mrec, data, data.x_test[sel], data.y_test[sel],
                                     settings, on_block=update, keeper=keeper)
        source = None if keeper is None else keeper.used.get("torch.float32")
        update(completed=total, status=f"Hessian {source}" if source else "")
    return problem


def run_loo(workdir: Path, solver: str | None, tests: TestChoice | None, select: str, k: int,
            seed: int, settings: LooSettings, loaded=None, cluster: str | None = None,
            cluster_timeout: float | None = None, device=None) -> dict:
    """Retrain without every selected training point; writes loo.safetensors.

    The open chunks are solved in this process (on ``device``), or with ``cluster``
    (``local:N`` or ``tcp://HOST:PORT``) on Dask workers (:mod:`~infl_cli.runtime.cluster`)."""
    from infl_cli.runtime import chunks
    from infl_cli.runtime import device as device_mod
    from infl_cli.runtime.kept import Keeper

    validate_loo(settings, select, k)
    tensors, mrec, data = loaded or load_model(workdir, device=device)
    engine = model_engine(mrec)
    spec = spec_of(mrec)
    if settings.method is None:
        settings = replace(settings, method=engine.default_method(spec))
    if settings.tol is None:
        settings = replace(settings, tol=engine.default_tol)
    engine.check_method(settings.method)
    engine.check_cluster(cluster)
    validate_cluster(cluster, cluster_timeout, str(data.device))
    settings = resolve_chunk_size(settings, data.device, engine, spec, data)
    loo_path = workdir / engine.loo_name(settings.method)
    device_mod.reset_peak(data.device)
    record_settings, inputs, chosen, train_idx, selected = plan_loo(
        workdir, solver, tests, select, k, seed, settings, mrec, data)
    engine.check_memory("loo", data, f"infl loo --method {settings.method}",
                        tests=len(chosen), newton=settings.method == "newton")
    store = chunks.PartialResults(workdir / art.LOO_PARTIAL, train_idx, chosen, selected,
                                  settings.chunk_size, record_settings, inputs,
                                  engine.result_keys(settings))
    total = len(train_idx)
    start = time.perf_counter()
    built = Built(keeper=Keeper(workdir, mrec))
    runner = cluster_runner(cluster, cluster_timeout, tensors, mrec, chosen)
    run_facts = solve_store(f"loo ({settings.method}) removals", "removals", store, built,
                            lambda: build_problem(tensors, mrec, data, chosen, settings,
                                                  built.keeper), LooJob(settings), runner)
    record = _loo_record(store, record_settings, inputs, settings, built.problem, mrec)
    record.update(engine.loo_summary(store.arrays, settings))
    record.update(factor_seconds=built.seconds, workers=run_facts["workers"],
                  seconds=time.perf_counter() - start, resumed_from=store.resumed_from,
                  removals_per_second=(run_facts.get("solved", 0) / run_facts["seconds"]
                                       if run_facts.get("seconds") else None),
                  cluster=cluster, scatter_seconds=run_facts.get("scatter_seconds"),
                  device=device_mod.describe(data.device),
                  hessian_factor=built.hessian_source(),
                  peak_device_gib=device_mod.peak_gib(data.device))
    result = art.save_artifact(loo_path, store.final_tensors(), record)
    store.discard()
    if record["error_kind"] == "certified" and record["certified"] < total:
        raise InflError(f"{total - record['certified']} of {total} removals did not reach "
                        f"gradient norm ≤ {settings.tol:g} (max bound "
                        f"{record['max_grad_norm_bound']:.2e}); see {loo_path.name}")
    return result


def _loo_record(store, record_settings: dict, inputs: dict, settings: LooSettings, problem,
                mrec: dict) -> dict:
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
        "max_error_bound": nanmax(np.where(sel, bound, np.nan)),
        "worst_bound_ratio": nanmax(ratio),
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


def nanmax(a) -> float:
    """The largest non-NaN value; NaN when there is none (Adam LOO has no error bars)."""
    a = np.asarray(a, dtype=float)
    return float(np.nanmax(a)) if np.isfinite(a).any() or np.isinf(a).any() else math.nan


def cluster_runner(cluster: str | None, cluster_timeout, tensors, mrec, chosen):
    """The Dask runner of a chunked stage's store (None without ``--cluster``): its workers
    rebuild the problem from the model's recipe."""
    if cluster is None:
        return None
    from infl_cli.engines.logreg.remote import ProblemRecipe
    from infl_cli.runtime import cluster as cluster_mod

    s = mrec["settings"]
    return cluster_mod.ClusterRunner(
        cluster, lambda: ProblemRecipe(
            s, mrec["inputs"]["data"], tensors["weight"], chosen,
            f"{mrec['fingerprint']}:{','.join(map(str, chosen))}",
            model_engine(mrec).certificate(tensors, mrec)),
        cluster_timeout or cluster_mod.CONNECT_TIMEOUT)


def solve_store(label: str, noun: str, store, built: Built, build, job, runner=None,
                finish=None) -> dict:
    """Solve a checkpointed store's open chunks (``loo``'s removals, ``lds``'s subsets) by
    ``job`` (:class:`~infl_cli.runtime.chunks.ChunkJob`), in this process or on ``runner``,
    under one progress bar. The problem is ``build()`` on first use, kept in ``built`` with
    its build seconds (a rerun with every chunk saved needs no Hessian); ``finish(problem)``,
    if given, runs before the keeper's writes are waited for, its result in
    ``built.finish``. An interrupt keeps what is done and says so in one line. Returns the
    run's facts (workers, seconds, …)."""
    from infl_cli.runtime import chunks

    def problem():
        if built.problem is None:
            t0 = time.perf_counter()
            built.problem = build()
            built.seconds = time.perf_counter() - t0
        return built.problem

    total = len(store.train_indices)
    facts = {"workers": 1, "seconds": 0.0}
    try:
        with progress_bar(label, total=total) as update:
            update(advance=store.n_done)
            if store.pending():
                if runner is None:
                    facts = chunks.run_in_process(problem(), store, job, update)
                else:
                    facts = runner(problem, store, job, update)
        if finish is not None:
            built.finish = finish(problem)
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(f"interrupted; {store.n_done} of {total} {noun} are saved in "
                          f"{store.path}; rerun the same command to continue") from None
    finally:
        if built.keeper is not None:
            built.keeper.close()  # the kept Hessian factor, written while the chunks ran
    return facts
