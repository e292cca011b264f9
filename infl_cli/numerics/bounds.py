"""Certified error bounds: every error figure infl reports for a retraining or an inverse-HVP.

What is proven, and from what (wd > 0 is the weight decay, n the number of training points):

1. **Distance to the optimum.** R₋z(W) = (1/(n−1))·Σ_{j≠z} CE_j(W) + (wd/2)‖W‖² has Hessian
   ⪰ wd·I, so it is wd-strongly convex and for any W
   ‖W − Ŵ₋z‖ ≤ ‖∇R₋z(W)‖ / wd  (:func:`radius`). The same holds for R and Ŵ.

2. **Test loss.** f(W) = CE(z_test, W) has ∇f = (p − e_y) ⊗ x and ∇²f = (diag p − p pᵀ) ⊗ x xᵀ,
   whose largest eigenvalue is ≤ ‖x‖²/2 (Böhning 1992: diag p − p pᵀ ⪯ ½(I − 11ᵀ/C)). Taylor's
   theorem with e = Ŵ₋z − W gives |f(Ŵ₋z) − f(W)| ≤ ‖∇f(W)‖·‖e‖ + (‖x‖²/4)·‖e‖²
   (:func:`test_loss_error`). The actual change f(Ŵ₋z) − f(Ŵ) is computed as f(W₋z) − f(W₀)
   from the retrained W₋z and the trained W₀, so its error is at most the sum of this bound
   at W₋z (radius from ‖∇R₋z(W₋z)‖) and at W₀ (radius from ‖∇R(W₀)‖), plus the rounding of
   the difference itself.

3. **Rounding.** The gradient norms in (1) are exact-arithmetic quantities; infl evaluates
   them in float64 and adds a proven bound on the rounding error of that evaluation, from the
   standard model fl(a ∘ b) = (a ∘ b)(1 + δ), |δ| ≤ u = 2⁻⁵³ (Higham, *Accuracy and Stability
   of Numerical Algorithms*, ch. 2–3): a sum of k terms, in any order, is off by at most
   γ_k·Σ|terms| with γ_k = k·u/(1 − k·u) (:func:`gamma`). The gradient at W₀ is computed
   exactly in integer arithmetic (pixels are integers; see
   :func:`~infl_cli.engines.logreg.model.certified_gradient`); the gradient of a retraining is computed in
   *delta form* relative to W₀, so its rounding error is relative to the small change, not
   to the gradient's terms (:func:`delta_pass_rounding`). Underflow is ignored: it contributes
   below 1e-300.

4. **Inverse-HVP.** For s ≈ H⁻¹g with residual ρ = Hs − g, ‖s − H⁻¹g‖ = ‖H⁻¹ρ‖ ≤ ‖ρ‖/λ_min(H)
   ≤ ‖ρ‖/wd, and relative to the true solution, ‖s − s*‖/‖s*‖ ≤ e/(‖s‖ − e) with e = ‖ρ‖/wd
   (:func:`ihvp_error`). With a small weight decay a small residual can hide a large error:
   the bound shows it.

**Why the same bounds hold on a GPU.** Nothing above depends on the order in which sums are
formed or on where they run. The model assumes IEEE 754 binary64 arithmetic with round to
nearest, which CUDA devices implement for +, −, ×, ÷ and √ (correctly rounded); a fused
multiply-add rounds once instead of twice, so it satisfies the same model. γ_k bounds a sum
of k terms in *any* order and any bracketing (sequential, pairwise, blocked, split over
threads or thread blocks, with atomics in any order: every such sum is a tree of at most
k − 1 additions), so it holds for every BLAS and cuBLAS kernel. The exact-integer products
(:mod:`~infl_cli.data.design`) are exact on any of them: every partial sum is an integer below
2⁵³. exp, expm1 and log1p are not correctly rounded anywhere; glibc and CUDA's libdevice
both document a maximum error of 1 ulp for them in double precision, i.e. a relative error
≤ 2u, which is what the formulas below charge (:data:`FUNCTION_ROUNDING` units of u per
call). Reduced-precision shortcuts (TF32 products, reduced-precision reductions) only ever
apply to float32 and half types; infl turns them off and checks that they are off
(:func:`infl_cli.runtime.device.check_precision`), and every certified figure is computed in
float64, where there are none.
"""

