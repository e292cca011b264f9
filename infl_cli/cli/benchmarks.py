"""The benchmarks' command: ``lds`` (certified subset retraining, the linear datamodeling
score and the LOO correlation of every scores artifact). Options checked before torch."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from infl_cli.api import ops
from infl_cli.cli import report
from infl_cli.cli.options import CLUSTER_TIMEOUT, DEVICE, TEST_SAMPLE, TESTS, WORKDIR

SUBSETS = typer.Option(100, "--subsets", help="Subsets retrained on (M).")
FRACTION = typer.Option(0.5, "--fraction", help="Each subset's share of the training set (α).")
LDS_SEED = typer.Option(0, "--seed", help="Seed of the subsets' draw (and of --test-sample).")
MEASURE = typer.Option("loss", "--measure",
                       help="Each test point's output: loss (test cross-entropy) | margin "
                            "(correct logit − log-sum-exp of the others, TRAK's).")
LDS_TOL = typer.Option(1e-9, "--tol",
                       help="Every subset model certified to ‖∇R_S‖ ≤ this, rounding "
                            "included.")
LDS_CHUNK = typer.Option(None, "--chunk-size",
                         help="Subsets solved together (and checkpointed) \\[default: as "
                              "memory allows, ≤ 0.8 GB of arrays on the CPU].")
LDS_CLUSTER = typer.Option(None, "--cluster",
                           help="Solve the subset retraining's chunks on Dask: local:N (a local "
                                "cluster of N one-thread worker processes) or tcp://HOST:PORT (a "
                                "running scheduler); needs pip install -e '.\\[cluster]'.",
                           rich_help_panel="Where it runs")
TRUTH = typer.Option(None, "--truth",
                     help="Judge against this truth file (subsets.safetensors' format, ours "
                          "or another tool's) instead of retraining.")


def lds_cmd(workdir: Path = WORKDIR, subsets: int = SUBSETS, fraction: float = FRACTION,
            seed: int = LDS_SEED, measure: str = MEASURE, tol: float = LDS_TOL,
            chunk_size: Optional[int] = LDS_CHUNK,
            test_index: Optional[List[int]] = TESTS, test_sample: Optional[int] = TEST_SAMPLE,
            truth: Optional[Path] = TRUTH, cluster: Optional[str] = LDS_CLUSTER,
            cluster_timeout: float = CLUSTER_TIMEOUT, device: str = DEVICE):
    """Certified ground truth for the LDS: retrain the model in WORKDIR on random subsets
    (each certified, each test output with a proven bar; subsets.safetensors), then the LDS
    of every scores artifact present and the LOO correlation on loo.safetensors."""
    report.report_lds(ops.lds(**locals()))