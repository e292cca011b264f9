"""Subset retraining, certified: the models behind the linear datamodeling score (LDS).

A subset S of the training set (a fraction α of it, drawn at random) defines the objective

    R_S(W) = (1/|S|)·Σ_{i∈S} CE(x_i, y_i; W) + (wd/2)·‖W‖²,

still wd-strongly convex, so everything :mod:`~infl_cli.numerics.bounds` proves for leave-one-out holds
for its minimiser W*_S: ‖W − W*_S‖ ≤ ‖∇R_S(W)‖/wd, and each test output at W*_S is within a
proven bar of its value at W (:meth:`~infl_cli.engines.logreg.loo.LooProblem.test_outputs`).

**Why not the LOO iteration.** Removing half the data moves the optimum by about half of Ŵ
itself (dattri's MNIST split: ‖W_S − Ŵ‖ ≈ 0.55·‖Ŵ‖), and the curvature with it: the fixed
Newton matrix H(Ŵ) of :mod:`~infl_cli.engines.logreg.loo` then contracts too slowly (measured: no subset within
1e-9 after 10 steps), and the delta-form rounding bound grows as e^{max|x·Δ|}. So a batch of
subsets is solved here by **Newton's method on each R_S at its own iterate**: per Newton step
one float64 pass gives every subset's objective and gradient (masked sums over the design);
the direction solves H_S(W) d = −∇R_S(W) by conjugate gradients, batched over the subsets, on
float32 Hessian-vector products at the iterate (two products with the design per iteration),
preconditioned by the float32 inverse of H(Ŵ) (a random half keeps its share of the curvature,
so H_S(Ŵ) ≈ H(Ŵ)); a backtracking line search on R_S keeps every step a descent step (the
shared Newton core, :mod:`~infl_cli.numerics.newton`). CG is
run to a relative residual min(0.1, √‖∇R_S‖) (inexact Newton: superlinear), and a subset stops
when its float64 gradient is ≤ 1e-3·tol, or is within tol and stops halving (its float64
floor), or no step along its direction lowers R_S.

**Certificate.** Each final model's gradient is evaluated once more as a certified product
(:func:`certified_gradients`): logits X·Wᵀ and back-projection Rᵀ·X by the design's certified
products (exact integer sums for pixels, the γ_m model for real features), the softmax by
:func:`~infl_cli.numerics.bounds.softmax_rounding`, the mask exact (0 or 1). A subset is certified when
that bound is ≤ tol.
"""

from __future__ import annotations

import numpy as np
import torch

from infl_cli.numerics import bounds
from infl_cli.numerics.linalg import batched_dot, batched_norm
from infl_cli.numerics.newton import LineSearch
from infl_cli.numerics.newton import newton as newton_core

FLOOR_TARGET = 1e-3  # Newton stops at float64 ‖∇R_S‖ ≤ this × tol (or at its floor)
MAX_NEWTON = 30
MAX_CG = 200
ARMIJO = 1e-4


def draw_subsets(n: int, count: int, fraction: float, seed: int) -> np.ndarray:
    """``count`` subsets of ``round(fraction·n)`` (at least 1) training points each, drawn
    without replacement, independently, by NumPy's ``default_rng([seed, 7])``: keep [count, n]
    (platform-stable)."""
    size = min(n, max(1, round(fraction * n)))
    rng = np.random.default_rng([seed, 7])
    keep = np.zeros((count, n), dtype=bool)
    for j in range(count):
        keep[j, rng.choice(n, size=size, replace=False)] = True
    return keep


class _Batch:
    """The masks of a batch of subsets on the problem's device: [n, k] float64 and float32,
    and the sizes |S_j| (exact counts)."""

    def __init__(self, problem, keep: np.ndarray):
        self.keep = np.asarray(keep, dtype=bool)
        self.k = int(self.keep.shape[0])
        self.mask = torch.as_tensor(self.keep.T.astype(np.float64)).to(problem.device)
        self.mask32 = self.mask.to(torch.float32)
        self.size = self.mask.sum(dim=0)


def _flat(weights: torch.Tensor) -> torch.Tensor:
    """[k, C, d] → [d, k·C] (the right operand of a product with the design)."""
    k, c, d = weights.shape
    return weights.reshape(k * c, d).T.contiguous()


