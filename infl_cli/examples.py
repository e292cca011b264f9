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

``python -m infl_cli.examples --dattri [FOLDER] [--data-dir DIR]`` writes instead
``dattri-mnist.npz``, the split of dattri's MNIST logistic-regression benchmark
(:func:`dattri_mnist`; needs only MNIST, no scikit-learn).
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
DATTRI_TRAIN, DATTRI_TEST = 5000, 500
DATTRI_MEAN, DATTRI_STD = 0.1307, 0.3081


def dattri_mnist(data_dir=None) -> dict:
    """dattri's MNIST split for its logistic-regression benchmark: the first 5,000 images of
    torchvision's MNIST training set (of all 60,000: dattri keeps no validation split) and the
    first 500 of its test set, as torchvision's ``ToTensor`` and ``Normalize((0.1307,),
    (0.3081,))`` give them: (x/255 − 0.1307)/0.3081 in float32 (stored in float64, exactly
    those float32 values), flattened to 784 features. dattri's model is
    ``nn.Linear(784, 10)``: train it with ``--bias``."""
    from infl_cli.data.datasets import default_data_dir
    from infl_cli.data.mnist import load_mnist_uint8

    x_tr, y_tr, x_te, y_te, _ = load_mnist_uint8(data_dir or default_data_dir())

    def normalise(x):
        t = x.reshape(x.shape[0], -1).astype(np.float32) / np.float32(255)
        return ((t - np.float32(DATTRI_MEAN)) / np.float32(DATTRI_STD)).astype(np.float64)

    return {"X_train": normalise(x_tr[:DATTRI_TRAIN]), "y_train": y_tr[:DATTRI_TRAIN],
            "X_test": normalise(x_te[:DATTRI_TEST]), "y_test": y_te[:DATTRI_TEST],
            "class_names": np.array([str(c) for c in range(10)])}


def _write(path: Path, arrays: dict) -> None:
    np.savez(path, **arrays)
    print(f"wrote {path}: {arrays['X_train'].shape[0]} training and "
          f"{arrays['X_test'].shape[0]} test examples, {arrays['X_train'].shape[1]} "
          f"features, {len(arrays['class_names'])} classes")


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m infl_cli.examples",
                                     description="Write example datasets as NPZ files.")
    parser.add_argument("folder", nargs="?", default="artifacts/data")
    parser.add_argument("--dattri", action="store_true",
                        help="write dattri-mnist.npz (dattri's MNIST benchmark split) only")
    parser.add_argument("--data-dir", default=None,
                        help="MNIST folder (torchvision layout) for --dattri")
    args = parser.parse_args(argv)
    out = Path(args.folder)
    if args.dattri:
        from infl_cli.errors import InflError

        try:
            arrays = dattri_mnist(args.data_dir)
        except InflError as exc:
            sys.exit(f"error: {exc}")
        out.mkdir(parents=True, exist_ok=True)
        _write(out / "dattri-mnist.npz", arrays)
        return
    try:
        import sklearn  # noqa: F401
    except ModuleNotFoundError:
        sys.exit("error: the examples need scikit-learn: pip install -e '.[examples]'")
    out.mkdir(parents=True, exist_ok=True)
    for name, make in EXAMPLES.items():
        _write(out / f"{name}.npz", make())


if __name__ == "__main__":
    main()
