"""The ``infl`` command line: a thin Typer layer over :mod:`infl_cli.stages`."""

from __future__ import annotations

import signal
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import artifacts as art
from . import ihvp as ihvp_mod
from . import loo as loo_mod
from . import device as device_mod
from . import selection, stages
from .engines import ModelSpec, engine_for, validate_spec
from .data import DATASETS
from .errors import BadInput, InflError, Interrupted
from .lock import workdir_lock
from .progress import console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Explain a prediction through its training data with influence functions "
                       "(Koh & Liang 2017) and check it by leave-one-out retraining.")

WORKDIR = typer.Option(Path("artifacts"), "--workdir", "-w", help="Work folder for artifacts.")
DATASET = typer.Option("mnist", "--dataset",
                       help=f"Dataset: {' | '.join(DATASETS)} | PATH.npz (X_train, y_train, "
                            "X_test, y_test, optional class_names).")
BIAS = typer.Option(False, "--bias/--no-bias",
                    help="Append a constant feature 1 (an intercept), regularised like the "
                         "weights.")
DATA_DIR = typer.Option(None, "--data-dir",
                        help="Folder holding MNIST/raw/ (default: $INFL_DATA_DIR, else a per-user "
                             "cache folder; downloaded there when missing).")
WD = typer.Option(None, "--wd",
                  help="Weight decay: per-point loss CE + (wd/2)·‖θ‖² (the CNN: weights only) "
                       "\\[default: 0.01; --model cnn: 0.001].")
MODEL = typer.Option("logreg", "--model",
                     help="logreg (multinomial logistic regression) | cnn (Koh's All-CNN-C on "
                          "small MNIST: 5,500 training images).")
WIDTH = typer.Option(None, "--width", help="CNN channels per convolution \\[default: 8: the "
                                           "paper's 2,616 parameters; 2: 312].")
PROTOCOL = typer.Option(None, "--protocol",
                        help="CNN: exact (Adam warm-up, then Newton to ‖∇R‖ ≤ 1e-10; exact "
                             "IHVP; Newton LOO) | paper (Adam as the authors, damping 0.01, "
                             "LOO by 30,000 more Adam steps) \\[default: exact].")
ADAM_STEPS = typer.Option(None, "--adam-steps",
                          help="CNN Adam steps: the warm-up (exact) or all of training (paper) "
                               "\\[default: exact 10000; paper 500000].")
ADAM_LR = typer.Option(None, "--adam-lr",
                       help="CNN Adam learning rate \\[default: exact 0.001; paper 0.0001].")
TRAIN_BATCH = typer.Option(500, "--train-batch", help="CNN Adam mini-batch.")
TRAIN_SIZE = typer.Option(None, "--train-size",
                          help="CNN: train on the first N images of its training set (small "
                               "MNIST's order; mnist-tiny's) for scaled-down runs "
                               "\\[default: all of it].")
DECAY_EPOCHS = typer.Option("10000,20000", "--decay-epochs",
                            help="CNN Adam: the learning rate ×0.1 after the first epoch, ×0.01 "
                                 "after the second (the paper's).")
TRAIN_TOL = typer.Option(1e-10, "--train-tol",
                         help="Newton until the float64 ‖∇R‖ ≤ this; then polished on the exact "
                              "gradient to its certified floor.")
MAX_ITER = typer.Option(5000, "--max-iter", help="Most L-BFGS iterations in training.")
DOWNLOAD = typer.Option(True, "--download/--no-download", help="Download MNIST when missing.")
SOLVER = typer.Option(None, "--solver",
                      help="IHVP solver: lissa | cg | exact \\[default: lissa; --model cnn: "
                           "exact; its paper protocol: cg].")
TESTS = typer.Option(None, "--test-index", "-t",
                     help="Test index; repeat for several \\[default: ihvp, run: 8; score: every "
                          "test point of the inverse-HVPs; loo: every test point scored].")
TEST_SAMPLE = typer.Option(None, "--test-sample",
                           help="Instead of -t: this many test points drawn at random with "
                                "--seed (reproducible).")
SEED = typer.Option(None, "--seed",
                    help="Seed of everything random: --test-sample, --select random, LiSSA's "
                         "batches \\[default: 0].")
PRESET = typer.Option("default", "--preset",
                      help="LiSSA presets: default (tail-averaged, auto scale) | paper "
                           "(scale 25, depth 5000, batch 1, 10 repeats).")