def objective_and_gradient(problem, batch: _Batch, weights: torch.Tensor, rows):
    """R_S(W_j) [k'] and ∇R_S(W_j) [k', C, d_a] (float64) of the subsets ``rows`` at
    ``weights`` [k', C, d_a], with their probabilities [n, k', C] in float32 (for the Hessian
    products of the next direction)."""
    design = problem.design
    k, c, d = weights.shape
    logits = design.matmul(_flat(weights)).view(-1, k, c)  # [n, k, C]
    top = logits.max(dim=2, keepdim=True).values
    logits -= top
    e = logits.exp()
    total = e.sum(dim=2, keepdim=True)
    mask = batch.mask[:, rows]
    n = design.n
    ce = torch.log(total[:, :, 0]) - logits[torch.arange(n, device=logits.device), :,
                                            problem.y]  # [n, k]
    size = batch.size[rows]
    loss = (ce * mask).sum(dim=0) / size + 0.5 * problem.wd * weights.reshape(k, -1).square().sum(1)
    probs = e.div_(total)  # in place of the exps
    probs32 = probs.to(torch.float32)
    probs[torch.arange(n, device=probs.device), :, problem.y] -= 1.0
    probs.mul_(mask[:, :, None])
    grad = design.rmatmul(probs.view(n, k * c)).view(k, c, d) / size[:, None, None] \
        + problem.wd * weights
    return loss, grad, probs32


def hessian_products(problem, batch: _Batch, probs32: torch.Tensor, rows, v: torch.Tensor):
    """H_S(W_j)·v_j for the subsets ``rows`` [k'] (their float32 probabilities ``probs32``
    [n, k', C], full-batch positions given by ``rows``), v [k', C, d_a]: one float32 pass
    (X·vᵀ, the curvature (diag p − p pᵀ) per row, masked, back-projected), float64 out."""
    k, c, d = v.shape
    mask32 = batch.mask32[:, rows]

    def transform(u, lo, hi):
        a = u.view(hi - lo, k, c)
        p = probs32[lo:hi]
        pa = p * a
        out = pa - p * pa.sum(dim=2, keepdim=True)
        out.mul_(mask32[lo:hi, :, None])
        return out.view(hi - lo, k * c)

    back, _ = problem.design.pass_rows(_flat(v).to(torch.float32), transform, torch.float32)
    return back.view(k, c, d) / batch.size[rows][:, None, None] + problem.wd * v


def _directions(problem, batch, probs32, rows, grad, stats):
    """Inexact Newton directions: −H_S⁻¹∇R_S by preconditioned CG, batched over ``rows``
    (each stops at its own relative residual; the preconditioner H(Ŵ)⁻¹)."""
    gn = batched_norm(grad)
    rtol = torch.clamp(gn.sqrt(), min=1e-7, max=0.1)
    x = torch.zeros_like(grad)
    r = -grad.clone()
    z = problem.factor.solve(r)
    p = z.clone()
    rz = batched_dot(r, z)
    b_norm = gn.clamp_min(1e-300)
    active = torch.ones(len(rows), dtype=torch.bool, device=grad.device)
    for _ in range(MAX_CG):
        idx = torch.nonzero(active)[:, 0]
        if not len(idx):
            break
        hp = hessian_products(problem, batch, probs32[:, idx], rows[idx], p[idx])
        stats["hessian_products"] += 1
        alpha = rz[idx] / batched_dot(p[idx], hp)
        x[idx] += alpha[:, None, None] * p[idx]
        r[idx] -= alpha[:, None, None] * hp
        z_new = problem.factor.solve(r[idx])
        rz_new = batched_dot(r[idx], z_new)
        beta = rz_new / rz[idx]
        p[idx] = z_new + beta[:, None, None] * p[idx]
        rz[idx] = rz_new
        stats["cg_iterations"] += 1
        active[idx] = batched_norm(r[idx]) / b_norm[idx] > rtol[idx]
    return x


def newton(problem, keep: np.ndarray, tol: float, on_step=None):
    """Minimise R_S for each subset of ``keep`` [k, n] from Ŵ (module doc), by the shared
    Newton core (:func:`~infl_cli.numerics.newton.newton`). Returns (Δ = W_S − Ŵ [k, C, d_a],
    Newton steps [k] as a NumPy array, stats)."""
    batch = _Batch(problem, keep)
    stats = {"hessian_products": 0, "cg_iterations": 0}

    def evaluate(weights, rows):
        loss, grad, probs32 = objective_and_gradient(problem, batch, weights, rows)
        return loss, grad, batched_norm(grad), probs32

    def direction(weights, grad, gn, rows, probs32):
        return _directions(problem, batch, probs32, rows, grad, stats)

    def is_open(gn, previous, rows):
        # open: above the target, and (where already within tol) still halving per step
        return (gn > FLOOR_TARGET * tol) & ((gn > tol) | (gn < 0.5 * previous))

    start = problem.weight[None].repeat(batch.k, 1, 1)
    weights, steps, _, core = newton_core(
        evaluate, direction, start, is_open, MAX_NEWTON,
        LineSearch(armijo=ARMIJO, noise=8 * bounds.UNIT_ROUNDOFF), state_dim=1,
        on_step=None if on_step is None else lambda gn: on_step(float(gn.max())))
    stats.update(core)
    return weights - problem.weight[None], steps, stats


