"""Chunked, resumable runs (leave-one-out's removals, subset retraining's subsets): the partial
artifact, the chunk-job interface and the in-process runner.

The K changes are cut into fixed chunks of ``chunk_size`` in ``train_indices`` order; a chunk
is solved by a job (:class:`ChunkJob`: ``job.solve(problem, ids, selected)``), a pure function
of the problem, the chunk and the job's settings, so its result does not depend on when, where
or in which order it runs (here, or on a Dask worker: :mod:`~infl_cli.runtime.cluster`). :class:`PartialResults` holds the results of the
chunks finished so far and a per-removal ``done`` mask in ``loo.partial.safetensors``,
rewritten atomically after every chunk; a rerun with the same settings and inputs loads it and
solves only the chunks still open, so nothing is lost or solved twice, whichever chunks
finished first. Memory is bounded by one chunk's work plus the [T, K] result arrays.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from infl_cli.runtime import artifacts as art

# each result: per (test point, change) "tk" or per change "k", and its dtype
LOO_LAYOUT = {"actual_loss_diff": ("tk", np.float64), "actual_error_bound": ("tk", np.float64),
              "grad_norm": ("k", np.float64), "grad_rounding": ("k", np.float64),
              "steps": ("k", np.int64), "fallback": ("k", bool)}
SUBSET_LAYOUT = {"outputs": ("tk", np.float64), "output_bound": ("tk", np.float64),
                 "grad_norm": ("k", np.float64), "grad_rounding": ("k", np.float64),
                 "steps": ("k", np.int64)}
RESULT_KEYS = tuple(LOO_LAYOUT)


class ChunkJob(Protocol):
    """What a chunked stage solves: ``solve(problem, ids, selected)`` → (results, stats), the
    results as NumPy arrays in the store's layout ([T, k] or [k]), the stats counting passes.
    Picklable: a cluster's workers run it on their own copy of the problem."""

    def solve(self, problem, ids, selected) -> tuple[dict, dict]:
        ...


def chunk_bounds(n_removals: int, chunk_size: int):
    """[(lo, hi)] of the fixed chunks that split ``n_removals`` changes."""
    return [(lo, min(lo + chunk_size, n_removals)) for lo in range(0, n_removals, chunk_size)]


def timed_chunk(job: ChunkJob, problem, ids, selected):
    """``job.solve`` on one chunk, plus its wall time in the stats."""
    start = time.perf_counter()
    results, stats = job.solve(problem, ids, selected)
    stats["seconds"] = time.perf_counter() - start
    return results, stats


