"""Both designs (the CPU's core/rim split and the dense device design, run here on the CPU)
compute the same products as the dense matrix, and the same certified products."""

import numpy as np
import pytest
import torch

from infl_cli.data.design import DenseDesign, DesignMatrix

KINDS = ["core/rim", "dense"]


@pytest.fixture(scope="module")
def designs(tiny):
    xa = tiny.x_train[:, (tiny.x_train != 0).any(0)]
    return {"core/rim": DesignMatrix(tiny.x_train, block_rows=300, scale=255.0),
            "dense": DenseDesign(tiny.x_train, scale=255.0, block_rows=300)}, xa


def test_split_covers_the_active_columns(designs):
    d, xa = designs[0]["core/rim"], designs[1]
    assert d.core.size > 0 and d.rim.size > 0
    assert sorted(np.concatenate([d.core, d.rim]).tolist()) == list(range(xa.shape[1]))
    spans = [(lo, hi) for lo, hi, _, _ in d.blocks()]
    assert spans[0][0] == 0 and spans[-1][1] == d.n and all(
        a[1] == b[0] for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("kind", KINDS)
def test_dense_rows_norms_and_active_columns(designs, kind):
    d, xa = designs[0][kind], designs[1]
    assert d.width == xa.shape[1] and d.n == xa.shape[0]
    assert torch.equal(d.dense(), xa) and torch.equal(d.rows([5, 0, 999]), xa[[5, 0, 999]])
    # upper bounds on the norms of the data as rationals (integer pixels / 255)
    ints = np.rint(xa.numpy() * 255).astype(np.longdouble)
    assert (d.row_norms.numpy() >= np.sqrt(np.square(ints).sum(1)) / 255).all()
    assert torch.allclose(d.row_norms, xa.norm(dim=1), rtol=1e-14, atol=0)
    assert d.rounding_model == "exact integer products"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
def test_products_equal_dense_products(designs, kind, dtype, rtol):
    d, xa = designs[0][kind], designs[1]
    g = torch.Generator().manual_seed(0)
    v = torch.randn(d.width, 7, generator=g, dtype=torch.float64).to(dtype)
    r = torch.randn(d.n, 5, generator=g, dtype=torch.float64).to(dtype)
    torch.testing.assert_close(d.matmul(v).double(), xa @ v.double(), rtol=rtol, atol=rtol)
    torch.testing.assert_close(d.rmatmul(r).double(), r.double().T @ xa, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("kind", KINDS)
def test_weighted_grams_equal_dense_grams(designs, kind):
    d, xa = designs[0][kind], designs[1]
    w = torch.rand(d.n, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    calls = []
    grams = d.grams(w, torch.float64, on_gram=lambda: calls.append(1))
    assert len(calls) == 3
    for k in range(3):
        torch.testing.assert_close(grams[k], (xa * w[:, k:k + 1]).T @ xa, rtol=1e-12,
                                   atol=1e-12)


def _exact(ints: np.ndarray, v: np.ndarray, pairs) -> list:
    """Σ_j ints[i, j]·v[j, k] / 255 in exact rational arithmetic, for each (i, k) of pairs."""
    from fractions import Fraction

    return [sum(Fraction(int(a)) * Fraction(float(b)) for a, b in zip(ints[i], v[:, k]))
            / 255 for i, k in pairs]


def test_certified_products_agree_between_designs_and_hold(designs):
    """Exact integer products: both designs give the same values (up to their tiny bounds),
    each within its bound of the exact rational result (sampled entries)."""
    from fractions import Fraction

    xa = designs[1]
    ints = np.rint(xa.numpy() * 255).astype(np.int64)
    g = torch.Generator().manual_seed(2)
    v = torch.randn(xa.shape[1], 4, generator=g, dtype=torch.float64)
    r = torch.randn(xa.shape[0], 3, generator=g, dtype=torch.float64)
    rng = np.random.default_rng(0)
    rows = [(int(i), int(k)) for i, k in zip(rng.integers(0, xa.shape[0], 12),
                                             rng.integers(0, 4, 12))]
    cols = [(int(j), int(k)) for j, k in zip(rng.integers(0, xa.shape[1], 12),
                                             rng.integers(0, 3, 12))]
    exact_v = _exact(ints, v.numpy(), rows)
    exact_r = _exact(ints.T, r.numpy(), cols)
    results = {}
    for kind, d in designs[0].items():
        (av, bv), (ar, br) = d.certified_matmul(v), d.certified_rmatmul(r)
        for (i, k), e in zip(rows, exact_v):
            assert abs(Fraction(float(av[i, k])) - e) <= Fraction(float(bv[i, k])), (kind, i, k)
        for (j, k), e in zip(cols, exact_r):
            assert abs(Fraction(float(ar[k, j])) - e) <= Fraction(float(br[k, j])), (kind, j, k)
        assert float(bv.max()) < 1e-13 * float(av.abs().max()), kind
        results[kind] = (av, ar)
    (a1, r1), (a2, r2) = results.values()
    assert torch.allclose(a1, a2, rtol=0, atol=1e-13) and torch.allclose(r1, r2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_pass_rows_is_the_blocked_forward_back_product(designs, kind):
    """Σ_b X_bᵀ f(X_b v) over row blocks, for an elementwise f that sees each block's rows."""
    d, xa = designs[0][kind], designs[1]
    v = torch.randn(d.width, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    seen = []

    def transform(u, lo, hi):
        seen.append((lo, hi))
        return torch.tanh(u) * (1 + torch.arange(lo, hi, dtype=u.dtype)[:, None] / d.n)

    got, rows = d.pass_rows(v, transform)
    u = xa @ v
    expected = (torch.tanh(u) * (1 + torch.arange(d.n, dtype=u.dtype)[:, None] / d.n)).T @ xa
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert rows == 300 and seen[0] == (0, 300) and seen[-1][1] == d.n
