"""``infl train``: fit the model and write ``model.safetensors``.

A work folder holds one study: one model and what was computed from it. Training continues
that study (the data it names, unless other data are given) and refuses, in one line, to
replace its model by one of other data or of another kind unless told to start over
(``replace``), which first removes the old study's files (:func:`~infl_cli.runtime.artifacts.study_files`).
Other settings on the same data (another weight decay, tolerance, width…) are reruns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infl_cli.data.datasets import is_npz, load_dataset
from infl_cli.engines import ModelSpec, engine_for, policy_for
from infl_cli.engines.spec import LogregSpec
from infl_cli.errors import BadInput, InflError
from infl_cli.runtime import artifacts as art
from infl_cli.runtime import progress
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


@dataclass(frozen=True)
class DataChoice:
    """The data to train on, as resolved for a work folder (:func:`data_choice`)."""

    dataset: str
    data_dir: Path | None = None
    bias: bool = False
    classes: tuple | None = None


def data_choice(workdir: Path, dataset: str | None = None, data_dir: Path | None = None,
                bias: bool | None = None, classes: tuple | None = None) -> DataChoice:
    """The data a command means: as given; what is not given, the work folder's model's (its
    dataset when none is named; its data folder, bias and classes when the dataset is its
    own); else ``mnist`` without bias, all classes. Reads the record only (no torch)."""
    path = Path(workdir) / art.MODEL
    s = art.read_record(path)["settings"] if path.is_file() else None
    if s is not None and (dataset is None or _same_dataset(dataset, s["dataset"])):
        return DataChoice(s["dataset"],
                          data_dir if data_dir is not None else
                          (Path(s["data_dir"]) if s.get("data_dir") else None),
                          bool(s.get("bias", False)) if bias is None else bias,
                          tuple(s["classes"]) if classes is None and s.get("classes")
                          else classes)
    return DataChoice(dataset or "mnist", data_dir, bool(bias), classes)


def _same_dataset(given: str, recorded: str) -> bool:
    return resolve_path(Path(given)) == recorded if is_npz(given) else given == recorded


def guard_study(workdir: Path, settings: dict, replace: bool = False,
                remove: bool = True) -> None:
    """Refuse (one line) to replace a model of other data (another dataset, other classes,
    with or without the bias feature) or of another kind by one trained with ``settings``,
    naming the folder's study and the ways on; with ``replace`` (and ``remove``), remove the
    old study's files first."""
    path = Path(workdir) / art.MODEL
    if not path.is_file():
        return
    try:
        rec = art.read_record(path)
    except InflError:  # not a model infl can read: nothing of ours to protect
        return
    if _study_key(rec["settings"]) == _study_key(settings):
        return
    if not replace:
        raise BadInput(f"{workdir} holds another study ({describe_study(rec)}); "
                       f"{describe_study({'settings': settings})} would replace it: use "
                       f"another --workdir, or --replace to start over there")
    if not remove:
        return
    removed = art.remove_study(workdir)
    progress.notice(f"--replace: removed the study of {describe_study(rec)} from {workdir} "
                    f"({len(removed)} files)")


def _study_key(settings: dict) -> tuple:
    """What makes a study: its data (dataset, classes, bias) and its model kind."""
    return (settings["dataset"], tuple(settings.get("classes") or ()),
            bool(settings.get("bias", False)),
            (settings.get("model") or {}).get("kind", "logreg"))


def describe_study(rec: dict) -> str:
    """``a logreg model of mnist-tiny [classes 1,7]``, from a model record."""
    s = rec["settings"]
    kind = (s.get("model") or {}).get("kind", "logreg")
    where = Path(s["dataset"]).name if is_npz(s["dataset"]) else s["dataset"]
    extra = [f"classes {','.join(map(str, s['classes']))}"] if s.get("classes") else []
    extra += ["bias"] if s.get("bias") else []
    return f"a {kind} model of {where}" + (f" [{', '.join(extra)}]" if extra else "")


def run_train(workdir: Path, dataset: str, data_dir: Path | None, wd: float | None, tol: float,
              max_iter: int, download: bool = True, data=None, bias: bool = False,
              device=None, spec: ModelSpec | None = None, classes: tuple | None = None,
              replace: bool = False) -> dict:
    """Train and write the model with what later stages reuse: ``test_probs`` [m, C] (the
    test set's class probabilities) and, for the logistic model, the certified gradient at Ŵ
    with the training probabilities it was computed from (:meth:`fit` of the engine)."""
    spec = spec or LogregSpec()
    validate_train(wd, tol)
    spec.validate()
    engine = engine_for(spec.kind)
    settings = train_settings(dataset, data_dir, wd, tol, bias, spec, classes)
    guard_study(workdir, settings, replace, remove=False)
    device = compute_device(device)
    data = engine.training_data(data or load_dataset(dataset, data_dir, download, bias,
                                                     classes),
                                spec).to(device)
    engine.check_memory("train", data, "infl train")
    guard_study(workdir, settings, replace)  # only now: a refusal leaves the old study
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
