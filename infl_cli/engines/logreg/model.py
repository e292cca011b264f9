"""Multinomial logistic regression without bias, in closed form.

Parameters ``weight`` W have shape [C, d] (C classes, d features: 10 × 784 pixels on MNIST);
logits are ``x @ W.T``; no class is fixed as a reference, so there are C·d parameters (7,840
on MNIST). An intercept, where wanted, is a constant feature (``--bias``), regularised too.

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

from typing import NamedTuple

import numpy as np
import torch

N_CHUNK = 16_384  # rows per block when a [n, k] temporary would be large


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b: on the CPU through NumPy's BLAS, elsewhere through torch.

    For the tall-skinny products of this model ([n, d] by [d, k] and [k, n] by [n, d]) NumPy
    measured 1.3–2.4× faster than torch's on the 2-core reference machine (transposed
    operands are passed as strided views, never copied).
    """
    if a.device.type != "cpu":
        return a @ b
    return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))


def times(x, v: torch.Tensor) -> torch.Tensor:
    """x·v for inputs x (a tensor [n, d] or a design over its active columns,
    :mod:`~infl_cli.data.design`) and v [d, m]: [n, m]."""
    if isinstance(x, torch.Tensor):
        return mm(x, v)
    return x.matmul(v)


def transposed_times(r: torch.Tensor, x) -> torch.Tensor:
    """rᵀ·x for r [n, m] and inputs x as in :func:`times`: [m, d]."""
    if isinstance(x, torch.Tensor):
        return mm(r.T, x)
    return x.rmatmul(r)


def n_rows(x) -> int:
    return int(x.shape[0]) if isinstance(x, torch.Tensor) else x.n


def probabilities(weight: torch.Tensor, x) -> torch.Tensor:
    """Softmax probabilities [n, C] for inputs x [n, d] (or a design, see :func:`times`)."""
    return torch.softmax(times(x, weight.T), dim=1)