from __future__ import annotations

import math

import numpy as np

UNIT_ROUNDOFF = 2.0 ** -53
SAFETY = 1.0 + 1e-6  # covers the second-order (u²) terms dropped in the first-order analyses
FUNCTION_ROUNDING = 2  # exp, expm1, log1p: within 1 ulp, a relative error ≤ 2u (module doc)


def gamma(k: float) -> float:
    """γ_k = k·u/(1 − k·u): the relative error bound of a k-term float64 sum or product."""
    ku = k * UNIT_ROUNDOFF
    if ku >= 1:
        raise ValueError(f"gamma({k}) is undefined: k·u ≥ 1")
    return ku / (1.0 - ku)


def fsum(values) -> float:
    """The sum of a tensor's (or array's) values as a float, taken on the CPU by NumPy in a
    fixed order: the same bits on any device and any number of threads (torch's full
    reductions split their work by thread count). For set-up scalars, not hot loops."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return float(np.sum(values))


def fnorm(values) -> float:
    """The Euclidean norm of all values, as :func:`fsum` (a float)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return float(np.sqrt(np.sum(np.square(values))))


def radius(grad_norm_bound, wd: float):
    """Upper bound on the distance to the minimiser of a wd-strongly convex objective, from an
    upper bound on the gradient norm (scalar or array)."""
    return grad_norm_bound / wd


def test_loss_error(grad_f_norm, r, x_norm):
    """Bound on |f(W*) − f(W)| for ‖W − W*‖ ≤ r, with ∇f(W) of norm ``grad_f_norm`` and
    ∇²f ⪯ (‖x‖²/2)·I (NumPy arrays or torch tensors, broadcast)."""
    return grad_f_norm * r + 0.25 * (x_norm * x_norm) * (r * r)


