"""Artifacts: safetensors files whose header metadata carries a JSON record.

Every artifact is a plain safetensors file; ``safetensors.safe_open(path, "pt").metadata()``
returns ``{"infl": "<json>"}``, where the JSON holds the stage that wrote it, its settings,
the fingerprints of its inputs and its own ``fingerprint`` (SHA-256 of its tensors and
settings). Writes go to a temporary file in the same folder followed by an atomic rename,
so an interrupted stage never leaves a partial artifact behind; the file then gets the mode a
plain ``open()`` would give it (0666 minus the umask: 0644 under the usual 022), not the
private 0600 of the temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import InflError

META_KEY = "infl"
FORMAT_VERSION = 1

MODEL = "model.safetensors"
LOO = "loo.safetensors"
LOO_PARTIAL = "loo.partial.safetensors"
METRICS = "metrics.json"
TIMINGS = "timings.json"  # seconds per stage of the last `infl run`


def loo_name(method: str | None, kind: str = "logreg") -> str:
    """The LOO artifact: ``loo.safetensors``; the CNN's Adam retraining (the paper's
    protocol) has its own, ``loo-adam.safetensors``, so both can sit in one folder."""
    return "loo-adam.safetensors" if kind == "cnn" and method == "adam" else LOO


def ihvp_name(solver: str) -> str:
    return f"ihvp-{solver}.safetensors"


def scores_name(solver: str) -> str:
    return f"scores-{solver}.safetensors"


def tensors_fingerprint(tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> str:
    """SHA-256 (16 hex digits) of the tensors' names, dtypes, shapes, bytes and the record."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes())
    digest.update(json.dumps(record, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``.

    The temporary file is private while it is written (mkstemp's 0600); before the rename it
    gets 0666 & ~umask, as a file created by ``open(path, "w")`` would.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_artifact(path: Path, tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> dict:
    """Atomically write ``tensors`` (from any device: they are written from the CPU) with
    ``record`` (JSON-able) in the header; returns the record completed with
    ``format_version`` and ``fingerprint``."""
    record = dict(record, format_version=FORMAT_VERSION)
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    record["fingerprint"] = tensors_fingerprint(contiguous, record)
    text = json.dumps(record, sort_keys=True, default=str)
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata={META_KEY: text}))
    return record


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")

    atomic_write(path, write)


def read_record(path: Path) -> dict:
    """The JSON record of an artifact, without loading its tensors."""
    if not path.is_file():
        raise InflError(f"{path} not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return json.loads(meta[META_KEY])
    except (KeyError, ValueError, OSError, Exception) as exc:  # safetensors raises its own types
        raise InflError(f"{path} is not an infl artifact ({type(exc).__name__}: {exc})") from None


def load_artifact(path: Path, stage: str | None = None, hint: str = ""):
    """(tensors, record) of an artifact; checks it was written by ``stage`` when given.

    ``hint`` names the command that creates it, for the error message when it is missing.
    """
    if not path.is_file():
        extra = f"; run `{hint}` first" if hint else ""
        raise InflError(f"{path} not found{extra}")
    record = read_record(path)
    if stage is not None and record.get("stage") != stage:
        raise InflError(f"{path} was written by stage {record.get('stage')!r}, expected {stage!r}")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
    except Exception as exc:
        raise InflError(f"{path} could not be read ({type(exc).__name__}: {exc})") from None
    return tensors, record
