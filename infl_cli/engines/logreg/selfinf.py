"""Self-influence of every training point of the logistic model, in closed form.

With r_i = p_i − e_{y_i} (the softmax at Ŵ minus the one-hot label), ∇CE(z_i) = r_i ⊗ x_i and
∇L(z_i) = r_i ⊗ x_i + wd·Ŵ. With M = H⁻¹ (over the active features; elsewhere x_i = Ŵ = 0):

* q_i = ∇CE(z_i)ᵀ M ∇CE(z_i) = Σ_{a,b} r_ia r_ib · x_iᵀ M_ab x_i, quadratic forms of x_i with
  the blocks of M (never a dense 7,840-vector per point); since r_i sums to zero, in an
  orthonormal basis of that subspace only (K − 1)K/2 of them (45 on MNIST, not 55);
* t_i = ∇CE(z_i)ᵀ M vec(Ŵ) = Σ_a r_ia · x_iᵀ V_a with V = M Ŵ (one solve for all points);
* the self-influence I_up,loss(z_i, z_i) = −∇CE(z_i)ᵀ H⁻¹ ∇L(z_i) = −(q_i + wd·t_i), and
  removing z_i is predicted to change its own loss by −I/n = (q_i + wd·t_i)/n;
* Koh's variant (the authors' code: ∇CE on both sides, σ(−yθᵀx)²·xᵀH⁻¹x for the binary model):
  −q_i, predicted change q_i/n.

Each block product runs over the design's dense core (a GEMM with the core columns) and its
sparse rim (sparse products), in row blocks, so the memory stays a few hundred MB.

**Error.** The values are checked, not assumed: :func:`certified_sample` recomputes those of a
sample of points independently (a float64 Cholesky solve per point) and bounds each of *those*
with a proof: the residual ‖H s − v‖ by certified products (:func:`~infl_cli.engines.logreg.model.certified_residual`,
λ_min(H) ≥ wd) and the rounding of v_i from the certified probabilities.
"""

from __future__ import annotations

import numpy as np
import torch

from infl_cli.engines.logreg import model
from infl_cli.numerics import bounds

ROW_BLOCK = 8192
SAMPLE_BLOCK = 20  # points per certified residual (memory: ~n·20·C floats per piece)


def _blocks(inverse: torch.Tensor, classes: int, width: int):
    """M as [C, d_a, C, d_a] (a view)."""
    return inverse.reshape(classes, width, classes, width)


def quadratic_forms(design, inverse: torch.Tensor, classes: int) -> torch.Tensor:
    """Q[i, a, b] = x_iᵀ M_ab x_i for every training row i and class pair: [n, C, C]
    (symmetric in a, b), float64, on the design's device.

    With x = (x_c, x_r) over the design's dense core and sparse rim, x M_ab x = x_c B_cc x_c
    + x_r (B_rc + B_crᵀ) x_c + x_r B_rr x_r (B = M_ab). For each class a, the pairs (a, b ≥ a)
    go together: one GEMM of the core rows with [B_cc for every b] (the bulk of the work), one
    product of the rim rows with [B_rc + B_crᵀ for every b], and the rim–rim terms from the
    pairs of non-zeros within each row (a rim row has a few)."""
    width = design.width
    n = design.n
    device = inverse.device
    core = torch.as_tensor(getattr(design, "core", np.arange(width)), device=device)
    rim = torch.as_tensor(getattr(design, "rim", np.arange(0)), device=device)
    nc, nr = core.numel(), rim.numel()
    m = inverse.to(torch.float64).reshape(classes, width, classes, width)
    out = torch.empty(n, classes, classes, dtype=torch.float64, device=device)
    triples = _rim_pairs(design) if nr else None
    for a in range(classes):
        count = classes - a  # the pairs (a, b ≥ a)
        rows_c = m[a].index_select(0, core)[:, a:]  # [nc, count, d]
        mcc = rows_c.index_select(2, core).reshape(nc, count * nc)
        if nr:
            rows_r = m[a].index_select(0, rim)[:, a:]  # [nr, count, d]
            mrc = (rows_r.index_select(2, core)
                   + rows_c.index_select(2, rim).permute(2, 1, 0))  # [nr, count, nc]
            mrc = mrc.reshape(nr, count * nc)
            mrr = rows_r.index_select(2, rim)  # [nr, count, nr]
        for lo in range(0, n, ROW_BLOCK):
            hi = min(lo + ROW_BLOCK, n)
            xc, xr = _rows(design, lo, hi, core, rim)
            q = torch.einsum("ibj,ij->ib", (xc @ mcc).reshape(hi - lo, count, nc), xc)
            if nr:
                cross = _times(xr, mrc).reshape(hi - lo, count, nc)
                q += torch.einsum("ibj,ij->ib", cross, xc)
            out[lo:hi, a, a:] = q
            out[lo:hi, a:, a] = q
        if nr:  # Σ over the pairs (j, k) of non-zeros of a row: x_ij·B_rr[j, k]·x_ik
            row, j, k, value, off = triples
            rr = torch.zeros(n, count, dtype=torch.float64, device=device)
            rr.index_add_(0, row, value[:, None] * (mrr[j, :, k] + off[:, None] * mrr[k, :, j]))
            out[:, a, a:] += rr
            out[:, a + 1:, a] += rr[:, 1:]
    return out


