"""What the Python API returns: small dataclasses holding NumPy arrays (the artifacts' tensors,
read on the CPU) and the record of settings and certificates the stage wrote beside them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from infl_cli.errors import InflError


def _pandas():
    try:
        import pandas
    except ImportError:
        raise InflError("to_pandas needs pandas: pip install pandas") from None
    return pandas


def _fmt(value, digits: int = 6) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "undefined"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


@dataclass(repr=False)
class Model:
    """The trained model (``model.safetensors``): ``weight`` [K, d] (the SVM's: [d]) and its
    record (settings, the certified gradient bound, accuracies, provenance)."""

    weight: np.ndarray
    record: dict = field(default_factory=dict)

    @property
    def grad_bound(self):
        """Proven bound on ‖∇R(Ŵ)‖ (rounding included), where the model kind has one."""
        return self.record.get("grad_bound")

    def __repr__(self) -> str:
        s = self.record.get("settings", {})
        kind = s.get("model", "logreg")
        kind = kind.get("kind", "logreg") if isinstance(kind, dict) else kind
        return (f"Model({kind}, {s.get('dataset')}, weight "
                f"{list(self.weight.shape)}, wd {s.get('wd')}, certified ‖∇R‖ ≤ "
                f"{_fmt(self.grad_bound, 3)}, test accuracy {_fmt(self.record.get('test_accuracy'), 4)})")


@dataclass(repr=False)
class Ihvp:
    """s_test = H⁻¹∇L(z_test) per test point (``ihvp-<solver>.safetensors``): ``ihvp``
    [T, ...], ``test_indices`` [T]; the record holds each one's residual and proven error."""

    solver: str
    ihvp: np.ndarray
    test_indices: np.ndarray
    record: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        bounds = (self.record.get("report") or {}).get("error_bound_relative") or []
        worst = max((b for b in bounds if b is not None), default=None)
        return (f"Ihvp({self.solver}, {len(self.test_indices)} test points, proven relative "
                f"error ≤ {_fmt(worst, 3)})")


@dataclass(repr=False)
class Scores:
    """Influence of every training point on each test loss (``scores-<label>.safetensors``):
    ``influence`` [T, n] (I_up,loss: positive = upweighting raises the test loss),
    ``predicted_loss_diff`` [T, n] (= −I/n: the predicted change of the test loss when the
    point is removed; positive = helpful), ``test_indices`` [T]."""

    label: str
    influence: np.ndarray
    predicted_loss_diff: np.ndarray
    test_indices: np.ndarray
    record: dict = field(default_factory=dict)

    def row(self, test: int) -> int:
        hits = np.flatnonzero(self.test_indices == test)
        if not hits.size:
            raise InflError(f"scores-{self.label} hold no test point {test} (they hold "
                            f"{self.test_indices.tolist()[:10]})")
        return int(hits[0])

    def helpful(self, test: int, n: int = 10) -> np.ndarray:
        """The ``n`` training indices whose removal is predicted to raise test ``test``'s loss
        the most."""
        return np.argsort(-self.predicted_loss_diff[self.row(test)], kind="stable")[:n]

    def harmful(self, test: int, n: int = 10) -> np.ndarray:
        """The ``n`` training indices whose removal is predicted to lower it the most."""
        return np.argsort(self.predicted_loss_diff[self.row(test)], kind="stable")[:n]

    def to_pandas(self):
        """One row per (test point, training point)."""
        pd = _pandas()
        t, n = self.influence.shape
        return pd.DataFrame({"test_index": np.repeat(self.test_indices, n),
                             "train_index": np.tile(np.arange(n), t),
                             "influence": self.influence.reshape(-1),
                             "predicted_loss_diff": self.predicted_loss_diff.reshape(-1)})

    def __repr__(self) -> str:
        t, n = self.influence.shape
        return f"Scores({self.label}, {t} test points × {n:,} training points)"


@dataclass(repr=False)
class Loo:
    """Leave-one-out retraining (``loo.safetensors``): ``train_indices`` [K] removed,
    ``test_indices`` [T], ``actual_loss_diff`` [T, K] (the actual change of each test loss),
    ``bound`` [T, K] (its proven error bound: certified), ``selected`` [T, K] (the pair is in
    that test point's own selection), ``grad_norm`` [K] (‖∇R₋z‖ of each retrained model)."""

    train_indices: np.ndarray
    test_indices: np.ndarray
    actual_loss_diff: np.ndarray
    bound: np.ndarray
    selected: np.ndarray
    grad_norm: np.ndarray
    record: dict = field(default_factory=dict)

    def to_pandas(self):
        """One row per (test point, removal)."""
        pd = _pandas()
        t, k = self.actual_loss_diff.shape
        return pd.DataFrame({"test_index": np.repeat(self.test_indices, k),
                             "train_index": np.tile(self.train_indices, t),
                             "actual_loss_diff": self.actual_loss_diff.reshape(-1),
                             "bound": self.bound.reshape(-1),
                             "selected": self.selected.reshape(-1)})

    def __repr__(self) -> str:
        rec = self.record
        return (f"Loo({len(self.train_indices):,} removals, {len(self.test_indices)} test "
                f"points, {rec.get('certified', '?')} certified, largest bound "
                f"{_fmt(float(np.nanmax(self.bound)) if self.bound.size else None, 3)})")


@dataclass(repr=False)
class Judgement:
    """How well one scores artifact predicts the certified truth: ``lds`` (the linear
    datamodeling score) with its certified range ``lds_range`` (equal ends when every rank is
    proven: ``certified``), and ``loo`` (its correlations with the leave-one-out truth, where
    ``loo.safetensors`` exists)."""

    name: str
    lds: float | None
    lds_range: tuple
    certified: bool
    loo: dict | None
    per_test: dict
    note: str | None = None

    @classmethod
    def of(cls, name: str, entry: dict) -> "Judgement":
        return cls(name=name, lds=entry.get("lds"),
                   lds_range=(entry.get("lds_lo"), entry.get("lds_hi")),
                   certified=bool(entry.get("certified")), loo=entry.get("loo"),
                   per_test=entry.get("per_test", {}), note=entry.get("note"))

    def __repr__(self) -> str:
        ranks = "ranks exact" if self.certified else \
            f"in [{_fmt(self.lds_range[0], 4)}, {_fmt(self.lds_range[1], 4)}]"
        loo = "" if not self.loo else (
            f", LOO Spearman {_fmt(self.loo.get('spearman_mean'), 4)}, Pearson "
            f"{_fmt(self.loo.get('pearson_mean'), 4)}")
        return f"Judgement({self.name}: LDS {_fmt(self.lds, 4)} ({ranks}){loo})"


@dataclass(repr=False)
class Lds:
    """Every scores artifact judged on the certified subset truth: ``methods`` by label, and
    the section of ``metrics.json`` (``record``) with the truth's certificate."""

    methods: dict
    record: dict = field(default_factory=dict)

    def __getitem__(self, label: str) -> Judgement:
        return self.methods[label]

    def to_pandas(self):
        pd = _pandas()
        return pd.DataFrame([{"scores": j.name, "lds": j.lds, "lds_lo": j.lds_range[0],
                              "lds_hi": j.lds_range[1], "certified": j.certified,
                              **{f"loo_{k}": v for k, v in (j.loo or {}).items()
                                 if not isinstance(v, (dict, list))}}
                             for j in self.methods.values()])

    def __repr__(self) -> str:
        inner = "; ".join(f"{k} {_fmt(j.lds, 4)}" for k, j in self.methods.items())
        return (f"Lds({self.record.get('subsets')} subsets of {self.record.get('subset_size')}, "
                f"{self.record.get('test_points')} test points: {inner})")


@dataclass(repr=False)
class Result:
    """A study's outcome (plot, show, self-influence, mislabel, components, hinge, run): its
    ``record`` (every number, as ``--json`` prints it) and the figures it drew, plus the
    study's arrays where it wrote some (``arrays``)."""

    kind: str
    record: dict
    figures: list = field(default_factory=list)
    arrays: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)

    def __getitem__(self, key):
        return self.record[key]

    def to_pandas(self):
        """The rows listed (show, self-influence), or the arrays of one length."""
        pd = _pandas()
        if self.rows:
            return pd.DataFrame(self.rows)
        return pd.DataFrame({k: v for k, v in self.arrays.items() if np.ndim(v) == 1})

    def __repr__(self) -> str:
        figs = ", ".join(Path(f).name for f in self.figures if f)
        return f"Result({self.kind}" + (f"; figures: {figs}" if figs else "") + ")"
