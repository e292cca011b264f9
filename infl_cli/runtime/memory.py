"""Will it fit? Memory estimates for the dense-Hessian paths, checked before they start.

The exact paths hold the (C·d_a)² Hessian over the C classes and the d_a features active in
the training data: ``ihvp --solver exact`` in float64 (its Cholesky factor too), and LOO's
``--method newton`` in float32 (its explicit inverse). A problem too large for memory is
refused in one line that names the memory needed and the options that still run, instead of
swapping for hours or being killed.
"""

from __future__ import annotations

import os

from infl_cli.errors import BadInput

# peak of forming and factoring a dense Hessian: the Gram blocks and the assembled matrix,
# then the matrix and its factor (or its inverse) side by side (linalg.HessianFactor)
HESSIAN_COPIES = 2.5
HEADROOM = 0.9  # use at most this fraction of the memory available


def available_bytes() -> int | None:
    """Memory the process can still take (Linux ``MemAvailable``; else free physical pages);
    None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2 ** 30:.1f} GiB"


def hessian_bytes(classes: int, width: int, itemsize: int) -> float:
    """Peak bytes to form and factor the dense Hessian over ``classes`` × ``width``."""
    return HESSIAN_COPIES * float(classes * width) ** 2 * itemsize


def _require(needed: float, what: str, alternatives: str, available: int | None) -> None:
    available = available_bytes() if available is None else available
    if available is not None and needed > HEADROOM * available:
        raise BadInput(f"{what} needs about {gib(needed)} of memory, more than the "
                        f"{gib(available)} available; {alternatives}")


def require_hessian(classes: int, width: int, itemsize: int, what: str, alternatives: str,
                    available: int | None = None) -> None:
    """Refuse (one line) when the dense (classes·width)² Hessian would not fit."""
    _require(hessian_bytes(classes, width, itemsize), f"{what} (the {classes * width:,} × "
             f"{classes * width:,} Hessian)", alternatives, available)


def gram_bytes(width: int) -> float:
    """Peak bytes of a float32 width × width Gram matrix and its eigendecomposition."""
    return 3.0 * float(width) ** 2 * 4


def gram_fits(width: int) -> bool:
    available = available_bytes()
    return available is None or gram_bytes(width) <= HEADROOM * available


def require_gram(width: int, what: str, alternatives: str,
                 available: int | None = None) -> None:
    """Refuse when a float32 width × width Gram matrix and its eigenvectors would not fit."""
    _require(gram_bytes(width), f"{what} (a {width:,} × {width:,} Gram matrix)", alternatives,
             available)
