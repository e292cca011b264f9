"""The CNN engine (All-CNN-C, width 2, on a slice of mnist-tiny): autodiff against finite
differences and plain autograd, Newton LOO against a long L-BFGS retraining, both protocols
through the CLI, the architecture itself, and the CNN's bad inputs."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import assert_clean_failure, copy_work, infl, listing
from safetensors.torch import load_file

from infl_cli.data.dataset import subset
from infl_cli.engines.cnn import autodiff
from infl_cli.engines.cnn import engine as cnn_engine
from infl_cli.engines.cnn import net as cnn
from infl_cli.engines.cnn.optim import Gauge
from infl_cli.engines.spec import CnnSpec

WD = 0.03  # on 120 images Newton reaches a local minimum in ~16 steps (wd 0.001: not in 50)


@pytest.fixture(scope="module")
def small(tiny):
    """120 training images of mnist-tiny (the CNN engine's tests stay fast on a CPU)."""
    return subset(tiny, np.arange(120), "first 120")


@pytest.fixture(scope="module")
def arch():
    return cnn.Architecture(2)


def _objective(arch, data):
    return autodiff.Objective(arch.logits, cnn.images(data.x_train), data.y_train, WD,
                              arch.decay_mask(), cnn.activations(arch))


def test_architecture_is_koh_all_cnn_c(arch):
    assert cnn.Architecture(8).n_params == 2616 and arch.n_params == 312
    mask = arch.decay_mask()
    biases = sum(np.prod(layer.shape) for layer in arch.layers if not layer.decayed)
    assert int((mask == 0).sum()) == biases  # weight decay on weights only
    theta = arch.init(0)
    assert torch.equal(theta, arch.init(0)) and not torch.equal(theta, arch.init(1))
    conv1 = arch.unflatten(theta)["conv1.weight"]
    assert float(conv1.abs().max()) <= 2 * 2.0 / 3.0  # truncated at 2 std, std 2/√(1·3·3)
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    assert arch.logits(theta, x).shape == (3, 10)
    # Koh's "small MNIST": NumPy's legacy shuffle seeded 0
    state = np.random.RandomState(0)
    perm = np.arange(55_000)
    state.shuffle(perm)
    assert np.array_equal(cnn.small_mnist_indices(), perm[:5_500])


def test_hessian_equals_finite_differences_and_is_symmetric(arch, small):
    obj = _objective(arch, small)
    theta = arch.init(0)
    h = obj.hessian(theta)
    assert torch.equal(h, h.T)
    raw = obj.hvp(theta, torch.eye(arch.n_params, dtype=torch.float64)[:40])
    # the dense bias's shift is a symmetry: H·u = 0 and ∇R ⟂ u, up to rounding
    u = arch.null_directions()[:, 0]
    assert float((h @ u).norm()) < 1e-13 * float(h.norm())
    assert abs(float(obj.value_and_grad(theta)[1] @ u)) < 1e-15
    spectrum = Gauge(arch).spectrum(h)
    evals = torch.linalg.eigvalsh(h)
    assert spectrum["lambda_max"] == pytest.approx(float(evals[-1]), rel=1e-10)
    assert spectrum["null_direction_curvature"] < 1e-13
    assert torch.allclose(raw, h[:40], rtol=1e-8, atol=1e-10)  # symmetrising changed little
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(arch.n_params, generator=gen, dtype=torch.float64)
        def central(eps):
            return (obj.value_and_grad(theta + eps * v)[1]
                    - obj.value_and_grad(theta - eps * v)[1]) / (2 * eps)

        fd = (4 * central(5e-6) - central(1e-5)) / 3  # Richardson: truncation O(eps⁴)
        assert float((h @ v - fd).norm() / fd.norm()) < 1e-9


def test_per_example_gradients_equal_autograd_one_by_one(arch, small):
    obj = _objective(arch, small)
    theta = arch.init(3).requires_grad_(False)
    got = obj.example_grads(theta, obj.x[:6], obj.y[:6])
    for i in range(6):
        t = theta.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(arch.logits(t, obj.x[i:i + 1]), obj.y[i:i + 1])
        expected, = torch.autograd.grad(loss, t)
        assert torch.allclose(got[i], expected, rtol=1e-12, atol=1e-14)
    # and the objective's gradient is their mean plus wd·M⊙θ
    value, g = obj.value_and_grad(theta)
    mean = obj.all_example_grads(theta, obj.x, obj.y).mean(0) + WD * obj.mask * theta
    assert torch.allclose(g, mean, rtol=1e-10, atol=1e-14)


@pytest.fixture(scope="module")
def trained(arch, tmp_path_factory):
    """The exact protocol on the first 120 images of mnist-tiny, width 2, through the CLI:
    Adam warm-up, then Newton to 1e-10 (~1.5 min). (tensors, record, spec, work folder)."""
    from infl_cli.runtime import artifacts as art

    work = tmp_path_factory.mktemp("cnn") / "cnn"
    proc = infl("train", "--model", "cnn", "--width", 2, "--dataset", "mnist-tiny",
                "--train-size", 120, "--wd", WD, "--adam-steps", 3000, "--adam-lr", 0.01,
                "-w", work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tensors, record = art.load_artifact(work / art.MODEL, "train")
    return tensors, record, CnnSpec(width=2, adam_steps=3000, adam_lr=1e-2, train_size=120), \
        work


@pytest.mark.slow
def test_exact_training_reaches_a_certified_local_minimum(trained, arch, small):
    tensors, info, _, _ = trained
    assert info["grad_norm"] <= 1e-10 and info["converged"]
    assert info["local_minimum"] and info["lambda_min"] > 0 and info["negative_eigenvalues"] == 0
    # the spectrum is the Hessian's without its null direction (one eigenvalue ≈ 0)
    evals = torch.linalg.eigvalsh(tensors["hessian"])
    assert abs(float(evals[0])) < 1e-12 and float(evals[1]) == pytest.approx(info["lambda_min"])
    # the Hessian kept is the one at θ̂
    assert torch.allclose(tensors["hessian"], _objective(arch, small).hessian(tensors["params"]),
                          rtol=0, atol=1e-12)


@pytest.mark.slow
def test_newton_loo_equals_long_lbfgs_from_the_trained_model(trained, small, arch):
    """Newton LOO on R₋z lands where a long L-BFGS from θ̂ on R₋z lands, within the distance
    that L-BFGS's own gradient norm leaves."""
    from scipy.optimize import minimize

    tensors, info, spec, _ = trained
    assert info["local_minimum"]
    mrec = {"settings": {"wd": WD, "model": spec.record()}, "adam_final_lr": 1e-3}
    problem = cnn_engine.ENGINE.loo_problem(tensors, mrec, small, small.x_test[[8, 3]],
                                            small.y_test[[8, 3]],
                                            replace_settings("newton"))
    # the two removals of smallest ‖∇CE_z‖ (on 120 images a removal moves θ̂ far along its
    # softest directions, λ_min ≈ 5e-4, and most take the Levenberg–Marquardt fallback)
    own = _objective(arch, small).all_example_grads(tensors["params"], problem.obj.x,
                                                    small.y_train)
    removed = np.argsort(own.norm(dim=1).numpy())[:2]
    out, _ = problem.solve_chunk(removed, np.ones((2, 2), bool), replace_settings("newton"))
    assert (out["grad_norm"] <= 1e-10).all() and (out["lambda_min"] > 0).all()
    obj = _objective(arch, small)
    for i, z in enumerate(removed):
        weights = torch.ones(small.n_train, dtype=torch.float64)
        weights[z] = 0

        def fun(flat):
            loss, g = obj.value_and_grad(torch.from_numpy(flat), weights)
            return float(loss), g.numpy()

        res = minimize(fun, tensors["params"].numpy(), jac=True, method="L-BFGS-B",
                       options={"maxiter": 5000, "gtol": 1e-13, "ftol": 0.0, "maxcor": 50})
        theta_z = torch.from_numpy(res.x)
        # L-BFGS stalls on this ill-conditioned R₋z (λ_min ~ 1e-5, λ_max ~ 70) well above
        # 1e-12; its distance to the minimum is then ≲ ‖∇R₋z‖/λ_min, and the test losses
        # differ by at most ‖∇f‖ times that: the Newton answer must sit inside
        lbfgs_gn = fnorm(obj.value_and_grad(theta_z, weights)[1])
        assert lbfgs_gn <= 1e-6, lbfgs_gn
        x_t, y_t = problem.x_test, problem.y_test
        ref = (autodiff.cross_entropy(arch.logits(theta_z, x_t), y_t)
               - autodiff.cross_entropy(arch.logits(tensors["params"], x_t), y_t)).numpy()
        grad_f = problem._grad_f_norms(theta_z[None])[:, 0].numpy()
        allowed = 2 * grad_f * lbfgs_gn / out["lambda_min"][i] + 1e-10
        assert (np.abs(out["actual_loss_diff"][:, i] - ref) <= allowed).all(), (i, ref, allowed)
        assert np.abs(ref).max() > 10 * allowed.max()  # a comparison that can fail


def fnorm(t):
    return float(t.norm())


def replace_settings(method, **kw):
    from infl_cli.settings import LooSettings

    return LooSettings(method=method, tol=1e-10, chunk_size=10, retrain_steps=20, **kw)


@pytest.mark.slow
def test_cnn_exact_train_ihvp_score_through_the_cli(trained, tmp_path):
    """The exact protocol's stages through the CLI on 120 images of mnist-tiny, width 2."""
    _, mrec, _, trained_work = trained
    work = copy_work(trained_work, tmp_path)
    for args in (["ihvp", "-t", 8], ["score"]):
        proc = infl(*args, "-w", work)
        assert proc.returncode == 0, (args, proc.stderr[-3000:])
    assert mrec["grad_norm"] <= 1e-10 and mrec["local_minimum"] and mrec["n_train"] == 120
    assert mrec["settings"]["model"]["kind"] == "cnn"
    assert mrec["settings"]["model"]["train_size"] == 120
    assert (work / "scores-exact.safetensors").is_file()


def test_paper_protocol_runs_with_small_step_counts(tmp_path):
    """Adam training, CG on H + 0.01·I, and Adam LOO (vmapped) with a few steps each."""
    work = tmp_path / "paper"
    for args in (["train", "--model", "cnn", "--width", 2, "--dataset", "mnist-tiny",
                  "--protocol", "paper", "--adam-steps", 40],
                 ["ihvp", "-t", 8, "--cg-max-iter", 30, "--cg-rtol", 1e-6],
                 ["score"], ["loo", "-k", 4, "--retrain-steps", 15], ["plot"]):
        proc = infl(*args, "-w", work)
        assert proc.returncode == 0, (args, proc.stderr[-3000:])
    assert (work / "ihvp-cg-damping0.01.safetensors").is_file()
    loo = load_file(str(work / "loo-adam.safetensors"))
    assert loo["actual_loss_diff"].shape == (1, 4) and bool(torch.isfinite(
        loo["actual_loss_diff"]).all())
    assert bool(loo["actual_error_bound"].isnan().all())  # no error bars for Adam's changes
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["loo"]["error_kind"] == "none" and metrics["ablation"]
    assert (work / "fig2_right.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["train", "--protocol", "paper", "--dataset", "mnist-tiny"],
     "--protocol applies to --model cnn"),
    (["train", "--model", "cnn", "--width", 0, "--dataset", "mnist-tiny"], "--width must be ≥ 1"),
    (["train", "--model", "rbf", "--dataset", "mnist-tiny"], "unknown model 'rbf'"),
    (["train", "--model", "cnn", "--protocol", "approx", "--dataset", "mnist-tiny"],
     "unknown protocol 'approx'"),
    (["train", "--model", "cnn", "--dataset", "mnist-tiny", "--bias"],
     "--model cnn needs 28 × 28 images without --bias"),
    (["train", "--model", "cnn", "--dataset", "mnist-tiny", "--decay-epochs", "5"],
     "--decay-epochs must be two epochs"),
    (["train", "--model", "cnn", "--dataset", "mnist-tiny", "--train-size", "5000"],
     "--train-size 5,000 exceeds the 1,000 training points"),
    (["train", "--model", "cnn", "--dataset", "mnist-tiny", "--train-size", "1"],
     "--train-size must be ≥ 2"),
    (["train", "--dataset", "mnist-tiny", "--train-size", "5000"],  # the logistic model too
     "--train-size 5,000 exceeds the 1,000 training points"),
    (["run", "--model", "cnn", "--dataset", "mnist-tiny", "--cluster", "local:2"],
     "--cluster solves the logistic model's LOO chunks"),
])
def test_bad_cnn_input_is_one_line_exit_2_nothing_written(tmp_path, args, message):
    proc = infl(*args, "-w", tmp_path / "w")
    assert_clean_failure(proc, message)
    assert proc.returncode == 2 and not (tmp_path / "w").exists()