SCALE = typer.Option(None, "--scale", help="LiSSA scale, or 'auto' \\[default: auto; paper: 25].")
DAMPING = typer.Option(None, "--damping",
                       help="LiSSA: its recursion's damping in [0, 1); cg and exact: λ, solving "
                            "(H + λI)s = g (the CNN's) \\[default: 0; CNN paper protocol: "
                            "0.01].")
DEPTH = typer.Option(None, "--depth",
                     help="LiSSA steps per repeat, at most \\[default: 10000; paper: 5000].")
BATCH = typer.Option(None, "--batch-size", help="LiSSA mini-batch \\[default: 500; paper: 1].")
REPEATS = typer.Option(None, "--repeats", help="LiSSA repeats averaged \\[default: 1; paper: 10].")
TAIL = typer.Option(None, "--average-tail",
                    help="Fraction of the last LiSSA steps averaged \\[default: 0.5; paper: 0].")
STOP_TOL = typer.Option(None, "--stop-tol",
                        help="LiSSA stops a repeat once its estimate changes by ≤ this "
                             "(relative) at two checks in a row; 0: never \\[default: 1e-3; "
                             "paper: 0].")
CHECK_EVERY = typer.Option(None, "--check-every",
                           help="LiSSA steps between checks of the estimate \\[default: 100].")
CG_RTOL = typer.Option(1e-10, "--cg-rtol", help="CG stops at ‖Hx − g‖/‖g‖ ≤ this.")
CG_MAX = typer.Option(1000, "--cg-max-iter", help="Most CG iterations.")
CG_RANK = typer.Option(64, "--cg-rank",
                       help="Rank of the subspace on which CG's preconditioner is the exact "
                            "Hessian (0: plain, unpreconditioned CG).")
LOO_SOLVER = typer.Option(None, "--solver",
                          help="Scores that pick the points \\[default: most accurate present: "
                               "exact, cg, lissa].")
SELECT = typer.Option("top", "--select",
                      help="Training points retrained without: top (the k largest |I| of each "
                           "test point) | random (k drawn with --seed) | all.")
NUM = typer.Option(None, "--num", "-k",
                   help="Training points per test point (top) or in all (random); not used by "
                        "--select all \\[default: 500, or n when the training set is smaller].")
METHOD = typer.Option(None, "--method",
                      help="Retraining: newton (batched; certified for the logistic model) | "
                           "lbfgs (logistic) | adam (CNN: the paper's) \\[default: newton; CNN "
                           "paper protocol: adam].")
RETRAIN_STEPS = typer.Option(30_000, "--retrain-steps",
                             help="--method adam: Adam steps from the trained model, its state "
                                  "restored, at the final learning rate (the paper's 30,000).")
LOO_TOL = typer.Option(None, "--tol",
                       help="Every retraining must reach ‖∇R₋z‖ ≤ this (the logistic model: "
                            "certified, rounding included) \\[default: 1e-08; CNN: 1e-10].")
REL_ERROR = typer.Option(0.01, "--rel-error",
                         help="Drive each retraining until the certified error bound of its "
                              "actual change is ≤ this × |change| (or the float64 floor); 0: "
                              "stop at --tol.")
CHUNK = typer.Option(None, "--chunk-size",
                     help="Removals solved together (and checkpointed) \\[default: auto: 50 on "
                          "the CPU; on a GPU up to 1000, as its free memory allows].")
DEVICE = typer.Option("auto", "--device",
                      help="Where to compute: auto (the first CUDA device when torch sees one, "
                           "else the CPU) | cpu | cuda | cuda:N. Artifacts are the same "
                           "files on any device.")
MAX_STEPS = typer.Option(10, "--max-steps",
                         help="Newton steps before a removal falls back (the logistic model: "
                              "to Newton-CG on its exact Hessian; the CNN: to "
                              "Levenberg–Marquardt Newton on R₋z).")
CLUSTER = typer.Option(None, "--cluster",
                       help="Solve the LOO chunks on Dask: local:N (a local cluster of N "
                            "one-thread worker processes) or tcp://HOST:PORT (a running "
                            "scheduler); needs pip install -e '.\\[cluster]'.")
CLUSTER_TIMEOUT = typer.Option(10.0, "--cluster-timeout",
                               help="Seconds to reach the scheduler (or start the local "
                                    "cluster) before giving up.")
