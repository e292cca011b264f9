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
integer products of :mod:`~infl_cli.data.design` certify the gradients; other features are bounded
with the general rounding model.

``bias=True`` appends a feature that is 1 for every example, train and test: an intercept,
regularised by the same (wd/2)·‖θ‖² as the weights, so that the objective stays wd-strongly
convex and every certificate holds unchanged.

**Loading is cheap.** MNIST-format sets and NPZ files are decoded once into the decoded-data
cache (:mod:`~infl_cli.data.cache`), with the pieces of their design, and memory-mapped by every
later command. A :class:`Dataset` holds its arrays in stored form (uint8 pixels, integers /
scale or float64 features) and makes torch tensors and the design only when a stage asks for
them, so that what only reads a dataset's size or fingerprint never imports torch.
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

from infl_cli.data import cache as datacache
from infl_cli.errors import BadInput, InflError
from infl_cli.settings import DATASETS

# MNIST-format sets: the torchvision class and its folder under the data folder
TORCHVISION_SETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
# their class names, as torchvision gives them (MNIST's are the digits themselves)
CLASS_NAMES = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
}
N_CLASSES = 10
N_FEATURES = 784
IMAGE_SHAPE = (28, 28)
MNIST_VALIDATION = 5_000
SMALL_MNIST = 5_500  # the authors' "small MNIST" for the CNN
MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TINY_PATH = Path(__file__).resolve().parent.parent / "assets" / "mnist_tiny.safetensors"
DATA_DIR_ENV = "INFL_DATA_DIR"
NPZ_ARRAYS = ("X_train", "y_train", "X_test", "y_test")
# common scales tried for NPZ features that are integers / scale (exact products)
EXACT_SCALES = (1.0, 255.0) + tuple(2.0 ** k for k in range(1, 17))
EXACT_MAX_INTEGER = 2 ** 24


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split: inputs in stored form and int64 labels, as NumPy arrays; torch
    tensors on ``device_name`` made on first use.

    ``train_x`` [n, d] and ``test_x`` [m, d] are the stored inputs, without the bias feature:
    integers (uint8 pixels, or an NPZ's integers) whose features are stored/``pixel_scale``
    exactly, or float64 features as given; ``train_y`` [n], ``test_y`` [m]: labels
    0..K−1 with K = ``n_classes``. ``fingerprint`` is a SHA-256 of the raw data (uint8 pixels or
    float64 features, labels, and the bias flag), so artifacts can record exactly which data
    they were computed from. ``pixel_scale``: the inputs are integers divided by it (255 for
    images), which makes exact gradients possible; None for general real features.
    ``image_shape``: how the first ``d − bias`` features form an image (None: they do not).
    ``bias``: the last feature is the constant 1. ``parts``: the design's pieces
    (:mod:`~infl_cli.data.parts`, the bias feature included), when the cache had them.

    ``x_train``, ``y_train``, ``x_test``, ``y_test`` are the float64 features (bias included)
    and int64 labels as torch tensors on the device; ``design`` the training inputs as a design
    (:mod:`~infl_cli.data.design`); each is made once, when first asked for.
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    fingerprint: str
    pixel_scale: float | None = None
    n_classes: int = N_CLASSES
    class_names: tuple | None = None
    image_shape: tuple | None = IMAGE_SHAPE
    bias: bool = False
    parts: dict | None = None
    device_name: str = "cpu"

    # ----------------------------------------------------------------------- sizes
    @property
    def n_train(self) -> int:
        return int(self.train_y.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test_y.shape[0])

    @property
    def n_features(self) -> int:
        """d, the bias feature included."""
        return int(self.train_x.shape[1]) + int(self.bias)

    # ----------------------------------------------------------------------- NumPy
    def features(self, split: str = "train", rows=None) -> np.ndarray:
        """float64 features [len(rows) or all, d] of ``split`` (train | test), bias included."""
        x = self.train_x if split == "train" else self.test_x
        if rows is not None:
            x = x[np.asarray(rows)]
        out = x.astype(np.float64)
        if x.dtype.kind in "iu":  # stored as integers: the features are integers / scale
            out /= self.pixel_scale
        if self.bias:
            out = np.concatenate([out, np.ones((out.shape[0], 1))], axis=1)
        return out

    def labels(self, split: str = "train") -> np.ndarray:
        return self.train_y if split == "train" else self.test_y

    def image(self, x) -> np.ndarray | None:
        """The features of one example (a NumPy row or a tensor) as an image array (the bias
        feature dropped), or None when the features are not an image."""
        if self.image_shape is None:
            return None
        values = x.cpu().numpy() if hasattr(x, "cpu") else np.asarray(x)
        if self.bias:
            values = values[:-1]
        return values.reshape(self.image_shape)

    def class_name(self, label: int) -> str:
        return self.class_names[label] if self.class_names else str(label)

    @property
    def design_parts(self) -> dict:
        """The design's pieces: the cache's, else computed from the stored inputs (once)."""
        if self.parts is None:
            from infl_cli.data import parts as design_parts

            x = self.train_x
            if self.bias:
                x = design_parts.with_bias_column(x, self.pixel_scale)
            object.__setattr__(self, "parts", design_parts.compute(x, self.pixel_scale))
        return self.parts

    # ----------------------------------------------------------------------- torch
    @property
    def device(self):
        import torch

        return torch.device(self.device_name)

    @cached_property
    def x_train(self):
        return self._tensor(self.features("train"))

    @cached_property
    def x_test(self):
        return self._tensor(self.features("test"))

    @cached_property
    def y_train(self):
        return self._tensor(np.asarray(self.train_y, dtype=np.int64))

    @cached_property
    def y_test(self):
        return self._tensor(np.asarray(self.test_y, dtype=np.int64))

    def _tensor(self, a: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device_name)

    @cached_property
    def design(self):
        """The training inputs as a design on the data's device (:mod:`~infl_cli.data.design`:
        the core/rim matrix on the CPU, a dense tensor elsewhere), built once from the
        design's pieces."""
        from infl_cli.data.design import make_design

        return make_design(parts=self.design_parts, scale=self.pixel_scale,
                           device=self.device_name)

    def to(self, device) -> "Dataset":
        """The same data on ``device`` (itself when they are there: what it built is kept)."""
        name = str(device)
        if name == "cuda":
            name = "cuda:0"
        if name == self.device_name:
            return self
        return replace(self, device_name=name)


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
        a = a.contiguous().numpy() if hasattr(a, "contiguous") else np.ascontiguousarray(a)
        digest.update(str(tuple(a.shape)).encode())
        digest.update(a.tobytes())
    digest.update(extra.encode())
    return digest.hexdigest()[:16]


def _notice(line: str) -> None:
    from rich.markup import escape

    from infl_cli.runtime.progress import console

    console.print(f"[yellow]notice:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)


# ------------------------------------------------------------------ MNIST-format sets
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


def _decode_mnist(files, name: str, bias: bool) -> datacache.Decoded:
    x_tr, y_tr, x_te, y_te, classes = load_mnist_uint8(files[0].parent, False, name)
    x_tr = np.ascontiguousarray(x_tr[MNIST_VALIDATION:].reshape(-1, N_FEATURES))
    y_tr = np.ascontiguousarray(y_tr[MNIST_VALIDATION:])
    x_te = np.ascontiguousarray(x_te.reshape(-1, N_FEATURES))
    fingerprint = _fingerprint(x_tr, y_tr, x_te, y_te)
    meta = {"name": name, "fingerprint": fingerprint, "scale": 255.0, "n_classes": N_CLASSES,
            "class_names": list(classes) if classes else None, "image_shape": list(IMAGE_SHAPE)}
    return _with_parts({"train_x": x_tr, "train_y": y_tr, "test_x": x_te, "test_y": y_te},
                       meta, bias)


def _with_parts(arrays: dict, meta: dict, bias: bool) -> datacache.Decoded:
    """The decoded data with their design's pieces (for the inputs with the bias feature,
    when ``bias``), and the fingerprint of the variant."""
    from infl_cli.data import parts as design_parts

    x = arrays["train_x"]
    if bias:
        x = design_parts.with_bias_column(x, meta["scale"])
        meta = dict(meta, fingerprint=_fingerprint(extra=f"{meta['fingerprint']}+bias"))
    parts = design_parts.compute(x, meta["scale"])
    return datacache.Decoded({**arrays, **{f"part.{k}": v for k, v in parts.items()}},
                             dict(meta, bias=bias))


def _dataset(decoded: datacache.Decoded) -> Dataset:
    m, a = decoded.meta, decoded.arrays
    return Dataset(name=m["name"], train_x=a["train_x"], train_y=a["train_y"],
                   test_x=a["test_x"], test_y=a["test_y"], fingerprint=m["fingerprint"],
                   pixel_scale=m["scale"], n_classes=int(m["n_classes"]),
                   class_names=tuple(m["class_names"]) if m["class_names"] else None,
                   image_shape=tuple(m["image_shape"]) if m["image_shape"] else None,
                   bias=bool(m["bias"]), parts=decoded.parts() or None)


def load_dataset(name: str, data_dir: Path | None = None, download: bool = True,
                 bias: bool = False, classes=None) -> Dataset:
    """Load a built-in dataset (``mnist``, ``fashion-mnist``, ``kmnist`` from ``data_dir``,
    default :func:`default_data_dir`; ``mnist-tiny`` from the package) or an NPZ file
    (:func:`load_npz`); with ``bias`` a constant feature is appended; with ``classes`` only
    those classes are kept (:func:`select_classes`). MNIST-format sets and NPZ files come
    through the decoded-data cache (:mod:`~infl_cli.data.cache`)."""
    data = _load_dataset(name, data_dir, download, bias)
    return select_classes(data, classes) if classes else data


def select_classes(data: Dataset, classes) -> Dataset:
    """Only the training and test points of ``classes`` (in their order in the data), and
    their labels renumbered by their place in ``classes``: ``(1, 7)`` makes digit 1 class 0
    and digit 7 class 1. For two classes this is the authors' binary convention (digit 1 is
    y = +1, digit 7 is y = −1: class 0 is +1)."""
    classes = tuple(int(c) for c in classes)
    for c in classes:
        if not 0 <= c < data.n_classes:
            raise BadInput(f"--classes: class {c} does not exist in {data.name} (its classes "
                           f"are 0..{data.n_classes - 1})")
    lookup = np.full(data.n_classes, -1, dtype=np.int64)
    lookup[list(classes)] = np.arange(len(classes))
    arrays = {}
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x,
                                                                  data.test_y)):
        keep = np.flatnonzero(lookup[y] >= 0)
        if split == "train":
            counts = np.bincount(lookup[y[keep]], minlength=len(classes))
            if counts.min() == 0:
                missing = classes[int(np.argmin(counts))]
                raise BadInput(f"--classes: {data.name} has no training point of class "
                               f"{missing}")
        arrays[split] = (np.ascontiguousarray(x[keep]), lookup[y[keep]])
    tag = "classes " + ",".join(map(str, classes))
    return replace(data, name=f"{data.name} [{tag}]", train_x=arrays["train"][0],
                   train_y=arrays["train"][1], test_x=arrays["test"][0],
                   test_y=arrays["test"][1], n_classes=len(classes), parts=None,
                   class_names=tuple(data.class_name(c) for c in classes),
                   fingerprint=_fingerprint(np.asarray(classes), extra=f"{data.fingerprint}|"
                                                                       f"{tag}"))


