"""What a stage has already computed and the work folder keeps: the factored Hessian H(Ŵ).

Forming and factoring the dense Hessian is the costliest set-up in ``infl`` (full MNIST:
7,150 × 7,150 over the active pixels; 7–10 s in float32, about 25 s in float64 on two cores),
and several stages need it: ``loo`` (the float32 explicit inverse preconditions every Newton
step), ``ihvp --solver exact`` (the float64 Cholesky factor) and the self-influence study (H⁻¹
in float64). The first stage to form it keeps it in the work folder, and every later one, in
this process or another, reads it instead (a fraction of a second):

* ``hessian-inverse32.safetensors``: H⁻¹ in float32 (MNIST: 204 MB), made by ``loo``;
* ``hessian-cholesky64.safetensors``: L with H = LLᵀ in float64 (MNIST: 409 MB), made by
  ``ihvp --solver exact`` and the self-influence study; ``loo`` derives its float32 inverse
  from it when that is all there is (2 s instead of 7–10 s).

Each records the model it belongs to (its fingerprint) and is used only for that model; the
float32 inverse only ever preconditions iterations that float64 passes certify, and the
float64 factor's solves report their own certified residuals, so a kept factor changes no
figure's meaning. ``INFL_KEEP_HESSIAN=0`` turns keeping off (nothing is written; nothing kept
is read).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from infl_cli.runtime import artifacts as art
from infl_cli.errors import InflError
from infl_cli.numerics.linalg import HessianFactor
from infl_cli.runtime.progress import progress_bar

KEEP_ENV = "INFL_KEEP_HESSIAN"
NAMES = {torch.float32: "hessian-inverse32.safetensors",
         torch.float64: "hessian-cholesky64.safetensors"}
FORMS = {torch.float32: "inverse", torch.float64: "cholesky"}


def enabled() -> bool:
    return os.environ.get(KEEP_ENV, "1").strip().lower() not in ("0", "no", "false", "off")


class Keeper:
    """The kept Hessian factors of the model ``mrec`` in ``workdir``."""

    def __init__(self, workdir: Path, mrec: dict):
        self.workdir, self.mrec = Path(workdir), mrec
        self.used: dict = {}  # dtype name → "kept" | "derived" | "formed": what happened
        self._writers: list = []

    def _settings(self, dtype) -> dict:
        return {"dtype": str(dtype).replace("torch.", ""), "form": FORMS[dtype],
                "wd": self.mrec["settings"]["wd"]}

    def _inputs(self) -> dict:
        return {"model": self.mrec["fingerprint"]}

    def path(self, dtype) -> Path:
        return self.workdir / NAMES[dtype]

    def _load(self, dtype, classes: int, wd: float, design) -> HessianFactor | None:
        path = self.path(dtype)
        if not enabled() or not art.is_current(path, self._settings(dtype), self._inputs()):
            return None
        tensors, _ = art.load_artifact(path, "hessian")
        matrix = tensors["matrix"].to(design.device)
        if matrix.shape[0] != classes * design.width:
            return None
        return HessianFactor.from_matrix(matrix, FORMS[dtype], classes, wd, design.active)

    def _keep(self, factor: HessianFactor, dtype, seconds: float) -> None:
        """Write the factor in the background (hundreds of MB: up to a second of disk time,
        hidden behind the stage's own work; :meth:`close` waits for it). The write is atomic,
        so nothing half-written is ever read."""
        if not enabled():
            return
        import threading

        record = {"stage": "hessian", "settings": self._settings(dtype),
                  "inputs": self._inputs(), "dimension": factor.dimension,
                  "seconds": seconds}
        matrix = factor.matrix.detach().cpu()
        path = self.path(dtype)
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
        """Wait for the factors being written (call it before the stage ends)."""
        from infl_cli.runtime.progress import console

        for thread, failed in self._writers:
            thread.join()
            for message in failed:
                console.print(f"[yellow]warning:[/yellow] {message}", highlight=False,
                              soft_wrap=True)
        self._writers = []

    def hessian(self, weight: torch.Tensor, design, wd: float, dtype=torch.float32,
                on_block=None) -> HessianFactor:
        """H(Ŵ)'s factor for ``dtype``: float32, the explicit inverse (LOO's preconditioner);
        float64, the Cholesky factor (exact solves). Kept, derived from the other kept one,
        or formed (and then kept)."""
        import time

        classes = int(weight.shape[0])
        found = self._load(dtype, classes, wd, design)
        if found is not None:
            self.used[str(dtype)] = "kept"
            return found
        start = time.perf_counter()
        if dtype == torch.float32:
            wider = self._load(torch.float64, classes, wd, design)
            if wider is not None:
                factor = wider.inverted(torch.float32)
                self.used[str(dtype)] = "derived from the kept float64 factor"
                self._keep(factor, dtype, time.perf_counter() - start)
                return factor
        blocks = classes * (classes - 1) // 2
        if on_block is None:
            with progress_bar(f"Hessian ({str(dtype).replace('torch.', '')}): Gram blocks",
                              total=blocks) as update:
                factor = self._form(weight, design, wd, dtype, update)
        else:
            factor = self._form(weight, design, wd, dtype, on_block)
        self.used[str(dtype)] = "formed"
        self._keep(factor, dtype, time.perf_counter() - start)
        return factor

    @staticmethod
    def _form(weight, design, wd, dtype, on_block) -> HessianFactor:
        try:
            return HessianFactor(weight, design, wd, on_block=on_block, dtype=dtype,
                                 explicit_inverse=dtype == torch.float32)
        except ValueError as exc:
            raise InflError(str(exc)) from None