PLOT_SOLVERS = typer.Option(None, "--solver",
                            help="Panels to draw, repeatable \\[default: the scores LOO used].")
BESIDE = typer.Option(None, "--beside",
                      help="Another work folder whose panel goes to the right of these, "
                           "repeatable: e.g. the CNN's, for the paper's three panels.")
PLOT_LOO = typer.Option(None, "--loo",
                        help="Which retraining to plot: newton | lbfgs | adam \\[default: "
                             "loo.safetensors, else loo-adam.safetensors].")
OUT = typer.Option(None, "--out", "-o",
                   help="Figure path (.png; a .pdf copy goes beside it) \\[default: "
                        "WORKDIR/fig2_middle.png for one test point; fig2_tests.png for several, "
                        "fig2_random.png, fig2_all.png].")
SHOW_TEST = typer.Option(None, "--test-index", "-t",
                         help="Test point to explain \\[default: the first one scored].")
SHOW_COUNT = typer.Option(8, "--num", "-n", help="Helpful and harmful training images shown.")
SHOW_SOLVER = typer.Option(None, "--solver",
                           help="Scores to rank by \\[default: most accurate present].")
SHOW_OUT = typer.Option(None, "--out", "-o",
                        help="Image path \\[default: WORKDIR/explain-<test index>.png].")


def _lissa_settings(preset, scale, depth, batch_size, repeats, seed, average_tail, stop_tol,
                    check_every):
    """LiSSA's settings (its ``--damping`` is applied by the stage, once the solver is known)."""
    if preset not in ihvp_mod.PRESETS:
        raise BadInput(f"unknown preset {preset!r}; choose one of: {', '.join(ihvp_mod.PRESETS)}")
    s = ihvp_mod.LissaSettings.paper() if preset == "paper" else ihvp_mod.LissaSettings()
    if scale is not None:
        if scale.strip().lower() == "auto":
            s.scale = "auto"
        else:
            try:
                s.scale = float(scale)
            except ValueError:
                raise BadInput(f"--scale must be 'auto' or a number, got {scale!r}") from None
    for name, value in (("depth", depth), ("batch_size", batch_size),
                        ("repeats", repeats), ("seed", seed), ("average_tail", average_tail),
                        ("stop_tol", stop_tol), ("check_every", check_every)):
        if value is not None:
            setattr(s, name, value)
    return s


def _device(spec: str, cluster: str | None = None):
    """The device ``--device`` names; with ``--cluster``, ``auto`` is the CPU (the workers')."""
    if cluster is not None and spec.strip().lower() == "auto":
        spec = "cpu"
    return device_mod.resolve(spec)


def _tests(test_index, test_sample, seed) -> stages.TestChoice:
    return stages.TestChoice(list(test_index) if test_index else None, test_sample, seed or 0)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _table(title: str, rows: dict) -> None:
    table = Table(title=title, show_header=False)
    for key, value in rows.items():
        table.add_row(key, _fmt(value))
    console.print(table)


def _columns(title: str, header: list, rows: list) -> None:
    table = Table(title=title)
    for name in header:
        table.add_column(name)
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    console.print(table)


def _listing(values, fmt: str = "{:.2e}") -> str:
    """All values when there are few, else the median and the largest."""
    values = list(values)
    if len(values) <= 6:
        return ", ".join(fmt.format(v) for v in values)
    ordered = sorted(values)
    return f"median {fmt.format(ordered[len(ordered) // 2])}, max {fmt.format(ordered[-1])}"


@contextmanager
def _writing(workdir: Path):
    """Hold the work folder's lock while a command writes into it (one writer at a time)."""
    with workdir_lock(workdir, warn=lambda message: console.print(
            f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)):
        yield


