"""Artifacts: safetensors files whose header metadata carries a JSON record.

Every artifact is a plain safetensors file; ``safetensors.safe_open(path, "pt").metadata()``
returns ``{"infl": "<json>"}``, where the JSON holds the stage that wrote it, its settings,
the fingerprints of its inputs and its own ``fingerprint``: a SHA-256 of its tensors, its
stage, settings and inputs, never of its timings, so that a stage rerun on the same inputs
that computes the same tensors gets the same fingerprint, and what depends on it stays current.
Writes go to a temporary file in the same folder followed by an atomic rename, so an
interrupted stage never leaves a partial artifact behind; the file then gets the mode a plain
``open()`` would give it (0666 minus the umask: 0644 under the usual 022), not the private
0600 of the temporary file.

Reading a record parses the header alone (no torch, no tensors); :func:`load_arrays` gives the
tensors as NumPy arrays (what only draws or tabulates needs no torch), :func:`load_artifact`
as torch tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from infl_cli.errors import InflError

META_KEY = "infl"
FORMAT_VERSION = 1

MODEL = "model.safetensors"
LOO = "loo.safetensors"
LOO_PARTIAL = "loo.partial.safetensors"
METRICS = "metrics.json"
TIMINGS = "timings.json"  # seconds per stage of the last `infl run`
# the parts of a record that describe how a run went, not what it computed: left out of the
# fingerprint
IDENTITY_KEYS = ("stage", "settings", "inputs", "format_version")


def ihvp_name(solver: str) -> str:
    return f"ihvp-{solver}.safetensors"


def scores_name(solver: str) -> str:
    return f"scores-{solver}.safetensors"


def _as_numpy(value):
    """A tensor (torch, on any device) or an array as a contiguous NumPy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(value)


