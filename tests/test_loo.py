"""Leave-one-out retraining: certified, equal to independent retraining, and resumable."""

import math

import numpy as np
import pytest
import torch
from conftest import copy_work

from infl_cli import stages
from infl_cli.data.dataset import subset
from infl_cli.engines.logreg import changes as changes_mod
from infl_cli.engines.logreg import loo, model, retraining, score, train
from infl_cli.engines.logreg.hessian import HessianFactor
from infl_cli.errors import Interrupted
from infl_cli.numerics import bounds
from infl_cli.stages import selection

WD = 0.01
TESTS = [8, 3, 60]


@pytest.fixture(scope="module")
def fitted(tiny, tiny_model):
    w, record = tiny_model
    assert record["settings"]["wd"] == WD
    factor = HessianFactor(w, tiny.design, WD)
    s = factor.solve(model.test_point_grads(w, tiny.x_test[TESTS], tiny.y_test[TESTS]))
    influence, predicted = score.influence_scores(w, tiny.x_train, tiny.y_train, WD, s)
    problem = loo.LooProblem(w, tiny.design, tiny.y_train, WD, tiny.x_test[TESTS],
                             tiny.y_test[TESTS])
    return w, problem, influence, predicted


def _solve(problem, removed, **kw):
    removed = np.asarray(removed)
    selected = kw.pop("selected", np.ones((len(problem.y_test), len(removed)), dtype=bool))
    return loo.solve_chunk(problem, removed, selected, loo.LooSettings(**kw))


def _reference(tiny, w, z, tol=1e-13):
    """Ŵ₋z from scratch (no warm start), polished to its certified floor, and the test losses'
    changes f_t(Ŵ₋z) − f_t(Ŵ) with their own error bound (the reference is not exact)."""
    keep = np.ones(tiny.n_train, dtype=bool)
    keep[z] = False
    sub = subset(tiny, np.flatnonzero(keep), f"without {z}")
    w_z, info = train.fit(sub, WD, tol)
    x_t, y_t = tiny.x_test[TESTS], tiny.y_test[TESTS]
    change = (model.cross_entropy(w_z, x_t, y_t) - model.cross_entropy(w, x_t, y_t)).numpy()
    p = model.probabilities(w_z, x_t)
    p[torch.arange(len(TESTS)), y_t] -= 1
    grad_f = (p.norm(dim=1) * x_t.norm(dim=1)).numpy()
    r = bounds.radius(info["grad_norm_certified"], WD)
    own = bounds.test_loss_error(grad_f, r, x_t.norm(dim=1).numpy())
    return change, own + 1e-14 * (1 + np.abs(change))  # + rounding of the two float64 losses


def test_every_error_bound_holds_against_tight_retraining(tiny, fitted):
    """Top and random removals, each solved by the certified iteration at three precisions:
    the certified bound always covers the distance to a from-scratch retraining certified to
    ‖∇‖ ≲ 1e-13 (whose own error bound is added), and the default precision meets 1 %."""
    w, problem, influence, _ = fitted
    top = score.top_k_by_magnitude(influence[0], 3).tolist()
    random = np.random.default_rng(0).choice(tiny.n_train, 3, replace=False).tolist()
    removed = top + random
    references = [_reference(tiny, w, z) for z in removed]
    for settings in ({}, {"rel_error": 0.0}, {"rel_error": 0.0, "tol": 1e-5, "max_steps": 1,
                                              "fast_correction": False}):
        out, _ = _solve(problem, removed, **settings)
        for i, (ref, ref_bound) in enumerate(references):
            gap = np.abs(out["actual_loss_diff"][:, i] - ref)
            assert (gap <= out["actual_error_bound"][:, i] + ref_bound).all(), (settings, i, gap)
        if not settings:
            assert (out["actual_error_bound"] <= 0.01 * np.abs(out["actual_loss_diff"])).all()
            assert (out["grad_norm"] + out["grad_rounding"] <= 1e-8).all()


def test_newton_loo_equals_independent_retraining(tiny, fitted):
    w, problem, influence, _ = fitted
    removed = score.top_k_by_magnitude(influence[0], 4).numpy()
    out, stats = _solve(problem, removed)
    assert stats["float32_passes"] == 1 and stats["float64_passes"] >= 1
    for i, z in enumerate(removed.tolist()):
        truth, truth_bound = _reference(tiny, w, z, tol=1e-11)
        gap = np.abs(out["actual_loss_diff"][:, i] - truth)
        assert (gap <= out["actual_error_bound"][:, i] + truth_bound).all()
        assert (gap <= 1e-4 * np.abs(truth) + 1e-9).all()  # and the bounds are not vacuous


