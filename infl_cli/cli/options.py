"""The command line's options: one place for their names, defaults and help texts (the
``[default: …]`` brackets are escaped: rich would swallow them as markup). Typer and the
settings' names only: importing this never waits for torch."""

from __future__ import annotations

from pathlib import Path

import typer

from infl_cli.settings import DATASETS

WORKDIR = typer.Option(Path("artifacts"), "--workdir", "-w", help="Work folder for artifacts.",
                       rich_help_panel="Work folder and data")
DATASET = typer.Option(None, "--dataset",
                       help=f"Dataset: {' | '.join(DATASETS)} | PATH.npz (X_train, y_train, "
                            "X_test, y_test, optional class_names) \\[default: the work "
                            "folder's model's, else mnist].",
                       rich_help_panel="Work folder and data")
BIAS = typer.Option(None, "--bias/--no-bias",
                    help="Append a constant feature 1 (an intercept), regularised like the "
                         "weights \\[default: the work folder's model's, else no].",
                    show_default=False,
                    rich_help_panel="Work folder and data")
CLASSES = typer.Option(None, "--classes",
                       help="Keep only these classes, e.g. 1,7 (the paper's binary MNIST: the "
                            "first listed is class 0, y = +1); labels renumbered in this order "
                            "\\[default: the work folder's model's, else all].",
                       rich_help_panel="Work folder and data")
DATA_DIR = typer.Option(None, "--data-dir",
                        help="Folder holding MNIST/raw/ (default: $INFL_DATA_DIR, else a per-user "
                             "cache folder; downloaded there when missing).",
                        rich_help_panel="Work folder and data")
WD = typer.Option(None, "--wd",
                  help="Weight decay: per-point loss CE + (wd/2)·‖θ‖² (the CNN: weights only) "
                       "\\[default: 0.01; --model cnn: 0.001].",
                  rich_help_panel="Model")
MODEL = typer.Option("logreg", "--model",
                     help="logreg (multinomial logistic regression) | cnn (Koh's All-CNN-C on "
                          "small MNIST: 5,500 training images) | svm (a linear SVM, certified "
                          "by its duality gap; binary: --classes A,B) | smooth-hinge (the "
                          "smooth-hinge model trained at --temperature).",
                     rich_help_panel="Model")
TEMPERATURE = typer.Option(None, "--temperature",
                           help="svm: the smooth hinge's t at which influence is computed (0: "
                                "the hinge, H = wd·I) \\[default: 0]; smooth-hinge: the t it is "
                                "trained at \\[default: 0.1].",
                           rich_help_panel="Model")
WIDTH = typer.Option(None, "--width", help="CNN channels per convolution \\[default: 8: the "
                                           "paper's 2,616 parameters; 2: 312].",
                     rich_help_panel="Model")
PROTOCOL = typer.Option(None, "--protocol",
                        help="CNN: exact (Adam warm-up, then Newton to ‖∇R‖ ≤ 1e-10; exact "
                             "IHVP; Newton LOO) | paper (Adam as the authors, damping 0.01, "
                             "LOO by 30,000 more Adam steps) \\[default: exact].",
                        rich_help_panel="Model")
ADAM_STEPS = typer.Option(None, "--adam-steps",
                          help="CNN Adam steps: the warm-up (exact) or all of training (paper) "
                               "\\[default: exact 10000; paper 500000].",
                          rich_help_panel="Training")
ADAM_LR = typer.Option(None, "--adam-lr",
                       help="CNN Adam learning rate \\[default: exact 0.001; paper 0.0001].",
                       rich_help_panel="Training")
TRAIN_BATCH = typer.Option(500, "--train-batch", help="CNN Adam mini-batch.",
                           rich_help_panel="Training")
TRAIN_SIZE = typer.Option(None, "--train-size",
                          help="Train on N points of the training set: the logistic model "
                               "N drawn at random (seed 0; the paper's attack: 1800); CNN, "
                               "svm, smooth-hinge the first N (the CNN: small MNIST's order) "
                               "\\[default: all of it; the paper's Figure 3: 11800].",
                          rich_help_panel="Model")
DECAY_EPOCHS = typer.Option("10000,20000", "--decay-epochs",
                            help="CNN Adam: the learning rate ×0.1 after the first epoch, ×0.01 "
                                 "after the second (the paper's).",
                            rich_help_panel="Training")
TRAIN_TOL = typer.Option(1e-10, "--train-tol",
                         help="Newton until the float64 ‖∇R‖ ≤ this; then polished on the exact "
                              "gradient to its certified floor.",
                         rich_help_panel="Training")
MAX_ITER = typer.Option(5000, "--max-iter", help="Most L-BFGS iterations in training.",
                        rich_help_panel="Training")