def cross_entropy(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy [n] (no regulariser)."""
    log_p = torch.log_softmax(x @ weight.T, dim=1)
    return -log_p.gather(1, y[:, None])[:, 0]


def residuals(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """p − onehot(y), [n, C]: the per-example CE gradient is residual ⊗ x."""
    r = probabilities(weight, x)
    r[torch.arange(y.shape[0], device=r.device), y] -= 1.0
    return r


def objective(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor, wd: float) -> torch.Tensor:
    """R(W) = mean CE + (wd/2)·‖W‖² (a scalar)."""
    return cross_entropy(weight, x, y).mean() + 0.5 * wd * weight.square().sum()


def objective_and_grad(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor, wd: float,
                       sample_weight: torch.Tensor | None = None):
    """R(W) and ∇R(W) [C, d] in one pass (x: a tensor or a design, see :func:`times`).

    With ``sample_weight`` s [n] the data term is Σ_i s_i·CE_i / Σ_i s_i (a weighted mean),
    which is how leave-one-out objectives are expressed (s_z = 0).
    """
    logits = times(x, weight.T)
    log_p = torch.log_softmax(logits, dim=1)
    ce = -log_p.gather(1, y[:, None])[:, 0]
    r = log_p.exp()
    r[torch.arange(y.shape[0], device=r.device), y] -= 1.0
    if sample_weight is None:
        scale = 1.0 / y.shape[0]
        data_loss = ce.mean()
        grad = transposed_times(r, x) * scale
    else:
        total = sample_weight.sum()
        data_loss = (sample_weight * ce).sum() / total
        grad = transposed_times(r * sample_weight[:, None], x) / total
    loss = data_loss + 0.5 * wd * weight.square().sum()
    return loss, grad + wd * weight


def certified_probabilities(weight: torch.Tensor, design):
    """Softmax probabilities of the training inputs from certified logits (integer pixels times
    integer pieces of W, or the general model for real features: the design's
    ``certified_matmul``): (W over the active features, probabilities [n, C], logits [n, C],
    row_error [n] ≥ ‖p̂_i − p_i‖₁ plus the rounding of p_y − 1,
    :func:`~infl_cli.numerics.bounds.softmax_rounding`), tensors on the design's device."""
    from infl_cli.numerics.bounds import softmax_rounding

    w = weight[:, design.active.to(weight.device)] if weight.shape[1] != design.width \
        else weight
    logits, logit_error = design.certified_matmul(w.T.contiguous())
    probs = (logits - logits.max(dim=1, keepdim=True).values).exp()
    probs /= probs.sum(dim=1, keepdim=True)
    return w, probs, logits, softmax_rounding(probs, logits, logit_error.max(dim=1).values)


class CertifiedGradient(NamedTuple):
    """What :func:`certified_gradient` returns (tensors on the design's device)."""

    grad: torch.Tensor        # ∇R(W) [C, d_active]
    probs: torch.Tensor       # softmax probabilities [n, C]
    logits: torch.Tensor      # [n, C]
    bound: float              # ≥ ‖grad − ∇R(W)‖_F, the exact gradient on the exact data
    row_error: torch.Tensor   # [n]: ≥ ‖(computed p_i − e_y) − (exact p_i − e_y)‖₁


def certified_gradient(weight: torch.Tensor, design, y: torch.Tensor,
                       wd: float) -> CertifiedGradient:
    """∇R(W) for the data (integer pixels / scale as exact rationals, or real features as
    given), with a proven bound on the float64 result's error.

    Logits X Wᵀ and the back-projection Rᵀ X are certified products (the design's
    ``certified_matmul``: exact integer sums for pixels, whose only rounding is in combining
    their pieces; the general model otherwise), then the softmax
    (:func:`~infl_cli.numerics.bounds.softmax_rounding`), and the final (1/n)·RᵀX + wd·W. With ‖δr_i‖₁
    bounding the error of row i of R = P − Y:

        ‖ĝ − ∇R‖_F ≤ (1/n)·Σ_i ‖δr_i‖₁‖x_i‖ + ‖bound of RᵀX‖_F/n + γ_3·‖|RᵀX|/n + wd|W|‖_F.

    ``weight`` is [C, d] or [C, d_active]. The scalar sums are taken on the CPU in a fixed
    order (:func:`~infl_cli.numerics.bounds.fsum`), so the bound has the same bits wherever it is
    computed. Returns a :class:`CertifiedGradient`.
    """
    from infl_cli.numerics.bounds import SAFETY, fnorm, fsum, gamma

    w, probs, logits, row_error = certified_probabilities(weight, design)
    n = design.n
    r = probs.clone()
    r[torch.arange(n, device=r.device), y.to(r.device)] -= 1.0
    back, back_error = design.certified_rmatmul(r)
    grad = back / n + wd * w
    bound = SAFETY * (fsum(row_error * design.row_norms) / n + fnorm(back_error) / n
                      + gamma(3) * fnorm(back.abs() / n + wd * w.abs()))
    return CertifiedGradient(grad, probs, logits, bound, row_error)


def certified_residual(weight: torch.Tensor, design, wd: float, s: torch.Tensor,
                       g: torch.Tensor, certificate: CertifiedGradient | None = None):
    """‖H s_t − g_t‖ for inverse-HVP estimates s and right-hand sides g [T, C, d] (all
    features), with a proven bound on each value's rounding error: (norms [T], bounds [T]) as
    NumPy arrays.

    H s = (1/n)·Σ_i b_i x_iᵀ + wd·s with a_i = s x_i and b_i = p_i ⊙ a_i − p_i (p_iᵀ a_i). The
    products X sᵀ and Bᵀ X are certified products (the design's ``certified_matmul``), the
    probabilities those of :func:`certified_gradient`; what rounds is b (at most
    3‖δp_i‖₁·max|a| from the probabilities, 2·max|δa| from a, γ_{C+3}·2·max|a| in its own
    arithmetic, per row in 1-norm), combining the pieces, and the final sums: the bound is
    (1/n)·Σ_i ‖δb_i‖₁‖x_i‖ + ‖bound of BᵀX‖/n + γ_4·(‖BᵀX‖/n + wd‖s‖ + ‖g‖), over the active
    features, plus 2u·(wd‖s‖ + ‖g‖) on the others (where the residual is wd·s − g).
    """
    from infl_cli.runtime.memory import PASS_BYTES

    if certificate is not None:  # training's: the same probabilities and bounds
        p, row_error = certificate.probs, certificate.row_error
    else:
        _, p, _, row_error = certified_probabilities(weight, design)
    # a few test points at a time: each pass holds about eight [n, C] float64 arrays per point
    group = max(1, int(PASS_BYTES // (8 * 8 * design.n * s.shape[1])))
    pieces = [_certified_residual(weight, design, wd, s[lo:lo + group], g[lo:lo + group], p,
                                  row_error) for lo in range(0, s.shape[0], group)]
    return (np.concatenate([a for a, _ in pieces]), np.concatenate([b for _, b in pieces]))


def _certified_residual(weight, design, wd: float, s, g, p, row_error):
    """:func:`certified_residual` of the test points ``s``, ``g`` [T, C, d] in one pass."""
    from infl_cli.numerics.bounds import SAFETY, UNIT_ROUNDOFF, gamma

    t, c, _ = s.shape
    n = design.n
    active = design.active.to(s.device)
    sa, ga = s[:, :, active], g[:, :, active]
    a, a_error = design.certified_matmul(sa.reshape(t * c, -1).T.contiguous())
    a, a_error = a.reshape(n, t, c), a_error.reshape(n, t, c)
    pa = p[:, None, :] * a
    b = pa - p[:, None, :] * pa.sum(dim=2, keepdim=True)
    a_max = a.abs().max(dim=2).values  # [n, T]
    b_error = (3 * row_error[:, None] * a_max + 2 * a_error.max(dim=2).values
               + 2 * gamma(c + 3) * a_max)  # ‖δb_i‖₁ per row and test point
    back, back_error = design.certified_rmatmul(b.reshape(n, t * c).contiguous())
    back, back_error = back.reshape(t, c, -1), back_error.reshape(t, c, -1)
    residual = back / n + wd * sa - ga
    s_out, g_out = s[:, :, ~active], g[:, :, ~active]
    outside = wd * s_out - g_out
    norms = (residual.square().sum(dim=(1, 2)) + outside.square().sum(dim=(1, 2))).sqrt()

    def flat(v):
        return v.reshape(t, -1).norm(dim=1)

    bound = SAFETY * ((b_error * design.row_norms[:, None]).sum(dim=0) / n
                      + flat(back_error) / n
                      + gamma(4) * (flat(back) / n + wd * flat(sa) + flat(ga))
                      + 2 * UNIT_ROUNDOFF * (wd * flat(s_out) + flat(g_out))
                      + gamma(s[0].numel() + 1) * norms)
    return norms.cpu().numpy(), bound.cpu().numpy()


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
    out = torch.empty(t, n, dtype=x.dtype, device=x.device)
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
    """H v = (1/b)·Σ_i ∇²CE(z_i)·v + wd·v over the examples x [b, d] given (or a design).

    ``vectors`` is [C, d] or [k, C, d]; the result has the same shape. Uses
    ∇²CE·v = (p ⊙ a − p·(pᵀa)) ⊗ x with a = v x, so it costs two [b, d] × [d, k·C] products.
    ``probs`` [b, C] can be passed to skip recomputing the softmax.
    """
    from infl_cli.runtime.memory import PASS_BYTES

    single = vectors.dim() == 2
    v = vectors[None] if single else vectors
    k, c, d = v.shape
    p = probabilities(weight, x) if probs is None else probs

    def curvature(a: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        a = a.reshape(-1, k, c)  # [b, k, C]
        pb = p[lo:hi, None, :]
        pa = pb * a
        return (pa - pb * pa.sum(dim=2, keepdim=True)).reshape(-1, k * c)

    n = n_rows(x)
    if isinstance(x, torch.Tensor) or 4 * 8 * n * k * c <= PASS_BYTES:  # one pass, unblocked
        b = curvature(times(x, v.reshape(k * c, d).T), 0, n)
        data = transposed_times(b, x)
    else:  # many vectors on many rows: in blocks of rows (the design's pass)
        data, _ = x.pass_rows(v.reshape(k * c, d).T.contiguous(), curvature)
    out = data.reshape(k, c, d) / n + wd * v
    return out[0] if single else out


def active_features(x: torch.Tensor) -> torch.Tensor:
    """Mask [d] of the features that are non-zero in at least one row of x.

    For a feature that is zero in every training row, the data term has no curvature: its
    rows and columns of H are wd·I (69 of MNIST's 784 pixels are such always-blank pixels).
    """
    return (x != 0).any(dim=0)


def hessian_reduced(weight: torch.Tensor, design, wd: float, probs: torch.Tensor | None = None,
                    on_block=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """H restricted to the design's active features, [C·d_a, C·d_a] (row-major over [C, d_a]),
    on the design's device.

    ``weight`` is [C, d] (all features) or [C, d_a]; ``design`` a design of the training
    inputs (:mod:`~infl_cli.data.design`). Block (a, b) of n·H_CE is Xᵀ diag(δ_ab·p_a − p_a·p_b) X.
    The probabilities sum to one, so each block row sums to zero and block (a, a) is minus the
    sum of the off-diagonal blocks of its row: only the C(C−1)/2 Gram matrices
    Xᵀ diag(p_a p_b) X (a < b) are formed (the design's ``grams``: on the CPU a symmetric
    product over the dense core and a sparse pass over the rim). ``on_block()`` is called
    after each of them (progress). ``dtype`` float32 halves the time again, for uses that
    only need a preconditioner.
    """
    c = weight.shape[0]
    n, da = design.n, design.width
    w_active = weight[:, design.active.to(weight.device)] if weight.shape[1] != da else weight
    if probs is None:
        probs = probabilities(w_active, design)
    pairs = [(a, b) for a in range(c) for b in range(a + 1, c)]
    weights = torch.stack([probs[:, a] * probs[:, b] for a, b in pairs], dim=1)
    grams = design.grams(weights, dtype, on_gram=on_block)
    h = torch.zeros((c, da, c, da), dtype=dtype, device=grams.device)
    for k, (a, b) in enumerate(pairs):
        block = grams[k]
        h[a, :, b, :] = -block
        h[b, :, a, :] = -block
        h[a, :, a, :] += block
        h[b, :, b, :] += block
    del grams
    h = h.reshape(c * da, c * da)
    h /= n
    h.diagonal().add_(wd)
    return h


def gram(x, row_weight: torch.Tensor | None = None,
         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Σ_i w_i x_i x_iᵀ for x [n, d] or a design (w_i = 1 without ``row_weight``), [d, d] in
    ``dtype``.

    On the CPU NumPy computes ``aᵀa`` by a symmetric rank-n update (BLAS syrk: half the work of
    a general product), measured 20 % faster here than calling ``?syrk`` through SciPy."""
    if not isinstance(x, torch.Tensor):
        w = torch.ones((x.n, 1), dtype=torch.float64, device=x.device) if row_weight is None \
            else row_weight[:, None]
        return x.grams(w, dtype)[0]
    xs = x.to(dtype)
    xs = xs.contiguous() if row_weight is None else xs * row_weight.sqrt().to(dtype)[:, None]
    if xs.device.type != "cpu":
        return xs.T @ xs
    a = xs.numpy()
    return torch.from_numpy(a.T @ a)


def row_sq_norms(x) -> torch.Tensor:
    """‖x_i‖² for every row [n] (x a tensor or a design)."""
    if isinstance(x, torch.Tensor):
        return x.square().sum(1)
    return x.row_sq_norms


def hessian_in_basis(weight: torch.Tensor, x: torch.Tensor, wd: float, basis: torch.Tensor,
                     probs: torch.Tensor | None = None,
                     projected: torch.Tensor | None = None) -> torch.Tensor:
    """(I_C ⊗ Q)ᵀ H (I_C ⊗ Q) for an orthonormal basis Q [d, r] of input space: [C·r, C·r].

    With z_i = Qᵀx_i and U = [p_{·1} z, …, p_{·C} z] ([n, C·r]), block (a, b) of n·H_CE in
    the basis is δ_ab·Σ_i p_ia z_i z_iᵀ − (UᵀU)_ab: one syrk and one product with Z, cheap
    for r ≪ d. Row-major over [C, r], like every other parameter-space layout here.
    ``projected`` = x Q when the caller has it.
    """
    from infl_cli.runtime.memory import rows_per_pass

    c = weight.shape[0]
    n = n_rows(x)
    r = basis.shape[1]
    p = probabilities(weight, x) if probs is None else probs
    z = times(x, basis) if projected is None else projected  # [n, r]
    h = torch.zeros((c * r, c * r), dtype=torch.float64, device=z.device)
    within = torch.zeros((r, c * r), dtype=torch.float64, device=z.device)
    rows = rows_per_pass(c * r * 8, n)  # U in blocks of rows: [rows, C·r] at a time
    for lo in range(0, n, rows):
        zb, pb = z[lo:lo + rows], p[lo:lo + rows]
        u = (zb[:, None, :] * pb[:, :, None]).reshape(zb.shape[0], c * r)
        h -= gram(u)
        within += mm(zb.T, u)  # [:, a, :] = Σ_i p_ia z_i z_iᵀ
    h = h.reshape(c, r, c, r)
    within = within.reshape(r, c, r)
    for a in range(c):
        h[a, :, a, :] += within[:, a, :]
    h = h.reshape(c * r, c * r) / n
    h.diagonal().add_(wd)
    return h


def hessian(weight: torch.Tensor, x: torch.Tensor, wd: float) -> torch.Tensor:
    """The dense Hessian H = (1/n)·Σ_i (diag(p_i) − p_i p_iᵀ) ⊗ x_i x_iᵀ + wd·I, [C·d, C·d],
    on x's device."""
    from infl_cli.data.design import make_design

    c, d = weight.shape
    design = make_design(x.cpu(), device=x.device)
    reduced = hessian_reduced(weight, design, wd)
    active = torch.nonzero(design.active)[:, 0].to(x.device)
    idx = (torch.arange(c, device=x.device)[:, None] * d + active[None, :]).reshape(-1)
    h = torch.zeros(c * d, c * d, dtype=torch.float64, device=x.device)
    h.diagonal().fill_(wd)
    h[idx[:, None], idx[None, :]] = reduced
    return h
