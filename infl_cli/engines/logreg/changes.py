"""What the certified retraining core retrains: a batch of changes of the training
objective (:class:`Changes`: leave-one-out removals, label fixes, feature perturbations, or
removals with either), and a chunk of them as a problem's passes need them (:class:`Chunk`:
the removed rows, the relabelling and perturbation corrections of ∇R_j(Ŵ) with proven bounds
on their rounding, and the perturbed rows' own delta-form terms)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from infl_cli.numerics import bounds


def delta_probs(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """softmax(l + u) − softmax(l) from p = softmax(l) [..., C] and u [..., C], in delta
    form."""
    m = torch.special.expm1(u)
    s = (p * m).sum(dim=-1, keepdim=True)
    return p * (m - s) / (1.0 + s)


@dataclass
class Changes:
    """A batch of k changes of the training objective, each certified alike (the shared
    retraining core: leave-one-out, label fixes, feature perturbations, and removals with
    either). Change j removes at most one point, ``removed[j]`` (−1: none), gives the points
    ``relabel_index`` of entries with ``relabel_change == j`` the labels ``relabel_label``,
    and the points ``perturb_index`` of entries with ``perturb_change == j`` the inputs
    ``perturb_rows`` (x'_i); its objective is

        R_j(W) = (1/S_j)·Σ_{i ≠ removed[j]} CE(x'_i, y'_i; W) + (wd/2)·‖W‖²,  S_j = n − [removed],

    wd-strongly convex whatever the change, so every certificate holds for it."""

    removed: np.ndarray
    relabel_change: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    relabel_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    relabel_label: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # feature perturbations: the points ``perturb_index`` of the entries with
    # ``perturb_change == j`` get the input rows ``perturb_rows`` [m, d_a] (the active
    # features, in the model's units, taken as exact) in change j: R_j loses their old
    # terms CE(x_i, y_i) and gains CE(x'_i, y_i) (same S_j)
    perturb_change: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    perturb_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    perturb_rows: np.ndarray | None = None

    def __len__(self) -> int:
        return int(len(self.removed))

    @classmethod
    def removals(cls, removed) -> "Changes":
        """Leave-one-out: change j removes point ``removed[j]``."""
        return cls(np.asarray(removed, dtype=np.int64))

    @classmethod
    def relabelings(cls, sets) -> "Changes":
        """Change j gives the points ``sets[j][0]`` the labels ``sets[j][1]``."""
        sets = list(sets)
        owner = [np.full(len(i), j, dtype=np.int64) for j, (i, _) in enumerate(sets)]
        return cls(np.full(len(sets), -1, dtype=np.int64),
                   np.concatenate(owner) if owner else np.zeros(0, np.int64),
                   np.concatenate([np.asarray(i, np.int64) for i, _ in sets]) if sets
                   else np.zeros(0, np.int64),
                   np.concatenate([np.asarray(y, np.int64) for _, y in sets]) if sets
                   else np.zeros(0, np.int64))

    @classmethod
    def perturbations(cls, sets) -> "Changes":
        """Change j gives the points ``sets[j][0]`` [m_j] the input rows ``sets[j][1]``
        [m_j, d_a] (active features, model units)."""
        sets = list(sets)
        owner = [np.full(len(i), j, dtype=np.int64) for j, (i, _) in enumerate(sets)]
        rows = [np.asarray(r, dtype=np.float64).reshape(len(i), -1) for i, r in sets]
        return cls(np.full(len(sets), -1, dtype=np.int64),
                   perturb_change=np.concatenate(owner) if owner else np.zeros(0, np.int64),
                   perturb_index=np.concatenate([np.asarray(i, np.int64) for i, _ in sets])
                   if sets else np.zeros(0, np.int64),
                   perturb_rows=np.concatenate(rows) if rows else None)

    @property
    def perturbs(self) -> bool:
        return bool(len(self.perturb_index))

    def select(self, rows) -> "Changes":
        """The changes ``rows`` (in that order), renumbered 0..len(rows)−1."""
        rows = np.asarray(rows, dtype=np.int64)
        where = {int(j): i for i, j in enumerate(rows)}
        keep = np.isin(self.relabel_change, rows)
        kept = Changes(self.removed[rows],
                       np.array([where[int(j)] for j in self.relabel_change[keep]],
                                dtype=np.int64),
                       self.relabel_index[keep], self.relabel_label[keep])
        if self.perturbs:
            mine = np.flatnonzero(np.isin(self.perturb_change, rows))
            kept.perturb_change = np.array([where[int(j)] for j in self.perturb_change[mine]],
                                           dtype=np.int64)
            kept.perturb_index = self.perturb_index[mine]
            kept.perturb_rows = self.perturb_rows[mine]
        return kept

    def perturbed(self, j: int):
        """(indices [m], new rows [m, d_a]) that change ``j`` perturbs."""
        mine = self.perturb_change == j
        if not mine.any():
            return np.zeros(0, np.int64), None
        return self.perturb_index[mine], self.perturb_rows[mine]

    def labels(self, y: np.ndarray, j: int) -> np.ndarray:
        """The training labels of change ``j`` (``y`` with its relabellings)."""
        out = np.array(y, dtype=np.int64, copy=True)
        mine = self.relabel_change == j
        out[self.relabel_index[mine]] = self.relabel_label[mine]
        return out



class Chunk:
    """The tensors of a batch of :class:`Changes` on the problem's device: the removed
    points (index 0 and a zero input where a change removes none, so that one vectorised
    formula serves both), the denominators S_j, and each change's relabelling correction
    Σ (e_y − e_y') ⊗ x_i [k, C, d_a] with its norm and rounding bound."""

    def __init__(self, problem, changes: Changes):
        self.changes = changes
        self.k = k = len(changes)
        device = problem.device
        removed = np.asarray(changes.removed, dtype=np.int64)
        has = removed >= 0
        index = np.where(has, removed, 0)
        self.removed = problem.index(index)
        self.removed_np = removed
        self.has_removal = torch.as_tensor(has.astype(np.float64), device=device)
        xz = problem.design.rows(index).to(device)
        if not has.all():
            xz = xz * self.has_removal[:, None]
        self.xz = xz
        self.denominator = problem.n - self.has_removal
        self.relabels = bool(len(changes.relabel_index))
        self.perturbs = changes.perturbs
        self.corrected = self.relabels or self.perturbs  # base gradients carry a correction
        self.correction = torch.zeros(k if self.corrected else 1, problem.classes,
                                      problem.design.width, dtype=torch.float64, device=device)
        self.correction_norm = torch.zeros(k, dtype=torch.float64, device=device)
        self.correction_error = torch.zeros(k, dtype=torch.float64, device=device)
        if self.perturbs:
            self._perturbations(problem, changes)
        if not self.relabels:
            if self.perturbs:
                self.correction_norm = self.correction.reshape(k, -1).norm(dim=1)
            return
        y_old = problem.y_np[changes.relabel_index]
        same = y_old == changes.relabel_label
        for j in range(k):
            mine = (changes.relabel_change == j) & ~same
            if not mine.any():
                continue
            index_j = changes.relabel_index[mine]
            d = np.zeros((index_j.size, problem.classes))
            d[np.arange(index_j.size), y_old[mine]] += 1.0
            d[np.arange(index_j.size), changes.relabel_label[mine]] -= 1.0
            rows = problem.design.rows(index_j).to(device)
            self.correction[j] += torch.as_tensor(d, device=device).T @ rows
            self.correction_error[j] += (bounds.SAFETY * bounds.gamma(index_j.size + 1)
                                        * math.sqrt(2.0)
                                        * bounds.fsum(problem.row_norms[index_j]))
        self.correction_norm = self.correction.reshape(k, -1).norm(dim=1)

    def _perturbations(self, problem, changes: Changes) -> None:
        """The perturbed rows of each change, padded to B per change with zero rows (which
        contribute nothing): old and new inputs ``x_old``/``x_new`` [k, B, d_a], their
        probabilities at Ŵ ``p_old``/``p_new`` [k, B, C] and bounds on those (1-norm,
        ``p_old_error``/``p_new_error`` [k, B]); and each change's correction of its base
        gradient, Σ_b (p'_b − e_y) ⊗ x'_b − (p_b − e_y) ⊗ x_b, added to :attr:`correction`
        with a bound on its rounding (the residuals' own bounds times ‖x‖, one rounding per
        product, the stored old inputs' rounding u‖x‖, and the sum of 2B terms)."""
        device = problem.device
        k, c = self.k, problem.classes
        owner = changes.perturb_change
        counts = np.bincount(owner, minlength=k)
        b = int(counts.max())
        slot = np.zeros(len(owner), dtype=np.int64)
        for j in range(k):
            slot[owner == j] = np.arange(counts[j])
        width = problem.design.width
        self.x_old = torch.zeros(k, b, width, dtype=torch.float64, device=device)
        self.x_new = torch.zeros_like(self.x_old)
        index = changes.perturb_index
        at = (torch.as_tensor(owner, device=device), torch.as_tensor(slot, device=device))
        self.x_old[at] = problem.design.rows(index).to(device)
        self.x_new[at] = torch.as_tensor(changes.perturb_rows, dtype=torch.float64,
                                         device=device)
        y = torch.zeros(k, b, dtype=torch.int64, device=device)
        y[at] = problem.y[problem.index(index)]
        self.p_old = torch.full((k, b, c), 1.0 / c, dtype=torch.float64, device=device)
        self.p_old[at] = problem.p0[problem.index(index)]
        self.p_old_error = torch.zeros(k, b, dtype=torch.float64, device=device)
        self.p_old_error[at] = problem.row_error[problem.index(index)]
        logits = self.x_new @ problem.weight.T  # [k, B, C]
        logit_error = bounds.SAFETY * bounds.gamma(width + 1) * (
            self.x_new.abs() @ problem.weight.abs().T).amax(dim=2)
        self.new_logit_error = logit_error  # [k, B]
        self.p_new = torch.softmax(logits, dim=2)
        self.p_new_error = bounds.softmax_rounding(
            self.p_new.reshape(-1, c), logits.reshape(-1, c),
            logit_error.reshape(-1)).reshape(k, b)
        self.old_norms = self.x_old.norm(dim=2) * (1 + bounds.gamma(width + 2))
        self.new_norms = self.x_new.norm(dim=2) * (1 + bounds.gamma(width + 2))
        r_new, r_old = self.p_new.clone(), self.p_old.clone()
        onehot = torch.nn.functional.one_hot(y, c).to(torch.float64)
        r_new -= onehot
        r_old -= onehot
        terms = (torch.einsum("kbc,kbd->kcd", r_new, self.x_new)
                 - torch.einsum("kbc,kbd->kcd", r_old, self.x_old))
        self.correction += terms
        sizes = (r_new.abs().sum(dim=2) * self.new_norms
                 + r_old.abs().sum(dim=2) * self.old_norms)  # Σ ‖r‖₁‖x‖ ≥ Σ ‖r ⊗ x‖_F
        self.correction_error += bounds.SAFETY * (
            (self.p_new_error * self.new_norms + self.p_old_error * self.old_norms).sum(dim=1)
            + (2 * bounds.UNIT_ROUNDOFF + bounds.gamma(2 * b + 1)) * sizes.sum(dim=1))

    def perturbation_terms(self, problem, rows, deltas: torch.Tensor):
        """Σ_b δp'_b ⊗ x'_b − δp_b ⊗ x_b [k', C, d_a] for the changes ``rows`` at offsets
        ``deltas`` (delta form, as the pass over the unchanged rows), and a bound on its
        rounding [k']: per row, κ·‖Δ‖_row·‖x‖² (u = x·Δ and δp from it, as the removed
        point's own term of :func:`~infl_cli.numerics.bounds.delta_pass_rounding`, with t the
        largest computed |u| enlarged by its rounding), 3u·‖δp‖₁‖x‖ (the products, and adding
        the sum to the pass's), and γ_{2B+1} of the sum. The old rows' δp come from the same
        probabilities at Ŵ as the pass over all rows (so the two cancel as they should); the
        new rows' from p̂' = softmax of logits off by at most δl, so p̂' + δp̂' is within
        2‖δl‖_∞ of the exact softmax(l' + u) in 1-norm, on top of p̂''s own error charged in
        the base correction: 4‖δl‖_∞‖x'‖ per row."""
        x_new, x_old = self.x_new[rows], self.x_old[rows]
        u_new = torch.einsum("kbd,kcd->kbc", x_new, deltas)
        u_old = torch.einsum("kbd,kcd->kbc", x_old, deltas)
        dp_new = delta_probs(self.p_new[rows], u_new)
        dp_old = delta_probs(self.p_old[rows], u_old)
        terms = (torch.einsum("kbc,kbd->kcd", dp_new, x_new)
                 - torch.einsum("kbc,kbd->kcd", dp_old, x_old))
        row_max = deltas.norm(dim=2).max(dim=1).values  # [k']
        nn, no = self.new_norms[rows], self.old_norms[rows]
        cauchy = torch.maximum(nn.amax(dim=1), no.amax(dim=1)) * row_max  # |u| ≤ ‖x‖‖Δ_c‖
        measured = torch.maximum(u_new.abs().amax(dim=(1, 2)), u_old.abs().amax(dim=(1, 2)))
        exponent = torch.minimum(cauchy, bounds.SAFETY * (
            measured + bounds.gamma(deltas.shape[2] + 1) * cauchy))
        c = deltas.shape[1]
        kappa = (2 * bounds.gamma(deltas.shape[2] + 1)
                 + 2 * bounds.gamma(c + 5 + bounds.FUNCTION_ROUNDING) * exponent.exp())
        square = (nn.square() + no.square()).sum(dim=1)
        products = (dp_new.abs().sum(dim=2) * nn + dp_old.abs().sum(dim=2) * no).sum(dim=1)
        base = 4 * (self.new_logit_error[rows] * nn).sum(dim=1)
        b = x_new.shape[1]
        rounding = bounds.SAFETY * (kappa * row_max * square
                                    + (3 * bounds.UNIT_ROUNDOFF + bounds.gamma(2 * b + 1))
                                    * products + base)
        return terms, rounding
