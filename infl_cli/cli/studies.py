"""The studies' commands: ``self-influence`` (which training labels to check first, and the
truth of it), ``mislabel`` (the paper's Figure 6) and ``attack`` (the paper's Figure 5).
Options checked before torch."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from infl_cli.api import ops
from infl_cli.cli import report
from infl_cli.cli.options import DEVICE, TEST_SAMPLE, TEST_SEED, TESTS, WORKDIR

SAMPLE = typer.Option(60, "--sample",
                      help="Points whose self-influence is certified independently (the "
                           "largest half and a random half): the measured and proven errors.")
CHECK = typer.Option(0, "--check",
                     help="Also retrain without each of this many points of largest "
                          "self-influence (certified LOO, the point its own test point) and "
                          "draw predicted against actual (0: no check; the paper's figure "
                          "size: 500).")
COUNT = typer.Option(20, "--num", "-n", help="Training points listed (and drawn) to check first.")
ORDER = typer.Option("self-influence", "--order",
                     help="Rank by: self-influence (predicted rise of the point's own loss "
                          "when removed) | koh (∇CE on both sides) | loss | loo-loss (training "
                          "loss + predicted own change).")
IMAGE_OUT = typer.Option(None, "--out", "-o",
                         help="Image of the points to check first \\[default: "
                              "WORKDIR/self-influence.png; square image features only].")
SAMPLE_SEED = typer.Option(None, "--seed",
                           help="Seed of the certified sample's random half \\[default: 0].")
CHECK_REL_ERROR = typer.Option(0.01, "--rel-error",
                               help="--check: drive each retraining until the certified error "
                                    "bound of its actual change is ≤ this × |change| (or the "
                                    "float64 floor); 0: stop once ‖∇R₋z‖ ≤ 1e-8 is certified.")
FLIP = typer.Option(0.1, "--flip", help="Fraction of training labels flipped to a uniformly "
                                        "drawn other class.")
SEEDS = typer.Option(5, "--seeds", help="Seeds (flips, random ordering); means and standard "
                                        "errors over them.")
CHECKS = typer.Option("0,0.05,0.1,0.15,0.2,0.25,0.3", "--checks",
                      help="Fractions of the training data checked, increasing, in [0, 1].")
ORDERINGS = typer.Option("self-influence,loss,random,loo-loss", "--orderings",
                         help="Orderings compared: self-influence, loss, random, loo-loss, koh.")
FIX_TOL = typer.Option(1e-8, "--tol",
                       help="Every retrained model certified to ‖∇R‖ ≤ this, rounding included.")
FIX_SAMPLE = typer.Option(60, "--sample",
                          help="Points per seed whose self-influence is certified "
                               "independently.")


def self_influence_cmd(workdir: Path = WORKDIR, sample: int = SAMPLE, check: int = CHECK,
                       num: int = COUNT, order: str = ORDER, seed: Optional[int] = SAMPLE_SEED,
                       rel_error: float = CHECK_REL_ERROR, out: Optional[Path] = IMAGE_OUT,
                       device: str = DEVICE):
    """Self-influence of every training point (I_up,loss(z, z), the logistic model): the
    labels to check first, as a table and images; with --check K, the truth of the K largest
    by certified leave-one-out."""
    record, rows, figure = ops.self_influence(**locals())
    report.report_self_influence(record, rows, order, figure)


def mislabel_cmd(workdir: Path = WORKDIR, flip: float = FLIP, seeds: int = SEEDS,
                 checks: str = CHECKS, orderings: str = ORDERINGS, tol: float = FIX_TOL,
                 sample: int = FIX_SAMPLE, device: str = DEVICE):
    """Find the mislabelled training data (the paper's Figure 6) on the model in WORKDIR
    (`infl train` first): flip labels, rank the training points, restore the checked ones,
    retrain (certified), and measure test accuracy (proven) and the flips found."""
    report.report_mislabel(ops.mislabel(**locals()))

BUDGET = typer.Option("1,2,10", "--budget",
                      help="Training points perturbed per attacked test point, one attack per "
                           "value (comma-separated; the paper: 1 and 2).")
EPS = typer.Option("0.5", "--eps",
                   help="L∞ radius of each perturbation in the input's own units (pixels "
                        "0..255, clipped to that range); comma-separated values sweep ε (the "
                        "paper's: 0.5, i.e. 0.5/255 of [0, 1]).")
ATTACK_STEPS = typer.Option(10, "--steps",
                            help="Projected signed-gradient steps, the influence recomputed "
                                 "after each.")
STEP_SIZE = typer.Option(None, "--step-size",
                         help="Each step's size as a fraction of ε \\[default: 2.5/steps].")
ATTACK_TOL = typer.Option(1e-8, "--tol",
                          help="Every retrained model certified to ‖∇R‖ ≤ this, rounding "
                               "included (then driven to its float64 floor where a verdict is "
                               "not proven).")


def attack_cmd(workdir: Path = WORKDIR, test_index: Optional[List[int]] = TESTS,
               test_sample: Optional[int] = TEST_SAMPLE, seed: Optional[int] = TEST_SEED,
               budget: str = BUDGET, eps: str = EPS, steps: int = ATTACK_STEPS,
               step_size: Optional[float] = STEP_SIZE, tol: float = ATTACK_TOL,
               device: str = DEVICE):
    """The paper's training-set attack (Figure 5) on the logistic model in WORKDIR: perturb the
    most influential training images of each correctly classified test point along I_pert,loss,
    retrain (certified), and prove each prediction flipped or not; beside random ±ε signs."""
    report.report_attack(ops.attack(**locals()))
