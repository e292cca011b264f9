"""Where the numbers are computed: ``--device auto|cpu|cuda|cuda:N``.

``auto`` takes the first CUDA device when torch sees one, and the CPU otherwise. A stage
computes on its device and writes its artifacts from the CPU (safetensors of CPU tensors), so
a model trained on a GPU is scored on a CPU and the other way round; the device used is
recorded in each artifact's record, in ``metrics.json`` and in ``timings.json``.

Every certified figure is computed in float64, which GPUs implement as IEEE binary64 (see
:mod:`~infl_cli.numerics.bounds` for why the bounds hold there). The float32 work (LOO's correction
pass and preconditioner) only steers iterations that float64 passes then certify; TF32, which
would silently round float32 products to 10 mantissa bits, is turned off for it all the same,
and :func:`check_precision` asserts that it is off before any stage computes.
"""

from __future__ import annotations

import re

import torch

from infl_cli.errors import BadInput

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def available() -> list[str]:
    """The devices this process can use, by name."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return names


def resolve(spec: str | None) -> torch.device:
    """The device that ``--device`` names (None: auto); a malformed name, or a device that is
    not there, is a one-line :class:`BadInput` (the latter naming the devices that are)."""
    from infl_cli.settings import check_device_name

    spec = check_device_name(spec)
    have = available()
    if spec == "auto":
        return torch.device("cuda:0" if len(have) > 1 else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if len(have) == 1:
        raise BadInput(f"--device {spec}: torch sees no CUDA device here (torch "
                       f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                       f"available here: {', '.join(have)}")
    index = int(_CUDA.match(spec).group(1) or 0)
    if f"cuda:{index}" not in have:
        raise BadInput(f"--device {spec}: there is no CUDA device {index}; available here: "
                       f"{', '.join(have)}")
    return torch.device(f"cuda:{index}")


def check_precision() -> None:
    """Turn off every reduced-precision shortcut torch may take for float32 products and
    convolutions (TF32) and assert that they are off."""
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    assert torch.get_float32_matmul_precision() == "highest"
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def describe(device: torch.device) -> str:
    """``cpu`` or e.g. ``cuda:0 (NVIDIA H200)``, for tables and records."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak memory torch allocated on a CUDA device since :func:`reset_peak` (None on the CPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2 ** 30