DOWNLOAD = typer.Option(True, "--download/--no-download", help="Download MNIST when missing.",
                        rich_help_panel="Work folder and data")
SOLVER = typer.Option(None, "--solver",
                      help="IHVP solver: lissa | cg | exact \\[default: lissa; --model cnn: "
                           "exact; its paper protocol: cg].",
                      rich_help_panel="Inverse-HVP")
TESTS = typer.Option(None, "--test-index", "-t",
                     help="Test index; repeat for several \\[default: ihvp, run: 8; score: every "
                          "test point of the inverse-HVPs; loo: every test point scored].",
                     rich_help_panel="Test points")
TEST_SAMPLE = typer.Option(None, "--test-sample",
                           help="Instead of -t: this many test points drawn at random with "
                                "--seed (reproducible).",
                           rich_help_panel="Test points")
SEED = typer.Option(None, "--seed",
                    help="Seed of everything random: --test-sample, --select random, LiSSA's "
                         "batches, the CNN's initialisation and mini-batches \\[default: 0].",
                    rich_help_panel="Test points")
PRESET = typer.Option("default", "--preset",
                      help="LiSSA presets: default (tail-averaged, auto scale) | paper "
                           "(scale 25, depth 5000, batch 1, 10 repeats).",
                      rich_help_panel="LiSSA")
SCALE = typer.Option(None, "--scale", help="LiSSA scale, or 'auto' \\[default: auto; paper: 25].",
                     rich_help_panel="LiSSA")
DAMPING = typer.Option(None, "--damping",
                       help="LiSSA: its recursion's damping in [0, 1); cg and exact: λ, solving "
                            "(H + λI)s = g (the CNN's) \\[default: 0; CNN paper protocol: "
                            "0.01].",
                       rich_help_panel="Inverse-HVP")
DEPTH = typer.Option(None, "--depth",
                     help="LiSSA steps per repeat, at most \\[default: 10000; paper: 5000].",
                     rich_help_panel="LiSSA")
BATCH = typer.Option(None, "--batch-size", help="LiSSA mini-batch \\[default: 500; paper: 1].",
                     rich_help_panel="LiSSA")
REPEATS = typer.Option(None, "--repeats", help="LiSSA repeats averaged \\[default: 1; paper: 10].",
                       rich_help_panel="LiSSA")
TAIL = typer.Option(None, "--average-tail",
                    help="Fraction of the last LiSSA steps averaged \\[default: 0.5; paper: 0].",
                    rich_help_panel="LiSSA")
STOP_TOL = typer.Option(None, "--stop-tol",
                        help="LiSSA stops a repeat once its estimate changes by ≤ this "
                             "(relative) at two checks in a row; 0: never \\[default: 1e-3; "
                             "paper: 0].",
                        rich_help_panel="LiSSA")
CHECK_EVERY = typer.Option(None, "--check-every",
                           help="LiSSA steps between checks of the estimate \\[default: 100].",
                           rich_help_panel="LiSSA")
CG_RTOL = typer.Option(1e-10, "--cg-rtol", help="CG stops at ‖Hx − g‖/‖g‖ ≤ this.",
                       rich_help_panel="Inverse-HVP")
CG_MAX = typer.Option(1000, "--cg-max-iter", help="Most CG iterations.",
                      rich_help_panel="Inverse-HVP")
CG_RANK = typer.Option(64, "--cg-rank",
                       help="Rank of the subspace on which CG's preconditioner is the exact "
                            "Hessian (0: plain, unpreconditioned CG).",
                       rich_help_panel="Inverse-HVP")
LOO_SOLVER = typer.Option(None, "--solver",
                          help="Scores that pick the points \\[default: most accurate present: "
                               "exact, cg, lissa].",
                          rich_help_panel="Leave-one-out")
SELECT = typer.Option("top", "--select",
                      help="Training points retrained without: top (the k largest |I| of each "
                           "test point) | random (k drawn with --seed) | all.",
                      rich_help_panel="Leave-one-out")
NUM = typer.Option(None, "--num", "-k",
                   help="Training points per test point (top) or in all (random); not used by "
                        "--select all \\[default: 500, or n when the training set is smaller].",
                   rich_help_panel="Leave-one-out")
METHOD = typer.Option(None, "--method",
                      help="Retraining: newton (batched; certified for the logistic model) | "
                           "lbfgs (logistic) | adam (CNN: the paper's) | dual (svm: warm-started "
                           "dual coordinate ascent) \\[default: newton; CNN paper protocol: "
                           "adam; svm: dual].",
                      rich_help_panel="Leave-one-out")
