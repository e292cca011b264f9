"""MNIST-format sets (``mnist``, ``fashion-mnist``, ``kmnist``) from their four IDX files in
torchvision's layout (``ROOT/<Folder>/raw/``), downloaded by torchvision when missing; decoded
into the decoded-data cache with the authors' split (the first 5,000 training images are
validation and not used)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from infl_cli.data import cache as datacache
from infl_cli.data.dataset import (
    CLASS_NAMES,
    DATA_DIR_ENV,
    IMAGE_SHAPE,
    MNIST_RAW_FILES,
    MNIST_VALIDATION,
    N_CLASSES,
    N_FEATURES,
    TORCHVISION_SETS,
    fingerprint_of,
    with_parts,
)
from infl_cli.errors import InflError


def _torchvision_root(data_dir: Path, folder: str) -> Path:
    """The torchvision root for ``data_dir``: accepts ROOT, ROOT/<folder> or ROOT/<folder>/raw
    (folder MNIST, FashionMNIST or KMNIST)."""
    data_dir = data_dir.expanduser()
    if data_dir.name == "raw" and data_dir.parent.name == folder:
        return data_dir.parent.parent
    if data_dir.name == folder and (data_dir / "raw").is_dir():
        return data_dir.parent
    return data_dir


def _missing_raw_files(root: Path, folder: str) -> list[str]:
    raw = root / folder / "raw"
    return [f for f in MNIST_RAW_FILES if not (raw / f).is_file()]


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format: magic 0x0000080N, N big-endian int32
    sizes, then the data) as a uint8 array, read straight from the file."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size < 4 + 4 * ndim or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 \
            or raw[3] != ndim:
        raise InflError(f"{path} is not an IDX file of {ndim}-dimensional unsigned bytes")
    shape = tuple(int(v) for v in raw[4:4 + 4 * ndim].view(">i4"))
    body = raw[4 + 4 * ndim:]
    if body.size != math.prod(shape):
        raise InflError(f"{path} is truncated or padded: its header says {shape}, "
                        f"{body.size:,} bytes follow")
    return body.reshape(shape)


def _download(root: Path, folder: str, missing: list[str], where: str) -> None:
    raw = root / folder / "raw"
    import torchvision  # imported only to download: it is slow to import

    cls = getattr(torchvision.datasets, folder)
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(root=str(root), train=True, download=True)
    except Exception as exc:  # network errors come in many types
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InflError(f"{folder} not found in {raw} (looked for {', '.join(missing)}) "
                        f"and the download failed ({reason}); {where}") from None


def mnist_files(data_dir: Path, download: bool = True, name: str = "mnist") -> list[Path]:
    """The four raw files of ``name`` (mnist, fashion-mnist or kmnist) under ``data_dir``,
    downloaded there by torchvision when missing and ``download``."""
    folder = TORCHVISION_SETS[name]
    root = _torchvision_root(Path(data_dir), folder)
    raw = root / folder / "raw"
    where = f"point --data-dir or ${DATA_DIR_ENV} at a folder holding {folder}/raw/<those files>"
    missing = _missing_raw_files(root, folder)
    if missing and download:
        _download(root, folder, missing, where)
        missing = _missing_raw_files(root, folder)
    if missing:
        raise InflError(f"{folder} not found in {raw} (looked for {', '.join(missing)}); "
                        f"{where}, or allow the download")
    return [raw / f for f in MNIST_RAW_FILES]


def load_mnist_uint8(data_dir: Path, download: bool = True, name: str = "mnist"):
    """Raw images (60k train incl. validation, 10k test) as uint8 arrays [N, 28, 28] and int64
    labels, for ``name`` mnist, fashion-mnist or kmnist. Returns (x_train, y_train, x_test,
    y_test, class names or None)."""
    files = mnist_files(data_dir, download, name)
    x_tr, y_tr = read_idx(files[0], 3), read_idx(files[1], 1)
    x_te, y_te = read_idx(files[2], 3), read_idx(files[3], 1)
    raw = files[0].parent
    folder = TORCHVISION_SETS[name]
    if tuple(x_tr.shape[1:]) != IMAGE_SHAPE or x_tr.shape[0] <= MNIST_VALIDATION \
            or x_tr.shape[0] != y_tr.shape[0] or x_te.shape[0] != y_te.shape[0] \
            or tuple(x_te.shape[1:]) != IMAGE_SHAPE:
        raise InflError(f"{raw} does not hold {folder}'s 28 × 28 training and test images "
                        f"with one label each (found {tuple(x_tr.shape)}, {tuple(y_tr.shape)}, "
                        f"{tuple(x_te.shape)}, {tuple(y_te.shape)})")
    return (x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64), CLASS_NAMES.get(name))


def decode_mnist(files, name: str, bias: bool) -> datacache.Decoded:
    x_tr, y_tr, x_te, y_te, classes = load_mnist_uint8(files[0].parent, False, name)
    x_tr = np.ascontiguousarray(x_tr[MNIST_VALIDATION:].reshape(-1, N_FEATURES))
    y_tr = np.ascontiguousarray(y_tr[MNIST_VALIDATION:])
    x_te = np.ascontiguousarray(x_te.reshape(-1, N_FEATURES))
    fingerprint = fingerprint_of(x_tr, y_tr, x_te, y_te)
    meta = {"name": name, "fingerprint": fingerprint, "scale": 255.0, "n_classes": N_CLASSES,
            "class_names": list(classes) if classes else None, "image_shape": list(IMAGE_SHAPE)}
    return with_parts({"train_x": x_tr, "train_y": y_tr, "test_x": x_te, "test_y": y_te},
                       meta, bias)
