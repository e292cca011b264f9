"""What the operations share: the work folder's lock, test-point choices, model and LOO
settings, the device (resolved with torch only when a stage computes). No torch here."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from infl_cli.engines import ModelSpec, make_spec
from infl_cli.errors import BadInput
from infl_cli.runtime import progress
from infl_cli.runtime.lock import workdir_lock
from infl_cli.settings import LooSettings, check_device_name


def device(spec: str, cluster: str | None = None):
    """The torch device ``--device`` names; with ``--cluster``, ``auto`` is the CPU (the
    workers')."""
    from infl_cli.runtime import device as device_mod

    return device_mod.resolve(device_name(spec, cluster))


def device_name(spec: str, cluster: str | None = None) -> str:
    """``--device`` checked for its form (no torch); with ``--cluster``, ``auto`` is ``cpu``."""
    name = check_device_name(spec)
    return "cpu" if cluster is not None and name == "auto" else name


def tests(test_index, test_sample, seed):
    """The test points asked for: indices (an int or a list), or a sample of that many."""
    from infl_cli.stages.common import TestChoice

    if isinstance(test_index, int):
        test_index = [test_index]
    return TestChoice([int(t) for t in test_index] if test_index else None, test_sample,
                      seed or 0)


def loo_settings(method, tol, rel_error, chunk_size, max_steps, retrain_steps) -> LooSettings:
    return LooSettings(method=method, tol=tol, rel_error=rel_error, chunk_size=chunk_size,
                       max_steps=max_steps, retrain_steps=retrain_steps)


def spec(model, width, protocol, adam_steps, adam_lr, train_batch, decay_epochs,
         seed, train_size=None, temperature=None) -> ModelSpec:
    """The model settings of ``train`` and ``run`` (checked: one line for each bad value)."""
    try:
        epochs = tuple(int(e) for e in str(joined(decay_epochs)).split(","))
    except ValueError:
        raise BadInput(f"--decay-epochs must be two integers A,B, got {decay_epochs!r}") from None
    return make_spec(model, width=width, protocol=protocol, adam_steps=adam_steps,
                     adam_lr=adam_lr, train_batch=train_batch, decay_epochs=epochs, seed=seed,
                     train_size=train_size, temperature=temperature)


def data(workdir: Path, dataset, data_dir, bias, classes):
    """The data of ``train`` and ``run``: as given, the rest from the work folder's model
    (:func:`~infl_cli.stages.train.data_choice`); ``--classes`` checked against it."""
    from infl_cli.settings import parse_classes
    from infl_cli.stages.train import data_choice

    dataset, classes = None if dataset is None else str(dataset), joined(classes)
    data_dir = None if data_dir is None else Path(data_dir)
    chosen = data_choice(workdir, dataset, data_dir, bias)
    given = parse_classes(classes, chosen.dataset)
    return data_choice(workdir, dataset, data_dir, bias, given) if given else chosen


def joined(value):
    """A list the command line writes as ``A,B,C`` (classes, temperatures, checks), given from
    Python as a list or tuple: the same string."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


warn, say = progress.warn, progress.say


@contextmanager
def writing(workdir: Path):
    """Hold the work folder's lock while an operation writes into it (one writer at a time)."""
    with workdir_lock(Path(workdir), warn=warn):
        yield