def _rim_pairs(design):
    """(row, j, k, x_ij·x_ik, off) for every pair of non-zeros j ≤ k of the same rim row, as
    tensors (j, k are positions within the rim; ``off`` is 1.0 where j < k): x B x sums
    x_j·x_k·(B_jk + B_kj) over j < k and x_j²·B_jj (a block M_ab, a ≠ b, is not symmetric)."""
    if hasattr(design, "rim_matrix"):
        rim = design.rim_matrix()
        indptr, indices, data = rim.indptr, rim.indices, rim.data
    else:
        import scipy.sparse as sp

        dense = design.dense()[:, torch.as_tensor(design.rim, device=design.device)]
        rim = sp.csr_matrix(dense.cpu().numpy())
        indptr, indices, data = rim.indptr, rim.indices, rim.data
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(len(counts)), counts * counts)
    starts = np.repeat(indptr[:-1], counts * counts)
    within = np.concatenate([np.arange(c * c) for c in counts]) if len(counts) else \
        np.zeros(0, np.int64)
    width = np.repeat(counts, counts * counts)
    first = starts + within // np.maximum(width, 1)
    second = starts + within % np.maximum(width, 1)
    keep = first <= second
    rows, first, second = rows[keep], first[keep], second[keep]
    device = design.device
    return (torch.as_tensor(rows, device=device),
            torch.as_tensor(indices[first].astype(np.int64), device=device),
            torch.as_tensor(indices[second].astype(np.int64), device=device),
            torch.as_tensor(data[first] * data[second], device=device),
            torch.as_tensor((first < second).astype(np.float64), device=device))


def _times(xr, dense: torch.Tensor) -> torch.Tensor:
    """The rim rows (scipy CSR on the CPU, a tensor elsewhere) times a dense matrix."""
    if isinstance(xr, torch.Tensor):
        return xr @ dense
    return torch.from_numpy(np.asarray(xr @ np.ascontiguousarray(dense.numpy())))


def _rows(design, lo: int, hi: int, core, rim):
    """(core columns dense [b, |core|], rim columns: a scipy CSR block on the CPU, a dense
    tensor elsewhere) of rows lo..hi."""
    if hasattr(design, "core_rows"):  # the CPU's core/rim design (a float64 block of rows)
        xc = torch.from_numpy(design.core_rows(lo, hi))
        return xc, design.rim_matrix()[lo:hi]
    dense = design.dense()[lo:hi]
    return dense[:, core], dense[:, rim]


def sum_zero_basis(classes: int, device=None) -> torch.Tensor:
    """An orthonormal basis [K, K − 1] of the vectors whose entries sum to zero."""
    centred = torch.eye(classes, dtype=torch.float64) - 1.0 / classes
    q, _ = torch.linalg.qr(centred[:, :classes - 1])
    return q.to(device)


def self_influence(weight: torch.Tensor, design, y: torch.Tensor, wd: float,
                   inverse: torch.Tensor, probs: torch.Tensor) -> dict:
    """Every training point's self-influence (module doc) from the explicit float64 inverse
    Hessian over the active features ``inverse`` [C·d_a, C·d_a] and the softmax at Ŵ
    ``probs`` [n, C]. Returns float64 tensors [n]: ``self_influence`` (I_up,loss(z_i, z_i)),
    ``koh`` (−q_i), ``predicted_own_change`` (−I/n), ``train_loss`` (CE at Ŵ) and the parts
    ``q`` and ``t``."""
    classes = int(weight.shape[0])
    active = design.active.to(weight.device)
    w = weight[:, active] if weight.shape[1] != design.width else weight
    n = design.n
    r = probs.to(torch.float64).clone()
    rows = torch.arange(n, device=r.device)
    r[rows, y] -= 1.0
    # r_i ⊥ (1, …, 1) (the probabilities sum to one): in an orthonormal basis B of that
    # subspace, q_i = s_iᵀ Q̃_i s_i with s_i = Bᵀr_i and the blocks of (B ⊗ I)ᵀ M (B ⊗ I):
    # (K − 1)K/2 quadratic forms per point instead of K(K + 1)/2
    basis = sum_zero_basis(classes, r.device)
    width = design.width
    v = (inverse.to(torch.float64) @ w.reshape(-1)).reshape(classes, -1)  # M·vec(Ŵ)
    # (Bᵀ ⊗ I)·M in one product over the rows' class index, then ·(B ⊗ I) block row by
    # block row; the inverse (the caller passes its only reference) is freed in between
    half = (basis.T @ inverse.to(torch.float64).reshape(classes, -1)).reshape(
        classes - 1, width, classes, width)
    del inverse
    reduced = torch.empty(classes - 1, width, classes - 1, width, dtype=torch.float64,
                          device=r.device)
    for alpha in range(classes - 1):
        reduced[alpha] = torch.tensordot(half[alpha], basis, dims=([1], [0])).permute(0, 2, 1)
    del half
    reduced = reduced.reshape((classes - 1) * width, (classes - 1) * width)
    forms = quadratic_forms(design, reduced, classes - 1)
    del reduced
    coords = r @ basis
    q = torch.einsum("ia,iab,ib->i", coords, forms, coords)
    t = (model.times(design, v.T.contiguous()) * r).sum(1)
    influence = -(q + wd * t)
    loss = -torch.log(probs[rows, y].clamp_min(1e-300))
    return {"self_influence": influence, "koh": -q, "predicted_own_change": -influence / n,
            "train_loss": loss, "q": q, "t": t}


