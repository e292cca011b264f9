"""How many threads a command computes on: the cores this process may use, less those other
processes are busy on at the start, never fewer than one; ``$INFL_THREADS`` sets it.

Why: torch's and OpenBLAS's thread pools assume the cores are theirs. On a machine where
another job keeps the cores busy, a second thread of ours only waits for its turn at every
one of thousands of small parallel regions (measured on 2 cores with two busy loops beside
it: LiSSA on mnist-tiny 22–25 s with two threads, 5–9 s with one), while on an idle machine
two threads are as fast or faster. So the count is chosen once, when ``infl_cli`` is first
imported (before NumPy or torch load and read it), from the number of tasks the kernel has
runnable at that moment (``/proc/loadavg``), and handed to both libraries through
``OMP_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS``, unless the user set those. Stdlib only.
"""

from __future__ import annotations

import os
import time

THREADS_ENV = "INFL_THREADS"
LIBRARY_ENVS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_elsewhere(samples: int = 5, interval: float = 0.002) -> int:
    """Tasks runnable besides this one (the median of a few looks at ``/proc/loadavg``'s
    running count); 0 where the kernel does not say."""
    seen = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as fh:
                running = int(fh.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        seen.append(max(running - 1, 0))
        if i + 1 < samples:
            time.sleep(interval)
    return sorted(seen)[len(seen) // 2]


def choose() -> int:
    """``$INFL_THREADS`` when set (≥ 1); else the free cores, at least one."""
    given = os.environ.get(THREADS_ENV, "").strip()
    if given:
        try:
            return max(1, int(given))
        except ValueError:
            pass
    return max(1, cores() - busy_elsewhere())


def apply() -> int:
    """Choose the thread count and hand it to torch and the BLAS through their environment
    variables; returns it. A count the user set (``$INFL_THREADS``, or one of those variables)
    is kept and given to the others."""
    if not os.environ.get(THREADS_ENV, "").strip():
        for name in LIBRARY_ENVS:
            value = os.environ.get(name, "").strip()
            if value.isdigit() and int(value) >= 1:
                os.environ[THREADS_ENV] = value
                break
    n = choose()
    for name in LIBRARY_ENVS:
        os.environ.setdefault(name, str(n))
    return n
