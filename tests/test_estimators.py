"""The field's estimators (issue 23) against small direct implementations of their papers'
formulas: dense matrices, autograd per-example gradients, K = 2 and K = 3."""

import math

import numpy as np
import pytest
import torch
from conftest import assert_refused_untouched, copy_work, infl

from infl_cli.data.arrays import load_npz
from infl_cli.data.dataset import with_bias
from infl_cli.engines.logreg import estimators as est

WD = 0.01
N, D = 60, 6
TESTS = [0, 3, 7]


def _fitted(tmp_path, k):
    from infl_cli.engines.logreg import train

    rng = np.random.default_rng(k)
    x = rng.standard_normal((N + 10, D))
    w = rng.standard_normal((k, D))
    y = np.array([rng.choice(k, p=np.exp(s - s.max()) / np.exp(s - s.max()).sum())
                  for s in x @ w.T])
    path = tmp_path / f"k{k}.npz"
    np.savez(path, X_train=x[:N], y_train=y[:N], X_test=x[N:], y_test=y[N:])
    data = with_bias(load_npz(path))
    weight, _ = train.fit(data, WD, 1e-13)
    active = data.design.active
    assert bool(active.all())
    probs = torch.softmax(data.x_train @ weight.T, dim=1)
    fitted = est.FittedModel(weight, data.design, data.y_train, WD, probs,
                             data.x_test[TESTS].contiguous(), data.y_test[TESTS])
    return data, weight, fitted


def _per_example(weight, x, y, fn="ce"):
    """Autograd per-example gradients [m, p] of CE or of the margin, at θ = W.reshape(-1)."""
    theta = weight.reshape(-1).clone().requires_grad_(True)
    rows = []
    for i in range(x.shape[0]):
        logits = x[i] @ theta.reshape(weight.shape).T
        if fn == "ce":
            value = torch.nn.functional.cross_entropy(logits[None], y[i:i + 1])
        else:
            others = torch.cat([logits[:y[i]], logits[y[i] + 1:]])
            value = logits[y[i]] - torch.logsumexp(others, dim=0)
        rows.append(torch.autograd.grad(value, theta)[0])
    return torch.stack(rows)


def _hessians(weight, x, y):
    """(H of mean CE + (wd/2)|θ|², H of mean CE alone) by autograd."""
    def mean_ce(theta):
        return torch.nn.functional.cross_entropy(x @ theta.reshape(weight.shape).T, y)

    h_ce = torch.autograd.functional.hessian(mean_ce, weight.reshape(-1).clone())
    return h_ce + WD * torch.eye(h_ce.shape[0], dtype=torch.float64), h_ce


@pytest.fixture(scope="module", params=[2, 3])
def setup(request, tmp_path_factory):
    data, weight, fitted = _fitted(tmp_path_factory.mktemp(f"est{request.param}"),
                                   request.param)
    x, y = data.x_train, data.y_train
    xt, yt = data.x_test[TESTS], data.y_test[TESTS]
    g = _per_example(weight, x, y)  # ∇CE_i [n, p]
    gl = g + WD * weight.reshape(-1)[None]  # ∇L_i
    gt = _per_example(weight, xt, yt)  # ∇CE_t [T, p]
    h, h_ce = _hessians(weight, x, y)
    return dict(k=request.param, data=data, weight=weight, fitted=fitted, g=g, gl=gl, gt=gt,
                h=h, h_ce=h_ce, x=x, y=y, xt=xt, yt=yt)


def _close(a, b, rel=1e-9):
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= rel * scale + 1e-14, float((a - b).abs().max()) / scale


def test_grad_dot_and_cos(setup):
    s = setup
    _close(est.GradDot().influence(s["fitted"]), -(s["gt"] @ s["gl"].T))
    cos = (s["gt"] @ s["g"].T) / (s["gt"].norm(dim=1)[:, None] * s["g"].norm(dim=1)[None])
    _close(est.GradCos().influence(s["fitted"]), -cos)


def test_representer_values_and_the_exact_decomposition(setup):
    s = setup
    logits = (s["x"] @ s["weight"].T).clone().requires_grad_(True)
    ce = torch.nn.functional.cross_entropy(logits, s["y"], reduction="sum")
    dlogits = torch.autograd.grad(ce, logits)[0]  # ∂CE_i/∂Φ_i [n, C]
    alpha = -dlogits / (N * WD)
    values = alpha[:, s["yt"]] * (s["x"] @ s["xt"].T)  # [n, T]
    _close(est.Representer().influence(s["fitted"]), -values.T)
    # at the optimum the test logits are exactly Σ_i α_i x_iᵀx_t (Yeh et al.'s theorem)
    decomposed = (s["x"] @ s["xt"].T).T @ alpha  # [T, C]
    _close(decomposed, s["xt"] @ s["weight"].T, rel=1e-8)


