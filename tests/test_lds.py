"""Subset retraining and the LDS (issue 22): each subset model against independent
from-scratch training, the certified Spearman against direct computations and brute force,
imported scores, resuming, the truth format read back, and one-line refusals."""

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import REPO, assert_clean_failure, assert_refused_untouched, copy_work, infl, listing
from safetensors.numpy import load_file, save_file
from scipy.stats import spearmanr

from infl_cli.numerics import datamodels

WD = 0.01
N, D, K = 150, 16, 3
TESTS = [0, 1, 2, 3]


def _npz(path, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N + 12, D))
    w = rng.standard_normal((K, D))
    y = np.array([rng.choice(K, p=np.exp(s - s.max()) / np.exp(s - s.max()).sum())
                  for s in x @ w.T])
    np.savez(path, X_train=x[:N], y_train=y[:N], X_test=x[N:], y_test=y[N:])
    return path


@pytest.fixture(scope="module")
def small_work(tmp_path_factory):
    """A K = 3 model with a bias on 150 real-valued points, exact scores for 4 test points
    and LOO truth on 30 random removals (read-only: copy before writing)."""
    w = tmp_path_factory.mktemp("lds_work")
    data = _npz(w / "data.npz")
    tests = [a for t in TESTS for a in ("-t", t)]
    for args in (["train", "--dataset", data, "--bias"],
                 ["ihvp", "--solver", "exact", *tests], ["score", "--solver", "exact"],
                 ["loo", "--solver", "exact", "--select", "random", "-k", 30]):
        proc = infl(*args, "-w", w)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
    return w


def _reference_fit(x, y, keep):
    """The minimiser of R_S by Newton's method on an autograd Hessian, from zero, to
    the float64 floor: independent of the stage's batched, preconditioned solver."""
    xs, ys = x[keep], y[keep]
    theta = torch.zeros(K * x.shape[1], dtype=torch.float64)

    def objective(t):
        logits = xs @ t.reshape(K, -1).T
        return torch.nn.functional.cross_entropy(logits, ys) + 0.5 * WD * t.square().sum()

    for _ in range(60):
        g = torch.autograd.functional.jacobian(objective, theta)
        if float(g.norm()) < 1e-14:
            break
        h = torch.autograd.functional.hessian(objective, theta)
        theta = theta - torch.linalg.solve(h, g)
    return theta.reshape(K, -1)


def _outputs(weight, x_test, y_test):
    logits = x_test @ weight.T
    loss = torch.nn.functional.cross_entropy(logits, y_test, reduction="none")
    own = logits[torch.arange(len(y_test)), y_test]
    others = logits.clone()
    others[torch.arange(len(y_test)), y_test] = -torch.inf
    return loss, own - torch.logsumexp(others, dim=1)


