"""``infl run``: every stage in order, each skipped when its artifact is up to date, then the
figures and the explanation of the first test point, each redrawn only when its inputs
changed; writes ``timings.json``.

Whether a stage is current is decided from records alone (its settings, and the fingerprints
of its inputs: the data's from the decoded-data cache, the stages' from their artifacts'
headers), so a rerun in a folder where everything is current imports no torch, reads no
tensor and draws nothing. A stage that does run recomputes exactly what it did before when its
inputs did not change, and artifacts are fingerprinted by content, so what depends on it stays
current.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from infl_cli.data.datasets import load_dataset
from infl_cli.engines import ModelSpec, policy_for
from infl_cli.engines.spec import LogregSpec
from infl_cli.numerics.solvers import Solver
from infl_cli.runtime import artifacts as art
from infl_cli.stages import selection
from infl_cli.stages.common import TestChoice, is_current, load_model
from infl_cli.stages.ihvp import ihvp_tests
from infl_cli.stages.loo import loo_settings
from infl_cli.stages.score import score_settings
from infl_cli.stages.train import train_settings


def _loo_current(path: Path, expected: dict, inputs: dict, auto_chunk: bool) -> bool:
    """Whether the LOO artifact is current; with ``--chunk-size auto`` any chunk size the
    device chose counts (chunks do not change what is certified)."""
    if not auto_chunk:
        return is_current(path, expected, inputs)
    if not path.is_file():
        return False
    try:
        record = art.read_record(path)
    except Exception:
        return False
    got = dict(record.get("settings") or {})
    return {**got, "chunk_size": None} == {**expected, "chunk_size": None} \
        and record.get("inputs") == inputs


def run_all(workdir: Path, dataset: str, data_dir, wd, train_tol, max_iter, download, bias,
            solver: Solver, tests: TestChoice, seed: int, select, num, settings, out,
            cluster=None, cluster_timeout=None, device_name: str = "auto",
            spec: ModelSpec | None = None, report=None, classes: tuple | None = None,
            replace_study: bool = False) -> dict:
    """Run every stage in ``workdir`` (see the module doc). ``report[stage](record)`` prints
    each stage's table (the command line's). Returns the seconds per stage."""
    from infl_cli.stages import plot as plot_stage
    from infl_cli.stages import show as show_stage
    from infl_cli.stages.ihvp import run_ihvp
    from infl_cli.stages.loo import resolve_chunk_size, run_loo
    from infl_cli.stages.score import run_score
    from infl_cli.stages.train import run_train

    report = report or {}
    say = report.get("say", lambda message: None)
    times = {}
    t0 = time.perf_counter()
    spec = spec or LogregSpec()
    policy = policy_for(spec.kind)
    full = load_dataset(dataset, data_dir, download, bias, classes)
    data = policy.training_data(full, spec)
    ihvp_tests(tests, data, policy)  # -t and --test-sample checked before any training
    num = selection.resolve_k(num, data.n_train)
    selection.check_selection(select, num, data.n_train)
    label = solver.label()
    auto_chunk = settings.chunk_size is None
    times["load data"] = time.perf_counter() - t0
    state = {"device": None, "loaded": None}

    def computing():
        """The device, resolved (with torch) the first time a stage computes."""
        if state["device"] is None:
            from infl_cli.runtime import device as device_mod

            state["device"] = device_mod.resolve(device_name)
            device_mod.check_precision()
            device_mod.reset_peak(state["device"])
        return state["device"]

    if device_name not in ("auto", "cpu"):
        computing()  # a GPU asked for by name: there or not, say so before anything else

    def loaded():
        if state["loaded"] is None:
            state["loaded"] = load_model(workdir, full, computing())
        return state["loaded"]

    def stage(name, path, current, fn):
        start = time.perf_counter()
        if current:
            say(f"{name}: {path} is up to date, skipped")
            rec = art.read_record(path)
            report.get("skipped", lambda n, r: None)(name, rec)
        else:
            computing()
            rec = fn()
            report.get(name, lambda r: None)(rec)
        times[name] = time.perf_counter() - start
        return rec

    tset = train_settings(dataset, data_dir, wd, train_tol, bias, spec, classes)
    model_path = workdir / art.MODEL
    mrec = stage("train", model_path, is_current(model_path, tset, {"data": data.fingerprint}),
                 lambda: run_train(workdir, dataset, data_dir, wd, train_tol, max_iter,
                                   download, data=full, bias=bias, device=computing(),
                                   spec=spec, classes=classes, replace=replace_study))
    chosen = ihvp_tests(tests, data, policy, mrec)  # the default may be the model's
    fixed = TestChoice(chosen)
    ipath = workdir / art.ihvp_name(label)
    irec = stage("ihvp", ipath,
                 is_current(ipath, solver.record(chosen), {"model": mrec["fingerprint"]}),
                 lambda: run_ihvp(workdir, solver, fixed, loaded()))
    spath = workdir / art.scores_name(label)
    srec = stage("score", spath,
                 is_current(spath, score_settings(label, chosen),
                            {"model": mrec["fingerprint"], "ihvp": irec["fingerprint"]}),
                 lambda: run_score(workdir, label, fixed, loaded()))
    lpath = workdir / policy.loo_name(settings.method)
    linputs = {"model": mrec["fingerprint"], "scores": srec["fingerprint"]}
    expected = loo_settings(label, chosen, select, num, seed,
                            settings if not auto_chunk else replace(settings, chunk_size=None))

    def loo():
        from infl_cli.engines import engine_for

        tensors, _, mdata = loaded()
        resolved = resolve_chunk_size(settings, computing(), engine_for(spec.kind), spec, mdata)
        return run_loo(workdir, label, fixed, select, num, seed, resolved, loaded(),
                       cluster=cluster, cluster_timeout=cluster_timeout)

    stage("loo", lpath, _loo_current(lpath, expected, linputs, auto_chunk), loo)

    start = time.perf_counter()
    psettings, pinputs, figures = plot_stage.plot_settings(workdir, [label], out,
                                                           loo_method=settings.method)
    if plot_stage.is_drawn(workdir, psettings, pinputs, figures):
        say(f"plot: {figures[0]} is up to date, not redrawn")
        import json

        report.get("skipped", lambda n, r: None)(
            "plot", json.loads((workdir / art.METRICS).read_text()))
    else:
        report.get("plot", lambda r: None)(
            plot_stage.run_plot(workdir, [label], out, loo_method=settings.method))
    times["plot"] = time.perf_counter() - start
    start = time.perf_counter()
    shown = show_stage.show_settings(workdir, chosen[0], 8, label, None)
    result = show_stage.drawn(*shown)
    if result is not None:
        say(f"show: {shown[2]} is up to date, not redrawn")
    else:
        result = show_stage.run_show(workdir, chosen[0], 8, label, None)
    report.get("show", lambda r: None)(result)
    times["show"] = time.perf_counter() - start
    times["total"] = time.perf_counter() - t0
    device = state["device"]
    if device is None:
        where, peak = "none (every stage was current)", None
    else:
        from infl_cli.runtime import device as device_mod

        where, peak = device_mod.describe(device), device_mod.peak_gib(device)
    report.get("times", lambda title, rows: None)(f"seconds per stage ({where})", times)
    art.write_json(workdir / art.TIMINGS, {**times, "device": where, "peak_device_gib": peak})
    return times
