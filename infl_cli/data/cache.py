"""The decoded-data cache: a dataset's arrays and its design's pieces, decoded once and
memory-mapped by every later command.

A dataset is decoded from its *source files* (MNIST's four IDX files, an NPZ) into NumPy arrays:
the training and test inputs in stored form (uint8 pixels, integers / scale, or float64
features), the labels, and the exact pieces of the design (:mod:`~infl_cli.data.parts`: the
active pixels, the dense core and the sparse rim, the integer sums). The first load writes
them into one file, ``<data folder>/infl-cache/<name>.safetensors``; later loads map it into
memory (copy-on-write: the arrays are writable, the file never changes) instead of decoding.

**Never trusted blindly.** The file records the SHA-256 of the source files it was decoded from
and the SHA-256 of its own payload. A load hashes the source files (MNIST: 55 MB, about 30 ms)
and the payload (about 40 ms) and uses the file only when both match: a changed source, a
foreign cache (another dataset's, an older format) or a corrupted one is rebuilt, never used.

**Atomic and concurrent.** The file is written beside its final name and renamed over it, so a
reader sees an old complete file or a new complete one; two processes that build it at once
both write complete files, the later rename wins, and a reader that mapped the earlier one
keeps a valid mapping.

**Read-only data folders.** Where the data folder cannot be written, the cache goes to
``$INFL_CACHE_DIR`` (default ``$XDG_CACHE_HOME/infl/decoded``, else ``~/.cache/infl/decoded``),
under a name derived from the data folder's path, with one line of notice; where that cannot
be written either, the data are decoded on every load, with one line of notice.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

CACHE_VERSION = 2
CACHE_DIR_ENV = "INFL_CACHE_DIR"
FOLDER = "infl-cache"
META_KEY = "infl-data-cache"
HASH_BLOCK = 1 << 22


@dataclass
class Decoded:
    """A decoded dataset: ``arrays`` (NumPy, name → array: the data and ``part.*``, the design's
    pieces) and ``meta`` (JSON-able: fingerprint, classes, scale, shapes)."""

    arrays: dict
    meta: dict

    def parts(self) -> dict:
        parts = {k[len("part."):]: v for k, v in self.arrays.items() if k.startswith("part.")}
        if parts and self.meta.get("core_is_train_x"):  # stored once, as the training inputs
            parts["core_x"] = self.arrays["train_x"]
        return parts


@dataclass
class Source:
    """Where a dataset comes from: ``files`` (hashed), a ``key`` naming the cache entry (the
    dataset and its variant, e.g. ``mnist+bias``) and ``home``, the folder the cache goes to
    when it can (beside the data)."""

    files: list
    key: str
    home: Path


def file_digest(paths) -> str:
    """SHA-256 over the source files: each one's name, size and bytes."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        digest.update(f"{path.name}|{path.stat().st_size}|".encode())
        with open(path, "rb") as fh:
            while True:
                block = fh.read(HASH_BLOCK)
                if not block:
                    break
                digest.update(block)
    return digest.hexdigest()


