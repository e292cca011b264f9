"""infl: explain a model's predictions through its training data with influence functions
(Koh & Liang 2017), and prove each explanation right by certified retraining.

The command line is :mod:`infl_cli.cli`; the layers below it: :mod:`.stages` (one module per
command), :mod:`.figures`, :mod:`.engines` (one per model kind), :mod:`.data`, :mod:`.numerics`,
:mod:`.runtime`, then :mod:`.settings` and :mod:`.errors`. Importing this package loads no torch.
"""

import os as _os

# The passes over the data alternate NumPy's OpenBLAS products with torch's vectorised
# elementwise work. Both libraries keep their idle threads spinning after each call by default,
# and on a small machine the spinning threads of one steal the cores the other is computing on
# (measured on 2 cores: 20 % of a full-data pass). Idle threads sleep instead, unless the user
# chose otherwise. Read when the libraries load, so set before NumPy or torch is imported.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# How many threads torch and the BLAS may use: the cores other processes leave free (both
# read it when they load, so it is set here; :mod:`infl_cli.runtime.threads`).
from infl_cli.runtime import threads as _threads  # noqa: E402

THREADS = _threads.apply()

from infl_cli.version import __version__  # noqa: E402

# The Python API (``import infl_cli as infl``): loaded on first use, so that the command line's
# help and errors never wait for NumPy, and ``import infl_cli`` never imports torch.
__all__ = ["Dataset", "Study", "features", "paper_figure", "hinge", "Model", "Ihvp", "Scores",
           "Loo", "Lds", "Judgement", "Result", "BadInput", "InflError", "__version__"]


def __getattr__(name):
    if name in ("BadInput", "InflError"):
        from infl_cli import errors

        return getattr(errors, name)
    if name in __all__:
        from infl_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'infl_cli' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
