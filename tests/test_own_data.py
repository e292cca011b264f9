"""The user's own data: NPZ feature matrices (real-valued, K classes, with and without a bias
feature), other MNIST-format sets from a local folder, and every way such input can be bad."""

import json
import struct

import numpy as np
import pytest
import torch
from conftest import assert_clean_failure, infl
from safetensors.torch import load_file

from infl_cli.data.arrays import load_npz
from infl_cli.data.datasets import load_dataset
from infl_cli.data.design import DesignMatrix
from infl_cli.engines.logreg import model, train
from infl_cli.numerics import bounds
from infl_cli.runtime import memory

WD = 0.01


def blobs(k: int, n: int = 150, m: int = 40, d: int = 4, seed: int = 0):
    """K Gaussian classes in d real dimensions (overlapping, so that no point is trivial)."""
    rng = np.random.default_rng(seed)
    centres = 1.5 * rng.standard_normal((k, d))
    y = rng.integers(0, k, n + m)
    y[:k] = np.arange(k)  # every class present in training
    x = centres[y] + rng.standard_normal((n + m, d)) * np.exp(rng.standard_normal(d) / 3)
    return {"X_train": x[:n], "y_train": y[:n], "X_test": x[n:], "y_test": y[n:]}


def save(tmp_path, name="data.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_npz_round_trip_and_the_exact_scale_is_found(tmp_path):
    arrays = blobs(3)
    path = save(tmp_path, **arrays, class_names=np.array(["a", "b", "c"]))
    data = load_npz(path)
    assert np.array_equal(data.x_train.numpy(), arrays["X_train"])
    assert np.array_equal(data.y_test.numpy(), arrays["y_test"])
    assert data.x_train.dtype == torch.float64 and data.y_train.dtype == torch.int64
    assert data.n_classes == 3 and data.class_names == ("a", "b", "c")
    assert data.pixel_scale is None and data.image_shape == (2, 2)  # d = 4: a 2 × 2 image
    assert load_npz(path).fingerprint == data.fingerprint
    assert load_npz(save(tmp_path, "b.npz", **blobs(3, seed=1))).fingerprint != data.fingerprint
    # integers / a common scale are found, so the exact-integer products apply
    ints = np.random.default_rng(0).integers(0, 17, (50, 9))
    y = np.arange(50) % 2
    for x, scale in ((ints.astype(np.uint8), 1.0), (ints / 16.0, 16.0), (ints / 255.0, 255.0),
                     (ints / 16.0 + 1e-9, None)):
        got = load_npz(save(tmp_path, "i.npz", X_train=x, y_train=y, X_test=x[:5],
                            y_test=y[:5]))
        assert got.pixel_scale == scale, scale
        assert got.design.rounding_model.startswith("exact" if scale else "general")
    assert got.n_classes == 2 and got.class_names is None and got.image_shape == (3, 3)


def test_general_rounding_bounds_hold_against_extended_precision():
    """For real features the certified products and the certified gradient are within their
    proven bounds of an 80-bit evaluation, and the bounds are not vacuous."""
    if np.finfo(np.longdouble).eps >= 1e-18:
        pytest.skip("no extended precision on this platform")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 7)) * np.array([1, 10, 0.1, 3, 1e3, 1, 0.01])
    y = rng.integers(0, 3, 300)
    design = DesignMatrix(torch.from_numpy(x))
    v = rng.standard_normal((7, 4))
    r = rng.standard_normal((300, 5))
    xl = x.astype(np.longdouble)
    for (value, bound), exact in ((design.certified_matmul(torch.from_numpy(v)),
                                   xl @ v.astype(np.longdouble)),
                                  (design.certified_rmatmul(torch.from_numpy(r)),
                                   r.astype(np.longdouble).T @ xl)):
        value, bound = value.numpy(), bound.numpy()
        error = np.abs(value.astype(np.longdouble) - exact)
        assert (error <= bound).all() and float(bound.max()) < 1e-9 * float(np.abs(exact).max())
    w = 0.05 * torch.from_numpy(rng.standard_normal((3, 7)))
    cert = model.certified_gradient(w, design, torch.from_numpy(y), WD)
    logits = xl @ w.numpy().astype(np.longdouble).T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(300), y] -= 1
    reference = p.T @ xl / 300 + np.longdouble(WD) * w.numpy().astype(np.longdouble)
    error = float(np.sqrt(np.square(cert.grad.numpy().astype(np.longdouble) - reference).sum()))
    assert error <= cert.bound < 1e-10, (error, cert.bound)