def test_arnoldi_full_rank_is_exact_and_low_rank_is_the_top_eigenspace(setup):
    s = setup
    exact = -(torch.linalg.solve(s["h"], s["gt"].T).T @ s["gl"].T)
    p = s["h"].shape[0]
    _close(est.Arnoldi(rank=p).influence(s["fitted"]), exact, rel=1e-7)
    values, vectors = torch.linalg.eigh(s["h"])
    top = vectors[:, -5:]
    inv = top @ torch.diag(1 / values[-5:]) @ top.T
    _close(est.Arnoldi(rank=5, iterations=p).influence(s["fitted"]),
           -(s["gt"] @ inv @ s["gl"].T), rel=1e-7)


def _kfac_dense(s):
    p = torch.softmax(s["x"] @ s["weight"].T, dim=1)
    big_s = torch.diag(p.mean(0)) - p.T @ p / N
    big_a = s["x"].T @ s["x"] / N
    return big_s, big_a


def test_kfac_is_the_kronecker_formula(setup):
    s = setup
    big_s, big_a = _kfac_dense(s)
    damping = 1e-3
    h = torch.kron(big_s, big_a) + (WD + damping) * torch.eye(big_s.shape[0] * big_a.shape[0],
                                                                dtype=torch.float64)
    _close(est.KFac(damping=damping).influence(s["fitted"]),
           -(torch.linalg.solve(h, s["gt"].T).T @ s["gl"].T))


def test_ekfac_diagonal_is_the_exact_second_moments_in_the_eigenbasis(setup):
    s = setup
    big_s, big_a = _kfac_dense(s)
    qs = torch.linalg.eigh(big_s).eigenvectors
    qa = torch.linalg.eigh(big_a).eigenvectors
    q = torch.kron(qs, qa)
    moments = torch.diagonal(q.T @ s["h_ce"] @ q)  # E over i and model labels of (Qᵀg)²
    diagonal = est.ekfac_diagonal(s["fitted"], qs, qa)
    _close(diagonal.reshape(-1), moments)
    # and the same moments from gradients with every label, weighted by the model
    probs = torch.softmax(s["x"] @ s["weight"].T, dim=1)
    sampled = torch.zeros_like(moments)
    for c in range(s["k"]):
        gc = _per_example(s["weight"], s["x"], torch.full_like(s["y"], c))
        sampled += (probs[:, c:c + 1] * (gc @ q).square()).sum(0) / N
    _close(diagonal.reshape(-1), sampled)
    damping = 1e-4
    h = q @ torch.diag(moments + WD + damping) @ q.T
    _close(est.EKFac(damping=damping).influence(s["fitted"]),
           -(torch.linalg.solve(h, s["gt"].T).T @ s["gl"].T))


def test_datainf_is_the_average_of_rank_one_inverses(setup):
    s = setup
    g, p = s["g"], s["g"].shape[1]
    lam = WD + 0.1 * float(g.square().sum(1).mean()) / p
    eye = torch.eye(p, dtype=torch.float64)
    inv = sum(torch.linalg.inv(torch.outer(g[i], g[i]) + lam * eye) for i in range(N)) / N
    _close(est.DataInf().influence(s["fitted"]), -(s["gt"] @ inv @ s["gl"].T))
    lam = WD + 0.5
    inv = sum(torch.linalg.inv(torch.outer(g[i], g[i]) + lam * eye) for i in range(N)) / N
    _close(est.DataInf(damping=0.5).influence(s["fitted"]), -(s["gt"] @ inv @ s["gl"].T))


def _trak_dense(s, proj):
    gm = _per_example(s["weight"], s["x"], s["y"], "margin")  # [n, p]
    gmt = _per_example(s["weight"], s["xt"], s["yt"], "margin")
    phi, phit = gm @ proj.T, gmt @ proj.T
    probs = torch.softmax(s["x"] @ s["weight"].T, dim=1)
    q = 1 - probs[torch.arange(N), s["y"]]
    return phit @ torch.linalg.solve(phi.T @ phi, phi.T) * q[None]


