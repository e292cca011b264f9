"""``infl run``: every setting checked (no torch), then the stages (:mod:`~infl_cli.stages.run`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from infl_cli import settings as settings_mod
from infl_cli.cli import common, report
from infl_cli.cli.options import (
    ADAM_LR,
    ADAM_STEPS,
    BATCH,
    BIAS,
    CG_MAX,
    CG_RANK,
    CG_RTOL,
    CHECK_EVERY,
    CHUNK,
    CLASSES,
    CLUSTER,
    CLUSTER_TIMEOUT,
    DAMPING,
    DATA_DIR,
    DATASET,
    DECAY_EPOCHS,
    DEPTH,
    DEVICE,
    DOWNLOAD,
    LOO_TOL,
    MAX_ITER,
    MAX_STEPS,
    METHOD,
    MODEL,
    NUM,
    OUT,
    PRESET,
    PROTOCOL,
    REL_ERROR,
    REPEATS,
    REPLACE,
    RETRAIN_STEPS,
    SCALE,
    SEED,
    SELECT,
    SOLVER,
    STOP_TOL,
    TAIL,
    TEMPERATURE,
    TEST_SAMPLE,
    TESTS,
    TRAIN_BATCH,
    TRAIN_SIZE,
    TRAIN_TOL,
    WD,
    WIDTH,
    WORKDIR,
)
from infl_cli.engines import policy_for
from infl_cli.errors import BadInput

FIGURE = typer.Option(None, "--figure",
                      help="Instead: the paper's Figure 1 (the parts of influence) or 3 (the "
                           "SVM and the smooth hinge) with the authors' settings, in "
                           "WORKDIR/figure1 or WORKDIR/figure3 (2: the default run).")


def run_figure(workdir: Path, figure: int, dataset: str, data_dir, download: bool,
               train_tol: float, max_iter: int, device: str) -> None:
    from infl_cli.cli import paper as cli_paper
    from infl_cli.stages import paper

    if figure == 1:
        where = common.device(device)
        with common.writing(paper.figure_folder(workdir, 1)):
            cli_paper.report_components(paper.run_figure1(
                workdir, dataset, data_dir, download, train_tol, max_iter, where,
                {"train": report.report_train, "say": common.say}))
    else:
        with common.writing(paper.figure_folder(workdir, 3)):
            cli_paper.report_hinge(paper.run_figure3(workdir, dataset, data_dir, download))


def run_cmd(workdir: Path = WORKDIR, dataset: Optional[str] = DATASET,
            data_dir: Optional[Path] = DATA_DIR, wd: Optional[float] = WD,
            train_tol: float = TRAIN_TOL, max_iter: int = MAX_ITER, download: bool = DOWNLOAD,
            bias: Optional[bool] = BIAS, classes: Optional[str] = CLASSES, model: str = MODEL,
            width: Optional[int] = WIDTH,
            protocol: Optional[str] = PROTOCOL, adam_steps: Optional[int] = ADAM_STEPS,
            adam_lr: Optional[float] = ADAM_LR, train_batch: int = TRAIN_BATCH,
            decay_epochs: str = DECAY_EPOCHS, train_size: Optional[int] = TRAIN_SIZE,
            temperature: Optional[float] = TEMPERATURE,
            solver: Optional[str] = SOLVER,
            test_index: Optional[List[int]] = TESTS, test_sample: Optional[int] = TEST_SAMPLE,
            seed: Optional[int] = SEED, preset: str = PRESET, scale: Optional[str] = SCALE,
            damping: Optional[float] = DAMPING, depth: Optional[int] = DEPTH,
            batch_size: Optional[int] = BATCH, repeats: Optional[int] = REPEATS,
            average_tail: Optional[float] = TAIL, stop_tol: Optional[float] = STOP_TOL,
            check_every: Optional[int] = CHECK_EVERY, cg_rtol: float = CG_RTOL,
            cg_max_iter: int = CG_MAX, cg_rank: int = CG_RANK, select: str = SELECT,
            num: Optional[int] = NUM, method: Optional[str] = METHOD,
            tol: Optional[float] = LOO_TOL,
            rel_error: float = REL_ERROR, chunk_size: Optional[int] = CHUNK,
            max_steps: int = MAX_STEPS, retrain_steps: int = RETRAIN_STEPS,
            cluster: Optional[str] = CLUSTER, cluster_timeout: float = CLUSTER_TIMEOUT,
            out: Optional[Path] = OUT, device: str = DEVICE, replace: bool = REPLACE,
            figure: Optional[int] = FIGURE):
    """All stages in order, skipping those whose artifact is up to date, then `show` for the
    first test point (figures and images whose inputs did not change are not redrawn). A
    folder holds one study: its data are used unless others are given, and a run on other
    data or another model kind is refused unless --replace. With --figure 1 or 3: that figure
    of the paper with the authors' settings instead."""
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
        run_figure(workdir, figure, dataset or "mnist", data_dir, download, train_tol, max_iter,
                   device)
        return
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

    reporters = {"train": report.report_train, "ihvp": report.report_ihvp,
                 "score": report.report_score, "loo": report.report_loo,
                 "plot": report.report_plot, "show": report.report_show,
                 "times": report.report_times, "say": common.say,
                 "skipped": report.report_skipped}
    with common.writing(workdir):
        run_all(workdir, chosen.dataset, chosen.data_dir, wd, train_tol, max_iter, download,
                chosen.bias, parsed, common.tests(test_index, test_sample, seed), seed or 0,
                select, num, settings, out, cluster, cluster_timeout, where, spec, reporters,
                classes=chosen.classes, replace_study=replace)
