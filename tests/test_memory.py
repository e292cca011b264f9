"""Memory: blocked passes equal the unblocked ones, features kept once in their own dtype, a
budget every heavy command respects (refusing up front, in one line, writing nothing), and
estimates within 1.5x of the measured peak."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from infl_cli.data.arrays import from_arrays
from infl_cli.data.design import DesignMatrix
from infl_cli.engines.logreg import model
from infl_cli.runtime import memory
from tests.conftest import REPO, assert_refused_untouched, copy_work


def _features(n=3000, d=24, k=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, k, size=n)
    return x, y


def _design(x32, dtype, monkeypatch=None, pass_bytes=None):
    from infl_cli.data import parts as design_parts

    if monkeypatch is not None:  # every pass in blocks of 1,024 rows
        from infl_cli.data import design as design_mod

        monkeypatch.setattr(memory, "PASS_BYTES", pass_bytes)
        monkeypatch.setattr(design_mod, "CONVERT_BYTES", 1024 * 8 * x32.shape[1])
    parts = design_parts.compute(np.ascontiguousarray(x32.astype(dtype)), None)
    return DesignMatrix(parts=parts)


def test_float32_features_are_kept_once_in_their_own_dtype():
    x, y = _features()
    rng = np.random.default_rng(1)
    xt = rng.normal(size=(50, x.shape[1])).astype(np.float32)
    yt = rng.integers(0, 4, size=50)
    arrays = {"X_train": x, "y_train": y, "X_test": xt, "y_test": yt}
    as32 = from_arrays(arrays)
    as64 = from_arrays({**arrays, "X_train": x.astype(np.float64),
                        "X_test": xt.astype(np.float64)})
    assert as32.train_x.dtype == np.float32 and as64.train_x.dtype == np.float64
    assert as32.fingerprint == as64.fingerprint  # the same data, whatever their dtype
    parts = as32.design_parts
    assert parts["core_x"] is as32.train_x  # every column dense: the core is the data
    np.testing.assert_array_equal(as32.features(), as64.features())
    np.testing.assert_array_equal(parts["row_sq"], as64.design_parts["row_sq"])


def test_blocked_passes_equal_the_unblocked_ones(monkeypatch):
    """A float32 core in blocks of 1,024 rows (a tiny pass workspace) against the float64
    core in one block: products equal within their certified bounds (bit for bit where
    each element's sum keeps its order), Gram matrices and bounds agree."""
    x, _ = _features()
    whole = _design(x, np.float64)
    rng = np.random.default_rng(2)
    v = torch.from_numpy(rng.normal(size=(x.shape[1], 5)))
    r = torch.from_numpy(rng.normal(size=(x.shape[0], 5)))
    w = torch.from_numpy(rng.uniform(0.1, 1.0, size=(x.shape[0], 2)))
    ref = {"matmul": whole.matmul(v), "cm": whole.certified_matmul(v),
           "crm": whole.certified_rmatmul(r), "grams": whole.grams(w, torch.float64),
           "dense": whole.dense()}
    blocked = _design(x, np.float32, monkeypatch, pass_bytes=1)
    assert blocked.stored_dtype == np.float32 and not blocked._has_core(np.float64)
    assert len(blocked._row_blocks(8 * blocked.core.size)) == 3
    torch.testing.assert_close(blocked.matmul(v), ref["matmul"], rtol=0, atol=0)
    value, bound = blocked.certified_matmul(v)
    assert ((value - ref["cm"][0]).abs() <= bound).all()
    torch.testing.assert_close(bound, ref["cm"][1], rtol=1e-12, atol=0)
    value, bound = blocked.certified_rmatmul(r)
    exact = torch.from_numpy(r.numpy().T @ x.astype(np.float64))
    assert ((value - exact).abs() <= bound).all()
    torch.testing.assert_close(bound, ref["crm"][1], rtol=1e-12, atol=0)
    torch.testing.assert_close(blocked.grams(w, torch.float64), ref["grams"], rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(blocked.dense(), ref["dense"], rtol=0, atol=0)
    idx = [5, 1500, 2999]
    torch.testing.assert_close(blocked.rows(idx), ref["dense"][idx], rtol=0, atol=0)


def test_blocked_preconditioner_and_residual_equal_the_unblocked(monkeypatch):
    x, y = _features(n=2500, d=16)
    xt = torch.from_numpy(x.astype(np.float64))
    design = _design(x, np.float32)
    weight = 0.1 * torch.randn(4, x.shape[1], dtype=torch.float64,
                               generator=torch.Generator().manual_seed(0))
    basis = torch.linalg.qr(torch.randn(x.shape[1], 6, dtype=torch.float64,
                                        generator=torch.Generator().manual_seed(1)))[0]
    whole = model.hessian_in_basis(weight, xt, 0.01, basis)
    s = torch.randn(7, 4, x.shape[1], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(2))
    g = torch.randn(7, 4, x.shape[1], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(3))
    res, rnd = model.certified_residual(weight, design, 0.01, s, g)
    hv = model.hvp(weight, design, 0.01, s)
    monkeypatch.setattr(memory, "PASS_BYTES", 1)  # blocks of 1,024 rows; one test per pass
    blocked = model.hessian_in_basis(weight, xt, 0.01, basis)
    torch.testing.assert_close(blocked, whole, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(model.hvp(weight, design, 0.01, s), hv, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(hv, model.hvp(weight, xt, 0.01, s), rtol=1e-13, atol=1e-15)
    res_b, rnd_b = model.certified_residual(weight, design, 0.01, s, g)
    assert (np.abs(res_b - res) <= rnd + rnd_b).all()
    # and the residual against a dense float64 reference
    h = model.hessian(weight, xt, 0.01)
    ref = (s.reshape(7, -1) @ h - g.reshape(7, -1)).norm(dim=1).numpy()
    assert (np.abs(res_b - ref) <= rnd_b + 1e-12 * ref).all()


def test_score_in_passes_equals_one_pass(monkeypatch, tiny_work):
    from infl_cli.engines.logreg import score

    x, y = _features(n=2000, d=12)
    design = _design(x, np.float32)
    weight = 0.1 * torch.randn(4, 12, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(0))
    ihvps = torch.randn(9, 4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    yt = torch.from_numpy(y)
    one, _ = score.influence_scores(weight, design, yt, 0.01, ihvps)
    monkeypatch.setattr(memory, "PASS_BYTES", 1)  # one test point per pass
    many, _ = score.influence_scores(weight, design, yt, 0.01, ihvps)
    torch.testing.assert_close(many, one, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("command,args", [
    ("ihvp", ["--solver", "cg"]), ("ihvp", ["--solver", "exact"]), ("score", []),
    ("loo", ["-k", "5"]), ("self-influence", []), ("lds", ["--subsets", "4"]),
])
def test_a_tiny_budget_refuses_each_heavy_command(tiny_work, tmp_path, monkeypatch, command,
                                                  args):
    work = copy_work(tiny_work, tmp_path)
    monkeypatch.setenv(memory.BUDGET_ENV, "0.05")
    start = time.perf_counter()
    assert_refused_untouched(work, command, args, "more than the budget $INFL_MEMORY_GB=0.05")
    assert time.perf_counter() - start < 10


def test_a_tiny_budget_refuses_training_and_keeps_the_old_study(tiny_work, tmp_path,
                                                                monkeypatch):
    work = copy_work(tiny_work, tmp_path)
    monkeypatch.setenv(memory.BUDGET_ENV, "0.05")
    assert_refused_untouched(work, "train", ["--dataset", "mnist-tiny", "--classes", "1,7",
                                             "--replace"], "infl train on")


def test_a_bad_budget_is_one_line(tiny_work, tmp_path, monkeypatch):
    work = copy_work(tiny_work, tmp_path)
    for value, message in (("lots", "give the memory budget in GB"),
                           ("-1", "must be positive")):
        monkeypatch.setenv(memory.BUDGET_ENV, value)
        assert_refused_untouched(work, "score", [], message)


PEAK = """
import json, sys
from infl_cli.cli.app import main
from infl_cli.engines.logreg import footprint
from infl_cli.stages.common import load_model
step, args = sys.argv[1], sys.argv[2:]
sys.argv = ["infl", *args]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
# VmHWM: this image's own high-water mark (ru_maxrss would keep the forking parent's RSS)
with open("/proc/self/status") as fh:
    peak = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
from pathlib import Path
_, _, data = load_model(Path(args[args.index("-w") + 1]))
shape = json.loads(sys.stdin.read() or "{}")
print(json.dumps({"peak": peak, "estimate": footprint.peak_bytes(step, data, **shape)}))
"""


@pytest.mark.slow
def test_estimates_are_within_1_5x_of_the_measured_peak(tmp_path):
    """On a mid-sized synthetic set (60,000 × 128 float32, K = 10), each step's estimate
    against the peak resident memory of its own process."""
    rng = np.random.default_rng(0)
    n, d, k = 60_000, 128, 10
    w = rng.normal(size=(d, k)) * (2 / np.sqrt(d))

    def make(rows):
        x = rng.normal(size=(rows, d)).astype(np.float32)
        return x, ((x @ w) + rng.gumbel(size=(rows, k))).argmax(1)

    (xtr, ytr), (xte, yte) = make(n), make(40)
    data = tmp_path / "syn.npz"
    np.savez(data, X_train=xtr, y_train=ytr, X_test=xte, y_test=yte)
    work = tmp_path / "w"
    env_cache = {"INFL_CACHE_DIR": str(tmp_path / "cache")}
    steps = [("train", ["train", "--dataset", str(data)], {}),
             ("ihvp-cg", ["ihvp", "--solver", "cg", "--test-sample", "10"], {"tests": 10}),
             ("ihvp-exact", ["ihvp", "--solver", "exact"], {}),
             ("score", ["score", "--solver", "cg"], {"tests": 10}),
             ("self-influence", ["self-influence"], {})]
    import os

    for step, args, shape in steps:
        proc = subprocess.run([sys.executable, "-c", PEAK, step, *args, "-w", str(work)],
                              input=json.dumps(shape), capture_output=True, text=True,
                              cwd=REPO, env={**os.environ, **env_cache}, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        ratio = got["estimate"] / got["peak"]
        assert 1 / 1.5 <= ratio <= 1.5, (step, got)
