"""The logistic model's influence of every training point on each test loss, in closed form.

I_up,loss(z_i, z_test) = −∇CE(z_test, Ŵ)ᵀ H⁻¹ ∇L(z_i, Ŵ) = −⟨s_test, ∇L(z_i, Ŵ)⟩, with
s_test = H⁻¹∇CE(z_test) from the ihvp stage and ∇L(z_i) including the wd·Ŵ term.
Removing z_i is up-weighting it by ε = −1/n, so the predicted change of the test loss is
−I_up,loss/n (positive: the test loss would rise without z_i).
"""

from __future__ import annotations

import torch

from infl_cli.engines.logreg import model
from infl_cli.runtime.memory import PASS_BYTES

TESTS_PER_PASS = 50  # test points per product with the training inputs


def influence_scores(weight, x, y, wd, ihvps: torch.Tensor, probs: torch.Tensor | None = None):
    """(influence [T, n], predicted_loss_diff [T, n]) for s_test vectors ``ihvps`` [T, C, d].

    ``x``: the training inputs [n, d] or their design (:mod:`~infl_cli.data.design`), ``probs``
    the softmax at W [n, C] when the caller has it. With a design,
    ⟨s, ∇L(z_i)⟩ = Σ_c r_ic·(s_c·x_i) + wd·⟨s, W⟩ (r_i = p_i − e_{y_i}) over the active
    features alone (elsewhere x_i and W are 0): one product of the inputs with the T·C rows of
    s per pass, no per-example gradient formed."""
    if isinstance(x, torch.Tensor):
        influence = -model.dot_train_point_grads(weight, x, y, wd, ihvps)
        return influence, -influence / x.shape[0]
    active = x.active.to(weight.device)
    w_active = weight[:, active]
    p = model.probabilities(w_active, x) if probs is None else probs
    r = p.clone()
    r[torch.arange(x.n, device=r.device), y] -= 1.0
    t_count, c = ihvps.shape[:2]
    influence = torch.empty(t_count, x.n, dtype=torch.float64, device=weight.device)
    reg = wd * (ihvps * weight).sum(dim=(1, 2))
    # test points per pass: at most TESTS_PER_PASS, and their [n, T·C] product (and its
    # einsum) within a pass's workspace
    per_pass = max(1, min(TESTS_PER_PASS, int(PASS_BYTES // (2 * 8 * x.n * c))))
    for lo in range(0, t_count, per_pass):
        s = ihvps[lo:lo + per_pass][:, :, active]
        t = s.shape[0]
        proj = x.matmul(s.reshape(t * c, -1).T.contiguous()).reshape(x.n, t, c)
        influence[lo:lo + t] = -(torch.einsum("ntc,nc->tn", proj, r) + reg[lo:lo + t, None])
    return influence, -influence / x.n


def top_k_by_magnitude(influence_row: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest |influence| (both signs), largest first: int64 [k]."""
    k = min(k, influence_row.shape[0])
    return torch.topk(influence_row.abs(), k).indices
