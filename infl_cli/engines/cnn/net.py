"""Koh & Liang's All-CNN-C ("8 units") as a pure function of one flat parameter vector.

Input 1×28×28 (MNIST pixels / 255); six convolutions with valid padding, each followed by
tanh: 3×3 1→w stride 1; 3×3 w→w stride 2; 3×3 w→w stride 1; 3×3 w→w stride 2; 3×3 w→w
stride 1; 1×1 w→10 stride 1; the mean over the remaining 2×2 positions; a dense layer 10→10
with bias gives the logits. Width w = 8 is the paper's net, 2,616 parameters; w = 2 has 312.

Parameters live in one flat vector θ [P] (``layout`` says where each tensor sits), so that
every derivative is a plain vector: torch.func's ``grad``, ``jvp`` and ``vmap`` apply to
:func:`logits` directly, also with a batch of parameter vectors (many retrainings at once).
Weight decay applies to the weights only (``decay_mask``), as in the authors' code.

One direction of θ changes nothing: adding c·(1, …, 1) to the dense bias shifts every logit
by c, which the softmax ignores, and no weight decay holds that bias. So the loss is flat along
u = (1, …, 1)/√10 on the dense bias for every θ, every gradient is orthogonal to u, and every
Hessian has H·u = 0: an exact zero eigenvalue that is a symmetry of the paper's net, not a
property of any minimum (``null_directions``). The engine works on the complement of u:
spectra, solves and Newton steps there (a fixed "gauge"); predictions and test losses do not
depend on it.
Initialisation: weights from a normal truncated at 2 standard deviations, std 2/√(fan-in)
(dense layer: 1/√10), biases 0, from a seeded generator.

"small MNIST" (:func:`small_mnist_indices`): the authors' 5,500 training points, the first
5,500 of ``np.random.seed(0); perm = np.arange(55000); np.random.shuffle(perm)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from infl_cli.data.dataset import SMALL_MNIST, small_mnist_indices  # noqa: F401 (the CNN's training set)
from infl_cli.engines.cnn import autodiff
from infl_cli.errors import InflError

CLASSES = 10
DEFAULT_TEST = 6558  # the paper's test point for this panel


@dataclass(frozen=True)
class Layer:
    name: str
    shape: tuple
    decayed: bool  # weight decay applies (weights, not biases)
    init_std: float | None  # None: zeros


@dataclass(frozen=True)
class Architecture:
    """All-CNN-C of width ``width`` (module doc)."""

    width: int = 8

    @cached_property
    def layers(self) -> tuple:
        w = self.width
        convs = [(1, w, 3), (w, w, 3), (w, w, 3), (w, w, 3), (w, w, 3), (w, CLASSES, 1)]
        out = []
        for i, (cin, cout, k) in enumerate(convs, start=1):
            out.append(Layer(f"conv{i}.weight", (cout, cin, k, k), True,
                             2.0 / math.sqrt(cin * k * k)))
            out.append(Layer(f"conv{i}.bias", (cout,), False, None))
        out.append(Layer("dense.weight", (CLASSES, CLASSES), True, 1.0 / math.sqrt(CLASSES)))
        out.append(Layer("dense.bias", (CLASSES,), False, None))
        return tuple(out)

    @cached_property
    def layout(self) -> dict:
        """name → (offset, shape) in the flat vector."""
        offset, out = 0, {}
        for layer in self.layers:
            out[layer.name] = (offset, layer.shape)
            offset += math.prod(layer.shape)
        return out

    @property
    def n_params(self) -> int:
        return sum(math.prod(layer.shape) for layer in self.layers)

    def decay_mask(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """M [P]: 1 on weights, 0 on biases."""
        mask = torch.zeros(self.n_params, dtype=dtype, device=device)
        for layer in self.layers:
            offset, shape = self.layout[layer.name]
            if layer.decayed:
                mask[offset:offset + math.prod(shape)] = 1
        return mask

    def null_directions(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """U [P, 1]: the unit vector along which every loss of the net is constant (the
        dense bias's shift, module doc)."""
        u = torch.zeros((self.n_params, 1), dtype=dtype, device=device)
        offset, shape = self.layout["dense.bias"]
        u[offset:offset + shape[0], 0] = 1.0 / math.sqrt(shape[0])
        return u

    def init(self, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
        """θ₀ [P]: truncated-normal weights, zero biases (module doc)."""
        gen = torch.Generator().manual_seed(seed)
        theta = torch.zeros(self.n_params, dtype=torch.float64)
        for layer in self.layers:
            if layer.init_std is None:
                continue
            offset, shape = self.layout[layer.name]
            size = math.prod(shape)
            values = torch.empty(size, dtype=torch.float64)
            torch.nn.init.trunc_normal_(values, std=layer.init_std, a=-2 * layer.init_std,
                                        b=2 * layer.init_std, generator=gen)
            theta[offset:offset + size] = values
        return theta.to(dtype)

    def unflatten(self, theta: torch.Tensor) -> dict:
        """name → tensor views of θ [..., P] (leading batch dimensions kept)."""
        lead = theta.shape[:-1]
        return {name: theta[..., offset:offset + math.prod(shape)].reshape(*lead, *shape)
                for name, (offset, shape) in self.layout.items()}

    def logits(self, theta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Logits [b, 10] for one parameter vector θ [P] and images [b, 1, 28, 28]."""
        p = self.unflatten(theta)
        h = images
        strides = (1, 2, 1, 2, 1, 1)
        for i, stride in enumerate(strides, start=1):
            h = torch.tanh(F.conv2d(h, p[f"conv{i}.weight"], p[f"conv{i}.bias"], stride=stride))
        pooled = h.mean(dim=(2, 3))  # [b, 10]: the mean over the remaining 2×2 positions
        return pooled @ p["dense.weight"].T + p["dense.bias"]


def images(x: torch.Tensor) -> torch.Tensor:
    """Flat MNIST inputs [n, 784] (pixels / 255) as images [n, 1, 28, 28]."""
    return x.reshape(x.shape[0], 1, 28, 28)


def architecture_of(theta: torch.Tensor) -> Architecture:
    """The architecture a parameter vector belongs to (its width, from its length)."""
    p = theta.shape[-1]
    for width in range(1, 257):
        arch = Architecture(width)
        if arch.n_params == p:
            return arch
    raise InflError(f"no All-CNN-C width has {p} parameters")


def activations(arch: Architecture) -> int:
    w = arch.width
    return 784 + w * (26 * 26 + 12 * 12 + 10 * 10 + 4 * 4 + 2 * 2) + CLASSES * 4


def objective(arch: Architecture, data, wd: float, dtype=torch.float64):
    return autodiff.Objective(arch.logits, images(data.x_train).to(dtype), data.y_train,
                              wd, arch.decay_mask(dtype, data.device), activations(arch))
