"""The operations: one function per command, with the command's option names and defaults.
Each checks its settings (no torch), takes the work folder's lock, calls its stage and returns
the stage's record. The command line calls these and prints the records; the Python API
(:class:`~infl_cli.api.study.Study`) calls these and reads the artifacts they wrote. So both
take one code path: the same checks, artifacts, fingerprints and locks.

Errors are :class:`~infl_cli.errors.InflError` (:class:`~infl_cli.errors.BadInput` for bad
settings), raised before anything is written."""

from __future__ import annotations

from pathlib import Path

from infl_cli import settings as settings_mod
from infl_cli.api import common
from infl_cli.api.common import joined
from infl_cli.errors import BadInput


def train(workdir="artifacts", dataset=None, data_dir=None, wd=None, train_tol=1e-10,
          max_iter=5000, download=True, bias=None, classes=None, model="logreg", width=None,
          protocol=None, adam_steps=None, adam_lr=None, train_batch=500,
          decay_epochs="10000,20000", train_size=None, temperature=None, seed=None,
          device="auto", replace=False, prepare=None) -> dict:
    """``infl train``: the model record (``model.safetensors``). ``prepare()`` runs once the
    settings are checked, under the folder's lock (the API writes in-memory data there)."""
    workdir = Path(workdir)
    spec = common.spec(model, width, protocol, adam_steps, adam_lr, train_batch, decay_epochs,
                       seed, train_size, temperature)
    settings_mod.validate_train(wd, train_tol)
    chosen = common.data(workdir, dataset, data_dir, bias, classes)
    where = common.device(device)
    from infl_cli.stages.train import run_train

    with common.writing(workdir):
        if prepare is not None:
            prepare()
        return run_train(workdir, chosen.dataset, chosen.data_dir, wd, train_tol, max_iter,
                         download, bias=chosen.bias, device=where, spec=spec,
                         classes=chosen.classes, replace=replace)


def _solver_choice(solver, preset, scale, depth, batch_size, repeats, seed, average_tail,
                   stop_tol, check_every, cg_rtol, cg_max_iter, cg_rank, damping):
    from infl_cli.numerics.solvers import SolverChoice

    lissa = settings_mod.lissa_settings(preset, scale, depth, batch_size, repeats, seed,
                                        average_tail, stop_tol, check_every)
    return SolverChoice(solver, lissa, settings_mod.CgSettings(cg_rtol, cg_max_iter, cg_rank),
                        damping)


def ihvp(workdir="artifacts", solver=None, test_index=None, test_sample=None, seed=None,
         preset="default", scale=None, damping=None, depth=None, batch_size=None, repeats=None,
         average_tail=None, stop_tol=None, check_every=None, cg_rtol=1e-10, cg_max_iter=1000,
         cg_rank=64, device="auto") -> dict:
    """``infl ihvp``: the record of ``ihvp-<solver>.safetensors``."""
    workdir = Path(workdir)
    from infl_cli.stages.ihvp import ihvp_solver, run_ihvp

    choice = _solver_choice(solver, preset, scale, depth, batch_size, repeats, seed,
                            average_tail, stop_tol, check_every, cg_rtol, cg_max_iter, cg_rank,
                            damping)
    where = common.device(device)
    parsed = ihvp_solver(workdir, choice)
    with common.writing(workdir):
        return run_ihvp(workdir, parsed, common.tests(test_index, test_sample, seed),
                        device=where)


def score(workdir="artifacts", solver=None, test_index=None, test_sample=None, seed=None,
          device="auto", import_file=None, name=None, meaning="removal", method=None,
          rank=None, proj_dim=None, models=None, damping=None) -> dict:
    """``infl score``: the record of ``scores-<label>.safetensors``, from inverse-HVPs, from
    another estimator (``method``) or from another tool's file (``import_file``)."""
    workdir = Path(workdir)
    tests = common.tests(test_index, test_sample, seed)
    if method is not None or any(v is not None for v in (rank, proj_dim, models, damping)):
        from infl_cli.settings import EstimatorSettings, validate_estimator

        if method is None:
            raise BadInput("--rank, --proj-dim, --models and --damping go with --method")
        settings = EstimatorSettings(method, rank, proj_dim, models, damping)
        validate_estimator(settings)
        where = common.device(device)
        from infl_cli.stages.estimate import run_estimate

        with common.writing(workdir):
            return run_estimate(workdir, settings, tests, where)
    if import_file is not None:
        from infl_cli.stages import importscores

        importscores.validate(name, meaning, Path(import_file))
        with common.writing(workdir):
            return importscores.import_scores(workdir, Path(import_file), name, meaning, tests)
    where = common.device(device)
    from infl_cli.stages.score import run_score

    with common.writing(workdir):
        return run_score(workdir, solver, tests, device=where)


