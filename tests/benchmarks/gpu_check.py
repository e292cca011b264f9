"""GPU check: issue 14's targets on one CUDA device, in one script (a few minutes).

    PYTHONPATH=. python tests/benchmarks/gpu_check.py --data-dir DIR [--device cuda]
        [--workdir artifacts/bench/gpu] [--out artifacts/bench/gpu.json] [--skip-cpu]
        [--dataset mnist-tiny]  (a dry run of the script itself, e.g. with --device cpu)

DIR holds MNIST/raw (on a lent machine: a copy inside the checkout, since ../shared does not
travel). Needs nothing beyond a CUDA build of PyTorch and infl's own dependencies (numpy,
scipy, typer, rich, matplotlib, safetensors); pytest only for the ``gpu`` tests at the end.

Runs, each as a child ``python -m infl_cli`` process so that wall clocks include start-up:

1. ``infl run --device cuda`` (test 8, top 500): wall clock, seconds per stage, peak GPU
   memory, R, the certificates;
2. ``infl loo --select all -t 8 --device cuda`` on that model: stage seconds, per removal,
   the worst bound / |change|, how many removals reach 1 % or the float64 floor, R over all;
3. ``infl run --device cuda --test-sample 100 --seed 0 -k 100``: wall clock;
4. ``infl run --device cpu`` (the same settings as 1) and the comparison: the same top 500,
   every actual change within the sum of the two certified bounds, R equal to 6 digits;
   across devices, the GPU's model scored on the CPU equals its GPU scores;
5. ``python -m pytest -m gpu`` (skipped when pytest is missing).

Writes one JSON (``--out``) and prints rich tables; the README's GPU table comes from it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from infl_cli.runtime import artifacts as art  # noqa: E402

console = Console(width=150)


def infl(*args, env=None) -> tuple[float, str]:
    """Run ``python -m infl_cli ARGS``; (wall seconds, stderr). Exits on failure."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "infl_cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"infl {' '.join(map(str, args))} failed ({proc.returncode}): "
                 f"{proc.stderr.strip()[-1500:]}")
    return wall, proc.stderr


def table(title: str, rows: dict) -> None:
    t = Table(title=title)
    t.add_column("quantity")
    t.add_column("value")
    for key, value in rows.items():
        t.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    console.print(t)


def run_summary(work: Path, wall: float) -> dict:
    timings = json.loads((work / art.TIMINGS).read_text())
    metrics = json.loads((work / art.METRICS).read_text())
    lrec, mrec = art.read_record(work / art.LOO), art.read_record(work / art.MODEL)
    panel = next(iter(metrics["panels"].values()))
    stages_s = sum(v for k, v in timings.items() if k in ("load data", "train", "ihvp", "score",
                                                          "loo"))
    return {"wall_seconds": wall, "stage_seconds (load, train, ihvp, score, loo)": stages_s,
            **{f"{k} (s)": v for k, v in timings.items() if isinstance(v, float)},
            "device": timings.get("device"), "peak_device_gib": timings.get("peak_device_gib"),
            "train ‖∇R‖ ≤ (certified)": mrec["grad_norm_certified"],
            "loo max ‖∇R₋z‖ ≤": lrec["max_grad_norm_bound"],
            "loo pairs within 1 %": f"{lrec['pairs_within_target']} of {lrec['pairs_selected']}",
            "loo worst bound / |change|": lrec["worst_bound_ratio"],
            "loo chunk size": lrec["settings"]["chunk_size"],
            "pearson_r": panel["pearson_r"], "spearman_rho": panel["spearman_rho"],
            "median_pearson_r": panel["median_pearson_r"],
            "worst_pearson_r": panel["worst_pearson_r"]}