def tensors_fingerprint(tensors: dict, record: dict[str, Any]) -> str:
    """SHA-256 (16 hex digits) of the tensors' names, dtypes, shapes and bytes and of the
    record's identity (:data:`IDENTITY_KEYS`: stage, settings, inputs)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        a = _as_numpy(tensors[name])
        digest.update(f"{name}|{_DTYPE_NAMES.get(a.dtype.str, a.dtype.str)}|"
                      f"{tuple(a.shape)}|".encode())
        digest.update(a.reshape(-1).view(np.uint8) if a.size else b"")  # no copy
    identity = {key: record.get(key) for key in IDENTITY_KEYS}
    digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


_DTYPE_NAMES = {"<f8": "torch.float64", "<f4": "torch.float32", "<i8": "torch.int64",
                "|b1": "torch.bool", "|u1": "torch.uint8", "<i4": "torch.int32"}


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


_SAFETENSORS_DTYPES = {"<f8": "F64", "<f4": "F32", "<f2": "F16", "<i8": "I64", "<i4": "I32",
                       "<i2": "I16", "|i1": "I8", "|u1": "U8", "<u2": "U16", "<u4": "U32",
                       "<u8": "U64", "|b1": "BOOL"}


def write_safetensors(path, arrays: dict, metadata: dict) -> None:
    """A safetensors file of NumPy ``arrays`` (contiguous, little-endian) with string
    ``metadata``, written straight from the arrays' memory: the header (JSON, padded to a
    multiple of 8 bytes), then each array's bytes, the largest items first so that every
    array stays aligned to its item size, as the format's own writer lays them out."""
    order = sorted(arrays, key=lambda k: (-arrays[k].dtype.itemsize, k))
    header, offset = {}, 0
    for name in order:
        a = arrays[name]
        if a.dtype.str not in _SAFETENSORS_DTYPES:
            raise TypeError(f"cannot store {name} of dtype {a.dtype} in a safetensors file")
        header[name] = {"dtype": _SAFETENSORS_DTYPES[a.dtype.str], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for name in order:
            if arrays[name].size:
                fh.write(arrays[name].reshape(-1).view(np.uint8).data)


def save_artifact(path: Path, tensors: dict, record: dict[str, Any]) -> dict:
    """Atomically write ``tensors`` (torch tensors from any device, or NumPy arrays: they are
    written from the CPU) with ``record`` (JSON-able) in the header; returns the record
    completed with ``format_version`` and ``fingerprint``."""
    from infl_cli.runtime.provenance import provenance

    record = dict(record, format_version=FORMAT_VERSION, provenance=provenance())
    arrays = {k: _as_numpy(v) for k, v in tensors.items()}
    record["fingerprint"] = tensors_fingerprint(arrays, record)
    text = json.dumps(record, sort_keys=True, default=str)
    atomic_write(path, lambda tmp: write_safetensors(tmp, arrays, {META_KEY: text}))
    return record


def strict_json(value):
    """``value`` as strict JSON can hold it: every non-finite float ``None`` (an undefined
    figure is null, its reason said beside it by whoever computed it), NumPy scalars and arrays
    as Python values, anything else as its string."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return strict_json(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented strict JSON (:func:`strict_json`); a work
    folder's ``metrics.json`` gets the provenance of what wrote it."""
    if Path(path).name == METRICS and isinstance(obj, dict):
        from infl_cli.runtime.provenance import provenance

        obj = {**obj, "provenance": provenance()}

    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(strict_json(obj), fh, indent=2, sort_keys=True, allow_nan=False)
            fh.write("\n")

    atomic_write(path, write)


# sections of metrics.json that studies own
STUDY_KEYS = ("mislabel", "self_influence", "components", "hinge")


def update_json(path: Path, key: str, value: Any) -> None:
    """Atomically set ``key`` of the JSON object in ``path`` (made when missing), keeping the
    rest: studies keep their numbers in sections of the work folder's ``metrics.json``."""
    try:
        obj = json.loads(Path(path).read_text())
        if not isinstance(obj, dict):
            obj = {}
    except (OSError, ValueError):
        obj = {}
    obj[key] = value
    write_json(path, obj)


def keep_study_sections(path: Path, metrics: dict) -> dict:
    """``metrics`` with the study sections that ``path`` already holds (the figures' metrics
    are rewritten whole; the studies' are not theirs to drop)."""
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return metrics
    if isinstance(old, dict):
        for key in STUDY_KEYS:
            if key in old and key not in metrics:
                metrics[key] = old[key]
    return metrics


# what a study writes into its work folder besides its artifacts (the *.safetensors whose
# header holds an infl record): figures, their sidecars and the studies' JSON
STUDY_OUTPUTS = ("metrics.json", "timings.json", "subsets.json", "explain-*.png",
                 "explain-*.pdf", "explain-*.json", "fig2_*.png", "fig2_*.pdf", "fig6_*.png",
                 "fig6_*.pdf", "fig_*.png", "fig_*.pdf", "self-influence.png", "lds.png")


def study_files(workdir: Path) -> list[Path]:
    """The files of the study in ``workdir`` that infl wrote: its artifacts and outputs
    (:data:`STUDY_OUTPUTS`); nothing else, and nothing in sub-folders."""
    workdir = Path(workdir)
    found = []
    for path in sorted(workdir.glob("*.safetensors")):
        try:
            read_record(path)
        except InflError:
            continue  # not ours
        found.append(path)
    for pattern in STUDY_OUTPUTS:
        found += sorted(p for p in workdir.glob(pattern) if p.is_file())
    return sorted(set(found))


def remove_study(workdir: Path) -> list[Path]:
    """Remove the study's files (:func:`study_files`) from ``workdir``; returns them."""
    removed = study_files(workdir)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def is_current(path: Path, settings: dict, inputs: dict) -> bool:
    """True when the artifact ``path`` exists and was made with these settings from these
    inputs (its record says so; nothing else is read)."""
    if not Path(path).is_file():
        return False
    try:
        record = read_record(path)
    except InflError:
        return False
    return record.get("settings") == settings and record.get("inputs") == inputs


def read_header(path: Path) -> dict:
    """The safetensors header of ``path`` (tensor names, dtypes, shapes, offsets, metadata),
    parsed from the file's first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ValueError("shorter than a safetensors header")
        size = struct.unpack("<Q", head)[0]
        if size > 100_000_000:
            raise ValueError(f"a header of {size:,} bytes")
        text = fh.read(size)
        if len(text) != size:
            raise ValueError("truncated header")
    return json.loads(text)


def read_record(path: Path) -> dict:
    """The JSON record of an artifact, without loading its tensors (nor torch)."""
    if not path.is_file():
        raise InflError(f"{path} not found")
    try:
        meta = read_header(path).get("__metadata__") or {}
        return json.loads(meta[META_KEY])
    except (KeyError, ValueError, OSError, TypeError, UnicodeDecodeError) as exc:
        raise InflError(f"{path} is not an infl artifact ({type(exc).__name__}: {exc})") from None


def checked_record(path: Path, stage: str | None, hint: str) -> dict:
    if not path.is_file():
        extra = f"; run `{hint}` first" if hint else ""
        raise InflError(f"{path} not found{extra}")
    record = read_record(path)
    if stage is not None and record.get("stage") != stage:
        raise InflError(f"{path} was written by stage {record.get('stage')!r}, expected {stage!r}")
    return record


def load_arrays(path: Path, stage: str | None = None, hint: str = ""):
    """(arrays, record) of an artifact, its tensors as NumPy arrays (no torch needed); checks
    it was written by ``stage`` when given."""
    record = checked_record(path, stage, hint)
    try:
        from safetensors.numpy import load_file

        return load_file(str(path)), record
    except Exception as exc:
        raise InflError(f"{path} could not be read ({type(exc).__name__}: {exc})") from None


def load_artifact(path: Path, stage: str | None = None, hint: str = ""):
    """(tensors, record) of an artifact, as torch tensors on the CPU; checks it was written by
    ``stage`` when given. ``hint`` names the command that creates it, for the error message
    when it is missing.

    Each tensor is a fresh copy in memory torch allocated (64-byte aligned): the tensors that
    safetensors reads sit at the file's offsets, and MKL's products can round differently on
    memory aligned otherwise, so a tensor read back must give the bits of the one written
    (a kept Hessian factor, a resumed LOO, a cluster worker's copy)."""
    record = checked_record(path, stage, hint)
    try:
        from safetensors.torch import load_file

        return {k: v.clone() for k, v in load_file(str(path)).items()}, record
    except Exception as exc:
        raise InflError(f"{path} could not be read ({type(exc).__name__}: {exc})") from None