def _load_dataset(name: str, data_dir: Path | None, download: bool, bias: bool) -> Dataset:
    suffix = "+bias" if bias else ""
    if is_npz(name):
        path = Path(name).expanduser()
        _check_npz_file(path)
        source = datacache.Source([path], f"{path.name}{suffix}", path.parent)
        return _dataset(datacache.load(source, lambda: _decode_npz(path, bias), _notice))
    if name in TORCHVISION_SETS:
        files = mnist_files(Path(data_dir) if data_dir else default_data_dir(), download, name)
        source = datacache.Source(files, f"{name}{suffix}", files[0].parent.parent)
        return _dataset(datacache.load(source, lambda: _decode_mnist(files, name, bias),
                                       _notice))
    if name == "mnist-tiny":
        from safetensors.numpy import load_file

        if not TINY_PATH.is_file():
            raise InflError(f"the bundled subset is missing from the installation: {TINY_PATH}")
        t = load_file(str(TINY_PATH))
        x_tr = t["x_train"].reshape(t["x_train"].shape[0], -1)
        x_te = t["x_test"].reshape(t["x_test"].shape[0], -1)
        y_tr, y_te = t["y_train"].astype(np.int64), t["y_test"].astype(np.int64)
        fp = _fingerprint(x_tr, y_tr, x_te, y_te)
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