def prepare(args):
    """A fresh work folder and the common arguments: (root, data options, device options,
    the JSON's header naming the card)."""
    root = Path(args.workdir).resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    data = ["--dataset", args.dataset, "--no-download"] + (
        ["--data-dir", Path(args.data_dir).resolve()] if args.data_dir else [])
    out = {"card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
           "torch": torch.__version__, "cuda": torch.version.cuda}
    return root, data, ["--device", args.device], out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="folder holding MNIST/raw (mnist)")
    ap.add_argument("--dataset", default="mnist",
                    help="mnist (the targets) or mnist-tiny (a dry run of the script itself)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workdir", default="artifacts/bench/gpu")
    ap.add_argument("--out", default="artifacts/bench/gpu.json")
    ap.add_argument("--skip-cpu", action="store_true", help="leave out the CPU reference run")
    args = ap.parse_args()
    root, data, dev, out = prepare(args)
    started = time.perf_counter()

    # 1. the main job
    wall, _ = infl("run", "-w", root / "run", *data, *dev)
    out["run"] = run_summary(root / "run", wall)
    table(f"infl run {' '.join(dev)} ({out['card']})", out["run"])

    # 2. leave-one-out for every training point
    every = root / "all"
    every.mkdir()
    for name in (art.MODEL, art.ihvp_name("lissa"), art.scores_name("lissa")):
        shutil.copy(root / "run" / name, every / name)
    wall, _ = infl("loo", "--select", "all", "-t", 8, "-w", every, *dev)
    infl("plot", "-w", every)
    lrec = art.read_record(every / art.LOO)
    panel = json.loads((every / art.METRICS).read_text())["panels"]["lissa"]
    loo_all = art.load_artifact(every / art.LOO)[0]
    within = loo_all["actual_error_bound"] <= 0.01 * loo_all["actual_loss_diff"].abs()
    out["all"] = {"wall_seconds": wall, "stage_seconds": lrec["seconds"],
                  "hessian_seconds": lrec["factor_seconds"],
                  "ms_per_removal (stage)": 1e3 * lrec["seconds"] / lrec["n_removals"],
                  "removals": lrec["n_removals"], "chunk size": lrec["settings"]["chunk_size"],
                  "certified ‖∇R₋z‖ ≤ tol": lrec["certified"],
                  "max ‖∇R₋z‖ ≤": lrec["max_grad_norm_bound"],
                  "within 1 %": int(within.sum()),
                  "not within 1 % (at the float64 floor)": int((~within).sum()),
                  "largest bound among those": float(loo_all["actual_error_bound"][~within].max())
                  if (~within).any() else 0.0,
                  "worst bound / |change|": lrec["worst_bound_ratio"],
                  "peak_device_gib": lrec.get("peak_device_gib"),
                  "pearson_r (all)": panel["pearson_r"],
                  "spearman_rho": panel["spearman_rho"]}
    table("infl loo --select all -t 8", out["all"])

    # 3. the study: 100 test points
    wall, _ = infl("run", "-w", root / "t100", *data, *dev, "--test-sample", 100, "--seed", 0,
                   "-k", 100)
    out["tests100"] = run_summary(root / "t100", wall)
    table("infl run --test-sample 100 --seed 0 -k 100", out["tests100"])

    # 4. against the CPU
    if not args.skip_cpu:
        wall, _ = infl("run", "-w", root / "cpu", *data, "--device", "cpu")
        out["cpu_run"] = run_summary(root / "cpu", wall)
        g, c = (art.load_artifact(root / w / art.LOO)[0] for w in ("run", "cpu"))
        same = sorted(g["train_indices"].tolist()) == sorted(c["train_indices"].tolist())
        position = {j: i for i, j in enumerate(c["train_indices"].tolist())}
        order = torch.tensor([position.get(j, 0) for j in g["train_indices"].tolist()])
        gap = (g["actual_loss_diff"] - c["actual_loss_diff"][:, order]).abs()
        room = g["actual_error_bound"] + c["actual_error_bound"][:, order]
        r_gpu, r_cpu = out["run"]["pearson_r"], out["cpu_run"]["pearson_r"]
        # across devices: the GPU's model and inverse-HVP, scored on the CPU
        cross = root / "cross"
        shutil.copytree(root / "run", cross)
        infl("score", "-w", cross, "--device", "cpu")
        s_gpu = art.load_artifact(root / "run" / art.scores_name("lissa"))[0]["influence"]
        s_cpu = art.load_artifact(cross / art.scores_name("lissa"))[0]["influence"]
        out["agreement"] = {
            "same top 500": same,
            "every actual change within both bounds": bool(same and (gap <= room).all()),
            "max |gpu − cpu| / (sum of bounds)": float((gap / room).max()) if same else None,
            "R gpu": r_gpu, "R cpu": r_cpu, "R equal to 6 digits": f"{r_gpu:.6f}" == f"{r_cpu:.6f}",
            "gpu scores rescored on the cpu: max relative difference":
                float(((s_gpu - s_cpu).abs().max() / s_gpu.abs().max())),
            "cpu wall seconds / gpu wall seconds": out["cpu_run"]["wall_seconds"]
            / out["run"]["wall_seconds"]}
        table("GPU against CPU", out["agreement"])

    # 5. the gpu tests
    try:
        import pytest  # noqa: F401
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q",
                               "-p", "no:cacheprovider", "tests/test_device.py"], cwd=REPO,
                              capture_output=True, text=True)
        out["gpu_tests"] = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else \
            proc.stderr.strip()[-300:]
    except ModuleNotFoundError:
        out["gpu_tests"] = "pytest not installed"
    out["script_seconds"] = time.perf_counter() - started
    console.print(f"gpu tests: {out['gpu_tests']}; whole check {out['script_seconds']:.0f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
