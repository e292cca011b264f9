"""Every stage through the CLI on mnist-tiny; bad input fails cleanly."""

import json
import os
import re
import shutil
import stat

import pytest
import torch
from conftest import assert_clean_failure, copy_work, infl, infl_process, listing
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def workdir(tiny_work, tmp_path_factory):
    """Each stage run on its own, in order, on the bundled subset: the session's train, ihvp
    (LiSSA and CG for tests 8 and 3) and score, then loo and plot here."""
    w = copy_work(tiny_work, tmp_path_factory.mktemp("cli"))
    for args in (["loo", "-w", w, "--num", 40, "--solver", "cg", "-t", 8],
                 ["plot", "-w", w, "--solver", "cg", "--solver", "lissa"]):
        proc = infl(*args)
        assert proc.returncode == 0, (args, proc.stderr[-3000:])
    return w


def test_stages_write_documented_artifacts(workdir):
    model = load_file(str(workdir / "model.safetensors"))
    assert model["weight"].shape == (10, 784) and model["weight"].dtype == torch.float64
    ihvp = load_file(str(workdir / "ihvp-lissa.safetensors"))
    assert ihvp["ihvp"].shape == (2, 10, 784) and ihvp["test_indices"].tolist() == [8, 3]
    scores = load_file(str(workdir / "scores-lissa.safetensors"))
    assert scores["influence"].shape == (2, 1000)
    assert torch.allclose(scores["predicted_loss_diff"], -scores["influence"] / 1000)
    loo = load_file(str(workdir / "loo.safetensors"))
    assert loo["train_indices"].shape == (40,) and loo["test_indices"].tolist() == [8]
    for key in ("actual_loss_diff", "actual_error_bound", "selected"):
        assert loo[key].shape == (1, 40), key
    assert bool(loo["selected"].all()) and loo["steps"].dtype == torch.int64
    assert float((loo["grad_norm"] + loo["grad_rounding"]).max()) <= 1e-8
    assert bool((loo["actual_error_bound"] <= 0.01 * loo["actual_loss_diff"].abs()).all())
    cg = load_file(str(workdir / "scores-cg.safetensors"))["influence"][0]
    assert loo["train_indices"].tolist() == cg.abs().topk(40).indices.tolist()
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert set(metrics["panels"]) == {"cg", "lissa"}
    assert metrics["panels"]["cg"]["pearson_r"] > 0.99
    assert (workdir / "fig2_middle.png").stat().st_size > 10_000
    assert (workdir / "fig2_middle.pdf").is_file()
    assert not list(workdir.glob(".*tmp")) and not (workdir / "loo.partial.safetensors").exists()
    assert not (workdir / ".infl.lock").exists()
    umask = os.umask(0o022)
    os.umask(umask)
    for path in workdir.iterdir():  # as a plain open() would make them (issue: were 0600)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


def test_show_draws_the_extremes_of_the_predicted_change(workdir):
    from infl_cli import stages

    result = stages.run_show(workdir, 8, 3, None, workdir / "explain-test.png")
    predicted = load_file(str(workdir / "scores-cg.safetensors"))["predicted_loss_diff"][0]
    helpful = [r["train_index"] for r in result["rows"] if r["kind"] == "helpful"]
    harmful = [r["train_index"] for r in result["rows"] if r["kind"] == "harmful"]
    assert helpful == predicted.topk(3).indices.tolist()
    assert harmful == (-predicted).topk(3).indices.tolist()
    assert all(r["actual_change"] is not None for r in result["rows"])  # all in LOO's top 40
    assert (workdir / "explain-test.png").stat().st_size > 10_000
    proc = infl("show", "-w", workdir, "-n", 2)
    assert proc.returncode == 0 and (workdir / "explain-8.png").is_file()
    # the table is the result: on stdout; what was read is said on stderr
    assert str(helpful[0]) in proc.stdout and str(harmful[0]) in proc.stdout
    assert "show: reads scores-" in proc.stderr and "helpful" not in proc.stderr


