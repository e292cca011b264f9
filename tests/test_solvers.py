"""IHVP solvers converge to the exact solve; LiSSA diverges loudly."""

import pytest
import torch

from infl_cli.data.design import make_design
from infl_cli.engines.logreg import model
from infl_cli.engines.logreg.hessian import HessianFactor, SubspacePreconditioner
from infl_cli.engines.logreg.solvers import LogisticOperator
from infl_cli.errors import InflError
from infl_cli.numerics.linalg import conjugate_gradient
from infl_cli.numerics.solvers import CgSolver, ExactSolver, LissaSolver
from infl_cli.settings import CgSettings, LissaSettings


def solve(name, w, x, wd, rhs, lissa_settings=None, cg_settings=None, design=None):
    """The named solver (its settings as given, else the defaults) on the logistic model's
    operator over inputs ``x`` (or their ``design``)."""
    solver = {"exact": lambda: ExactSolver(),
              "cg": lambda: CgSolver(cg_settings or CgSettings()),
              "lissa": lambda: LissaSolver(lissa_settings or LissaSettings())}[name]()
    operator = LogisticOperator(w, wd, design if design is not None else make_design(x),
                                dense=lambda: x)
    return solver.solve(operator, rhs)


@pytest.fixture(scope="module")
def fitted(tiny, tiny_model):
    w, record = tiny_model
    assert record["settings"]["wd"] == 0.01 and record["grad_norm"] <= 1e-10
    rhs = model.test_point_grads(w, tiny.x_test[[8, 3]], tiny.y_test[[8, 3]])
    exact = torch.linalg.solve(model.hessian(w, tiny.x_train, 0.01),
                               rhs.reshape(2, -1).T).T.reshape(rhs.shape)
    return w, rhs, exact


def rel_err(a, b):
    return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max())


def test_exact_factor_matches_dense_solve(tiny, fitted):
    w, rhs, exact = fitted
    est, report = solve("exact", w, tiny.x_train, 0.01, rhs, None)
    assert rel_err(est, exact) < 1e-10
    assert max(report["relative_residual"]) < 1e-10


def test_cg_converges_to_exact(tiny, fitted):
    w, rhs, exact = fitted
    plain, plain_report = solve("cg", w, tiny.x_train, 0.01, rhs,
                                     cg_settings=CgSettings(rtol=1e-12, rank=0))
    est, report = solve("cg", w, tiny.x_train, 0.01, rhs,
                             cg_settings=CgSettings(rtol=1e-12))
    for e, r in ((plain, plain_report), (est, report)):
        assert rel_err(e, exact) < 1e-9
        assert max(r["relative_residual"]) < 1e-11
    # the subspace preconditioner must pay for itself in iterations
    assert report["iterations"] < 0.5 * plain_report["iterations"]


def test_subspace_preconditioner_is_spd_and_exact_at_full_rank(tiny, fitted):
    w, rhs, exact = fitted
    active = model.active_features(tiny.x_train)
    xa, wa = tiny.x_train[:, active], w[:, active].contiguous()
    dense = model.hessian(wa, xa, 0.01)
    m = SubspacePreconditioner(wa, xa, 0.01, rank=32)
    eye = torch.eye(wa.numel(), dtype=torch.float64)[:400].reshape(400, *wa.shape)
    block = m(eye).reshape(400, -1)[:, :400]
    assert torch.allclose(block, block.T, atol=1e-12)
    assert float(torch.linalg.eigvalsh(block).min()) > 0
    # on the subspace, M is H's restriction exactly
    basis = torch.kron(torch.eye(10, dtype=torch.float64), m.basis)  # [C·d, C·r]
    assert torch.allclose(model.hessian_in_basis(wa, xa, 0.01, m.basis),
                          basis.T @ dense @ basis, rtol=1e-10, atol=1e-12)
    full = SubspacePreconditioner(wa, xa, 0.01, rank=xa.shape[1])
    ga = rhs[:, :, active].contiguous()
    assert rel_err(full(ga), torch.linalg.solve(dense, ga.reshape(2, -1).T).T.reshape(ga.shape)) \
        < 1e-6  # float32 Gram: the basis is orthonormal to float64 precision, the span exact


def test_preconditioned_cg_with_exact_preconditioner_takes_one_step(tiny, fitted):
    w, rhs, exact = fitted
    factor = HessianFactor(w, tiny.x_train, 0.01)
    est, iters, _ = conjugate_gradient(lambda v: model.hvp(w, tiny.x_train, 0.01, v), rhs,
                                       1e-9, 50, precondition=factor.solve)
    assert iters <= 2 and rel_err(est, exact) < 1e-8


