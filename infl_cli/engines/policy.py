"""Each model kind's policy: its defaults, the solvers and retraining methods it has, and what
it can do. Torch-free, so that the command line checks every setting before anything heavy is
imported; each engine (:mod:`~infl_cli.engines.base`) extends its kind's policy.

What a kind *can do* is said here, once, as capabilities the stages ask for instead of testing
the kind: ``closed_form`` (the logistic model's closed-form curvature, on which
self-influence, the mislabel study, the components, the estimators and subset retraining are
built), ``cluster_loo`` (LOO chunks that Dask workers can rebuild), ``ablation`` (the CNN's
plot compares every scores artifact with every LOO artifact), and the names of its LOO artifact
and figure.
"""

from __future__ import annotations

from infl_cli.engines.spec import KINDS, CnnSpec, LogregSpec, SmoothHingeSpec, SvmSpec
from infl_cli.errors import BadInput
from infl_cli.settings import LOGREG_METHODS, SOLVERS

LOO = "loo.safetensors"
SOLVER_TITLES = {"lissa": "LiSSA (stochastic) H⁻¹", "cg": "CG H⁻¹", "exact": "exact H⁻¹"}


class Policy:
    """A model kind's defaults and capabilities (the logistic model's, unless overridden)."""

    kind = "logreg"
    spec_class = LogregSpec
    default_wd = 0.01
    default_tol = 1e-8  # every LOO ‖∇R₋z‖, certified
    solvers = SOLVERS
    methods: tuple = ("newton",)
    paper_test = 8  # the paper's test point (0 for a test set of 8 points or fewer)
    closed_form = False
    cluster_loo = False
    ablation = False
    single_figure = "fig2_middle.png"

    def training_data(self, data, spec):
        return data

    def default_test(self, data, mrec: dict | None = None) -> int:
        """The test point the stages use when none is given: the paper's, where the test set
        has it (``mrec``: the trained model's record, for kinds whose default depends on it)."""
        return self.paper_test if data.n_test > self.paper_test else 0

    def default_solver(self, spec) -> str:
        return "lissa"

    def default_method(self, spec) -> str:
        return self.methods[0]

    def default_damping(self, spec) -> float:
        return 0.0

    def check_solver(self, solver: str, damping: float) -> None:
        if solver not in self.solvers:
            raise BadInput(f"unknown solver {solver!r}; choose one of: {', '.join(self.solvers)}")

    def check_method(self, method: str) -> None:
        if method not in self.methods:
            raise BadInput(f"unknown method {method!r} for {self.describe_kind()}; choose one "
                           f"of: {', '.join(self.methods)}")

    def describe_kind(self) -> str:
        return f"--model {self.kind}"

    def check_cluster(self, cluster: str | None) -> None:
        """The one refusal of ``--cluster`` for a kind whose LOO chunks run in this process."""
        if cluster is not None and not self.cluster_loo:
            raise BadInput("--cluster solves the logistic model's LOO chunks; the CNN's run in "
                           "this process (on a GPU: --device cuda)")

    def require_closed_form(self, what: str, where) -> None:
        """Refuse a study built on the logistic model's closed form for any other kind."""
        if not self.closed_form:
            raise BadInput(f"{what} is built on the logistic model's closed form; {where} "
                           f"holds a {self.kind}")

    def loo_name(self, method: str | None) -> str:
        """The LOO artifact ``method`` writes."""
        return LOO

    def figure_name(self, select: str, n_tests: int) -> str:
        """Figure 2's default file for a selection and a number of test points."""
        if select == "top":
            return self.single_figure if n_tests == 1 else "fig2_tests.png"
        return f"fig2_{select}.png"

    model_title = "Logistic regression"

    def panel_title(self, spec, solver: str, loo_method: str) -> str:
        """Figure 2's panel title: the model and the scores drawn (the paper's "Linear
        (exact)" is CG's or the exact solve's, "Linear (approx)" LiSSA's)."""
        name = SOLVER_TITLES.get(solver.split("-")[0], solver)
        damping = solver.split("-damping")[1] if "-damping" in solver else None
        return f"{self.model_title}, {name}" + (f" + {damping}·I" if damping else "")


class LogregPolicy(Policy):
    """Multinomial logistic regression: its defaults and what it offers."""

    kind = "logreg"
    methods = LOGREG_METHODS
    closed_form = True
    cluster_loo = True

    def describe_kind(self) -> str:
        return "the logistic model"

    def training_data(self, data, spec):
        """All the training points, or ``--train-size`` of them drawn at random (seed 0, in
        their order): the paper's attack trains on 1,800."""
        return random_points(data, spec.train_size)

    def check_solver(self, solver: str, damping: float) -> None:
        super().check_solver(solver, damping)
        if damping and solver != "lissa":
            raise BadInput(f"--damping {damping:g} with --solver {solver}: the logistic "
                           "model's Hessian is positive definite (λ_min ≥ wd); damping is a "
                           "LiSSA setting here")


