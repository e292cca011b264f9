"""The training-set attack (issue 34): I_pert,loss against autograd and finite differences,
the perturbed retraining against from-scratch fits, a flipped verdict against an independent
refit, the ε ball and clipping, and the refusals."""

import numpy as np
import pytest
import torch
from conftest import assert_refused_untouched, copy_work, infl, listing

from infl_cli.data.design import make_design
from infl_cli.engines.logreg import attack, loo, model, retraining
from infl_cli.engines.logreg.changes import Changes

WD = 0.01


def _newton_fit(x, y, wd, classes, w=None, iterations=40):
    """A from-scratch fit (from zero unless ``w``) by exact Newton steps on the dense
    Hessian: the independent reference, to the float64 floor."""
    w = torch.zeros(classes, x.shape[1], dtype=torch.float64) if w is None else w.clone()
    for _ in range(iterations):
        _, grad = model.objective_and_grad(w, x, y, wd)
        if float(grad.norm()) < 1e-14:
            break
        h = model.hessian(w, x, wd)
        w = w - torch.linalg.solve(h, grad.reshape(-1)).reshape(w.shape)
    _, grad = model.objective_and_grad(w, x, y, wd)
    return w, float(grad.norm())


def _lbfgs_fit(x, y, wd, classes):
    """A from-scratch fit by SciPy's L-BFGS from zero (independent of every infl solver):
    (weight, ‖∇R‖)."""
    from scipy.optimize import minimize

    shape = (classes, x.shape[1])

    def fun(flat):
        loss, grad = model.objective_and_grad(torch.from_numpy(flat).reshape(shape), x, y, wd)
        return float(loss), grad.reshape(-1).numpy()

    out = minimize(fun, np.zeros(shape[0] * shape[1]), jac=True, method="L-BFGS-B",
                   options={"maxiter": 5000, "gtol": 1e-9, "ftol": 0.0})
    w = torch.from_numpy(out.x).reshape(shape)
    return w, float(model.objective_and_grad(w, x, y, wd)[1].norm())


