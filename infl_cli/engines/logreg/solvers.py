"""Stage 2: inverse-Hessian-vector products s_t = H⁻¹ ∇CE(z_test_t, Ŵ), one per test index.

Solvers (all float64, closed-form Hessian-vector products from :mod:`infl_cli.engines.logreg.model`):

* ``lissa``: the stochastic recursion of Agarwal et al. as used by Koh & Liang,
  v_j = g + (1 − damping)·v_{j−1} − (H_B v_{j−1})/scale over random mini-batches B,
  estimate v_t/scale, averaged over ``repeats`` independent runs. It converges when ``scale``
  exceeds the largest eigenvalue of every sampled H_B; ``scale="auto"`` measures that by
  power iteration on sampled batches and adds a safety margin.
* ``cg``: conjugate gradients with full-batch Hessian-vector products, preconditioned by
  :class:`~infl_cli.numerics.linalg.SubspacePreconditioner` (``cg_rank`` 0: plain CG).
* ``exact``: the closed-form dense Hessian, Cholesky-factored (the reference).

Every solver finishes by measuring its true relative residual ‖H s − g‖/‖g‖ with one
full-batch Hessian-vector product per test point.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import numpy as np
import torch

from infl_cli.numerics import bounds
from infl_cli.engines.logreg import model
from infl_cli import settings
from infl_cli.errors import InflError
from infl_cli.numerics.linalg import (HessianFactor, SubspacePreconditioner, batched_norm,
    conjugate_gradient)
from infl_cli.runtime.progress import progress_bar

SOLVERS, PRESETS = settings.SOLVERS, settings.PRESETS
LissaSettings, CgSettings = settings.LissaSettings, settings.CgSettings


class _TailAverage:
    """Running estimate of one LiSSA repeat: the mean of the iterates over the last
    ``fraction`` of the steps so far, kept as sums over blocks of ``block`` steps (so the
    window can slide without storing iterates)."""

    def __init__(self, fraction: float, block: int):
        self.fraction, self.block = fraction, block
        self.sums, self.counts = [], []
        self.steps = 0

    def add(self, v: torch.Tensor) -> None:
        if not self.counts or self.counts[-1] == self.block:
            self.sums.append(torch.zeros_like(v))
            self.counts.append(0)
        self.sums[-1] += v
        self.counts[-1] += 1
        self.steps += 1

    def estimate(self, last: torch.Tensor) -> torch.Tensor:
        if self.fraction == 0:
            return last
        want = max(1, round(self.fraction * self.steps))
        total, count = torch.zeros_like(last), 0
        for block_sum, block_count in zip(reversed(self.sums), reversed(self.counts)):
            if count >= want:
                break
            total += block_sum
            count += block_count
        return total / count


class LogisticCurvature:
    """Mini-batch Hessian-vector products of the logistic model, for LiSSA: the data and their
    probabilities at W are permuted once (one copy) so that a batch is a contiguous block.
    Any engine provides the same four things: ``n``, ``floor`` (a lower bound on λ_min(H),
    for the divergence check), ``permute(perm)``, ``block(lo, hi, v)`` (H_B v on the permuted
    rows lo..hi) and ``rows(idx, v)`` (H_B v on rows idx)."""

    def __init__(self, weight, x, wd: float):
        self.weight, self.x, self.wd = weight, x, wd
        self.probs = model.probabilities(weight, x)
        self.n = int(x.shape[0])
        self.floor = wd  # λ_min(H) ≥ wd

    def permute(self, perm: torch.Tensor) -> None:
        self.xp, self.pp = self.x[perm], self.probs[perm]

    def block(self, lo: int, hi: int, v: torch.Tensor) -> torch.Tensor:
        return model.hvp(self.weight, self.xp[lo:hi], self.wd, v, probs=self.pp[lo:hi])

    def rows(self, idx: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return model.hvp(self.weight, self.x[idx], self.wd, v, probs=self.probs[idx])


class _Batches:
    """Mini-batches without replacement within an epoch: the rows are permuted once and cut
    into contiguous blocks; each epoch visits the blocks in a fresh random order."""

    def __init__(self, curvature, batch_size, generator, device):
        # the random stream is drawn on the CPU, so every device sees the same batches
        perm = torch.randperm(curvature.n, generator=generator).to(device)
        curvature.permute(perm)
        self.curvature = curvature
        self.batch, self.gen = batch_size, generator
        self.n_blocks = curvature.n // batch_size
        self.order, self.pos = [], 0

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H_B v on the next batch."""
        if self.pos == len(self.order):
            self.order = torch.randperm(self.n_blocks, generator=self.gen).tolist()
            self.pos = 0
        lo = self.order[self.pos] * self.batch
        self.pos += 1
        return self.curvature.block(lo, lo + self.batch, v)


