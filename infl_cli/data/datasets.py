"""Datasets: MNIST-format sets through torchvision, the bundled ``mnist-tiny`` subset, and a
user's own feature matrices in an NPZ file.

Conventions for the MNIST-format sets (``mnist``, ``fashion-mnist``, ``kmnist``; Koh & Liang's
code, see REFERENCE.md):

* training images 0..4,999 of the training file are validation and are *not used*;
  images 5,000..59,999 are the training set (n = 55,000); the 10,000 test images are the
  test set;
* inputs are pixels / 255 as float64 in [0, 1], flattened to 784 features, not centred;
* labels are int64 class indices 0..9.

``mnist-tiny`` holds real MNIST digits: training images 5,000..5,999 (the first 1,000 of
the same training split) and test images 0..199, shipped inside the package as uint8.

``--dataset PATH.npz`` (:func:`load_npz`): arrays ``X_train`` [n, d], ``y_train`` [n],
``X_test`` [m, d], ``y_test`` [m] and optionally ``class_names`` [K]. All of ``X_train`` is the
training set. Features may be any finite real numbers (float32 kept as float32, else float64); labels are integers
0..K−1 with K ≥ 2 (K = ``len(class_names)``, else the largest label + 1). Where the features
are integers divided by a common scale (1, a power of two up to 2¹⁶, or 255), the exact
integer products of :mod:`~infl_cli.data.design` certify the gradients; other features are bounded
with the general rounding model.

``bias=True`` appends a feature that is 1 for every example, train and test: an intercept,
regularised by the same (wd/2)·‖θ‖² as the weights, so that the objective stays wd-strongly
convex and every certificate holds unchanged.

**Loading is cheap.** MNIST-format sets and NPZ files are decoded once into the decoded-data
cache (:mod:`~infl_cli.data.cache`), with the pieces of their design, and memory-mapped by every
later command. A :class:`Dataset` holds its arrays in stored form (uint8 pixels, integers /
scale, float32 or float64 features) and makes torch tensors and the design only when a stage asks for
them, so that what only reads a dataset's size or fingerprint never imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from infl_cli.data import cache as datacache
from infl_cli.data.arrays import check_npz_file, decode_npz
from infl_cli.data.dataset import (
    DATA_DIR_ENV,
    TORCHVISION_SETS,
    Dataset,
    fingerprint_of,
    from_decoded,
    select_classes,
    with_bias,
)
from infl_cli.data.mnist import decode_mnist, mnist_files
from infl_cli.errors import BadInput, InflError
from infl_cli.runtime import progress
from infl_cli.settings import DATASETS

TINY_PATH = Path(__file__).resolve().parent.parent / "assets" / "mnist_tiny.safetensors"


def default_data_dir() -> Path:
    """``$INFL_DATA_DIR`` if set, else a per-user cache folder (``$XDG_CACHE_HOME/infl``)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "infl"


def is_npz(name: str) -> bool:
    """Whether ``--dataset`` names an NPZ file rather than a built-in dataset."""
    return name.lower().endswith(".npz")


def load_dataset(name: str, data_dir: Path | None = None, download: bool = True,
                 bias: bool = False, classes=None) -> Dataset:
    """Load a built-in dataset (``mnist``, ``fashion-mnist``, ``kmnist`` from ``data_dir``,
    default :func:`default_data_dir`; ``mnist-tiny`` from the package) or an NPZ file
    (:func:`load_npz`); with ``bias`` a constant feature is appended; with ``classes`` only
    those classes are kept (:func:`select_classes`). MNIST-format sets and NPZ files come
    through the decoded-data cache (:mod:`~infl_cli.data.cache`)."""
    data = _load_dataset(name, data_dir, download, bias)
    return select_classes(data, classes) if classes else data


def _load_dataset(name: str, data_dir: Path | None, download: bool, bias: bool) -> Dataset:
    suffix = "+bias" if bias else ""
    if is_npz(name):
        path = Path(name).expanduser()
        check_npz_file(path)
        source = datacache.Source([path], f"{path.name}{suffix}", path.parent)
        return from_decoded(datacache.load(source, lambda: decode_npz(path, bias),
                                           progress.notice))
    if name in TORCHVISION_SETS:
        files = mnist_files(Path(data_dir) if data_dir else default_data_dir(), download, name)
        source = datacache.Source(files, f"{name}{suffix}", files[0].parent.parent)
        return from_decoded(datacache.load(source, lambda: decode_mnist(files, name, bias),
                                       progress.notice))
    if name == "mnist-tiny":
        from safetensors.numpy import load_file

        if not TINY_PATH.is_file():
            raise InflError(f"the bundled subset is missing from the installation: {TINY_PATH}")
        t = load_file(str(TINY_PATH))
        x_tr = t["x_train"].reshape(t["x_train"].shape[0], -1)
        x_te = t["x_test"].reshape(t["x_test"].shape[0], -1)
        y_tr, y_te = t["y_train"].astype(np.int64), t["y_test"].astype(np.int64)
        fp = fingerprint_of(x_tr, y_tr, x_te, y_te)
        data = Dataset(name=name, train_x=x_tr, train_y=y_tr, test_x=x_te, test_y=y_te,
                       fingerprint=fp, pixel_scale=255.0)
        return with_bias(data) if bias else data
    raise BadInput(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}, "
                   "or a path ending in .npz")


def recorded_dataset(settings: dict, download: bool = True) -> Dataset:
    """The dataset a model's training settings name (dataset or NPZ path, data folder, bias)."""
    return load_dataset(settings["dataset"],
                        Path(settings["data_dir"]) if settings.get("data_dir") else None,
                        download, bias=settings.get("bias", False),
                        classes=settings.get("classes"))
