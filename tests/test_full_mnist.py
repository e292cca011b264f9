"""Full MNIST, the paper's setting (slow; runs where ../shared/mnist or $INFL_DATA_DIR is)."""

import json
import os
from pathlib import Path

import pytest
from conftest import REPO, infl
from safetensors.torch import load_file

from infl_cli.runtime.artifacts import read_record

DATA = Path(os.environ.get("INFL_DATA_DIR") or REPO.parent / "shared" / "mnist")
HAVE_MNIST = (DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MNIST, reason=f"full MNIST not found in {DATA}")
def test_full_pipeline_reproduces_figure_2_middle(tmp_path):
    proc = infl("run", "-w", tmp_path, "--data-dir", DATA, "--no-download")
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = read_record(tmp_path / "model.safetensors")
    assert model["n_train"] == 55_000 and model["grad_norm_certified"] <= 1e-12
    loo = load_file(str(tmp_path / "loo.safetensors"))
    assert loo["train_indices"].shape == (500,) and loo["test_indices"].tolist() == [8]
    assert float((loo["grad_norm"] + loo["grad_rounding"]).max()) <= 1e-8
    # every actual change certified to within 1 % of itself
    assert bool((loo["actual_error_bound"] <= 0.01 * loo["actual_loss_diff"].abs()).all())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_indices"] == [8]
    lissa = metrics["panels"]["lissa"]
    assert lissa["pearson_r"] >= 0.999
    assert lissa["ihvp"]["relative_residual"][0] < 0.05
    assert lissa["ihvp"]["error_bound_relative"][0] < 1.0
    assert (tmp_path / "explain-8.png").is_file()
