"""What a new user meets first: results on stdout and strict JSON, a study never replaced
without being told, the artifact a stage reads said and chosen sensibly, help texts that say
what they mean, one line for a folder that cannot be written, no bare NaN."""

import json
import math
import re
import subprocess
import warnings

import numpy as np
import pytest
from conftest import REPO, assert_clean_failure, copy_work, infl, listing


def strict(text: str):
    """JSON as a strict parser reads it: NaN and infinities refused."""
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def study(tiny_work, tmp_path_factory):
    """The session's tiny study with a LOO of test point 8 (CG scores, 12 removals)."""
    work = copy_work(tiny_work, tmp_path_factory.mktemp("first"))
    proc = infl("loo", "-w", work, "--solver", "cg", "-t", 8, "-k", 12)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return work


def test_results_go_to_stdout_and_progress_to_stderr(study, tmp_path):
    work = copy_work(study, tmp_path)
    proc = infl("show", "-w", work, "-t", 8, "--solver", "cg")
    assert proc.returncode == 0, proc.stderr
    assert "helpful" in proc.stdout and "test 8: label" in proc.stdout
    assert "helpful" not in proc.stderr and "┃" not in proc.stderr
    proc = infl("score", "-w", work, "--solver", "cg")
    assert "score (cg)" in proc.stdout and "score: 1/1" in proc.stderr


