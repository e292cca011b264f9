"""Stage 3: influence of every training point on each test loss.

I_up,loss(z_i, z_test) = −∇CE(z_test, Ŵ)ᵀ H⁻¹ ∇L(z_i, Ŵ) = −⟨s_test, ∇L(z_i, Ŵ)⟩, with
s_test = H⁻¹∇CE(z_test) from the ihvp stage and ∇L(z_i) including the wd·Ŵ term.
Removing z_i is up-weighting it by ε = −1/n, so the predicted change of the test loss is
−I_up,loss/n (positive: the test loss would rise without z_i).
"""

from __future__ import annotations

import torch

from . import model


def influence_scores(weight, x, y, wd, ihvps: torch.Tensor):
    """(influence [T, n], predicted_loss_diff [T, n]) for s_test vectors ``ihvps`` [T, C, d]."""
    influence = -model.dot_train_point_grads(weight, x, y, wd, ihvps)
    return influence, -influence / x.shape[0]


def top_k_by_magnitude(influence_row: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest |influence| (both signs), largest first: int64 [k]."""
    k = min(k, influence_row.shape[0])
    return torch.topk(influence_row.abs(), k).indices
