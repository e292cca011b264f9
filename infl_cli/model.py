"""Multinomial logistic regression without bias, in closed form.

Parameters ``weight`` W have shape [C, d] (C = 10 classes, d = 784 pixels); logits are
``x @ W.T``; no class is fixed as a reference, so there are C·d = 7,840 parameters.

Losses and their derivatives (REFERENCE.md):

* per-point training loss  L(z, W) = CE(z, W) + (wd/2)·‖W‖²;
* training objective       R(W) = (1/n)·Σ_i L(z_i, W) = mean CE + (wd/2)·‖W‖²;
* test loss                CE only (no regulariser);
* ∇CE(z, W)   = (p − y) xᵀ, with p = softmax(W x) and y one-hot;
* ∇²CE(z, W)  = (diag(p) − p pᵀ) ⊗ x xᵀ, so H = ∇²R = (1/n)·Σ_i ∇²CE(z_i) + wd·I.

Every function is vectorised over examples; vectors in parameter space are shaped like W,
[C, d], or carry leading batch dimensions [..., C, d]. Flattening is row-major: parameter
index c·d + j is weight[c, j], and the dense Hessian is indexed the same way.
"""

from __future__ import annotations

import numpy as np
import torch

N_CHUNK = 16_384  # rows per block when a [n, k] temporary would be large


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for CPU tensors through NumPy's BLAS.

    For the tall-skinny products of this model ([n, d] by [d, k] and [k, n] by [n, d]) it
    measured 1.3–2.4× faster than torch's on the 2-core reference machine (transposed
    operands are passed as strided views, never copied).
    """
    return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))


def probabilities(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities [n, C] for inputs x [n, d]."""
    return torch.softmax(x @ weight.T, dim=1)


