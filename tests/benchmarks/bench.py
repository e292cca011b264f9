"""Benchmark: the whole pipeline, IHVP solvers and LOO methods side by side in one run.

    python tests/benchmarks/bench.py --data-dir ../shared/mnist [--lbfgs-sample 5] [--repeats 3]

Prints rich tables and writes JSON (default ``artifacts/bench/bench.json``). Not a test:
timings are medians of ``--repeats`` runs (3) on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from infl_cli import artifacts as art
from infl_cli import ihvp, loo, model, plot, score, stages

console = Console(width=150)


def table(title, rows, columns):
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[f"{v:.6g}" if isinstance(v, float) else str(v) for v in r])
    console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/mnist")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--workdir", default="artifacts/bench")
    ap.add_argument("--lbfgs-sample", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs of `infl run` and of each iterative solver; medians are reported")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(args.workdir)
    result = {}

    # 1. the whole `infl run`, each in a child process so that its peak memory is its own;
    #    timings on a shared machine are noisy, so it runs --repeats times and medians count
    runs = []
    for i in range(args.repeats):
        for f in work.glob("*.safetensors"):
            f.unlink()
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "infl_cli", "run", "-w", str(work),
                               "--dataset", args.dataset, "--data-dir", args.data_dir,
                               "--no-download"], capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"infl run failed: {proc.stderr.strip().splitlines()[-1]}")
        lrec = art.read_record(work / art.LOO)
        runs.append({"wall_seconds": wall,
                     **{f"{k} (s)": v for k, v in
                        json.loads((work / "timings.json").read_text()).items()},
                     "loo: Hessian factor (s)": lrec["factor_seconds"]})
        console.print(f"infl run {i + 1}/{args.repeats}: {wall:.1f} s")
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    mrec = art.read_record(work / art.MODEL)
    metrics = json.loads((work / art.METRICS).read_text())
    result["run"] = {**{key: statistics.median(r[key] for r in runs) for key in runs[0]},
                     "repeats": args.repeats,
                     "wall_seconds_all": [r["wall_seconds"] for r in runs],
                     "peak_rss_gb (max over runs)": peak_gb,
                     "train: ‖∇R‖": mrec["grad_norm"],
                     "loo: max ‖∇R₋z‖": lrec["max_grad_norm"],
                     "pearson_r": metrics["panels"]["lissa"]["pearson_r"],
                     "spearman_rho": metrics["panels"]["lissa"]["spearman_rho"]}
    table("infl run", [[k, v] for k, v in result["run"].items()], ["quantity", "value"])

    # 2. IHVP solvers against the exact solve, and their Pearson R on the same LOO points
    weight, mrec, data = stages.load_model(work)
    wd = mrec["settings"]["wd"]
    ltensors, _ = art.load_artifact(work / art.LOO)
    removed, actual = ltensors["train_indices"], ltensors["actual_loss_diff"].numpy()
    t = int(lrec["test_index"])
    rhs = model.test_point_grads(weight, data.x_test[t:t + 1], data.y_test[t:t + 1])
    solver_runs = [("exact", "exact", {}),
            ("cg (default: subspace-preconditioned)", "cg", {"cg_settings": ihvp.CgSettings()}),
            ("cg --cg-rank 0 (plain)", "cg", {"cg_settings": ihvp.CgSettings(rank=0)}),
            ("lissa (default)", "lissa", {"lissa_settings": ihvp.LissaSettings()}),
            ("lissa --preset paper", "lissa", {"lissa_settings": ihvp.LissaSettings.paper()})]
    estimates, rows, result["ihvp"] = {}, [], {}
    for label, solver, settings in solver_runs:
        seconds = []
        for _ in range(1 if solver == "exact" else args.repeats):  # exact: 26 s, once
            est, rep = ihvp.solve(solver, weight, data.x_train, wd, rhs, **settings)
            seconds.append(rep["seconds"])
        rep["seconds"] = statistics.median(seconds)
        estimates[label] = est
        reference = estimates["exact"]
        err = float((est - reference).norm() / reference.norm())
        _, predicted = score.influence_scores(weight, data.x_train, data.y_train, wd, est)
        r = plot.agreement(actual, predicted[0, removed].numpy())["pearson_r"]
        result["ihvp"][label] = {"seconds": rep["seconds"], "iterations": rep["iterations"],
                                 "hvps": rep["hvps"], "relative_error_vs_exact": err,
                                 "relative_residual": rep["relative_residual"][0],
                                 "pearson_r": r}
        rows.append([label, rep["seconds"], rep["iterations"], rep["hvps"], err,
                     rep["relative_residual"][0], r])
    table("IHVP solvers (test index %d)" % t, rows,
          ["solver", "seconds", "iterations", "HVPs", "rel. error vs exact", "residual",
           "Pearson R (top 500)"])

    # 3. LOO: certified Newton (from the run) vs warm-started L-BFGS on a sample of its points
    sample = removed[:args.lbfgs_sample]
    t0 = time.perf_counter()
    out, _ = loo.retrain("lbfgs", weight, data.x_train, data.y_train, wd, data.x_test[t],
                         data.y_test[t], sample, lrec["settings"]["tol"], 1)
    lbfgs_per_point = (time.perf_counter() - t0) / len(sample)
    newton_total = result["run"]["loo (s)"]  # median over the runs, Hessian included
    newton_per_point = newton_total / len(removed)
    diff = float((out["actual_loss_diff"] - ltensors["actual_loss_diff"][:len(sample)])
                 .abs().max())
    result["loo"] = {
        "newton_seconds_per_point": newton_per_point,
        "newton_seconds_total": newton_total, "newton_points": len(removed),
        "newton_max_grad_norm": lrec["max_grad_norm"],
        "lbfgs_seconds_per_point": lbfgs_per_point, "lbfgs_points": len(sample),
        "lbfgs_max_grad_norm": float(out["grad_norm"].max()),
        "speedup_per_point": lbfgs_per_point / newton_per_point,
        "max_abs_diff_actual_loss_change": diff,
    }
    table("LOO retraining", [[k, v] for k, v in result["loo"].items()], ["quantity", "value"])
    out_path = Path(args.out) if args.out else work / "bench.json"
    art.write_json(out_path, result)
    console.print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
