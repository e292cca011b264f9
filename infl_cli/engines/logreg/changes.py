"""What the certified retraining core retrains: a batch of changes of the training
objective (:class:`Changes`: leave-one-out removals, label fixes, or both at once), and a
chunk of them as a problem's passes need them (:class:`Chunk`: the removed rows and the
relabelling corrections of ∇R_j(Ŵ), with proven bounds on their rounding)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from infl_cli.numerics import bounds


@dataclass
class Changes:
    """A batch of k changes of the training objective, each certified alike (the shared
    retraining core: leave-one-out, label fixes, and both at once). Change j removes at most
    one point, ``removed[j]`` (−1: none), and gives the points ``relabel_index`` of entries with
    ``relabel_change == j`` the labels ``relabel_label``; its objective is

        R_j(W) = (1/S_j)·Σ_{i ≠ removed[j]} CE(x_i, y'_i; W) + (wd/2)·‖W‖²,  S_j = n − [removed],

    wd-strongly convex whatever the change, so every certificate holds for it."""

    removed: np.ndarray
    relabel_change: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    relabel_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    relabel_label: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

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

    def select(self, rows) -> "Changes":
        """The changes ``rows`` (in that order), renumbered 0..len(rows)−1."""
        rows = np.asarray(rows, dtype=np.int64)
        where = {int(j): i for i, j in enumerate(rows)}
        keep = np.isin(self.relabel_change, rows)
        return Changes(self.removed[rows],
                       np.array([where[int(j)] for j in self.relabel_change[keep]],
                                dtype=np.int64),
                       self.relabel_index[keep], self.relabel_label[keep])

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
        self.correction = torch.zeros(k if self.relabels else 1, problem.classes,
                                      problem.design.width, dtype=torch.float64, device=device)
        self.correction_norm = torch.zeros(k, dtype=torch.float64, device=device)
        self.correction_error = torch.zeros(k, dtype=torch.float64, device=device)
        if not self.relabels:
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
            self.correction[j] = torch.as_tensor(d, device=device).T @ rows
            self.correction_error[j] = (bounds.SAFETY * bounds.gamma(index_j.size + 1)
                                        * math.sqrt(2.0)
                                        * bounds.fsum(problem.row_norms[index_j]))
        self.correction_norm = self.correction.reshape(k, -1).norm(dim=1)
