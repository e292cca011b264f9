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
training set. Features may be any finite real numbers, taken as float64; labels are integers
0..K−1 with K ≥ 2 (K = ``len(class_names)``, else the largest label + 1). Where the features
are integers divided by a common scale (1, a power of two up to 2¹⁶, or 255), the exact
integer products of :mod:`~infl_cli.design` certify the gradients; other features are bounded
with the general rounding model.

``bias=True`` appends a feature that is 1 for every example, train and test: an intercept,
regularised by the same (wd/2)·‖θ‖² as the weights, so that the objective stays wd-strongly
convex and every certificate holds unchanged.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from .errors import BadInput, InflError

# MNIST-format sets: the torchvision class and its folder under the data folder
TORCHVISION_SETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
DATASETS = ("mnist", "mnist-tiny", "fashion-mnist", "kmnist")
N_CLASSES = 10
N_FEATURES = 784
IMAGE_SHAPE = (28, 28)
MNIST_VALIDATION = 5_000
MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TINY_PATH = Path(__file__).with_name("assets") / "mnist_tiny.safetensors"
DATA_DIR_ENV = "INFL_DATA_DIR"
NPZ_ARRAYS = ("X_train", "y_train", "X_test", "y_test")
# common scales tried for NPZ features that are integers / scale (exact products)
EXACT_SCALES = (1.0, 255.0) + tuple(2.0 ** k for k in range(1, 17))
EXACT_MAX_INTEGER = 2 ** 24


