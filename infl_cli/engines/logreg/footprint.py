"""How much memory each step of the logistic model takes at its peak, from the data's shape,
estimated before the step starts (:func:`peak_bytes`), so that a command that cannot fit the
budget (:mod:`~infl_cli.runtime.memory`) refuses up front in one line instead of dying of
memory part way.

The peak of every step is the same few terms, each counted from n, the active width d_a, K
classes and T test points:

* the interpreter with torch and the libraries (:data:`BASE_BYTES`);
* the training inputs as held: mapped from the decoded-data cache in their own dtype (float32
  features stay float32) with the design's pieces;
* a few [n, K] float64 arrays per step (probabilities, residuals, certified logits and their
  bounds: :data:`ROW_ARRAYS`), and the step's own per-row arrays (outputs [T, n], the
  preconditioner's projection [n, r], self-influence's quadratic forms [n, K−1, K−1], LDS's
  chunk of subsets);
* one pass's workspace (:data:`~infl_cli.runtime.memory.PASS_BYTES`): every pass over the
  rows goes in blocks that fit it;
* the dense matrices of the exact paths ((K·d_a)² Hessians, their factors and inverses).

The constants were fitted to synthetic data (K = 10, d = 256 float32 features, n = 400,000 and
1,600,000; ``tests/benchmarks/bench.py --sections memory``), where every estimate lies within
1.2× of the measured peak; ``tests/test_memory.py`` checks 1.5× on a mid-sized set.
"""

from __future__ import annotations

from infl_cli.runtime import memory

BASE_BYTES = 0.6 * 2 ** 30  # python, torch, NumPy, SciPy, rich: the RSS before any data
ROW_ARRAYS = 5  # [n, K] float64 arrays alive at a step's peak
PRECONDITIONER_RANK = 64  # the CG preconditioner's projection [n, r]
# what each step adds per row, beyond ROW_ARRAYS [n, K] arrays, as a function of (K, T)
STEP_ROWS = {
    "train": lambda k, t: 8 * PRECONDITIONER_RANK,
    "ihvp-exact": lambda k, t: 2 * 8 * k * (k + 1) // 2,  # the Gram blocks' weights, √w
    "ihvp-cg": lambda k, t: 8 * PRECONDITIONER_RANK,
    "ihvp-lissa": lambda k, t: 0,  # + two dense copies of the inputs (below)
    "score": lambda k, t: 2 * 8 * t,  # influence and predicted change [T, n]
    "loo": lambda k, t: 0,
    "self-influence": lambda k, t: 8 * (k - 1) ** 2 + 8 * 4,  # the quadratic forms
    "lds": lambda k, t: 0,  # + the chunk of subsets (below)
}
STEPS = tuple(STEP_ROWS)


def data_bytes(data) -> float:
    """The training and test inputs as held, with the design's pieces (each array once)."""
    seen, total = set(), 0.0
    arrays = [data.train_x, data.test_x, data.train_y, data.test_y,
              *data.design_parts.values()]
    for a in arrays:
        if id(a) not in seen and hasattr(a, "nbytes"):
            seen.add(id(a))
            total += float(a.nbytes)
    return total


def peak_bytes(step: str, data, tests: int = 1, chunk: int = 0, newton: bool = False) -> float:
    """The estimated peak of ``step`` (one of :data:`STEPS`) on ``data``: bytes."""
    n, k = data.n_train, data.n_classes
    width = int(data.design_parts["positions"].size)  # the active features
    rows = n * (ROW_ARRAYS * k * 8 + STEP_ROWS[step](k, tests))
    total = BASE_BYTES + data_bytes(data) + rows + memory.PASS_BYTES
    if step == "ihvp-exact":
        total += memory.hessian_bytes(k, width, 8)
    if step == "ihvp-lissa":  # LiSSA samples rows of the dense inputs, kept permuted
        total += 2.0 * n * width * 8
    if step == "loo" and newton:
        total += memory.hessian_bytes(k, width, 4)
    if step == "self-influence":  # the inverse, its reduced form and the Cholesky factor
        total += 3.0 * (k * width) ** 2 * 8
    if step == "lds":
        total += 6.0 * chunk * n * k * 8
    return total


# what runs instead, per step, when the estimate exceeds the budget
INSTEAD = {
    "train": "train on fewer rows or features, or raise $INFL_MEMORY_GB where more "
             "memory is free",
    "ihvp-exact": "use --solver cg or --solver lissa (Hessian-free)",
    "ihvp-cg": "solve for fewer test points at once, or raise $INFL_MEMORY_GB where more "
               "memory is free",
    "ihvp-lissa": "use --solver cg (no dense copy of the inputs)",
    "score": "score fewer test points at once (-t), or raise $INFL_MEMORY_GB",
    "loo": "use --method lbfgs (Hessian-free, slower per removal), or raise $INFL_MEMORY_GB",
    "self-influence": "it needs the dense (K·d)² inverse Hessian; use fewer features, or "
                      "raise $INFL_MEMORY_GB where more memory is free",
    "lds": "use --chunk-size 1 (one subset per pass), or raise $INFL_MEMORY_GB",
}


def require(step: str, data, what: str, **shape) -> None:
    """Refuse ``step`` in one line when its estimated peak exceeds the memory budget (a
    step without an estimate passes)."""
    if step not in STEP_ROWS:
        return
    k, width = data.n_classes, int(data.design_parts["positions"].size)
    dense = {"ihvp-exact": 8, "self-influence": 8, "loo": 4 if shape.get("newton") else 0}
    if dense.get(step):  # the dense Hessian alone: the sharper line, with what runs instead
        memory.require_hessian(k, width, dense[step], what, INSTEAD[step])
    memory.require(peak_bytes(step, data, **shape),
                   f"{what} on {data.n_train:,} rows × {data.n_features:,} features",
                   INSTEAD[step])
