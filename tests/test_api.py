"""The Python API (``import infl_cli as infl``): the same code path as the command line (the
same artifacts, bit for bit), a CLI folder opened from Python, ``judge`` against ``score
--import`` + ``lds``, in-memory data, ``features``, ``from_sklearn``, and bad input raised as
``BadInput`` with nothing written."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, copy_work, infl, listing

import infl_cli as api
from infl_cli.runtime import artifacts as art


def tensors_of(path):
    arrays, record = art.load_arrays(path, record_stage(path))
    return arrays, record


def record_stage(path):
    return art.read_record(path)["stage"]


def assert_same_artifact(a, b):
    """The same tensors bit for bit, and the same fingerprint (which covers the settings and
    the inputs' fingerprints)."""
    ta, ra = tensors_of(a)
    tb, rb = tensors_of(b)
    assert sorted(ta) == sorted(tb)
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and np.array_equal(ta[key], tb[key]), key
    assert ra["fingerprint"] == rb["fingerprint"]


@pytest.fixture(scope="module")
def api_work(tmp_path_factory):
    """The session folder's stages (train; CG for tests 8 and 3; scores) made from Python."""
    w = tmp_path_factory.mktemp("api_work")
    study = api.Study(w, api.Dataset.load("mnist-tiny"), progress=False)
    study.train()
    study.ihvp(solver="cg", tests=[8, 3])
    study.score(solver="cg")
    return w


def test_api_artifacts_equal_the_cli_s_bit_for_bit(api_work, tiny_work, tmp_path):
    for name in (art.MODEL, art.ihvp_name("cg"), art.scores_name("cg")):
        assert_same_artifact(api_work / name, tiny_work / name)
    cli_work = copy_work(tiny_work, tmp_path, "cli")
    assert infl("loo", "-w", cli_work, "--solver", "cg", "-k", 8).returncode == 0
    py_work = copy_work(api_work, tmp_path, "py")
    loo = api.Study.open(py_work, progress=False).loo(k=8, solver="cg")
    assert_same_artifact(py_work / art.LOO, cli_work / art.LOO)
    arrays, _ = tensors_of(cli_work / art.LOO)
    assert np.array_equal(loo.actual_loss_diff, arrays["actual_loss_diff"])
    assert np.array_equal(loo.bound, arrays["actual_error_bound"])
    assert loo.record["certified"] == len(loo.train_indices)


def test_study_open_reads_a_cli_folder(tiny_work):
    study = api.Study.open(tiny_work)
    model = study.model()
    arrays, record = tensors_of(tiny_work / art.MODEL)
    assert np.array_equal(model.weight, arrays["weight"]) and model.grad_bound < 1e-12
    scores = study.scores("cg")
    s_arrays, _ = tensors_of(tiny_work / art.scores_name("cg"))
    assert np.array_equal(scores.influence, s_arrays["influence"])
    assert scores.test_indices.tolist() == [8, 3]
    n = model.record["n_train"]
    assert np.allclose(scores.predicted_loss_diff, -scores.influence / n, rtol=1e-14, atol=0)
    top = scores.helpful(8, 5)
    assert (np.diff(scores.predicted_loss_diff[0][top]) <= 0).all()
    assert "mnist-tiny" in repr(study) and "Scores(cg" in repr(scores)
    with pytest.raises(api.InflError, match="holds no study"):
        api.Study.open(tiny_work / "nowhere")


def test_judge_of_an_array_equals_score_import_and_lds(tiny_work, tmp_path):
    theirs = np.random.default_rng(3).normal(size=(2, 1000))
    cli_work = copy_work(tiny_work, tmp_path, "cli")
    np.save(tmp_path / "theirs.npy", theirs)
    for args in (["score", "--import", tmp_path / "theirs.npy", "--name", "theirs",
                  "--meaning", "helpful", "-t", 8, "-t", 3],
                 ["lds", "--subsets", 12, "-t", 8, "-t", 3]):
        proc = infl(*args, "-w", cli_work)
        assert proc.returncode == 0, proc.stderr
    cli_lds = (cli_work / art.METRICS).read_text()
    py_work = copy_work(tiny_work, tmp_path, "py")
    study = api.Study.open(py_work, progress=False)
    judged = study.judge(theirs, meaning="helpful", name="theirs", tests=[8, 3], subsets=12)
    import json

    expected = json.loads(cli_lds)["lds"]["methods"]["theirs"]
    assert judged.lds == expected["lds"] and judged.certified == expected["certified"]
    assert judged.lds_range == (expected["lds_lo"], expected["lds_hi"])
    a, _ = tensors_of(cli_work / art.scores_name("theirs"))
    b, _ = tensors_of(py_work / art.scores_name("theirs"))
    assert np.array_equal(a["influence"], b["influence"])
    assert_same_artifact(cli_work / "subsets.safetensors", py_work / "subsets.safetensors")
    # a callable is called for the truth's test points, and gives the same judgement as its array
    seen = []

    def mine(s, tests):
        seen.append(list(tests))
        return theirs

    again = study.judge(mine, meaning="helpful", name="theirs2")
    assert seen == [[8, 3]] and again.lds == judged.lds
    # the truth present is reused (12 subsets), not recomputed at the default 100
    assert art.read_record(py_work / "subsets.safetensors")["settings"]["subsets"] == 12


def test_in_memory_data_are_fingerprinted_and_guarded(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    y = (x[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(int) + (x[:, 1] > 1)
    data = api.Dataset.from_arrays(x[:40], y[:40], x[40:], y[40:])
    assert "n = 40 training" in repr(data)
    w = tmp_path / "w"
    api.Study(w, data, progress=False).train()
    again = api.Study.open(w).model()
    assert again.record["settings"]["dataset"] == str(data.file_in(w).resolve())
    # the command line continues the same study from the folder
    proc = infl("ihvp", "-w", w, "--solver", "exact", "-t", 0)
    assert proc.returncode == 0, proc.stderr
    other = api.Dataset.from_arrays(x[:40] * 2, y[:40], x[40:], y[40:])
    before = listing(w)
    with pytest.raises(api.InflError, match="replace"):
        api.Study(w, other, progress=False).train()
    assert listing(w) == before  # refused: not even the other data's file stays
    api.Study(w, other, progress=False).train(replace=True)
    assert api.Study.open(w).model().record["settings"]["dataset"] == str(other.file_in(w).resolve())


def test_bad_input_raises_badinput_and_writes_nothing(tmp_path):
    with pytest.raises(api.BadInput, match="finite"):
        api.Dataset.from_arrays(np.array([[np.nan, 1.0], [1.0, 2.0]]), [0, 1], [[1.0, 1.0]], [0])
    with pytest.raises(api.BadInput, match="single class"):
        api.Dataset.from_arrays(np.ones((3, 2)), [1, 1, 1], np.ones((1, 2)), [1])
    with pytest.raises(api.BadInput, match="dataset"):
        api.Dataset.load("cifar")
    w = tmp_path / "w"
    study = api.Study(w, api.Dataset.load("mnist-tiny"))
    with pytest.raises(api.BadInput, match="--wd"):
        study.train(wd=-1)
    assert not w.exists() or listing(w) == []
    with pytest.raises(api.BadInput):
        study.ihvp(solver="bogus")
    with pytest.raises(api.BadInput, match="--name"):
        study.judge(np.zeros((1, 3)), name="bad name!")
    assert not w.exists() or listing(w) == []


def test_features_of_a_frozen_module(tmp_path):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                              torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 5))
    net.train()
    x = torch.randn(23, 1, 8, 8)
    emb = api.features(net, x, batch_size=5)
    net.eval()
    with torch.no_grad():
        expected = net(x).double().numpy()
    assert emb.dtype == np.float64 and emb.shape == (23, 5)
    assert np.allclose(emb, expected, rtol=1e-6, atol=1e-7)  # dropout off: eval mode
    net.train()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(23)),
                                         batch_size=7)
    from_loader = api.features(net, loader)
    assert np.array_equal(from_loader, api.features(net, x.numpy(), batch_size=7))
    assert net.training  # its mode restored
    data = api.Dataset.from_arrays(emb[:18], [0, 1] * 9, emb[18:], [0, 1, 0, 1, 0])
    assert repr(data).startswith("Dataset(arrays: n = 18")
    with pytest.raises(api.BadInput, match="Module"):
        api.features(lambda t: t, x)