def loo(workdir="artifacts", solver=None, test_index=None, test_sample=None, seed=None,
        select="top", num=None, method=None, tol=None, rel_error=0.01, chunk_size=None,
        max_steps=10, retrain_steps=30000, cluster=None, cluster_timeout=10.0,
        device="auto") -> dict:
    """``infl loo``: the record of ``loo.safetensors``."""
    workdir = Path(workdir)
    settings = common.loo_settings(method, tol, rel_error, chunk_size, max_steps, retrain_steps)
    settings_mod.validate_loo(settings, select, num)
    from infl_cli.runtime.cluster import validate_cluster

    validate_cluster(cluster, cluster_timeout, common.device_name(device, cluster))
    where = common.device(device, cluster)
    from infl_cli.stages.loo import run_loo

    with common.writing(workdir):
        return run_loo(workdir, solver, common.tests(test_index, test_sample, seed), select,
                       num, seed or 0, settings, cluster=cluster,
                       cluster_timeout=cluster_timeout, device=where)


def plot(workdir="artifacts", solver=None, out=None, beside=None, loo_method=None) -> dict:
    """``infl plot``: the figures' metrics (also in ``metrics.json``)."""
    workdir = Path(workdir)
    from infl_cli.stages.plot import run_plot

    solver = [solver] if isinstance(solver, str) else solver
    with common.writing(workdir):
        return run_plot(workdir, solver, None if out is None else Path(out),
                        [Path(b) for b in beside or []], loo_method)


def show(workdir="artifacts", test_index=None, num=8, solver=None, out=None, csv=None) -> dict:
    """``infl show``: the explanation's table and image (``csv``: a path, or ``"-"`` for
    stdout)."""
    from infl_cli.stages.show import run_show

    return run_show(Path(workdir), test_index, num, solver, None if out is None else Path(out),
                    None if csv is None else (csv if csv == "-" else Path(csv)))


def run(workdir="artifacts", dataset=None, data_dir=None, wd=None, train_tol=1e-10,
        max_iter=5000, download=True, bias=None, classes=None, model="logreg", width=None,
        protocol=None, adam_steps=None, adam_lr=None, train_batch=500,
        decay_epochs="10000,20000", train_size=None, temperature=None, solver=None,
        test_index=None, test_sample=None, seed=None, preset="default", scale=None,
        damping=None, depth=None, batch_size=None, repeats=None, average_tail=None,
        stop_tol=None, check_every=None, cg_rtol=1e-10, cg_max_iter=1000, cg_rank=64,
        select="top", num=None, method=None, tol=None, rel_error=0.01, chunk_size=None,
        max_steps=10, retrain_steps=30000, cluster=None, cluster_timeout=10.0, out=None,
        device="auto", replace=False, figure=None, report=None, prepare=None) -> dict:
    """``infl run``: every stage in order. ``report[stage](record)`` is called as each stage
    finishes (the command line prints there); returns the records by stage. ``prepare()`` as
    for :func:`train`."""
    workdir = Path(workdir)
    records: dict = {}
    report = _collecting(records, report)
    if figure is not None and figure != 2:
        given = [name for name, value in (
            ("--classes", classes), ("--wd", wd), ("--test-index", test_index),
            ("--test-sample", test_sample), ("--solver", solver), ("--method", method),
            ("--num", num), ("--width", width), ("--protocol", protocol),
            ("--cluster", cluster), ("--temperature", temperature is not None),
            ("--train-size", train_size)) if value] + (["--model"] if model != "logreg" else []) \
            + (["--bias"] if bias else [])
        if figure not in (1, 3):
            raise BadInput(f"--figure must be 1, 2 or 3 (the paper's figures), got {figure}")
        if given:
            other = ("train --classes A,B` then `infl components" if figure == 1 else "hinge")
            raise BadInput(f"--figure {figure} runs the authors' settings; {given[0]} does not "
                           f"apply (for other settings: `infl {other}`)")
        return _figure(workdir, figure, dataset or "mnist", data_dir, download, train_tol,
                       max_iter, device, report) or records
    from infl_cli.engines import policy_for

    spec = common.spec(model, width, protocol, adam_steps, adam_lr, train_batch, decay_epochs,
                       seed, train_size, temperature)
    policy = policy_for(spec.kind)
    lissa = settings_mod.lissa_settings(preset, scale, depth, batch_size, repeats, seed,
                                        average_tail, stop_tol, check_every)
    cg = settings_mod.CgSettings(cg_rtol, cg_max_iter, cg_rank)
    # every setting is checked before any stage runs: a typo must not cost a training run
    settings_mod.validate_train(wd, train_tol)
    chosen = common.data(workdir, dataset, data_dir, bias, classes)
    from infl_cli.numerics.solvers import make_solver
    from infl_cli.runtime.cluster import validate_cluster

    parsed = make_solver(solver, policy, spec, lissa, cg, damping)
    settings = common.loo_settings(method or policy.default_method(spec),
                                   policy.default_tol if tol is None else tol, rel_error,
                                   chunk_size, max_steps, retrain_steps)
    settings_mod.validate_loo(settings, select, num)
    policy.check_method(settings.method)
    where = common.device_name(device, cluster)
    validate_cluster(cluster, cluster_timeout, where)
    policy.check_cluster(cluster)
    from infl_cli.stages.run import run_all

    with common.writing(workdir):
        if prepare is not None:
            prepare()
        run_all(workdir, chosen.dataset, chosen.data_dir, wd, train_tol, max_iter, download,
                chosen.bias, parsed, common.tests(test_index, test_sample, seed), seed or 0,
                select, num, settings, None if out is None else Path(out), cluster,
                cluster_timeout, where, spec, report, classes=chosen.classes,
                replace_study=replace)
    return records