def fallback_dir() -> Path:
    """Where caches of read-only data folders go."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "infl" / "decoded"


def locations(source: Source) -> list[Path]:
    """The cache files to look in, in order: beside the data, then the per-user folder."""
    home = Path(source.home).expanduser().resolve()
    tag = hashlib.sha256(str(home).encode()).hexdigest()[:12]
    return [home / FOLDER / f"{source.key}.safetensors",
            fallback_dir() / f"{tag}-{source.key}.safetensors"]


def load(source: Source, decode: Callable[[], Decoded], notice: Callable[[str], None]) -> Decoded:
    """The decoded dataset of ``source``: from a valid cache file, else ``decode()``d and
    cached (module doc). ``notice(line)`` is told where the cache could not be written."""
    digest = file_digest(source.files)
    places = locations(source)
    for path in places:
        found = read(path, digest)
        if found is not None:
            return found
    decoded = decode()
    write_any(places, decoded, digest, notice)
    return decoded


def write_any(places: list[Path], decoded: Decoded, digest: str, notice) -> Path | None:
    """Write the cache into the first of ``places`` that can be written; None if none can."""
    failures = []
    for i, path in enumerate(places):
        if not writable(path.parent):
            failures.append(f"{path.parent} (read-only)")
            continue
        try:
            write(path, decoded, digest)
        except OSError as exc:
            failures.append(f"{path.parent} ({exc.strerror or type(exc).__name__})")
            continue
        if i > 0:
            notice(f"{places[0].parent.parent} is not writable: its decoded-data cache is in "
                   f"{path}")
        return path
    notice(f"could not write the decoded-data cache ({'; '.join(failures)}); the data are "
           "decoded on every load")
    return None


def writable(folder: Path) -> bool:
    """Whether files may be created in ``folder`` (or, where it does not exist yet, in its
    nearest existing parent): the process has write access *and* the folder's mode grants
    write permission to someone. The second half keeps root, to whom every folder is open,
    out of folders that their owner made read-only (a shared, read-only copy of the data)."""
    folder = Path(folder)
    while not folder.exists():
        if folder.parent == folder:
            return False
        folder = folder.parent
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK) and bool(mode & 0o222)


def write(path: Path, decoded: Decoded, digest: str) -> None:
    """Write ``decoded`` to ``path`` atomically, recording the sources' digest and the
    payload's."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in decoded.arrays.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(arrays, str(tmp), metadata={META_KEY: json.dumps(
            {"version": CACHE_VERSION, "source_sha256": digest, "meta": decoded.meta,
             "payload_sha256": "0" * 64})})  # the room for the digest, filled in below
        # the payload digest goes into the header; it covers every byte after the header
        header, offset = _header(tmp)
        with open(tmp, "rb") as fh:
            fh.seek(offset)
            payload = hashlib.sha256()
            while True:
                block = fh.read(HASH_BLOCK)
                if not block:
                    break
                payload.update(block)
        info = json.loads(header["__metadata__"][META_KEY])
        info["payload_sha256"] = payload.hexdigest()
        header["__metadata__"][META_KEY] = json.dumps(info)
        _rewrite_header(tmp, header, offset)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: Path, digest: str) -> Decoded | None:
    """The decoded dataset in ``path`` when it is a complete cache of these very sources
    (``digest``) whose payload is intact; None otherwise (missing, foreign, stale, corrupted)."""
    if not path.is_file():
        return None
    try:
        header, offset = _header(path)
        info = json.loads(header.pop("__metadata__")[META_KEY])
        if info.get("version") != CACHE_VERSION or info.get("source_sha256") != digest:
            return None
        with open(path, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        view = memoryview(mapped)[offset:]
        if hashlib.sha256(view).hexdigest() != info.get("payload_sha256"):
            return None
        buffer = np.frombuffer(mapped, dtype=np.uint8, offset=offset)
        arrays = {}
        for name, entry in header.items():
            dtype = np.dtype(_DTYPES[entry["dtype"]])
            lo, hi = entry["data_offsets"]
            raw = buffer[lo:hi]
            array = raw.view(dtype) if (offset + lo) % dtype.alignment == 0 \
                else raw.copy().view(dtype)
            arrays[name] = array.reshape(entry["shape"])
        return Decoded(arrays, info["meta"])
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


_DTYPES = {"U8": "u1", "I8": "i1", "U16": "<u2", "I16": "<i2", "U32": "<u4", "I32": "<i4",
           "I64": "<i8", "U64": "<u8", "F32": "<f4", "F64": "<f8", "BOOL": "?"}


def _header(path: Path) -> tuple[dict, int]:
    """(the safetensors header, the offset of the data after it)."""
    with open(path, "rb") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        if size > 1 << 26:
            raise ValueError("header too large")
        header = json.loads(fh.read(size))
    return header, 8 + size


def _rewrite_header(path: Path, header: dict, offset: int) -> None:
    """Replace the header of ``path`` in place by ``header``, padded to the same length (the
    payload digest changes only the metadata: the new text is never longer than the room
    that the old one had plus the reserved padding)."""
    text = json.dumps(header, separators=(",", ":")).encode()
    room = offset - 8
    if len(text) > room:  # move the data (never on the sizes used here: see write)
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
        pad = (-(8 + len(text))) % 8
        text += b" " * pad
        with open(path, "wb") as fh:
            fh.write(struct.pack("<Q", len(text)))
            fh.write(text)
            fh.write(data)
        return
    with open(path, "r+b") as fh:
        fh.seek(8)
        fh.write(text + b" " * (room - len(text)))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
