"""``infl ihvp``: s_test = H⁻¹∇L(z_test) per test point, written to ``ihvp-<label>.safetensors``
by a solver (:mod:`~infl_cli.numerics.solvers`) parsed once, for the work folder's model
(:func:`ihvp_solver`)."""

from __future__ import annotations

from pathlib import Path

from infl_cli.engines import policy_for, spec_of
from infl_cli.numerics.solvers import Solver, SolverChoice
from infl_cli.runtime import artifacts as art
from infl_cli.stages.common import TestChoice, load_model, model_engine, model_record


def ihvp_solver(workdir: Path, choice: SolverChoice) -> Solver:
    """The solver ``choice`` asks for, for the model in ``workdir`` (its defaults and the
    solvers it has, from the model's record: no torch)."""
    spec = spec_of(model_record(workdir))
    return choice.for_model(policy_for(spec.kind), spec)


def ihvp_tests(tests: TestChoice | None, data, policy, mrec: dict | None = None) -> list[int]:
    """The test points of an inverse-HVP: as asked, or the model kind's default for the model
    of record ``mrec``."""
    return (tests or TestChoice()).resolve(data.n_test, [policy.default_test(data, mrec)])


def run_ihvp(workdir: Path, solver: Solver, tests: TestChoice | None, loaded=None,
             device=None) -> dict:
    """Solve for the chosen test points (by default the model kind's) and write the
    artifact; the engine takes the work folder's kept matrices where it has any."""
    import torch

    from infl_cli.runtime import device as device_mod
    from infl_cli.runtime.kept import Keeper

    tensors, mrec, data = loaded or load_model(workdir, device=device)
    engine = model_engine(mrec)
    idx = ihvp_tests(tests, data, engine, mrec)
    engine.check_memory(f"ihvp-{solver.name}", data, f"infl ihvp --solver {solver.name}",
                        tests=len(idx))
    sel = torch.tensor(idx, dtype=torch.int64, device=data.device)
    rhs = engine.test_gradients(tensors, data.x_test[sel], data.y_test[sel])
    keeper = Keeper(workdir, mrec)
    try:
        est, report = engine.solve(tensors, mrec, data, solver, rhs, keeper)
    finally:
        keeper.close()
    if keeper.used:
        report["hessian_factor"] = keeper.used
    label = solver.label()
    record = {
        "stage": "ihvp",
        "settings": solver.record(idx),
        "label": label,
        "inputs": {"model": mrec["fingerprint"]},
        "device": device_mod.describe(data.device),
        "report": report,
    }
    return art.save_artifact(workdir / art.ihvp_name(label),
                             {"ihvp": est, "test_indices": sel}, record)
