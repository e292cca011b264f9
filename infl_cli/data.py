"""Datasets: full MNIST through torchvision, and the bundled ``mnist-tiny`` subset.

Conventions (Koh & Liang's code, see REFERENCE.md):

* training images 0..4,999 of the MNIST training file are validation and are *not used*;
  images 5,000..59,999 are the training set (n = 55,000); the 10,000 test images are the
  test set;
* inputs are pixels / 255 as float64 in [0, 1], flattened to 784 features, not centred;
* labels are int64 class indices 0..9.

``mnist-tiny`` holds real MNIST digits: training images 5,000..5,999 (the first 1,000 of
the same training split) and test images 0..199, shipped inside the package as uint8.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from .errors import InflError

DATASETS = ("mnist", "mnist-tiny")
N_CLASSES = 10
N_FEATURES = 784
MNIST_VALIDATION = 5_000
MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TINY_PATH = Path(__file__).with_name("assets") / "mnist_tiny.safetensors"
DATA_DIR_ENV = "INFL_DATA_DIR"


@dataclass(frozen=True)
class Dataset:
    """A train/test split held as float64 features and int64 labels.

    ``x_train`` [n, 784], ``y_train`` [n], ``x_test`` [m, 784], ``y_test`` [m];
    ``fingerprint`` is a SHA-256 of the raw uint8 pixels and labels, so artifacts can
    record exactly which data they were computed from. ``pixel_scale``: the inputs are
    integers divided by it (255), which makes exact gradients possible.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    fingerprint: str
    pixel_scale: float | None = None

    @cached_property
    def design(self):
        """The training inputs as a :class:`~infl_cli.design.DesignMatrix` (built once)."""
        from .design import DesignMatrix

        return DesignMatrix(self.x_train, scale=self.pixel_scale)

    @property
    def n_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.y_test.shape[0])


def default_data_dir() -> Path:
    """``$INFL_DATA_DIR`` if set, else a per-user cache folder (``$XDG_CACHE_HOME/infl``)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "infl"


def _mnist_root(data_dir: Path) -> Path:
    """The torchvision root for ``data_dir``: accepts ROOT, ROOT/MNIST or ROOT/MNIST/raw."""
    data_dir = data_dir.expanduser()
    if data_dir.name == "raw" and data_dir.parent.name == "MNIST":
        return data_dir.parent.parent
    if data_dir.name == "MNIST" and (data_dir / "raw").is_dir():
        return data_dir.parent
    return data_dir


def _missing_raw_files(root: Path) -> list[str]:
    raw = root / "MNIST" / "raw"
    return [f for f in MNIST_RAW_FILES if not (raw / f).is_file()]


def _fingerprint(*uint8_or_int_tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in uint8_or_int_tensors:
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _from_uint8(name: str, x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor,
                y_te: torch.Tensor) -> Dataset:
    x_tr = x_tr.reshape(x_tr.shape[0], -1)
    x_te = x_te.reshape(x_te.shape[0], -1)
    fp = _fingerprint(x_tr, y_tr.to(torch.int64), x_te, y_te.to(torch.int64))
    return Dataset(
        name=name,
        x_train=x_tr.to(torch.float64) / 255.0,
        y_train=y_tr.to(torch.int64),
        x_test=x_te.to(torch.float64) / 255.0,
        y_test=y_te.to(torch.int64),
        fingerprint=fp,
        pixel_scale=255.0,
    )


def load_mnist_uint8(data_dir: Path, download: bool = True):
    """Raw MNIST (60k train incl. validation, 10k test) as uint8 tensors, via torchvision."""
    root = _mnist_root(data_dir)
    missing = _missing_raw_files(root)
    import torchvision  # imported lazily: it is slow to import and tiny runs never need it

    if missing and download:
        try:
            root.mkdir(parents=True, exist_ok=True)
            torchvision.datasets.MNIST(root=str(root), train=True, download=True)
        except Exception as exc:  # network errors come in many types
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InflError(
                f"MNIST not found in {root / 'MNIST' / 'raw'} (looked for {', '.join(missing)}) "
                f"and the download failed ({reason}); point --data-dir or ${DATA_DIR_ENV} at a "
                "folder holding MNIST/raw/<those files>"
            ) from None
        missing = _missing_raw_files(root)
    if missing:
        raise InflError(
            f"MNIST not found in {root / 'MNIST' / 'raw'} (looked for {', '.join(missing)}); "
            f"point --data-dir or ${DATA_DIR_ENV} at a folder holding MNIST/raw/<those files>, "
            "or allow the download"
        )
    try:
        train = torchvision.datasets.MNIST(root=str(root), train=True, download=False)
        test = torchvision.datasets.MNIST(root=str(root), train=False, download=False)
    except Exception as exc:
        raise InflError(f"could not read MNIST from {root / 'MNIST' / 'raw'}: {exc}") from None
    return train.data, train.targets, test.data, test.targets


def load_dataset(name: str, data_dir: Path | None = None, download: bool = True) -> Dataset:
    """Load ``mnist`` (from ``data_dir``, default :func:`default_data_dir`) or ``mnist-tiny``."""
    if name == "mnist":
        x_tr, y_tr, x_te, y_te = load_mnist_uint8(data_dir or default_data_dir(), download)
        return _from_uint8(name, x_tr[MNIST_VALIDATION:], y_tr[MNIST_VALIDATION:], x_te, y_te)
    if name == "mnist-tiny":
        from safetensors.torch import load_file

        if not TINY_PATH.is_file():
            raise InflError(f"the bundled subset is missing from the installation: {TINY_PATH}")
        t = load_file(str(TINY_PATH))
        return _from_uint8(name, t["x_train"], t["y_train"], t["x_test"], t["y_test"])
    raise InflError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
