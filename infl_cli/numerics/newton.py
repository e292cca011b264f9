"""Newton's method with step halving, for any smooth objective: the one core that training,
the leave-one-out fallback and subset retraining share, batched over k models.

Each iteration takes, for every model still open, a direction d (the caller's: an inexact
Newton direction by conjugate gradients, −H⁻¹∇R), then halves the step t·d (t = 1, ½, ¼, …,
each an exact power of two) until the objective accepts it (:class:`LineSearch`). A model
whose every halving is refused has *stalled*: no step along its direction lowers its
objective, which happens where the objective no longer resolves the change (its float64
floor); it stops there, and the caller decides what that means (training refuses to go on;
the certificates of the others say how far each got).

The caller gives ``evaluate(w, rows)`` → (objective [k'], gradient [k', …], its norm [k'],
state), the state being what the directions need at those iterates (or None), with rows
along ``state_dim``; ``direction(w, grad, gn, rows, state)`` → [k', …]; and ``is_open(gn,
previous, rows)``, the rows still to improve (``previous``: each row's gradient norm before
its last step, inf at first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from infl_cli.numerics.linalg import batched_dot


@dataclass(frozen=True)
class LineSearch:
    """When a step t·d is accepted: the objective falls by Armijo's fraction ``armijo`` of
    the decrease the slope promises, within ``noise``·|R| (the objective's own rounding); or,
    with ``gradient_decrease``, the gradient norm falls (where R no longer resolves the
    change). Each refused step is halved, at most ``halvings`` times."""

    armijo: float = 1e-4
    noise: float = 0.0
    gradient_decrease: bool = False
    halvings: int = 40


def newton(evaluate, direction, w: torch.Tensor, is_open, max_iterations: int,
           search: LineSearch = LineSearch(), on_step=None, state_dim: int = 0):
    """Newton with step halving from ``w`` [k, …] (module doc). Returns (w, accepted steps
    [k] as a NumPy array, stalled [k] as a NumPy bool array, stats: ``newton_steps``,
    ``float64_passes`` (evaluations), ``line_search_halvings``); ``on_step(gn)`` after each
    iteration, with every row's gradient norm."""
    k = w.shape[0]
    device = w.device
    w = w.clone()
    stats = {"newton_steps": 0, "float64_passes": 0, "line_search_halvings": 0}
    steps = np.zeros(k, dtype=np.int64)
    stalled = torch.zeros(k, dtype=torch.bool, device=device)
    everyone = torch.arange(k, device=device)
    loss, grad, gn, state = evaluate(w, everyone)
    stats["float64_passes"] += 1
    previous = torch.full((k,), math.inf, dtype=torch.float64, device=device)
    todo = everyone
    for _ in range(max_iterations):
        todo = todo[is_open(gn[todo], previous[todo], todo) & ~stalled[todo]]
        if not len(todo):
            break
        previous[todo] = gn[todo]
        d = direction(w[todo], grad[todo], gn[todo], todo,
                      None if state is None else state.index_select(state_dim, todo))
        slope = batched_dot(grad[todo], d)
        t = torch.ones(len(todo), dtype=torch.float64, device=device)
        pending = torch.arange(len(todo), device=device)
        for _halving in range(search.halvings):
            rows = todo[pending]
            trial = w[rows] + t[pending].view(-1, *([1] * (w.dim() - 1))) * d[pending]
            trial_loss, trial_grad, trial_gn, trial_state = evaluate(trial, rows)
            stats["float64_passes"] += 1
            bar = loss[rows] + search.armijo * t[pending] * slope[pending] \
                + search.noise * loss[rows].abs()
            ok = torch.isfinite(trial_gn) & (trial_loss <= bar)
            if search.gradient_decrease:
                ok |= torch.isfinite(trial_gn) & (trial_gn < gn[rows])
            moved = rows[ok]
            w[moved], loss[moved], grad[moved], gn[moved] = \
                trial[ok], trial_loss[ok], trial_grad[ok], trial_gn[ok]
            if state is not None:
                state.index_copy_(state_dim, moved,
                                  trial_state.index_select(state_dim, torch.nonzero(ok)[:, 0]))
            steps[moved.cpu().numpy()] += 1
            pending = pending[~ok]
            if not len(pending):
                break
            stats["line_search_halvings"] += 1
            t[pending] /= 2
        stalled[todo[pending]] = True
        stats["newton_steps"] += 1
        if on_step is not None:
            on_step(gn)
    return w, steps, stalled.cpu().numpy(), stats
