"""Embeddings from a frozen network, for a certified logistic head on top of it (the paper's
dog-vs-fish setting): ``features(module, inputs)`` → float64 [N, D], ready for
``Dataset.from_arrays``."""

from __future__ import annotations

import numpy as np

from infl_cli.errors import BadInput


def features(module, inputs, batch_size: int = 256) -> np.ndarray:
    """Run the frozen ``module`` (a ``torch.nn.Module``) over ``inputs`` in eval mode under
    ``torch.no_grad``, ``batch_size`` at a time, on the device of its parameters; returns its
    outputs flattened to float64 [N, D]. ``inputs``: a tensor or array [N, ...], or an
    iterable of batches such as a ``DataLoader`` (of tensors, or of tuples whose first item is
    the input). The module's train/eval mode is restored afterwards."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise BadInput(f"features: module must be a torch.nn.Module, got {type(module).__name__}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise BadInput(f"features: batch_size must be an integer ≥ 1, got {batch_size!r}")
    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = module.training
    module.eval()
    out = []
    try:
        with torch.no_grad():
            for batch in _batches(inputs, batch_size):
                x = batch.to(device=device, dtype=dtype if batch.is_floating_point() else None)
                y = module(x)
                if not isinstance(y, torch.Tensor):
                    raise BadInput(f"features: the module returned a {type(y).__name__}, not a "
                                   "tensor")
                out.append(y.reshape(y.shape[0], -1).to("cpu", torch.float64))
    finally:
        module.train(was_training)
    if not out:
        raise BadInput("features: no inputs")
    return torch.cat(out).numpy()


def _batches(inputs, batch_size: int):
    import torch

    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        x = torch.as_tensor(inputs)
        if x.ndim < 1 or x.shape[0] == 0:
            raise BadInput(f"features: inputs must be [N, ...] with N ≥ 1, got {list(x.shape)}")
        for start in range(0, x.shape[0], batch_size):
            yield x[start:start + batch_size]
        return
    try:
        batches = iter(inputs)
    except TypeError:
        raise BadInput(f"features: inputs must be a tensor, an array or an iterable of "
                       f"batches (a DataLoader), got {type(inputs).__name__}") from None
    for batch in batches:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        yield torch.as_tensor(batch)