class PartialResults:
    """The results of a LOO run, chunk by chunk, and their checkpoint on disk."""

    def __init__(self, path: Path, train_indices: np.ndarray, test_indices: list[int],
                 selected: np.ndarray, chunk_size: int, settings: dict, inputs: dict,
                 extra_keys: tuple = (), layout: dict | None = None,
                 stage: str = "loo-partial", status: tuple = ("grad_norm", "max |grad|")):
        """``extra_keys``: per-removal float64 results [K] beyond :data:`RESULT_KEYS` that the
        engine's chunks return (the CNN: λ_min of each removal's Newton matrix). ``layout``:
        the results of another kind of change (:data:`SUBSET_LAYOUT`: subset retraining,
        whose "removals" are the subsets' numbers); ``stage`` names the checkpoint's kind;
        ``status`` (result key, label): the largest value the progress bar shows."""
        self.path = Path(path)
        self.status = status
        self.stage = stage
        layout = dict(layout or LOO_LAYOUT, **{key: ("k", np.float64) for key in extra_keys})
        self.result_keys = tuple(layout)
        self.train_indices = np.asarray(train_indices, dtype=np.int64)
        self.test_indices = np.asarray(test_indices, dtype=np.int64)
        self.selected = np.asarray(selected, dtype=bool)
        self.settings, self.inputs = settings, inputs
        self.chunks = chunk_bounds(len(self.train_indices), chunk_size)
        t, k = self.selected.shape
        self.arrays = {key: (np.full((t, k) if shape == "tk" else k, np.nan)
                             if dtype == np.float64 else np.zeros(k, dtype=dtype))
                       for key, (shape, dtype) in layout.items()}
        self.arrays["done"] = np.zeros(k, dtype=bool)
        self.stats = {"float64_passes": 0, "float32_passes": 0, "chunk_seconds": 0.0}
        self.resumed_from = self._load()

    def _identity(self) -> dict:
        return {"train_indices": torch.from_numpy(self.train_indices),
                "test_indices": torch.from_numpy(self.test_indices),
                "selected": torch.from_numpy(self.selected)}

    def _load(self) -> int:
        """Take over the finished chunks of a checkpoint made for this very run."""
        if not self.path.is_file():
            return 0
        try:
            tensors, record = art.load_artifact(self.path, self.stage)
        except Exception:  # unreadable: it is only a cache, start over
            return 0
        if record.get("settings") != self.settings or record.get("inputs") != self.inputs:
            return 0
        if any(key not in tensors or not torch.equal(tensors[key], value)
               for key, value in self._identity().items()):
            return 0
        for key in self.arrays:
            self.arrays[key] = tensors[key].numpy().copy()
        self.stats.update(record.get("stats", {}))
        return self.n_done

    @property
    def n_done(self) -> int:
        return int(self.arrays["done"].sum())

    def pending(self):
        """(chunk index, lo, hi) of the chunks not finished yet."""
        done = self.arrays["done"]
        return [(i, lo, hi) for i, (lo, hi) in enumerate(self.chunks) if not done[lo:hi].all()]

    def chunk_inputs(self, lo: int, hi: int):
        """(removals, selected) of the chunk [lo, hi)."""
        return self.train_indices[lo:hi], self.selected[:, lo:hi]

    def put(self, lo: int, hi: int, results: dict, stats: dict) -> None:
        for key in self.result_keys:
            self.arrays[key][..., lo:hi] = results[key]
        self.arrays["done"][lo:hi] = True
        for key in ("float64_passes", "float32_passes"):
            self.stats[key] += int(stats.get(key, 0))
        self.stats["chunk_seconds"] += float(stats.get("seconds", 0.0))

    def finish(self, lo: int, hi: int, results: dict, stats: dict) -> str:
        """Record a solved chunk and checkpoint it; returns the progress status text."""
        self.put(lo, hi, results, stats)
        self.save()
        key, label = self.status
        return f"{label} {np.nanmax(self.arrays[key]):.1e}"

    def save(self) -> None:
        tensors = {**self._identity(),
                   **{key: torch.from_numpy(np.ascontiguousarray(value))
                      for key, value in self.arrays.items()}}
        art.save_artifact(self.path, tensors, {"stage": self.stage, "settings": self.settings,
                                               "inputs": self.inputs, "stats": self.stats,
                                               "n_done": self.n_done})

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)

    def final_tensors(self) -> dict:
        """The tensors of ``loo.safetensors`` (see the README's schema)."""
        out = self._identity()
        for key in self.result_keys:
            out[key] = torch.from_numpy(np.ascontiguousarray(self.arrays[key]))
        return out


def run_in_process(problem, store: PartialResults, job: ChunkJob, update=None) -> dict:
    """Solve the store's open chunks one after the other in this process, checkpointing after
    each. ``update(advance, status)`` drives a progress bar. Returns run facts for the record."""
    start = time.perf_counter()
    solved = 0
    for _, lo, hi in store.pending():
        removed, selected = store.chunk_inputs(lo, hi)
        results, stats = timed_chunk(job, problem, removed, selected)
        status = store.finish(lo, hi, results, stats)
        solved += hi - lo
        if update is not None:
            update(advance=hi - lo, status=status)
    return {"workers": 1, "solved": solved, "seconds": time.perf_counter() - start}
