"""Rebuild ``mnist_tiny.safetensors`` from a local MNIST copy.

Usage: ``python -m infl_cli.assets.build_tiny ../shared/mnist``

Takes training images 5,000..5,999 (the first 1,000 of Koh & Liang's training split, after
the 5,000 validation images) and test images 0..199, as uint8, with their labels.
MNIST is by Yann LeCun, Corinna Cortes and Christopher J. C. Burges (CC BY-SA 3.0).
"""

import sys
from pathlib import Path

from safetensors.torch import save_file

from infl_cli.data.dataset import MNIST_VALIDATION
from infl_cli.data.datasets import TINY_PATH
from infl_cli.data.mnist import load_mnist_uint8

N_TINY_TRAIN = 1_000
N_TINY_TEST = 200
ATTRIBUTION = (
    "MNIST subset: training images 5000-5999 and test images 0-199 of the MNIST database "
    "by Yann LeCun, Corinna Cortes and Christopher J. C. Burges, licensed CC BY-SA 3.0."
)


def main(data_dir: str) -> None:
    x_tr, y_tr, x_te, y_te = load_mnist_uint8(Path(data_dir), download=False)
    lo, hi = MNIST_VALIDATION, MNIST_VALIDATION + N_TINY_TRAIN
    tensors = {
        "x_train": x_tr[lo:hi].reshape(N_TINY_TRAIN, -1).contiguous(),
        "y_train": y_tr[lo:hi].to(dtype=y_tr.dtype).contiguous(),
        "x_test": x_te[:N_TINY_TEST].reshape(N_TINY_TEST, -1).contiguous(),
        "y_test": y_te[:N_TINY_TEST].contiguous(),
    }
    save_file(tensors, str(TINY_PATH), metadata={"attribution": ATTRIBUTION})
    print(f"wrote {TINY_PATH}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/mnist")