def subset(data: Dataset, indices, tag: str) -> Dataset:
    """The training set restricted to ``indices`` (the test set kept), its fingerprint derived
    from the whole one's and ``tag``."""
    index = np.asarray(indices, dtype=np.int64)
    return replace(data, name=f"{data.name} [{tag}]", train_x=data.train_x[index],
                   train_y=data.train_y[index], parts=None,
                   fingerprint=_fingerprint(index, extra=f"{data.fingerprint}|{tag}"))


def with_labels(data: Dataset, labels, tag: str) -> Dataset:
    """The same inputs with other training labels (``labels`` [n], e.g. some flipped), its
    fingerprint derived from the whole one's, the labels and ``tag``."""
    y = np.ascontiguousarray(np.asarray(labels, dtype=np.int64))
    if y.shape != data.train_y.shape:
        raise ValueError(f"{y.shape[0]} labels for {data.n_train} training points")
    out = replace(data, name=f"{data.name} [{tag}]", train_y=y,
                  fingerprint=_fingerprint(y, extra=f"{data.fingerprint}|{tag}"))
    for shared in ("design", "x_train", "x_test"):  # the same inputs: built once, shared
        if shared in data.__dict__:
            out.__dict__[shared] = data.__dict__[shared]
    return out


def with_bias(data: Dataset) -> Dataset:
    """``data`` with a last feature equal to 1 for every example (train and test). With
    integer/scale inputs the constant is scale/scale, an integer too."""
    return replace(data, bias=True, parts=None,
                   fingerprint=_fingerprint(extra=f"{data.fingerprint}+bias"))


