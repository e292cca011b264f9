"""Every stage's settings, their names and their one-line refusals, without torch.

The command line reads, checks and refuses its options here before anything computes, so that
``--help``, ``--version`` and every option error answer in a fraction of a second (torch takes
1.5–3 s to import). The computing modules (:mod:`~infl_cli.engines.logreg.solvers`, :mod:`~infl_cli.engines.logreg.loo`) take
their settings from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from infl_cli.errors import BadInput

# ----------------------------------------------------------------------------- names
DATASETS = ("mnist", "mnist-tiny", "fashion-mnist", "kmnist")
SOLVERS = ("lissa", "cg", "exact")  # inverse-HVP solvers
SOLVER_PRIORITY = ("exact", "cg", "lissa")  # most accurate first
PRESETS = ("default", "paper")  # LiSSA presets
LOO_METHODS = ("newton", "lbfgs", "adam", "dual")  # lbfgs: logistic; adam: the CNN; dual: the SVM
LOGREG_METHODS = ("newton", "lbfgs")
SELECTIONS = ("top", "random", "all")
DEFAULT_K = 500  # the paper's 500 points, or every training point of a smaller set

CPU_CHUNK = 50  # removals per chunk on the CPU (--chunk-size auto)


@dataclass
class LissaSettings:
    """LiSSA settings. ``scale`` is a number or "auto" (``scale_margin`` × the largest
    eigenvalue found on sampled mini-batch Hessians). Each repeat runs at most ``depth`` steps.
    Its estimate is v_j/scale when ``average_tail`` is 0 (the authors' choice), else the mean
    of v_i/scale over the last ``average_tail`` fraction of the steps so far (tail averaging,
    which cancels most of the sampling noise at no extra cost). Every ``check_every`` steps
    the estimate is compared with the previous check; a repeat stops early once the relative
    change ‖e_j − e_{j−check}‖/‖e_j‖ is ≤ ``stop_tol`` at two checks in a row (0: never)."""

    scale: float | str = "auto"
    damping: float = 0.0
    depth: int = 10_000
    batch_size: int = 500
    repeats: int = 1
    seed: int = 0
    average_tail: float = 0.5
    scale_margin: float = 1.2
    stop_tol: float = 1e-3
    check_every: int = 100

    @classmethod
    def paper(cls) -> "LissaSettings":
        """Koh & Liang's settings: scale 25, damping 0, depth 5,000, batch 1, 10 repeats, the
        last iterate, no early stop."""
        return cls(scale=25.0, damping=0.0, depth=5_000, batch_size=1, repeats=10, seed=0,
                   average_tail=0.0, stop_tol=0.0)


@dataclass
class CgSettings:
    """CG stops when every relative residual ‖Hs − g‖/‖g‖ is ≤ ``rtol`` or after ``max_iter``
    iterations; ``rank`` is the subspace rank of its preconditioner (0: plain CG)."""

    rtol: float = 1e-10
    max_iter: int = 1_000
    rank: int = 64


@dataclass
class LooSettings:
    """How each removal is solved. ``tol``: every removal must reach ‖∇R₋z‖ ≤ tol (certified,
    rounding included). ``rel_error``: drive each removal until its certified error bound is
    ≤ rel_error × |actual change| on each test point that selected it (0: stop at ``tol``).
    ``max_steps``: Newton steps before the exact-Hessian fallback. ``chunk_size``: removals
    solved together. ``fast_correction``: the second step's gradient from a float32 pass."""

    method: str = "newton"
    tol: float = 1e-8
    rel_error: float = 0.01
    max_steps: int = 10
    chunk_size: int = CPU_CHUNK
    fast_correction: bool = True
    retrain_steps: int = 30_000  # --method adam (the CNN): Adam steps per retraining


# ------------------------------------------------------------------------ refusals
def lissa_settings(preset, scale, depth, batch_size, repeats, seed, average_tail, stop_tol,
                   check_every) -> LissaSettings:
    """LiSSA's settings from the command line (its ``--damping`` is applied by the stage, once
    the solver is known)."""
    if preset not in PRESETS:
        raise BadInput(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    s = LissaSettings.paper() if preset == "paper" else LissaSettings()
    if scale is not None:
        if scale.strip().lower() == "auto":
            s.scale = "auto"
        else:
            try:
                s.scale = float(scale)
            except ValueError:
                raise BadInput(f"--scale must be 'auto' or a number, got {scale!r}") from None
    for name, value in (("depth", depth), ("batch_size", batch_size),
                        ("repeats", repeats), ("seed", seed), ("average_tail", average_tail),
                        ("stop_tol", stop_tol), ("check_every", check_every)):
        if value is not None:
            setattr(s, name, value)
    return s


BUILTIN_CLASSES = 10  # every built-in dataset has ten classes


def parse_classes(text: str | None, dataset: str | None = None) -> tuple | None:
    """``--classes 1,7`` as a tuple of distinct class indices (None: every class). At least
    two; for a built-in dataset each below its ten classes (an NPZ's are checked on
    loading)."""
    if text is None or text == "":
        return None
    try:
        classes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise BadInput(f"--classes must be class indices separated by commas (e.g. 1,7), "
                       f"got {text!r}") from None
    if len(classes) < 2:
        raise BadInput(f"--classes needs at least two classes to tell apart, got {text!r}")
    if len(set(classes)) != len(classes):
        raise BadInput(f"--classes lists a class twice: {text!r}")
    for c in classes:
        if c < 0 or (dataset in DATASETS and c >= BUILTIN_CLASSES):
            raise BadInput(f"--classes: class {c} does not exist in {dataset} (its classes "
                           f"are 0..{BUILTIN_CLASSES - 1})" if c >= 0 else
                           f"--classes: class {c} does not exist (classes are ≥ 0)")
    return classes


def validate_train(wd: float | None, tol: float) -> None:
    if wd is not None and not wd > 0:
        raise BadInput(f"--wd must be > 0 (the Hessian must be invertible), got {wd}")
    if not tol > 0:
        raise BadInput(f"--train-tol must be > 0, got {tol}")


def validate_loo(settings: LooSettings, select: str = "top", k: int | None = 1) -> None:
    """One-line refusals of LOO settings (``method`` None: the model's default; which methods
    a model has is its engine's check)."""
    if settings.method is not None and settings.method not in LOO_METHODS:
        raise BadInput(f"unknown method {settings.method!r}; choose one of: "
                       f"{', '.join(LOO_METHODS)}")
    if select not in SELECTIONS:
        raise BadInput(f"unknown selection {select!r}; choose one of: {', '.join(SELECTIONS)}")
    if select != "all" and k is not None and k < 1:
        raise BadInput(f"-k must be ≥ 1, got {k}")
    if (settings.chunk_size is not None and settings.chunk_size < 1) or settings.max_steps < 1:
        raise BadInput("--chunk-size and --max-steps must be ≥ 1")
    if settings.tol is not None and not settings.tol > 0:
        raise BadInput(f"--tol must be > 0, got {settings.tol}")
    if not 0 <= settings.rel_error < 1:
        raise BadInput(f"--rel-error must be in [0, 1) (0: stop at --tol), "
                       f"got {settings.rel_error}")


MEASURES = ("loss", "margin")  # a test point's output f_t for subset retraining and the LDS
IMPORT_MEANINGS = ("removal", "upweight", "helpful")  # what an imported score says


@dataclass
class LdsSettings:
    """Subset retraining for the LDS (:mod:`~infl_cli.engines.logreg.subsets`): ``subsets`` subsets of
    ``fraction``·n training points each, drawn with ``seed``; every retrained model certified
    to ‖∇R_S‖ ≤ ``tol`` (rounding included); outputs measured as ``measure``; ``chunk_size``
    subsets solved together (None: from the memory a chunk takes)."""

    subsets: int = 100
    fraction: float = 0.5
    seed: int = 0
    measure: str = "loss"
    tol: float = 1e-9
    chunk_size: int | None = None

    def record(self) -> dict:
        return {"subsets": self.subsets, "fraction": self.fraction, "seed": self.seed,
                "measure": self.measure, "tol": self.tol}


def validate_lds(settings: LdsSettings) -> None:
    """One-line refusals of the subset-retraining settings."""
    if settings.subsets < 1:
        raise BadInput(f"--subsets must be ≥ 1, got {settings.subsets}")
    if not 0 < settings.fraction < 1:
        raise BadInput(f"--fraction must be in (0, 1), got {settings.fraction}")
    if settings.measure not in MEASURES:
        raise BadInput(f"unknown measure {settings.measure!r}; choose one of: "
                       f"{', '.join(MEASURES)}")
    if not settings.tol > 0:
        raise BadInput(f"--tol must be > 0, got {settings.tol}")
    if settings.chunk_size is not None and settings.chunk_size < 1:
        raise BadInput(f"--chunk-size must be ≥ 1, got {settings.chunk_size}")


METHODS = ("grad-dot", "grad-cos", "representer", "arnoldi", "kfac", "ekfac", "datainf", "trak")


@dataclass
class EstimatorSettings:
    """``infl score --method``: an estimator of :mod:`~infl_cli.engines.logreg.estimators` and its knobs
    (None: the estimator's default)."""

    method: str
    rank: int | None = None  # arnoldi
    proj_dim: int | None = None  # trak
    models: int | None = None  # trak
    damping: float | None = None  # kfac, ekfac, datainf
    seed: int = 0

    KNOBS = {"arnoldi": ("rank", "seed"), "trak": ("proj_dim", "models", "seed"),
             "kfac": ("damping",), "ekfac": ("damping",), "datainf": ("damping",)}
    SHORT = {"rank": "rank", "proj_dim": "k", "models": "m", "damping": "d", "seed": "s"}

    def knobs(self) -> dict:
        """The knobs given that this method takes (the others are refused by validate)."""
        return {k: getattr(self, k) for k in self.KNOBS.get(self.method, ())
                if getattr(self, k) is not None and not (k == "seed" and self.seed == 0)}

    def label(self) -> str:
        """The scores label: the method, then each knob given (``arnoldi-rank20``,
        ``trak-k256-m10``, ``kfac-d0.001``)."""
        return "-".join([self.method] + [f"{self.SHORT[k]}{v:g}" if isinstance(v, float)
                                         else f"{self.SHORT[k]}{v}"
                                         for k, v in self.knobs().items()])


def validate_estimator(s: EstimatorSettings) -> None:
    if s.method not in METHODS:
        raise BadInput(f"unknown method {s.method!r}; choose one of: {', '.join(METHODS)}")
    for name, value in (("--rank", s.rank), ("--proj-dim", s.proj_dim), ("--models", s.models)):
        if value is not None and value < 1:
            raise BadInput(f"{name} must be ≥ 1, got {value}")
    if s.damping is not None and not s.damping >= 0:
        raise BadInput(f"--damping must be ≥ 0, got {s.damping}")
    given = {"rank": s.rank, "proj_dim": s.proj_dim, "models": s.models, "damping": s.damping}
    takes = EstimatorSettings.KNOBS.get(s.method, ())
    extra = [k for k, v in given.items() if v is not None and k not in takes]
    if extra:
        raise BadInput(f"--method {s.method} takes no --{extra[0].replace('_', '-')}")


def check_device_name(spec: str | None) -> str:
    """The ``--device`` value, normalised, if it is well formed (auto, cpu, cuda, cuda:N);
    whether the device exists is asked of torch only when a stage computes
    (:func:`infl_cli.runtime.device.resolve`)."""
    import re

    name = (spec or "auto").strip().lower()
    if name in ("auto", "cpu") or re.match(r"^cuda(?::\d+)?$", name):
        return name
    raise BadInput(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
