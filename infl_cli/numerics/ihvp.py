"""The inverse-HVP loops that know no model, over a curvature the engine provides:
LiSSA's stochastic recursion (Agarwal et al., as used by Koh & Liang) over mini-batch
Hessian-vector products, and conjugate gradients with a progress bar.

* :func:`lissa`: v_j = g + (1 − damping)·v_{j−1} − (H_B v_{j−1})/scale over random
  mini-batches B, estimate v_t/scale (or the mean over the last ``average_tail`` of the steps),
  averaged over ``repeats`` independent runs. It converges when ``scale`` exceeds the largest
  eigenvalue of every sampled H_B; ``scale="auto"`` measures that by power iteration on sampled
  batches and adds a safety margin. The curvature gives ``n``, ``floor`` (a lower bound on
  λ_min(H), for the divergence check), ``permute(perm)``, ``block(lo, hi, v)`` (H_B v on the
  permuted rows lo..hi) and ``rows(idx, v)`` (H_B v on rows idx).
* :func:`cg_with_progress`: :func:`~infl_cli.numerics.linalg.conjugate_gradient` with a
  progress bar in decades of residual reduction.
"""

from __future__ import annotations

import math

import torch

from infl_cli.errors import InflError
from infl_cli.numerics.linalg import batched_norm, conjugate_gradient
from infl_cli.runtime.progress import progress_bar
from infl_cli.settings import CgSettings, LissaSettings


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
                update(completed=sum(steps_per_repeat) + j,
                       status=f"repeat {r + 1}, change {change:.1e}")
                if quiet >= 2:
                    break
            steps_per_repeat.append(j)
            if j < settings.depth:  # stopped early: the bar's total loses the steps not taken
                total -= settings.depth - j
                update(completed=sum(steps_per_repeat), total=total,
                       status=f"repeat {r + 1} settled at step {j:,}")
            estimates += tail.estimate(v) / scale
    estimates /= settings.repeats
    return estimates, {"scale_used": scale, "steps": sum(steps_per_repeat),
                       "steps_per_repeat": steps_per_repeat,
                       "stopped_early": [j < settings.depth for j in steps_per_repeat],
                       "last_change": change, "hvps": hvps}


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
