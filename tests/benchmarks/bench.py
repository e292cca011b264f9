"""Benchmark: the pipeline, the IHVP solvers, the LOO methods and the study targets.

    python tests/benchmarks/bench.py --data-dir ../shared/mnist
        [--sections run,ihvp,loo,study,cluster] [--repeats 3] [--lbfgs-sample 5]
        [--all-sample 5000] [--cluster-sample 2000]

Sections (all by default):

* ``run``: ``infl run`` (test 8, top 500) ``--repeats`` times in child processes: medians of
  the seconds per stage, wall clock, peak memory, R and the certification figures;
* ``ihvp``: every IHVP solver against the exact solve (relative error, residual, proven
  bound, Pearson R on the run's 500 points), medians of ``--repeats``;
* ``loo``: certified Newton against warm-started L-BFGS per removal (``--lbfgs-sample``);
* ``study``: the complete study on the run's model: 20 sampled test points × top 100
  (union retrained once), 500 random removals for test 8, and ``--select all`` measured on
  its first ``--all-sample`` removals and extrapolated to all 55,000 (in a child process, so
  that its peak memory is its own);
* ``examples``: the README's own-data examples (scikit-learn's digits and breast cancer,
  exported by ``python -m infl_cli.examples``; needs the ``examples`` extra): ``infl run``
  wall time, certification, and R of the default solver (LiSSA) against ``--solver exact``
  on the same top 100;
* ``startup``: what a command costs beyond its work (issue "Every command pays..."),
  ``--repeats`` times, interleaved, medians: ``python -c pass``, ``infl --help`` and
  ``infl loo --help``; on the run's folder, ``ihvp --solver cg``, ``score``, ``plot`` alone
  and a second ``infl run`` with every stage current; with ``--baseline PATH`` (a checkout of an
  earlier commit, e.g. ``git worktree add /tmp/base 88061f2``) a cold ``infl run`` and the LOO
  stage alone of both codes, interleaved in one window;
* ``mislabel`` (issue 21): ``infl self-influence`` on the run's model ``--repeats`` times
  from a fresh Hessian (wall, peak memory, the sample's measured and proven errors), its
  ``--check 500`` truth check, and ``infl mislabel`` (defaults: 10 % flips, 5 seeds, 7 levels)
  on full MNIST and on ``mnist-tiny`` (wall, certification, proofs, AUCs);
* ``lds`` (issue 22): on dattri's MNIST split (``python -m infl_cli.examples --dattri``,
  ``--bias``, wd 0.01, 500 test points): exact, CG and LiSSA (``--lds-lissa-depth``) scores,
  ``infl lds`` (M = 100, α = 0.5) timed with its peak memory (the subset retrainings and the
  LDS of every scores artifact), then the LOO correlation on the top 100 and on 100 random
  removals per test point; on full MNIST (the run's model, 20 sampled test points), exact
  scores and ``infl lds`` (M = 100) timed with its peak memory, and the LOO correlation on
  100 random removals;
* ``estimators`` (issue 23; after ``lds``, in its folders): every estimator of ``infl score
  --method`` (defaults, and a small labelled grid: Arnoldi rank 20 and 500, damping 1e-3 for
  K-FAC, EK-FAC and DataInf, TRAK 2,048 dimensions, TRAK with 10 and 50 models; on full MNIST
  TRAK-50 and Arnoldi-500 are left out), each timed, then judged with
  the LDS and the LOO correlation on the top 100 and 100 random removals; the table beside
  dattri's published LOO column; and each estimator on full MNIST for one test point (test 8)
  with its wall time and peak memory;
* ``paper`` (issue 24): ``infl run --figure 1`` and ``--figure 3`` from nothing (MNIST 1 vs 7,
  the authors' settings), each timed with its peak memory, with the figures' numbers: Figure
  1's R per variant; Figure 3's R per temperature beside the authors', the smooth models' R,
  and how many SVM changes are proven within 1 %;
* ``memory`` (issue 36; :mod:`bench_memory`): every command's peak memory and time on
  synthetic data of ``--memory-sizes`` rows (K = 10, d = 256 float32), against the estimate
  each checks its budget with;
* ``attack`` (issue 34): ``infl attack`` on four models: MNIST 1 vs 7 and 10-class MNIST,
  each with the paper's training-set size (``--train-size 1800``, drawn at random) and on
  the whole training set. The two targets at the paper's ε (``--attack-eps``): 1 vs 7 at
  1,800 points, 100 test points, budgets 1, 2 and 10; 10 classes on all 55,000, 50 test
  points, budget 1. Then each model over ``--attack-sweep`` (budgets 1, 2, 10): each timed
  with its peak memory, the flip fractions (proven) of the attack and of the random-sign
  baseline, the smallest ε where half flip, undecided verdicts and predicted-vs-actual R;
* ``cluster``: ``--cluster-sample`` random removals for test 8 in-process (2 BLAS threads)
  against ``--cluster local:2`` (2 one-thread worker processes): throughput, where the extra
  time of the cluster run goes (Hessian, scatter, cluster start, per-worker setup and
  scheduling), and whether the two artifacts are identical (needs the ``cluster`` extra).

Prints rich tables and writes JSON (default ``artifacts/bench/bench.json``). Not a test:
timings depend on the machine and its load; compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import infl_cli  # noqa: F401  (sets the thread-wait defaults before NumPy and torch load)

# isort: split
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from infl_cli import stages
from infl_cli.engines.logreg import loo, model, score
from infl_cli.engines.logreg.solvers import LogisticOperator
from infl_cli.figures import fig2 as plot
from infl_cli.numerics.solvers import CgSolver, ExactSolver, LissaSolver
from infl_cli.runtime import artifacts as art
from infl_cli.runtime.chunks import chunk_bounds
from infl_cli.settings import CgSettings, LissaSettings, LooSettings

console = Console(width=160)
SECTIONS = ("run", "ihvp", "loo", "study", "cluster", "examples", "startup", "mislabel", "lds",
            "estimators", "paper", "memory", "attack")
ESTIMATOR_RUNS = (("grad-dot",), ("grad-cos",), ("representer",), ("arnoldi",), ("kfac",),
                  ("ekfac",), ("datainf",), ("trak",),  # the defaults, then the small grid
                  ("arnoldi", "--rank", 20), ("arnoldi", "--rank", 500),
                  ("kfac", "--damping", 1e-3), ("ekfac", "--damping", 1e-3),
                  ("datainf", "--damping", 1e-3), ("trak", "--proj-dim", 2048),
                  ("trak", "--models", 10), ("trak", "--models", 50))
PUBLISHED_LOO = {"exact": 0.87, "cg": 0.88, "lissa": 0.86, "trak-m50": 0.78, "trak-m10": 0.73,
                 "arnoldi": 0.27, "grad-dot": 0.28, "grad-cos": 0.16, "representer": 0.15}
EXAMPLES = {"digits": ["-t", 12], "breast_cancer": ["-t", 12, "--bias"]}  # as in the README


def table(title, rows, columns=("quantity", "value")):
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[f"{v:.6g}" if isinstance(v, float) else str(v) for v in r])
    console.print(t)


def infl(*args) -> float:
    """Run ``infl ARGS`` in a child process; returns its wall time (exits on failure)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "infl_cli", *map(str, args)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"infl {args[0]} failed: {proc.stderr.strip().splitlines()[-1]}")
    return time.perf_counter() - start


