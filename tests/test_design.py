"""The core/rim split of the inputs computes the same products as the dense matrix."""

import numpy as np
import pytest

from infl_cli.design import DesignMatrix, weighted_grams


@pytest.fixture(scope="module")
def design(tiny):
    return DesignMatrix(tiny.x_train, block_rows=300), tiny.x_train[:, (tiny.x_train != 0).any(0)]


def test_split_covers_the_active_columns(design):
    d, xa = design
    assert d.core.size > 0 and d.rim.size > 0
    assert sorted(np.concatenate([d.core, d.rim]).tolist()) == list(range(xa.shape[1]))
    assert np.array_equal(d.dense(), xa.numpy())
    assert np.array_equal(d.rows([5, 0, 999]), xa.numpy()[[5, 0, 999]])
    spans = [(lo, hi) for lo, hi, _, _ in d.blocks()]
    assert spans[0][0] == 0 and spans[-1][1] == d.n and all(
        a[1] == b[0] for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-13), (np.float32, 1e-5)])
def test_products_equal_dense_products(design, dtype, rtol):
    d, xa = design
    rng = np.random.default_rng(0)
    v = rng.standard_normal((d.width, 7)).astype(dtype)
    r = rng.standard_normal((d.n, 5)).astype(dtype)
    x = xa.numpy()
    np.testing.assert_allclose(d.matmul(v), x @ v.astype(np.float64), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(d.rmatmul(r), r.astype(np.float64).T @ x, rtol=rtol, atol=rtol)


def test_weighted_grams_equal_dense_grams(design):
    d, xa = design
    x = xa.numpy()
    w = np.random.default_rng(1).random((d.n, 3))
    calls = []
    grams = weighted_grams(d, w, np.float64, on_gram=lambda: calls.append(1))
    assert len(calls) == 3
    for k in range(3):
        np.testing.assert_allclose(grams[k], (x * w[:, k:k + 1]).T @ x, rtol=1e-12, atol=1e-12)