def _run_stages(work, path, *extra):
    for args in (["train", "--dataset", path, *extra], ["ihvp", "--solver", "exact", "-t", 0,
                                                         "-t", 1],
                 ["score", "--solver", "exact"], ["loo", "-k", 12, "--chunk-size", 5]):
        proc = infl(*args, "-w", work)
        assert proc.returncode == 0, (args, proc.stderr[-3000:])


def _retrained_change(data, w_hat, z, tests, tol=1e-13):
    """f_t(Ŵ₋z) − f_t(Ŵ) from a from-scratch fit without z, with that fit's own bound."""
    from infl_cli.data.dataset import subset

    keep = np.ones(data.n_train, dtype=bool)
    keep[z] = False
    sub = subset(data, np.flatnonzero(keep), f"without {z}")
    w_z, info = train.fit(sub, WD, tol)
    x_t, y_t = data.x_test[tests], data.y_test[tests]
    change = (model.cross_entropy(w_z, x_t, y_t) - model.cross_entropy(w_hat, x_t, y_t)).numpy()
    p = model.probabilities(w_z, x_t)
    p[torch.arange(len(tests)), y_t] -= 1
    r = bounds.radius(info["grad_norm_certified"], WD)
    own = bounds.test_loss_error((p.norm(dim=1) * x_t.norm(dim=1)).numpy(), r,
                                 x_t.norm(dim=1).numpy())
    return change, own + 1e-14 * (1 + np.abs(change))


@pytest.mark.parametrize("k, bias", [(2, False), (3, True)])
def test_real_valued_k_classes_against_exact_retraining(tmp_path, k, bias):
    """Real features, K = 2 and K = 3 (one with the bias feature): every stage runs, every
    removal is certified, and the certified actual changes hold against from-scratch
    retraining without the point."""
    path = save(tmp_path, **blobs(k))
    work = tmp_path / "work"
    _run_stages(work, path, *(["--bias"] if bias else []))
    mrec = json.loads(__import__("safetensors").safe_open(
        str(work / "model.safetensors"), "pt").metadata()["infl"])
    assert mrec["n_classes"] == k and mrec["n_features"] == 4 + bias
    assert mrec["rounding_model"].startswith("general") and mrec["grad_norm_certified"] < 1e-12
    out = load_file(str(work / "loo.safetensors"))
    assert float((out["grad_norm"] + out["grad_rounding"]).max()) <= 1e-8
    assert bool((out["actual_error_bound"] <= 0.01 * out["actual_loss_diff"].abs()).all())
    data = load_dataset(str(path), bias=bias)
    w_hat = load_file(str(work / "model.safetensors"))["weight"]
    assert w_hat.shape == (k, 4 + bias) and bool((w_hat[:, -1] != 0).all())
    tests = out["test_indices"].tolist()
    for j in range(3):
        z = int(out["train_indices"][j])
        truth, truth_bound = _retrained_change(data, w_hat, z, tests)
        gap = np.abs(out["actual_loss_diff"][:, j].numpy() - truth)
        assert (gap <= out["actual_error_bound"][:, j].numpy() + truth_bound).all(), (z, gap)
    metrics_proc = infl("plot", "-w", work)
    assert metrics_proc.returncode == 0
    assert json.loads((work / "metrics.json").read_text())["panels"]["exact"]["pearson_r"] > 0.9