RUN_STAGES = ("train", "ihvp", "score", "loo", "plot", "show", "times", "skipped")


def _collecting(records: dict, report: dict | None) -> dict:
    """Reporters that keep each record (and pass it on to ``report``'s, where given)."""
    report = report or {}

    def keep(stage):
        def reporter(record, *rest):
            records[stage] = record if not rest else (record, *rest)
            if stage in report:
                report[stage](record, *rest)
        return reporter

    out = {stage: keep(stage) for stage in RUN_STAGES + ("components", "hinge")}
    out["say"] = report.get("say", common.say)
    return out


def _figure(workdir: Path, figure: int, dataset: str, data_dir, download: bool,
            train_tol: float, max_iter: int, device: str, report: dict):
    from infl_cli.stages import paper

    data_dir = None if data_dir is None else Path(data_dir)
    if figure == 1:
        where = common.device(device)
        with common.writing(paper.figure_folder(workdir, 1)):
            report["components"](paper.run_figure1(
                workdir, dataset, data_dir, download, train_tol, max_iter, where,
                {"train": report["train"], "say": report["say"]}))
    else:
        with common.writing(paper.figure_folder(workdir, 3)):
            report["hinge"](paper.run_figure3(workdir, dataset, data_dir, download))


def self_influence(workdir="artifacts", sample=60, check=0, num=20, order="self-influence",
                   seed=None, rel_error=0.01, out=None, device="auto") -> tuple:
    """``infl self-influence``: (its record, the ``num`` rows to check first, the image's
    path or None)."""
    workdir = Path(workdir)
    from infl_cli.settings import LooSettings, validate_loo
    from infl_cli.stages import selfinfluence

    selfinfluence.validate(sample, check, num, order)
    validate_loo(LooSettings(rel_error=rel_error))
    where = common.device(device)
    with common.writing(workdir):
        record = selfinfluence.run_self_influence(workdir, sample, check, seed or 0, where,
                                                  rel_error)
        rows, _, data = selfinfluence.top_rows(workdir, num, order)
        figure = selfinfluence.draw_top(workdir, rows, data, order,
                                        None if out is None else Path(out))
    return record, rows, figure