def timed(cmd, cwd=None, env=None) -> float:
    """Wall seconds of a child process (exits on failure)."""
    start = time.perf_counter()
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, cwd=cwd,
                          env=None if env is None else {**os.environ, **env})
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def bench_startup(args, work: Path) -> dict:
    """What each command costs beyond its work (module doc: ``startup``)."""
    infl_cmd = [sys.executable, "-m", "infl_cli"]
    rows, out = [], {}
    light = {"python -c pass": [sys.executable, "-c", "pass"],
             "infl --help": infl_cmd + ["--help"], "infl loo --help": infl_cmd + ["loo", "--help"],
             "infl --version": infl_cmd + ["--version"]}
    heavy = {"infl ihvp --solver cg": infl_cmd + ["ihvp", "--solver", "cg", "-w", work],
             "infl score": infl_cmd + ["score", "-w", work],
             "infl plot": infl_cmd + ["plot", "-w", work],
             "infl run (every stage current)": infl_cmd + [
                 "run", "-w", work, "--dataset", args.dataset, "--data-dir", args.data_dir,
                 "--no-download"]}
    samples = {name: [] for name in {**light, **heavy}}
    for _ in range(args.repeats):
        for name, cmd in {**light, **heavy}.items():
            samples[name].append(timed(cmd))
    for name, values in samples.items():
        out[name] = {"median_s": statistics.median(values), "runs": values}
        rows.append((name, statistics.median(values), ", ".join(f"{v:.2f}" for v in values)))
    solve = art.read_record(work / art.ihvp_name("cg"))["report"]["seconds"]
    out["ihvp cg: the solve itself (s)"] = solve
    rows.append(("ihvp cg: the solve itself (record)", solve, ""))
    if args.baseline:
        base = Path(args.baseline).resolve()
        compare = {"now": (Path.cwd(), work / "cmp-now"), "baseline": (base, work / "cmp-base")}
        runs = {key: {"run": [], "run: its loo stage": [], "loo": [], "loo_hessian": []}
                for key in compare}
        for _ in range(args.repeats):
            for key, (repo, folder) in compare.items():
                shutil.rmtree(folder, ignore_errors=True)
                env = {"PYTHONPATH": str(repo)}
                runs[key]["run"].append(timed(
                    [sys.executable, "-m", "infl_cli", "run", "-w", folder, "--dataset",
                     args.dataset, "--data-dir", Path(args.data_dir).resolve(),
                     "--no-download"], cwd=repo, env=env))
                runs[key]["run: its loo stage"].append(
                    json.loads((folder / "timings.json").read_text())["loo"])
            for key, (repo, folder) in compare.items():  # the LOO stage alone, cold
                for f in list(folder.glob("loo*.safetensors")) + list(folder.glob("hessian-*")):
                    f.unlink()
                timed([sys.executable, "-m", "infl_cli", "loo", "-w", folder], cwd=repo,
                      env={"PYTHONPATH": str(repo)})
                lrec = art.read_record(folder / art.LOO)
                runs[key]["loo"].append(lrec["seconds"])
                runs[key]["loo_hessian"].append(lrec["factor_seconds"])
        for key, r in runs.items():
            for what, values in r.items():
                out[f"{key}: {what} (s)"] = {"median_s": statistics.median(values),
                                             "runs": values}
                rows.append((f"{key}: {what}", statistics.median(values),
                             ", ".join(f"{v:.1f}" for v in values)))
        for what in ("run", "loo"):
            ratio = (statistics.median(runs["now"][what])
                     / statistics.median(runs["baseline"][what]))
            out[f"ratio now / baseline: {what}"] = ratio
            rows.append((f"ratio now / baseline: {what}", ratio, ""))
        out["baseline"] = str(base)
    table("start-up and reruns (medians, seconds)", rows, ("what", "median", "runs"))
    return out


def timed_peak(cmd) -> tuple:
    """(wall seconds, peak resident GB) of a child process, by GNU time."""
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".time") as fh:
        wall = timed(["/usr/bin/time", "-f", "%M", "-o", fh.name, *map(str, cmd)])
        return wall, int(fh.read().strip().splitlines()[-1]) / 1e6


