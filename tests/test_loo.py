"""Leave-one-out retraining: certified, equal to independent retraining, and resumable."""

import math

import pytest
import torch

from infl_cli import loo, model, score, train
from infl_cli.errors import Interrupted
from infl_cli.linalg import HessianFactor

WD = 0.01


@pytest.fixture(scope="module")
def fitted(tiny):
    w, _ = train.fit(tiny, WD, 1e-11)
    factor = HessianFactor(w, tiny.x_train, WD)
    s = factor.solve(model.test_point_grads(w, tiny.x_test[8:9], tiny.y_test[8:9]))
    influence, predicted = score.influence_scores(w, tiny.x_train, tiny.y_train, WD, s)
    return w, factor, influence[0], predicted[0]


def _retrain(tiny, w, factor, removed, method="newton", **kw):
    return loo.retrain(method, w, tiny.x_train, tiny.y_train, WD, tiny.x_test[8],
                       tiny.y_test[8], removed, 1e-8, kw.pop("chunk_size", 8), factor=factor,
                       **kw)


def test_newton_loo_equals_independent_retraining(tiny, fitted):
    w, factor, influence, _ = fitted
    removed = score.top_k_by_magnitude(influence, 6)
    out, _ = _retrain(tiny, w, factor, removed)
    assert float(out["grad_norm"].max()) <= 1e-8
    for i, z in enumerate(removed.tolist()):
        keep = torch.ones(tiny.n_train, dtype=torch.bool)
        keep[z] = False
        sub = type(tiny)(tiny.name, tiny.x_train[keep], tiny.y_train[keep], tiny.x_test,
                         tiny.y_test, "sub", tiny.pixel_scale)
        w_z, info = train.fit(sub, WD, 1e-11)  # from scratch, no warm start
        truth = (model.cross_entropy(w_z, tiny.x_test[8:9], tiny.y_test[8:9])
                 - model.cross_entropy(w, tiny.x_test[8:9], tiny.y_test[8:9]))[0]
        assert math.isclose(float(out["actual_loss_diff"][i]), float(truth), rel_tol=1e-6,
                            abs_tol=1e-9)


def test_lbfgs_method_agrees_with_newton(tiny, fitted):
    w, factor, influence, _ = fitted
    removed = score.top_k_by_magnitude(influence, 2)
    newton, _ = _retrain(tiny, w, factor, removed)
    lbfgs, _ = _retrain(tiny, w, None, removed, method="lbfgs")
    assert torch.allclose(newton["actual_loss_diff"], lbfgs["actual_loss_diff"], rtol=1e-4,
                          atol=1e-7)


def test_predicted_matches_actual_on_tiny(tiny, fitted):
    w, factor, influence, predicted = fitted
    removed = score.top_k_by_magnitude(influence, 100)
    out, _ = _retrain(tiny, w, factor, removed, chunk_size=50)
    assert float(out["grad_norm"].max()) <= 1e-8
    actual = out["actual_loss_diff"]
    r = torch.corrcoef(torch.stack([actual, predicted[removed]]))[0, 1]
    assert r > 0.99, r


