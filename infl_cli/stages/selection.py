"""Which test points and which training points: reproducible samples and selections.

Test points come from ``-t`` (explicit indices) or ``--test-sample N --seed S`` (N indices
drawn without replacement, sorted). Training points to retrain without come from
``--select``:

* ``top``: for each test point its k training points of largest |I_up,loss| (both signs);
  the removals are the union, in order of first appearance (test points in order, each by
  decreasing |I|), and ``selected[t, j]`` marks the pairs in test point t's own top k;
* ``random``: k training points drawn uniformly without replacement (sorted), the same for
  every test point (all pairs selected);
* ``all``: every training point (all pairs selected; ``-k`` is not used).

Seeds go through NumPy's ``default_rng([seed, stream])`` with a separate stream for test
points and for training points, so the two draws are independent and platform-stable.
"""

from __future__ import annotations

import numpy as np

from infl_cli.errors import BadInput, InflError
from infl_cli.settings import DEFAULT_K, SELECTIONS

_TEST_STREAM, _TRAIN_STREAM = 1, 2


def sample_test_indices(n_test: int, count: int, seed: int) -> list[int]:
    """``count`` distinct test indices drawn with ``seed``, sorted."""
    if not 1 <= count <= n_test:
        raise BadInput(f"--test-sample must be between 1 and {n_test} (the test set's size), "
                        f"got {count}")
    rng = np.random.default_rng([seed, _TEST_STREAM])
    return sorted(int(i) for i in rng.choice(n_test, size=count, replace=False))


def resolve_test_indices(indices, sample: int | None, seed: int, n_test: int,
                         default: list[int], available: list[int] | None = None,
                         source: str = "") -> list[int]:
    """The test indices a command works on: ``-t`` values, a ``--test-sample``, or
    ``default``; checked for range and repeats, and, when ``available`` is given (the indices
    an input artifact ``source`` holds), that every one of them is there."""
    indices = list(indices or [])
    if indices and sample is not None:
        raise BadInput("give test points with -t or with --test-sample, not both")
    if sample is not None:
        chosen = sample_test_indices(n_test, sample, seed)
    else:
        chosen = indices or list(default)
    if not chosen:
        raise BadInput("give at least one test point (-t or --test-sample)")
    bad = [i for i in chosen if not 0 <= i < n_test]
    if bad:
        raise BadInput(f"test index {bad[0]} out of range: the test set has {n_test} points "
                        f"(0..{n_test - 1})")
    if len(set(chosen)) != len(chosen):
        raise BadInput("test indices repeat")
    if available is not None:
        missing = [i for i in chosen if i not in available]
        if missing:
            have = available if len(available) <= 12 else available[:12] + ["…"]
            raise InflError(f"{source} has no scores for test index {missing[0]} "
                            f"(it has {', '.join(map(str, have))}); run `infl ihvp` and "
                            "`infl score` for it")
    return chosen


def resolve_k(k: int | None, n_train: int) -> int:
    """``-k`` as given, or :data:`DEFAULT_K` (at most the training set's size) when not."""
    return min(DEFAULT_K, n_train) if k is None else k


def check_selection(select: str, k: int, n_train: int) -> None:
    if select not in SELECTIONS:
        raise BadInput(f"unknown selection {select!r}; choose one of: {', '.join(SELECTIONS)}")
    if select != "all" and not 1 <= k <= n_train:
        raise BadInput(f"-k must be between 1 and {n_train} (the training set's size) with "
                        f"--select {select}, got {k}")


def select_removals(select: str, k: int, influence, seed: int):
    """(train_indices int64 [K], selected bool [T, K]) for influence scores [T, n] (a torch
    tensor)."""
    import torch

    t, n = influence.shape
    check_selection(select, k, n)
    if select == "all":
        return np.arange(n, dtype=np.int64), np.ones((t, n), dtype=bool)
    if select == "random":
        rng = np.random.default_rng([seed, _TRAIN_STREAM])
        chosen = np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
        return chosen, np.ones((t, k), dtype=bool)
    tops = torch.topk(influence.abs(), k, dim=1).indices.numpy()  # [T, k], largest first
    order, position = [], {}
    for row in tops:
        for j in row.tolist():
            if j not in position:
                position[j] = len(order)
                order.append(j)
    selected = np.zeros((t, len(order)), dtype=bool)
    for i, row in enumerate(tops):
        selected[i, [position[j] for j in row.tolist()]] = True
    return np.asarray(order, dtype=np.int64), selected
