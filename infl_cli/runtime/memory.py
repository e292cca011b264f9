"""Will it fit? Memory estimates for the dense-Hessian paths, checked before they start.

The exact paths hold the (C·d_a)² Hessian over the C classes and the d_a features active in
the training data: ``ihvp --solver exact`` in float64 (its Cholesky factor too), and LOO's
``--method newton`` in float32 (its explicit inverse). A problem too large for memory is
refused in one line that names the memory needed and the options that still run, instead of
swapping for hours or being killed.

**The budget.** Every check compares with one budget: ``$INFL_MEMORY_GB`` when set, else 90 %
of the memory available when the command starts (Linux ``MemAvailable``). Besides the dense
Hessians, each heavy step of the logistic model estimates its whole peak from n, d, K and the
test points (:mod:`~infl_cli.engines.logreg.footprint`) and refuses up front, in one line,
before it writes anything.
"""

from __future__ import annotations

import os

from infl_cli.errors import BadInput

BUDGET_ENV = "INFL_MEMORY_GB"

# peak of forming and factoring a dense Hessian: the Gram blocks and the assembled matrix,
# then the matrix and its factor (or its inverse) side by side (linalg.HessianFactor)
HESSIAN_COPIES = 2.5
HEADROOM = 0.9  # use at most this fraction of the memory available
# the temporaries of one blocked pass over the training rows (a block of [rows, ·] arrays):
# a fixed workspace, so that memory no longer grows with n for what a pass computes
PASS_BYTES = 256 * 2 ** 20


def rows_per_pass(bytes_per_row: float, n: int, block_bytes: float | None = None,
                  minimum: int = 1024) -> int:
    """Rows per block of a pass whose temporaries take ``bytes_per_row`` per row: the whole
    of ``n`` where it fits :data:`PASS_BYTES` (one block: the unblocked sums, bit for bit),
    else blocks of ``block_bytes`` (default :data:`PASS_BYTES`), at least ``minimum`` rows."""
    if n * float(bytes_per_row) <= PASS_BYTES:
        return max(1, n)
    rows = int((block_bytes or PASS_BYTES) // max(float(bytes_per_row), 1.0))
    return max(1, min(n, max(minimum, rows)))


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


def budget_bytes() -> tuple[float | None, str]:
    """(bytes a command may use, where that figure comes from): ``$INFL_MEMORY_GB``, else
    :data:`HEADROOM` of the memory available; (None, …) when neither is known."""
    given = os.environ.get(BUDGET_ENV, "").strip()
    if given:
        try:
            value = float(given)
        except ValueError:
            raise BadInput(f"${BUDGET_ENV} is {given!r}; give the memory budget in GB, "
                           "e.g. 16") from None
        if not value > 0:
            raise BadInput(f"${BUDGET_ENV} is {given}; the memory budget must be positive")
        return value * 2 ** 30, f"the budget ${BUDGET_ENV}={given}"
    available = available_bytes()
    if available is None:
        return None, "unknown"
    return HEADROOM * available, f"{HEADROOM:.0%} of the {gib(available)} available"


def require(needed: float, what: str, alternatives: str) -> None:
    """Refuse in one line when ``needed`` bytes exceed the budget (:func:`budget_bytes`)."""
    budget, source = budget_bytes()
    if budget is not None and needed > budget:
        raise BadInput(f"{what} needs about {gib(needed)} of memory, more than {source} "
                       f"({gib(budget)}); {alternatives}")


def _require(needed: float, what: str, alternatives: str, available: int | None) -> None:
    if available is None:
        require(needed, what, alternatives)
    elif needed > HEADROOM * available:
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
    budget, _ = budget_bytes()
    return budget is None or gram_bytes(width) <= budget


def require_gram(width: int, what: str, alternatives: str,
                 available: int | None = None) -> None:
    """Refuse when a float32 width × width Gram matrix and its eigenvectors would not fit."""
    _require(gram_bytes(width), f"{what} (a {width:,} × {width:,} Gram matrix)", alternatives,
             available)
