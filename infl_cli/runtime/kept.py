"""What a stage has already computed and the work folder keeps for the next: large matrices
of one model (the logistic model's factored Hessian, :func:`~infl_cli.engines.logreg.hessian.kept_factor`),
each an artifact ``NAME.safetensors`` whose record names the model it belongs to (its
fingerprint) and the settings it was made with; a matrix is read back only for that very
model and those settings.

Every stage that can use a kept matrix is handed a :class:`Keeper` (the engines that keep
nothing ignore it). Writing is done in the background (hundreds of MB: up to a second of disk
time, hidden behind the stage's own work) and atomically, so nothing half-written is ever
read; :meth:`Keeper.close` waits for the writes and must be called before the stage ends.
``INFL_KEEP_HESSIAN=0`` turns keeping off (nothing is written; nothing kept is read).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from infl_cli.runtime import artifacts as art

KEEP_ENV = "INFL_KEEP_HESSIAN"


def enabled() -> bool:
    return os.environ.get(KEEP_ENV, "1").strip().lower() not in ("0", "no", "false", "off")


class Keeper:
    """The kept matrices of the model ``mrec`` in ``workdir``; ``used`` says, per matrix,
    what happened to it (kept, derived, formed), for the stage's record."""

    def __init__(self, workdir: Path, mrec: dict):
        self.workdir, self.mrec = Path(workdir), mrec
        self.used: dict = {}
        self._writers: list = []

    def path(self, name: str) -> Path:
        return self.workdir / f"{name}.safetensors"

    def _inputs(self) -> dict:
        return {"model": self.mrec["fingerprint"]}

    def load(self, name: str, settings: dict):
        """The kept matrix ``name`` (a CPU tensor) when it was made for this model with these
        settings; else None."""
        path = self.path(name)
        if not enabled() or not art.is_current(path, settings, self._inputs()):
            return None
        tensors, _ = art.load_artifact(path, "hessian")
        return tensors["matrix"]

    def keep(self, name: str, matrix, settings: dict, extra: dict) -> None:
        """Write ``matrix`` (any device) in the background; a full disk only warns."""
        if not enabled():
            return
        record = {"stage": "hessian", "settings": settings, "inputs": self._inputs(), **extra}
        matrix = matrix.detach().cpu()
        path = self.path(name)
        failed = []

        def write():
            try:
                art.save_artifact(path, {"matrix": matrix}, record)
            except OSError as exc:  # a full disk must not fail the stage that computed it
                failed.append(f"could not keep the Hessian factor in {path} ({exc})")

        thread = threading.Thread(target=write, name=f"keep {path.name}")
        thread.start()
        self._writers.append((thread, failed))

    def close(self) -> None:
        """Wait for the matrices being written (call it before the stage ends)."""
        from infl_cli.runtime.progress import console

        for thread, failed in self._writers:
            thread.join()
            for message in failed:
                console.print(f"[yellow]warning:[/yellow] {message}", highlight=False,
                              soft_wrap=True)
        self._writers = []
