import os
import shutil
import signal
import subprocess
import sys
import time
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


def start_infl(*args):
    """``python -m infl_cli ARGS`` in its own process group with the default SIGINT handler
    (a background child of a non-interactive shell would otherwise ignore SIGINT)."""
    return subprocess.Popen(
        [sys.executable, "-m", "infl_cli", *map(str, args)], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        env=dict(os.environ, COLUMNS="200"))


def wait_for(path, proc, timeout=180):
    """Wait until ``path`` exists while ``proc`` is still running."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def copy_work(src, tmp_path):
    """A private copy of a shared work folder."""
    work = tmp_path / "work"
    shutil.copytree(src, work)
    return work


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


@pytest.fixture(scope="session")
def scored_tiny(tmp_path_factory):
    """A work folder with the mnist-tiny model, the CG inverse-HVP and scores for test 8,
    made through the CLI (copy it before writing: see :func:`copy_work`)."""
    w = tmp_path_factory.mktemp("scored")
    for args in (["train", "--dataset", "mnist-tiny"], ["ihvp", "--solver", "cg"],
                 ["score", "--solver", "cg"]):
        proc = infl(*args, "-w", w)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return w
