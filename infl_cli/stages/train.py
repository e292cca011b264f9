"""``infl train``: fit the model and write ``model.safetensors``."""

from __future__ import annotations

from pathlib import Path

from infl_cli.data.datasets import is_npz, load_dataset
from infl_cli.engines import ModelSpec, engine_for, policy_for
from infl_cli.engines.spec import LogregSpec
from infl_cli.runtime import artifacts as art
from infl_cli.settings import validate_train
from infl_cli.stages.common import compute_device, resolve_path


def train_settings(dataset: str, data_dir: Path | None, wd: float, tol: float,
                   bias: bool = False, spec: ModelSpec | None = None,
                   classes: tuple | None = None) -> dict:
    """What a model is made with. An NPZ dataset is recorded by its absolute path (and needs
    no data folder); ``wd`` None is the model kind's default; ``classes`` (recorded only when
    given) the classes kept."""
    spec = spec or LogregSpec()
    wd = policy_for(spec.kind).default_wd if wd is None else wd
    where = {"dataset": resolve_path(Path(dataset)), "data_dir": None} if is_npz(dataset) \
        else {"dataset": dataset, "data_dir": resolve_path(data_dir)}
    out = {**where, "wd": wd, "tol": tol, "bias": bias, "model": spec.record()}
    if classes:
        out["classes"] = list(classes)
    return out


def run_train(workdir: Path, dataset: str, data_dir: Path | None, wd: float | None, tol: float,
              max_iter: int, download: bool = True, data=None, bias: bool = False,
              device=None, spec: ModelSpec | None = None, classes: tuple | None = None) -> dict:
    """Train and write the model with what later stages reuse: ``test_probs`` [m, C] (the
    test set's class probabilities) and, for the logistic model, the certified gradient at Ŵ
    with the training probabilities it was computed from (:meth:`fit` of the engine)."""
    spec = spec or LogregSpec()
    validate_train(wd, tol)
    spec.validate()
    engine = engine_for(spec.kind)
    settings = train_settings(dataset, data_dir, wd, tol, bias, spec, classes)
    device = compute_device(device)
    data = engine.training_data(data or load_dataset(dataset, data_dir, download, bias,
                                                     classes),
                                spec).to(device)
    tensors, info = engine.fit(data, settings["wd"], tol, max_iter, spec)
    test_probs = engine.probabilities(tensors, data.x_test)
    train_probs = tensors.get("train_probs")
    if train_probs is None:
        train_probs = engine.probabilities(tensors, data.x_train)
    for split, probs, y in (("test", test_probs, data.y_test),
                            ("train", train_probs, data.y_train)):
        info[f"{split}_accuracy"] = float((probs.argmax(1) == y).double().mean())
    tensors["test_probs"] = test_probs
    from infl_cli.runtime import device as device_mod

    record = {
        "stage": "train",
        "settings": settings,
        "model": engine.describe(spec),
        "inputs": {"data": data.fingerprint},
        "n_train": data.n_train,
        "n_test": data.n_test,
        "n_classes": data.n_classes,
        "n_features": data.n_features,
        "class_names": list(data.class_names) if data.class_names else None,
        "device": device_mod.describe(device),
        **info,
    }
    return art.save_artifact(workdir / art.MODEL, tensors, record)