def _report_train(rec):
    spec = rec["settings"].get("model", {"kind": "logreg"})
    rows = {"dataset": rec["settings"]["dataset"]
            + (" (+ bias feature)" if rec["settings"].get("bias") else ""),
            "model": rec.get("model", "multinomial logistic regression"),
            "n_train": rec["n_train"]}
    if spec["kind"] == "logreg":
        rows["classes × features"] = f"{rec.get('n_classes', 10)} × {rec.get('n_features', 784)}"
    rows.update({"train loss": rec["train_loss"], "‖∇R‖ (float64)": rec["grad_norm"]})
    if spec["kind"] == "logreg":
        rows.update({"‖∇R‖ ≤ (certified)": rec.get("grad_norm_certified", "–"),
                     "rounding model": rec.get("rounding_model", "–"),
                     "floor: rounding bound of ‖∇R‖": rec.get("grad_rounding", "–"),
                     "L-BFGS iterations": rec["lbfgs_iterations"],
                     "Newton iterations": rec["newton_iterations"]})
    else:
        rows.update({"Adam steps": rec["adam_steps"], "Newton steps": rec.get("newton_steps", "–")})
        if "lambda_min" in rec:
            rows.update({"λ_min(H) (computed)": rec["lambda_min"],
                         "λ_max(H) (computed)": rec["lambda_max"],
                         "negative eigenvalues": rec["negative_eigenvalues"],
                         "local minimum": "yes (‖∇R‖ ≤ tol, λ_min > 0)"
                         if rec.get("local_minimum") else
                         "no claim (‖∇R‖ above tol)" if not rec.get("converged", True) else
                         "no claim (λ_min ≤ 0)"})
    rows.update({"train accuracy": rec["train_accuracy"], "test accuracy": rec["test_accuracy"],
                 "device": rec.get("device", "cpu"), "seconds": rec["seconds"]})
    _table("train", rows)


def _report_ihvp(rec):
    r = rec["report"]
    tests = rec["settings"]["test_indices"]
    _table(f"ihvp ({rec['settings']['solver']})", {
        **({"test index" if len(tests) == 1 else "test indices": ", ".join(map(str, tests))}
           if len(tests) <= 6 else {"test points": len(tests)}),
        "relative residual ‖Hs−g‖/‖g‖": _listing(r["relative_residual"]),
        ("relative error ‖s−s*‖/‖s*‖ ≤ (proven: λ_min ≥ wd)"
         if r.get("error_bound_certified", True) else
         "relative error ‖s−s*‖/‖s*‖ (estimate: computed λ_min)"):
            _listing(r["error_bound_relative"]),
        "iterations": r["iterations"], "HVPs": r["hvps"], "seconds": r["seconds"],
        "device": rec.get("device", "cpu"),
        **({"scale": r["scale_used"], "steps per repeat": r["steps_per_repeat"],
            "stopped early": r["stopped_early"]} if "scale_used" in r else {}),
        **({"preconditioner seconds": r["preconditioner_seconds"]}
           if "preconditioner_seconds" in r else {})})


def _report_score(rec):
    tests = rec["settings"]["test_indices"]
    _table(f"score ({rec['settings']['solver']})", {
        **({"test index" if len(tests) == 1 else "test indices": ", ".join(map(str, tests))}
           if len(tests) <= 6 else {"test points": len(tests)}),
        "n_train": rec["n_train"], "seconds": rec["seconds"], "device": rec.get("device", "cpu")})


def _report_loo(rec):
    s = rec["settings"]
    tests = rec["test_indices"]
    kind = rec.get("error_kind", "certified")
    rows = {
        **({"test index" if len(tests) == 1 else "test indices": ", ".join(map(str, tests))}
           if len(tests) <= 6 else {"test points": len(tests)}),
        "selection": s["select"] + ("" if s["k"] is None else f", k = {s['k']}"),
        "removals (union)": rec["n_removals"], "method": s["method"],
    }
    if kind == "certified":
        rows.update({f"certified ‖∇R₋z‖ ≤ {s['tol']:g}": f"{rec['certified']} of {rec['n_removals']}",
                     "max ‖∇R₋z‖ (proven bound)": rec["max_grad_norm_bound"]})
        if s["rel_error"] > 0:
            rows[f"error bound ≤ {s['rel_error']:g}·|change|"] = \
                f"{rec['pairs_within_target']} of {rec['pairs_selected']} pairs"
        rows.update({
            "worst error bound / |change|": rec["worst_bound_ratio"],
            "largest error bound (certified)": rec["max_error_bound"],
            "baseline error, from Ŵ": _listing(rec["baseline_error"] or []),
            "Newton-CG fallbacks": rec["fallbacks"],
            "float64 passes (certifying)": rec["float64_passes"],
            "float32 correction passes": rec["float32_passes"]})
    else:
        rows[f"‖∇R₋z‖ ≤ {s['tol']:g} (float64, not a proof)"] = \
            f"{rec['certified']} of {rec['n_removals']}"
        rows["max ‖∇R₋z‖ (float64)"] = rec["max_grad_norm"]
        if kind == "estimate":
            rows.update({
                "smallest λ_min of the last Newton matrices (computed)":
                    rec.get("lambda_min_smallest", "–"),
                "every Newton matrix positive definite":
                    rec.get("all_newton_matrices_positive_definite", "–"),
                "largest error estimate (first order)": rec["max_error_bound"],
                "Levenberg–Marquardt Newton fallbacks (R₋z's own Hessian)": rec["fallbacks"]})
        else:
            rows["Adam steps per retraining"] = s.get("retrain_steps", "–")
    rows.update({
        "workers": rec["workers"] if not rec.get("cluster") else
        f"{rec['workers']} ({rec['cluster']}; scatter {rec['scatter_seconds']:.1f} s)",
        "removals per second": rec["removals_per_second"] or "–",
        "device": rec.get("device", "cpu") + (f", peak {rec['peak_device_gib']:.1f} GiB"
                                             if rec.get("peak_device_gib") else ""),
        "set-up seconds" if kind != "certified" else "Hessian seconds": rec["factor_seconds"],
        "seconds": rec["seconds"]})
    _table("loo", rows)
    if kind == "certified" and rec["below_target"]:
        _columns(f"removals whose bound stays above {s['rel_error']:g}·|change| (at the float64 "
                 "floor)", ["test", "train index", "actual change", "error bound"],
                 [(b["test_index"], b["train_index"], b["actual_change"], b["error_bound"])
                  for b in rec["below_target"]])