def test_help_shows_defaults():
    proc = infl("ihvp", "--help")
    assert proc.returncode == 0 and "--workdir" in proc.stdout and "lissa" in proc.stdout
    # rich wraps lines inside its panel; brackets in help texts must survive its markup
    text = re.sub(r"[│\s]+", " ", proc.stdout)
    for shown in ("[default: artifacts]", "[default: auto; paper: 25]", "[default: 64]",
                  "[default: 500; paper: 1]", "[default: 1e-3; paper: 0]"):
        assert shown in text, shown
    loo_help = re.sub(r"[│\s]+", " ", infl("loo", "--help").stdout)
    assert "[default: 500, or n when the training set is smaller]" in loo_help
    assert "[default: 1e-08; CNN: 1e-10]" in loo_help


def test_run_log_is_readable_and_a_rerun_skips_every_stage(tmp_path):
    """`infl run` with its output not on a terminal: full descriptions as plain lines, no
    redraws, no escape codes; a second identical run skips every stage and rewrites nothing."""
    args = ["run", "-w", tmp_path, "--dataset", "mnist-tiny", "--num", 20]
    first = infl(*args, env_extra={"INFL_PROGRESS_INTERVAL": "0.2", "COLUMNS": ""})
    assert first.returncode == 0, first.stderr[-3000:]
    log = first.stderr
    assert "\x1b[" not in log and "…" not in log and "\r" not in log
    lissa = [line for line in log.splitlines() if line.startswith("ihvp lissa (scale")]
    assert lissa, log
    assert all(re.fullmatch(r"ihvp lissa \(scale [\d.]+, batch 500\): \d+/10000, repeat 1, "
                            r"change ([\d.e+-]+|inf), \d:\d\d:\d\d elapsed(, eta \d:\d\d:\d\d)?",
                            line) for line in lissa[:-1]), lissa
    # stopped early: the bar's total is the steps taken, not the depth it did not need
    done = re.fullmatch(r"ihvp lissa \(scale [\d.]+, batch 500\): (\d+)/(\d+), repeat 1 "
                        r"settled at step ([\d,]+), \d:\d\d:\d\d elapsed, done", lissa[-1])
    assert done and done[1] == done[2] == done[3].replace(",", "") != "10000", lissa[-1]
    assert any(line.startswith("train: log10 |grad| reduced: ") for line in log.splitlines())
    names = ("loo.safetensors", "fig2_middle.png", "fig2_middle.pdf", "explain-8.png",
             "metrics.json")
    before = {name: (tmp_path / name).stat().st_mtime_ns for name in names}
    second = infl(*args)
    # every stage skipped, and neither the figures nor the explanation redrawn
    assert second.returncode == 0 and second.stderr.count("up to date") == 6, second.stderr
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in names} == before
    assert "helpful" in second.stdout  # the explanation's table, from its record
    times = json.loads((tmp_path / "timings.json").read_text())
    assert set(times) >= {"train", "ihvp", "score", "loo", "plot", "total"}
    assert times["total"] >= times["loo"] >= 0


def test_missing_inputs_fail_cleanly(tmp_path):
    for stage in ("ihvp", "score", "loo", "plot", "show"):
        proc = infl(stage, "-w", tmp_path / "empty")
        assert_clean_failure(proc)
        assert "not found" in proc.stderr or "no scores" in proc.stderr
    assert not (tmp_path / "empty").exists()  # and no folder was left behind


def test_show_before_score_fails_cleanly(tiny_work, tmp_path):
    shutil.copy(tiny_work / "model.safetensors", tmp_path)  # a trained model, nothing more
    before = listing(tmp_path)
    proc = infl("show", "-w", tmp_path)
    assert_clean_failure(proc)
    assert "no scores" in proc.stderr and "infl score" in proc.stderr
    assert listing(tmp_path) == before


