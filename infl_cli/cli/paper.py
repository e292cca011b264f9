"""The paper's Figures 1 and 3: ``components`` (what influence is made of) and ``hinge``
(the SVM and the smooth hinge), with their tables. Options checked before torch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from infl_cli.api import ops
from infl_cli.cli import output
from infl_cli.cli.options import DATA_DIR, DEVICE, DOWNLOAD, WORKDIR
from infl_cli.cli.report import columns, table
from infl_cli.settings import DATASETS

COMPONENTS_TEST = typer.Option(None, "--test-index", "-t",
                               help="Test point \\[default: the paper's 30; a test set of 30 "
                                    "points or fewer: 0].")
HINGE_TEST = typer.Option(None, "--test-index", "-t",
                          help="Test point \\[default: the paper's 1597; a smaller test set: "
                               "the one the SVM gets most wrong (its smallest margin)].")
HINGE_DATASET = typer.Option("mnist", "--dataset",
                             help=f"Dataset: {' | '.join(DATASETS)} | PATH.npz of integer "
                                  "features (the SVM's certificate is exact arithmetic).")
HINGE_CLASSES = typer.Option("1,7", "--classes",
                             help="The two classes the SVM tells apart (the first is y = +1).")
HINGE_WD = typer.Option(0.01, "--wd", help="Weight decay: (1/N)Σ hinge + (wd/2)‖w‖².")
TEMPERATURES = typer.Option("0,0.001,0.1", "--temperatures",
                            help="Smooth-hinge temperatures t ≥ 0 at which influence is "
                                 "computed at the SVM's weights (must include 0).")
SMOOTH = typer.Option("0.001,0.1", "--smooth",
                      help="Temperatures t > 0 at which the smooth model is also trained at "
                           "its own t, predicted and retrained on the same points ('' for "
                           "none).")
HINGE_NUM = typer.Option(100, "--num", "-k",
                         help="Training points retrained without: the largest |influence| at "
                              "t = 0.")
TRAIN_SIZE = typer.Option(None, "--train-size",
                          help="The first N training points \\[default: the authors' trim to "
                               "a multiple of 100: 11,800 for 1 vs 7].")
TEST_SIZE = typer.Option(None, "--test-size",
                         help="The first M test points \\[default: a multiple of 100: 2,100].")


def components_cmd(workdir: Path = WORKDIR, test_index: Optional[int] = COMPONENTS_TEST,
                   device: str = DEVICE):
    """The paper's Figure 1 on the binary logistic model in WORKDIR (`infl train --classes 1,7
    --wd 0.02` first: binary wd 0.01): −I_up,loss of every training point against the
    influence without the training-loss term, without H, and without both."""
    report_components(ops.components(**locals()))


def hinge_cmd(workdir: Path = WORKDIR, dataset: str = HINGE_DATASET,
              data_dir: Optional[Path] = DATA_DIR, download: bool = DOWNLOAD,
              classes: str = HINGE_CLASSES, wd: float = HINGE_WD,
              temperatures: str = TEMPERATURES, smooth: str = SMOOTH, num: int = HINGE_NUM,
              test_index: Optional[int] = HINGE_TEST, train_size: Optional[int] = TRAIN_SIZE,
              test_size: Optional[int] = TEST_SIZE):
    """The paper's Figure 3: a linear SVM trained to a certified optimum (exact duality gap),
    influence at its weights through the smooth hinge at each temperature, checked by
    retraining the SVM without each of the points of largest |influence| (every change
    certified); and the smooth model trained at its own t. Writes hinge.safetensors and
    fig_hinge.png in WORKDIR."""
    report_hinge(ops.hinge(**locals()))


def report_components(record: dict) -> None:
    output.emit("components", record, _components)


def report_hinge(record: dict) -> None:
    output.emit("hinge", record, _hinge)


def _components(record: dict) -> None:
    m = record["metrics"]
    table(f"Figure 1: the parts of influence (test {record['test_index']}, label "
          f"{record['test_label']}; binary wd {record['wd_binary']:g})", {
              "training points": m["n"],
              "exact solve H⁻¹∇L(test): proven error ≤": record["ihvp_error_bound"],
              "Pearson R, without the training-loss term": m["pearson"]["no_train_loss"],
              "Pearson R, without H": m["pearson"]["no_hessian"],
              "Pearson R, without both": m["pearson"]["no_both"],
              "harmful (−I < 0): same label / other label":
                  f"{m['harmful_same_label']:,} / {m['harmful_other_label']:,}",
              "harmful image shown": record["harmful_index"],
              "figure": m["figure"], "seconds": record["seconds"]})


def _hinge(record: dict) -> None:
    m, s = record["metrics"], record["svm"]
    table(f"Figure 3: the SVM ({record['data']}, N = {record['n_train']:,}, test "
          f"{record['test_index']}, margin {s['test_margin']:.4f})", {
              "duality gap (exact, rounded up)": s["gap"],
              "‖w − w*‖ ≤ √(2·gap/wd)": s["radius"],
              "free / bounded support vectors": f"{s['free']} / {s['at_bound']}",
              "test accuracy": s["test_accuracy"],
              "retrained: largest gap": m["svm_truth"]["max_gap"],
              "retrained: largest proven error of an actual change": m["svm_truth"]["max_bound"],
              "changes proven within 1 % / zero within their bound":
                  f"{m['svm_truth']['within_1pct']} / {m['svm_truth']['zero_within_bound']} "
                  f"of {m['svm_truth']['n']}",
              "figure": m["figure"], "seconds": record["seconds"]})
    paper = m["paper_r"]
    columns("predicted (influence at the SVM's weights) against the SVM's actual changes",
            ["t", "Pearson R", "Spearman ρ", "paper's R"],
            [(t, v["pearson"], v["spearman"], paper.get(t, "–")) for t, v in m["svm"].items()])
    if m["smooth"]:
        columns("the smooth model trained at its own t, on the same points (its own truth)",
                ["t", "Pearson R", "Spearman ρ", "largest |error|/|actual|",
                 "largest proven bound/|actual|"],
                [(t, v["pearson"], v["spearman"], v["max_relative_error"],
                  v["max_relative_bound"]) for t, v in m["smooth"].items()])