def _report_plot(metrics):
    for solver, m in metrics["panels"].items():
        rows = {"Pearson R": m["pearson_r"], "Spearman ρ": m["spearman_rho"],
                "slope": m["slope"], "intercept": m["intercept"], "pairs": m["k"]}
        if len(m["per_test"]) > 1:
            rows.update({"median R over test points": m["median_pearson_r"],
                         "worst R": f"{m['worst_pearson_r']:.6g} (test {m['worst_test_index']})",
                         "median ρ": m["median_spearman_rho"], "worst ρ": m["worst_spearman_rho"]})
        rows["figure"] = metrics["figure"] + (f", {metrics['summary_figure']}"
                                              if "summary_figure" in metrics else "")
        _table(f"plot ({solver})", rows)
        if "bands" in m:
            _columns(f"agreement by effect size ({solver})", ["band", "pairs", "Pearson R",
                                                                 "Spearman ρ"],
                     [(b["band"], b["k"], b["pearson_r"], b["spearman_rho"]) for b in m["bands"]])


def _report_show(result):
    t = result["test"]
    rows = [(r["kind"], r["rank"], r["train_index"], r["label_name"], r["predicted_change"],
             "–" if r["actual_change"] is None else
             f"{r['actual_change']:.6g} ± {r['error_bound']:.1e}") for r in result["rows"]]
    figure = f"; {result['figure']}" if result["figure"] else ""
    _columns(f"test {t['test_index']}: label {t['label_name']}, predicted {t['predicted_name']} "
             f"(p(label) = {t['probability_of_label']:.3f}){figure}",
             ["", "rank", "train index", "label", "predicted change", "actual change"], rows)


def _spec(model, width, protocol, adam_steps, adam_lr, train_batch, decay_epochs,
          seed, train_size=None) -> ModelSpec:
    """The model settings of ``train`` and ``run`` (checked: one line for each bad value)."""
    try:
        epochs = tuple(int(e) for e in decay_epochs.split(","))
    except ValueError:
        raise BadInput(f"--decay-epochs must be two integers A,B, got {decay_epochs!r}") from None
    spec = ModelSpec(kind=model, width=8 if width is None else width,
                     protocol=protocol or "exact", adam_steps=adam_steps, adam_lr=adam_lr,
                     train_batch=train_batch, decay_epochs=epochs, seed=seed or 0,
                     train_size=train_size)
    validate_spec(spec, protocol_given=protocol is not None, width_given=width is not None)
    return spec


