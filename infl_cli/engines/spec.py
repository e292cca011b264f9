"""What model to train and how: one spec per model kind, recorded in the model's settings,
and the one-line refusals of settings that cannot work. Torch-free: the command line builds
and checks a spec before anything heavy is imported.

* :class:`LogregSpec`: multinomial logistic regression (no settings beyond its kind);
* :class:`CnnSpec`: Koh's All-CNN-C, its width, protocol and Adam schedule;
* :class:`SvmSpec`: the linear SVM, and the temperature t at which influence sees it;
* :class:`SmoothHingeSpec`: the smooth-hinge model, trained at its own t.

:func:`make_spec` builds the spec of a kind from the command line's values (``None``: not
given) and refuses, in one line, a value that does not apply to that kind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from infl_cli.errors import BadInput

KINDS = ("logreg", "cnn", "svm", "smooth-hinge")
HINGE_KINDS = ("svm", "smooth-hinge")
PROTOCOLS = ("exact", "paper")


@dataclass(frozen=True)
class ModelSpec:
    """A model kind and its settings (a subclass per kind)."""

    kind: ClassVar[str] = "logreg"

    def record(self) -> dict:
        """The settings that define the model, as recorded in ``model.safetensors``."""
        return {"kind": self.kind}

    def validate(self) -> None:
        """One-line refusals of this kind's settings."""

    @staticmethod
    def from_record(record: dict | None) -> "ModelSpec":
        """The spec a model record holds (None or empty: the logistic model, as records from
        before model kinds)."""
        if not record:
            return LogregSpec()
        values = dict(record)
        cls = spec_class(values.pop("kind", "logreg"))
        names = {f.name for f in fields(cls)}
        if "decay_epochs" in values:
            values["decay_epochs"] = tuple(values["decay_epochs"])
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True)
class LogregSpec(ModelSpec):
    """Multinomial logistic regression: trained to its certified optimum on all its data, or
    on ``train_size`` of its training points drawn at random (seed 0, kept in their order)."""

    kind: ClassVar[str] = "logreg"
    train_size: int | None = None

    def record(self) -> dict:
        return {"kind": self.kind} if self.train_size is None else \
            {"kind": self.kind, "train_size": self.train_size}

    def validate(self) -> None:
        if self.train_size is not None and self.train_size < 2:
            raise BadInput(f"--train-size must be ≥ 2, got {self.train_size}")