RETRAIN_STEPS = typer.Option(30_000, "--retrain-steps",
                             help="--method adam: Adam steps from the trained model, its state "
                                  "restored, at the final learning rate (the paper's 30,000).",
                             rich_help_panel="Leave-one-out")
LOO_TOL = typer.Option(None, "--tol",
                       help="Every retraining must reach ‖∇R₋z‖ ≤ this (the logistic model: "
                            "certified, rounding included) \\[default: 1e-08; CNN: 1e-10].",
                       rich_help_panel="Leave-one-out")
REL_ERROR = typer.Option(0.01, "--rel-error",
                         help="Drive each retraining until the certified error bound of its "
                              "actual change is ≤ this × |change| (or the float64 floor); 0: "
                              "stop at --tol.",
                         rich_help_panel="Leave-one-out")
CHUNK = typer.Option(None, "--chunk-size",
                     help="Removals solved together (and checkpointed) \\[default: auto: 50 on "
                          "the CPU; on a GPU up to 1000, as its free memory allows].",
                     rich_help_panel="Leave-one-out")
DEVICE = typer.Option("auto", "--device",
                      help="Where to compute: auto (the first CUDA device when torch sees one, "
                           "else the CPU) | cpu | cuda | cuda:N. Artifacts are the same "
                           "files on any device.",
                      rich_help_panel="Where it runs")
MAX_STEPS = typer.Option(10, "--max-steps",
                         help="Newton steps before a removal falls back (the logistic model: "
                              "to Newton-CG on its exact Hessian; the CNN: to "
                              "Levenberg–Marquardt Newton on R₋z).",
                         rich_help_panel="Leave-one-out")
CLUSTER = typer.Option(None, "--cluster",
                       help="Solve the LOO chunks on Dask: local:N (a local cluster of N "
                            "one-thread worker processes) or tcp://HOST:PORT (a running "
                            "scheduler); needs pip install -e '.\\[cluster]'.",
                       rich_help_panel="Where it runs")
CLUSTER_TIMEOUT = typer.Option(10.0, "--cluster-timeout",
                               help="Seconds to reach the scheduler (or start the local "
                                    "cluster) before giving up.",
                               rich_help_panel="Where it runs")
PLOT_SOLVERS = typer.Option(None, "--solver",
                            help="Panels to draw, repeatable \\[default: the scores LOO used].",
                            rich_help_panel="Figures")
BESIDE = typer.Option(None, "--beside",
                      help="Another work folder whose panel goes to the right of these, "
                           "repeatable: e.g. the CNN's, for the paper's three panels.",
                      rich_help_panel="Figures")
PLOT_LOO = typer.Option(None, "--loo",
                        help="Which retraining to plot: newton | lbfgs | adam \\[default: "
                             "loo.safetensors, else loo-adam.safetensors].",
                        rich_help_panel="Figures")
OUT = typer.Option(None, "--out", "-o",
                   help="Figure path (.png; a .pdf copy goes beside it) \\[default: "
                        "WORKDIR/fig2_middle.png for one test point; fig2_tests.png for several, "
                        "fig2_random.png, fig2_all.png].",
                   rich_help_panel="Figures")
SHOW_TEST = typer.Option(None, "--test-index", "-t",
                         help="Test point to explain \\[default: the first one scored].",
                         rich_help_panel="Figures")
SHOW_COUNT = typer.Option(8, "--num", "-n", help="Helpful and harmful training images shown.",
                          rich_help_panel="Figures")
SHOW_SOLVER = typer.Option(None, "--solver",
                           help="Scores to rank by \\[default: most accurate present].",
                           rich_help_panel="Figures")
SHOW_OUT = typer.Option(None, "--out", "-o",
                        help="Image path \\[default: WORKDIR/explain-<test index>.png].",
                        rich_help_panel="Figures")
TRAIN_SEED = typer.Option(None, "--seed",
                          help="CNN: the seed of its initialisation and mini-batches "
                               "\\[default: 0].", rich_help_panel="Model")
TEST_SEED = typer.Option(None, "--seed", help="Seed of --test-sample \\[default: 0].",
                         rich_help_panel="Test points")
IHVP_SEED = typer.Option(None, "--seed",
                         help="Seed of --test-sample and of LiSSA's mini-batches \\[default: 0].",
                         rich_help_panel="Test points")
LOO_SEED = typer.Option(None, "--seed",
                        help="Seed of --test-sample and of --select random \\[default: 0].",
                        rich_help_panel="Test points")
REPLACE = typer.Option(False, "--replace",
                       help="Start over in a work folder that holds another study (a model of "
                            "other data or of another kind): its files are removed first.",
                       rich_help_panel="Work folder and data")