def ihvp_error(residual_norm, estimate_norm, floor: float):
    """(absolute, relative) error bounds of an inverse-HVP estimate s from ‖Hs − g‖ and a
    lower bound ``floor`` on λ_min(H) (wd for the convex models): ‖s − s*‖ ≤ ‖Hs − g‖/floor
    and ‖s − s*‖/‖s*‖ ≤ that/(‖s‖ − that) (inf when ‖s‖ ≤ that, 0 when both are 0: g = 0)."""
    absolute = np.asarray(residual_norm, dtype=np.float64) / floor
    estimate = np.asarray(estimate_norm, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(estimate > absolute, absolute / (estimate - absolute),
                            np.where((estimate == 0) & (absolute == 0), 0.0, math.inf))
    return absolute, relative


def softmax_rounding(probs, logits, logit_error):
    """Per-row bound on ‖p̂ − p‖₁ + rounding of p − e_y, for probabilities p̂ [n, C] (a torch
    tensor) computed in float64 as exp(l − max l)/Σ exp(l − max l) from logits off by at most
    ``logit_error`` [n]:

    * logit errors: ‖softmax(l + δ) − softmax(l)‖₁ ≤ 2‖δ‖_∞ (the softmax Jacobian
      diag p − p pᵀ maps ∞-norm to 1-norm with norm ≤ 2);
    * the evaluation: with a_c = l_c − max l, p̂_c = p_c(1 + θ_c) with
      |θ_c| ≤ (|a_c| + C + 1 + 2·FUNCTION_ROUNDING)·u (one rounding in a_c, amplified by |a_c|
      through exp; the exp itself, in the numerator and inside the sum; γ_{C−1} in the sum;
      one in the division), so Σ_c |p̂_c − p_c| ≤ (Σ_c p_c|a_c| + C + 1 + 2·FUNCTION_ROUNDING)·u;
    * one more rounding, of p_y − 1.
    """
    c = probs.shape[1]
    shifted = (logits - logits.max(dim=1, keepdim=True).values).abs()
    spread = (probs * shifted).sum(dim=1)
    return SAFETY * (2.0 * logit_error
                     + (spread + c + 2 + 2 * FUNCTION_ROUNDING) * UNIT_ROUNDOFF)


def delta_pass_rounding(*, n: int, block_rows: int, width: int, classes: int,
                        delta_row_max, dp_frobenius, x_sq_sum: float, max_exponent,
                        own_sq_norm, own_dp_l1, base_norm, change_norm, delta_norm, wd: float,
                        grad_hat_error: float, base_error, denominator=None):
    """Bound on ‖ĝ − ∇R₋z(W₀ + Δ)‖ for the float64 delta-form gradient of each removal [k]
    (torch tensors [k], on any device)

        ĝ = base + (Σ_j δp_j x_jᵀ − δp_z x_zᵀ)/(n − 1) + wd·Δ,  base = (n·∇R(W₀) − ∇L(z, W₀))/(n−1),
        δp_j = p_j ⊙ (m_j − ⟨p_j, m_j⟩)/(1 + ⟨p_j, m_j⟩),  m_j = expm1(x_j Δᵀ),

    as computed by :func:`infl_cli.engines.logreg.loo.delta_pass` (rows in blocks of ``block_rows``, partial
    sums accumulated in float64). Terms, per removal:

    * forward products u_jc = x_j·Δ_c (``width`` terms; x stored in float64, one more
      rounding): |û_jc − u_jc| ≤ γ_{width+1}·‖x_j‖·‖Δ_c‖, which moves δp_j by at most twice
      that in 1-norm (softmax Jacobian); evaluating δp_j from û adds at most
      2γ_{C+5+FUNCTION_ROUNDING}·e^{t}·‖x_j‖·‖Δ‖_row with t = max |u| (``max_exponent``; the
      expm1 within FUNCTION_ROUNDING·u). Back-projected with x_j: at most
      κ·‖Δ‖_row·Σ_j‖x_j‖², κ = 2γ_{width+1} + 2γ_{C+5+FUNCTION_ROUNDING}·e^t;
    * back-projection Σ_j δp̂_j x_jᵀ over n rows, b-row blocks plus ⌈n/b⌉ block sums:
      ≤ γ_{b+⌈n/b⌉+1}·‖|δP̂|ᵀ|X|‖_F ≤ γ·‖δP̂‖_F·‖X‖_F (``x_sq_sum`` = ‖X‖_F²);
    * the removed point's own term, the same way: κ·‖Δ‖_row·‖x_z‖² + u·‖δp_z‖₁‖x_z‖;
    * the base: n/(n−1) times the certified error of ∇R(W₀), plus ``base_error`` (rounding of
      ∇L(z, W₀) and of the combination);
    * the final sum of four terms and the division by n − 1: γ_5 of their norms.

    ``denominator`` [k]: the objective's S_j in place of n − 1 (a change that removes no point
    has S = n: :class:`~infl_cli.engines.logreg.changes_mod.Changes`).
    """
    kappa = 2 * gamma(width + 1) + 2 * gamma(classes + 5 + FUNCTION_ROUNDING) * max_exponent.exp()
    forward = kappa * delta_row_max * (x_sq_sum + own_sq_norm)
    back = gamma(block_rows + math.ceil(n / block_rows) + 1) * dp_frobenius * math.sqrt(x_sq_sum)
    own = UNIT_ROUNDOFF * own_dp_l1 * own_sq_norm.sqrt()
    denominator = (n - 1) if denominator is None else denominator
    change = (forward + back + own) / denominator
    combine = gamma(5) * (base_norm + change_norm + wd * delta_norm)
    return SAFETY * (n / denominator * grad_hat_error + base_error + change + combine)