@app.command("train")
def train_cmd(workdir: Path = WORKDIR, dataset: str = DATASET,
              data_dir: Optional[Path] = DATA_DIR, wd: Optional[float] = WD,
              train_tol: float = TRAIN_TOL, max_iter: int = MAX_ITER,
              download: bool = DOWNLOAD, bias: bool = BIAS, model: str = MODEL,
              width: Optional[int] = WIDTH, protocol: Optional[str] = PROTOCOL,
              adam_steps: Optional[int] = ADAM_STEPS, adam_lr: Optional[float] = ADAM_LR,
              train_batch: int = TRAIN_BATCH, decay_epochs: str = DECAY_EPOCHS,
              train_size: Optional[int] = TRAIN_SIZE, seed: Optional[int] = SEED,
              device: str = DEVICE):
    """Fit the model and write model.safetensors: the logistic model by L-BFGS then Newton; the
    CNN by its protocol."""
    spec = _spec(model, width, protocol, adam_steps, adam_lr, train_batch, decay_epochs, seed,
                 train_size)
    stages.validate_train(wd, train_tol, spec)
    where = _device(device)
    with _writing(workdir):
        _report_train(stages.run_train(workdir, dataset, data_dir, wd, train_tol, max_iter,
                                       download, bias=bias, device=where, spec=spec))


@app.command("ihvp")
def ihvp_cmd(workdir: Path = WORKDIR, solver: Optional[str] = SOLVER,
             test_index: Optional[List[int]] = TESTS, test_sample: Optional[int] = TEST_SAMPLE,
             seed: Optional[int] = SEED, preset: str = PRESET, scale: Optional[str] = SCALE,
             damping: Optional[float] = DAMPING, depth: Optional[int] = DEPTH,
             batch_size: Optional[int] = BATCH, repeats: Optional[int] = REPEATS,
             average_tail: Optional[float] = TAIL, stop_tol: Optional[float] = STOP_TOL,
             check_every: Optional[int] = CHECK_EVERY, cg_rtol: float = CG_RTOL,
             cg_max_iter: int = CG_MAX, cg_rank: int = CG_RANK, device: str = DEVICE):
    """Solve s_test = H⁻¹∇L(z_test) per test point; writes ihvp-<solver>.safetensors."""
    lissa = _lissa_settings(preset, scale, depth, batch_size, repeats, seed, average_tail,
                            stop_tol, check_every)
    cg = ihvp_mod.CgSettings(cg_rtol, cg_max_iter, cg_rank)
    stages.validate_ihvp(solver, lissa, cg, damping)
    where = _device(device)
    with _writing(workdir):
        _report_ihvp(stages.run_ihvp(workdir, solver, _tests(test_index, test_sample, seed),
                                     lissa, cg, device=where, damping=damping))


@app.command("score")
def score_cmd(workdir: Path = WORKDIR, solver: Optional[str] = SOLVER,
              test_index: Optional[List[int]] = TESTS, test_sample: Optional[int] = TEST_SAMPLE,
              seed: Optional[int] = SEED, device: str = DEVICE):
    """Influence of every training point on each test loss: writes scores-<solver>.safetensors
    (``--solver`` names inverse-HVPs: lissa, cg, exact, or e.g. exact-damping0.01)."""
    where = _device(device)
    with _writing(workdir):
        _report_score(stages.run_score(workdir, solver, _tests(test_index, test_sample, seed),
                                       device=where))


def _loo_settings(method, tol, rel_error, chunk_size, max_steps,
                  retrain_steps) -> loo_mod.LooSettings:
    return loo_mod.LooSettings(method=method, tol=tol, rel_error=rel_error,
                               chunk_size=chunk_size, max_steps=max_steps,
                               retrain_steps=retrain_steps)


@app.command("loo")
def loo_cmd(workdir: Path = WORKDIR, solver: Optional[str] = LOO_SOLVER,
            test_index: Optional[List[int]] = TESTS, test_sample: Optional[int] = TEST_SAMPLE,
            seed: Optional[int] = SEED, select: str = SELECT, num: Optional[int] = NUM,
            method: Optional[str] = METHOD, tol: Optional[float] = LOO_TOL,
            rel_error: float = REL_ERROR,
            chunk_size: Optional[int] = CHUNK, max_steps: int = MAX_STEPS,
            retrain_steps: int = RETRAIN_STEPS, cluster: Optional[str] = CLUSTER,
            cluster_timeout: float = CLUSTER_TIMEOUT, device: str = DEVICE):
    """Retrain without each selected training point: writes loo.safetensors (the CNN's Adam
    retraining: loo-adam.safetensors)."""
    settings = _loo_settings(method, tol, rel_error, chunk_size, max_steps, retrain_steps)
    stages.validate_loo(settings, select, num)
    where = _device(device, cluster)
    stages.validate_cluster(cluster, cluster_timeout, where)
    with _writing(workdir):
        _report_loo(stages.run_loo(workdir, solver, _tests(test_index, test_sample, seed),
                                   select, num, seed or 0, settings, cluster=cluster,
                                   cluster_timeout=cluster_timeout, device=where))