def test_trak_with_an_orthogonal_full_projection_is_its_unprojected_formula(setup, monkeypatch):
    s = setup
    p = s["g"].shape[1]
    default = est.Trak(proj_dim=5).influence(s["fitted"])  # float32 products with the design
    monkeypatch.setattr(est.Trak, "feature_dtype", torch.float64)
    _close(default, est.Trak(proj_dim=5).influence(s["fitted"]), rel=1e-4)
    if s["k"] == 2:  # the binary margin's gradients span d + 1 dimensions only
        k = D + 1
        proj = est.Trak(proj_dim=k).projection(s["fitted"]).reshape(k, -1)
        _close(est.Trak(proj_dim=k).influence(s["fitted"]), -_trak_dense(s, proj))
        return
    q, _ = torch.linalg.qr(torch.randn(p, p, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(1)))
    monkeypatch.setattr(est.Trak, "projection",
                        lambda self, m: q.T.reshape((p,) + tuple(m.w.shape)))
    ours = est.Trak(proj_dim=p).influence(s["fitted"])
    _close(ours, -_trak_dense(s, torch.eye(p, dtype=torch.float64)), rel=1e-7)
    monkeypatch.undo()
    monkeypatch.setattr(est.Trak, "feature_dtype", torch.float64)
    k = 9  # a seeded Gaussian projection to fewer dimensions: the same formula on Pg
    proj = est.Trak(proj_dim=k).projection(s["fitted"]).reshape(k, -1)
    _close(est.Trak(proj_dim=k).influence(s["fitted"]), -_trak_dense(s, proj), rel=1e-8)


@pytest.fixture(scope="module")
def est_work(tmp_path_factory):
    from test_lds import _npz

    w = tmp_path_factory.mktemp("est_work")
    data = _npz(w / "data.npz")
    for args in (["train", "--dataset", data, "--bias"],
                 ["ihvp", "--solver", "exact", "-t", 0, "-t", 1],
                 ["score", "--solver", "exact"]):
        proc = infl(*args, "-w", w)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
    return w


def test_trak_ensemble_in_groups_equals_one_model_at_a_time(setup, monkeypatch):
    """The features of several models made together (groups by memory) give the same scores."""
    s = setup
    f = s["fitted"]
    models = [(f.w * scale, torch.softmax(s["x"] @ (f.w * scale).T, dim=1))
              for scale in (1.0, 0.9, 1.1)]
    together = est.Trak(proj_dim=5).influence(f, models)
    monkeypatch.setattr(est, "FEATURE_BYTES", 1.0)  # one model per group
    _close(est.Trak(proj_dim=5).influence(f, models), together, rel=1e-12)


def test_every_method_writes_a_scores_artifact_judged_like_ours(est_work, tmp_path):
    from safetensors.numpy import load_file

    from infl_cli.runtime import artifacts as art

    work = copy_work(est_work, tmp_path)
    for args in (["--method", "arnoldi", "--rank", 10], ["--method", "trak", "--models", 3],
                 *[["--method", m] for m in est.ESTIMATORS if m not in ("arnoldi",)]):
        proc = infl("score", "-w", work, *args)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
    for label in ("arnoldi-rank10", "trak-m3", "grad-dot", "kfac", "ekfac", "datainf",
                  "representer", "grad-cos", "trak"):
        arrays = load_file(str(work / art.scores_name(label)))
        rec = art.read_record(work / art.scores_name(label))
        assert arrays["test_indices"].tolist() == [0, 1]  # those of the exact scores
        assert np.allclose(arrays["predicted_loss_diff"], -arrays["influence"] / 150)
        assert rec["settings"]["solver"] == label and rec["seconds"] >= 0
    proc = infl("lds", "-w", work, "--subsets", 8)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trak-m3" in proc.stdout and "ekfac" in proc.stdout, proc.stdout
    import json

    methods = json.loads((work / "metrics.json").read_text())["lds"]["methods"]
    assert all(math.isfinite(methods[m]["lds"]) for m in methods)


@pytest.mark.parametrize("args, message", [
    (["--method", "arnoldi", "--rank", "0"], "--rank must be ≥ 1"),
    (["--method", "trak", "--proj-dim", "0"], "--proj-dim must be ≥ 1"),
    (["--method", "kfac", "--damping", "-1"], "--damping must be ≥ 0"),
    (["--method", "trak", "--models", "0"], "--models must be ≥ 1"),
    (["--method", "bogus"], "unknown method"),
    (["--rank", "5"], "go with --method"),
    (["--method", "kfac", "--rank", "5"], "takes no --rank"),
])
def test_bad_knobs_are_one_line_exit_2_nothing_written(est_work, tmp_path, args, message):
    assert_refused_untouched(copy_work(est_work, tmp_path), "score", args, message)