@dataclass(frozen=True)
class CnnSpec(ModelSpec):
    """Koh's All-CNN-C: ``width`` (channels), ``protocol`` exact | paper, and the Adam
    schedule: ``adam_steps`` (exact: the warm-up before Newton; paper: all of training),
    ``adam_lr``, ``train_batch``, ``decay_epochs`` (the learning rate ×0.1 and ×0.01 after
    these epochs, as the authors' code), ``seed`` (initialisation and batches), ``train_size``
    (the first N images of its training set; None: all). None: the protocol's default
    (:mod:`~infl_cli.engines.cnn.engine`)."""

    kind: ClassVar[str] = "cnn"
    width: int = 8
    protocol: str = "exact"
    adam_steps: int | None = None
    adam_lr: float | None = None
    train_batch: int = 500
    decay_epochs: tuple = (10_000, 20_000)
    seed: int = 0
    train_size: int | None = None

    def record(self) -> dict:
        out = {"kind": self.kind, **asdict(self), "temperature": None}
        out["decay_epochs"] = list(self.decay_epochs)
        return out

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise BadInput(f"unknown protocol {self.protocol!r}; choose one of: "
                           f"{', '.join(PROTOCOLS)}")
        if self.width < 1:
            raise BadInput(f"--width must be ≥ 1 (channels per convolution), got {self.width}")
        for name, least in (("adam_steps", 0), ("train_batch", 1), ("train_size", 2)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise BadInput(f"--{name.replace('_', '-')} must be ≥ {least}, got {value}")
        if self.adam_lr is not None and not self.adam_lr > 0:
            raise BadInput(f"--adam-lr must be > 0, got {self.adam_lr}")
        if len(self.decay_epochs) != 2 \
                or not 0 <= self.decay_epochs[0] <= self.decay_epochs[1]:
            raise BadInput(f"--decay-epochs must be two epochs A,B with 0 ≤ A ≤ B, got "
                           f"{','.join(map(str, self.decay_epochs))}")


@dataclass(frozen=True)
class _HingeSpec(ModelSpec):
    """A binary linear model on the (smooth) hinge: ``temperature``, the smooth hinge's t,
    and ``train_size`` (the first N training points; None: all)."""

    temperature: float = 0.0
    train_size: int | None = None

    def record(self) -> dict:
        return {"kind": self.kind, "temperature": self.temperature,
                "train_size": self.train_size}

    def validate(self) -> None:
        if not self.temperature >= 0 or self.temperature == float("inf"):
            raise BadInput(f"--temperature must be ≥ 0 (0: the hinge itself), got "
                           f"{self.temperature:g}")
        if self.train_size is not None and self.train_size < 2:
            raise BadInput(f"--train-size must be ≥ 2, got {self.train_size}")


@dataclass(frozen=True)
class SvmSpec(_HingeSpec):
    """The linear SVM; influence through the smooth hinge at ``temperature`` (0: the hinge,
    H = wd·I)."""

    kind: ClassVar[str] = "svm"
    temperature: float = 0.0


@dataclass(frozen=True)
class SmoothHingeSpec(_HingeSpec):
    """The smooth-hinge model trained at its own ``temperature`` t > 0."""

    kind: ClassVar[str] = "smooth-hinge"
    temperature: float = 0.1

    def validate(self) -> None:
        super().validate()
        if self.temperature == 0:
            raise BadInput("--model smooth-hinge needs --temperature > 0 (at 0 it is the "
                           "SVM: --model svm)")


_SPECS = {cls.kind: cls for cls in (LogregSpec, CnnSpec, SvmSpec, SmoothHingeSpec)}


def spec_class(kind: str | None) -> type[ModelSpec]:
    """The spec class of a model kind (None: the logistic model)."""
    kind = kind or "logreg"
    if kind not in _SPECS:
        raise BadInput(f"unknown model {kind!r}; choose one of: {', '.join(KINDS)}")
    return _SPECS[kind]


def make_spec(kind: str = "logreg", *, width: int | None = None, protocol: str | None = None,
              adam_steps: int | None = None, adam_lr: float | None = None,
              train_batch: int = 500, decay_epochs: tuple = (10_000, 20_000),
              seed: int | None = None, train_size: int | None = None,
              temperature: float | None = None) -> ModelSpec:
    """The spec of ``kind`` from the command line's values (None: not given), checked: a
    value that does not apply to the kind, or cannot work, is refused in one line."""
    cls = spec_class(kind)
    if kind != "cnn" and (protocol is not None or width is not None):
        raise BadInput(f"{'--protocol' if protocol is not None else '--width'} applies to "
                       f"--model cnn; the {kind} model is trained to its certified optimum, "
                       "the only protocol it has")
    if temperature is not None and kind not in HINGE_KINDS:
        raise BadInput(f"--temperature applies to --model svm or smooth-hinge, not {kind}")
    if cls is CnnSpec:
        spec = CnnSpec(width=8 if width is None else width, protocol=protocol or "exact",
                       adam_steps=adam_steps, adam_lr=adam_lr, train_batch=train_batch,
                       decay_epochs=tuple(decay_epochs), seed=seed or 0, train_size=train_size)
    elif kind in HINGE_KINDS:
        spec = cls(train_size=train_size) if temperature is None else \
            cls(temperature=temperature, train_size=train_size)
    else:
        spec = cls(train_size=train_size)
    spec.validate()
    return spec


def spec_of(mrec: dict) -> ModelSpec:
    """The model spec a model record holds."""
    return ModelSpec.from_record(mrec.get("settings", {}).get("model"))
