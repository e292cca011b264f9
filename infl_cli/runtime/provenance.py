"""Where a number came from: the infl version and commit, and the Python, torch and NumPy
versions and the platform that computed it, recorded in every artifact's record and in
``metrics.json`` (never in a fingerprint: the same numbers from another machine stay current).
Torch-free: versions are read from the installed packages' metadata."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from infl_cli.version import __version__


@functools.cache
def commit() -> str | None:
    """``git describe`` of the checkout the package runs from (``…-dirty`` with local changes),
    or None outside a git checkout."""
    here = Path(__file__).resolve().parents[2]
    if not (here / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty",
                               "--abbrev=12"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def provenance() -> dict:
    """{infl, commit, python, torch, numpy, platform, threads}."""
    import os

    return {"infl": __version__, "commit": commit(), "python": platform.python_version(),
            "torch": _version("torch"), "numpy": _version("numpy"),
            "platform": platform.platform(), "threads": os.environ.get("OMP_NUM_THREADS")}