@dataclass(frozen=True)
class Dataset:
    """A train/test split held as float64 features and int64 labels.

    ``x_train`` [n, d], ``y_train`` [n], ``x_test`` [m, d], ``y_test`` [m], labels 0..K−1 with
    K = ``n_classes``; ``fingerprint`` is a SHA-256 of the raw data (uint8 pixels or float64
    features, labels, and the bias flag), so artifacts can record exactly which data they were
    computed from. ``pixel_scale``: the inputs are integers divided by it (255 for images), which
    makes exact gradients possible; None for general real features. ``image_shape``: how the
    first ``d − bias`` features form an image (None: they do not). ``bias``: the last feature
    is the constant 1.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    fingerprint: str
    pixel_scale: float | None = None
    n_classes: int = N_CLASSES
    class_names: tuple | None = None
    image_shape: tuple | None = IMAGE_SHAPE
    bias: bool = False

    @cached_property
    def design(self):
        """The training inputs as a design on the data's device (:mod:`~infl_cli.design`:
        the core/rim matrix on the CPU, a dense tensor elsewhere), built once."""
        from .design import make_design

        return make_design(self.x_train.cpu(), scale=self.pixel_scale,
                           device=self.x_train.device)

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device) -> "Dataset":
        """The same data with its tensors on ``device`` (itself when they are there)."""
        device = torch.device(device)
        if self.x_train.device == device:
            return self
        return replace(self, x_train=self.x_train.to(device), y_train=self.y_train.to(device),
                       x_test=self.x_test.to(device), y_test=self.y_test.to(device))

    @property
    def n_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.y_test.shape[0])

    @property
    def n_features(self) -> int:
        """d, the bias feature included."""
        return int(self.x_train.shape[1])

    def image(self, x: torch.Tensor):
        """The features of one example as an image array (the bias feature dropped), or None
        when the features are not an image."""
        if self.image_shape is None:
            return None
        values = x[:-1] if self.bias else x
        return values.reshape(self.image_shape).cpu().numpy()

    def class_name(self, label: int) -> str:
        return self.class_names[label] if self.class_names else str(label)


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


def _fingerprint(*arrays, extra: str = "") -> str:
    digest = hashlib.sha256()
    for a in arrays:
        a = a.contiguous().numpy() if isinstance(a, torch.Tensor) else np.ascontiguousarray(a)
        digest.update(str(tuple(a.shape)).encode())
        digest.update(a.tobytes())
    digest.update(extra.encode())
    return digest.hexdigest()[:16]


def _from_uint8(name: str, x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor,
                y_te: torch.Tensor, class_names=None) -> Dataset:
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
        class_names=tuple(class_names) if class_names else None,
    )


def load_mnist_uint8(data_dir: Path, download: bool = True, name: str = "mnist"):
    """Raw images (60k train incl. validation, 10k test) as uint8 tensors, via torchvision, for
    ``name`` mnist, fashion-mnist or kmnist. Returns (x_train, y_train, x_test, y_test, classes)."""
    folder = TORCHVISION_SETS[name]
    root = _torchvision_root(data_dir, folder)
    raw = root / folder / "raw"
    missing = _missing_raw_files(root, folder)
    import torchvision  # imported lazily: it is slow to import and tiny runs never need it

    cls = getattr(torchvision.datasets, folder)
    where = f"point --data-dir or ${DATA_DIR_ENV} at a folder holding {folder}/raw/<those files>"
    if missing and download:
        try:
            root.mkdir(parents=True, exist_ok=True)
            cls(root=str(root), train=True, download=True)
        except Exception as exc:  # network errors come in many types
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InflError(f"{folder} not found in {raw} (looked for {', '.join(missing)}) "
                            f"and the download failed ({reason}); {where}") from None
        missing = _missing_raw_files(root, folder)
    if missing:
        raise InflError(f"{folder} not found in {raw} (looked for {', '.join(missing)}); "
                        f"{where}, or allow the download")
    try:
        train = cls(root=str(root), train=True, download=False)
        test = cls(root=str(root), train=False, download=False)
    except Exception as exc:
        raise InflError(f"could not read {folder} from {raw}: {exc}") from None
    if tuple(train.data.shape[1:]) != IMAGE_SHAPE or train.data.shape[0] <= MNIST_VALIDATION:
        raise InflError(f"{raw} does not hold {folder}'s 28 × 28 training images "
                        f"(found {tuple(train.data.shape)})")
    return train.data, train.targets, test.data, test.targets, list(train.classes)


def load_dataset(name: str, data_dir: Path | None = None, download: bool = True,
                 bias: bool = False) -> Dataset:
    """Load a built-in dataset (``mnist``, ``fashion-mnist``, ``kmnist`` from ``data_dir``,
    default :func:`default_data_dir`; ``mnist-tiny`` from the package) or an NPZ file
    (:func:`load_npz`); with ``bias`` a constant feature is appended (:func:`with_bias`)."""
    if is_npz(name):
        data = load_npz(Path(name))
    elif name in TORCHVISION_SETS:
        x_tr, y_tr, x_te, y_te, classes = load_mnist_uint8(data_dir or default_data_dir(),
                                                           download, name)
        data = _from_uint8(name, x_tr[MNIST_VALIDATION:], y_tr[MNIST_VALIDATION:], x_te, y_te,
                           None if name == "mnist" else classes)
    elif name == "mnist-tiny":
        from safetensors.torch import load_file

        if not TINY_PATH.is_file():
            raise InflError(f"the bundled subset is missing from the installation: {TINY_PATH}")
        t = load_file(str(TINY_PATH))
        data = _from_uint8(name, t["x_train"], t["y_train"], t["x_test"], t["y_test"])
    else:
        raise BadInput(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}, "
                        "or a path ending in .npz")
    return with_bias(data) if bias else data


def recorded_dataset(settings: dict, download: bool = True) -> Dataset:
    """The dataset a model's training settings name (dataset or NPZ path, data folder, bias)."""
    return load_dataset(settings["dataset"],
                        Path(settings["data_dir"]) if settings.get("data_dir") else None,
                        download, bias=settings.get("bias", False))


def subset(data: Dataset, indices, tag: str) -> Dataset:
    """The training set restricted to ``indices`` (the test set kept), its fingerprint derived
    from the whole one's and ``tag``."""
    index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    return replace(data, name=f"{data.name} [{tag}]", x_train=data.x_train[index],
                   y_train=data.y_train[index],
                   fingerprint=_fingerprint(index, extra=f"{data.fingerprint}|{tag}"))


def with_bias(data: Dataset) -> Dataset:
    """``data`` with a last feature equal to 1 for every example (train and test). With
    integer/scale inputs the constant is scale/scale, an integer too."""
    def ones(x):
        return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)

    return replace(data, x_train=ones(data.x_train), x_test=ones(data.x_test), bias=True,
                   fingerprint=_fingerprint(extra=f"{data.fingerprint}+bias"))


