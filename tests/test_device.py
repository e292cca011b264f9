"""--device: the device code path (dense design, torch throughout) run on the CPU against the
tuned CPU path (core/rim design), the device choice and its errors, and, where torch sees a
GPU, the same pipeline on CUDA against the CPU (marked ``gpu``; skipped without one)."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_clean_failure, copy_work, infl, listing
from safetensors.torch import load_file

from infl_cli import stages
from infl_cli.data import design as design_mod
from infl_cli.engines.logreg import loo
from infl_cli.errors import BadInput
from infl_cli.runtime import device as device_mod

HAVE_CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAVE_CUDA, reason="torch sees no CUDA device")


@pytest.fixture
def dense_design(monkeypatch):
    """Every dataset's design is the device design (dense tensors, torch.mm), on the CPU."""
    real = design_mod.make_design
    monkeypatch.setattr(design_mod, "make_design",
                        lambda x=None, scale=None, device=None, dense=False, parts=None:
                        real(x, scale, device, dense=True, parts=parts))


def _chunk(problem, removed, **kw):
    selected = np.ones((len(problem.y_test), len(removed)), dtype=bool)
    return loo.solve_chunk(problem, np.asarray(removed), selected, loo.LooSettings(**kw))


def test_device_loo_chunk_equals_the_tuned_cpu_chunk(tiny, tiny_model):
    """The same removals solved with the core/rim design and with the dense device design:
    both certified to 1 %, their actual changes within the sum of the two bounds, and the
    float64 floor (the baseline) the same to rounding."""
    weight = tiny_model[0]
    tests = [8, 3]
    problems = {dense: loo.LooProblem(
        weight, design_mod.make_design(tiny.x_train, 255.0, dense=dense), tiny.y_train, 0.01,
        tiny.x_test[tests], tiny.y_test[tests]) for dense in (False, True)}
    assert isinstance(problems[True].design, design_mod.DenseDesign)
    removed = [0, 17, 250, 999, 512, 3]
    (a, _), (b, _) = (_chunk(problems[dense], removed) for dense in (False, True))
    for out in (a, b):
        assert (out["actual_error_bound"] <= 0.01 * np.abs(out["actual_loss_diff"])).all()
        assert (out["grad_norm"] + out["grad_rounding"] <= 1e-8).all()
    gap = np.abs(a["actual_loss_diff"] - b["actual_loss_diff"])
    assert (gap <= a["actual_error_bound"] + b["actual_error_bound"]).all()
    assert torch.allclose(problems[False].baseline_error, problems[True].baseline_error,
                          rtol=1e-6)
    assert problems[False].grad_hat_error == pytest.approx(problems[True].grad_hat_error,
                                                           rel=1e-6)


