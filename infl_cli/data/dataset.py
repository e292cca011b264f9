"""The data as every stage holds it: a train/test split in stored form (:class:`Dataset`:
uint8 pixels, integers / scale, or float32 or float64 features, and int64 labels), its fingerprint, and
what is derived from it without copying the inputs (a subset, other labels, a bias feature,
some classes). Torch tensors and the design are made from it only when a stage asks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from infl_cli.data import cache as datacache
from infl_cli.errors import BadInput

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
    exactly, or float32 or float64 features as given; ``train_y`` [n], ``test_y`` [m]: labels
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


HASH_ROWS = 1 << 14  # rows per block when a float32 array is hashed as its float64 values


def fingerprint_of(*arrays, extra: str = "") -> str:
    """A short digest of the arrays' shapes and bytes. float32 features are hashed as their
    (exact) float64 values, a block of rows at a time: the same fingerprint as the float64
    features they equal, without a float64 copy of the whole."""
    digest = hashlib.sha256()
    for a in arrays:
        a = a.contiguous().numpy() if hasattr(a, "contiguous") else np.ascontiguousarray(a)
        digest.update(str(tuple(a.shape)).encode())
        if a.dtype == np.float32:
            for lo in range(0, a.shape[0], HASH_ROWS):
                digest.update(a[lo:lo + HASH_ROWS].astype(np.float64).tobytes())
        else:
            digest.update(a.tobytes())
    digest.update(extra.encode())
    return digest.hexdigest()[:16]


def with_parts(arrays: dict, meta: dict, bias: bool) -> datacache.Decoded:
    """The decoded data with their design's pieces (for the inputs with the bias feature,
    when ``bias``), and the fingerprint of the variant."""
    from infl_cli.data import parts as design_parts

    x = arrays["train_x"]
    if bias:
        x = design_parts.with_bias_column(x, meta["scale"])
        meta = dict(meta, fingerprint=fingerprint_of(extra=f"{meta['fingerprint']}+bias"))
    parts = design_parts.compute(x, meta["scale"])
    if parts.get("core_x") is arrays["train_x"]:  # every column dense: the core is the data
        parts.pop("core_x")
        meta = dict(meta, core_is_train_x=True)
    return datacache.Decoded({**arrays, **{f"part.{k}": v for k, v in parts.items()}},
                             dict(meta, bias=bias))


def from_decoded(decoded: datacache.Decoded) -> Dataset:
    m, a = decoded.meta, decoded.arrays
    return Dataset(name=m["name"], train_x=a["train_x"], train_y=a["train_y"],
                   test_x=a["test_x"], test_y=a["test_y"], fingerprint=m["fingerprint"],
                   pixel_scale=m["scale"], n_classes=int(m["n_classes"]),
                   class_names=tuple(m["class_names"]) if m["class_names"] else None,
                   image_shape=tuple(m["image_shape"]) if m["image_shape"] else None,
                   bias=bool(m["bias"]), parts=decoded.parts() or None)


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
                   fingerprint=fingerprint_of(np.asarray(classes), extra=f"{data.fingerprint}|"
                                                                       f"{tag}"))


def subset(data: Dataset, indices, tag: str) -> Dataset:
    """The training set restricted to ``indices`` (the test set kept), its fingerprint derived
    from the whole one's and ``tag``."""
    index = np.asarray(indices, dtype=np.int64)
    return replace(data, name=f"{data.name} [{tag}]", train_x=data.train_x[index],
                   train_y=data.train_y[index], parts=None,
                   fingerprint=fingerprint_of(index, extra=f"{data.fingerprint}|{tag}"))


def with_labels(data: Dataset, labels, tag: str) -> Dataset:
    """The same inputs with other training labels (``labels`` [n], e.g. some flipped), its
    fingerprint derived from the whole one's, the labels and ``tag``."""
    y = np.ascontiguousarray(np.asarray(labels, dtype=np.int64))
    if y.shape != data.train_y.shape:
        raise ValueError(f"{y.shape[0]} labels for {data.n_train} training points")
    out = replace(data, name=f"{data.name} [{tag}]", train_y=y,
                  fingerprint=fingerprint_of(y, extra=f"{data.fingerprint}|{tag}"))
    for shared in ("design", "x_train", "x_test"):  # the same inputs: built once, shared
        if shared in data.__dict__:
            out.__dict__[shared] = data.__dict__[shared]
    return out


def with_bias(data: Dataset) -> Dataset:
    """``data`` with a last feature equal to 1 for every example (train and test). With
    integer/scale inputs the constant is scale/scale, an integer too."""
    return replace(data, bias=True, parts=None,
                   fingerprint=fingerprint_of(extra=f"{data.fingerprint}+bias"))


def small_mnist_indices(n_train: int = 55_000, size: int = SMALL_MNIST) -> np.ndarray:
    """The authors' "small MNIST": the first ``size`` of NumPy's legacy shuffle of
    arange(n_train) seeded 0 (scripts/load_mnist.py)."""
    state = np.random.RandomState(0)
    perm = np.arange(n_train)
    state.shuffle(perm)
    return perm[:size]
