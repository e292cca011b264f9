"""A user's own data: feature matrices in an NPZ file (``X_train``, ``y_train``, ``X_test``,
``y_test``, optional ``class_names``), checked in one line for each thing wrong, and decoded
into the decoded-data cache; features that are integers over a common scale are stored as
those integers (exact products certify them)."""

from __future__ import annotations

import math
import struct
import zipfile
from pathlib import Path

import numpy as np

from infl_cli.data import cache as datacache
from infl_cli.data.dataset import (
    EXACT_MAX_INTEGER,
    EXACT_SCALES,
    NPZ_ARRAYS,
    Dataset,
    fingerprint_of,
    with_parts,
)
from infl_cli.errors import BadInput


def check_npz_file(path: Path) -> None:
    if not path.is_file():
        raise BadInput(f"{path} not found")
    if not zipfile.is_zipfile(path):
        raise BadInput(f"{path} is not an NPZ file (not a zip archive of .npy arrays, as "
                       "numpy.savez writes)")


def decode_npz(path: Path, bias: bool) -> datacache.Decoded:
    data = load_npz(path)
    scale = data.pixel_scale
    x_tr, x_te = data.train_x, data.test_x
    if scale is not None:  # keep the integers: the features are exactly integers / scale
        x_tr = _integers_at(x_tr, scale)
        if _exact_at(x_te, scale):  # else the test features stay as given
            x_te = _integers_at(x_te, scale)
    meta = {"name": data.name, "fingerprint": data.fingerprint, "scale": scale,
            "n_classes": data.n_classes,
            "class_names": list(data.class_names) if data.class_names else None,
            "image_shape": list(data.image_shape) if data.image_shape else None}
    return with_parts({"train_x": x_tr, "train_y": data.train_y, "test_x": x_te,
                        "test_y": data.test_y}, meta, bias)


def load_npz(path: Path) -> Dataset:
    """A user's feature matrices (module doc); every problem with the file is one
    :class:`InflError` naming it."""
    path = Path(path).expanduser()
    check_npz_file(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            missing = [a for a in NPZ_ARRAYS if a not in names]
            if missing:
                raise BadInput(f"{path} lacks the array{'s' if len(missing) > 1 else ''} "
                                f"{', '.join(missing)} (it has: {', '.join(sorted(names)) or 'none'}"
                                f"); an infl NPZ holds {', '.join(NPZ_ARRAYS)} and optionally "
                                "class_names")
            arrays = {a: _mapped(path, npz.zip, a) for a in NPZ_ARRAYS}
            arrays = {a: npz[a] if arrays[a] is None else arrays[a] for a in NPZ_ARRAYS}
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
    return from_arrays(arrays, class_names, str(path))


def _mapped(path: Path, archive: zipfile.ZipFile, name: str) -> np.ndarray | None:
    """The array ``name`` of an NPZ memory-mapped where it is stored uncompressed (as
    ``numpy.savez`` writes), so that decoding a large file reads it once, in place, without a
    copy in memory (copy-on-write: writable, the file never changes, as the cache maps its
    own); None where it is compressed or not a plain numeric array."""
    try:
        info = archive.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)  # the member's local header: its name and extra field follow
            if local[:4] != b"PK\x03\x04":
                return None
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
    except (KeyError, ValueError, OSError, struct.error):
        return None
    if dtype.hasobject or fortran or 0 in shape:
        return None
    return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape)  # copy-on-write


def from_arrays(arrays: dict, class_names=None, where: str = "the arrays") -> Dataset:
    """A :class:`Dataset` of ``arrays`` (``X_train``, ``y_train``, ``X_test``, ``y_test``; NumPy),
    checked as an NPZ file's are: each thing wrong is one :class:`BadInput` naming ``where``."""
    path = where
    x_train = _features(arrays["X_train"], "X_train", path)
    x_test = _features(arrays["X_test"], "X_test", path)
    if x_train.shape[1] != x_test.shape[1]:
        raise BadInput(f"{path}: X_train has {x_train.shape[1]} features and X_test "
                        f"{x_test.shape[1]}; they must match")
    y_train = _labels(arrays["y_train"], "y_train", x_train.shape[0], "X_train", path)
    y_test = _labels(arrays["y_test"], "y_test", x_test.shape[0], "X_test", path)
    if class_names is not None:
        class_names = np.asarray(class_names)
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
    fp = fingerprint_of(x_train, y_train, x_test, y_test,
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
    # float32 features stay float32 (each is exactly a float64: products convert a block of
    # rows at a time); every other type becomes float64
    x = np.ascontiguousarray(a, dtype=a.dtype if a.dtype in (np.float32, np.float64)
                             else np.float64)
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


SCAN_ROWS = 1 << 13  # rows per block when features are scanned or converted


def _row_blocks(x: np.ndarray):
    for lo in range(0, x.shape[0], SCAN_ROWS):
        yield x[lo:lo + SCAN_ROWS].astype(np.float64, copy=False)


def _exact_at(x: np.ndarray, scale: float) -> bool:
    """Whether every feature is exactly the float64 nearest integer/``scale`` (|integer| ≤
    2²⁴), checked in float64 a block of rows at a time: the first block that fails ends the
    scan (general real features fail in the first)."""
    for block in _row_blocks(x):
        ints = np.rint(block * scale)
        if not (np.abs(ints).max(initial=0) <= EXACT_MAX_INTEGER
                and np.array_equal(ints / scale, block)):
            return False
    return True


def _integers_at(x: np.ndarray, scale: float) -> np.ndarray:
    """The integers x·scale (exact, :func:`_exact_at`) as int32."""
    out = np.empty(x.shape, dtype=np.int32)
    for i, block in enumerate(_row_blocks(x)):
        out[i * SCAN_ROWS:i * SCAN_ROWS + block.shape[0]] = np.rint(block * scale)
    return out
