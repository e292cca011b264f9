"""The training-set attack of Koh & Liang (Section 5.2) on the logistic model: the maths.

For a test point z_t with v = H⁻¹∇CE(z_t, Ŵ) (s_test), moving the input x of a training
point z = (x, y) changes the test loss, to first order, by (1/n)·I_pert,loss(z, z_t)ᵀδ with

    I_pert,loss(z, z_t) = −∇_x [vᵀ∇_W L(x, y; Ŵ)] = −∇_x g(x),   g(x) = (p − e_y)ᵀ V x,
    ∇_x g = Vᵀ(p − e_y) + Wᵀ (diag p − p pᵀ) V x,   p = softmax(W x), V = v as [C, d]

(:func:`input_gradient`; the regulariser's wd·W does not depend on x). Replacing the rows
x_b by x'_b changes the parameters by −(1/n)·H⁻¹Σ_b [∇L(x'_b) − ∇L(x_b)] (the influence of
the swap) and the test loss by −(1/n)·Σ_b [g(x'_b) − g(x_b)] (:func:`predicted_change`).

The attack (:func:`attack`) takes projected signed-gradient steps on each chosen row, in the
input's own units (pixels 0..255): x ← clip(proj_{‖x − x₀‖∞ ≤ ε}(x + α·sign(I_pert,loss))),
only on the features the design keeps (the others are zero in every training input, where Ŵ
is exactly zero). After each step the influence is recomputed, as the authors' code does: the
model is moved to the influence prediction of the swap so far, W = Ŵ − H⁻¹G/n (G the change
of Σ ∇L over the perturbed rows), v to H⁻¹∇CE(z_t, W) (H at Ŵ), and the direction taken there.
The authors retrain fully at each step; here the certified retraining judges only the end.
Everything is batched over test points: rows [T, B, d], one attack per test point.
"""

from __future__ import annotations

import torch


def residual(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """p − e_y [..., C] for inputs x [..., d] and labels y [...]; ``weight`` [C, d] or
    batched [..., C, d] (one model per leading index of x's first dimension)."""
    logits = torch.einsum("...d,...cd->...c", x, _expand(weight, x))
    r = torch.softmax(logits, dim=-1)
    return r - torch.nn.functional.one_hot(y, r.shape[-1]).to(r.dtype)


def _expand(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``weight`` [C, d] or [T, C, d] broadcast against x [T, B, d] (or [T, d])."""
    if weight.dim() == 2 or x.dim() == weight.dim() - 1:
        return weight
    return weight[:, None]


def g_value(weight, v, x, y) -> torch.Tensor:
    """g(x) = (p − e_y)ᵀ V x = vᵀ∇CE(x, y; W) [...]: x [T, B, d], v and weight [T, C, d] or
    [C, d]."""
    vv = _expand(v, x)
    return (residual(weight, x, y) * torch.einsum("...cd,...d->...c", vv, x)).sum(dim=-1)


def input_gradient(weight, v, x, y) -> torch.Tensor:
    """∇_x g(x) [..., d] (module doc): Vᵀ(p − e_y) + Wᵀ(diag p − p pᵀ)V x."""
    ww, vv = _expand(weight, x), _expand(v, x)
    logits = torch.einsum("...d,...cd->...c", x, ww)
    p = torch.softmax(logits, dim=-1)
    r = p - torch.nn.functional.one_hot(y, p.shape[-1]).to(p.dtype)
    a = torch.einsum("...cd,...d->...c", vv, x)
    b = p * a - p * (p * a).sum(dim=-1, keepdim=True)
    return torch.einsum("...c,...cd->...d", r, vv) + torch.einsum("...c,...cd->...d", b, ww)


def perturbation_influence(weight, v, x, y) -> torch.Tensor:
    """I_pert,loss(z, z_t) = −∇_x g(x) [..., d]: the direction that raises the test loss."""
    return -input_gradient(weight, v, x, y)


def test_gradient(weight, x_test: torch.Tensor, y_test: torch.Tensor) -> torch.Tensor:
    """∇CE(z_t, W) [T, C, d] for test inputs [T, d]; ``weight`` [C, d] or [T, C, d]."""
    return residual(weight, x_test, y_test)[:, :, None] * x_test[:, None, :]


def swap_gradient(weight, x0, x1, y) -> torch.Tensor:
    """Σ_b ∇CE(x1_b, y_b) − ∇CE(x0_b, y_b) [T, C, d] at ``weight`` [C, d] for rows [T, B, d]."""
    return (torch.einsum("tbc,tbd->tcd", residual(weight, x1, y), x1)
            - torch.einsum("tbc,tbd->tcd", residual(weight, x0, y), x0))


def predicted_change(weight, v, x0, x1, y, n: int) -> torch.Tensor:
    """The influence prediction of the test-loss change when rows x0 [T, B, d] become x1:
    −(1/n)·Σ_b [g(x1_b) − g(x0_b)] [T] (v: s_test at Ŵ [T, C, d])."""
    return -(g_value(weight, v, x1, y) - g_value(weight, v, x0, y)).sum(dim=1) / n


def influence_on_loss(weight, design, y_train, wd: float, v: torch.Tensor) -> torch.Tensor:
    """I_up,loss(z_i, z_t) = −vᵀ∇L(z_i, Ŵ) for every training point and each v [T, C, d]:
    [T, n] (regulariser included in ∇L, as the scores are)."""
    from infl_cli.engines.logreg import model

    t, c, d = v.shape
    a = model.times(design, v.reshape(t * c, d).T.contiguous()).reshape(-1, t, c)  # [n, T, C]
    p = model.probabilities(weight, design)
    p[torch.arange(p.shape[0], device=p.device), y_train.to(p.device)] -= 1.0
    return -(torch.einsum("ntc,nc->tn", a, p) + wd * (v * weight).sum(dim=(1, 2))[:, None])


def attack(weight, solve, n: int, x_test, y_test, x0, y0, *, eps: float, unit: float,
           lower: float | None, upper: float | None, mask: torch.Tensor, steps: int,
           step_size: float, on_step=None) -> torch.Tensor:
    """The perturbed rows [T, B, d] in the input's own units (module doc).

    ``x0`` [T, B, d] the chosen rows in those units (pixels 0..255), ``unit`` the model's
    feature per unit (1/255), ``mask`` [d] the features that may move, ``lower``/``upper``
    the valid range (None: unbounded), ``solve`` H(Ŵ)⁻¹ on [k, C, d], ``step_size`` α."""
    lo, hi = x0 - eps, x0 + eps
    if lower is not None:
        lo = lo.clamp(min=lower)
    if upper is not None:
        hi = hi.clamp(max=upper)
    m = mask.to(x0.dtype)
    x0_model = x0 * unit
    x = x0.clone()
    for _ in range(steps):
        xm = x * unit
        moved = weight - solve(swap_gradient(weight, x0_model, xm, y0)) / n  # [T, C, d]
        v = solve(test_gradient(moved, x_test, y_test))
        direction = perturbation_influence(moved, v, xm, y0)
        x = torch.minimum(torch.maximum(x + step_size * direction.sign() * m, lo), hi)
        if on_step is not None:
            on_step()
    return x


def random_signs(x0, *, eps: float, lower, upper, mask, seed: int) -> torch.Tensor:
    """The baseline: x₀ ± ε on every movable feature, signs drawn at random, then clipped."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 2, x0.shape, generator=g).to(x0.device, x0.dtype) * 2 - 1
    x = x0 + eps * s * mask.to(x0.dtype)
    if lower is not None:
        x = x.clamp(min=lower)
    if upper is not None:
        x = x.clamp(max=upper)
    return x