def cross_entropy(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy [n] (no regulariser)."""
    log_p = torch.log_softmax(x @ weight.T, dim=1)
    return -log_p.gather(1, y[:, None])[:, 0]


def residuals(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """p − onehot(y), [n, C]: the per-example CE gradient is residual ⊗ x."""
    r = probabilities(weight, x)
    r[torch.arange(y.shape[0]), y] -= 1.0
    return r


def objective(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor, wd: float) -> torch.Tensor:
    """R(W) = mean CE + (wd/2)·‖W‖² (a scalar)."""
    return cross_entropy(weight, x, y).mean() + 0.5 * wd * weight.square().sum()


def objective_and_grad(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor, wd: float,
                       sample_weight: torch.Tensor | None = None):
    """R(W) and ∇R(W) [C, d] in one pass.

    With ``sample_weight`` s [n] the data term is Σ_i s_i·CE_i / Σ_i s_i (a weighted mean),
    which is how leave-one-out objectives are expressed (s_z = 0).
    """
    logits = mm(x, weight.T)
    log_p = torch.log_softmax(logits, dim=1)
    ce = -log_p.gather(1, y[:, None])[:, 0]
    r = log_p.exp()
    r[torch.arange(y.shape[0]), y] -= 1.0
    if sample_weight is None:
        scale = 1.0 / y.shape[0]
        data_loss = ce.mean()
        grad = mm(r.T, x) * scale
    else:
        total = sample_weight.sum()
        data_loss = (sample_weight * ce).sum() / total
        grad = mm((r * sample_weight[:, None]).T, x) / total
    loss = data_loss + 0.5 * wd * weight.square().sum()
    return loss, grad + wd * weight


def train_point_grads(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                      wd: float) -> torch.Tensor:
    """∇L(z_i, W) = (p_i − y_i) x_iᵀ + wd·W for each example, [n, C, d] (regulariser included).

    Materialises n·C·d numbers: use :func:`dot_train_point_grads` for large n.
    """
    r = residuals(weight, x, y)
    return r[:, :, None] * x[:, None, :] + wd * weight


def test_point_grads(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇CE(z_test, W) = (p − y) xᵀ for each test example, [m, C, d] (no regulariser)."""
    r = residuals(weight, x, y)
    return r[:, :, None] * x[:, None, :]


def dot_train_point_grads(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor, wd: float,
                          vectors: torch.Tensor) -> torch.Tensor:
    """⟨v_t, ∇L(z_i, W)⟩ for vectors v [T, C, d] and every example i: returns [T, n].

    Uses ⟨v, r xᵀ + wd·W⟩ = rᵀ(v x) + wd·⟨v, W⟩, so no per-example gradient is formed.
    """
    n = x.shape[0]
    t = vectors.shape[0]
    c, d = weight.shape
    out = torch.empty(t, n, dtype=x.dtype)
    reg = wd * (vectors * weight).sum(dim=(1, 2))  # [T]
    flat_v = vectors.reshape(t * c, d)
    for lo in range(0, n, N_CHUNK):
        hi = min(lo + N_CHUNK, n)
        r = residuals(weight, x[lo:hi], y[lo:hi])  # [b, C]
        proj = (x[lo:hi] @ flat_v.T).reshape(hi - lo, t, c)  # [b, T, C]: v_t x_i
        out[:, lo:hi] = torch.einsum("btc,bc->tb", proj, r)
    return out + reg[:, None]


def hvp(weight: torch.Tensor, x: torch.Tensor, wd: float, vectors: torch.Tensor,
        probs: torch.Tensor | None = None) -> torch.Tensor:
    """H v = (1/b)·Σ_i ∇²CE(z_i)·v + wd·v over the examples x [b, d] given.

    ``vectors`` is [C, d] or [k, C, d]; the result has the same shape. Uses
    ∇²CE·v = (p ⊙ a − p·(pᵀa)) ⊗ x with a = v x, so it costs two [b, d] × [d, k·C] products.
    ``probs`` [b, C] can be passed to skip recomputing the softmax.
    """
    single = vectors.dim() == 2
    v = vectors[None] if single else vectors
    k, c, d = v.shape
    p = probabilities(weight, x) if probs is None else probs
    a = mm(x, v.reshape(k * c, d).T).reshape(-1, k, c)  # [b, k, C]
    pa = p[:, None, :] * a
    b = pa - p[:, None, :] * pa.sum(dim=2, keepdim=True)  # [b, k, C]
    out = mm(b.reshape(-1, k * c).T, x).reshape(k, c, d) / x.shape[0] + wd * v
    return out[0] if single else out


def active_features(x: torch.Tensor) -> torch.Tensor:
    """Mask [d] of the features that are non-zero in at least one row of x.

    For a feature that is zero in every training row, the data term has no curvature: its
    rows and columns of H are wd·I (69 of MNIST's 784 pixels are such always-blank pixels).
    """
    return (x != 0).any(dim=0)


def hessian_reduced(weight: torch.Tensor, x: torch.Tensor, wd: float, active: torch.Tensor,
                    probs: torch.Tensor | None = None, on_block=None,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """H restricted to the ``active`` features, [C·d_a, C·d_a] (row-major over [C, d_a]).

    Block (a, b) of n·H_CE is Xᵀ diag(δ_ab·p_a − p_a·p_b) X. The probabilities sum to one, so
    each block row sums to zero and block (a, a) is minus the sum of the off-diagonal blocks
    of its row: only the C(C−1)/2 Gram matrices Xᵀ diag(p_a p_b) X (a < b) are formed, each
    as a symmetric rank-n update (BLAS ``syrk``) of sqrt(p_a p_b)·X, which halves the work
    of a general product. ``on_block()`` is called after each of them (progress).
    ``dtype`` float32 halves the time again, for uses that only need a preconditioner.
    """
    c = weight.shape[0]
    n = x.shape[0]
    p = probabilities(weight, x) if probs is None else probs
    xa = x[:, active].to(dtype).contiguous()
    p = p.to(dtype)
    da = xa.shape[1]
    h = torch.zeros(c, da, c, da, dtype=dtype)
    scaled = torch.empty_like(xa)  # reused: a fresh [n, d_a] buffer per pair costs page faults
    for a in range(c):
        for b in range(a + 1, c):
            torch.mul(xa, torch.sqrt(p[:, a] * p[:, b])[:, None], out=scaled)
            block = _syrk(scaled)
            h[a, :, b, :] = -block
            h[b, :, a, :] = -block
            h[a, :, a, :] += block
            h[b, :, b, :] += block
            if on_block is not None:
                on_block()
    h = h.reshape(c * da, c * da)
    h /= n
    h.diagonal().add_(wd)
    return h


def _syrk(xs: torch.Tensor) -> torch.Tensor:
    """xsᵀ xs for a contiguous float32 or float64 xs [n, d], [d, d] in xs's dtype, by one
    symmetric rank-n update (BLAS syrk: half the work of a general product)."""
    from scipy.linalg.blas import dsyrk, ssyrk

    syrk = ssyrk if xs.dtype == torch.float32 else dsyrk
    upper = torch.from_numpy(syrk(1.0, xs.numpy().T, trans=0))  # the lower triangle is 0
    full = upper + upper.T
    full.diagonal().mul_(0.5)
    return full


def gram(x: torch.Tensor, row_weight: torch.Tensor | None = None,
         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Σ_i w_i x_i x_iᵀ for x [n, d] (w_i = 1 without ``row_weight``), [d, d] in ``dtype``,
    by one symmetric rank-n update (BLAS syrk)."""
    xs = x.to(dtype)
    return _syrk(xs.contiguous() if row_weight is None
                 else xs * row_weight.sqrt().to(dtype)[:, None])


def hessian_in_basis(weight: torch.Tensor, x: torch.Tensor, wd: float, basis: torch.Tensor,
                     probs: torch.Tensor | None = None,
                     projected: torch.Tensor | None = None) -> torch.Tensor:
    """(I_C ⊗ Q)ᵀ H (I_C ⊗ Q) for an orthonormal basis Q [d, r] of input space: [C·r, C·r].

    With z_i = Qᵀx_i and U = [p_{·1} z, …, p_{·C} z] ([n, C·r]), block (a, b) of n·H_CE in
    the basis is δ_ab·Σ_i p_ia z_i z_iᵀ − (UᵀU)_ab: one syrk and one product with Z, cheap
    for r ≪ d. Row-major over [C, r], like every other parameter-space layout here.
    ``projected`` = x Q when the caller has it.
    """
    c = weight.shape[0]
    n = x.shape[0]
    r = basis.shape[1]
    p = probabilities(weight, x) if probs is None else probs
    z = mm(x, basis) if projected is None else projected  # [n, r]
    u = (z[:, None, :] * p[:, :, None]).reshape(n, c * r)
    h = -gram(u).reshape(c, r, c, r)
    within = mm(z.T, u).reshape(r, c, r)  # [:, a, :] = Σ_i p_ia z_i z_iᵀ
    for a in range(c):
        h[a, :, a, :] += within[:, a, :]
    h = h.reshape(c * r, c * r) / n
    h.diagonal().add_(wd)
    return h


def hessian(weight: torch.Tensor, x: torch.Tensor, wd: float) -> torch.Tensor:
    """The dense Hessian H = (1/n)·Σ_i (diag(p_i) − p_i p_iᵀ) ⊗ x_i x_iᵀ + wd·I, [C·d, C·d]."""
    c, d = weight.shape
    active = active_features(x)
    reduced = hessian_reduced(weight, x, wd, active)
    idx = (torch.arange(c)[:, None] * d + torch.nonzero(active)[:, 0][None, :]).reshape(-1)
    h = torch.zeros(c * d, c * d, dtype=torch.float64)
    h.diagonal().fill_(wd)
    h[idx[:, None], idx[None, :]] = reduced
    return h