def certified_gradients(problem, keep: np.ndarray, deltas: torch.Tensor):
    """∇R_S(Ŵ + Δ_j) of each subset, certified (module doc): (‖∇R_S‖ computed [k], a proven
    bound on that value's error [k], so the true norm is at most their sum).

    With δr_i the error of row i of the masked residual (its 1-norm bound from the softmax),
    ‖ĝ − ∇R_S‖_F ≤ (Σ_{i∈S} ‖δr_i‖₁‖x_i‖ + ‖bound of RᵀX‖_F)/|S| + γ_3·‖|RᵀX|/|S| + wd|W|‖_F,
    and the norm's own rounding γ_{Cd+1}·‖ĝ‖."""
    batch = _Batch(problem, keep)
    k, c, d = deltas.shape
    design = problem.design
    weights = problem.weight[None] + deltas
    logits, logit_error = design.certified_matmul(_flat(weights))  # [n, k·C]
    n = design.n
    logits = logits.view(n * k, c)
    probs = torch.softmax(logits, dim=1)
    row_error = bounds.softmax_rounding(
        probs, logits, logit_error.view(n * k, c).max(dim=1).values).view(n, k)
    del logit_error
    residual = probs.view(n, k, c)
    residual[torch.arange(n, device=residual.device), :, problem.y] -= 1.0
    residual.mul_(batch.mask[:, :, None])
    back, back_error = design.certified_rmatmul(residual.view(n, k * c))
    back, back_error = back.view(k, c, d), back_error.view(k, c, d)
    size = batch.size
    grad = back / size[:, None, None] + problem.wd * weights
    row_terms = ((row_error * batch.mask).T @ design.row_norms.to(row_error.dtype)) \
        * (1 + bounds.gamma(n + 1))
    bound = bounds.SAFETY * (
        (row_terms + back_error.reshape(k, -1).norm(dim=1)) / size
        + bounds.gamma(3) * (back.abs() / size[:, None, None]
                             + problem.wd * weights.abs()).reshape(k, -1).norm(dim=1))
    gn = grad.reshape(k, -1).norm(dim=1)
    bound = bound + bounds.gamma(c * d + 1) * gn
    return gn, bound


def chunk_size(device, n: int, classes: int, settings) -> int:
    """Subsets per chunk: as set, else sized by passes: enough that the subsets take about
    :data:`TARGET_CHUNKS` chunks (each chunk is a few passes over the data, so their number,
    and the time per subset, stay about constant as n grows), never fewer than fit
    :data:`CHUNK_BYTES`, and never more than keep a chunk's [n, k, C] float64 arrays (about
    :data:`ARRAYS` of them at once) within :data:`CHUNK_SHARE` of the memory budget (CPU) or a
    quarter of the free memory (GPU)."""
    from infl_cli.runtime import memory

    if settings.chunk_size is not None:
        return int(settings.chunk_size)
    per_subset = ARRAYS * n * classes * 8
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cap = 0.25 * free
    else:
        budget, _ = memory.budget_bytes()
        cap = CHUNK_SHARE * budget if budget is not None else CHUNK_BYTES
    wanted = max(-(-settings.subsets // TARGET_CHUNKS), CHUNK_BYTES // per_subset)
    return int(max(1, min(settings.subsets, wanted, cap // per_subset)))


CHUNK_BYTES = 0.8e9
CHUNK_SHARE = 0.4
TARGET_CHUNKS = 8
ARRAYS = 6


def solve_chunk(problem, ids, settings):
    """Retrain on the subsets ``ids`` of ``settings`` (:class:`~infl_cli.settings.LdsSettings`;
    their masks drawn again from its seed), certify them and measure every test point's output:
    (results, stats), results as NumPy arrays: ``outputs`` and ``output_bound`` [T, k] (the
    output at each exact optimum W*_S lies within the bound of the value), ``grad_norm`` and
    ``grad_rounding`` [k] (the true ‖∇R_S‖ ≤ their sum), ``steps`` [k]."""
    ids = np.asarray(ids, dtype=np.int64)
    keep = draw_subsets(problem.n, settings.subsets, settings.fraction, settings.seed)[ids]
    deltas, steps, stats = newton(problem, keep, settings.tol)
    gn, rounding = certified_gradients(problem, keep, deltas)
    outputs, bound = problem.test_outputs(deltas, gn + rounding, settings.measure)
    results = {"outputs": outputs, "output_bound": bound, "grad_norm": gn,
               "grad_rounding": rounding}
    results = {key: value.cpu().numpy() for key, value in results.items()}
    results["steps"] = steps
    stats["float64_passes"] += 1  # the certified pass
    return results, stats