def bench_mislabel(args, work: Path) -> dict:
    """Self-influence and the mislabel experiment (module doc: ``mislabel``)."""
    infl_cmd = [sys.executable, "-m", "infl_cli"]
    out, rows = {}, []
    si = work / "self-influence.safetensors"
    runs = []
    for _ in range(args.repeats):
        for f in (si, work / "hessian-cholesky64.safetensors"):
            f.unlink(missing_ok=True)
        runs.append(timed_peak(infl_cmd + ["self-influence", "-w", work]))
    rec = art.read_record(si)
    out["self_influence"] = {
        "wall_s": statistics.median(r[0] for r in runs), "runs_s": [r[0] for r in runs],
        "peak_gb": max(r[1] for r in runs), "compute_s": rec["seconds"],
        "sample": rec["sample"],
        "measured_relative_error_max": rec["sample_measured_relative_error_max"],
        "proven_relative_error_max": rec["sample_proven_relative_error_max"]}
    rows += [("self-influence, all n (Hessian included): wall, median", out["self_influence"]
              ["wall_s"]), ("  peak memory (GB)", out["self_influence"]["peak_gb"]),
             ("  sample: largest measured / proven relative error",
              f"{rec['sample_measured_relative_error_max']:.1e} / "
              f"{rec['sample_proven_relative_error_max']:.1e}")]
    (work / "self-loo.safetensors").unlink(missing_ok=True)
    wall = timed(infl_cmd + ["self-influence", "-w", work, "--check", "500"])
    crec = art.read_record(work / "self-loo.safetensors")
    arrays = art.load_arrays(work / "self-loo.safetensors")[0]
    sarr = art.load_arrays(si)[0]
    m = plot.agreement(arrays["actual_own_change"],
                       sarr["predicted_own_change"][arrays["train_indices"]])
    out["truth_check"] = {"wall_s": wall, **m, "certified": crec["certified"],
                          "within_1pct": crec["within_target"]}
    rows.append(("truth check, top 500: R / slope / certified",
                 f"{m['pearson_r']:.6f} / {m['slope']:.4f} / {crec['certified']}"))
    for name, folder, extra in (("mnist", work / "mislabel", []),
                                ("mnist-tiny", work / "mislabel-tiny", ["--dataset",
                                                                        "mnist-tiny"])):
        shutil.rmtree(folder, ignore_errors=True)
        if extra:
            timed(infl_cmd + ["train", "-w", folder, *extra])
        else:
            folder.mkdir(parents=True)
            shutil.copy(work / art.MODEL, folder / art.MODEL)
        wall, peak = timed_peak(infl_cmd + ["mislabel", "-w", folder])
        mm = json.loads((folder / art.METRICS).read_text())["mislabel"]
        out[f"mislabel_{name}"] = {"wall_s": wall, "peak_gb": peak, **{
            k: mm[k] for k in ("models", "models_certified", "max_grad_bound",
                               "unproven_predictions", "all_fixed_equals_clean", "clean")},
            "auc": {o: e["auc"] for o, e in mm["per_ordering"].items()}}
        rows.append((f"mislabel {name}: wall / peak GB", f"{wall:.1f} / {peak:.2f}"))
        rows.append(("  models certified, unproven predictions",
                     f"{mm['models_certified']} of {mm['models']}, "
                     f"{mm['unproven_predictions']}"))
        rows.append(("  AUC", ", ".join(f"{o} {e['auc']:.4f}"
                                       for o, e in mm["per_ordering"].items())))
    table("self-influence and mislabel", rows)
    return out


def bench_paper(args, work: Path) -> dict:
    """The paper's Figures 1 and 3, each end to end from nothing (``infl run --figure N``,
    MNIST decoded already): wall time, peak memory, and the figures' numbers."""
    infl_cmd = [sys.executable, "-m", "infl_cli", "run", "--data-dir", args.data_dir,
                "--dataset", args.dataset, "-w", work / "paper"]
    out, rows = {}, []
    for figure, folder in ((1, "figure1"), (3, "figure3")):
        shutil.rmtree(work / "paper" / folder, ignore_errors=True)
        wall, peak = timed_peak(infl_cmd + ["--figure", figure])
        metrics = json.loads((work / "paper" / folder / art.METRICS).read_text())
        out[f"figure{figure}"] = {"wall_s": wall, "peak_gb": peak, **metrics}
        rows.append((f"Figure {figure}: wall (s) / peak (GB)", f"{wall:.1f} / {peak:.2f}"))
        if figure == 1:
            m = metrics["components"]["pearson"]
            rows.append(("  Pearson R: no train loss / no H / neither",
                         f"{m['no_train_loss']:.3f} / {m['no_hessian']:.3f} / "
                         f"{m['no_both']:.3f}"))
        else:
            m = metrics["hinge"]
            rows.append(("  SVM: R per t (paper's)", ", ".join(
                f"t={t} {v['pearson']:.3f} ({m['paper_r'].get(t, '–')})"
                for t, v in m["svm"].items())))
            rows.append(("  smooth model at its own t: R", ", ".join(
                f"t={t} {v['pearson']:.4f}" for t, v in m["smooth"].items())))
            rows.append(("  changes proven within 1 % / largest bound",
                         f"{m['svm_truth']['within_1pct']} of {m['svm_truth']['n']} / "
                         f"{m['svm_truth']['max_bound']:.1e}"))
    table("the paper's Figures 1 and 3", rows)
    return out