def test_mismatched_inputs_are_refused(workdir, tmp_path):
    other = copy_work(workdir, tmp_path, "other")
    proc = infl("train", "-w", other, "--dataset", "mnist-tiny", "--wd", "0.02")
    assert proc.returncode == 0, proc.stderr
    for args in (["score", "-w", other], ["loo", "-w", other, "--num", 5], ["plot", "-w", other]):
        proc = infl(*args)
        assert_clean_failure(proc)
        assert "another model" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "--dataset", "cifar"], "unknown dataset"),
    (["train", "--dataset", "mnist-tiny", "--wd", "0"], "--wd must be > 0"),
    (["train", "--dataset", "mnist-tiny", "--train-tol", "-1"], "--train-tol must be > 0"),
    # `run` checks every stage's settings before the first stage starts
    (["run", "--dataset", "mnist-tiny", "--solver", "cg", "--cg-rank", "-2"], "--cg-rank must"),
    (["run", "--dataset", "mnist-tiny", "--stop-tol", "-1"], "--stop-tol must"),
    (["run", "--dataset", "mnist-tiny", "--chunk-size", "0"], "--chunk-size"),
    (["train", "--dataset", "mnist-tiny", "--wd", "abc"], "Invalid value for '--wd'"),
    (["train", "--dataset", "mnist", "--data-dir", "/nonexistent/x", "--no-download"],
     "MNIST not found"),
])
def test_bad_train_input(tmp_path, args, message):
    proc = infl(*args, "-w", tmp_path)
    assert_clean_failure(proc, message)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["ihvp", "-t", "5000"], "out of range"),
    (["ihvp", "--solver", "magic"], "unknown solver"),
    (["ihvp", "--scale", "fast"], "--scale must be"),
    (["ihvp", "--preset", "fastest"], "unknown preset"),
    (["ihvp", "--scale", "0.2", "--depth", "2000", "--batch-size", "100"], "diverged"),
    (["ihvp", "--stop-tol", "-1"], "--stop-tol must be"),
    (["ihvp", "--check-every", "0"], "--check-every must be"),
    (["ihvp", "--solver", "cg", "--cg-rank", "-1"], "--cg-rank must be"),
    (["ihvp", "--solver", "cg", "--cg-rtol", "0"], "--cg-rtol must be"),
    (["loo", "-t", "5", "--solver", "cg"], "no scores for test index 5"),
    (["loo", "--method", "sgd"], "unknown method"),
    (["plot", "--out", "fig.jpg"], "must end in .png"),
    (["ihvp", "--test-sample", "0"], "--test-sample must be between 1 and 200"),
    (["ihvp", "--test-sample", "201"], "--test-sample must be between 1 and 200"),
    (["ihvp", "-t", "8", "--test-sample", "3"], "not both"),
    (["score", "-t", "5"], "hold test point 5"),
    (["loo", "--select", "random", "-k", "1001"], "-k must be between 1 and 1000"),
    (["loo", "--select", "bogus"], "unknown selection"),
    (["loo", "-t", "5000"], "out of range"),
    (["loo", "--rel-error", "1.5"], "--rel-error must be in [0, 1)"),
    (["show", "-t", "5000"], "out of range"),
    (["show", "-t", "5", "--solver", "cg"], "no scores for test index 5"),
    (["show", "-n", "0"], "-n must be ≥ 1"),
    (["show", "--out", "x.jpg"], "must end in .png"),
])
def test_bad_stage_input(workdir, args, message):
    before = listing(workdir)
    proc = infl(*args, "-w", workdir)
    assert_clean_failure(proc, message)
    assert listing(workdir) == before


def test_download_error_says_where_it_looked(tmp_path):
    # no network in CI: the download fails and says where it looked
    proc = infl("train", "-w", tmp_path, "--data-dir", tmp_path / "nothing",
                env_extra={"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"})
    assert_clean_failure(proc)
    assert "MNIST" in proc.stderr and "--data-dir" in proc.stderr


def test_module_entry_point_in_a_real_process(tmp_path):
    """`python -m infl_cli` is the same program: help on stdout, a bad input as one line on
    stderr with exit 2 (a missing artifact: exit 1), nothing written."""
    helped = infl_process("--help")
    assert helped.returncode == 0 and "train" in helped.stdout and "loo" in helped.stdout
    missing = infl_process("score", "-w", tmp_path / "none")
    assert missing.returncode == 1 and "not found" in missing.stderr
    proc = infl_process("train", "--dataset", "cifar", "-w", tmp_path)
    assert proc.returncode == 2
    assert_clean_failure(proc, "unknown dataset")
    assert not list(tmp_path.iterdir())


def test_loo_and_score_each_document_their_own_method_option():
    """`loo --method` is the retraining method, `score --method` the estimator (one name
    once shadowed the other)."""
    loo = infl("loo", "--help")
    score = infl("score", "--help")
    assert loo.returncode == 0 and score.returncode == 0
    assert "Retraining: newton" in loo.stdout and "another estimator" not in loo.stdout
    assert "another estimator" in score.stdout