@app.command("plot")
def plot_cmd(workdir: Path = WORKDIR, solver: Optional[List[str]] = PLOT_SOLVERS,
             out: Optional[Path] = OUT, beside: Optional[List[Path]] = BESIDE,
             loo_method: Optional[str] = PLOT_LOO):
    """Predicted vs actual change in test loss (Figure 2): figures and metrics.json."""
    with _writing(workdir):
        _report_plot(stages.run_plot(workdir, solver, out, beside or [], loo_method))


@app.command("show")
def show_cmd(workdir: Path = WORKDIR, test_index: Optional[int] = SHOW_TEST,
             num: int = SHOW_COUNT, solver: Optional[str] = SHOW_SOLVER,
             out: Optional[Path] = SHOW_OUT):
    """The explanation: a test image beside its most helpful and most harmful training images."""
    _report_show(stages.run_show(workdir, test_index, num, solver, out))


@app.command("run")
def run_cmd(workdir: Path = WORKDIR, dataset: str = DATASET,
            data_dir: Optional[Path] = DATA_DIR, wd: Optional[float] = WD,
            train_tol: float = TRAIN_TOL, max_iter: int = MAX_ITER, download: bool = DOWNLOAD,
            bias: bool = BIAS, model: str = MODEL, width: Optional[int] = WIDTH,
            protocol: Optional[str] = PROTOCOL, adam_steps: Optional[int] = ADAM_STEPS,
            adam_lr: Optional[float] = ADAM_LR, train_batch: int = TRAIN_BATCH,
            decay_epochs: str = DECAY_EPOCHS, train_size: Optional[int] = TRAIN_SIZE,
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
            out: Optional[Path] = OUT, device: str = DEVICE):
    """All stages in order, skipping those whose artifact is up to date, then `show` for the
    first test point."""
    spec = _spec(model, width, protocol, adam_steps, adam_lr, train_batch, decay_epochs, seed,
                 train_size)
    engine = engine_for(spec.kind)
    solver = solver or engine.default_solver(spec)
    lissa = _lissa_settings(preset, scale, depth, batch_size, repeats, seed, average_tail,
                            stop_tol, check_every)
    cg = ihvp_mod.CgSettings(cg_rtol, cg_max_iter, cg_rank)
    settings = _loo_settings(method or engine.default_method(spec),
                             engine.default_tol if tol is None else tol, rel_error, chunk_size,
                             max_steps, retrain_steps)
    # every setting is checked before any stage runs: a typo must not cost a training run
    stages.validate_train(wd, train_tol, spec)
    stages.validate_ihvp(solver, lissa, cg, damping)
    engine.check_solver(solver, stages.spec_damping(spec, solver, damping))
    stages.validate_loo(settings, select, num)
    engine.check_method(settings.method)
    where = _device(device, cluster)
    stages.validate_cluster(cluster, cluster_timeout, where)
    if cluster is not None and spec.kind != "logreg":
        raise BadInput("--cluster solves the logistic model's LOO chunks; the CNN's run in "
                       "this process (on a GPU: --device cuda)")
    with _writing(workdir):
        _run_all(workdir, dataset, data_dir, wd, train_tol, max_iter, download, bias, solver,
                 _tests(test_index, test_sample, seed), seed or 0, lissa, cg, select, num,
                 settings, out, cluster, cluster_timeout, where, spec, damping)