def test_chunked_resume_equals_one_run(tiny, fitted):
    w, factor, influence, _ = fitted
    removed = score.top_k_by_magnitude(influence, 12)
    whole, _ = _retrain(tiny, w, factor, removed, chunk_size=4)
    saved = {}

    def checkpoint(out, n_done):
        if n_done == 4:
            saved.update({k: v.clone() for k, v in out.items()}, n_done=n_done)

    _retrain(tiny, w, factor, removed[:4], chunk_size=4, on_chunk=checkpoint)
    resumed, _ = _retrain(tiny, w, factor, removed, chunk_size=4, done=saved)
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_interrupted_loo_stage_resumes_to_identical_artifact(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from infl_cli import ihvp as ihvp_mod
    from infl_cli import loo as loo_mod
    from infl_cli import stages

    def prepare(w):
        stages.run_train(w, "mnist-tiny", None, WD, 1e-10, 5000)
        stages.run_ihvp(w, "cg", [8], ihvp_mod.LissaSettings())
        stages.run_score(w, "cg")

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for w in (whole, cut):
        prepare(w)
    stages.run_loo(whole, None, None, 12, "newton", 1e-8, 4)

    real = loo_mod.newton_chunk
    calls = {"n": 0}

    def interrupting(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(loo_mod, "newton_chunk", interrupting)
    with pytest.raises(Interrupted, match="8 of 12 removals are saved"):
        stages.run_loo(cut, None, None, 12, "newton", 1e-8, 4)
    assert (cut / "loo.partial.safetensors").is_file() and not (cut / "loo.safetensors").exists()
    monkeypatch.setattr(loo_mod, "newton_chunk", real)
    record = stages.run_loo(cut, None, None, 12, "newton", 1e-8, 4)
    assert record["resumed_from"] == 8
    assert not (cut / "loo.partial.safetensors").exists()
    a, b = load_file(str(whole / "loo.safetensors")), load_file(str(cut / "loo.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_correction_pass_equals_float64_gradient(tiny, fitted):
    """The float32 delta-form pass is accurate relative to the change it measures."""
    w, factor, influence, _ = fitted
    x, y, n = tiny.x_train, tiny.y_train, tiny.n_train
    removed = score.top_k_by_magnitude(influence, 6)
    grad_full = model.objective_and_grad(w, x, y, WD)[1]
    at_hat = (n * grad_full[None] - model.train_point_grads(w, x[removed], y[removed], WD)) / (n - 1)
    deltas = -factor.solve(at_hat) * (n - 1) / n  # about the first Newton step
    logits0 = x @ w.T
    exact = loo.loo_gradients(w, x, y, WD, logits0, removed, deltas)
    correction = loo.CorrectionPass(logits0, x[:, factor.active], factor.active)
    fast = correction(w, x, WD, removed, deltas, at_hat)
    change = (exact - at_hat).flatten(1).norm(dim=1)
    err = (fast - exact).flatten(1).norm(dim=1)
    assert float((err / change).max()) < 1e-5
    # and the Newton run with it certifies every removal, in fewer float64 passes
    out_fast, stats_fast = _retrain(tiny, w, factor, removed)
    out_slow, stats_slow = _retrain(tiny, w, factor, removed, fast_correction=False)
    assert bool((out_fast["grad_norm"] <= 1e-8).all()) and stats_fast["correction_passes"] > 0
    assert stats_fast["passes"] <= stats_slow["passes"]
    assert torch.allclose(out_fast["actual_loss_diff"], out_slow["actual_loss_diff"], atol=1e-9)


def test_secant_direction_satisfies_the_secant_equation():
    """L-BFGS two-loop with P⁻¹ as initial inverse: no pairs gives P⁻¹g, and the updated
    inverse maps the newest y to its s exactly (both for every removal of a batch)."""
    torch.manual_seed(0)
    k, shape = 3, (4, 5)
    a = torch.randn(20, 20, dtype=torch.float64)
    p_inv = torch.linalg.inv(a @ a.T + 20 * torch.eye(20, dtype=torch.float64))

    def apply_p(q):
        return (q.reshape(q.shape[0], -1) @ p_inv).reshape(q.shape)

    rows = torch.arange(k)
    g = torch.randn(k, *shape, dtype=torch.float64)
    assert torch.allclose(loo._secant_direction(g, rows, [], apply_p), apply_p(g))
    history = []
    for _ in range(3):
        s = torch.randn(k, *shape, dtype=torch.float64)
        y = 2 * s + 0.3 * torch.randn(k, *shape, dtype=torch.float64)  # sᵀy > 0
        history.append((s, y))
    s_last, y_last = history[-1]
    assert torch.allclose(loo._secant_direction(y_last, rows, history, apply_p), s_last,
                          rtol=1e-10, atol=1e-12)
    # a pair with sᵀy ≤ 0 is skipped, not allowed to break positive definiteness
    bad = history + [(s_last, -y_last)]
    assert torch.allclose(loo._secant_direction(g, rows, bad, apply_p),
                          loo._secant_direction(g, rows, history, apply_p))