def test_mixed_model_kinds_are_refused(tiny_work, tmp_path):
    """Training another model kind over a study is refused unless --replace; artifacts of
    the logistic model next to a CNN model (its model file copied in): a stage refuses them
    in one line; a logistic-only LOO method is refused for the CNN."""
    work = copy_work(tiny_work, tmp_path)
    cnn_args = ("train", "--model", "cnn", "--width", 1, "--dataset", "mnist-tiny",
                "--protocol", "paper", "--adam-steps", 5)
    before = listing(work)
    proc = infl(*cnn_args, "-w", work)
    assert_clean_failure(proc, "holds another study (a logreg model of mnist-tiny)")
    assert "--replace" in proc.stderr and listing(work) == before
    cnn = tmp_path / "cnn"
    proc = infl(*cnn_args, "-w", cnn)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.copy(cnn / "model.safetensors", work / "model.safetensors")
    before = listing(work)
    for args, message in ((["score", "--solver", "cg"], "computed for another model"),
                          (["loo", "--solver", "cg", "-k", 3], "computed for another model"),
                          (["loo", "--method", "lbfgs", "-k", 3], "unknown method 'lbfgs' for "
                                                                  "the CNN")):
        proc = infl(*args, "-w", work)
        assert_clean_failure(proc, message)
    assert listing(work) == before
