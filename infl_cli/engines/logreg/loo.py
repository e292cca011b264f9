"""The logistic model's leave-one-out problem: retraining certified for many removals and many
test points (:class:`LooProblem`, whose chunks the retraining core solves).

For a removed point z the retrained parameters Ŵ₋z minimise
R₋z(W) = (1/(n−1))·Σ_{j≠z} L(z_j, W) = (n·R(W) − L(z, W))/(n−1), the ε = −1/n problem whose
first-order prediction is the influence score. The actual change on test point t is
f_t(Ŵ₋z) − f_t(Ŵ), f_t = CE(z_t, ·). Everything here works over the features active in the
training data (elsewhere Ŵ and every Ŵ₋z are exactly 0).

**Method** (``newton``, the default). Removals are solved in chunks; a chunk is a pure
function of the problem, its removal indices and the settings (:func:`~infl_cli.engines.logreg.retraining.solve_chunk`), so
chunks can run in any order, in any process, and resume. Per chunk, warm-started at Ŵ:

1. Δ₁ = −P_z⁻¹∇R₋z(Ŵ): P_z is the exact Hessian of R₋z at Ŵ (the float32 inverse of H,
   corrected per removal for the removed point's own curvature by Woodbury,
   :class:`~infl_cli.engines.logreg.retraining.RemovalPreconditioner`); ∇R₋z(Ŵ) is closed form, so this first step costs no pass
   over the data and is the influence prediction itself.
2. One float32 pass gives ∇R₋z(Ŵ + Δ₁) in *delta form* (below) for the second step.
3. Float64 delta-form passes certify: each gives every open removal's gradient and a proven
   bound on its rounding error; a removal is done when its certified error bound is at most
   ``rel_error`` × |actual change| on every test point that selected it (or it is at the
   float64 floor, below), and its gradient norm is ≤ ``tol``. Open removals take further
   steps with P_z updated by the secant pairs of their earlier steps (L-BFGS two-loop
   recursion, :mod:`~infl_cli.engines.logreg.retraining`). A removal not within ``tol`` after ``max_steps`` is
   finished by Newton steps on its exact Hessian (conjugate gradients), then certified.

**Delta form.** With p_j = softmax(x_j Ŵᵀ) and u_j = x_j Δᵀ,

    ∇R₋z(Ŵ + Δ) = (n·∇R(Ŵ) − ∇L(z, Ŵ))/(n−1) + (Σ_j δp_j x_jᵀ − δp_z x_zᵀ)/(n−1) + wd·Δ,
    δp_j = p_j ⊙ (m_j − ⟨p_j, m_j⟩)/(1 + ⟨p_j, m_j⟩),  m_j = expm1(u_j),

with ∇R(Ŵ) certified (:func:`~infl_cli.engines.logreg.model.certified_gradient`). Rounding errors then
scale with the small change δp, not with the gradient's terms, so gradients down to ~1e-14
can be certified (:func:`~infl_cli.numerics.bounds.delta_pass_rounding`). The test-loss change is taken
in the same form: log1p(⟨p_t, expm1(u_t)⟩) − u_{t,y}.

**Error bound** of each actual change (:mod:`infl_cli.numerics.bounds`):
‖∇f_t(W₋z)‖·r_z + (‖x_t‖²/4)·r_z² with r_z = (‖∇R₋z‖ + rounding)/wd, plus the same at Ŵ
(radius from the certified ‖∇R(Ŵ)‖: the *baseline*, shared by all removals), plus the
rounding of the change itself. The float64 floor: a removal whose gradient is within 4× its
rounding bound, whose own term is below the baseline, or whose gradient stopped falling, cannot
lower its bound further and stops there (reported when that is above the target).

``lbfgs``: the usual approach, warm-started full-batch L-BFGS per removed point (stopped at
‖∇R₋z‖ ≤ ``tol``), certified by the same float64 pass.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from infl_cli import settings
from infl_cli.engines.logreg import model
from infl_cli.engines.logreg.changes import Changes, Chunk
from infl_cli.engines.logreg.changes import delta_probs as _delta_probs
from infl_cli.engines.logreg.hessian import HessianFactor
from infl_cli.engines.logreg.retraining import solve_chunk
from infl_cli.numerics import bounds

METHODS = settings.LOGREG_METHODS
CPU_CHUNK = settings.CPU_CHUNK  # removals per chunk on the CPU (--chunk-size auto)
DEVICE_CHUNK = 1000  # at most this many on a GPU, where one pass is a few large products
CHUNK_MEMORY = 0.25  # a GPU chunk's tensors take at most this fraction of the free memory
LooSettings = settings.LooSettings


def auto_chunk_size(device: torch.device, classes: int, features: int, max_steps: int) -> int:
    """``--chunk-size auto``: :data:`CPU_CHUNK` on the CPU; on a GPU up to :data:`DEVICE_CHUNK`
    removals, as many as :data:`CHUNK_MEMORY` of the free memory holds (per removal: the
    iterate, its gradient and step, two secant vectors per step, and the Woodbury columns
    H⁻¹U, each C × d float64; a pass's own temporaries are sized by the design)."""
    if device.type != "cuda":
        return CPU_CHUNK
    free, _ = torch.cuda.mem_get_info(device)
    per_removal = (2 * max_steps + 10 + classes) * classes * features * 8
    return int(max(CPU_CHUNK, min(DEVICE_CHUNK, CHUNK_MEMORY * free // per_removal)))


class LooProblem:
    """What every chunk needs, built once per process (and once per worker on a cluster).

    ``weight`` [C, d] is the trained model, ``design`` the training inputs (a design of
    :mod:`~infl_cli.data.design`; everything here lives on its device), ``x_test`` [T, d] and
    ``y_test`` [T] the test points whose losses are tracked. ``factor``: a float32 explicit
    inverse :class:`~infl_cli.engines.logreg.hessian.HessianFactor` of H(Ŵ) (built when not given, which is
    the expensive part: ``on_block`` reports its progress); ``None`` with ``method="lbfgs"``.
    ``certificate``: the certified gradient at Ŵ (:func:`~infl_cli.engines.logreg.model.certified_gradient`)
    when the caller has it (training keeps it), else computed here.
    Scalars that enter the bounds are summed by :func:`~infl_cli.numerics.bounds.fsum` (the same bits
    in every process).
    """

    def __init__(self, weight: torch.Tensor, design, y_train: torch.Tensor, wd: float,
                 x_test: torch.Tensor, y_test: torch.Tensor, factor: HessianFactor | None = None,
                 build_factor: bool = True, on_block=None, certificate=None):
        self.design = design
        self.device = design.device
        self.wd = float(wd)
        self.n = design.n
        weight = weight.to(self.device, torch.float64)
        active = design.active.to(self.device)
        self.weight = weight[:, active].contiguous() if weight.shape[1] != design.width \
            else weight.contiguous()  # [C, d_a]
        self.classes = int(self.weight.shape[0])
        self.y = y_train.to(self.device, torch.int64)
        self.y_np = self.y.cpu().numpy()
        cert = certificate or model.certified_gradient(self.weight, design, self.y, self.wd)
        self.grad_hat = cert.grad.to(self.device)  # ∇R(Ŵ) [C, d_a], exact to grad_hat_error
        self.grad_hat_error = float(cert.bound)
        self.row_error = cert.row_error.to(self.device)
        self.p0 = cert.probs.to(self.device)  # softmax at Ŵ [n, C]
        self.p0_32 = self.p0.to(torch.float32)
        self.grad_hat_norm = bounds.fnorm(self.grad_hat)
        self.weight_norm = bounds.fnorm(self.weight)
        self.grad_hat_norm_bound = self.grad_hat_norm * (
            1 + bounds.gamma(self.grad_hat.numel() + 1)) + self.grad_hat_error
        self.baseline_radius = bounds.radius(self.grad_hat_norm_bound, self.wd)
        # data norms for the rounding bounds (upper bounds)
        self.row_norms = design.row_norms
        self.row_norm_max = float(self.row_norms.max())
        self.x_sq_sum = bounds.fsum(self.row_norms.square()) * (1 + bounds.gamma(self.n + 1))
        # test points
        self.set_tests(x_test, y_test)
        if factor is None and build_factor:
            factor = HessianFactor(self.weight, design, self.wd, on_block=on_block,
                                   dtype=torch.float32, explicit_inverse=True)
        self.factor = factor

    def set_tests(self, x_test: torch.Tensor, y_test: torch.Tensor) -> None:
        """The test points [T, d] whose loss changes are measured (active features kept), with
        their probabilities at Ŵ and proven bounds on those: logits off by at most
        γ_{d+1}·(|x|·|W|ᵀ) (any summation order), probabilities by
        :func:`~infl_cli.numerics.bounds.softmax_rounding` in 1-norm."""
        active = self.design.active
        xt = x_test[:, active] if x_test.shape[1] != self.design.width else x_test
        self.x_test = xt.to(self.device, torch.float64)
        self.y_test = y_test.to(self.device, torch.int64)
        self.test_rows = torch.arange(len(self.y_test), device=self.device)
        w = self.weight
        g = bounds.gamma(self.design.width + 1)
        logits = self.x_test @ w.T  # [T, C]
        logits -= logits.max(dim=1, keepdim=True).values
        p = logits.exp()
        self.p_test = p / p.sum(dim=1, keepdim=True)
        self.test_logits = logits
        self.test_logit_error = bounds.SAFETY * g * (1 + 2 * g) * (
            self.x_test.abs() @ w.abs().T).max(dim=1).values  # [T]
        self.p_test_error = bounds.softmax_rounding(self.p_test, logits, self.test_logit_error)
        self.test_norms = self.x_test.norm(dim=1) * (1 + g + 3 * bounds.UNIT_ROUNDOFF)
        residual = self.p_test.clone()
        residual[self.test_rows, self.y_test] -= 1.0
        self.test_grad_norms0 = self._grad_norm_bound(residual, self.p_test_error,
                                                      self.test_norms)
        # the baseline: the error of Ŵ itself, in every actual change of test point t
        self.baseline_error = bounds.test_loss_error(self.test_grad_norms0,
                                                     self.baseline_radius, self.test_norms)
        # f_t(Ŵ) = log Σ_c e^{a_c} − a_y, a = l − max l, and a bound on its rounding: the
        # logits' error moves it by ≤ 2× (the gradient in l has 1-norm ≤ 2); the shift, the
        # exps and their sum by ≤ u·(Σ p_c|a_c| + C + 3 + 2·FUNCTION_ROUNDING); the log by
        # 2u·log Σ; a_y and the difference by u·|a_y| + u·|f| (×2: second-order terms)
        total = logits.exp().sum(dim=1)
        a_y = logits[self.test_rows, self.y_test]
        self.loss0 = torch.log(total) - a_y
        unit = bounds.UNIT_ROUNDOFF
        self.loss0_error = 2 * bounds.SAFETY * (
            2 * self.test_logit_error
            + unit * ((self.p_test * logits.abs()).sum(dim=1) + self.classes + 3
                      + 2 * bounds.FUNCTION_ROUNDING)
            + 2 * unit * torch.log(total) + unit * (a_y.abs() + self.loss0.abs()))

    def _grad_norm_bound(self, residual: torch.Tensor, residual_error, x_norm) -> torch.Tensor:
        """Upper bound on ‖∇f‖ = ‖p − e_y‖·‖x‖ from the computed residual p̂ − e_y [..., C],
        a bound on its error in 1-norm (≥ 2-norm) and ‖x‖'s upper bound."""
        c = self.classes
        return ((residual.norm(dim=-1) * (1 + bounds.gamma(c + 2)) + residual_error)
                * x_norm * (1 + 2 * bounds.UNIT_ROUNDOFF))

    result_keys = ()  # no results beyond the common ones (chunks.RESULT_KEYS)
    error_kind = "certified"

    def solve_chunk(self, removed, selected, settings: "LooSettings"):
        """:func:`solve_chunk` on this problem (the engines' common chunk interface)."""
        return solve_chunk(self, removed, selected, settings)

    def index(self, removed) -> torch.Tensor:
        """Removal indices (a NumPy array or a tensor) as an int64 tensor on the device."""
        return torch.as_tensor(np.asarray(removed, dtype=np.int64)).to(self.device)

    # ------------------------------------------------------------------------ gradients
    def chunk(self, changes: "Changes") -> "Chunk":
        return Chunk(self, changes)

    def base_gradient(self, chunk: "Chunk"):
        """∇R_j(Ŵ) = (n·∇R(Ŵ) − ∇L(z_j, Ŵ) + Σ_relabelled (e_y − e_y') ⊗ x_i)/S_j for each
        change [k, C, d_a] (for a removal alone: (n·∇R(Ŵ) − ∇L(z, Ŵ))/(n−1)), and a bound on
        its rounding beyond that of ∇R(Ŵ) [k]. The relabelling sums are of ±x_ij only: each is
        off by at most γ_m·Σ|x_ij| over its m terms, ≤ γ_m·√2·Σ_i ‖x_i‖ in Frobenius norm."""
        n, wd = self.n, self.wd
        k = chunk.k
        removed, has = chunk.removed, chunk.has_removal
        r = self.p0[removed].clone()
        r[torch.arange(k, device=self.device), self.y[removed]] -= 1.0
        own = r[:, :, None] * chunk.xz[:, None, :] + (wd * has)[:, None, None] * self.weight[None]
        numerator = n * self.grad_hat[None] - own
        if chunk.corrected:
            numerator = numerator + chunk.correction
        base = numerator / chunk.denominator[:, None, None]
        xz_norm = self.row_norms[removed] * has
        own_norm = own.reshape(k, -1).norm(dim=1)
        combine = bounds.gamma(4 if chunk.corrected else 3) * (
            n * self.grad_hat_norm + own_norm + chunk.correction_norm)
        error = (self.row_error[removed] * xz_norm
                 + bounds.UNIT_ROUNDOFF * (r.norm(dim=1) * xz_norm + wd * self.weight_norm * has)
                 + chunk.correction_error + combine) / chunk.denominator
        return base, error

    def gradient(self, chunk: "Chunk", rows, deltas: torch.Tensor, base: torch.Tensor,
                 base_error: torch.Tensor, certify: bool):
        """∇R_j(Ŵ + Δ) [k, C, d_a] for the changes ``rows`` of ``chunk`` in delta form; with
        ``certify`` a float64 pass and a bound on each gradient's rounding error [k] (else a
        float32 pass and None)."""
        k = len(rows)
        removed, xz = chunk.removed[rows], chunk.xz[rows]
        denominator = chunk.denominator[rows]
        dtype = torch.float64 if certify else torch.float32
        row_max = deltas.norm(dim=2).max(dim=1).values  # max_c ‖Δ_c‖
        exponent = self.row_norm_max * row_max  # |u_jc| ≤ ‖x_j‖·‖Δ_c‖ (Cauchy–Schwarz)
        # where that allows e^|u| ≫ 1 (a large change), the largest computed |u| is measured
        # in the pass instead, enlarged by u's own rounding bound (γ_{d+1}·‖x_j‖·‖Δ_c‖)
        track = certify and bool((exponent > 1.0).any())
        change, dp_frobenius, block_rows, u_max = delta_pass(
            self.design, self.p0 if certify else self.p0_32, deltas, dtype, track)
        if track:
            exponent = torch.minimum(exponent, bounds.SAFETY * (
                u_max + bounds.gamma(self.design.width + 1) * exponent))
        own_dp = _delta_probs(self.p0[removed], (deltas * xz[:, None, :]).sum(dim=2))
        own = own_dp[:, :, None] * xz[:, None, :]
        n = self.n
        change -= own
        perturb_rounding = 0.0
        if chunk.perturbs:  # the perturbed rows: their new terms in, their old ones out
            terms, perturb_rounding = chunk.perturbation_terms(self, rows, deltas)
            change += terms
        grad = base + change / denominator[:, None, None] + self.wd * deltas
        if not certify:
            return grad, None
        rounding = bounds.delta_pass_rounding(
            n=n, block_rows=block_rows, width=self.design.width,
            classes=self.classes, delta_row_max=row_max, dp_frobenius=dp_frobenius,
            x_sq_sum=self.x_sq_sum, max_exponent=exponent,
            own_sq_norm=(self.row_norms[removed] * chunk.has_removal[rows]).square(),
            own_dp_l1=own_dp.abs().sum(dim=1),
            base_norm=base.reshape(k, -1).norm(dim=1),
            change_norm=change.reshape(k, -1).norm(dim=1) / denominator,
            delta_norm=deltas.reshape(k, -1).norm(dim=1), wd=self.wd,
            grad_hat_error=self.grad_hat_error, base_error=base_error,
            denominator=denominator) + perturb_rounding / denominator
        return grad, rounding

    # ----------------------------------------------------------------------- test losses
    def test_changes(self, deltas: torch.Tensor, grad_norm_bound: torch.Tensor):
        """(actual change [T, k], certified error bound [T, k], own term [T, k]): see
        :meth:`_loss_terms`; the bound is own + baseline + evaluation."""
        change, own, evaluation = self._loss_terms(deltas, grad_norm_bound)
        return change, own + self.baseline_error[:, None] + evaluation, own

    def test_outputs(self, deltas: torch.Tensor, grad_norm_bound: torch.Tensor,
                     measure: str = "loss"):
        """Each test point's output at the exact optimum W*_j of change j, f_t(W*_j), from the
        model Ŵ + Δ_j with ‖∇R_j‖ ≤ ``grad_norm_bound``: (value [T, k], proven bound [T, k] on
        |value − f_t(W*_j)|). ``measure`` ``loss``: the test cross-entropy, f_t(Ŵ) + the change
        of :meth:`_loss_terms` (its bound without the baseline: f_t(Ŵ) is evaluated at Ŵ as
        it is, with :attr:`loss0_error`); ``margin``: the correct logit minus the log-sum-exp
        of the others (:meth:`_margin_terms`). Note CE = log(1 + e^{−margin}) exactly, so for
        one test point the two measures order any set of models in exactly opposite ways."""
        if measure == "loss":
            change, own, evaluation = self._loss_terms(deltas, grad_norm_bound)
            return self.loss0[:, None] + change, own + evaluation + self.loss0_error[:, None]
        if measure == "margin":
            return self._margin_terms(deltas, grad_norm_bound)
        raise ValueError(f"unknown measure {measure!r}")

    def _margin_terms(self, deltas: torch.Tensor, grad_norm_bound: torch.Tensor):
        """Margins m_t = l_y − log Σ_{c≠y} e^{l_c} at Ŵ + Δ_j and bounds on their distance to
        the margins at W*_j. Logits l̂ = (l − max l at Ŵ) + u, u = x_t·Δ_cᵀ: off by at most the
        test logit error, u's γ_{d+1}·‖x_t‖·‖Δ_c‖ and the two roundings of the shift and the
        sum (u·(|l| + |u|)); the margin's gradient in the logits has 1-norm 2, so twice that.
        Evaluating the log-sum-exp of the C − 1 others, b_c = l_c − max_c l_c: its rounding
        ≤ u·(Σ q_c|b_c| + C + 3 + 2·FUNCTION_ROUNDING) + 2u·|log Σ e^{b_c}|, the difference one
        more rounding of the result (×2 for the second-order terms). To W*_j:
        ∇m = (e_y − q̃) ⊗ x_t with ‖e_y − q̃‖ ≤ √2 and ∇²m ⪯ (‖x_t‖²/2)·I in magnitude, so
        |m(W*) − m(W)| ≤ √2·‖x_t‖·r + (‖x_t‖²/4)·r², r = ‖∇R_j‖/wd."""
        u = torch.einsum("kcd,td->tkc", deltas, self.x_test)  # [T, k, C]
        logits = self.test_logits[:, None, :] + u
        t_count, k, c = logits.shape
        rows = self.test_rows
        own_logit = logits[rows, :, self.y_test]  # [T, k]
        others = logits.clone()
        others[rows, :, self.y_test] = -math.inf
        top = others.max(dim=2).values
        b = others - top[:, :, None]
        e = b.exp()
        total = e.sum(dim=2)
        lse = top + torch.log(total)
        margin = own_logit - lse
        unit = bounds.UNIT_ROUNDOFF
        xt_norm = self.test_norms[:, None]
        row_max = deltas.norm(dim=2).max(dim=1).values[None, :]
        u_error = bounds.SAFETY * bounds.gamma(self.design.width + 1) * xt_norm * row_max
        logit_error = (self.test_logit_error[:, None] + u_error
                       + unit * (self.test_logits.abs().max(dim=1).values[:, None]
                                 + 2 * u.abs().amax(dim=2)))
        q = e / total[:, :, None]
        spread = torch.where(torch.isfinite(b), q * b.abs(), torch.zeros_like(b)).sum(dim=2)
        evaluation = 2 * bounds.SAFETY * (
            2 * logit_error
            + unit * (spread + c + 3 + 2 * bounds.FUNCTION_ROUNDING)
            + 2 * unit * torch.log(total).abs() + unit * (margin.abs() + top.abs()))
        r = bounds.radius(grad_norm_bound, self.wd)[None, :]
        own = math.sqrt(2.0) * xt_norm * r * (1 + 4 * unit) + 0.25 * xt_norm.square() * r * r
        return margin, bounds.SAFETY * (own + evaluation)

    def _loss_terms(self, deltas: torch.Tensor, grad_norm_bound: torch.Tensor):
        """For removals with offsets ``deltas`` [k, C, d_a] and certified gradient-norm bounds
        [k]: (actual change [T, k], certified error bound [T, k], own term [T, k]: the part of
        the bound due to the removal's own gradient).

        The change log Σ_c p_c e^{u_c} − u_y (u = x_t Δᵀ) is computed from the probabilities
        p̂ at Ŵ. Its rounding: u off by at most γ_{d+1}·‖x_t‖·‖Δ_c‖; p̂ = softmax(l + δl)⊙(1 + θ)
        with |δl| ≤ the logit error and |θ_c| ≤ (|l_c − max l| + C + 1 + 2·FUNCTION_ROUNDING)·u
        (:func:`~infl_cli.numerics.bounds.softmax_rounding`), which moves the change by at most
        ‖q − p‖₁·|δl| (its gradient in l is q − p, q = softmax(l + u)) plus max θ·Σ p|m|/(1 + a);
        and the evaluation of log1p(a) − u_y itself (expm1, log1p: FUNCTION_ROUNDING each). The
        gradient ∇f at the retrained model uses q̂, bounded as softmax(l + u) with logit error
        |δl| + |δu| (plus (C + 6)·u for forming it from p̂ and e^u)."""
        u = torch.einsum("kcd,td->tkc", deltas, self.x_test)  # [T, k, C]
        m = torch.special.expm1(u)
        pt = self.p_test[:, None, :]
        a = (pt * m).sum(dim=2)  # ⟨p, expm1(u)⟩
        rows = self.test_rows
        u_y = u[rows, :, self.y_test]  # [T, k]
        change = torch.log1p(a) - u_y
        q = pt * u.exp()
        q /= q.sum(dim=2, keepdim=True)  # softmax(l + u) [T, k, C]
        c, width = self.classes, self.design.width
        t_count, k = u.shape[:2]
        unit = bounds.UNIT_ROUNDOFF
        xt_norm = self.test_norms[:, None]
        row_max = deltas.norm(dim=2).max(dim=1).values[None, :]
        u_error = bounds.SAFETY * bounds.gamma(width + 1) * xt_norm * row_max  # [T, k]
        logit_error = self.test_logit_error[:, None] + u_error
        q_error = (bounds.softmax_rounding(
            q.reshape(-1, c), (self.test_logits[:, None, :] + u).reshape(-1, c),
            logit_error.reshape(-1)).reshape(t_count, k) + (c + 6) * unit)
        p_shift = (q - pt).abs().sum(dim=2) + q_error + self.p_test_error[:, None]  # ≥ ‖q − p‖₁
        spread = self.test_logits.abs().max(dim=1).values[:, None]
        residual = q.clone()
        residual[rows, :, self.y_test] -= 1.0
        grad_f = self._grad_norm_bound(residual, q_error, xt_norm)
        r = bounds.radius(grad_norm_bound, self.wd)[None, :]
        own = bounds.test_loss_error(grad_f, r, xt_norm)
        weighted_m = (pt * m.abs()).sum(dim=2) / (1 + a)
        evaluation = bounds.SAFETY * (
            math.sqrt(2 * c) * u_error
            + p_shift.clamp(max=2.0) * self.test_logit_error[:, None]
            + (spread + c + 1 + 2 * bounds.FUNCTION_ROUNDING) * unit * weighted_m
            + bounds.gamma(c + 6 + 2 * bounds.FUNCTION_ROUNDING)
            * (change.abs() + u_y.abs() + 2 * weighted_m))
        return change, own, evaluation


def test_predictions(problem: "LooProblem", deltas: torch.Tensor, grad_norm_bound):
    """The class each model Ŵ + Δ_j predicts for each test point, and whether that is proven
    to be the prediction of the *exact* retrained model W*_j: (class [T, k], proven [T, k],
    margin [T, k]).

    ‖W*_j − W_j‖ ≤ r_j = ‖∇R_j‖/wd (strong convexity), so each logit moves by at most
    ‖x_t‖·‖δw_c‖ and a difference of two by at most √2·‖x_t‖·r_j; the computed logits
    l̂ = x_t·Ŵ + x_t·Δ are off by at most the test logit error (γ_{d+1}·|x_t|·|Ŵ|), u's
    (γ_{d+1}·‖x_t‖·‖Δ_c‖), and the shift by the largest logit at Ŵ (u·|l|). The predicted
    class c is proven when its computed margin over every other class exceeds twice those
    errors plus √2·‖x_t‖·r_j."""
    u = torch.einsum("kcd,td->tkc", deltas, problem.x_test)  # [T, k, C]
    logits = problem.test_logits[:, None, :] + u
    top = logits.argmax(dim=2)
    others = logits.scatter(2, top[:, :, None], -math.inf)
    margin = logits.gather(2, top[:, :, None])[:, :, 0] - others.max(dim=2).values
    xt_norm = problem.test_norms[:, None]
    row_max = deltas.norm(dim=2).max(dim=1).values[None, :]
    unit = bounds.UNIT_ROUNDOFF
    error = (problem.test_logit_error[:, None]
             + bounds.gamma(problem.design.width + 1) * xt_norm * row_max
             + unit * (problem.test_logits.abs().max(dim=1).values[:, None] + u.abs().amax(2)))
    radius = bounds.radius(torch.as_tensor(grad_norm_bound, dtype=torch.float64,
                                           device=deltas.device), problem.wd)[None, :]
    proven = margin > bounds.SAFETY * (2 * error + math.sqrt(2.0) * xt_norm * radius)
    return top, proven, margin


def delta_pass(design, p0: torch.Tensor, deltas: torch.Tensor, dtype, track_max=False):
    """Σ_j δp_j x_jᵀ over all training rows for each offset in ``deltas`` [k, C, d_a]:
    (change [k, C, d_a] float64, ‖δP‖_F per removal [k] float64 (float64 passes only),
    rows per block, and with ``track_max`` the largest computed |u_jc| = |x_j·Δ_c| per change
    [k] (else None)).

    One pass over the rows in blocks (the design's ``pass_rows``): per block u = X_b Δᵀ, then
    δp from u in place (vectorised torch), then the back-projection δPᵀ X_b, in ``dtype``;
    block results accumulate in float64. The result does not depend on the number of threads
    (no reduction here is split across them). ``p0`` [n, C] holds the probabilities at Ŵ (in
    ``dtype`` for speed)."""
    k, c, width = deltas.shape
    dp_sq = torch.zeros(k, dtype=torch.float64, device=deltas.device)
    u_max = torch.zeros(k, dtype=torch.float64, device=deltas.device) if track_max else None

    def transform(u, lo, hi):
        if track_max:
            torch.maximum(u_max, u.view(hi - lo, k, c).abs().amax(dim=(0, 2)), out=u_max)
        m = torch.special.expm1(u, out=u).view(hi - lo, k, c)
        p = p0[lo:hi]
        s = torch.einsum("bkc,bc->bk", m, p)  # ⟨p_j, m_j⟩
        m.sub_(s[:, :, None]).mul_(p[:, None, :]).div_(s.add_(1.0)[:, :, None])
        if dtype == torch.float64:
            dp_sq.add_(_squares_by_removal(m))
        return u  # m, now δp, is a view of u

    change, rows = design.pass_rows(deltas.reshape(k * c, width).T, transform, dtype)
    return change.reshape(k, c, width), dp_sq.sqrt(), rows, u_max


def _squares_by_removal(m: torch.Tensor) -> torch.Tensor:
    """Σ_{b,c} m[b, k, c]² per removal k. On the CPU through NumPy's einsum, without a
    temporary (3× torch's square-and-sum there, and single-threaded, so the same bits on any
    number of threads); elsewhere torch."""
    if m.device.type == "cpu":
        a = m.numpy()
        return torch.from_numpy(np.einsum("bkc,bkc->k", a, a))
    return m.square().sum(dim=(0, 2))