def small_mnist_indices(n_train: int = 55_000, size: int = SMALL_MNIST) -> np.ndarray:
    """The authors' "small MNIST": the first ``size`` of NumPy's legacy shuffle of
    arange(n_train) seeded 0 (scripts/load_mnist.py)."""
    state = np.random.RandomState(0)
    perm = np.arange(n_train)
    state.shuffle(perm)
    return perm[:size]


# ------------------------------------------------------------------------- NPZ files
def _check_npz_file(path: Path) -> None:
    if not path.is_file():
        raise BadInput(f"{path} not found")
    if not zipfile.is_zipfile(path):
        raise BadInput(f"{path} is not an NPZ file (not a zip archive of .npy arrays, as "
                       "numpy.savez writes)")


def _decode_npz(path: Path, bias: bool) -> datacache.Decoded:
    data = load_npz(path)
    scale = data.pixel_scale
    x_tr, x_te = data.train_x, data.test_x
    if scale is not None:  # keep the integers: the features are exactly integers / scale
        x_tr = np.rint(x_tr * scale).astype(np.int32)
        if _exact_at(x_te, scale):  # else the test features stay float64, as given
            x_te = np.rint(x_te * scale).astype(np.int32)
    meta = {"name": data.name, "fingerprint": data.fingerprint, "scale": scale,
            "n_classes": data.n_classes,
            "class_names": list(data.class_names) if data.class_names else None,
            "image_shape": list(data.image_shape) if data.image_shape else None}
    return _with_parts({"train_x": x_tr, "train_y": data.train_y, "test_x": x_te,
                        "test_y": data.test_y}, meta, bias)


def load_npz(path: Path) -> Dataset:
    """A user's feature matrices (module doc); every problem with the file is one
    :class:`InflError` naming it."""
    path = Path(path).expanduser()
    _check_npz_file(path)
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
        name=str(path), train_x=x_train, train_y=y_train, test_x=x_test, test_y=y_test,
        fingerprint=fp, pixel_scale=_integer_scale(x_train), n_classes=k,
        class_names=class_names,
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
        if _exact_at(x, scale):
            return scale
    return None


def _exact_at(x: np.ndarray, scale: float) -> bool:
    ints = np.rint(x * scale)
    return bool(np.abs(ints).max(initial=0) <= EXACT_MAX_INTEGER
                and np.array_equal(ints / scale, x))