def estimate_sampled_max_eigenvalue(curvature, shape, batch_size, generator, device,
                                    batches=8, iterations=30) -> float:
    """Largest eigenvalue over ``batches`` random mini-batch Hessians, by power iteration
    (vectors of ``shape``)."""
    n = curvature.n
    best = 0.0
    for _ in range(batches):
        idx = torch.randint(n, (min(batch_size, n),), generator=generator).to(device)
        v = torch.randn(*shape, generator=generator, dtype=torch.float64).to(device)
        v /= v.norm()
        lam = 0.0
        for _ in range(iterations):
            hv = curvature.rows(idx, v)
            lam = float((hv * v).sum())
            v = hv / hv.norm()
        best = max(best, lam)
    return best


def lissa(curvature, rhs: torch.Tensor, settings: LissaSettings):
    """LiSSA estimates of H⁻¹ rhs for rhs [T, ...] (one vector per test point, any shape);
    all T test points share the batches. ``curvature``: the model's mini-batch
    Hessian-vector products (:class:`LogisticCurvature` and its twins).

    Returns (estimate [T, ...], info dict: scale used, steps per repeat, hvp count).
    """
    gen = torch.Generator().manual_seed(settings.seed)
    device = rhs.device
    batch = min(settings.batch_size, curvature.n)
    shape = tuple(rhs.shape[1:])
    if settings.scale == "auto":
        lam = estimate_sampled_max_eigenvalue(curvature, shape, batch, gen, device)
        scale = settings.scale_margin * lam
    else:
        scale = float(settings.scale)
    if not scale > 0:
        raise InflError(f"LiSSA scale must be > 0, got {scale}")
    # ‖v_j‖ ≤ scale·‖g‖/(λ_min + damping·scale) when the recursion converges
    bound = scale * float(batched_norm(rhs).max()) / max(
        curvature.floor + settings.damping * scale, 1e-300)
    check = max(1, settings.check_every)
    estimates = torch.zeros_like(rhs)
    steps_per_repeat, hvps = [], 0
    total = settings.repeats * settings.depth
    with progress_bar(f"ihvp lissa (scale {scale:.3g}, batch {batch})", total=total) as update:
        for r in range(settings.repeats):
            batches = _Batches(curvature, batch, gen, device)
            v = rhs.clone()
            tail = _TailAverage(settings.average_tail, check)
            previous, quiet, change = None, 0, math.inf
            for j in range(1, settings.depth + 1):
                hv = batches.hvp(v)
                v = rhs + (1.0 - settings.damping) * v - hv / scale
                hvps += rhs.shape[0]
                tail.add(v)
                if j % check and j != settings.depth:
                    continue
                norm = float(batched_norm(v).max())
                if not math.isfinite(norm) or norm > 100 * bound:
                    lam = estimate_sampled_max_eigenvalue(curvature, shape, batch, gen, device)
                    raise InflError(
                        f"LiSSA diverged at step {j} with scale {scale:.4g} (norm {norm:.3g});"
                        f" sampled Hessian eigenvalues reach about {lam:.3g}: use --scale "
                        f"{max(1.5 * lam, 2 * scale):.3g} or larger")
                current = tail.estimate(v)
                if previous is not None:
                    change = float((batched_norm(current - previous)
                                    / batched_norm(current).clamp_min(1e-300)).max())
                    quiet = quiet + 1 if change <= settings.stop_tol else 0
                previous = current
                update(completed=r * settings.depth + j,
                       status=f"repeat {r + 1}, change {change:.1e}")
                if quiet >= 2:
                    break
            steps_per_repeat.append(j)
            update(completed=(r + 1) * settings.depth)
            estimates += tail.estimate(v) / scale
    estimates /= settings.repeats
    return estimates, {"scale_used": scale, "steps": sum(steps_per_repeat),
                       "steps_per_repeat": steps_per_repeat,
                       "stopped_early": [j < settings.depth for j in steps_per_repeat],
                       "last_change": change, "hvps": hvps}


