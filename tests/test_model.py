"""Closed forms of the model against torch.autograd."""

import pytest
import torch
from torch.func import grad, hessian, jvp, vmap

from infl_cli.engines.logreg import model


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


def test_certified_gradient_bound_holds_against_extended_precision(tiny):
    """The exact-integer gradient is within its proven bound of an 80-bit (longdouble)
    evaluation on the data as rationals (pixels / 255), and the bound is small."""
    import numpy as np

    from infl_cli.data.design import DesignMatrix

    torch.manual_seed(1)
    design = DesignMatrix(tiny.x_train, scale=255.0)
    w = 0.05 * torch.randn(10, design.width, dtype=torch.float64)
    grad, probs, _, bound, _ = model.certified_gradient(w, design, tiny.y_train, 0.01)
    if np.finfo(np.longdouble).eps >= 1e-18:
        pytest.skip("no extended precision on this platform")
    x = np.rint(tiny.x_train.numpy()[:, design.active.numpy()] * 255).astype(np.longdouble) / 255
    wl = w.numpy().astype(np.longdouble)
    logits = x @ wl.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(tiny.n_train), tiny.y_train.numpy()] -= 1
    reference = p.T @ x / tiny.n_train + np.longdouble(0.01) * wl
    error = float(np.sqrt(np.square(grad.numpy().astype(np.longdouble) - reference).sum()))
    assert error <= bound < 1e-12, (error, bound)
    assert float(np.abs(probs.numpy() - (p + np.eye(10)[tiny.y_train.numpy()])).max()) < 1e-14
