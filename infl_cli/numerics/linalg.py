"""Linear algebra on parameter-shaped vectors, for any model: conjugate gradients and batched
dot products and norms. Vectors are [k, ...] (k right-hand sides, solved together, one per
leading index)."""

from __future__ import annotations

from typing import Callable

import torch


def batched_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a_i, b_i⟩ for [k, ...] tensors: [k]."""
    return (a * b).flatten(1).sum(1)


def batched_norm(a: torch.Tensor) -> torch.Tensor:
    return a.flatten(1).norm(dim=1)


def conjugate_gradient(apply_h: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor,
                       rtol: float, max_iter: int, x0: torch.Tensor | None = None,
                       on_iter: Callable[[int, torch.Tensor], None] | None = None,
                       precondition: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """Solve H x = b for every right-hand side in ``rhs`` [k, ...] (k vectors of any shape)
    with conjugate gradients.

    Each column stops updating once its recursive relative residual ‖Hx − b‖/‖b‖ is ≤ rtol;
    all stop after ``max_iter`` iterations. Returns (x, iterations, hvp_count) where
    hvp_count counts matrix-vector products with H (one per column per iteration).
    ``on_iter(i, rel_residuals)`` is called after each iteration. ``precondition(r)``, if
    given, applies M⁻¹ ≈ H⁻¹ to residuals [k, C, d] (preconditioned CG).
    """
    apply_m = precondition or (lambda r: r)
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - apply_h(x) if x0 is not None else rhs.clone()
    b_norm = batched_norm(rhs).clamp_min(torch.finfo(rhs.dtype).tiny)
    z = apply_m(r)
    p = z.clone()
    rz = batched_dot(r, z)
    active = batched_norm(r) / b_norm > rtol
    iters, hvps = 0, 0

    def per_column(values):  # [k] → [k, 1, ..., 1], to scale vectors of any shape
        return values.view(-1, *([1] * (rhs.dim() - 1)))

    while bool(active.any()) and iters < max_iter:
        hp = apply_h(p[active])
        hvps += int(active.sum())
        alpha = rz[active] / batched_dot(p[active], hp)
        x[active] += per_column(alpha) * p[active]
        r[active] -= per_column(alpha) * hp
        z_new = apply_m(r[active])
        rz_new = batched_dot(r[active], z_new)
        beta = rz_new / rz[active]
        p[active] = z_new + per_column(beta) * p[active]
        rz[active] = rz_new
        iters += 1
        rel = batched_norm(r) / b_norm
        if on_iter is not None:
            on_iter(iters, rel)
        active = rel > rtol
    return x, iters, hvps
