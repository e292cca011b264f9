"""Derivatives of a training objective by automatic differentiation (torch.func), for any
model given as a pure function ``logits(θ, inputs)`` of a flat parameter vector θ [P].

R(θ) = (1/n)·Σ_i CE(z_i, θ) + (wd/2)·‖M ⊙ θ‖²  (M: the weight-decay mask, 1 on decayed
parameters), the same convention as the logistic model with L(z, θ) = CE + (wd/2)‖M⊙θ‖².
Every full-data quantity is a sum over batches of rows, whose size follows the device's free
memory (``torch.cuda.mem_get_info``) and the model's activation size, so the same code runs on
a 24 GB card, an 80–141 GB one and the CPU:

* :meth:`Objective.value_and_grad` R and ∇R;
* :meth:`Objective.hvp` H·v for k vectors at once (``vmap`` over ``jvp`` of ``grad``);
* :meth:`Objective.hessian` the exact P × P Hessian, HVPs of the identity's columns in
  chunks;
* :meth:`Objective.example_grads` per-example ∇CE [b, P] (``vmap`` of ``grad``);
* :meth:`Objective.example_hessian` one example's ∇²CE [P, P].
"""

from __future__ import annotations

import copy

import torch
from torch.func import grad, jvp, vmap

MEMORY_FRACTION = 0.4  # a batch's temporaries take at most this share of the free memory
TAPE_FACTOR = 12        # floats kept per activation by a jvp-of-grad (forward, tangents, grads)
CPU_ROWS = 1024         # rows per batch on the CPU


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example CE [b] from logits [b, C] and labels [b]."""
    return torch.logsumexp(logits, dim=1) - logits.gather(1, y[:, None])[:, 0]


class Objective:
    """R(θ) over the training inputs ``x`` [n, ...] and labels ``y`` [n] (module doc).

    ``logits(θ, x_batch)`` is the model; ``activations`` the number of activation values one
    input produces (for batch sizes); ``mask`` M [P]; tensors on one device."""

    def __init__(self, logits, x: torch.Tensor, y: torch.Tensor, wd: float, mask: torch.Tensor,
                 activations: int):
        self.logits, self.x, self.y = logits, x, y
        self.wd, self.mask = float(wd), mask
        self.n = int(y.shape[0])
        self.activations = int(activations)
        self.device = x.device
        self.weights = None  # per-example weights of the data term (None: the plain mean)

    def reweighted(self, weights: torch.Tensor) -> "Objective":
        """The same objective with the weighted mean Σ w_i CE_i / Σ w_i as its data term
        (leave-one-out: w_z = 0) in every value, gradient, HVP and Hessian."""
        out = copy.copy(self)
        out.weights = weights
        return out

    # ---------------------------------------------------------------------------- batches
    def rows(self, vectors: int = 1) -> int:
        """Rows per batch when ``vectors`` tangents are carried at once."""
        if self.device.type != "cuda":
            return max(1, CPU_ROWS // max(1, vectors // 8))
        free, _ = torch.cuda.mem_get_info(self.device)
        per_row = TAPE_FACTOR * self.activations * self.x.element_size() * max(1, vectors)
        return int(max(1, min(self.n, MEMORY_FRACTION * free // per_row)))

    def batches(self, vectors: int = 1):
        step = self.rows(vectors)
        for lo in range(0, self.n, step):
            yield self.x[lo:lo + step], self.y[lo:lo + step]

    # ---------------------------------------------------------------------------- values
    def ce_sum(self, theta: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return cross_entropy(self.logits(theta, xb), yb).sum()

    def regulariser(self, theta: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.wd * (self.mask * theta).square().sum(dim=-1)

    def value_and_grad(self, theta: torch.Tensor, weights: torch.Tensor | None = None):
        """(R(θ), ∇R(θ)); with per-example ``weights`` [n] the data term is the weighted mean
        Σ w_i CE_i / Σ w_i (leave-one-out: w_z = 0)."""
        weights = self.weights if weights is None else weights
        total = torch.zeros((), dtype=theta.dtype, device=theta.device)
        g = torch.zeros_like(theta)
        lo = 0
        for xb, yb in self.batches():
            hi = lo + yb.shape[0]
            wb = None if weights is None else weights[lo:hi]

            def loss(t, xb=xb, yb=yb, wb=wb):
                ce = cross_entropy(self.logits(t, xb), yb)
                return ce.sum() if wb is None else (wb * ce).sum()

            gb, vb = _grad_and_value(loss, theta)
            g += gb
            total += vb
            lo = hi
        count = self.n if weights is None else weights.sum()
        return total / count + self.regulariser(theta), g / count + self.wd * self.mask * theta

    def hvp(self, theta: torch.Tensor, vectors: torch.Tensor,
            weights: torch.Tensor | None = None) -> torch.Tensor:
        """H v for v [k, P] (or [P]): the data Hessian's products summed over batches, / n
        (or the weighted mean), + wd·M⊙v."""
        weights = self.weights if weights is None else weights
        single = vectors.dim() == 1
        v = vectors[None] if single else vectors
        out = torch.zeros_like(v)
        lo = 0
        for xb, yb in self.batches(v.shape[0]):
            hi = lo + yb.shape[0]
            wb = None if weights is None else weights[lo:hi]

            def loss(t, xb=xb, yb=yb, wb=wb):
                ce = cross_entropy(self.logits(t, xb), yb)
                return ce.sum() if wb is None else (wb * ce).sum()

            gradient = grad(loss)
            out += vmap(lambda u: jvp(gradient, (theta,), (u,))[1])(v)
            lo = hi
        count = self.n if weights is None else weights.sum()
        out = out / count + self.wd * self.mask * v
        return out[0] if single else out

    def hessian(self, theta: torch.Tensor, chunk: int = 64, on_chunk=None,
                first_rows: torch.Tensor | None = None) -> torch.Tensor:
        """The exact Hessian [P, P] from P HVPs with the identity's columns, ``chunk`` at a
        time (fewer when the device's memory is short); symmetrised (its two triangles differ
        by rounding only). ``first_rows``: H's first rows, already computed."""
        p = theta.shape[0]
        h = torch.empty((p, p), dtype=theta.dtype, device=theta.device)
        eye = torch.eye(p, dtype=theta.dtype, device=theta.device)
        done = 0 if first_rows is None else first_rows.shape[0]
        if done:
            h[:done] = first_rows
        for lo in range(done, p, chunk):
            h[lo:lo + chunk] = self.hvp(theta, eye[lo:lo + chunk])
            if on_chunk is not None:
                on_chunk(min(lo + chunk, p))
        return 0.5 * (h + h.T)

    def example_grads(self, theta: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor):
        """∇CE(z_i, θ) for each example of a batch: [b, P] (no regulariser)."""
        def one(x1, y1):
            return grad(lambda t: cross_entropy(self.logits(t, x1[None]), y1[None])[0])(theta)

        return vmap(one)(xb, yb)

    def all_example_grads(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
        """:meth:`example_grads` over many examples, in batches: [m, P]."""
        step = self.rows(8)
        return torch.cat([self.example_grads(theta, x[lo:lo + step], y[lo:lo + step])
                          for lo in range(0, x.shape[0], step)])

    def example_hessian(self, theta: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor,
                        chunk: int = 256) -> torch.Tensor:
        """∇²CE(z, θ) [P, P] of one example (P HVPs on one input: cheap), symmetrised."""
        def ce(t):
            return cross_entropy(self.logits(t, x1[None]), y1[None])[0]

        gradient = grad(ce)
        p = theta.shape[0]
        eye = torch.eye(p, dtype=theta.dtype, device=theta.device)
        h = torch.cat([vmap(lambda u: jvp(gradient, (theta,), (u,))[1])(eye[lo:lo + chunk])
                       for lo in range(0, p, chunk)])
        return 0.5 * (h + h.T)


def _grad_and_value(loss, theta):
    from torch.func import grad_and_value

    return grad_and_value(loss)(theta)