def bench_lds(args, work: Path) -> dict:
    """Certified subset truth, LDS and LOO correlation (module doc: ``lds``)."""
    infl_cmd = [sys.executable, "-m", "infl_cli"]
    out, rows = {}, []
    folder = work / "lds-dattri"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    timed([sys.executable, "-m", "infl_cli.examples", "--dattri", folder, "--data-dir",
           args.data_dir])
    npz = folder / "dattri-mnist.npz"
    cases = (("dattri", folder, ["--dataset", npz, "--bias"], 500, ("exact", "cg", "lissa")),
             ("mnist", work / "lds-mnist", None, 20, ("exact",)))
    for name, w, train_args, tests, solvers in cases:
        if train_args is None:
            shutil.rmtree(w, ignore_errors=True)
            w.mkdir(parents=True)
            if not (work / art.MODEL).is_file():
                timed(infl_cmd + ["train", "-w", work, "--data-dir", args.data_dir])
            shutil.copy(work / art.MODEL, w / art.MODEL)
            train_s = art.read_record(w / art.MODEL)["seconds"]
        else:
            train_s = timed(infl_cmd + ["train", "-w", w, *train_args])
        entry = {"train_s": train_s, "test_points": tests, "scores_s": {}}
        for solver in solvers:
            extra = ["--depth", args.lds_lissa_depth] if solver == "lissa" else []
            entry["scores_s"][solver] = (
                timed(infl_cmd + ["ihvp", "-w", w, "--solver", solver, "--test-sample", tests,
                                  *extra])
                + timed(infl_cmd + ["score", "-w", w, "--solver", solver]))
        wall, peak = timed_peak(infl_cmd + ["lds", "-w", w])
        truth = art.read_record(w / "subsets.safetensors")
        section = json.loads((w / art.METRICS).read_text())["lds"]
        entry.update(lds_wall_s=wall, lds_peak_gb=peak, truth={
            k: truth[k] for k in ("certified", "max_grad_norm_bound", "max_output_bound",
                                  "max_bound_over_spread", "newton_steps_max", "float64_passes",
                                  "chunk_seconds", "seconds", "subset_size")},
            lds={m: {k: e.get(k) for k in ("lds", "lds_lo", "lds_hi", "certified",
                                           "largest_group")}
                 for m, e in section["methods"].items()})
        rows += [(f"{name}: infl lds (M = 100, {tests} tests): wall / peak GB",
                  f"{wall:.1f} / {peak:.2f}"),
                 ("  subsets certified; max ‖∇R_S‖ bound; max output bar (proven)",
                  f"{truth['certified']}; {truth['max_grad_norm_bound']:.2e}; "
                  f"{truth['max_output_bound']:.2e}"),
                 ("  max bar / spread across subsets", f"{truth['max_bound_over_spread']:.2e}")]
        rows += [(f"  LDS {m}", f"{e['lds']:.4f} in [{e['lds_lo']:.4f}, {e['lds_hi']:.4f}]"
                  f"{' (exact ranks)' if e['certified'] else ''}")
                 for m, e in entry["lds"].items()]
        entry["loo"] = {}
        for select in (("top", "random") if name == "dattri" else ("random",)):
            wall = timed(infl_cmd + ["loo", "-w", w, "--select", select, "-k", 100])
            timed(infl_cmd + ["lds", "-w", w])  # the truth is current: judged only
            section = json.loads((w / art.METRICS).read_text())["lds"]
            rec = art.read_record(w / art.LOO)
            entry["loo"][select] = {"wall_s": wall, "certified": rec["certified"],
                                    **{m: e["loo"] for m, e in section["methods"].items()}}
            rows += [(f"  LOO {select} 100 ({rec['certified']} certified, {wall:.1f} s): {m}",
                      f"Spearman {e['loo']['spearman_mean']:.4f}, Pearson "
                      f"{e['loo']['pearson_mean']:.4f}, pooled R {e['loo']['pooled_pearson']:.4f}")
                     for m, e in section["methods"].items()]
        out[name] = entry
    table("LDS and LOO correlation on certified truth", rows)
    return out


def bench_estimators(args, work: Path) -> dict:
    """The field's estimators judged on certified truth (module doc: ``estimators``)."""
    infl_cmd = [sys.executable, "-m", "infl_cli"]
    out = {}
    for name in ("dattri", "mnist"):
        w = work / f"lds-{name}"
        if not (w / "subsets.safetensors").is_file():
            sys.exit(f"estimators: run the lds section first ({w} has no subset truth)")
        seconds = {}
        for run in ESTIMATOR_RUNS:
            if name == "mnist" and run in (("trak", "--models", 50), ("arnoldi", "--rank", 500)):
                continue
            timed(infl_cmd + ["score", "-w", w, "--method", *map(str, run)])
        for label in [p.name[len("scores-"):-len(".safetensors")]
                      for p in w.glob("scores-*.safetensors")]:
            rec = art.read_record(w / art.scores_name(label))
            seconds[label] = rec["seconds"]
            ihvp_path = w / art.ihvp_name(label)
            if ihvp_path.is_file():
                seconds[label] += art.read_record(ihvp_path)["report"]["seconds"]
        judged = {}
        for select in ("top", "random"):
            timed(infl_cmd + ["loo", "-w", w, "--select", select, "-k", 100])
            timed(infl_cmd + ["lds", "-w", w])
            judged[select] = json.loads((w / art.METRICS).read_text())["lds"]["methods"]
        rows = []
        for label, e in judged["top"].items():
            t, r = e["loo"], judged["random"][label]["loo"]
            rows.append((label, f"{seconds.get(label, float('nan')):.1f}",
                         f"{e['lds']:.4f}" + ("" if e["certified"] else
                                              f" [{e['lds_lo']:.4f}, {e['lds_hi']:.4f}]"),
                         f"{t['spearman_mean']:.3f} / {t['pearson_mean']:.3f}",
                         f"{r['spearman_mean']:.3f} / {r['pearson_mean']:.3f}",
                         PUBLISHED_LOO.get(label, "–") if name == "dattri" else "–"))
        table(f"estimators on {name}: certified LDS and LOO correlation", rows,
              ("estimator", "seconds", "LDS", "LOO ρ / R top 100", "LOO ρ / R 100 random",
               "dattri LOO"))
        out[name] = {"seconds": seconds, "judged": judged}
    one = work / "estimators-one"
    shutil.rmtree(one, ignore_errors=True)
    one.mkdir(parents=True)
    shutil.copy(work / "lds-mnist" / art.MODEL, one / art.MODEL)
    rows, single = [], {}
    for run in ESTIMATOR_RUNS[:8] + (("trak", "--models", 10),):
        wall, peak = timed_peak(infl_cmd + ["score", "-w", one, "-t", 8, "--method",
                                            *map(str, run)])
        label = " ".join(map(str, run))
        single[label] = {"wall_s": wall, "peak_gb": peak}
        rows.append((label, f"{wall:.1f}", f"{peak:.2f}"))
    table("full MNIST, one test point, all 55,000 training points", rows,
          ("estimator", "wall s", "peak GB"))
    out["mnist_one_test"] = single
    return out


