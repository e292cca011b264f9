"""Rerun every study the README shows and copy its figures and metrics into artifacts/readme/.

    python tests/benchmarks/readme_figures.py [--data-dir ../shared/mnist] [--root /tmp/infl-readme]
        [--only main,tests,random,paper,examples,lds]

Each study runs the README's own commands, each in its own work folder under ``--root``; every
command's wall time and peak resident memory are printed and written to
``ROOT/readme-times.json``. What the README draws is copied to ``artifacts/readme/`` (the
work folder a user's ``infl run`` writes, ``artifacts/``, never holds it). About an hour on a
2-core CPU, most of it LiSSA for 500 test points on dattri's split (``lds``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README_ART = REPO / "artifacts" / "readme"
ESTIMATORS = (("grad-dot",), ("grad-cos",), ("representer",), ("arnoldi",),
              ("arnoldi", "--rank", "20"), ("arnoldi", "--rank", "500"), ("kfac",),
              ("kfac", "--damping", "0.001"), ("ekfac",), ("ekfac", "--damping", "0.001"),
              ("datainf",), ("datainf", "--damping", "0.001"), ("trak",),
              ("trak", "--proj-dim", "2048"), ("trak", "--models", "10"),
              ("trak", "--models", "50"))
TIMES: list = []


def infl(*args) -> None:
    """One ``infl`` command in a child process, its wall time and peak memory recorded."""
    cmd = [sys.executable, "-m", "infl_cli", *map(str, args)]
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", out.name, *cmd], check=True,
                       stdout=subprocess.DEVNULL)
        wall, kb = out.read().split()[-2:]
    line = "infl " + " ".join(map(str, args))
    TIMES.append({"command": line, "wall_s": float(wall), "peak_gb": round(int(kb) / 2**20, 2)})
    print(f"{float(wall):7.1f} s {int(kb) / 2**20:5.2f} GB  {line}", file=sys.stderr, flush=True)


def keep(work: Path, dest: str, *names: str) -> None:
    target = README_ART / dest
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(work / name, target / Path(name).name)


def main_study(root: Path, data: str) -> None:
    w = root / "main"
    infl("run", "--data-dir", data, "-w", w)
    keep(w, "", "fig2_middle.png", "fig2_middle.pdf", "explain-8.png")
    infl("ihvp", "-w", w, "--solver", "cg")
    infl("score", "-w", w, "--solver", "cg")
    infl("loo", "-w", w)
    infl("plot", "-w", w, "--solver", "cg", "--solver", "lissa", "--out",
         w / "fig2_left_middle.png")
    keep(w, "", "fig2_left_middle.png", "fig2_left_middle.pdf")
    infl("self-influence", "-w", w, "--check", 500, "-n", 16)
    keep(w, "", "fig_self_influence.png", "fig_self_influence.pdf", "self-influence.png")
    infl("mislabel", "-w", w)
    keep(w, "", "fig6_mislabel.png", "fig6_mislabel.pdf", "metrics.json")


def tests_study(root: Path, data: str) -> None:
    w = root / "tests"
    infl("run", "--data-dir", data, "-w", w, "--test-sample", 20, "--seed", 0, "-k", 100)
    keep(w, "tests", "fig2_tests.png", "fig2_tests_summary.png", "metrics.json")


def random_study(root: Path, data: str) -> None:
    w = root / "random"
    infl("run", "--data-dir", data, "-w", w, "--select", "random", "-k", 500)
    keep(w, "random", "fig2_random.png", "metrics.json")


def paper_study(root: Path, data: str) -> None:
    infl("run", "--figure", 1, "--data-dir", data, "-w", root / "paper")
    keep(root / "paper" / "figure1", "figure1", "fig_components.png", "metrics.json")
    infl("run", "--figure", 3, "--data-dir", data, "-w", root / "paper")
    keep(root / "paper" / "figure3", "figure3", "fig_hinge.png", "metrics.json")


def examples_study(root: Path, data: str) -> None:
    subprocess.run([sys.executable, "-m", "infl_cli.examples", root / "data"], check=True,
                   stdout=subprocess.DEVNULL)
    for name, extra in (("digits", ()), ("breast_cancer", ("--bias",))):
        w = root / name
        infl("run", "--dataset", root / "data" / f"{name}.npz", "-w", w, "-t", 12, "-k", 100,
             *extra)
        infl("ihvp", "-w", w, "--solver", "exact", "-t", 12)
        infl("score", "-w", w, "--solver", "exact")
        infl("plot", "-w", w, "--solver", "lissa", "--solver", "exact")
    w = root / "digits"
    infl("self-influence", "-w", w, "--check", 100, "-n", 16)
    infl("mislabel", "-w", w)
    keep(w, "digits", "fig2_middle.png", "explain-12.png", "self-influence.png",
         "fig_self_influence.png", "fig6_mislabel.png", "metrics.json")
    keep(root / "breast_cancer", "breast_cancer", "fig2_middle.png", "metrics.json")


def lds_study(root: Path, data: str) -> None:
    w = root / "lds"
    subprocess.run([sys.executable, "-m", "infl_cli.examples", "--dattri", w, "--data-dir", data],
                   check=True, stdout=subprocess.DEVNULL)
    infl("train", "-w", w, "--dataset", w / "dattri-mnist.npz", "--bias")
    for solver in ("exact", "cg", "lissa"):
        infl("ihvp", "-w", w, "--solver", solver, "--test-sample", 500)
        infl("score", "-w", w, "--solver", solver)
    for method in ESTIMATORS:
        infl("score", "-w", w, "--method", *method)
    infl("lds", "-w", w)
    infl("loo", "-w", w, "--select", "random", "-k", 100)
    infl("lds", "-w", w)
    keep(w, "lds", "lds.png", "metrics.json")


STUDIES = {"main": main_study, "tests": tests_study, "random": random_study,
           "paper": paper_study, "examples": examples_study, "lds": lds_study}


def run() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "mnist"))
    ap.add_argument("--root", default="/tmp/infl-readme")
    ap.add_argument("--only", default=",".join(STUDIES))
    args = ap.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(STUDIES)
    if unknown:
        sys.exit(f"unknown studies {sorted(unknown)}; choose from {list(STUDIES)}")
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    for name in chosen:
        STUDIES[name](root, args.data_dir)
        (root / "readme-times.json").write_text(json.dumps(TIMES, indent=1))
    print(f"figures in {README_ART}; times in {root / 'readme-times.json'}", file=sys.stderr)


if __name__ == "__main__":
    run()