@pytest.fixture(scope="module")
def tuned_loo(tiny_work, tmp_path_factory):
    """LOO (top 30 for test 8, CG scores) by the tuned CPU path, on the session's model."""
    work = copy_work(tiny_work, tmp_path_factory.mktemp("tuned"))
    proc = infl("loo", "-k", 30, "-t", 8, "--solver", "cg", "-w", work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


def test_device_pipeline_on_the_cpu_matches_the_tuned_one(tuned_loo, tmp_path, dense_design):
    """train, ihvp (cg, exact), score and loo through the device code path on the CPU: the
    same model to its certified radius, the same top 30, every actual change within both
    runs' bounds of the tuned path's."""
    work = tmp_path / "dense"
    for args in (["train", "--dataset", "mnist-tiny", "--device", "cpu"],
                 ["ihvp", "--solver", "cg", "-t", 8], ["ihvp", "--solver", "exact", "-t", 8],
                 ["score", "--solver", "cg"], ["loo", "-k", 30, "-t", 8, "--solver", "cg"]):
        proc = infl(*args, "-w", work)
        assert proc.returncode == 0, (args, proc.stderr[-3000:])
    d_model = load_file(str(work / "model.safetensors"))["weight"]
    t_model = load_file(str(tuned_loo / "model.safetensors"))["weight"]
    assert (d_model - t_model).norm() < 1e-10  # both certified to ‖∇R‖ ≲ 1e-13, wd = 0.01
    d, t = (load_file(str(w / "loo.safetensors")) for w in (work, tuned_loo))
    assert d["train_indices"].tolist() == t["train_indices"].tolist()
    gap = (d["actual_loss_diff"] - t["actual_loss_diff"]).abs()
    assert bool((gap <= d["actual_error_bound"] + t["actual_error_bound"]).all())


@pytest.mark.parametrize("spec, message", [
    ("tpu", "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ("cuda:x", "--device must be auto, cpu, cuda or cuda:N"),
])
def test_a_malformed_device_names_the_forms_accepted(tmp_path, spec, message):
    """Checked for its form before torch is imported: the forms accepted are named (whether a
    well-formed device is there is torch's to say, below)."""
    proc = infl("train", "--dataset", "mnist-tiny", "--device", spec, "-w", tmp_path / "w")
    assert_clean_failure(proc, message)
    assert proc.returncode == 2 and not (tmp_path / "w").exists()


@pytest.mark.skipif(HAVE_CUDA, reason="the machine has a GPU")
@pytest.mark.parametrize("stage", ["train", "ihvp", "score", "loo", "run"])
@pytest.mark.parametrize("spec", ["cuda", "cuda:7"])
def test_cuda_without_cuda_is_one_line_exit_2_nothing_written(tiny_work, tmp_path, stage, spec):
    work = copy_work(tiny_work, tmp_path)
    before = listing(work)
    extra = ["--dataset", "mnist-tiny"] if stage in ("train", "run") else []
    proc = infl(stage, *extra, "--device", spec, "-w", work)
    assert_clean_failure(proc, f"--device {spec}: torch sees no CUDA device here")
    assert "available here: cpu" in proc.stderr and proc.returncode == 2
    assert listing(work) == before


def test_a_missing_gpu_index_names_the_ones_there(monkeypatch):
    monkeypatch.setattr(device_mod, "available", lambda: ["cpu", "cuda:0"])
    with pytest.raises(BadInput, match="there is no CUDA device 7; available here: cpu, cuda:0"):
        device_mod.resolve("cuda:7")
    assert device_mod.resolve("auto") == torch.device("cuda:0")
    assert device_mod.resolve("cuda") == torch.device("cuda:0")


def test_cluster_and_a_gpu_are_refused_and_auto_with_cluster_is_the_cpu(monkeypatch):
    pytest.importorskip("distributed")
    with pytest.raises(BadInput, match="does not combine with --device cuda:0"):
        stages.validate_cluster("local:2", 10.0, torch.device("cuda:0"))
    from infl_cli.api import common as cli_common

    monkeypatch.setattr(device_mod, "available", lambda: ["cpu", "cuda:0"])
    assert cli_common.device("auto", cluster="local:2") == torch.device("cpu")
    assert cli_common.device("auto") == torch.device("cuda:0")


def test_reduced_precision_is_off_and_the_device_is_recorded(tiny_work):
    torch.backends.cuda.matmul.allow_tf32 = True
    device_mod.check_precision()
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest"
    from infl_cli.runtime import artifacts as art

    for name in (art.MODEL, art.ihvp_name("cg"), art.scores_name("cg")):
        assert art.read_record(tiny_work / name)["device"] == "cpu", name


def test_auto_chunk_size_follows_the_device(monkeypatch):
    assert loo.auto_chunk_size(torch.device("cpu"), 10, 784, 10) == loo.CPU_CHUNK
    for free, expected in ((140e9, loo.DEVICE_CHUNK), (24e9, loo.DEVICE_CHUNK), (2e9, 199),
                           (1e8, loo.CPU_CHUNK)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, f=free: (f, 2 * f))
        assert loo.auto_chunk_size(torch.device("cuda:0"), 10, 784, 10) == expected, free


# ---------------------------------------------------------------------------- on a GPU

@gpu
@pytest.mark.gpu
def test_gpu_pipeline_agrees_with_the_cpu(tiny_work, tmp_path):
    """mnist-tiny on CUDA: the same top 40 as on the CPU, every actual change within both
    certified bounds of the CPU's, the same R to 4 digits; a model trained on the GPU is
    scored on the CPU and the other way round."""
    work = tmp_path / "gpu"
    cuda = ["--device", "cuda"]
    for args in (["train", "--dataset", "mnist-tiny", *cuda], ["ihvp", "--solver", "cg", "-t", 8,
                                                             *cuda],
                 ["score", "--solver", "cg", *cuda], ["loo", "-k", 40, "-t", 8, "--solver", "cg",
                                                      *cuda], ["plot", "--solver", "cg"]):
        proc = infl(*args, "-w", work)
        assert proc.returncode == 0, (args, proc.stderr[-3000:])
    from infl_cli.runtime import artifacts as art

    assert art.read_record(work / art.MODEL)["device"].startswith("cuda:0")
    assert json.loads((work / "metrics.json").read_text())["devices"]["loo"].startswith("cuda")
    cpu = copy_work(tiny_work, tmp_path, "cpu")
    for args in (["loo", "-k", 40, "-t", 8, "--solver", "cg", "--device", "cpu"],
                 ["plot", "--solver", "cg"]):
        assert infl(*args, "-w", cpu).returncode == 0, args
    g, c = (load_file(str(w / "loo.safetensors")) for w in (work, cpu))
    assert sorted(g["train_indices"].tolist()) == sorted(c["train_indices"].tolist())
    order = [c["train_indices"].tolist().index(j) for j in g["train_indices"].tolist()]
    gap = (g["actual_loss_diff"] - c["actual_loss_diff"][:, order]).abs()
    assert bool((gap <= g["actual_error_bound"] + c["actual_error_bound"][:, order]).all())
    r_gpu, r_cpu = (json.loads((w / "metrics.json").read_text())["panels"]["cg"]["pearson_r"]
                    for w in (work, cpu))
    assert abs(r_gpu - r_cpu) < 1e-4
    # across devices: the GPU's model scored on the CPU equals its GPU scores
    assert infl("score", "--solver", "cg", "--device", "cpu", "-w", work).returncode == 0
    again = load_file(str(work / "scores-cg.safetensors"))["influence"]
    assert infl("score", "--solver", "cg", "--device", "cuda", "-w", work).returncode == 0
    assert torch.allclose(again, load_file(str(work / "scores-cg.safetensors"))["influence"],
                          rtol=1e-10, atol=1e-14)