def test_lbfgs_method_agrees_with_newton(tiny, fitted):
    w, problem, influence, _ = fitted
    removed = score.top_k_by_magnitude(influence[0], 2).numpy()
    newton, _ = _solve(problem, removed)
    lbfgs, _ = _solve(problem, removed, method="lbfgs")
    gap = np.abs(newton["actual_loss_diff"] - lbfgs["actual_loss_diff"])
    assert (gap <= newton["actual_error_bound"] + lbfgs["actual_error_bound"]).all()
    assert (lbfgs["grad_norm"] + lbfgs["grad_rounding"] <= 1e-8).all()


def test_predicted_matches_actual_on_tiny(tiny, fitted):
    w, problem, influence, predicted = fitted
    removed = score.top_k_by_magnitude(influence[0], 100).numpy()
    out, _ = _solve(problem, removed, chunk_size=50)
    actual = torch.from_numpy(out["actual_loss_diff"][0])
    r = torch.corrcoef(torch.stack([actual, predicted[0][removed]]))[0, 1]
    assert r > 0.99, r


def test_correction_pass_is_accurate_and_only_saves_passes(tiny, fitted):
    """The float32 delta-form gradient is accurate relative to the change it measures, and
    runs with and without it agree within their certified bounds."""
    w, problem, influence, _ = fitted
    removed = score.top_k_by_magnitude(influence[0], 6).numpy()
    chunk = problem.chunk(changes_mod.Changes.removals(removed))
    rows = torch.arange(6)
    base, base_error = problem.base_gradient(chunk)
    deltas = -problem.factor.solve(base) * (tiny.n_train - 1) / tiny.n_train  # ≈ a Newton step
    exact, rounding = problem.gradient(chunk, rows, deltas, base, base_error, True)
    fast, _ = problem.gradient(chunk, rows, deltas, base, base_error, False)
    change = (exact - base).reshape(6, -1).norm(dim=1)
    assert float(((fast - exact).reshape(6, -1).norm(dim=1) / change).max()) < 1e-5
    assert bool((rounding < 1e-10).all())  # the rounding bound is far below any --tol
    out_fast, stats_fast = _solve(problem, removed)
    out_slow, stats_slow = _solve(problem, removed, fast_correction=False)
    assert stats_fast["float64_passes"] <= stats_slow["float64_passes"]
    gap = np.abs(out_fast["actual_loss_diff"] - out_slow["actual_loss_diff"])
    assert (gap <= out_fast["actual_error_bound"] + out_slow["actual_error_bound"]).all()


def _relabel_changes(tiny):
    """Three changes: a removal, a relabelling of 40 points, and both a removal and 7
    relabellings (one change may do both)."""
    rng = np.random.default_rng(4)
    some = rng.choice(tiny.n_train, 40, replace=False)
    new = (tiny.train_y[some] + rng.integers(1, 10, 40)) % 10
    changes = changes_mod.Changes.relabelings([([], []), (some, new), (some[:7], new[:7])])
    changes.removed[:] = [5, -1, 77]
    return changes


@pytest.mark.parametrize("kind", ["removals", "relabellings and removals"])
def test_delta_pass_equals_direct_gradient(tiny, fitted, kind):
    """The delta-form pass equals the gradient of each change's objective computed directly
    (weights 0 for the removed point, the new labels) at Ŵ + Δ, and its certified rounding
    bound covers the difference."""
    w, problem, influence, _ = fitted
    changes = changes_mod.Changes.removals([5, 77]) if kind == "removals" else _relabel_changes(tiny)
    chunk = problem.chunk(changes)
    k = len(changes)
    base, base_error = problem.base_gradient(chunk)
    deltas = 1e-3 * torch.from_numpy(
        np.random.default_rng(2).standard_normal((k, 10, problem.design.width)))
    grad, rounding = problem.gradient(chunk, torch.arange(k), deltas, base, base_error, True)
    for i in range(k):
        weights = torch.ones(tiny.n_train, dtype=torch.float64)
        if changes.removed[i] >= 0:
            weights[int(changes.removed[i])] = 0
        labels = torch.from_numpy(changes.labels(tiny.train_y, i))
        direct = model.objective_and_grad(problem.weight + deltas[i], problem.design,
                                          labels, WD, weights)[1]
        assert torch.allclose(grad[i], direct, rtol=0, atol=1e-13)
        assert float((grad[i] - direct).norm()) <= float(rounding[i]) + 1e-14


