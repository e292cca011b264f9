"""The seam between the stages and a model kind: one small interface, two engines.

A stage picks the engine once, from the kind recorded in ``model.safetensors``
(:func:`engine_for`), and from then on only calls these methods; nothing else in the stages
knows which model it holds. Tensors are engine-shaped (the logistic model's W [C, d], the
CNN's flat θ [P]) and live on the data's device.

* ``training_data(data, spec)``: the training set the model uses (the CNN: "small MNIST");
* ``default_test(data)``: the test point the stages use when none is given;
* ``fit(data, wd, tol, max_iter, spec)`` → (tensors, info): the trained model, its
  certificate (gradient norm; λ_min where that is the claim) and figures;
* ``probabilities(tensors, x)``: class probabilities of inputs;
* ``test_gradients(tensors, x, y)``: ∇CE(z_test) per test point (no regulariser);
* ``solve(tensors, mrec, data, solver, rhs, ...)`` → (IHVP, report with its error figures);
* ``scores(tensors, mrec, data, ihvps)`` → (I_up,loss [T, n], predicted change −I/n);
* ``loo_problem(tensors, mrec, data, tests, settings)``: an object whose
  ``solve_chunk(removed, selected, settings)`` retrains without a chunk of removals (in any
  order, resumable: :mod:`~infl_cli.chunks`).

Whatever both engines need alike (artifacts, selection, chunks, plots, the CG and LiSSA loops
over an ``apply_h`` callable) lives once, outside them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import BadInput

KINDS = ("logreg", "cnn")
PROTOCOLS = ("exact", "paper")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to train and how (recorded in the model's settings).

    ``kind`` logreg | cnn. For the CNN: ``width`` (channels), ``protocol`` exact | paper,
    and the Adam schedule: ``adam_steps`` (exact: the warm-up before Newton; paper: all of
    training), ``adam_lr``, ``train_batch``, ``decay_epochs`` (the learning rate ×0.1 and
    ×0.01 after these epochs, as the authors' code), ``seed`` (initialisation and batches),
    ``train_size`` (the first N images of the CNN's training set; None: all).
    None: the protocol's default (:mod:`~infl_cli.cnn_engine`)."""

    kind: str = "logreg"
    width: int = 8
    protocol: str = "exact"
    adam_steps: int | None = None
    adam_lr: float | None = None
    train_batch: int = 500
    decay_epochs: tuple = (10_000, 20_000)
    seed: int = 0
    train_size: int | None = None

    def record(self) -> dict:
        """The settings that define the model (the logistic model has none beyond its kind)."""
        if self.kind == "logreg":
            return {"kind": "logreg"}
        out = asdict(self)
        out["decay_epochs"] = list(self.decay_epochs)
        return out

    @classmethod
    def from_record(cls, record: dict | None) -> "ModelSpec":
        if not record:
            return cls()
        values = dict(record)
        if "decay_epochs" in values:
            values["decay_epochs"] = tuple(values["decay_epochs"])
        return cls(**values)


def validate_spec(spec: ModelSpec, protocol_given: bool = False,
                  width_given: bool = False) -> None:
    """One-line refusals of model settings that cannot work."""
    if spec.kind not in KINDS:
        raise BadInput(f"unknown model {spec.kind!r}; choose one of: {', '.join(KINDS)}")
    if spec.protocol not in PROTOCOLS:
        raise BadInput(f"unknown protocol {spec.protocol!r}; choose one of: "
                       f"{', '.join(PROTOCOLS)}")
    if spec.kind == "logreg" and (protocol_given or width_given or spec.train_size is not None):
        what = ("--protocol" if protocol_given else "--width" if width_given
                else "--train-size")
        raise BadInput(f"{what} applies to --model cnn; the logistic model is trained to its "
                       "certified optimum, the only protocol it has")
    if spec.width < 1:
        raise BadInput(f"--width must be ≥ 1 (channels per convolution), got {spec.width}")
    for name, least in (("adam_steps", 0), ("train_batch", 1), ("train_size", 2)):
        value = getattr(spec, name)
        if value is not None and value < least:
            raise BadInput(f"--{name.replace('_', '-')} must be ≥ {least}, got {value}")
    if spec.adam_lr is not None and not spec.adam_lr > 0:
        raise BadInput(f"--adam-lr must be > 0, got {spec.adam_lr}")
    if len(spec.decay_epochs) != 2 or not 0 <= spec.decay_epochs[0] <= spec.decay_epochs[1]:
        raise BadInput(f"--decay-epochs must be two epochs A,B with 0 ≤ A ≤ B, got "
                       f"{','.join(map(str, spec.decay_epochs))}")


def engine_for(kind: str | None):
    """The engine of a model kind (None: the logistic model, for records that predate kinds)."""
    kind = kind or "logreg"
    if kind == "logreg":
        from .logreg_engine import ENGINE
    elif kind == "cnn":
        from .cnn_engine import ENGINE
    else:
        raise BadInput(f"unknown model {kind!r}; choose one of: {', '.join(KINDS)}")
    return ENGINE


def spec_of(mrec: dict) -> ModelSpec:
    """The model spec a model record holds."""
    return ModelSpec.from_record(mrec.get("settings", {}).get("model"))
