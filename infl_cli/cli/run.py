"""``infl run``: every setting checked (no torch), then the stages (:mod:`~infl_cli.stages.run`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from infl_cli.api import common, ops
from infl_cli.cli import paper as cli_paper
from infl_cli.cli import report
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

FIGURE = typer.Option(None, "--figure",
                      help="Instead: the paper's Figure 1 (the parts of influence) or 3 (the "
                           "SVM and the smooth hinge) with the authors' settings, in "
                           "WORKDIR/figure1 or WORKDIR/figure3 (2: the default run).")


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
    ops.run(**locals(), report={
        "train": report.report_train, "ihvp": report.report_ihvp, "score": report.report_score,
        "loo": report.report_loo, "plot": report.report_plot, "show": report.report_show,
        "times": report.report_times, "skipped": report.report_skipped,
        "components": cli_paper.report_components, "hinge": cli_paper.report_hinge,
        "say": common.say})