def test_relabelled_retraining_equals_independent_training(tiny, fitted):
    """Label fixes through the same certified core: each retrained model is within its
    certificate of a from-scratch fit on the relabelled data."""
    from infl_cli.data.dataset import with_labels

    w, problem, _, _ = fitted
    changes = _relabel_changes(tiny)
    changes.removed[:] = -1
    out, _ = retraining.solve_changes(problem, changes, np.ones((len(TESTS), 3), dtype=bool),
                               loo.LooSettings(rel_error=0.0, tol=1e-9, max_steps=30),
                               keep_deltas=True)
    assert (out["grad_norm"] + out["grad_rounding"] <= 1e-9).all()
    for j in (1, 2):
        relabelled = with_labels(tiny, changes.labels(tiny.train_y, j), f"fix {j}")
        w_j, info = train.fit(relabelled, WD, 1e-13)
        active = problem.design.active
        gap = float((problem.weight + out["deltas"][j] - w_j[:, active]).norm())
        radius = (out["grad_norm"][j] + out["grad_rounding"][j]) / WD
        assert gap <= radius + info["grad_norm_certified"] / WD, (j, gap, radius)


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
    assert torch.allclose(retraining._secant_direction(g, rows, [], apply_p), apply_p(g))
    history = []
    for _ in range(3):
        s = torch.randn(k, *shape, dtype=torch.float64)
        y = 2 * s + 0.3 * torch.randn(k, *shape, dtype=torch.float64)  # sᵀy > 0
        history.append((s, y))
    s_last, y_last = history[-1]
    assert torch.allclose(retraining._secant_direction(y_last, rows, history, apply_p), s_last,
                          rtol=1e-10, atol=1e-12)
    # a pair with sᵀy ≤ 0 is skipped, not allowed to break positive definiteness
    bad = history + [(s_last, -y_last)]
    assert torch.allclose(retraining._secant_direction(g, rows, bad, apply_p),
                          retraining._secant_direction(g, rows, history, apply_p))


def test_selections(fitted):
    _, _, influence, _ = fitted
    train_idx, selected = selection.select_removals("top", 5, influence[:2], seed=0)
    tops = [score.top_k_by_magnitude(influence[i], 5).tolist() for i in range(2)]
    assert train_idx[:5].tolist() == tops[0]
    assert sorted(train_idx.tolist()) == sorted(set(tops[0] + tops[1]))
    for i in range(2):
        assert sorted(train_idx[selected[i]].tolist()) == sorted(tops[i])
    first, sel = selection.select_removals("random", 30, influence, seed=4)
    again, _ = selection.select_removals("random", 30, influence, seed=4)
    other, _ = selection.select_removals("random", 30, influence, seed=5)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert len(set(first.tolist())) == 30 and sel.all() and sel.shape == (3, 30)
    every, sel = selection.select_removals("all", 0, influence, seed=0)
    assert np.array_equal(every, np.arange(influence.shape[1])) and sel.all()
    assert selection.sample_test_indices(200, 5, 1) == selection.sample_test_indices(200, 5, 1)


@pytest.fixture
def stage_work(tiny_work, tmp_path):
    """A private copy of the session's work folder: model, CG scores for tests 8 and 3."""
    return copy_work(tiny_work, tmp_path, "stage")


def _artifact(work):
    from safetensors.torch import load_file

    return load_file(str(work / "loo.safetensors"))


def test_multi_test_loo_equals_single_test_runs(stage_work, tmp_path):
    """One run for tests 8 and 3 retrains the union once; each test point's own top-k equal
    its single-test run's, within both runs' certified bounds."""
    settings = loo.LooSettings(chunk_size=7)
    both = stages.run_loo(stage_work, None, stages.TestChoice([8, 3]), "top", 12, 0, settings)
    joint = _artifact(stage_work)
    assert joint["actual_loss_diff"].shape == (2, both["n_removals"])
    assert 12 < both["n_removals"] <= 24 and joint["selected"].sum(1).tolist() == [12, 12]
    for row, t in enumerate([8, 3]):
        single = copy_work(stage_work, tmp_path, f"single{t}")
        stages.run_loo(single, None, stages.TestChoice([t]), "top", 12, 0, settings)
        alone = _artifact(single)
        mine = joint["selected"][row]
        position = {int(j): i for i, j in enumerate(joint["train_indices"].tolist())}
        assert sorted(joint["train_indices"][mine].tolist()) == \
            sorted(alone["train_indices"].tolist())
        at = torch.tensor([position[int(j)] for j in alone["train_indices"]])
        gap = (joint["actual_loss_diff"][row, at] - alone["actual_loss_diff"][0]).abs()
        assert bool((gap <= joint["actual_error_bound"][row, at]
                     + alone["actual_error_bound"][0]).all())