def test_lissa_converges_to_exact(tiny, fitted):
    w, rhs, exact = fitted
    settings = LissaSettings(batch_size=200, depth=4000, stop_tol=0)
    est, report = solve("lissa", w, tiny.x_train, 0.01, rhs, settings)
    assert rel_err(est, exact) < 0.02 and report["steps_per_repeat"] == [4000]
    # more steps average away more noise: the error must shrink
    longer, _ = solve("lissa", w, tiny.x_train, 0.01, rhs,
                           LissaSettings(batch_size=200, depth=16000, stop_tol=0))
    assert rel_err(longer, exact) < rel_err(est, exact)


def test_lissa_stops_early_once_the_estimate_settles(tiny, fitted):
    w, rhs, exact = fitted
    settings = LissaSettings(batch_size=200)  # defaults otherwise: stop_tol 1e-3
    est, report = solve("lissa", w, tiny.x_train, 0.01, rhs, settings)
    assert report["stopped_early"] == [True] and report["steps"] < settings.depth
    assert report["last_change"] <= settings.stop_tol
    assert rel_err(est, exact) < 0.01
    # a tighter tolerance runs longer and lands closer
    tighter, tight_report = solve("lissa", w, tiny.x_train, 0.01, rhs,
                                       LissaSettings(batch_size=200, stop_tol=2e-4))
    assert tight_report["steps"] > report["steps"]
    assert rel_err(tighter, exact) < rel_err(est, exact)


def test_lissa_paper_preset_is_the_authors_recursion(tiny, fitted):
    w, rhs, exact = fitted
    s = LissaSettings.paper()
    assert (s.scale, s.damping, s.depth, s.batch_size, s.repeats, s.average_tail) == \
        (25.0, 0.0, 5000, 1, 10, 0.0)
    s.repeats, s.depth = 2, 3000
    est, _ = solve("lissa", w, tiny.x_train, 0.01, rhs[:1], s)
    assert rel_err(est, exact[:1]) < 0.5  # noisy, but the right vector


def test_lissa_divergence_names_a_scale(tiny, fitted):
    w, rhs, _ = fitted
    with pytest.raises(InflError, match=r"diverged.*--scale"):
        solve("lissa", w, tiny.x_train, 0.01, rhs,
                   LissaSettings(scale=0.3, depth=2000, batch_size=100))


def test_explicit_inverse_and_kron_solves(tiny, fitted):
    w, rhs, exact = fitted
    reference = HessianFactor(w, tiny.x_train, 0.01)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        factor = HessianFactor(w, tiny.x_train, 0.01, dtype=dtype, explicit_inverse=True)
        assert rel_err(factor.solve(rhs), exact) < tol
        f = torch.randn(3, 4, 10, dtype=torch.float64)
        xz = tiny.x_train[:3]
        u = f[:, :, :, None] * xz[:, None, None, :]
        expected = reference.solve(u.reshape(12, 10, 784)).reshape(3, 4, 10, 784)
        assert rel_err(factor.solve_kron(f, xz).reshape(12, -1), expected.reshape(12, -1)) < tol


def _errors(est, exact):
    return ((est - exact).flatten(1).norm(dim=1) / exact.flatten(1).norm(dim=1)).tolist()


def test_ihvp_error_bound_holds(tiny, fitted):
    """The proven relative error bound (residual / λ_min with λ_min ≥ wd, rounding of the
    residual included) covers the real error of a loose CG and a short LiSSA."""
    w, rhs, exact = fitted
    for solver, kw in (("cg", {"cg_settings": CgSettings(rtol=1e-3, rank=0)}),
                       ("lissa", {"lissa_settings": LissaSettings(batch_size=200,
                                                                        depth=300,
                                                                        stop_tol=0)}),
                       ("exact", {})):
        est, report = solve(solver, w, tiny.x_train, 0.01, rhs, design=tiny.design, **kw)
        assert report["error_bound_certified"]
        for real, bound in zip(_errors(est, exact), report["error_bound_relative"]):
            assert real <= bound, (solver, real, bound)
    assert max(report["error_bound_relative"]) < 1e-8  # exact: tight


def test_small_weight_decay_residual_understates_the_error(tiny):
    """With wd = 1e-4 the condition number is ~1e4: the residual can understate the error
    (here by more than 2x), which the bound covers."""
    from infl_cli.engines.logreg import train

    wd = 1e-4
    w, _ = train.fit(tiny, wd, 1e-10)
    rhs = model.test_point_grads(w, tiny.x_test[[8]], tiny.y_test[[8]])
    exact = torch.linalg.solve(model.hessian(w, tiny.x_train, wd),
                               rhs.reshape(1, -1).T).T.reshape(rhs.shape)
    # a short LiSSA leaves its error in the low-curvature directions, where H barely shows it
    est, report = solve("lissa", w, tiny.x_train, wd, rhs, design=tiny.design,
                             lissa_settings=LissaSettings(depth=2000, stop_tol=0))
    real = _errors(est, exact)[0]
    residual, bound = report["relative_residual"][0], report["error_bound_relative"][0]
    assert 2 * residual < real <= bound
