import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infl_cli.data import load_dataset

REPO = Path(__file__).resolve().parent.parent


def infl(*args, cwd=None, env_extra=None):
    """Run ``python -m infl_cli ARGS`` and return the CompletedProcess (text, captured)."""
    env = dict(os.environ, COLUMNS="200")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "infl_cli", *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, env=env, timeout=600)


def assert_clean_failure(proc):
    """Non-zero exit, an error line, and no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert "error" in proc.stderr.lower(), proc.stderr


@pytest.fixture(scope="session")
def tiny():
    return load_dataset("mnist-tiny")


@pytest.fixture(scope="session")
def small_problem(tiny):
    """A problem small enough for autograd Hessians: 200 examples, 60 pixels (some blank)."""
    torch.manual_seed(0)
    cols = torch.arange(0, 784, 13)[:60]
    x = tiny.x_train[:200, cols].contiguous()
    y = tiny.y_train[:200]
    weight = 0.3 * torch.randn(10, x.shape[1], dtype=torch.float64)
    return weight, x, y, 0.01