def load_npz(path: Path) -> Dataset:
    """A user's feature matrices (module doc); every problem with the file is one
    :class:`InflError` naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BadInput(f"{path} not found")
    if not zipfile.is_zipfile(path):
        raise BadInput(f"{path} is not an NPZ file (not a zip archive of .npy arrays, as "
                       "numpy.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            missing = [a for a in NPZ_ARRAYS if a not in names]
            if missing:
                raise BadInput(f"{path} lacks the array{'s' if len(missing) > 1 else ''} "
                                f"{', '.join(missing)} (it has: {', '.join(sorted(names)) or 'none'}"
                                f"); an infl NPZ holds {', '.join(NPZ_ARRAYS)} and optionally "
                                "class_names")
            arrays = {a: npz[a] for a in NPZ_ARRAYS}
            class_names = npz["class_names"] if "class_names" in names else None
    except BadInput:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise BadInput(f"{path} holds an array of Python objects; features and labels "
                            "must be numeric arrays") from None
        raise BadInput(f"{path} is not an NPZ file of arrays ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise BadInput(f"{path} is not an NPZ file ({type(exc).__name__}: {exc})") from None
    x_train = _features(arrays["X_train"], "X_train", path)
    x_test = _features(arrays["X_test"], "X_test", path)
    if x_train.shape[1] != x_test.shape[1]:
        raise BadInput(f"{path}: X_train has {x_train.shape[1]} features and X_test "
                        f"{x_test.shape[1]}; they must match")
    y_train = _labels(arrays["y_train"], "y_train", x_train.shape[0], "X_train", path)
    y_test = _labels(arrays["y_test"], "y_test", x_test.shape[0], "X_test", path)
    if class_names is not None:
        if class_names.ndim != 1 or class_names.dtype.kind not in "USiu":
            raise BadInput(f"{path}: class_names must be a 1-D array of strings")
        class_names = tuple(str(c) for c in class_names.tolist())
        k = len(class_names)
    else:
        k = int(max(y_train.max(), y_test.max())) + 1
    for name, y in (("y_train", y_train), ("y_test", y_test)):
        bad = (y < 0) | (y >= k)
        if bad.any():
            raise BadInput(f"{path}: {name} holds label {int(y[bad][0])}, outside 0..{k - 1}"
                            + (f" ({k} class_names)" if class_names else ""))
    if k < 2 or np.unique(y_train).size < 2:
        raise BadInput(f"{path}: the training labels hold a single class "
                        f"({int(y_train[0])}); a classifier needs at least two")
    if x_train.shape[0] < 2:
        raise BadInput(f"{path}: X_train has {x_train.shape[0]} example; leave-one-out "
                        "needs at least two")
    side = math.isqrt(x_train.shape[1])
    fp = _fingerprint(x_train, y_train, x_test, y_test,
                      extra="|".join(class_names) if class_names else "")
    return Dataset(
        name=str(path), x_train=torch.from_numpy(x_train), y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy(x_test), y_test=torch.from_numpy(y_test), fingerprint=fp,
        pixel_scale=_integer_scale(x_train), n_classes=k, class_names=class_names,
        image_shape=(side, side) if side * side == x_train.shape[1] and side > 1 else None)


def _features(a: np.ndarray, name: str, path: Path) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise BadInput(f"{path}: {name} has dtype {a.dtype}; features must be real numbers "
                        "(integer or floating point)")
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise BadInput(f"{path}: {name} must be a 2-D array [examples, features] with at "
                        f"least one of each, got shape {a.shape}")
    x = np.ascontiguousarray(a, dtype=np.float64)
    if not np.isfinite(x).all():
        i, j = np.argwhere(~np.isfinite(x))[0]
        raise BadInput(f"{path}: {name} holds {x[i, j]} at [{i}, {j}]; features must be "
                        "finite (no NaN or inf)")
    return x


def _labels(a: np.ndarray, name: str, n: int, x_name: str, path: Path) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise BadInput(f"{path}: {name} has dtype {a.dtype}; labels must be integers "
                        "0..K−1")
    if a.ndim != 1 or a.shape[0] != n:
        raise BadInput(f"{path}: {name} has shape {a.shape}; it must be 1-D with one label "
                        f"per row of {x_name} ({n})")
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.rint(a)).all()):
        raise BadInput(f"{path}: {name} holds non-integer labels; labels must be integers "
                        "0..K−1")
    return a.astype(np.int64)


def _integer_scale(x: np.ndarray) -> float | None:
    """The smallest common scale s in :data:`EXACT_SCALES` for which every feature is exactly
    the float64 nearest to an integer/s, |integer| ≤ 2²⁴ (then the data are those rationals up
    to one rounding each, and exact products apply), else None."""
    for scale in sorted(EXACT_SCALES):
        ints = np.rint(x * scale)
        if np.abs(ints).max() <= EXACT_MAX_INTEGER and np.array_equal(ints / scale, x):
            return scale
    return None