@pytest.mark.parametrize("k", [2, 3])
def test_from_sklearn_maps_c_and_reaches_sklearn_s_fit(tmp_path, k):
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(k)
    n, d = 150, 6
    x = rng.normal(size=(n + 40, d))
    y = (x @ rng.normal(size=(d, k)) + rng.gumbel(size=(n + 40, k))).argmax(1)
    labels = np.array(["cat", "dog", "eel"])[y]  # any labels: mapped through classes_
    clf = linear_model.LogisticRegression(C=0.7, fit_intercept=False, tol=1e-12,
                                          max_iter=10_000).fit(x[:n], labels[:n])
    study = api.Study.from_sklearn(tmp_path / "w", clf, x[:n], labels[:n], x[n:], labels[n:],
                                   progress=False)
    info = study.sklearn
    assert info["wd"] == (2.0 if k == 2 else 1.0) / (0.7 * n)
    assert info["relative_distance"] < 1e-6, info
    model = study.model()
    assert model.record["settings"]["wd"] == info["wd"]
    # the certificate holds: the gradient of our objective, recomputed here in float64
    w = model.weight
    logits = x[:n] @ w.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(k)[[list(clf.classes_).index(v) for v in labels[:n]]]
    grad = (p - onehot).T @ x[:n] / n + info["wd"] * w
    assert np.linalg.norm(grad) <= model.grad_bound + 1e-15
    assert (study.workdir / "sklearn.json").is_file()