def child_peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6


def bench_run(args, work: Path) -> dict:
    """``infl run`` --repeats times from scratch; medians."""
    runs = []
    for i in range(args.repeats):
        for f in work.glob("*.safetensors"):
            f.unlink()
        wall = infl("run", "-w", work, "--dataset", args.dataset, "--data-dir", args.data_dir,
                    "--no-download")
        lrec = art.read_record(work / art.LOO)
        runs.append({"wall_seconds": wall,
                     **{f"{k} (s)": v for k, v in
                        json.loads((work / "timings.json").read_text()).items()},
                     "loo: Hessian factor (s)": lrec["factor_seconds"]})
        console.print(f"infl run {i + 1}/{args.repeats}: {wall:.1f} s")
    mrec = art.read_record(work / art.MODEL)
    metrics = json.loads((work / art.METRICS).read_text())
    out = {**{key: statistics.median(r[key] for r in runs) for key in runs[0]},
           "repeats": args.repeats, "wall_seconds_all": [r["wall_seconds"] for r in runs],
           "peak_rss_gb (max over runs)": child_peak_gb(),
           "train: certified ‖∇R‖ ≤": mrec["grad_norm_certified"],
           "loo: max ‖∇R₋z‖ ≤": lrec["max_grad_norm_bound"],
           "loo: pairs within 1 %": f"{lrec['pairs_within_target']} of {lrec['pairs_selected']}",
           "loo: worst bound / |change|": lrec["worst_bound_ratio"],
           "pearson_r": metrics["panels"]["lissa"]["pearson_r"],
           "spearman_rho": metrics["panels"]["lissa"]["spearman_rho"]}
    table("infl run (medians)", list(out.items()))
    return out


def bench_ihvp(args, work: Path) -> dict:
    tensors, mrec, data = stages.load_model(work)
    weight = tensors["weight"]
    wd = mrec["settings"]["wd"]
    ltensors, _ = art.load_artifact(work / art.LOO)
    removed, actual = ltensors["train_indices"], ltensors["actual_loss_diff"][0].numpy()
    t = int(ltensors["test_indices"][0])
    rhs = model.test_point_grads(weight, data.x_test[t:t + 1], data.y_test[t:t + 1])
    solver_runs = [("exact", ExactSolver()),
                   ("cg (default: subspace-preconditioned)", CgSolver(CgSettings())),
                   ("cg --cg-rank 0 (plain)", CgSolver(CgSettings(rank=0))),
                   ("lissa (default)", LissaSolver(LissaSettings())),
                   ("lissa --preset paper", LissaSolver(LissaSettings.paper()))]
    estimates, rows, out = {}, [], {}
    operator = LogisticOperator(weight, wd, data.design, dense=lambda: data.x_train)
    for label, solver in solver_runs:
        seconds = []
        for _ in range(1 if solver.name == "exact" else args.repeats):
            est, rep = solver.solve(operator, rhs)
            seconds.append(rep["seconds"])
        estimates[label] = est
        reference = estimates["exact"]
        err = float((est - reference).norm() / reference.norm())
        _, predicted = score.influence_scores(weight, data.x_train, data.y_train, wd, est)
        r = plot.agreement(actual, predicted[0, removed].numpy())["pearson_r"]
        out[label] = {"seconds": statistics.median(seconds), "iterations": rep["iterations"],
                      "hvps": rep["hvps"], "relative_error_vs_exact": err,
                      "relative_residual": rep["relative_residual"][0],
                      "error_bound_relative": rep["error_bound_relative"][0], "pearson_r": r}
        rows.append([label, out[label]["seconds"], rep["iterations"], rep["hvps"], err,
                     rep["relative_residual"][0], rep["error_bound_relative"][0], r])
    table(f"IHVP solvers (test index {t})", rows,
          ["solver", "seconds", "iterations", "HVPs", "rel. error vs exact", "residual",
           "proven bound", "Pearson R (top 500)"])
    return out


