"""The data a study learns from, as the Python API names it: a dataset ``infl`` knows
(``Dataset.load``) or the user's own arrays in memory (``Dataset.from_arrays``). No torch."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from infl_cli.errors import BadInput
from infl_cli.settings import DATASETS

ARRAY_NAMES = ("X_train", "y_train", "X_test", "y_test")


def as_numpy(value, name: str) -> np.ndarray:
    """A NumPy array of ``value``: an array, a torch tensor (moved to the CPU) or a sequence."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, torch not imported
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{name}: not an array ({exc})") from None


@dataclass(frozen=True)
class Dataset:
    """Training and test data for a :class:`~infl_cli.api.study.Study`.

    ``name`` is ``mnist``, ``mnist-tiny``, ``fashion-mnist``, ``kmnist``, a path to an NPZ file,
    or ``arrays`` for data held in memory (``arrays`` then holds them, checked, with their
    ``fingerprint``). ``bias`` appends a constant feature 1 (an intercept, regularised like the
    weights); ``classes`` keeps only those classes, in that order (a binary task: ``(1, 7)``)."""

    name: str
    data_dir: Path | None = None
    bias: bool = False
    classes: tuple | None = None
    download: bool = True
    arrays: dict | None = field(default=None, repr=False, compare=False)
    class_names: tuple | None = None
    fingerprint: str | None = None

    @classmethod
    def load(cls, name: str, data_dir=None, *, bias: bool = False, classes=None,
             download: bool = True) -> "Dataset":
        """A dataset ``infl`` reads itself: ``mnist``, ``mnist-tiny``, ``fashion-mnist``,
        ``kmnist`` (from ``data_dir``, ``$INFL_DATA_DIR`` or the user cache, downloaded there
        when missing and ``download``), or a path to an NPZ file (``X_train``, ``y_train``,
        ``X_test``, ``y_test``, optionally ``class_names``)."""
        name = os.fspath(name)
        if name not in DATASETS and not name.endswith(".npz"):
            raise BadInput(f"dataset {name!r}: choose {', '.join(DATASETS)} or a path to an "
                           ".npz file")
        if name.endswith(".npz"):
            from infl_cli.data.arrays import check_npz_file

            check_npz_file(Path(name).expanduser())
            name = str(Path(name).expanduser().resolve())
        return cls(name=name, data_dir=None if data_dir is None else Path(data_dir),
                   bias=bool(bias), classes=_classes(classes), download=bool(download))

    @classmethod
    def from_arrays(cls, X_train, y_train, X_test, y_test, class_names=None, *,
                    bias: bool = False) -> "Dataset":
        """Your own data in memory: features ``X_train`` [n, d] and ``X_test`` [m, d] (any
        finite real numbers; NumPy arrays, torch tensors or sequences) and integer labels
        ``y_train`` [n], ``y_test`` [m] in 0..K−1. They are checked as an NPZ file's are (one
        :class:`~infl_cli.errors.BadInput` for each thing wrong) and fingerprinted like a file,
        so a later :meth:`Study.open` knows them."""
        from infl_cli.data.arrays import from_arrays

        given = dict(zip(ARRAY_NAMES, (X_train, y_train, X_test, y_test)))
        arrays = {k: as_numpy(v, k) for k, v in given.items()}
        names = None if class_names is None else as_numpy(class_names, "class_names")
        checked = from_arrays(arrays, names, "Dataset.from_arrays")
        held = {"X_train": checked.train_x, "y_train": checked.train_y,
                "X_test": checked.test_x, "y_test": checked.test_y}
        return cls(name="arrays", bias=bool(bias), arrays=held,
                   class_names=checked.class_names, fingerprint=checked.fingerprint)

    @property
    def in_memory(self) -> bool:
        return self.arrays is not None

    def file_in(self, workdir: Path) -> Path:
        """Where a study in ``workdir`` keeps arrays held in memory (named by their
        fingerprint, so other data never overwrite them)."""
        return Path(workdir) / f"data-{self.fingerprint[:16]}.npz"

    def write_to(self, workdir: Path) -> Path:
        """The arrays as an NPZ file in ``workdir`` (once; atomically), which the stages read
        like any NPZ, and which the command line can use too."""
        from infl_cli.runtime.artifacts import atomic_write

        path = self.file_in(workdir)
        if not path.is_file():
            extra = {} if self.class_names is None else {
                "class_names": np.asarray(self.class_names)}

            def write(tmp):
                with open(tmp, "wb") as f:
                    np.savez(f, **self.arrays, **extra)

            Path(workdir).mkdir(parents=True, exist_ok=True)
            atomic_write(path, write)
        return path

    def settings(self, workdir: Path) -> dict:
        """The ``train``/``run`` settings that name these data (arrays: the file
        :meth:`write_to` writes, once the settings are checked)."""
        dataset = str(self.file_in(workdir).resolve()) if self.in_memory else self.name
        return {"dataset": dataset, "data_dir": self.data_dir, "bias": self.bias,
                "classes": self.classes, "download": self.download}

    def __repr__(self) -> str:
        if self.in_memory:
            x, xt = self.arrays["X_train"], self.arrays["X_test"]
            k = len(self.class_names) if self.class_names else int(
                max(self.arrays["y_train"].max(), self.arrays["y_test"].max())) + 1
            what = (f"arrays: n = {x.shape[0]:,} training, {xt.shape[0]:,} test, "
                    f"d = {x.shape[1]}, K = {k}")
        else:
            what = self.name
        extra = (", bias" if self.bias else "") + (
            f", classes {self.classes}" if self.classes else "")
        return f"Dataset({what}{extra})"


def _classes(classes) -> tuple | None:
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = [c for c in classes.split(",") if c.strip()]
    try:
        return tuple(int(c) for c in classes)
    except (TypeError, ValueError):
        raise BadInput(f"classes: integers such as (1, 7), got {classes!r}") from None
