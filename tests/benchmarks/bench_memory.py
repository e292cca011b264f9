"""The ``memory`` section of bench.py: peak memory and time of every command of the logistic
model on synthetic data of growing n (K = 10, d = 256 float32 features, 200 test points; the
family of issue 36), each command in its own process under GNU time, against the estimate the
command checks its budget with (:mod:`infl_cli.engines.logreg.footprint`).

    python tests/benchmarks/bench.py --sections memory [--memory-sizes 400000,1600000]

A command that refuses (its estimate above the budget) is reported as refused, with its line.
Per row: the slope of the peak between consecutive sizes (KB per training row), and time per
doubling of n.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

D, K, M = 256, 10, 200
COMMANDS = (
    ("train", ["train", "--dataset", "{data}"], "train", {}),
    ("ihvp exact", ["ihvp", "--solver", "exact"], "ihvp-exact", {}),
    ("ihvp cg (1 test)", ["ihvp", "--solver", "cg"], "ihvp-cg", {}),
    ("ihvp cg (10 tests)", ["ihvp", "--solver", "cg", "--test-sample", "10"], "ihvp-cg",
     {"tests": 10}),
    ("score (10 tests)", ["score", "--solver", "cg"], "score", {"tests": 10}),
    ("loo -k 50", ["loo", "--solver", "cg", "-k", "50"], "loo", {}),
    ("self-influence", ["self-influence"], "self-influence", {}),
    ("lds (20 subsets)", ["lds", "--subsets", "20"], "lds", {}),
)


def synthetic(n: int, path: Path) -> None:
    """The issue's family: Gaussian float32 features, labels from a random linear model with
    Gumbel noise (seed 0)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(D, K)) * (2.0 / np.sqrt(D))

    def make(rows):
        x = np.empty((rows, D), dtype=np.float32)
        y = np.empty(rows, dtype=np.int64)
        for lo in range(0, rows, 1 << 18):
            hi = min(rows, lo + (1 << 18))
            x[lo:hi] = rng.normal(size=(hi - lo, D))
            logits = x[lo:hi].astype(np.float64) @ w
            y[lo:hi] = (logits + rng.gumbel(size=logits.shape)).argmax(1)
        return x, y

    (xtr, ytr), (xte, yte) = make(n), make(M)
    np.savez(path, X_train=xtr, y_train=ytr, X_test=xte, y_test=yte)


def run_peak(args: list, env: dict) -> dict:
    """Wall seconds, peak resident GB, exit status and last error line of ``infl ARGS``."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as fh:
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", fh.name, sys.executable,
                               "-m", "infl_cli", *map(str, args)], capture_output=True,
                              text=True, env=env)
        wall = time.perf_counter() - start
        peak = int(fh.read().strip().splitlines()[-1]) / 1e6 if proc.returncode != 137 else None
    error = proc.stderr.strip().splitlines()[-1] if proc.returncode else ""
    return {"wall_s": wall, "peak_gb": peak, "rc": proc.returncode, "error": error}


def estimate(work: Path, step: str, shape: dict) -> float | None:
    from infl_cli.engines.logreg import footprint
    from infl_cli.stages.common import load_model

    try:
        _, _, data = load_model(work)
    except Exception:  # noqa: BLE001  (no model: train refused or failed)
        return None
    return footprint.peak_bytes(step, data, **shape) / 1e9


def bench_memory(args, work: Path, table) -> dict:
    import os

    sizes = [int(s) for s in args.memory_sizes.split(",")]
    out, rows = {}, []
    for n in sizes:
        folder = work / f"memory-{n}"
        folder.mkdir(parents=True, exist_ok=True)
        data = folder / f"syn{n}.npz"
        if not data.is_file():
            synthetic(n, data)
        w = folder / "w"
        env = dict(os.environ, INFL_CACHE_DIR=str(folder / "cache"))
        results = {}
        for name, cmd, step, shape in COMMANDS:
            cmd = [c.format(data=data) for c in cmd] + ["-w", w]
            if name == "train":
                cmd.append("--replace")
            got = run_peak(cmd, env)
            got["estimate_gb"] = estimate(w, step, shape)
            results[name] = got
        out[str(n)] = results
    for name, *_ in COMMANDS:
        cells = []
        for i, n in enumerate(sizes):
            got = out[str(n)][name]
            if got["rc"]:
                cells.append("refused" if got["rc"] == 2 else f"failed ({got['rc']})")
                continue
            cell = f"{got['wall_s']:.0f} s / {got['peak_gb']:.1f} GB"
            if got["estimate_gb"]:
                cell += f" (est. {got['estimate_gb']:.1f})"
            if i and not out[str(sizes[i - 1])][name]["rc"]:
                prev = out[str(sizes[i - 1])][name]
                slope = (got["peak_gb"] - prev["peak_gb"]) * 1e6 / (n - sizes[i - 1])
                cell += f", {slope:.1f} KB/row"
            cells.append(cell)
        rows.append((name, *cells))
    table("memory: wall / peak (estimate), slope per added row",
          rows, ("command", *[f"n = {n:,}" for n in sizes]))
    print(json.dumps(out, indent=1))
    return out
