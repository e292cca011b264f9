"""A fitted scikit-learn ``LogisticRegression`` as a study: its objective mapped to ours, the
model trained to our certified optimum, and the distance from scikit-learn's weights.

scikit-learn minimises C·Σᵢ CEᵢ + ½‖W‖². Divided by C·n that is mean CE + ‖W‖²/(2Cn): ours,
(wd/2)‖W‖², at **wd = 1/(C·n)** for K ≥ 3 classes (multinomial, all K rows penalised). For two
classes scikit-learn fits binary logistic regression in one weight vector v; our two-class model
equals it in v = W₁ − W₀ at half its weight decay (at the optimum W₀ = −W₁, so
(wd/2)(‖W₀‖² + ‖W₁‖²) = (wd/4)‖v‖²), hence **wd = 2/(C·n)**."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from infl_cli.api.dataset import Dataset, as_numpy
from infl_cli.errors import BadInput


def mapped_wd(clf, n: int) -> float:
    """Our weight decay for ``clf``'s C (module doc); what does not map is one BadInput."""
    name = type(clf).__name__
    if name != "LogisticRegression" or not hasattr(clf, "coef_"):
        raise BadInput(f"from_sklearn: a fitted sklearn.linear_model.LogisticRegression, got "
                       f"{name}{'' if hasattr(clf, 'coef_') else ' (not fitted)'}")
    if clf.fit_intercept:
        raise BadInput("from_sklearn: fit_intercept=True leaves the intercept unregularised, "
                       "which has no certified counterpart here; fit with fit_intercept=False "
                       "and a column of ones (regularised like the weights: our --bias)")
    penalty = getattr(clf, "penalty", "l2")
    l1_ratio = getattr(clf, "l1_ratio", None)
    if penalty not in ("l2", "deprecated") or (l1_ratio not in (None, 0, 0.0)
                                                and penalty != "l2"):
        raise BadInput(f"from_sklearn: only the L2 penalty maps to our weight decay, got "
                       f"penalty={penalty!r}, l1_ratio={l1_ratio!r}")
    if not (0 < float(clf.C) < math.inf):
        raise BadInput(f"from_sklearn: C must be finite and > 0 (an L2 penalty), got {clf.C}")
    if clf.class_weight is not None:
        raise BadInput("from_sklearn: class_weight reweights the loss; our objective weighs every "
                       "point equally (fit without class_weight)")
    k = len(clf.classes_)
    if k > 2 and (getattr(clf, "multi_class", "auto") == "ovr" or clf.solver == "liblinear"):
        raise BadInput("from_sklearn: one-vs-rest models do not map; fit the multinomial model "
                       "(solver lbfgs, newton-cg, newton-cholesky, sag or saga)")
    return (2.0 if k == 2 else 1.0) / (float(clf.C) * n)


def sklearn_weights(clf) -> np.ndarray:
    """scikit-learn's weights in our layout: [K, d] for K ≥ 3, v [d] for two classes."""
    coef = np.asarray(clf.coef_, dtype=np.float64)
    return coef[0] if len(clf.classes_) == 2 else coef


def ours_in_their_layout(weight: np.ndarray, k: int) -> np.ndarray:
    return weight[1] - weight[0] if k == 2 else weight


def from_sklearn(study_cls, workdir, clf, X_train, y_train, X_test, y_test, *,
                 progress: bool = True):
    """The study (``Study.from_sklearn``): labels mapped through ``clf.classes_``, our model
    trained at the mapped weight decay to its certified optimum; ``study.sklearn`` (also
    ``sklearn.json`` in the folder) holds wd, C, and the distance between the two weights."""
    x_train = as_numpy(X_train, "X_train")
    wd = mapped_wd(clf, int(x_train.shape[0]) if x_train.ndim == 2 else 0)
    classes = list(clf.classes_)
    lookup = {c: i for i, c in enumerate(classes)}

    def labels(y, name):
        y = as_numpy(y, name).reshape(-1)
        missing = [v for v in y.tolist() if v not in lookup]
        if missing:
            raise BadInput(f"from_sklearn: {name} holds label {missing[0]!r}, not one of the "
                           f"classifier's classes {classes}")
        return np.array([lookup[v] for v in y.tolist()], dtype=np.int64)

    data = Dataset.from_arrays(x_train, labels(y_train, "y_train"), X_test,
                               labels(y_test, "y_test"),
                               class_names=[str(c) for c in classes])
    if x_train.shape[1] != clf.coef_.shape[1]:
        raise BadInput(f"from_sklearn: X_train has {x_train.shape[1]} features, the classifier "
                       f"{clf.coef_.shape[1]}")
    study = study_cls(workdir, data, progress=progress)
    model = study.train(wd=wd)
    theirs = sklearn_weights(clf)
    ours = ours_in_their_layout(model.weight, len(classes))
    distance = float(np.linalg.norm(ours - theirs))
    study.sklearn = {"C": float(clf.C), "n_train": int(x_train.shape[0]), "wd": wd,
                     "classes": [str(c) for c in classes], "solver": clf.solver,
                     "tol": float(clf.tol), "distance": distance,
                     "relative_distance": distance / max(float(np.linalg.norm(theirs)), 1e-300),
                     "certified_grad_bound": model.grad_bound,
                     "note": "distance = ‖ours − sklearn's‖ in sklearn's layout (v = W₁ − W₀ for "
                             "two classes); ours is certified, sklearn's stops at its tol"}
    from infl_cli.runtime.artifacts import atomic_write

    atomic_write(study.workdir / "sklearn.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(study.sklearn, indent=2)))
    return study
