"""LOO on a Dask cluster (mnist-tiny): the same tensors as in-process, whatever happens."""

import signal
import subprocess
import sys

import pytest
import torch
from conftest import (
    REPO,
    assert_clean_failure,
    copy_work,
    infl,
    infl_process,
    listing,
    start_infl,
    wait_for,
)
from safetensors.torch import load_file

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

LOO = ["-t", 8, "-k", 60, "--chunk-size", 3]


@pytest.fixture(scope="module")
def in_process(tiny_work, tmp_path_factory):
    """The reference: the same LOO solved in the driver's own process, two threads as on this
    machine by default (the workers run one each: the chunks' results do not depend on it;
    the Hessian factor the driver forms is shipped to them)."""
    w = copy_work(tiny_work, tmp_path_factory.mktemp("in_process"))
    proc = infl_process("loo", "-w", w, *LOO, threads=2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return load_file(str(w / "loo.safetensors"))


def _same(work, reference):
    got = load_file(str(work / "loo.safetensors"))
    assert got.keys() == reference.keys()
    for key in got:
        assert torch.equal(got[key], reference[key]), key


def test_local_cluster_gives_the_in_process_tensors(tiny_work, in_process, tmp_path):
    work = copy_work(tiny_work, tmp_path)
    proc = infl_process("loo", "-w", work, *LOO, "--cluster", "local:2", threads=2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 (local:2" in proc.stdout  # the table names the workers
    _same(work, in_process)


@pytest.mark.slow
def test_a_killed_worker_changes_nothing(tiny_work, in_process, tmp_path):
    work = copy_work(tiny_work, tmp_path)
    proc = start_infl("loo", "-w", work, *LOO, "--cluster", "local:2", threads=2)
    wait_for(work / "loo.partial.safetensors", proc)
    driver = psutil.Process(proc.pid)
    # the nannies run inside the driver; the workers are its spawned child processes
    workers = [c for c in driver.children(recursive=True)
               if "spawn_main" in " ".join(c.cmdline())]
    assert workers, "no worker processes found"
    assert not (work / "loo.safetensors").exists()  # mid-run
    workers[0].kill()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    _same(work, in_process)


@pytest.mark.slow
def test_interrupted_driver_resumes(tiny_work, in_process, tmp_path):
    work = copy_work(tiny_work, tmp_path)
    proc = start_infl("loo", "-w", work, *LOO, "--cluster", "local:2", threads=2)
    wait_for(work / "loo.partial.safetensors", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "removals are saved in" in err.strip().splitlines()[-1]
    again = infl_process("loo", "-w", work, *LOO, "--cluster", "local:2", threads=2)
    assert again.returncode == 0, again.stderr[-2000:]
    _same(work, in_process)


@pytest.mark.parametrize("spec, message", [
    ("local:0", "needs N ≥ 1"),
    ("local:x", "must be local:N or tcp://HOST:PORT"),
    ("tcp://", "must be local:N or tcp://HOST:PORT"),
    ("tcp://host:notaport", "must be local:N or tcp://HOST:PORT"),
    ("tcp://127.0.0.1:70000", "must be local:N or tcp://HOST:PORT"),
    ("127.0.0.1:8786", "must be local:N or tcp://HOST:PORT"),
    ("tcp://127.0.0.1:9", "could not reach a Dask scheduler at tcp://127.0.0.1:9 within 3 s"),
])
def test_bad_cluster_fails_in_one_line(tiny_work, tmp_path, spec, message):
    work = copy_work(tiny_work, tmp_path)
    before = listing(work)
    proc = infl("loo", "-w", work, *LOO, "--cluster", spec, "--cluster-timeout", 3)
    assert_clean_failure(proc, message)
    assert listing(work) == before


def test_missing_extra_fails_in_one_line(tiny_work, tmp_path, monkeypatch):
    """Without Dask installed (simulated: the module is blocked), --cluster says what to
    install; and the default path never imports Dask at all (a fresh process tells)."""
    work = copy_work(tiny_work, tmp_path)
    before = listing(work)
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now fails
    proc = infl("loo", "-w", work, "--cluster", "local:2")
    assert_clean_failure(proc, "pip install -e '.[cluster]'")
    assert listing(work) == before
    code = ("import sys; import infl_cli.cli, infl_cli.stages, infl_cli.runtime.chunks, "
            "infl_cli.engines.logreg.loo; "
            "print(any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr
