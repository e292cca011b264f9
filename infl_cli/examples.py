"""Two worked examples as NPZ files, from data that ships inside scikit-learn (nothing is
downloaded): ``python -m infl_cli.examples [FOLDER]`` (default ``artifacts/data``), after
``pip install -e '.[examples]'``.

* ``digits.npz``: ``load_digits``, 1,797 8 × 8 images of the digits 0–9 with pixel values
  0..16, divided by 16 (so in [0, 1], like MNIST's /255, and exactly integers/16: the exact
  integer products apply); 64 features, 10 classes.
* ``breast_cancer.npz``: ``load_breast_cancer``, 569 tumours × 30 real measurements, 2
  classes (malignant, benign), standardised with the training set's mean and standard
  deviation: real-valued features, bounded with the general rounding model.

Both are split by scikit-learn's ``train_test_split`` (75 % / 25 %, stratified by class,
``random_state=0``); all of the training part is the training set.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _split(x, y):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)


def digits() -> dict:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x_train, x_test, y_train, y_test = _split(bunch.data / 16.0, bunch.target)
    return {"X_train": x_train, "y_train": y_train, "X_test": x_test, "y_test": y_test,
            "class_names": np.array([str(c) for c in bunch.target_names])}


def breast_cancer() -> dict:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x_train, x_test, y_train, y_test = _split(bunch.data, bunch.target)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    return {"X_train": (x_train - mean) / std, "y_train": y_train,
            "X_test": (x_test - mean) / std, "y_test": y_test,
            "class_names": np.array([str(c) for c in bunch.target_names])}


EXAMPLES = {"digits": digits, "breast_cancer": breast_cancer}


def main(folder: str = "artifacts/data") -> None:
    try:
        import sklearn  # noqa: F401
    except ModuleNotFoundError:
        sys.exit("error: the examples need scikit-learn: pip install -e '.[examples]'")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, make in EXAMPLES.items():
        arrays = make()
        path = out / f"{name}.npz"
        np.savez(path, **arrays)
        print(f"wrote {path}: {arrays['X_train'].shape[0]} training and "
              f"{arrays['X_test'].shape[0]} test examples, {arrays['X_train'].shape[1]} "
              f"features, {len(arrays['class_names'])} classes")


if __name__ == "__main__":
    main(*sys.argv[1:2])