@pytest.mark.parametrize("args", [
    ["show", "-t", "8", "--solver", "cg"],
    ["score", "--solver", "cg"],
    ["plot"],
    ["ihvp", "--solver", "exact", "-t", "8"],
    ["loo", "--solver", "cg", "-t", "8", "-k", "4"],
])
def test_every_command_prints_one_strict_json_object(study, tmp_path, args):
    work = copy_work(study, tmp_path)
    proc = infl(*args, "--json", "-w", work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = strict(proc.stdout)
    assert isinstance(record, dict) and "┃" not in proc.stdout
    assert "{" not in proc.stderr  # the record goes to stdout only


def test_run_json_holds_each_stage_and_metrics_json_is_strict(tmp_path):
    proc = infl("run", "--dataset", "mnist-tiny", "-w", tmp_path, "-k", 8, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = strict(proc.stdout)
    assert {"train", "ihvp", "score", "loo", "plot", "show"} <= set(record)
    metrics = strict((tmp_path / "metrics.json").read_text())
    assert metrics["provenance"]["infl"] and metrics["provenance"]["torch"]
    from infl_cli.runtime.artifacts import read_record

    model = read_record(tmp_path / "model.safetensors")
    assert model["provenance"]["python"] and model["provenance"]["numpy"]


def test_a_study_is_never_replaced_without_being_told(tiny_work, tmp_path):
    work = copy_work(tiny_work, tmp_path)
    before = listing(work)
    stamp = (work / "model.safetensors").stat().st_mtime_ns
    for args in (["train", "--dataset", "mnist-tiny", "--classes", "1,7"],
                 ["run", "--dataset", "mnist-tiny", "--model", "svm", "--classes", "1,7"],
                 ["train", "--dataset", "mnist-tiny", "--bias"]):
        proc = infl(*args, "-w", work)
        assert_clean_failure(proc, "holds another study (a logreg model of mnist-tiny)")
        assert "--replace" in proc.stderr and "--workdir" in proc.stderr
        assert listing(work) == before
    assert (work / "model.safetensors").stat().st_mtime_ns == stamp
    # the same data with other settings is a rerun
    proc = infl("train", "-w", work, "--wd", "0.02")
    assert proc.returncode == 0, proc.stderr
    # starting over removes the old study's files, and nothing else
    (work / "notes.txt").write_text("mine")
    proc = infl("train", "-w", work, "--dataset", "mnist-tiny", "--classes", "1,7",
                "--replace")
    assert proc.returncode == 0, proc.stderr
    assert "--replace: removed the study of a logreg model of mnist-tiny" in proc.stderr
    assert sorted(listing(work)) == ["model.safetensors", "notes.txt"]


def test_run_continues_the_folders_dataset(tiny_work, tmp_path):
    """`infl run -w W` on a mnist-tiny folder: the recorded dataset, not a download of MNIST."""
    work = copy_work(tiny_work, tmp_path)
    proc = infl("run", "-w", work, "-k", 5, "--no-download")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train: " in proc.stderr and "up to date, skipped" in proc.stderr


def test_the_newest_artifact_with_the_test_point_is_read_and_said(tiny_work, tmp_path):
    work = copy_work(tiny_work, tmp_path)
    for args in (["ihvp", "--solver", "exact", "-t", 8], ["score", "--solver", "exact"],
                 ["ihvp", "--solver", "cg", "-t", 60]):
        assert infl(*args, "-w", work).returncode == 0
    proc = infl("score", "-w", work)  # no --solver: the newest inverse-HVPs
    assert proc.returncode == 0, proc.stderr
    assert "score: reads ihvp-cg.safetensors (the newest" in proc.stderr
    proc = infl("show", "-w", work, "-t", 60)  # only scores-cg has test 60
    assert proc.returncode == 0, proc.stderr
    assert "show: reads scores-cg.safetensors" in proc.stderr
    proc = infl("show", "-w", work, "-t", 61)
    assert_clean_failure(proc, "no scores in")
    assert "hold test point 61" in proc.stderr


def test_show_splits_by_sign_and_says_the_cap(study, tmp_path):
    work = copy_work(study, tmp_path)
    proc = infl("show", "-w", work, "-t", 8, "--solver", "cg", "-n", 600, "--json")
    assert proc.returncode == 0, proc.stderr
    result = strict(proc.stdout)
    helpful = [r["predicted_change"] for r in result["rows"] if r["kind"] == "helpful"]
    harmful = [r["predicted_change"] for r in result["rows"] if r["kind"] == "harmful"]
    assert all(v > 0 for v in helpful) and all(v < 0 for v in harmful)
    assert len(helpful) == min(600, result["positive"])
    assert len(harmful) == min(600, result["negative"])
    assert "notice: -n 600: only" in proc.stderr and result["drawn"] == 12
    from PIL import Image

    width, height = Image.open(result["figure"]).size
    assert width < 4000 and height < 2000  # bounded, whatever -n is
    csv = tmp_path / "scores.csv"
    proc = infl("show", "-w", work, "-t", 8, "--solver", "cg", "--csv", csv)
    lines = csv.read_text().splitlines()
    assert lines[0].startswith("train_index,label,label_name,influence,predicted_change")
    assert len(lines) == 1 + 1000  # every training point
    retrained = [line for line in lines[1:] if not line.endswith(",,")]
    assert len(retrained) == 12  # those LOO retrained, with their actual change and bound


def test_a_hinge_run_on_a_small_test_set_takes_a_test_point_with_a_loss(tmp_path):
    """The SVM fits mnist-tiny's test point 0 with margin ≥ 1 (hinge loss 0: every change 0);
    run takes the worst-margin one, and nothing prints a bare nan or a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        proc = infl("run", "--model", "svm", "--classes", "1,7", "--dataset", "mnist-tiny",
                    "-k", 20, "-w", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert not re.search(r"\bnan\b", out, re.I) and "Warning" not in out
    metrics = strict((tmp_path / "metrics.json").read_text())
    assert metrics["test_indices"] != [0] and math.isfinite(metrics["panels"]["exact"]["pearson_r"])


def test_an_undefined_figure_says_why():
    from infl_cli.figures.fig2 import agreement

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = agreement(np.zeros(5), np.arange(5.0))
    assert math.isnan(m["pearson_r"]) and m["undefined"] == "every actual change is 0"
    from infl_cli.runtime.artifacts import strict_json

    assert json.dumps(strict_json({"r": math.nan, "x": [math.inf, 1.0]})) == \
        '{"r": null, "x": [null, 1.0]}'


def test_a_folder_that_cannot_be_written_is_one_line(tiny_work, tmp_path, monkeypatch):
    import os

    from infl_cli.runtime import lock

    work = copy_work(tiny_work, tmp_path)
    real = os.open

    def denied(path, *args, **kw):
        if str(path).endswith(".infl.lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(lock.os, "open", denied)
    proc = infl("score", "-w", work, "--solver", "cg")
    assert_clean_failure(proc, "is not writable (permission denied)")


def test_help_texts_say_what_they_mean():
    def help_of(*command):
        return re.sub(r"[│\s]+", " ", infl(*command, "--help").stdout)

    score = help_of("score")
    assert "a [T, n] or [n, T] array" in score and "``" not in score
    for command in ("train", "score", "ihvp", "loo", "run", "show", "self-influence", "lds"):
        assert "<bool>" not in help_of(command), command
    assert "LiSSA" not in help_of("train").split("--seed")[1].split("--")[0]
    assert "--select random" not in help_of("score").split("--seed")[1].split("--")[0]
    assert "--tol" not in help_of("self-influence").split("--rel-error")[1].split("--")[0]
    assert "30" in help_of("components").split("--test-index")[1][:120]
    assert "subset" in help_of("lds").split("--cluster")[1][:80]
    run = infl("run", "--help").stdout
    for panel in ("Work folder and data", "Model", "Training", "Inverse-HVP", "LiSSA",
                  "Leave-one-out", "Where it runs"):
        assert f"╭─ {panel} " in run, panel


def test_threads_follow_the_free_cores(monkeypatch):
    from infl_cli.runtime import threads

    monkeypatch.delenv("INFL_THREADS", raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 0)
    assert threads.choose() == 2
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 2)  # two busy loops beside us
    assert threads.choose() == 1
    monkeypatch.setenv("INFL_THREADS", "3")
    assert threads.choose() == 3


def test_a_users_first_run_writes_no_tracked_file():
    """The default work folder is ignored by git but for the README's own figures."""
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse"], capture_output=True)
    if git.returncode != 0:
        pytest.skip("not a git checkout")
    for path, ignored in (("artifacts/model.safetensors", True),
                          ("artifacts/fig2_middle.png", True),
                          ("artifacts/metrics.json", True),
                          ("artifacts/explain-8.png", True),
                          ("artifacts/readme/fig2_middle.png", False)):
        check = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", path])
        assert (check.returncode == 0) == ignored, path