def mislabel(workdir="artifacts", flip=0.1, seeds=5, checks="0,0.05,0.1,0.15,0.2,0.25,0.3",
             orderings="self-influence,loss,random,loo-loss", tol=1e-08, sample=60,
             device="auto") -> dict:
    """``infl mislabel``: the study's section of ``metrics.json``."""
    workdir = Path(workdir)
    from infl_cli.stages import mislabel as stage

    levels = stage.parse_checks(joined(checks))
    names = stage.parse_orderings(joined(orderings))
    stage.validate(flip, seeds, levels, names)
    if not tol > 0:
        raise BadInput(f"--tol must be > 0, got {tol}")
    if sample < 2:
        raise BadInput(f"--sample must be ≥ 2, got {sample}")
    where = common.device(device)
    with common.writing(workdir):
        return stage.run_mislabel(workdir, flip, seeds, levels, names, tol, sample, where)


def lds(workdir="artifacts", subsets=100, fraction=0.5, seed=0, measure="loss", tol=1e-09,
        chunk_size=None, test_index=None, test_sample=None, truth=None, cluster=None,
        cluster_timeout=10.0, device="auto") -> dict:
    """``infl lds``: the ``lds`` section of ``metrics.json`` (every scores artifact judged)."""
    workdir = Path(workdir)
    from infl_cli.runtime.cluster import validate_cluster
    from infl_cli.settings import LdsSettings, validate_lds

    settings = LdsSettings(subsets=subsets, fraction=fraction, seed=seed, measure=measure,
                           tol=tol, chunk_size=chunk_size)
    validate_lds(settings)
    validate_cluster(cluster, cluster_timeout, common.device_name(device, cluster))
    where = common.device(device, cluster)
    from infl_cli.stages import lds as stage

    with common.writing(workdir):
        return stage.run_lds(workdir, settings, common.tests(test_index, test_sample, seed),
                             where, cluster, cluster_timeout,
                             None if truth is None else Path(truth))


def components(workdir="artifacts", test_index=None, device="auto") -> dict:
    """``infl components`` (Figure 1 on the binary model in ``workdir``)."""
    workdir = Path(workdir)
    if test_index is not None and test_index < 0:
        raise BadInput(f"--test-index must be ≥ 0, got {test_index}")
    where = common.device(device)
    from infl_cli.stages.components import run_components

    with common.writing(workdir):
        return run_components(workdir, test_index, where)


def hinge(workdir="artifacts", dataset="mnist", data_dir=None, download=True, classes="1,7",
          wd=0.01, temperatures="0,0.001,0.1", smooth="0.001,0.1", num=100, test_index=None,
          train_size=None, test_size=None) -> dict:
    """``infl hinge`` (Figure 3: the SVM and the smooth hinge)."""
    workdir = Path(workdir)
    from infl_cli.settings import parse_classes
    from infl_cli.stages import hinge as stage

    dataset = str(dataset)
    chosen = parse_classes(joined(classes), dataset)
    settings = stage.HingeSettings(
        wd=wd, temperatures=stage.parse_temperatures(joined(temperatures), "--temperatures"),
        smooth=stage.parse_temperatures(joined(smooth), "--smooth", positive=True), num=num,
        test_index=test_index, train_size=train_size, test_size=test_size)
    stage.validate(settings, chosen)
    from infl_cli.data.datasets import load_dataset

    with common.writing(workdir):
        data = load_dataset(dataset, None if data_dir is None else Path(data_dir), download,
                            classes=chosen)
        return stage.run_hinge(workdir, data, settings, chosen)


def attack(workdir="artifacts", test_index=None, test_sample=None, seed=None, budget="1,2,10",
           eps="0.5", steps=10, step_size=None, tol=1e-08, device="auto") -> dict:
    """``infl attack``: the ``attack`` section of ``metrics.json`` (``attack.safetensors``,
    ``attack.png``)."""
    workdir = Path(workdir)
    from infl_cli.stages import attack as stage

    budgets = stage.parse_list(joined(budget), "--budget", int)
    radii = stage.parse_list(joined(eps), "--eps")
    stage.validate(radii, budgets, steps)
    if not tol > 0:
        raise BadInput(f"--tol must be > 0, got {tol}")
    if step_size is not None and not step_size > 0:
        raise BadInput(f"--step-size must be > 0, got {step_size}")
    if test_sample is not None and test_sample < 1:
        raise BadInput(f"--test-sample must be ≥ 1, got {test_sample}")
    stage.check_model(workdir, budgets)
    where = common.device(device)
    with common.writing(workdir):
        return stage.run_attack(workdir, common.tests(test_index, test_sample, seed), budgets,
                                radii, steps, step_size, seed or 0, tol, where)
