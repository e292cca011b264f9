"""The pipeline's commands: train, ihvp, score, loo, plot, show. Each checks its options
(no torch), then takes the work folder's lock and calls its stage, importing what it computes
with only then."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from infl_cli.api import ops
from infl_cli.cli import report
from infl_cli.cli.options import (
    ADAM_LR,
    ADAM_STEPS,
    BATCH,
    BESIDE,
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
    IHVP_SEED,
    LOO_SEED,
    LOO_SOLVER,
    LOO_TOL,
    MAX_ITER,
    MAX_STEPS,
    METHOD,
    MODEL,
    NUM,
    OUT,
    PLOT_LOO,
    PLOT_SOLVERS,
    PRESET,
    PROTOCOL,
    REL_ERROR,
    REPEATS,
    REPLACE,
    RETRAIN_STEPS,
    SCALE,
    SELECT,
    SHOW_COUNT,
    SHOW_OUT,
    SHOW_SOLVER,
    SHOW_TEST,
    SOLVER,
    STOP_TOL,
    TAIL,
    TEMPERATURE,
    TEST_SAMPLE,
    TEST_SEED,
    TESTS,
    TRAIN_BATCH,
    TRAIN_SEED,
    TRAIN_SIZE,
    TRAIN_TOL,
    WD,
    WIDTH,
    WORKDIR,
)


def train_cmd(workdir: Path = WORKDIR, dataset: Optional[str] = DATASET,
              data_dir: Optional[Path] = DATA_DIR, wd: Optional[float] = WD,
              train_tol: float = TRAIN_TOL, max_iter: int = MAX_ITER,
              download: bool = DOWNLOAD, bias: Optional[bool] = BIAS,
              classes: Optional[str] = CLASSES, model: str = MODEL,
              width: Optional[int] = WIDTH, protocol: Optional[str] = PROTOCOL,
              adam_steps: Optional[int] = ADAM_STEPS, adam_lr: Optional[float] = ADAM_LR,
              train_batch: int = TRAIN_BATCH, decay_epochs: str = DECAY_EPOCHS,
              train_size: Optional[int] = TRAIN_SIZE,
              temperature: Optional[float] = TEMPERATURE, seed: Optional[int] = TRAIN_SEED,
              device: str = DEVICE, replace: bool = REPLACE):
    """Fit the model and write model.safetensors: the logistic model by L-BFGS then Newton; the
    CNN by its protocol. A folder holds one study: training on other data, or another model
    kind, is refused unless --replace."""
    report.report_train(ops.train(**locals()))


def ihvp_cmd(workdir: Path = WORKDIR, solver: Optional[str] = SOLVER,
             test_index: Optional[List[int]] = TESTS, test_sample: Optional[int] = TEST_SAMPLE,
             seed: Optional[int] = IHVP_SEED, preset: str = PRESET, scale: Optional[str] = SCALE,
             damping: Optional[float] = DAMPING, depth: Optional[int] = DEPTH,
             batch_size: Optional[int] = BATCH, repeats: Optional[int] = REPEATS,
             average_tail: Optional[float] = TAIL, stop_tol: Optional[float] = STOP_TOL,
             check_every: Optional[int] = CHECK_EVERY, cg_rtol: float = CG_RTOL,
             cg_max_iter: int = CG_MAX, cg_rank: int = CG_RANK, device: str = DEVICE):
    """Solve s_test = H⁻¹∇L(z_test) per test point; writes ihvp-<solver>.safetensors."""
    report.report_ihvp(ops.ihvp(**locals()))


IMPORT = typer.Option(None, "--import",
                      help="Instead: read another tool's scores, a \\[T, n] or \\[n, T] array "
                           "(.npy, .npz, .pt, .safetensors), as scores-NAME.safetensors.")
IMPORT_NAME = typer.Option(None, "--name", help="With --import: the method's name.")
ESTIMATOR = typer.Option(None, "--method",
                         help="Instead of inverse-HVPs, another estimator: grad-dot (TracIn, "
                              "one checkpoint) | grad-cos | representer | arnoldi | kfac | ekfac "
                              "| datainf | trak; writes scores-<method>[-knobs].safetensors.")
RANK = typer.Option(None, "--rank", help="arnoldi: eigenvectors kept \\[default: 100].")
PROJ_DIM = typer.Option(None, "--proj-dim", help="trak: projected dimension \\[default: 512].")
MODELS = typer.Option(None, "--models",
                      help="trak: models averaged, retrained on random halves \\[default: 1].")
EST_DAMPING = typer.Option(None, "--damping",
                           help="kfac, ekfac: added to wd \\[default: 1e-8, Kronfluence's]; "
                                "datainf: λ − wd \\[default: 0.1 × mean ‖g‖²/p].")
MEANING = typer.Option("removal", "--meaning",
                       help="With --import, what a score says: removal (predicted test-loss "
                            "change when the point is removed, as ours) | upweight (I_up,loss: "
                            "positive raises the test loss) | helpful (positive lowers it: "
                            "TRAK, TracIn).")


def score_cmd(workdir: Path = WORKDIR, solver: Optional[str] = SOLVER,
              test_index: Optional[List[int]] = TESTS, test_sample: Optional[int] = TEST_SAMPLE,
              seed: Optional[int] = TEST_SEED, device: str = DEVICE,
              import_file: Optional[Path] = IMPORT, name: Optional[str] = IMPORT_NAME,
              meaning: str = MEANING, method: Optional[str] = ESTIMATOR,
              rank: Optional[int] = RANK, proj_dim: Optional[int] = PROJ_DIM,
              models: Optional[int] = MODELS, damping: Optional[float] = EST_DAMPING):
    """Influence of every training point on each test loss: writes scores-<solver>.safetensors
    (--solver names inverse-HVPs: lissa, cg, exact, or e.g. exact-damping0.01); with --import,
    another tool's scores as scores-NAME.safetensors; with --method, another estimator's as
    scores-<method>.safetensors."""
    report.report_score(ops.score(**locals()))


def loo_cmd(workdir: Path = WORKDIR, solver: Optional[str] = LOO_SOLVER,
            test_index: Optional[List[int]] = TESTS, test_sample: Optional[int] = TEST_SAMPLE,
            seed: Optional[int] = LOO_SEED, select: str = SELECT, num: Optional[int] = NUM,
            method: Optional[str] = METHOD, tol: Optional[float] = LOO_TOL,
            rel_error: float = REL_ERROR,
            chunk_size: Optional[int] = CHUNK, max_steps: int = MAX_STEPS,
            retrain_steps: int = RETRAIN_STEPS, cluster: Optional[str] = CLUSTER,
            cluster_timeout: float = CLUSTER_TIMEOUT, device: str = DEVICE):
    """Retrain without each selected training point: writes loo.safetensors (the CNN's Adam
    retraining: loo-adam.safetensors)."""
    report.report_loo(ops.loo(**locals()))


def plot_cmd(workdir: Path = WORKDIR, solver: Optional[List[str]] = PLOT_SOLVERS,
             out: Optional[Path] = OUT, beside: Optional[List[Path]] = BESIDE,
             loo_method: Optional[str] = PLOT_LOO):
    """Predicted vs actual change in test loss (Figure 2): figures and metrics.json."""
    report.report_plot(ops.plot(**locals()))


CSV = typer.Option(None, "--csv",
                   help="Also write every training point's scores for the test point as CSV "
                        "(train index, label, influence, predicted change, actual change and "
                        "its bound where retrained), for a spreadsheet; '-': stdout.",
                   rich_help_panel="Figures")


def show_cmd(workdir: Path = WORKDIR, test_index: Optional[int] = SHOW_TEST,
             num: int = SHOW_COUNT, solver: Optional[str] = SHOW_SOLVER,
             out: Optional[Path] = SHOW_OUT, csv: Optional[str] = CSV):
    """The explanation: a test image beside its most helpful and most harmful training images
    (helpful: removing one raises the test loss; harmful: lowers it)."""
    from infl_cli.cli import output
    from infl_cli.errors import BadInput

    if csv == "-" and output.is_json():
        raise BadInput("--csv - and --json both write to stdout; give --csv a file")
    result = ops.show(workdir, test_index, num, solver, out, csv)
    if csv != "-":
        report.report_show(result)