@pytest.mark.parametrize("measure", ["loss", "margin"])
def test_subset_models_match_from_scratch_training(small_work, tmp_path, measure):
    from infl_cli.data.arrays import load_npz
    from infl_cli.data.dataset import with_bias

    work = copy_work(small_work, tmp_path)
    proc = infl("lds", "-w", work, "--subsets", 5, "--measure", measure, "--chunk-size", 2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    truth = load_file(str(work / "subsets.safetensors"))
    record = json.loads((work / "subsets.json").read_text())
    assert record["certified"] == 5 and record["settings"]["measure"] == measure
    assert record["schema"].keys() == truth.keys()
    keep = truth["keep"].astype(bool)
    assert keep.shape == (5, N) and (keep.sum(axis=1) == 75).all()
    assert len({row.tobytes() for row in keep}) == 5  # distinct draws
    assert ((truth["grad_norm"] + truth["grad_rounding"]) <= 1e-9).all()

    data = with_bias(load_npz(work / "data.npz"))
    x_test, y_test = data.x_test[TESTS], data.y_test[TESTS]
    spread = truth["outputs"].std(axis=1)
    for m in range(5):
        weight = _reference_fit(data.x_train, data.y_train, torch.from_numpy(keep[m]))
        loss, margin = _outputs(weight, x_test, y_test)
        reference = (loss if measure == "loss" else margin).numpy()
        error = np.abs(truth["outputs"][:, m] - reference)
        bound = truth["output_bound"][:, m]
        assert (error <= bound).all(), (m, error, bound)
        # not vacuous: far below the spread of the outputs across subsets, and small
        assert (bound < 1e-3 * spread).all() and (bound < 1e-6).all(), (bound, spread)
    # the full model's outputs too
    full = torch.from_numpy(load_file(str(work / "model.safetensors"))["weight"])
    loss, margin = _outputs(full, x_test, y_test)
    reference = (loss if measure == "loss" else margin).numpy()
    assert (np.abs(truth["full_output"] - reference) <= truth["full_output_bound"]).all()


@pytest.fixture(scope="module")
def judged(small_work, tmp_path_factory):
    work = copy_work(small_work, tmp_path_factory.mktemp("judged"))
    proc = infl("lds", "-w", work, "--subsets", 12)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LDS" in proc.stdout and "exact" in proc.stdout
    return work


def test_lds_equals_a_direct_spearman_computation(judged):
    section = json.loads((judged / "metrics.json").read_text())["lds"]
    truth = load_file(str(judged / "subsets.safetensors"))
    scores = load_file(str(judged / "scores-exact.safetensors"))
    assert scores["test_indices"].tolist() == truth["test_indices"].tolist() == TESTS
    predicted = -scores["predicted_loss_diff"] @ truth["keep"].astype(np.float64).T
    direct = [spearmanr(truth["outputs"][t], predicted[t]).statistic for t in range(len(TESTS))]
    exact = section["methods"]["exact"]
    assert exact["lds"] == pytest.approx(np.mean(direct), abs=1e-12)
    for t, value in zip(TESTS, direct):
        assert exact["per_test"][str(t)] == pytest.approx(value, abs=1e-12)
    assert exact["certified"] and exact["lds_lo"] == exact["lds_hi"] == exact["lds"]
    assert section["measure"] == "loss" and section["subsets"] == 12
    # the LOO correlation against the certified LOO artifact, by direct computation
    loo = load_file(str(judged / "loo.safetensors"))
    pred = scores["predicted_loss_diff"][:, loo["train_indices"]]
    pearson = [np.corrcoef(loo["actual_loss_diff"][t], pred[t])[0, 1] for t in range(len(TESTS))]
    assert exact["loo"]["pearson_mean"] == pytest.approx(np.mean(pearson), abs=1e-12)
    assert exact["loo"]["pairs"] == 30 * len(TESTS)
    assert (judged / "lds.png").stat().st_size > 10_000


def test_margin_and_loss_give_the_same_lds(judged, tmp_path):
    """CE = log(1 + e^(−margin)): one order reversed, and τ's sign with it."""
    work = copy_work(judged, tmp_path)
    loss = json.loads((work / "metrics.json").read_text())["lds"]["methods"]["exact"]["lds"]
    proc = infl("lds", "-w", work, "--subsets", 12, "--measure", "margin")
    assert proc.returncode == 0, proc.stderr[-2000:]
    margin = json.loads((work / "metrics.json").read_text())["lds"]["methods"]["exact"]["lds"]
    assert margin == pytest.approx(loss, abs=1e-12)


def test_certified_spearman_against_brute_force():
    """The range is the min and max of ρ over every order within the overlap groups, and
    the true outputs (anywhere within their bars) have ρ inside it."""
    rng = np.random.default_rng(3)
    for trial in range(30):
        m = 7
        actual = np.round(rng.standard_normal(m), 1)
        bound = rng.uniform(0, 0.15, m) * (trial % 3 != 0)
        predicted = rng.standard_normal(m)
        rho, lo, hi, largest = datamodels.certified_spearman(actual, bound, predicted)
        assert rho == pytest.approx(spearmanr(actual, predicted).statistic, abs=1e-12)
        groups = datamodels.overlap_groups(actual, bound)
        assert largest == max(len(g) for g in groups)
        values = []
        for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
            ranks = np.empty(m)
            ranks[np.concatenate(orders)] = np.arange(1, m + 1)
            values.append(spearmanr(ranks, predicted).statistic)
        assert lo == pytest.approx(min(values), abs=1e-12)
        assert hi == pytest.approx(max(values), abs=1e-12)
        for _ in range(20):
            true = actual + bound * rng.uniform(-1, 1, m)
            assert lo - 1e-12 <= spearmanr(true, predicted).statistic <= hi + 1e-12
        if not bound.any() and len(np.unique(actual)) == m:  # no ties, no bars: exact
            assert lo == hi == pytest.approx(rho)


def test_imported_scores_reproduce_the_lds(judged, tmp_path):
    work = copy_work(judged, tmp_path)
    scores = load_file(str(work / "scores-exact.safetensors"))
    n = scores["influence"].shape[1]
    np.save(tmp_path / "up.npy", scores["influence"].T)  # [n, T], I_up,loss
    torch.save({"scores": torch.from_numpy(n * scores["predicted_loss_diff"]),
                "test_indices": torch.tensor(TESTS)}, tmp_path / "helpful.pt")
    tests = [a for t in TESTS for a in ("-t", t)]
    for args in (["--import", tmp_path / "up.npy", "--name", "theirs", "--meaning", "upweight",
                  *tests],
                 ["--import", tmp_path / "helpful.pt", "--name", "trak.like",
                  "--meaning", "helpful"]):
        proc = infl("score", "-w", work, *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
    stamp = (work / "subsets.safetensors").stat().st_mtime_ns
    proc = infl("lds", "-w", work, "--subsets", 12)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (work / "subsets.safetensors").stat().st_mtime_ns == stamp  # current: not retrained
    methods = json.loads((work / "metrics.json").read_text())["lds"]["methods"]
    for name in ("theirs", "trak.like"):
        assert methods[name]["lds"] == pytest.approx(methods["exact"]["lds"], abs=1e-12)
        assert methods[name]["loo"]["pearson_mean"] == pytest.approx(
            methods["exact"]["loo"]["pearson_mean"], abs=1e-9)
        assert methods[name]["imported"]["meaning"] in ("upweight", "helpful")
    # the figure and `plot` take them as any other scores
    proc = infl("plot", "-w", work)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("case, message", [
    ("shape", "do not match"), ("nan", "NaN"), ("index", "test"), ("noname", "--name"),
    ("meaning", "unknown --meaning"), ("suffix", "--import reads"),
])
def test_bad_import_is_one_line_exit_2_nothing_written(small_work, tmp_path, case, message):
    work = copy_work(small_work, tmp_path)
    good = np.zeros((len(TESTS), N))
    path = tmp_path / "s.npy"
    args = ["--name", "x", *[a for t in TESTS for a in ("-t", t)]]
    if case == "shape":
        good = np.zeros((len(TESTS), N - 1))
    elif case == "nan":
        good[1, 7] = np.nan
    elif case == "index":
        args = ["--name", "x", "-t", 0, "-t", 99]  # 12 test points in the data
    elif case == "noname":
        args = args[2:]
    elif case == "meaning":
        args += ["--meaning", "bogus"]
    elif case == "suffix":
        path = tmp_path / "s.csv"
    np.save(tmp_path / "s.npy", good)
    if case == "suffix":
        path.write_text("0")
    before = listing(work)
    proc = infl("score", "-w", work, "--import", path, *args)
    assert_clean_failure(proc, message)
    assert proc.returncode == 2 and listing(work) == before


def test_interrupted_lds_resumes_to_identical_truth(small_work, tmp_path, monkeypatch):
    from infl_cli.errors import Interrupted
    from infl_cli.runtime import chunks
    from infl_cli.settings import LdsSettings
    from infl_cli.stages import lds

    whole, cut = copy_work(small_work, tmp_path, "whole"), copy_work(small_work, tmp_path, "cut")
    settings = LdsSettings(subsets=7, chunk_size=2)
    lds.run_lds(whole, settings)
    real = chunks.timed_chunk
    calls = {"n": 0}

    def interrupting(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(chunks, "timed_chunk", interrupting)
    with pytest.raises(Interrupted, match="4 of 7 subsets are saved"):
        lds.run_lds(cut, settings)
    assert (cut / lds.PARTIAL).is_file() and not (cut / lds.TRUTH).exists()
    monkeypatch.setattr(chunks, "timed_chunk", real)
    section = lds.run_lds(cut, settings)
    assert section["truth_record"]["resumed_from"] == 4 and not (cut / lds.PARTIAL).exists()
    a, b = load_file(str(whole / lds.TRUTH)), load_file(str(cut / lds.TRUTH))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_truth_file_is_read_back_and_checked(judged, tmp_path):
    work = copy_work(judged, tmp_path)
    truth = load_file(str(work / "subsets.safetensors"))
    other = {k: truth[k] for k in ("keep", "outputs", "test_indices")}  # another tool's
    save_file(other, str(tmp_path / "theirs.safetensors"))
    before = json.loads((work / "metrics.json").read_text())["lds"]["methods"]["exact"]["lds"]
    proc = infl("lds", "-w", work, "--truth", tmp_path / "theirs.safetensors")
    assert proc.returncode == 0, proc.stderr[-2000:]
    section = json.loads((work / "metrics.json").read_text())["lds"]
    assert section["methods"]["exact"]["lds"] == pytest.approx(before, abs=1e-12)
    assert section["truth"].endswith("theirs.safetensors")
    for bad, message in (({**other, "keep": other["keep"][:, :-1]}, "keep must be"),
                         ({**other, "outputs": other["outputs"][:, :-1]}, "outputs"),
                         ({"keep": other["keep"]}, "lacks")):
        save_file(bad, str(tmp_path / "bad.safetensors"))
        before_files = listing(work)
        proc = infl("lds", "-w", work, "--truth", tmp_path / "bad.safetensors")
        assert_clean_failure(proc, message)
        assert proc.returncode == 2 and listing(work) == before_files


@pytest.mark.parametrize("args, message", [
    (["--fraction", "0"], "--fraction must be in (0, 1)"),
    (["--fraction", "1.5"], "--fraction must be in (0, 1)"),
    (["--subsets", "0"], "--subsets must be ≥ 1"),
    (["--measure", "bogus"], "unknown measure"),
    (["--tol", "0"], "--tol must be > 0"),
])
def test_lds_bad_input_is_one_line_exit_2_nothing_written(small_work, tmp_path, args, message):
    assert_refused_untouched(copy_work(small_work, tmp_path), "lds", args, message)


def test_dattri_export_is_their_split_and_normalisation(tmp_path):
    from infl_cli import examples
    from infl_cli.data.mnist import read_idx

    raw = REPO.parent / "shared" / "mnist" / "MNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte").is_file():
        pytest.skip("MNIST raw files not found")
    examples.main([str(tmp_path), "--dattri", "--data-dir", str(REPO.parent / "shared" /
                                                                 "mnist")])
    with np.load(tmp_path / "dattri-mnist.npz") as z:
        x, y, xt, yt = z["X_train"], z["y_train"], z["X_test"], z["y_test"]
    assert x.shape == (5000, 784) and xt.shape == (500, 784) and x.dtype == np.float64
    images = read_idx(raw / "train-images-idx3-ubyte", 3)[:5000]
    labels = read_idx(raw / "train-labels-idx1-ubyte", 1)[:5000]
    tv = torch.from_numpy(images.reshape(5000, -1).copy()).float() / 255  # ToTensor
    expected = ((tv - 0.1307) / 0.3081).double().numpy()  # Normalize, in float32
    assert np.array_equal(x, expected) and np.array_equal(y, labels)
    assert np.array_equal(yt, read_idx(raw / "t10k-labels-idx1-ubyte", 1)[:500])
    assert x.min() == pytest.approx(-0.42421, abs=1e-5)
