"""``infl ihvp``: s_test = H⁻¹∇L(z_test) per test point, written to ``ihvp-<label>.safetensors``."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from infl_cli.runtime import artifacts as art
from infl_cli.engines.spec import policy_for, spec_of
from infl_cli.settings import CgSettings, LissaSettings, validate_ihvp
from infl_cli.stages.common import TestChoice, load_model, model_engine, solver_label, spec_damping


def ihvp_settings(solver: str, test_indices: list[int], lissa: LissaSettings,
                  cg: CgSettings, damping: float = 0.0) -> dict:
    base = {"solver": solver, "test_indices": list(test_indices)}
    if solver == "lissa":
        base["lissa"] = asdict(lissa)
    elif solver == "cg":
        base["cg"] = asdict(cg)
    if solver != "lissa" and damping:
        base["damping"] = damping
    return base


def ihvp_tests(tests: TestChoice | None, data, engine) -> list[int]:
    """The test points of an inverse-HVP: as asked, or the model kind's default."""
    return (tests or TestChoice()).resolve(data.n_test, [engine.default_test(data)])


def run_ihvp(workdir: Path, solver: str, tests: TestChoice | None, lissa: LissaSettings,
             cg: CgSettings | None = None, loaded=None, device=None,
             damping: float | None = None) -> dict:
    import torch

    from infl_cli.runtime import device as device_mod
    from infl_cli.engines.logreg.kept import Keeper

    cg = cg or CgSettings()
    tensors, mrec, data = loaded or load_model(workdir, device=device)
    engine = model_engine(mrec)
    spec = spec_of(mrec)
    solver = solver or policy_for(spec.kind).default_solver(spec)
    if solver == "lissa" and damping is not None:
        lissa = replace(lissa, damping=damping)
    validate_ihvp(solver, lissa, cg, damping)
    lam = spec_damping(spec, solver, damping)
    engine.check_solver(solver, lam)
    idx = ihvp_tests(tests, data, engine)
    sel = torch.tensor(idx, dtype=torch.int64, device=data.device)
    rhs = engine.test_gradients(tensors, data.x_test[sel], data.y_test[sel])
    extra = {"keeper": Keeper(workdir, mrec)} if spec.kind == "logreg" else {}
    try:
        est, report = engine.solve(tensors, mrec, data, solver, rhs, lissa, cg, lam, **extra)
    finally:
        if extra:
            extra["keeper"].close()
    if extra and extra["keeper"].used:
        report["hessian_factor"] = extra["keeper"].used
    label = solver_label(solver, lam)
    record = {
        "stage": "ihvp",
        "settings": ihvp_settings(solver, idx, lissa, cg, lam),
        "label": label,
        "inputs": {"model": mrec["fingerprint"]},
        "device": device_mod.describe(data.device),
        "report": report,
    }
    return art.save_artifact(workdir / art.ihvp_name(label),
                             {"ihvp": est, "test_indices": sel}, record)