def bench_loo(args, work: Path, run: dict | None) -> dict:
    """Certified Newton (from the run) against warm-started L-BFGS on a sample of its points,
    each certified by the same float64 pass."""
    tensors, mrec, data = stages.load_model(work)
    weight = tensors["weight"]
    ltensors, lrec = art.load_artifact(work / art.LOO)
    t = int(ltensors["test_indices"][0])
    problem = loo.LooProblem(weight, data.design, data.y_train, mrec["settings"]["wd"],
                             data.x_test[t:t + 1], data.y_test[t:t + 1], build_factor=False)
    sample = ltensors["train_indices"][:args.lbfgs_sample].numpy()
    settings = LooSettings(method="lbfgs", tol=lrec["settings"]["tol"])
    start = time.perf_counter()
    out, _ = loo.solve_chunk(problem, sample, np.ones((1, len(sample)), bool), settings)
    lbfgs_per_point = (time.perf_counter() - start) / len(sample)
    newton_total = run["loo (s)"] if run else lrec["seconds"]
    newton_per_point = newton_total / lrec["n_removals"]
    newton = ltensors["actual_loss_diff"][0, :len(sample)].numpy()
    gap = np.abs(out["actual_loss_diff"][0] - newton)
    result = {
        "newton_seconds_per_point (Hessian included)": newton_per_point,
        "newton_points": lrec["n_removals"],
        "newton_max_grad_norm_bound": lrec["max_grad_norm_bound"],
        "lbfgs_seconds_per_point": lbfgs_per_point, "lbfgs_points": len(sample),
        "lbfgs_max_grad_norm_bound": float((out["grad_norm"] + out["grad_rounding"]).max()),
        "speedup_per_point": lbfgs_per_point / newton_per_point,
        "max |newton − lbfgs| actual change": float(gap.max()),
        "within both certified bounds": bool((gap <= out["actual_error_bound"][0]
                                              + ltensors["actual_error_bound"][0, :len(sample)]
                                              .numpy()).all()),
    }
    table("LOO retraining", list(result.items()))
    return result


def bench_study(args, work: Path) -> dict:
    out = {}
    # a. 20 sampled test points, top 100 each: one retraining per removal of the union
    multi = work.parent / "bench-multi"
    shutil.rmtree(multi, ignore_errors=True)
    multi.mkdir(parents=True)
    shutil.copy(work / art.MODEL, multi / art.MODEL)
    base = ["-w", multi, "--test-sample", 20, "--seed", 0]
    t_ihvp = infl("ihvp", *base)
    infl("score", "-w", multi)
    t_loo = infl("loo", "-w", multi, "-k", 100)
    infl("plot", "-w", multi)
    lrec = art.read_record(multi / art.LOO)
    m = json.loads((multi / art.METRICS).read_text())["panels"]["lissa"]
    per_test = sorted(m["per_test"], key=lambda p: p["pearson_r"])
    out["multi"] = {"test points": 20, "union removals": lrec["n_removals"],
                    "ihvp (20 test points, LiSSA) wall s": t_ihvp, "loo wall s": t_loo,
                    "loo seconds (stage)": lrec["seconds"],
                    "Hessian seconds": lrec["factor_seconds"],
                    "seconds per removal (Hessian included)": lrec["seconds"] / lrec["n_removals"],
                    "pairs within 1 %": f"{lrec['pairs_within_target']} of {lrec['pairs_selected']}",
                    "median R": m["median_pearson_r"], "worst R": m["worst_pearson_r"],
                    "worst test": m["worst_test_index"], "median ρ": m["median_spearman_rho"],
                    "worst ρ": m["worst_spearman_rho"],
                    "three lowest R": [(p["test_index"], round(p["pearson_r"], 7))
                                       for p in per_test[:3]]}
    table("20 test points × top 100", list(out["multi"].items()))
    # b. 500 random removals for test 8
    rand = work.parent / "bench-random"
    shutil.rmtree(rand, ignore_errors=True)
    shutil.copytree(work, rand)
    (rand / art.LOO).unlink()
    t_rand = infl("loo", "-w", rand, "--select", "random", "-k", 500, "-t", 8)
    infl("plot", "-w", rand)
    lrec = art.read_record(rand / art.LOO)
    m = json.loads((rand / art.METRICS).read_text())["panels"]["lissa"]
    out["random"] = {"removals": 500, "loo wall s": t_rand,
                     "pairs within 1 %": f"{lrec['pairs_within_target']} of {lrec['pairs_selected']}",
                     "worst bound / |change|": lrec["worst_bound_ratio"],
                     "smallest |change|": float(np.min(np.abs(art.load_artifact(
                         rand / art.LOO)[0]["actual_loss_diff"].numpy()))),
                     "pearson_r": m["pearson_r"], "spearman_rho": m["spearman_rho"],
                     "bands": [(b["band"], b["k"], round(b["pearson_r"], 6),
                                round(b["spearman_rho"], 6)) for b in m["bands"]]}
    table("500 random removals, test 8", list(out["random"].items()))
    # c. --select all on a sample, in a child process (its own peak memory)
    proc = subprocess.run([sys.executable, __file__, "--all-sample-child", str(work),
                           "--all-sample", str(args.all_sample)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"all-sample failed: {proc.stderr[-2000:]}")
    out["all"] = json.loads(proc.stdout.strip().splitlines()[-1])
    table(f"--select all, measured on {args.all_sample} removals", list(out["all"].items()))
    return out


def bench_cluster(args, work: Path) -> dict:
    """In-process against local:2 on the same random removals (fresh folders, same model)."""
    runs, tensors = {}, {}
    for name, extra in (("in-process (2 threads)", []), ("local:2 (2 × 1 thread)",
                                                        ["--cluster", "local:2"])):
        folder = work.parent / ("bench-cluster-" + ("local2" if extra else "inprocess"))
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(work, folder)
        (folder / art.LOO).unlink()
        wall = infl("loo", "-w", folder, "--select", "random", "-k", args.cluster_sample,
                    "-t", 8, *extra)
        rec = art.read_record(folder / art.LOO)
        tensors[name] = art.load_artifact(folder / art.LOO)[0]
        solve = rec["n_removals"] / rec["removals_per_second"]  # after the scatter, to the end
        ideal = rec["chunk_seconds"] / rec["workers"]  # the chunks' own time, spread evenly
        runs[name] = {
            "removals": rec["n_removals"], "workers": rec["workers"], "wall s": wall,
            "stage s": rec["seconds"], "Hessian s (driver)": rec["factor_seconds"],
            "scatter s": rec["scatter_seconds"] or 0.0,
            "cluster start, connect s": rec["seconds"] - rec["factor_seconds"]
            - (rec["scatter_seconds"] or 0.0) - solve,
            "solve phase s": solve, "chunk compute s (sum)": rec["chunk_seconds"],
            "chunk compute s per removal": rec["chunk_seconds"] / rec["n_removals"],
            "worker setup + scheduling s": solve - ideal,
            "throughput, solve phase (removals/s)": rec["removals_per_second"],
            "throughput, whole stage (removals/s)": rec["n_removals"] / rec["seconds"],
            "pairs within 1 %": f"{rec['pairs_within_target']} of {rec['pairs_selected']}"}
    a, b = tensors.values()
    same = set(a) == set(b) and all(torch.equal(a[key], b[key]) for key in a)
    out = {**runs, "identical tensors": same}
    names = list(runs)
    table(f"{args.cluster_sample} random removals, test 8: in-process vs local:2",
          [(key, runs[names[0]][key], runs[names[1]][key]) for key in runs[names[0]]]
          + [("identical tensors", same, same)], columns=("quantity", *names))
    return out


def bench_examples(args, work: Path) -> dict:
    """The README's own-data examples, each as its README commands run them."""
    folder = work.parent / "bench-examples"
    shutil.rmtree(folder, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "infl_cli.examples", str(folder / "data")],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"exporting the examples failed: {proc.stderr.strip()[-500:]}")
    out = {}
    for name, extra in EXAMPLES.items():
        w = folder / name
        walls = []
        for _ in range(args.repeats):  # each from scratch
            shutil.rmtree(w, ignore_errors=True)
            walls.append(infl("run", "--dataset", folder / "data" / f"{name}.npz", "-w", w,
                              "-k", 100, *extra))
        infl("ihvp", "-w", w, "--solver", "exact", *extra[:2])
        infl("score", "-w", w, "--solver", "exact")
        infl("plot", "-w", w, "--solver", "lissa", "--solver", "exact")
        panels = json.loads((w / art.METRICS).read_text())["panels"]
        mrec, lrec = art.read_record(w / art.MODEL), art.read_record(w / art.LOO)
        irec = art.read_record(w / art.ihvp_name("lissa"))
        s_lissa, s_exact = (art.load_artifact(w / art.ihvp_name(s))[0]["ihvp"]
                            for s in ("lissa", "exact"))
        out[name] = {"n_train": mrec["n_train"], "classes × features":
                     f"{mrec['n_classes']} × {mrec['n_features']}",
                     "rounding model": mrec["rounding_model"],
                     "infl run wall s (median)": statistics.median(walls),
                     "train: certified ‖∇R‖ ≤": mrec["grad_norm_certified"],
                     "lissa: proven relative error ≤": irec["report"]["error_bound_relative"][0],
                     "lissa: relative error vs exact (measured)":
                         float((s_lissa - s_exact).norm() / s_exact.norm()),
                     "loo: pairs within 1 %":
                         f"{lrec['pairs_within_target']} of {lrec['pairs_selected']}",
                     "loo: worst bound / |change|": lrec["worst_bound_ratio"],
                     "loo: baseline error (floor)": lrec["baseline_error"][0],
                     "R lissa (default)": panels["lissa"]["pearson_r"],
                     "R exact": panels["exact"]["pearson_r"],
                     "|R lissa − R exact|": abs(panels["lissa"]["pearson_r"]
                                                - panels["exact"]["pearson_r"]),
                     "ρ lissa": panels["lissa"]["spearman_rho"],
                     "ρ exact": panels["exact"]["spearman_rho"]}
        table(f"own data: {name} (top 100, {' '.join(map(str, extra))})", list(out[name].items()))
    return out


