"""Self-influence against direct computations, Koh's binary closed form, and the mislabel
experiment end to end on mnist-tiny."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_clean_failure, assert_refused_untouched, copy_work, infl

from infl_cli.data.arrays import load_npz
from infl_cli.engines.logreg import selfinf
from infl_cli.engines.logreg.hessian import HessianFactor

WD = 0.01


def _npz(path, k, n=150, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((k, d))
    y = np.array([rng.choice(k, p=np.exp(s - s.max()) / np.exp(s - s.max()).sum())
                  for s in x @ w.T])
    np.savez(path, X_train=x, y_train=y, X_test=x[:10], y_test=y[:10])
    return path


def _fitted(tmp_path, k, bias):
    from infl_cli.data.dataset import with_bias
    from infl_cli.engines.logreg import train

    data = load_npz(_npz(tmp_path / f"k{k}.npz", k))
    data = with_bias(data) if bias else data
    weight, info = train.fit(data, WD, 1e-12)
    return data, weight, info.pop("certificate")


def _direct(data, weight):
    """Self-influence by autograd per-example gradients and a dense solve."""
    x, y = data.x_train, data.y_train
    n = x.shape[0]
    flat = weight.reshape(-1).clone().requires_grad_(True)

    def ce(theta, i):
        logits = x[i] @ theta.reshape(weight.shape).T
        return torch.nn.functional.cross_entropy(logits[None], y[i:i + 1])

    def objective(theta):
        logits = x @ theta.reshape(weight.shape).T
        return torch.nn.functional.cross_entropy(logits, y) + 0.5 * WD * theta.square().sum()

    h = torch.autograd.functional.hessian(objective, flat.detach())
    grads = torch.stack([torch.autograd.grad(ce(flat, i), flat)[0] for i in range(n)])
    solved = torch.linalg.solve(h, grads.T).T  # H⁻¹∇CE_i
    full = grads + WD * flat.detach()[None]
    ours = -(solved * full).sum(1)
    koh = -(solved * grads).sum(1)
    return ours, koh


@pytest.mark.parametrize("k, bias", [(2, False), (3, True), (10, False), (10, True)])
def test_self_influence_equals_a_dense_direct_computation(tmp_path, k, bias):
    data, weight, cert = _fitted(tmp_path, k, bias)
    factor = HessianFactor(weight, data.design, WD)
    inverse = torch.cholesky_inverse(factor.chol)
    fast = selfinf.self_influence(weight, data.design, data.y_train, WD, inverse, cert.probs)
    ours, koh = _direct(data, weight)
    assert torch.allclose(fast["self_influence"], ours, rtol=1e-9, atol=1e-12)
    assert torch.allclose(fast["koh"], koh, rtol=1e-9, atol=1e-12)
    n = data.n_train
    assert torch.allclose(fast["predicted_own_change"], -ours / n, rtol=1e-9, atol=1e-14)
    # the certified sample: its proven bound covers the gap to the direct values
    check = selfinf.certified_sample(weight, data.design, data.y_train, WD, factor, cert,
                                     np.arange(0, n, 7), fast)
    idx = check["indices"]
    gap = (check["self_influence_reference"] - ours[idx]).abs()
    assert (gap <= check["self_influence_bound"] + 1e-12 * ours[idx].abs()).all()
    assert float(check["self_influence_proven_relative"].max()) < 1e-6


def test_k2_at_twice_the_weight_decay_is_kohs_binary_closed_form(tmp_path):
    """Binary logistic regression (Koh's model, v = w₁ − w₂) at wd equals the K = 2 model at
    2·wd: v is its optimum, its self-influence σ(−y·vᵀx)²·xᵀH_b⁻¹x (the authors' code) is our
    Koh variant, and ∇CE_vᵀH_b⁻¹(∇CE_v + wd·v) is ours."""
    from infl_cli.engines.logreg import train

    data = load_npz(_npz(tmp_path / "b.npz", 2, n=200, d=12, seed=3))
    wd_b = 0.02
    weight, info = train.fit(data, 2 * wd_b, 1e-13)
    cert = info["certificate"]
    x = data.x_train
    s = torch.where(data.y_train == 0, 1.0, -1.0).double()  # class 0 ↦ +1
    v = weight[0] - weight[1]

    def binary(theta):
        return torch.nn.functional.softplus(-s * (x @ theta)).mean() + 0.5 * wd_b * theta @ theta

    g = torch.func.grad(binary)(v)
    assert float(g.norm()) < 1e-9  # v is the binary model's optimum
    margin = s * (x @ v)
    sig = torch.sigmoid(-margin)  # σ(−y·vᵀx)
    h_b = torch.func.hessian(binary)(v)
    hx = torch.linalg.solve(h_b, x.T).T
    koh_binary = sig.square() * (x * hx).sum(1)
    grad_ce = -(s * sig)[:, None] * x  # ∇_v CE_i
    ours_binary = (grad_ce * torch.linalg.solve(h_b, (grad_ce + wd_b * v[None]).T).T).sum(1)
    factor = HessianFactor(weight, data.design, 2 * wd_b)
    fast = selfinf.self_influence(weight, data.design, data.y_train, 2 * wd_b,
                                  torch.cholesky_inverse(factor.chol), cert.probs)
    assert torch.allclose(-fast["koh"], koh_binary, rtol=1e-9, atol=1e-13)
    assert torch.allclose(-fast["self_influence"], ours_binary, rtol=1e-9, atol=1e-13)


def test_self_influence_stage_table_and_truth_check(tiny_work, tmp_path):
    work = copy_work(tiny_work, tmp_path)
    proc = infl("self-influence", "-w", work, "--check", 30, "-n", 5, "--sample", 40)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training labels to check first" in proc.stdout
    for name in ("self-influence.safetensors", "self-loo.safetensors",
                 "fig_self_influence.png", "fig_self_influence.pdf", "self-influence.png"):
        assert (work / name).is_file(), name
    from infl_cli.runtime import artifacts as art

    rec = art.read_record(work / "self-influence.safetensors")
    assert rec["sample_proven_relative_error_max"] < 1e-6
    checked, crec = art.load_arrays(work / "self-loo.safetensors")
    assert crec["certified"] == 30 and crec["within_target"] == 30
    arrays, _ = art.load_arrays(work / "self-influence.safetensors")
    order = np.argsort(-arrays["predicted_own_change"])[:30]
    assert (checked["train_indices"] == order).all()
    assert (checked["actual_own_change"] > 0).all()  # removing a point raises its own loss
    r = np.corrcoef(checked["actual_own_change"], arrays["predicted_own_change"][order])[0, 1]
    assert r > 0.8, r


@pytest.fixture(scope="module")
def mislabel_run(tiny_work, tmp_path_factory):
    work = copy_work(tiny_work, tmp_path_factory.mktemp("mislabel"))
    proc = infl("mislabel", "-w", work, "--seeds", 2, "--checks", "0,0.1,0.3", "--sample", 20)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


def test_mislabel_flips_are_recorded_and_restored_exactly(mislabel_run, tiny):
    from infl_cli.runtime import artifacts as art
    from infl_cli.stages.mislabel import flip_labels

    arrays, rec = art.load_arrays(mislabel_run / "mislabel-seed-0.safetensors")
    flipped, new = flip_labels(tiny.train_y, 10, 0.1, 0)
    assert (arrays["flipped"] == flipped).all() and (arrays["new_labels"] == new).all()
    assert flipped.size == 100 and (new != tiny.train_y[flipped]).all()  # always another class
    assert rec["all_fixed_vs_clean"]["within"]  # every flip restored: the clean model
    assert rec["models_certified"] == rec["models"] and rec["max_grad_bound"] <= 1e-8


def test_mislabel_metrics_and_figure(mislabel_run):
    m = json.loads((mislabel_run / "metrics.json").read_text())["mislabel"]
    assert (mislabel_run / "fig6_mislabel.png").is_file()
    assert (mislabel_run / "fig6_mislabel.pdf").is_file()
    for name, entry in m["per_ordering"].items():
        assert entry["fraction_fixed"][0] == 0.0  # nothing checked, nothing found
        assert all(b >= a for a, b in zip(entry["fraction_fixed"], entry["fraction_fixed"][1:]))
    assert m["per_ordering"]["self-influence"]["auc"] > 0.9
    assert abs(m["per_ordering"]["random"]["auc"] - 0.5) < 0.1
    assert m["unproven_predictions"] == 0 and m["all_fixed_equals_clean"]
    assert m["models_certified"] == m["models"]


def test_mislabel_resumes_from_the_seeds_written(mislabel_run):
    before = (mislabel_run / "mislabel-seed-1.safetensors").stat().st_mtime_ns
    proc = infl("mislabel", "-w", mislabel_run, "--seeds", 2, "--checks", "0,0.1,0.3",
                "--sample", 20)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (mislabel_run / "mislabel-seed-1.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize("args, message", [
    (["--flip", "0"], "--flip must be in (0, 1)"), (["--flip", "1.5"], "--flip must be in (0, 1)"),
    (["--checks", "0,0.2,0.1"], "--checks must increase"),
    (["--checks", "0,1.5"], "--checks must lie in [0, 1]"),
    (["--checks", "a,b"], "--checks must be fractions"),
    (["--seeds", "0"], "--seeds must be ≥ 1"), (["--orderings", "bogus"], "unknown ordering"),
])
def test_mislabel_bad_input_is_one_line_exit_2_nothing_written(tiny_work, tmp_path, args,
                                                              message):
    assert_refused_untouched(copy_work(tiny_work, tmp_path), "mislabel", args, message)


def test_studies_refuse_a_model_without_what_they_need(tmp_path):
    proc = infl("self-influence", "-w", tmp_path / "none")
    assert_clean_failure(proc, "not found")
    proc = infl("mislabel", "-w", tmp_path / "none")
    assert_clean_failure(proc, "not found")
    for args, message in ((["--sample", 1], "--sample must be ≥ 2"),
                          (["--check", -1], "--check must be ≥ 0"),
                          (["--order", "bogus"], "unknown order")):
        proc = infl("self-influence", "-w", tmp_path / "none", *args)
        assert_clean_failure(proc, message)
        assert proc.returncode == 2


def test_quadratic_forms_over_core_and_rim_equal_dense_ones(tiny, tiny_model):
    """mnist-tiny's design has a dense core and a sparse rim: the block quadratic forms (in
    the sum-zero basis too) equal x_iᵀ M_ab x_i computed densely."""
    weight, _ = tiny_model
    design = tiny.design
    assert design.rim.size > 0
    factor = HessianFactor(weight, design, WD)
    inverse = torch.cholesky_inverse(factor.chol)
    forms = selfinf.quadratic_forms(design, inverse, 10)
    x = design.rows(np.arange(0, tiny.n_train, 97))
    m = inverse.reshape(10, design.width, 10, design.width)
    direct = torch.einsum("id,adbe,ie->iab", x, m, x)
    assert torch.allclose(forms[::97], direct, rtol=1e-10, atol=1e-12)
    basis = selfinf.sum_zero_basis(10)
    assert torch.allclose(basis.T @ basis, torch.eye(9, dtype=torch.float64), atol=1e-14)
    assert torch.allclose(basis.sum(0), torch.zeros(9, dtype=torch.float64), atol=1e-14)
