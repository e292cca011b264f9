"""Closed forms of the model against torch.autograd."""

import torch
from torch.func import grad, hessian, jvp, vmap

from infl_cli import model


def _objective(w, x, y, wd):
    return torch.nn.functional.cross_entropy(x @ w.T, y) + 0.5 * wd * (w ** 2).sum()


def test_objective_and_grad_match_autograd(small_problem):
    w, x, y, wd = small_problem
    loss, g = model.objective_and_grad(w, x, y, wd)
    assert torch.allclose(loss, _objective(w, x, y, wd), rtol=1e-13, atol=0)
    assert torch.allclose(g, grad(_objective)(w, x, y, wd), rtol=1e-11, atol=1e-14)


def test_weighted_objective_is_leave_one_out_mean(small_problem):
    w, x, y, wd = small_problem
    s = torch.ones(x.shape[0], dtype=torch.float64)
    s[7] = 0
    keep = s.bool()
    loss, g = model.objective_and_grad(w, x, y, wd, sample_weight=s)
    loss2, g2 = model.objective_and_grad(w, x[keep], y[keep], wd)
    assert torch.allclose(loss, loss2, rtol=1e-13) and torch.allclose(g, g2, rtol=1e-11)


def test_per_example_gradients_match_autograd(small_problem):
    w, x, y, wd = small_problem

    def point_loss(w, xi, yi):
        return _objective(w, xi[None], yi[None], wd)

    def point_ce(w, xi, yi):
        return torch.nn.functional.cross_entropy((xi @ w.T)[None], yi[None])

    expected_train = vmap(grad(point_loss), in_dims=(None, 0, 0))(w, x, y)
    expected_test = vmap(grad(point_ce), in_dims=(None, 0, 0))(w, x, y)
    assert torch.allclose(model.train_point_grads(w, x, y, wd), expected_train, atol=1e-14)
    assert torch.allclose(model.test_point_grads(w, x, y), expected_test, atol=1e-14)
    v = torch.randn(3, *w.shape, dtype=torch.float64)
    dots = model.dot_train_point_grads(w, x, y, wd, v)
    assert torch.allclose(dots, torch.einsum("tcd,ncd->tn", v, expected_train), rtol=1e-11,
                          atol=1e-13)


def test_hvp_matches_autograd(small_problem):
    w, x, y, wd = small_problem
    v = torch.randn(4, *w.shape, dtype=torch.float64)
    expected = torch.stack([jvp(lambda u: grad(_objective)(u, x, y, wd), (w,), (vi,))[1]
                            for vi in v])
    assert torch.allclose(model.hvp(w, x, wd, v), expected, rtol=1e-10, atol=1e-13)
    assert torch.allclose(model.hvp(w, x, wd, v[0]), expected[0], rtol=1e-10, atol=1e-13)


def test_dense_hessian_matches_autograd(small_problem):
    w, x, y, wd = small_problem
    assert not bool(model.active_features(x).all()), "the subset should hold blank pixels"
    expected = hessian(_objective)(w, x, y, wd).reshape(w.numel(), w.numel())
    got = model.hessian(w, x, wd)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-13)
    assert torch.allclose(got, got.T)