def all_sample_child(work: Path, count: int) -> None:
    """The first ``count`` removals of ``--select all`` for test 8 with the stage's defaults;
    prints JSON with the per-removal cost and its extrapolation."""
    tensors, mrec, data = stages.load_model(work)
    settings = LooSettings()
    plan = stages.plan_loo(work, None, stages.TestChoice([8]), "all", 0, 0, settings, mrec, data)
    _, _, tests, train_idx, selected = plan
    start = time.perf_counter()
    problem = stages.build_problem(tensors, mrec, data, tests, settings)
    factor = time.perf_counter() - start
    actual, bound, passes = [], [], [0, 0]
    start = time.perf_counter()
    for lo, hi in chunk_bounds(count, settings.chunk_size):
        res, stats = loo.solve_chunk(problem, train_idx[lo:hi], selected[:, lo:hi], settings)
        actual.append(res["actual_loss_diff"][0])
        bound.append(res["actual_error_bound"][0])
        passes[0] += stats["float64_passes"]
        passes[1] += stats["float32_passes"]
    seconds = time.perf_counter() - start
    actual, bound = np.concatenate(actual), np.concatenate(bound)
    per = seconds / count
    within = bound <= 0.01 * np.abs(actual)
    print(json.dumps({
        "sample removals": count, "Hessian seconds": factor, "solve seconds": seconds,
        "seconds per removal": per, "float64 passes": passes[0], "float32 passes": passes[1],
        "within 1 %": int(within.sum()), "not within 1 % (float64 floor)": int((~within).sum()),
        "largest bound among those": float(bound[~within].max()) if (~within).any() else 0.0,
        "median |change|": float(np.median(np.abs(actual))),
        "extrapolated minutes, all 55,000": (factor + per * data.n_train) / 60,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))


ATTACK_SETTINGS = (  # (name, train options, attack options)
    ("1 vs 7, n = 1,800", ["--classes", "1,7", "--train-size", 1800],
     ["--test-sample", 100, "--budget", "1,2,10"]),
    ("1 vs 7, all 11,894", ["--classes", "1,7"], ["--test-sample", 100, "--budget", "1,2,10"]),
    ("10 classes, n = 1,800", ["--train-size", 1800],
     ["--test-sample", 50, "--budget", "1,2,10"]),
    ("10 classes, all 55,000", [], ["--test-sample", 50, "--budget", "1,2,10"]),
)


def bench_attack(args, work: Path) -> dict:
    """The training-set attack (module doc: ``attack``): the two targets at the paper's ε,
    then every setting over the ``--attack-sweep`` ε."""
    infl_cmd = [sys.executable, "-m", "infl_cli"]
    out, rows = {}, []
    folders = {}
    for name, train, _ in ATTACK_SETTINGS:
        folder = work / ("attack-" + "".join(c for c in name if c.isalnum()))
        shutil.rmtree(folder, ignore_errors=True)
        timed(infl_cmd + ["train", "-w", folder, "--data-dir", args.data_dir, *train])
        folders[name] = folder
    runs = [("target: 1 vs 7, n = 1,800, 100 tests, budgets 1/2/10", "1 vs 7, n = 1,800",
             ["--test-sample", 100, "--budget", "1,2,10"], args.attack_eps),
            ("target: 10 classes, all 55,000, 50 tests, budget 1", "10 classes, all 55,000",
             ["--test-sample", 50, "--budget", "1"], args.attack_eps)]
    runs += [(f"sweep: {name}", name, extra, args.attack_sweep)
             for name, _, extra in ATTACK_SETTINGS]
    for label, name, extra, eps in runs:
        folder = folders[name]
        wall, peak = timed_peak(infl_cmd + ["attack", "-w", folder, "--eps", eps, *extra])
        m = json.loads((folder / art.METRICS).read_text())["attack"]
        out[label] = {"wall_s": wall, "peak_gb": peak, "table": m["table"],
                      "half_flip_eps": m["half_flip_eps"], "undecided": m["undecided"],
                      "verdicts": m["verdicts"], "models_certified": m["models_certified"],
                      "pearson_r": m["agreement"]["pearson_r"],
                      "spearman_rho": m["agreement"].get("spearman_rho")}
        rows.append((f"{label}: wall / peak GB", f"{wall:.1f} / {peak:.2f}"))
        rows += [(f"  ε {r['eps']:g}, budget {r['budget']}: flipped / random flipped",
                  f"{r['attack_flipped']:.2f} / {r['baseline_flipped']:.2f}")
                 for r in m["table"]]
        rows.append(("  undecided, certified, predicted vs actual R",
                     f"{m['undecided']} of {m['verdicts']}, {m['models_certified']}, "
                     f"{m['agreement']['pearson_r']:.6f}"))
    table("attack (issue 34)", rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/mnist")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--workdir", default="artifacts/bench")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--lbfgs-sample", type=int, default=5)
    ap.add_argument("--all-sample", type=int, default=5000)
    ap.add_argument("--cluster-sample", type=int, default=2000)
    ap.add_argument("--all-sample-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs of `infl run` and of each iterative solver; medians are reported")
    ap.add_argument("--lds-lissa-depth", type=int, default=5_000,
                    help="lds: LiSSA's --depth on dattri's split")
    ap.add_argument("--memory-sizes", default="400000,1600000",
                    help="memory: the synthetic sets' numbers of training rows")
    ap.add_argument("--attack-eps", default="0.5",
                    help="attack: --eps of the two target runs (the paper's 0.5 of 0..255)")
    ap.add_argument("--attack-sweep", default="0.5,16,32,64,128,255",
                    help="attack: --eps of the sweep over the four settings")
    ap.add_argument("--out", default=None)
    ap.add_argument("--baseline", default=None,
                    help="startup: a checkout of an earlier commit to compare `infl run` and "
                         "the LOO stage with, interleaved")
    args = ap.parse_args()
    if args.all_sample_child:
        return all_sample_child(Path(args.all_sample_child), args.all_sample)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        sys.exit(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    work = Path(args.workdir)
    out_path = Path(args.out) if args.out else work / "bench.json"
    result = json.loads(out_path.read_text()) if out_path.is_file() else {}
    if "run" in sections or (not (work / art.LOO).is_file()
                                  and set(sections) - {"examples", "lds", "estimators",
                                                       "paper", "memory", "attack"}):
        result["run"] = bench_run(args, work)
    if "ihvp" in sections:
        result["ihvp"] = bench_ihvp(args, work)
    if "loo" in sections:
        result["loo"] = bench_loo(args, work, result.get("run"))
    if "study" in sections:
        result["study"] = bench_study(args, work)
    if "cluster" in sections:
        result["cluster"] = bench_cluster(args, work)
    if "examples" in sections:
        result["examples"] = bench_examples(args, work)
    if "startup" in sections:
        result["startup"] = bench_startup(args, work)
    if "mislabel" in sections:
        result["mislabel"] = bench_mislabel(args, work)
    if "lds" in sections:
        result["lds"] = bench_lds(args, work)
    if "estimators" in sections:
        result["estimators"] = bench_estimators(args, work)
    if "paper" in sections:
        result["paper"] = bench_paper(args, work)
    if "memory" in sections:
        from bench_memory import bench_memory

        result["memory"] = bench_memory(args, work, table)
    if "attack" in sections:
        result["attack"] = bench_attack(args, work)
    art.write_json(out_path, result)
    console.print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