def _run_all(workdir, dataset, data_dir, wd, train_tol, max_iter, download, bias, solver, tests,
             seed, lissa, cg, select, num, settings, out, cluster=None, cluster_timeout=None,
             device=None, spec=None, damping=None):
    from .data import load_dataset

    times = {}
    t0 = time.perf_counter()
    spec = spec or ModelSpec()
    device = device or device_mod.resolve("cpu")
    device_mod.check_precision()
    device_mod.reset_peak(device)
    engine = engine_for(spec.kind)
    full = load_dataset(dataset, data_dir, download, bias)
    data = engine.training_data(full, spec).to(device)
    chosen = stages.ihvp_tests(tests, data, engine)
    num = selection.resolve_k(num, data.n_train)
    selection.check_selection(select, num, data.n_train)
    settings = stages.resolve_chunk_size(settings, device, engine, spec, data)
    lam = stages.spec_damping(spec, solver, damping)
    label = stages.solver_label(solver, lam)
    if solver == "lissa" and damping is not None:
        lissa = replace(lissa, damping=damping)
    times["load data"] = time.perf_counter() - t0

    def stage(name, path, stage_settings, inputs, fn, report):
        start = time.perf_counter()
        if stages.is_current(path, stage_settings, inputs):
            console.print(f"[dim]{name}: {path} is up to date, skipped[/dim]")
            rec = art.read_record(path)
        else:
            rec = fn()
            report(rec)
        times[name] = time.perf_counter() - start
        return rec

    mrec = stage("train", workdir / art.MODEL,
                 stages.train_settings(dataset, data_dir, wd, train_tol, bias, spec),
                 {"data": data.fingerprint},
                 lambda: stages.run_train(workdir, dataset, data_dir, wd, train_tol, max_iter,
                                          download, data=full, bias=bias, device=device,
                                          spec=spec),
                 _report_train)
    loaded = stages.load_model(workdir, full, device)
    fixed = stages.TestChoice(chosen)
    irec = stage("ihvp", workdir / art.ihvp_name(label),
                 stages.ihvp_settings(solver, chosen, lissa, cg, lam),
                 {"model": mrec["fingerprint"]},
                 lambda: stages.run_ihvp(workdir, solver, fixed, lissa, cg, loaded,
                                         damping=damping), _report_ihvp)
    srec = stage("score", workdir / art.scores_name(label),
                 stages.score_settings(label, chosen),
                 {"model": mrec["fingerprint"], "ihvp": irec["fingerprint"]},
                 lambda: stages.run_score(workdir, label, fixed, loaded), _report_score)
    stage("loo", workdir / art.loo_name(settings.method, spec.kind),
          stages.loo_settings(label, chosen, select, num, seed, settings),
          {"model": mrec["fingerprint"], "scores": srec["fingerprint"]},
          lambda: stages.run_loo(workdir, label, fixed, select, num, seed, settings, loaded,
                                 cluster=cluster, cluster_timeout=cluster_timeout),
          _report_loo)
    start = time.perf_counter()
    _report_plot(stages.run_plot(workdir, [label], out, loo_method=settings.method))
    times["plot"] = time.perf_counter() - start
    start = time.perf_counter()
    _report_show(stages.run_show(workdir, chosen[0], 8, label, None))
    times["show"] = time.perf_counter() - start
    times["total"] = time.perf_counter() - t0
    _table(f"seconds per stage ({device_mod.describe(device)})", times)
    peak = device_mod.peak_gib(device)
    art.write_json(workdir / art.TIMINGS, {**times, "device": device_mod.describe(device),
                                           "peak_device_gib": peak})


# Typer may vendor its own click: take the exception classes from Typer itself.
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _interrupt(signum, frame):
    raise Interrupted()


def main() -> None:
    """Entry point: every error ends as one line on stderr and a non-zero exit.

    Ctrl-C and SIGTERM raise :class:`Interrupted` wherever the command is: it unwinds through
    the atomic writes (no half-written file stays behind) and ends as one line, exit 130.
    """
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    # torch.func's first use warns of a torch-internal deprecation: not the user's business
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    try:
        code = app(standalone_mode=False)
    except InflError as exc:
        _fail(str(exc), exc.EXIT_CODE)
    except Interrupted as exc:
        _fail(str(exc), Interrupted.EXIT_CODE)
    except (typer.Abort, KeyboardInterrupt):
        _fail(Interrupted.DEFAULT, Interrupted.EXIT_CODE)
    except _CLICK_ERROR as exc:
        if exc.format_message():  # empty for the help shown when no command is given
            _fail(exc.format_message(), exc.exit_code)
        sys.exit(exc.exit_code)
    except OSError as exc:  # unwritable folder, full disk, unreadable file
        _fail(str(exc), 1)
    except MemoryError:
        _fail("out of memory; use a smaller --chunk-size", 1)
    except Exception as exc:  # a bug: still one line, with its type, and a non-zero exit
        _fail(f"{type(exc).__name__}: {exc}", 2, prefix="internal error")
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int, prefix: str = "error") -> None:
    console.print(f"[red]{prefix}:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)
