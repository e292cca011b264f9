"""Self-influence of every training point of the logistic model, in closed form.

With r_i = p_i − e_{y_i} (the softmax at Ŵ minus the one-hot label), ∇CE(z_i) = r_i ⊗ x_i and
∇L(z_i) = r_i ⊗ x_i + wd·Ŵ. With M = H⁻¹ (over the active features; elsewhere x_i = Ŵ = 0):

* q_i = ∇CE(z_i)ᵀ M ∇CE(z_i) = Σ_{a,b} r_ia r_ib · x_iᵀ M_ab x_i, the K(K+1)/2 quadratic forms
  of x_i with the blocks M_ab of M (never a dense 7,840-vector per point);
* t_i = ∇CE(z_i)ᵀ M vec(Ŵ) = Σ_a r_ia · x_iᵀ V_a with V = M Ŵ (one solve for all points);
* the self-influence I_up,loss(z_i, z_i) = −∇CE(z_i)ᵀ H⁻¹ ∇L(z_i) = −(q_i + wd·t_i), and
  removing z_i is predicted to change its own loss by −I/n = (q_i + wd·t_i)/n;
* Koh's variant (the authors' code: ∇CE on both sides, σ(−yθᵀx)²·xᵀH⁻¹x for the binary model):
  −q_i, predicted change q_i/n.

Each block product runs over the design's dense core (a GEMM with the core columns) and its
sparse rim (sparse products), in row blocks, so the memory stays a few hundred MB.

**Error.** The values are checked, not assumed: :func:`certified_sample` recomputes those of a
sample of points independently (a float64 Cholesky solve per point) and bounds each of *those*
with a proof: the residual ‖H s − v‖ by certified products (:func:`~infl_cli.model.certified_residual`,
λ_min(H) ≥ wd) and the rounding of v_i from the certified probabilities.
"""

from __future__ import annotations

import numpy as np
import torch

from . import bounds, model

ROW_BLOCK = 4096


def _blocks(inverse: torch.Tensor, classes: int, width: int):
    """M as [C, d_a, C, d_a] (a view)."""
    return inverse.reshape(classes, width, classes, width)


def quadratic_forms(design, inverse: torch.Tensor, classes: int) -> torch.Tensor:
    """Q[i, a, b] = x_iᵀ M_ab x_i for every training row i and class pair: [n, C, C]
    (symmetric in a, b), float64, on the design's device."""
    width = design.width
    n = design.n
    device = inverse.device
    core = torch.as_tensor(getattr(design, "core", np.arange(width)), device=device)
    rim = torch.as_tensor(getattr(design, "rim", np.arange(0)), device=device)
    nc = core.numel()
    # M with each block's features in (core, rim) order: every block below is a slice
    order = torch.cat([core, rim])
    m = inverse.to(torch.float64).reshape(classes, width, classes, width)
    m = m.index_select(1, order).index_select(3, order)
    out = torch.empty(n, classes, classes, dtype=torch.float64, device=device)
    for a in range(classes):
        count = classes - a  # the pairs (a, b ≥ a)
        mcc = m[a, :nc, a:, :nc].reshape(nc, count * nc)
        if rim.numel():
            mcr = m[a, :nc, a:, nc:] + m[a, nc:, a:, :nc].permute(2, 1, 0)  # [nc, count, nr]
            mrr = m[a, nc:, a:, nc:]  # [nr, count, nr]
        for lo in range(0, n, ROW_BLOCK):
            hi = min(lo + ROW_BLOCK, n)
            xc, xr = _rows(design, lo, hi, core, rim)
            g = (xc @ mcc).reshape(hi - lo, count, nc)
            q = torch.einsum("ibj,ij->ib", g, xc)
            if rim.numel():
                for j in range(count):
                    q[:, j] += _rim_terms(xc, xr, mcr[:, j, :].T, mrr[:, j, :])
            out[lo:hi, a, a:] = q
            out[lo:hi, a:, a] = q
    return out


def _rows(design, lo: int, hi: int, core, rim):
    """(core columns dense [b, |core|], rim columns: a scipy CSR block on the CPU, a dense
    tensor elsewhere) of rows lo..hi."""
    if hasattr(design, "core_array"):  # the CPU's core/rim design
        xc = torch.from_numpy(design.core_array()[lo:hi])
        return xc, design.rim_matrix()[lo:hi]
    dense = design.dense()[lo:hi]
    return dense[:, core], dense[:, rim]


def _rim_terms(xc: torch.Tensor, xr, mrc: torch.Tensor, mrr: torch.Tensor) -> torch.Tensor:
    """x_c·B_cr·x_r + x_r·B_rc·x_c + x_r·B_rr·x_r per row, with ``mrc`` = B_rc + B_crᵀ
    [|rim|, |core|]."""
    if isinstance(xr, torch.Tensor):
        return ((xr @ mrc) * xc).sum(1) + ((xr @ mrr) * xr).sum(1)
    cross = torch.from_numpy(np.asarray(xr @ np.ascontiguousarray(mrc.numpy())))  # [b, |core|]
    inner = xr @ np.ascontiguousarray(mrr.numpy())  # [b, |rim|] dense
    rim_part = np.asarray(xr.multiply(inner).sum(axis=1)).ravel()
    return (cross * xc).sum(1) + torch.from_numpy(rim_part)


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
    forms = quadratic_forms(design, inverse, classes)
    q = torch.einsum("ia,iab,ib->i", r, forms, r)
    v = (inverse.to(torch.float64) @ w.reshape(-1)).reshape(classes, -1)  # M·vec(Ŵ)
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
    residual, rounding = model.certified_residual(weight, design, wd, s, v, certificate)
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