class CnnPolicy(Policy):
    """Koh's All-CNN-C: its defaults and what it offers (per protocol)."""

    kind = "cnn"
    spec_class = CnnSpec
    default_wd = 0.001
    default_tol = 1e-10  # every LOO ‖∇R₋z‖ (float64 evaluation)
    solvers = ("exact", "cg", "lissa")
    methods = ("newton", "adam")
    paper_test = 6558  # the paper's test point for this panel
    paper_damping = 0.01
    ablation = True
    single_figure = "fig2_right.png"

    def describe_kind(self) -> str:
        return "the CNN"

    def training_data(self, data, spec):
        """The authors' "small MNIST" (5,500 of the 55,000 training images) for the
        MNIST-format sets; every training image of mnist-tiny or an NPZ of 28 × 28 images."""
        from infl_cli.data.dataset import IMAGE_SHAPE, TORCHVISION_SETS, small_mnist_indices, subset

        if data.image_shape != IMAGE_SHAPE or data.bias:
            raise BadInput(f"--model cnn needs 28 × 28 images without --bias (mnist, "
                           f"mnist-tiny, fashion-mnist, kmnist, or an NPZ of 784 features); "
                           f"{data.name} has {data.n_features} features"
                           + (" with the bias feature" if data.bias else ""))
        if data.name in TORCHVISION_SETS and data.n_train == 55_000:
            data = subset(data, small_mnist_indices(), "small MNIST: 5,500")
        return first_points(data, spec.train_size)

    def default_test(self, data, mrec: dict | None = None) -> int:
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

    def loo_name(self, method: str | None) -> str:
        """The Adam retraining (the paper's protocol) has its own artifact,
        ``loo-adam.safetensors``, so that both retrainings can sit in one folder."""
        return "loo-adam.safetensors" if method == "adam" else LOO

    def panel_title(self, spec, solver: str, loo_method: str) -> str:
        return f"CNN ({spec.protocol} protocol), {solver}; LOO by {loo_method}"


class HingePolicy(Policy):
    """A binary linear model on the (smooth) hinge, on integer pixel features (its
    certificates are exact arithmetic)."""

    default_wd = 0.01
    default_tol = 1e-8  # every LOO model: wd·(its certified radius) ≤ this
    solvers = ("exact",)
    paper_test = 1597  # the paper's Figure 3 test point

    def training_data(self, data, spec):
        if data.n_classes != 2:
            raise BadInput(f"--model {self.kind} tells two classes apart; {data.name} has "
                           f"{data.n_classes}: give --classes A,B (the paper: 1,7)")
        check_exact_features(data)
        return first_points(data, spec.train_size)

    def default_solver(self, spec) -> str:
        return "exact"

    def default_test(self, data, mrec: dict | None = None) -> int:
        """The paper's test point where the test set has it; else the one the trained model
        gets most wrong (its smallest margin, kept in its record: a point it fits with margin
        ≥ 1 has hinge loss 0, and every change of it would be 0)."""
        if data.n_test > self.paper_test:
            return self.paper_test
        return int((mrec or {}).get("worst_test", 0))

    def check_solver(self, solver: str, damping: float) -> None:
        if solver not in self.solvers:
            raise BadInput(f"--model {self.kind} solves H_t⁻¹g exactly (a d × d Cholesky); "
                           f"--solver {solver} does not apply: use --solver exact")
        if damping:
            raise BadInput(f"--damping does not apply to --model {self.kind} (H_t ⪰ wd·I)")


class SvmPolicy(HingePolicy):
    """The linear SVM: trained on the hinge, influence through the smooth hinge at
    ``--temperature``; LOO by warm-started dual coordinate ascent."""

    kind = "svm"
    model_title = "Linear SVM (smooth hinge)"
    spec_class = SvmSpec
    methods = ("dual",)


class SmoothHingePolicy(HingePolicy):
    """The smooth-hinge model trained at its own t; LOO by Newton."""

    kind = "smooth-hinge"
    model_title = "Smooth-hinge model"
    spec_class = SmoothHingeSpec
    methods = ("newton",)


def first_points(data, size: int | None):
    """The first ``size`` training points of ``data`` (``--train-size``; None: all)."""
    if size is None:
        return data
    import numpy as np

    from infl_cli.data.dataset import subset

    if size > data.n_train:
        raise BadInput(f"--train-size {size:,} exceeds the {data.n_train:,} training points "
                       f"of {data.name}")
    return subset(data, np.arange(size), f"first {size:,}")


def random_points(data, size: int | None, seed: int = 0):
    """``size`` training points of ``data`` drawn at random without replacement (``seed``),
    kept in their order (``--train-size`` of the logistic model; None: all)."""
    if size is None:
        return data
    import numpy as np

    from infl_cli.data.dataset import subset

    if size > data.n_train:
        raise BadInput(f"--train-size {size:,} exceeds the {data.n_train:,} training points "
                       f"of {data.name}")
    index = np.sort(np.random.default_rng(seed).choice(data.n_train, size, replace=False))
    return subset(data, index, f"random {size:,} (seed {seed})")


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


_POLICIES = {p.kind: p for p in (LogregPolicy(), CnnPolicy(), SvmPolicy(), SmoothHingePolicy())}


def policy_for(kind: str | None) -> Policy:
    """The torch-free policy of a model kind (None: the logistic model)."""
    kind = kind or "logreg"
    if kind not in _POLICIES:
        raise BadInput(f"unknown model {kind!r}; choose one of: {', '.join(KINDS)}")
    return _POLICIES[kind]