def test_from_sklearn_refuses_what_does_not_map(tmp_path):
    linear_model = pytest.importorskip("sklearn.linear_model")
    x = np.random.default_rng(0).normal(size=(30, 3))
    y = (x[:, 0] > 0).astype(int)
    for clf, message in ((linear_model.LogisticRegression(), "fit_intercept"),
                         (linear_model.LogisticRegression(fit_intercept=False,
                                                          class_weight="balanced"),
                          "class_weight"),
                         (linear_model.LogisticRegression(fit_intercept=False, C=np.inf),
                          "C must be")):
        clf.fit(x, y)
        with pytest.raises(api.BadInput, match=message):
            api.Study.from_sklearn(tmp_path / "w", clf, x, y, x, y)
    assert not (tmp_path / "w").exists()


def test_operations_take_the_commands_names_and_defaults():
    """One code path: each command passes its options to the operation of the same name, so
    their names and defaults must agree."""
    from infl_cli.api import ops
    from infl_cli.cli import app

    for name, command, _ in app.COMMANDS:
        op = getattr(ops, name.replace("-", "_"))
        cli = {p.name: getattr(p.default, "default", p.default)
               for p in inspect.signature(command).parameters.values()}
        py = {p.name: p.default for p in inspect.signature(op).parameters.values()
              if p.name not in ("report", "prepare")}
        assert set(cli) == set(py), name
        for key, value in cli.items():
            if key == "workdir":
                assert str(value) == py[key], name
            else:
                assert value == py[key], (name, key)


def test_importing_the_api_loads_no_torch():
    code = ("import sys, infl_cli as infl; infl.Study; infl.Dataset; infl.features; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
    assert set(api.__all__) <= set(dir(api))


def test_the_readme_python_section_runs_as_written(tmp_path):
    """The README's example is the example script, which runs on its own."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## From Python\n.*?```python\n(.*?)```", readme, re.S).group(1)
    script = (REPO / "tests" / "examples" / "python_api.py").read_text()
    assert block.strip() in script
    out = subprocess.run([sys.executable, str(REPO / "tests" / "examples" / "python_api.py")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Judgement(noisy: LDS" in out.stdout, out.stdout