def test_bias_flag_equals_an_explicit_column_of_ones(tmp_path):
    arrays = blobs(3)
    plain = save(tmp_path, "plain.npz", **arrays)
    ones = {key: (np.hstack([v, np.ones((v.shape[0], 1))]) if key.startswith("X") else v)
            for key, v in arrays.items()}
    explicit = save(tmp_path, "ones.npz", **ones)
    for work, args in ((tmp_path / "flag", ["--dataset", plain, "--bias"]),
                       (tmp_path / "explicit", ["--dataset", explicit]),
                       (tmp_path / "none", ["--dataset", plain])):
        assert infl("train", *args, "-w", work).returncode == 0
    flag = load_file(str(tmp_path / "flag" / "model.safetensors"))["weight"]
    assert torch.equal(flag, load_file(str(tmp_path / "explicit" / "model.safetensors"))["weight"])
    assert load_file(str(tmp_path / "none" / "model.safetensors"))["weight"].shape == (3, 4)
    # later stages reload the data with the bias feature the model was trained with
    assert infl("ihvp", "-w", tmp_path / "flag", "-t", 0).returncode == 0


def test_default_k_is_every_point_of_a_small_set_and_show_prints_a_table(tmp_path):
    path = save(tmp_path, **blobs(2, n=60, m=5, d=5))
    work = tmp_path / "work"
    proc = infl("run", "--dataset", path, "-w", work)  # n = 60 < 500: -k means all 60
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_file(str(work / "loo.safetensors"))["train_indices"].shape == (60,)
    # the default test point of a 5-point test set is 0; d = 5 is no image: a table alone
    assert "test 0: label" in proc.stdout and "helpful" in proc.stdout
    assert not list(work.glob("explain-*.png"))
    before = sorted(p.name for p in work.iterdir())
    refused = infl("show", "-w", work, "--out", tmp_path / "x.png")
    assert_clean_failure(refused, "not an image")
    assert refused.returncode == 2 and sorted(p.name for p in work.iterdir()) == before