def _synthetic(k, n=30, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    xt = torch.randn(d, generator=g, dtype=torch.float64)
    yt = torch.randint(0, k, (1,), generator=g)
    return x, y, xt, yt


@pytest.mark.parametrize("k", [2, 3])
def test_pert_influence_matches_autograd_and_retraining(k):
    """I_pert,loss = −∂/∂x[∇L(z_t)ᵀH⁻¹∇L(z)]: the closed form against autograd's mixed
    derivative, and (1/n)·I_pert,loss·δ against a central difference of the retrained test
    loss (exact Newton fits) as x_z moves along δ."""
    x, y, xt, yt = _synthetic(k)
    n = x.shape[0]
    w, _ = _newton_fit(x, y, WD, k)
    h = model.hessian(w, x, WD)
    g_test = model.test_point_grads(w, xt[None], yt)[0]
    v = torch.linalg.solve(h, g_test.reshape(-1)).reshape(w.shape)
    z = 4

    def loss_grad(xz):
        wz = w.clone().requires_grad_(True)
        ce = torch.nn.functional.cross_entropy((xz @ wz.T)[None], y[z:z + 1])
        (gw,) = torch.autograd.grad(ce, wz, create_graph=True)
        return gw

    xz = x[z].clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(-(v * loss_grad(xz)).sum(), xz)
    closed = attack.perturbation_influence(w, v[None], x[z][None, None], y[z][None, None])[0, 0]
    assert torch.allclose(closed, auto, rtol=1e-12, atol=1e-14)

    delta = torch.randn(x.shape[1], generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64)
    step = 1e-4

    def retrained_loss(t):
        xp = x.clone()
        xp[z] += t * delta
        wp, gn = _newton_fit(xp, y, WD, k, w)
        assert gn < 1e-13
        return float(model.cross_entropy(wp, xt[None], yt)[0])

    fd = (retrained_loss(step) - retrained_loss(-step)) / (2 * step)
    predicted = float(closed @ delta) / n
    assert abs(fd - predicted) <= 1e-6 * abs(predicted) + 1e-12, (fd, predicted)


@pytest.fixture(scope="module", params=[False, True], ids=["core-rim", "dense"])
def small(tiny, request):
    """200 mnist-tiny images on 60 pixels (integers / 255, some blank), fitted exactly; the
    CPU design, or the dense one every other device uses."""
    cols = torch.arange(0, 784, 13)[:60]
    x = tiny.x_train[:200, cols].contiguous()
    y = tiny.y_train[:200]
    w, _ = _newton_fit(x, y, WD, 10)
    design = make_design(x, scale=255.0, dense=request.param)
    xt, yt = tiny.x_test[:40, cols].contiguous(), tiny.y_test[:40]
    problem = loo.LooProblem(w, design, y, WD, xt, yt)
    return x, y, w, design, problem


def _perturbed(x, design, index, shift):
    """x with rows ``index`` moved by ``shift`` (raw units) on the active features."""
    xp = x.clone()
    active = design.active
    for i in index:
        row = xp[i] * 255.0
        row[active] = (row[active] + shift).clamp(0, 255)
        xp[i] = row / 255.0
    return xp


def test_perturbed_retraining_equals_a_fit_from_scratch(small):
    """Feature perturbations through the certified core (one, two, and ten rows, small and
    large): each retrained model within its certificate of a from-scratch fit."""
    x, y, w, design, problem = small
    active = design.active
    sets = [[5], [7, 11], list(range(20, 30))]
    shifts = [3.0, -40.0, 120.0]
    perturbed = [_perturbed(x, design, i, s) for i, s in zip(sets, shifts)]
    changes = Changes.perturbations([(np.array(i), xp[i][:, active].numpy())
                                     for i, xp in zip(sets, perturbed)])
    out, _ = retraining.solve_changes(problem, changes, np.ones((40, 3), dtype=bool),
                                      loo.LooSettings(rel_error=0.0, tol=5e-12, max_steps=30),
                                      keep_deltas=True)
    upper = out["grad_norm"] + out["grad_rounding"]
    assert (upper <= 5e-12).all(), upper
    for j, xp in enumerate(perturbed):
        ref, gn = _newton_fit(xp, y, WD, 10)
        gap = float((problem.weight + out["deltas"][j] - ref[:, active]).norm())
        assert float(ref[:, ~active].abs().max()) == 0.0
        assert gap <= upper[j] / WD + gn / WD + 1e-13, (j, gap, upper[j] / WD)
        assert gap <= 5e-10


def test_perturbed_fallback_equals_the_core(small):
    """The exact-Hessian fallback knows the perturbed rows too (the same model)."""
    from infl_cli.engines.logreg.fallback import newton_cg_retrain

    x, y, w, design, problem = small
    xp = _perturbed(x, design, [3, 4], 60.0)
    changes = Changes.perturbations([(np.array([3, 4]), xp[[3, 4]][:, design.active].numpy())])
    delta, _ = newton_cg_retrain(problem, changes, 0, torch.zeros_like(problem.weight), 1e-11)
    ref, _ = _newton_fit(xp, y, WD, 10)
    assert float((problem.weight + delta - ref[:, design.active]).norm()) < 1e-9


def test_attack_stays_in_the_ball_and_the_pixel_range(small):
    """Every perturbed value within ε of the original and within 0..255, exactly; features
    outside the mask never move; the baseline too."""
    x, y, w, design, problem = small
    active = design.active
    xa = x[:, active]
    x0 = (xa[[1, 2, 3, 4]] * 255).round().reshape(2, 2, -1)
    mask = torch.ones(xa.shape[1], dtype=torch.bool)
    mask[:5] = False
    from infl_cli.engines.logreg.hessian import HessianFactor

    factor = HessianFactor(problem.weight, design, WD)
    for eps in (0.5, 7.0, 300.0):
        xr = attack.attack(problem.weight, factor.solve, 200, problem.x_test[:2],
                           problem.y_test[:2], x0, y[[1, 2, 3, 4]].reshape(2, 2), eps=eps,
                           unit=1 / 255, lower=0.0, upper=255.0, mask=mask, steps=4,
                           step_size=eps / 2)
        base = attack.random_signs(x0, eps=eps, lower=0.0, upper=255.0, mask=mask, seed=1)
        for out in (xr, base):
            assert float((out - x0).abs().max()) <= eps
            assert float(out.min()) >= 0.0 and float(out.max()) <= 255.0
            assert torch.equal(out[..., :5], x0[..., :5])
        assert float((xr - x0).abs().max()) > 0


@pytest.fixture(scope="module")
def attack_work(tiny_work, tmp_path_factory):
    work = copy_work(tiny_work, tmp_path_factory.mktemp("attack"))
    return work


@pytest.fixture(scope="module")
def binary_work(tmp_path_factory):
    """mnist-tiny's 1s and 7s (209 training images), the logistic model."""
    work = tmp_path_factory.mktemp("attack_binary") / "work"
    proc = infl("train", "--dataset", "mnist-tiny", "--classes", "1,7", "-w", work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return work


def test_attack_command_certifies_and_a_flip_is_real(binary_work):
    """``infl attack`` at a large ε: every verdict certified; every proven flip is the
    argmax of an independent from-scratch fit (SciPy's L-BFGS from zero) on the perturbed
    data, with the refit's own margin proof; the figure is drawn."""
    from infl_cli.runtime import artifacts as art
    from infl_cli.stages.common import load_model

    proc = infl("attack", "-w", binary_work, "--test-sample", 6, "--budget", "10",
                "--eps", "255", "--steps", 5, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tensors, record = art.load_artifact(binary_work / "attack.safetensors", "attack")
    verdict = tensors["verdict"]  # [E, budgets, attack/baseline, T]: 1 flipped, 0 held, -1 ?
    assert (verdict != -1).all()
    assert record["models_certified"] == record["verdicts"]
    flips = torch.nonzero(verdict[0, 0, 0] == 1)[:, 0]
    assert len(flips), "no flip at ε = 255 to check"
    _, _, data = load_model(binary_work)
    active = data.design.active
    for t in flips.tolist()[:1]:
        index = tensors["train_index"][t, :10].numpy()
        x = data.x_train.clone()
        rows = x[index]
        rows[:, active] = tensors["perturbed"][0, 0, t].to(torch.float64) / 255.0
        x[index] = rows
        wd = record["model"]["settings"]["wd"]
        ref, gn = _lbfgs_fit(x[:, active], data.y_train, wd, 2)
        test = record["test_indices"][t]
        xt = data.x_test[test, active]
        logits = xt @ ref.T
        assert int(logits.argmax()) != int(data.y_test[test])
        margin = float(logits.max() - logits.min())
        assert margin > 2 ** 0.5 * float(xt.norm()) * gn / wd  # the refit's own proof
    assert (binary_work / "attack.png").is_file()


def test_python_api_runs_the_same_operation(binary_work):
    """``Study.attack`` is ``infl attack``: the same record and artifact."""
    import infl_cli as infl

    result = infl.Study.open(binary_work, progress=False).attack(
        test_index=[0, 1], budget="1,2", eps=[0.5, 8], steps=2)
    table = result.record["table"]
    assert [(r["eps"], r["budget"]) for r in table] == [(0.5, 1), (0.5, 2), (8.0, 1), (8.0, 2)]
    assert result.record["test_indices"] == [0, 1]
    assert result.record["undecided"] == 0
    with pytest.raises(infl.BadInput, match="--eps"):
        infl.Study.open(binary_work, progress=False).attack(eps=0)


@pytest.mark.parametrize("args,message", [
    (["--eps", "0"], "--eps"),
    (["--eps", "-1"], "--eps"),
    (["--budget", "1001"], "--budget"),
    (["-t", "8"], "misclassified"),
])
def test_bad_input_is_refused_untouched(attack_work, args, message):
    assert_refused_untouched(attack_work, "attack", args, message)


def test_svm_is_refused_untouched(tmp_path):
    work = tmp_path / "svm"
    proc = infl("train", "--dataset", "mnist-tiny", "--classes", "1,7", "--model", "svm",
                "-w", work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = listing(work)
    assert_refused_untouched(work, "attack", [], "logistic")
    assert listing(work) == before