def solve(solver: str, weight, x, wd, rhs: torch.Tensor,
          lissa_settings: LissaSettings | None = None, cg_settings: CgSettings | None = None,
          design=None, factor: HessianFactor | None = None, certificate=None):
    """H⁻¹ rhs with the named solver. Returns (estimate [T, C, d], report dict) where the
    report holds settings, iterations, HVP count, seconds, the true relative residuals
    ‖Hs − g‖/‖g‖ and, per test point, a proven bound on the relative error ‖s − s*‖/‖s*‖
    (:func:`~infl_cli.numerics.bounds.ihvp_error`: λ_min(H) ≥ wd). With ``design`` the residual is
    computed with certified products and its rounding is part of the bound (``certificate``:
    training's certified gradient, whose probabilities it reuses). ``factor``: for ``exact``,
    the Cholesky factor of H when the caller has it (the work folder's)."""
    start = time.perf_counter()
    if solver == "lissa":
        settings = lissa_settings or LissaSettings()
        est, info = lissa(LogisticCurvature(weight, x, wd), rhs, settings)
        report = {"settings": asdict(settings), **info, "iterations": info["steps"]}
    elif solver == "cg":
        est, report = _cg(weight, x, wd, rhs, cg_settings or CgSettings(), design,
                          None if certificate is None else certificate.probs)
    elif solver == "exact":
        c = weight.shape[0]
        if factor is None:
            with progress_bar("ihvp exact: Hessian blocks", total=c * (c - 1) // 2) as update:
                factor = HessianFactor(weight, x if design is None else design, wd,
                                       on_block=update)
        est = factor.solve(rhs)
        report = {"settings": {}, "iterations": 1, "hvps": 0,
                  "factored_dimension": factor.dimension}
    else:
        raise InflError(f"unknown solver {solver!r}; choose one of: {', '.join(SOLVERS)}")
    report["seconds"] = time.perf_counter() - start
    if not bool(torch.isfinite(est).all()):
        raise InflError(f"{solver} produced a non-finite inverse-HVP")
    g_norm = batched_norm(rhs).cpu().numpy()
    if design is not None:
        residual, rounding = model.certified_residual(weight, design, wd, est, rhs,
                                                      certificate)
    else:  # no design: the float64 residual, its rounding not bounded
        residual = batched_norm(model.hvp(weight, x, wd, est) - rhs).cpu().numpy()
        rounding = np.zeros_like(residual)
    _, relative_bound = bounds.ihvp_error(residual + rounding, batched_norm(est).cpu().numpy(),
                                          wd)
    report["relative_residual"] = (residual / g_norm).tolist()
    report["residual_rounding_bound"] = (rounding / g_norm).tolist()
    report["error_bound_relative"] = relative_bound.tolist()
    report["error_bound_certified"] = design is not None
    return est, report


def cg_with_progress(apply_h, rhs: torch.Tensor, settings: CgSettings, precondition=None):
    """:func:`~infl_cli.numerics.linalg.conjugate_gradient` with a progress bar in decades of residual
    reduction (what CG buys); returns (x, iterations, hvps)."""
    decades = round(max(-math.log10(settings.rtol), 1.0), 1)

    def show(i, rel):
        worst = max(float(rel.max()), 1e-300)
        update(completed=min(max(-math.log10(worst), 0.0), decades),
               status=f"iteration {i}, residual {worst:.1e}")

    with progress_bar("ihvp cg: log10 residual reduced", total=decades) as update:
        return conjugate_gradient(apply_h, rhs, settings.rtol, settings.max_iter,
                                  precondition=precondition, on_iter=show)


def _cg(weight, x, wd, rhs, settings: CgSettings, design=None, probs=None):
    """(Preconditioned) CG over the features active in the training data; on the others H is
    wd·I and the solution is rhs/wd exactly. ``rank`` 0 is plain CG (as the authors ran it).
    With ``design`` its products are the design's (no dense copy of the inputs) and ``probs``
    (the softmax at W, when the caller has it) are reused."""
    if design is not None:
        active = design.active.to(weight.device)
        xa, wa = design, weight[:, active].contiguous()
    else:
        active = model.active_features(x)
        xa, wa = x[:, active].contiguous(), weight[:, active].contiguous()
    if probs is None:
        probs = model.probabilities(wa, xa)
    start = time.perf_counter()
    precondition = (SubspacePreconditioner(wa, xa, wd, settings.rank, probs)
                    if settings.rank > 0 else None)
    setup = time.perf_counter() - start
    sol, iters, hvps = cg_with_progress(lambda v: model.hvp(wa, xa, wd, v, probs=probs),
                                        rhs[:, :, active].contiguous(), settings, precondition)
    est = rhs / wd
    est[:, :, active] = sol
    report = {"settings": asdict(settings),
              "iterations": iters, "hvps": hvps, "preconditioner_seconds": setup}
    return est, report
