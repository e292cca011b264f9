"""The model kinds behind one seam (:mod:`.base`): the logistic model (:mod:`.logreg`), the SVM
and the smooth hinge (:mod:`.hinge`) and Koh's CNN (:mod:`.cnn`). Their specs (:mod:`.spec`)
and policies (:mod:`.policy`) are torch-free; :func:`engine_for` loads an engine only when a
stage computes with it. The engines import the spec and policy modules, never this registry."""

from __future__ import annotations

from infl_cli.engines.policy import Policy, policy_for
from infl_cli.engines.spec import KINDS, ModelSpec, make_spec, spec_of

__all__ = ["KINDS", "ModelSpec", "Policy", "engine_for", "make_spec", "policy_for", "spec_of"]


def engine_for(kind: str | None):
    """The engine of a model kind (None: the logistic model, for records that predate kinds)."""
    kind = policy_for(kind).kind  # refuses an unknown kind in one line
    if kind == "logreg":
        from infl_cli.engines.logreg.engine import ENGINE
    elif kind == "cnn":
        from infl_cli.engines.cnn.engine import ENGINE
    elif kind == "svm":
        from infl_cli.engines.hinge.engine import SVM as ENGINE
    else:
        from infl_cli.engines.hinge.engine import SMOOTH_HINGE as ENGINE
    return ENGINE