@pytest.mark.parametrize("select, k", [("random", 25), ("all", 0)])
def test_random_and_all_selections_run_and_certify(stage_work, select, k):
    work = stage_work
    record = stages.run_loo(work, None, stages.TestChoice([8]), select, k, 3,
                            loo.LooSettings(chunk_size=100 if select == "all" else 10))
    out = _artifact(work)
    n = 25 if select == "random" else 1000
    assert out["train_indices"].shape == (n,) and bool(out["selected"].all())
    assert record["certified"] == n and record["pairs_selected"] == n
    bound, actual = out["actual_error_bound"], out["actual_loss_diff"]
    assert bool(torch.isfinite(bound).all())
    # the relative target holds except at the float64 floor, where the bound is tiny anyway
    missed = bound > 0.01 * actual.abs()
    assert bool((bound[missed] < 1e-9).all()), (int(missed.sum()), float(bound[missed].max()))


def test_interrupted_loo_stage_resumes_to_identical_artifact(tiny_work, tmp_path, monkeypatch):
    from infl_cli.runtime import chunks

    whole, cut = copy_work(tiny_work, tmp_path, "whole"), copy_work(tiny_work, tmp_path, "cut")
    settings = loo.LooSettings(chunk_size=4)
    stages.run_loo(whole, None, stages.TestChoice([8]), "top", 12, 0, settings)

    real = chunks.timed_chunk
    calls = {"n": 0}

    def interrupting(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(chunks, "timed_chunk", interrupting)
    with pytest.raises(Interrupted, match="8 of 12 removals are saved"):
        stages.run_loo(cut, None, stages.TestChoice([8]), "top", 12, 0, settings)
    assert (cut / "loo.partial.safetensors").is_file() and not (cut / "loo.safetensors").exists()
    monkeypatch.setattr(chunks, "timed_chunk", real)
    record = stages.run_loo(cut, None, stages.TestChoice([8]), "top", 12, 0, settings)
    assert record["resumed_from"] == 8
    assert not (cut / "loo.partial.safetensors").exists()
    a, b = _artifact(whole), _artifact(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_partial_from_other_settings_is_not_reused(stage_work, tiny):
    """A checkpoint made with other settings (here another --rel-error) is started over."""
    from infl_cli.runtime import artifacts as art
    from infl_cli.runtime import chunks

    work = stage_work
    plan = stages.plan_loo(work, None, stages.TestChoice([8]), "top", 6, 0, loo.LooSettings(),
                           art.read_record(work / art.MODEL), tiny)
    record, inputs, tests, train_idx, selected = plan
    store = chunks.PartialResults(work / "p.safetensors", train_idx, tests, selected, 3, record,
                                  inputs)
    store.arrays["done"][:3] = True
    store.save()
    again = chunks.PartialResults(work / "p.safetensors", train_idx, tests, selected, 3, record,
                                  inputs)
    assert again.resumed_from == 3 and len(again.pending()) == 1
    other = dict(record, rel_error=0.5)
    fresh = chunks.PartialResults(work / "p.safetensors", train_idx, tests, selected, 3, other,
                                  inputs)
    assert fresh.resumed_from == 0 and len(fresh.pending()) == 2


def test_bound_pieces():
    assert math.isclose(bounds.gamma(10), 10 * 2.0 ** -53 / (1 - 10 * 2.0 ** -53))
    assert bounds.test_loss_error(2.0, 0.1, 3.0) == pytest.approx(2 * 0.1 + 0.25 * 9 * 0.01)
    absolute, relative = bounds.ihvp_error(np.array([1e-3]), np.array([2.0]), 0.01)
    assert absolute[0] == pytest.approx(0.1) and relative[0] == pytest.approx(0.1 / 1.9)
    assert math.isinf(bounds.ihvp_error(np.array([1.0]), np.array([1.0]), 0.01)[1][0])