def test_square_features_are_drawn_as_images(tmp_path):
    """d = 16 (+ the bias feature): 4 × 4 images, the bias feature left out."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 17, (80, 16)) / 16.0
    y = (x[:, :8].sum(1) > x[:, 8:].sum(1)).astype(np.int64)
    path = save(tmp_path, X_train=x[:60], y_train=y[:60], X_test=x[60:], y_test=y[60:],
                class_names=np.array(["left", "right"]))
    work = tmp_path / "work"
    for args in (["train", "--dataset", path, "--bias"], ["ihvp", "--solver", "cg", "-t", 3],
                 ["score", "--solver", "cg"]):
        assert infl(*args, "-w", work).returncode == 0, args
    proc = infl("show", "-w", work, "-n", 3)
    assert proc.returncode == 0, proc.stderr
    assert (work / "explain-3.png").stat().st_size > 5_000
    assert "label left" in proc.stdout or "label right" in proc.stdout


def _text_file(path):
    path.write_text("not a zip archive")
    return path


def _bad(tmp_path, **arrays):
    return save(tmp_path, "bad.npz", **arrays)


def _good(**changes):
    arrays = blobs(3, n=30, m=6)
    arrays.update(changes)
    return {key: value for key, value in arrays.items() if value is not None}


@pytest.mark.parametrize("make, message", [
    (lambda t: _bad(t, **_good(y_test=None)), "lacks the array y_test"),
    (lambda t: _bad(t, **_good(X_train=np.where(np.eye(30, 4) > 0, np.nan, 1.0))),
     "holds nan at [0, 0]; features must be finite"),
    (lambda t: _bad(t, **_good(X_test=np.full((6, 4), np.inf))), "holds inf"),
    (lambda t: _bad(t, **_good(y_train=np.arange(30) % 3 - 1)), "label -1, outside 0..2"),
    (lambda t: _bad(t, **_good(class_names=np.array(["a", "b"]))), "outside 0..1 (2 class_names)"),
    (lambda t: _bad(t, **_good(y_train=np.zeros(30, dtype=int), y_test=np.zeros(6, dtype=int))),
     "a single class"),
    (lambda t: _bad(t, **_good(X_test=np.ones((6, 5)))), "X_train has 4 features and X_test 5"),
    (lambda t: _bad(t, **_good(y_train=np.zeros(29, dtype=int))), "one label per row of X_train"),
    (lambda t: _bad(t, **_good(X_train=np.ones(30))), "must be a 2-D array"),
    (lambda t: _bad(t, **_good(X_train=np.full((30, 4), "x"))), "features must be real numbers"),
    (lambda t: _bad(t, **_good(y_train=np.linspace(0, 2, 30))), "non-integer labels"),
    (lambda t: _bad(t, **_good(X_train=np.array([[1, 2]] * 30, dtype=object))),
     "array of Python objects"),
    (lambda t: _text_file(t / "text.npz"), "is not an NPZ file"),
    (lambda t: t / "missing.npz", "not found"),
])
def test_bad_npz_input_is_one_line_exit_2_nothing_written(tmp_path, make, message):
    path = make(tmp_path)
    work = tmp_path / "work"
    proc = infl("train", "--dataset", path, "-w", work)
    assert_clean_failure(proc, message)
    assert proc.returncode == 2
    assert not work.exists()  # the folder it would have made is gone again


def test_too_large_for_the_exact_paths_is_refused_with_the_options_that_run(tmp_path, monkeypatch):
    path = save(tmp_path, **blobs(3))
    work = tmp_path / "work"
    for args in (["train", "--dataset", path], ["ihvp", "--solver", "cg", "-t", 0],
                 ["score", "--solver", "cg"]):
        assert infl(*args, "-w", work).returncode == 0
    before = sorted(p.name for p in work.iterdir())
    # a Hessian no machine holds (the whole-step estimates: tests/test_memory.py)
    monkeypatch.setattr(memory, "hessian_bytes", lambda classes, width, itemsize: 1e18)
    exact = infl("ihvp", "--solver", "exact", "-t", 0, "-w", work)
    assert_clean_failure(exact, "--solver exact (the 12 × 12 Hessian) needs about")
    assert "use --solver cg or --solver lissa" in exact.stderr and exact.returncode == 2
    newton = infl("loo", "-k", 5, "-w", work)
    assert_clean_failure(newton, "use --method lbfgs")
    assert sorted(p.name for p in work.iterdir()) == before
    lbfgs = infl("loo", "-k", 3, "--method", "lbfgs", "-w", work)  # Hessian-free: still runs
    assert lbfgs.returncode == 0, lbfgs.stderr[-2000:]
    assert float(load_file(str(work / "loo.safetensors"))["grad_norm"].max()) <= 1e-8


def _write_idx(raw, prefix, images, labels):
    raw.mkdir(parents=True, exist_ok=True)
    n = images.shape[0]
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n)
                                                      + labels.tobytes())


@pytest.mark.parametrize("name, folder", [("fashion-mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_other_mnist_format_sets_from_a_local_folder(tmp_path, name, folder):
    """The same files, folder layouts and split as MNIST: the first 5,000 training images are
    validation. A folder without them names what it looked for."""
    rng = np.random.default_rng(0)
    raw = tmp_path / folder / "raw"
    _write_idx(raw, "train", rng.integers(0, 256, (5_012, 28, 28), dtype=np.uint8),
               (np.arange(5_012) % 10).astype(np.uint8))
    _write_idx(raw, "t10k", rng.integers(0, 256, (7, 28, 28), dtype=np.uint8),
               (np.arange(7) % 10).astype(np.uint8))
    for where in (tmp_path, tmp_path / folder, raw):
        data = load_dataset(name, where, download=False)
        assert (data.n_train, data.n_test, data.n_classes) == (12, 7, 10)
        assert data.pixel_scale == 255.0 and data.class_names and data.image_shape == (28, 28)
    proc = infl("train", "--dataset", name, "--data-dir", tmp_path / "empty", "--no-download",
                "-w", tmp_path / "w")
    assert_clean_failure(proc, f"{folder} not found in")
    assert proc.returncode == 1
