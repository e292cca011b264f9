"""GPU check for the CNN (issue 15): both protocols end to end on one CUDA device.

    PYTHONPATH=. python tests/benchmarks/gpu_check_cnn.py --data-dir DIR [--device cuda]
        [--workdir artifacts/bench/gpu-cnn] [--out artifacts/bench/gpu-cnn.json]
        [--exact-args "..."] [--paper-args "..."] [--skip-paper] [-k 100]

DIR holds MNIST/raw (on a lent machine: a copy inside the checkout). Runs, each as a child
``python -m infl_cli`` process (wall clocks include start-up):

1. ``infl run --model cnn --device cuda -k K`` (the exact protocol: Adam warm-up, Newton to
   ‖∇R‖ ≤ 1e-10, exact IHVP, Newton LOO of the top K) with ``--exact-args`` appended;
2. ``infl run --model cnn --protocol paper --device cuda -k K`` with ``--paper-args``
   appended (e.g. scaled-down ``--adam-steps`` / ``--retrain-steps``), then, in the exact
   folder, the paper's damped CG scores and the 30,000-step Adam LOO on the exact minimum, so
   that ``metrics.json`` there holds the ablation (exact vs damped predictions, Newton vs Adam
   actual changes);
3. writes every figure (seconds per stage, peak memory, ‖∇R‖, λ_min/λ_max/negative
   eigenvalues, LOO gradient norms and fallbacks, R and ρ, the ablation) to ``--out``.

A dry run of the script itself on a CPU (minutes):
``--device cpu --dataset mnist-tiny --skip-paper --exact-args "--width 2 --train-size 120
--wd 0.03 --adam-steps 3000 --adam-lr 0.01" -k 3``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "benchmarks"))
sys.path.insert(0, str(REPO))

from gpu_check import console, infl, prepare, table  # noqa: E402

from infl_cli.engines.policy import CnnPolicy  # noqa: E402
from infl_cli.runtime import artifacts as art  # noqa: E402


def summary(work: Path, wall: float) -> dict:
    """The figures of one CNN run folder."""
    timings = json.loads((work / art.TIMINGS).read_text())
    metrics = json.loads((work / art.METRICS).read_text())
    mrec = art.read_record(work / art.MODEL)
    lrec = metrics["loo"]
    panel = next(iter(metrics["panels"].values()))
    return {"wall_seconds": wall,
            **{f"{k} (s)": v for k, v in timings.items() if isinstance(v, float)},
            "device": timings.get("device"), "peak_device_gib": timings.get("peak_device_gib"),
            "train ‖∇R‖ (float64)": mrec["grad_norm"],
            "Newton steps": mrec.get("newton_steps"),
            "Hessians formed": mrec.get("hessians_formed"),
            "λ_min(H)": mrec.get("lambda_min"), "λ_max(H)": mrec.get("lambda_max"),
            "negative eigenvalues": mrec.get("negative_eigenvalues"),
            "local minimum": mrec.get("local_minimum"),
            "‖H·u‖ (null direction)": mrec.get("null_direction_curvature"),
            "loo error kind": lrec.get("error_kind"),
            "loo max ‖∇R₋z‖": art.read_record(work / CnnPolicy().loo_name(
                lrec["settings"]["method"])).get("max_grad_norm"),
            "pearson_r": panel["pearson_r"], "spearman_rho": panel["spearman_rho"],
            "pairs": panel.get("k")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workdir", default="artifacts/bench/gpu-cnn")
    ap.add_argument("--out", default="artifacts/bench/gpu-cnn.json")
    ap.add_argument("--exact-args", default="", help="appended to the exact run")
    ap.add_argument("--paper-args", default="", help="appended to the paper run")
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument("-k", type=int, default=100)
    args = ap.parse_args()
    root, data, dev, out = prepare(args)
    out.update(exact_args=args.exact_args, paper_args=args.paper_args)
    started = time.perf_counter()

    exact = root / "exact"
    wall, _ = infl("run", "--model", "cnn", "-k", args.k, "-w", exact, *data, *dev,
                   *shlex.split(args.exact_args))
    out["exact"] = summary(exact, wall)
    table(f"infl run --model cnn (exact) on {out['card']}", out["exact"])

    if not args.skip_paper:
        paper = root / "paper"
        wall, _ = infl("run", "--model", "cnn", "--protocol", "paper", "-k", args.k,
                       "-w", paper, *data, *dev, *shlex.split(args.paper_args))
        out["paper"] = summary(paper, wall)
        table("infl run --model cnn --protocol paper", out["paper"])
        # the ablation, at the exact minimum: damped CG predictions, Adam "actual" changes
        paper_args = shlex.split(args.paper_args)
        retrain = paper_args[paper_args.index("--retrain-steps"):][:2] \
            if "--retrain-steps" in paper_args else []
        infl("ihvp", "--solver", "cg", "--damping", 0.01, "-w", exact, *dev)
        infl("score", "--solver", "cg-damping0.01", "-w", exact, *dev)
        infl("loo", "--method", "adam", "-k", args.k, "-w", exact, *dev, *retrain)
        infl("plot", "-w", exact)
        out["ablation_at_exact_minimum"] = json.loads(
            (exact / art.METRICS).read_text()).get("ablation")
        out["ablation_at_paper_end_point"] = json.loads(
            (paper / art.METRICS).read_text()).get("ablation")
        console.print(out["ablation_at_exact_minimum"])
    out["script_seconds"] = time.perf_counter() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    console.print(f"whole check {out['script_seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
