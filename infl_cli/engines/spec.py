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
  order, resumable: :mod:`~infl_cli.runtime.chunks`).

Whatever both engines need alike (artifacts, selection, chunks, plots, the CG and LiSSA loops
over an ``apply_h`` callable) lives once, outside them.

Each engine's *policy* (its defaults and the solvers and methods it has: :class:`LogregPolicy`,
:class:`CnnPolicy`, :func:`policy_for`) lives here without torch, so that the command line
checks every setting before anything heavy is imported; the engines extend their policies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from infl_cli.errors import BadInput
from infl_cli.settings import LOGREG_METHODS, SOLVERS

KINDS = ("logreg", "cnn", "svm", "smooth-hinge")
HINGE_KINDS = ("svm", "smooth-hinge")
DEFAULT_TEMPERATURE = {"svm": 0.0, "smooth-hinge": 0.1}  # influence's t; training's t
PROTOCOLS = ("exact", "paper")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to train and how (recorded in the model's settings).

    ``kind`` logreg | cnn. For the CNN: ``width`` (channels), ``protocol`` exact | paper,
    and the Adam schedule: ``adam_steps`` (exact: the warm-up before Newton; paper: all of
    training), ``adam_lr``, ``train_batch``, ``decay_epochs`` (the learning rate ×0.1 and
    ×0.01 after these epochs, as the authors' code), ``seed`` (initialisation and batches),
    ``train_size`` (the first N images of the CNN's or the SVM's training set; None: all).
    None: the protocol's default (:mod:`~infl_cli.engines.cnn.engine`). For ``svm``: ``temperature``,
    the smooth hinge's t at which influence is computed (0: the hinge, H = wd·I); for
    ``smooth-hinge``: the t the model is trained at (:mod:`~infl_cli.engines.hinge.engine`)."""

    kind: str = "logreg"
    width: int = 8
    protocol: str = "exact"
    adam_steps: int | None = None
    adam_lr: float | None = None
    train_batch: int = 500
    decay_epochs: tuple = (10_000, 20_000)
    seed: int = 0
    train_size: int | None = None
    temperature: float | None = None

    def __post_init__(self):
        if self.kind in HINGE_KINDS and self.temperature is None:  # recorded as the value it is
            object.__setattr__(self, "temperature", DEFAULT_TEMPERATURE[self.kind])

    def record(self) -> dict:
        """The settings that define the model (the logistic model has none beyond its kind)."""
        if self.kind == "logreg":
            return {"kind": "logreg"}
        if self.kind in HINGE_KINDS:
            return {"kind": self.kind, "temperature": self.temperature,
                    "train_size": self.train_size}
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
    if spec.kind in ("logreg", *HINGE_KINDS) and (protocol_given or width_given):
        raise BadInput(f"{'--protocol' if protocol_given else '--width'} applies to --model "
                       f"cnn; the {spec.kind} model is trained to its certified optimum, the "
                       "only protocol it has")
    if spec.kind == "logreg" and spec.train_size is not None:
        raise BadInput("--train-size applies to --model cnn, svm or smooth-hinge; the logistic "
                       "model trains on all of its training set")
    if spec.temperature is not None:
        if spec.kind not in HINGE_KINDS:
            raise BadInput(f"--temperature applies to --model svm or smooth-hinge, not "
                           f"{spec.kind}")
        if not spec.temperature >= 0 or spec.temperature == float("inf"):
            raise BadInput(f"--temperature must be ≥ 0 (0: the hinge itself), got "
                           f"{spec.temperature:g}")
        if spec.kind == "smooth-hinge" and spec.temperature == 0:
            raise BadInput("--model smooth-hinge needs --temperature > 0 (at 0 it is the "
                           "SVM: --model svm)")
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


def first_points(data, size: int | None):
    """The first ``size`` training points of ``data`` (``--train-size``; None: all)."""
    if size is None:
        return data
    import numpy as np

    from infl_cli.data.datasets import subset

    if size > data.n_train:
        raise BadInput(f"--train-size {size:,} exceeds the {data.n_train:,} training points "
                       f"of {data.name}")
    return subset(data, np.arange(size), f"first {size:,}")


class LogregPolicy:
    """Multinomial logistic regression: its defaults and what it offers."""

    kind = "logreg"
    default_wd = 0.01
    default_tol = 1e-8  # every LOO ‖∇R₋z‖, certified
    solvers = SOLVERS
    methods = LOGREG_METHODS
    paper_test = 8  # the paper's test point (0 for a test set of 8 points or fewer)

    def training_data(self, data, spec):
        return data

    def default_test(self, data) -> int:
        return self.paper_test if data.n_test > self.paper_test else 0

    def default_solver(self, spec) -> str:
        return "lissa"

    def default_method(self, spec) -> str:
        return "newton"

    def default_damping(self, spec) -> float:
        return 0.0

    def check_solver(self, solver: str, damping: float) -> None:
        if damping and solver != "lissa":
            raise BadInput(f"--damping {damping:g} with --solver {solver}: the logistic "
                           "model's Hessian is positive definite (λ_min ≥ wd); damping is a "
                           "LiSSA setting here")

    def check_method(self, method: str) -> None:
        if method not in self.methods:
            raise BadInput(f"unknown method {method!r} for the logistic model; choose one of: "
                           f"{', '.join(self.methods)}")


class CnnPolicy:
    """Koh's All-CNN-C: its defaults and what it offers (per protocol)."""

    kind = "cnn"
    default_wd = 0.001
    default_tol = 1e-10  # every LOO ‖∇R₋z‖ (float64 evaluation)
    solvers = ("exact", "cg", "lissa")
    methods = ("newton", "adam")
    paper_test = 6558  # the paper's test point for this panel
    paper_damping = 0.01

    def training_data(self, data, spec):
        """The authors' "small MNIST" (5,500 of the 55,000 training images) for the
        MNIST-format sets; every training image of mnist-tiny or an NPZ of 28 × 28 images."""
        from infl_cli.data.datasets import (IMAGE_SHAPE, TORCHVISION_SETS, small_mnist_indices,
            subset)

        if data.image_shape != IMAGE_SHAPE or data.bias:
            raise BadInput(f"--model cnn needs 28 × 28 images without --bias (mnist, "
                           f"mnist-tiny, fashion-mnist, kmnist, or an NPZ of 784 features); "
                           f"{data.name} has {data.n_features} features"
                           + (" with the bias feature" if data.bias else ""))
        if data.name in TORCHVISION_SETS and data.n_train == 55_000:
            data = subset(data, small_mnist_indices(), "small MNIST: 5,500")
        return first_points(data, spec.train_size)

    def default_test(self, data) -> int:
        for index in (self.paper_test, 8):
            if data.n_test > index:
                return index
        return 0

    def default_solver(self, spec) -> str:
        return "exact" if spec.protocol == "exact" else "cg"

    def default_method(self, spec) -> str:
        return "newton" if spec.protocol == "exact" else "adam"

    def default_damping(self, spec) -> float:
        return self.paper_damping if spec.protocol == "paper" else 0.0

    def check_solver(self, solver: str, damping: float) -> None:
        if solver not in self.solvers:
            raise BadInput(f"unknown solver {solver!r}; choose one of: {', '.join(self.solvers)}")

    def check_method(self, method: str) -> None:
        if method not in self.methods:
            raise BadInput(f"unknown method {method!r} for the CNN; choose one of: "
                           f"{', '.join(self.methods)}")


def check_exact_features(data) -> None:
    """The SVM's certificate is exact integer arithmetic: features k/s with integers
    0 ≤ |k| ≤ 255, an integer scale s ≤ 255, and no bias feature (the limb sums of
    :mod:`~infl_cli.engines.hinge.svm` are sized for that)."""
    import numpy as np

    if data.bias:
        raise BadInput(f"the SVM's certificate is exact arithmetic on integer features, no "
                       f"--bias; {data.name} has a bias feature")
    if data.pixel_scale is None or data.train_x.dtype.kind not in "iu":
        raise BadInput(f"the SVM's certificate is exact arithmetic on integer features "
                       f"(pixels/255); {data.name} has real-valued features")
    if data.pixel_scale != int(data.pixel_scale) or data.pixel_scale > 255:
        raise BadInput(f"the SVM's exact certificate needs features k/s with integer s ≤ 255; "
                       f"{data.name} has s = {data.pixel_scale:g}")
    for x in (data.train_x, data.test_x):
        if int(np.max(np.abs(x.astype(np.int64)), initial=0)) > 255:
            raise BadInput(f"the SVM's exact certificate needs integers ≤ 255; {data.name} has "
                           "larger ones")


class HingePolicy:
    """The linear SVM (``svm``: trained on the hinge, influence through the smooth hinge at
    ``--temperature``) and the smooth-hinge model trained at its own t (``smooth-hinge``),
    binary, on integer pixel features (their certificates are exact arithmetic)."""

    default_wd = 0.01
    default_tol = 1e-8  # every LOO model: wd·(its certified radius) ≤ this
    solvers = ("exact",)
    paper_test = 1597  # the paper's Figure 3 test point

    def __init__(self, kind: str):
        self.kind = kind
        self.methods = ("dual",) if kind == "svm" else ("newton",)

    def training_data(self, data, spec):
        if data.n_classes != 2:
            raise BadInput(f"--model {self.kind} tells two classes apart; {data.name} has "
                           f"{data.n_classes}: give --classes A,B (the paper: 1,7)")
        check_exact_features(data)
        return first_points(data, spec.train_size)

    def default_test(self, data) -> int:
        return self.paper_test if data.n_test > self.paper_test else 0

    def default_solver(self, spec) -> str:
        return "exact"

    def default_method(self, spec) -> str:
        return self.methods[0]

    def default_damping(self, spec) -> float:
        return 0.0

    def check_solver(self, solver: str, damping: float) -> None:
        if solver not in self.solvers:
            raise BadInput(f"--model {self.kind} solves H_t⁻¹g exactly (a d × d Cholesky); "
                           f"--solver {solver} does not apply: use --solver exact")
        if damping:
            raise BadInput(f"--damping does not apply to --model {self.kind} (H_t ⪰ wd·I)")

    def check_method(self, method: str) -> None:
        if method not in self.methods:
            raise BadInput(f"unknown method {method!r} for --model {self.kind}; choose one of: "
                           f"{', '.join(self.methods)}")


_POLICIES = {"logreg": LogregPolicy(), "cnn": CnnPolicy(), "svm": HingePolicy("svm"),
             "smooth-hinge": HingePolicy("smooth-hinge")}


def policy_for(kind: str | None):
    """The torch-free policy of a model kind (None: the logistic model)."""
    kind = kind or "logreg"
    if kind not in _POLICIES:
        raise BadInput(f"unknown model {kind!r}; choose one of: {', '.join(KINDS)}")
    return _POLICIES[kind]


def engine_for(kind: str | None):
    """The engine of a model kind (None: the logistic model, for records that predate kinds)."""
    kind = kind or "logreg"
    if kind == "logreg":
        from infl_cli.engines.logreg.engine import ENGINE
    elif kind == "cnn":
        from infl_cli.engines.cnn.engine import ENGINE
    elif kind in HINGE_KINDS:
        from infl_cli.engines.hinge.engine import ENGINES

        return ENGINES[kind]
    else:
        raise BadInput(f"unknown model {kind!r}; choose one of: {', '.join(KINDS)}")
    return ENGINE


def spec_of(mrec: dict) -> ModelSpec:
    """The model spec a model record holds."""
    return ModelSpec.from_record(mrec.get("settings", {}).get("model"))