def certified_sample(weight: torch.Tensor, design, y: torch.Tensor, wd: float, factor,
                     certificate, indices, fast: dict) -> dict:
    """Independent, proven values of the self-influence (ours and Koh's) of the training
    points ``indices``, against which the fast values ``fast`` (:func:`self_influence`) are
    measured.

    For each point, v = ∇CE(z_i) from the certified probabilities (error ‖δv‖ ≤ row error ·
    ‖x_i‖), s = H⁻¹v by the Cholesky ``factor`` (a solve independent of the explicit
    inverse), and the residual ‖Hs − v‖ with its rounding by certified products, so that
    ‖s − H⁻¹v‖ ≤ e = (‖Hs − v‖ + rounding)/wd (λ_min(H) ≥ wd). Then for the exact value
    q* = v*ᵀH⁻¹v*: |vᵀs − q*| ≤ ‖v‖·e + 2‖δv‖·(‖s‖ + e) + ‖δv‖²/wd, and likewise for
    ∇L = v + wd·Ŵ. Returns per point the reference values, their proven bounds, and the fast
    values' errors against them (measured, and proven: measured + bound)."""
    index = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=weight.device)
    classes, d = weight.shape
    active = design.active.to(weight.device)
    p = certificate.probs[index].to(torch.float64)
    r = p.clone()
    r[torch.arange(len(index), device=r.device), y[index]] -= 1.0
    x = torch.zeros(len(index), d, dtype=torch.float64, device=weight.device)
    x[:, active] = design.rows(index.cpu().numpy()).to(weight.device)
    v = r[:, :, None] * x[:, None, :]  # [m, C, d]
    s = factor.solve(v)
    residual, rounding = [], []
    for lo in range(0, len(index), SAMPLE_BLOCK):  # certified products of a few points at a time
        res, rnd = model.certified_residual(weight, design, wd, s[lo:lo + SAMPLE_BLOCK],
                                            v[lo:lo + SAMPLE_BLOCK], certificate)
        residual.append(res)
        rounding.append(rnd)
    residual, rounding = np.concatenate(residual), np.concatenate(rounding)
    e = torch.as_tensor((residual + rounding) / wd, dtype=torch.float64, device=weight.device)
    dv = certificate.row_error[index].to(weight.device) * design.row_norms[index.cpu()].to(
        weight.device)
    s_norm = s.flatten(1).norm(dim=1)
    v_norm = v.flatten(1).norm(dim=1)
    reg = (wd * weight)[None].expand_as(v)
    grad_l = v + reg
    q_ref = (v * s).flatten(1).sum(1)
    full_ref = (grad_l * s).flatten(1).sum(1)
    dot_round = bounds.gamma(classes * d + 1)
    q_bound = (v_norm * e + 2 * dv * (s_norm + e) + dv * dv / wd
               + dot_round * (v.abs() * s.abs()).flatten(1).sum(1))
    full_bound = (grad_l.flatten(1).norm(dim=1) * e + 2 * dv * (s_norm + e) + dv * dv / wd
                  + dot_round * (grad_l.abs() * s.abs()).flatten(1).sum(1))
    ours_ref, koh_ref = -full_ref, -q_ref
    out = {"indices": index, "self_influence_reference": ours_ref, "koh_reference": koh_ref,
           "self_influence_bound": full_bound, "koh_bound": q_bound}
    for name, ref, bound in (("self_influence", ours_ref, full_bound),
                             ("koh", koh_ref, q_bound)):
        measured = (fast[name][index] - ref).abs()
        out[f"{name}_measured_error"] = measured
        out[f"{name}_proven_error"] = measured + bound
        out[f"{name}_proven_relative"] = (measured + bound) / (ref.abs() - bound).clamp_min(
            1e-300)
    return out
