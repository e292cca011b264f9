"""The stages as functions over a work folder; the CLI is a thin layer on top.

Each stage reads its inputs' artifacts, refuses inputs made from another model or data,
computes, and writes its own artifact atomically. Later stages take the dataset, data
folder and weight decay recorded by ``train``. Every stage works on a set of test points
(:class:`~infl_cli.stages.common.TestChoice`): ``ihvp`` defaults to test index 8, ``score``
to every test point its inverse-HVPs hold, ``loo`` to every test point its scores hold.

One module per stage (:mod:`.train`, :mod:`.ihvp`, :mod:`.score`, :mod:`.loo`, :mod:`.plot`,
:mod:`.show`, :mod:`.run`, :mod:`.selfinfluence`, :mod:`.mislabel`, :mod:`.lds`,
:mod:`.importscores`) over what they share
(:mod:`.common`). ``stages.NAME`` finds NAME in the module that defines it, importing only that
module (the command line's help and errors never wait for torch).
"""

from __future__ import annotations

import importlib

_MODULES = ("common", "train", "ihvp", "score", "loo", "plot", "show", "run", "selfinfluence",
            "mislabel", "lds", "importscores")
_WHERE = {
    "common": ("TestChoice", "is_current", "load_model", "model_engine", "model_policy",
               "available_scores", "load_scores", "score_rows", "choose_artifact",
               "model_tensors", "closed_form_model"),
    "train": ("train_settings", "validate_train", "run_train"),
    "ihvp": ("ihvp_solver", "ihvp_tests", "run_ihvp"),
    "score": ("score_settings", "score_tests", "run_score"),
    "loo": ("loo_settings", "validate_loo", "validate_cluster", "plan_loo", "LooJob", "Built",
            "resolve_chunk_size", "build_problem", "solve_store", "run_loo"),
    "plot": ("loo_artifact", "run_plot", "ablation", "plot_settings"),
    "show": ("run_show",),
    "run": ("run_all",),
    "lds": ("run_lds", "retrain_subsets", "read_truth", "judge"),
    "importscores": ("import_scores",),
}
_INDEX = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name: str):
    module = _INDEX.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
