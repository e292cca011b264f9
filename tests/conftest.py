"""Shared helpers and fixtures.

``infl(...)`` runs the command line *in this process*, through the same ``cli.main()`` that the
console script calls (its error handling, one-line messages and exit codes), with stdout and
stderr captured: no interpreter and torch start-up per call. ``infl_process(...)`` and
``start_infl(...)`` start a real ``python -m infl_cli`` process, for the tests where the
process itself is under test (signals and exit 130, the lock between two processes, a
terminal, the cluster, the module entry point).

The expensive fixture, ``tiny_work``, is made once per test session: the mnist-tiny model,
the CG and LiSSA inverse-HVPs for test points 8 and 3, and both sets of scores, each made by
its own CLI stage. Tests that write into a work folder take a private copy (:func:`copy_work`).
"""

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

THREAD_ENVS = ("INFL_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two test processes share the two cores: one thread each, set before torch and NumPy
    # load (the controller's import of infl_cli chose for the machine, and its workers inherit
    # that: infl_cli.runtime.threads)
    for _name in THREAD_ENVS:
        os.environ[_name] = "1"

import torch  # noqa: E402

from infl_cli.data.datasets import load_dataset

REPO = Path(__file__).resolve().parent.parent
FAST_LISSA = ["--depth", "600", "--batch-size", "200"]


@dataclass
class Outcome:
    """What a finished command left: like ``subprocess.CompletedProcess``."""

    returncode: int
    stdout: str
    stderr: str


def infl(*args, env_extra=None) -> Outcome:
    """Run ``infl ARGS`` in this process through :func:`infl_cli.cli.app.main`.

    sys.argv, the environment (``COLUMNS=200`` plus ``env_extra``), the signal handlers that
    ``main`` installs and the progress console (made afresh on the captured stderr, exactly as
    at a real start-up) are restored afterwards."""
    from infl_cli.cli import app as cli
    from infl_cli.runtime import progress

    env = {"COLUMNS": "200", **(env_extra or {})}
    saved_env = {key: os.environ.get(key) for key in env}
    saved_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    saved_argv, saved_console = sys.argv, progress.console
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        os.environ.update(env)
        sys.argv = ["infl", *map(str, args)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            progress.console = progress._make_console()
            try:
                cli.main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved_argv
        progress.console = saved_console
        for s, handler in saved_handlers.items():
            signal.signal(s, handler)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return Outcome(code, out.getvalue(), err.getvalue())


def infl_process(*args, env_extra=None, threads=None) -> Outcome:
    """Run ``python -m infl_cli ARGS`` as a real process (text, captured); ``threads``: its
    OMP_NUM_THREADS (default: this process's environment)."""
    env = dict(os.environ, COLUMNS="200")
    env.update(env_extra or {})
    if threads is not None:
        env.update({name: str(threads) for name in THREAD_ENVS})
    proc = subprocess.run([sys.executable, "-m", "infl_cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=600)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def start_infl(*args, threads=None):
    """``python -m infl_cli ARGS`` in its own process group with the default SIGINT handler
    (a background child of a non-interactive shell would otherwise ignore SIGINT);
    ``threads``: its OMP_NUM_THREADS (default: this process's environment)."""
    env = dict(os.environ, COLUMNS="200")
    if threads is not None:
        env.update({name: str(threads) for name in THREAD_ENVS})
    return subprocess.Popen(
        [sys.executable, "-m", "infl_cli", *map(str, args)], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), env=env)


def wait_for(path, proc, timeout=180):
    """Wait until ``path`` exists while ``proc`` is still running."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch threads (the tests' processes run one thread each under
    pytest-xdist; a check of thread independence needs more)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def copy_work(src, tmp_path, name="work"):
    """A private copy of a shared work folder."""
    work = tmp_path / name
    shutil.copytree(src, work)
    return work


def listing(folder):
    """The names in a folder, sorted (to show that a failed command wrote nothing)."""
    return sorted(p.name for p in Path(folder).iterdir())


def assert_clean_failure(proc, message=None, one_line=True):
    """Non-zero exit, an error line (containing ``message``), no traceback; by default the
    error is the only line on stderr."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert "error" in proc.stderr.lower(), proc.stderr
    if message is not None:
        assert message in proc.stderr, proc.stderr
    if one_line:
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


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


def assert_refused_untouched(work, command: str, args, message: str, code: int = 2):
    """``infl COMMAND -w WORK ARGS`` ends as :func:`assert_clean_failure` with ``message``
    and exit ``code``, and ``work`` holds exactly the files it held before."""
    before = listing(work)
    proc = infl(command, "-w", work, *args)
    assert_clean_failure(proc, message)
    assert proc.returncode == code and listing(work) == before


@pytest.fixture(scope="session")
def tiny_work(tmp_path_factory):
    """The session's work folder on mnist-tiny, each stage run alone through the CLI: the
    model (wd 0.01), inverse-HVPs for test points 8 and 3 by CG and by a short LiSSA, and the
    scores of both. Read-only: copy it before writing (:func:`copy_work`)."""
    w = tmp_path_factory.mktemp("tiny_work")
    for args in (["train", "--dataset", "mnist-tiny"],
                 ["ihvp", "--solver", "cg", "-t", 8, "-t", 3],
                 ["ihvp", "-t", 8, "-t", 3, *FAST_LISSA],
                 ["score", "--solver", "cg"], ["score"]):
        proc = infl(*args, "-w", w)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
    return w


@pytest.fixture(scope="session")
def tiny_model(tiny_work):
    """(weight [10, 784], model record) of the session's trained mnist-tiny model."""
    from infl_cli.runtime import artifacts as art

    tensors, record = art.load_artifact(tiny_work / art.MODEL, "train")
    return tensors["weight"], record
