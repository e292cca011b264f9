"""Every command pays only for what it uses: help, --version and option errors import no torch;
the decoded-data cache is never trusted blindly; a rerun reuses what is current."""

import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, copy_work, infl

HEAVY = ("torch", "matplotlib", "distributed", "dask", "torchvision")

PROBE = """
import sys
from infl_cli import cli
sys.argv = ["infl", *sys.argv[1:]]
code = 0
try:
    cli.main()
except SystemExit as exc:
    code = exc.code
heavy = [m for m in {heavy!r} if m in sys.modules]
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def _probe(*args, env=None):
    """Run infl ARGS in a fresh interpreter; (exit code, stdout, stderr, heavy modules loaded)."""
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, COLUMNS="200", **(env or {})))
    line = [x for x in proc.stderr.splitlines() if x.startswith("HEAVY=")][-1]
    heavy = [m for m in line[len("HEAVY="):].split(",") if m]
    return proc.returncode, proc.stdout, proc.stderr, heavy


@pytest.mark.parametrize("args", [["--help"], ["loo", "--help"], ["run", "--help"],
                                  ["--version"], ["train", "--wd", "-1"],
                                  ["ihvp", "--solver", "bogus"], ["loo", "--device", "tpu"],
                                  ["loo", "--select", "bogus"], ["run", "--rel-error", "2"],
                                  ["score", "--bogus-option"], ["loo", "--cluster", "nowhere"]])
def test_help_version_and_option_errors_import_no_torch(args):
    code, out, err, heavy = _probe(*args)
    assert heavy == [], (args, heavy)
    if "--help" in args or "--version" in args:
        assert code == 0 and out.strip(), (args, err)
    else:
        assert code == 2 and "error" in err.lower() and "Traceback" not in err, (args, err)


def test_version_names_the_package_and_the_commit():
    from infl_cli import __version__

    proc = subprocess.run([sys.executable, "-m", "infl_cli", "--version"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"infl {__version__}")
    if (REPO / ".git").exists():
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        assert f"(commit {head[:12]}" in proc.stdout, proc.stdout


def test_a_current_run_imports_no_torch_and_redraws_nothing(tiny_work, tmp_path):
    work = copy_work(tiny_work, tmp_path)
    args = ["run", "--dataset", "mnist-tiny", "-w", work, "-k", 10, "-t", 8, "-t", 3]
    first = infl(*args)  # loo, plot and show for the session's scored folder
    assert first.returncode == 0, first.stderr[-2000:]
    figures = {p.name: p.stat().st_mtime_ns for p in work.iterdir()
               if p.suffix in (".png", ".pdf", ".json") and p.name != "timings.json"}
    code, _, err, heavy = _probe(*args)
    assert code == 0, err[-2000:]
    assert heavy == [] and err.count("up to date") == 6, err
    assert {p.name: p.stat().st_mtime_ns for p in work.iterdir()
            if p.name in figures} == figures
    timings = json.loads((work / "timings.json").read_text())
    assert timings["device"].startswith("none")


def test_rerunning_a_stage_keeps_its_fingerprint(tiny_work, tmp_path):
    """Artifacts are fingerprinted by content: the same inputs give the same tensors, so what
    depends on a rerun stage stays current."""
    from infl_cli.runtime import artifacts as art

    work = copy_work(tiny_work, tmp_path)
    before = art.read_record(work / art.scores_name("cg"))
    assert infl("score", "--solver", "cg", "-w", work).returncode == 0
    after = art.read_record(work / art.scores_name("cg"))
    assert after["fingerprint"] == before["fingerprint"]
    assert after["seconds"] != before["seconds"]


# --------------------------------------------------------------------- the data cache
def _npz(path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 64)) / 255.0
    np.savez(path, X_train=x, y_train=rng.integers(0, 3, n), X_test=x[:20],
             y_test=rng.integers(0, 3, 20))
    return path


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    folder = tmp_path / "user-cache"
    monkeypatch.setenv("INFL_CACHE_DIR", str(folder))
    return folder


def _entry(path):
    return path.parent / "infl-cache" / f"{path.name}.safetensors"


def test_the_cache_is_written_once_and_memory_mapped(tmp_path, cache_env):
    from infl_cli.data.arrays import load_npz
    from infl_cli.data.datasets import load_dataset

    path = _npz(tmp_path / "d.npz")
    first = load_dataset(str(path))
    entry = _entry(path)
    assert entry.is_file()
    stamp = entry.stat().st_mtime_ns
    second = load_dataset(str(path))
    assert entry.stat().st_mtime_ns == stamp  # read, not rewritten
    direct = load_npz(path)
    assert first.fingerprint == second.fingerprint == direct.fingerprint
    np.testing.assert_array_equal(second.features(), direct.features())
    np.testing.assert_array_equal(second.train_y, direct.train_y)
    assert second.train_x.dtype.kind in "iu"  # the integers of x·255, as stored
    assert isinstance(second.train_x.base, np.ndarray) or second.train_x.base is not None
    # the design from the cached pieces equals the design computed afresh
    from infl_cli.data.design import DesignMatrix

    a, b = second.design, DesignMatrix(direct.x_train, scale=255.0)
    assert (a.positions == b.positions).all() and (a.core == b.core).all()
    assert a.row_norms.equal(b.row_norms) and a.rounding_model == b.rounding_model


@pytest.mark.parametrize("damage", ["flip a payload byte", "truncate", "foreign", "garbage"])
def test_a_corrupted_or_foreign_cache_is_rebuilt_never_used(tmp_path, cache_env, damage):
    from infl_cli.data.datasets import load_dataset

    path = _npz(tmp_path / "d.npz")
    good = load_dataset(str(path))
    entry = _entry(path)
    raw = bytearray(entry.read_bytes())
    if damage == "flip a payload byte":
        raw[-100] ^= 0x40
    elif damage == "truncate":
        raw = raw[:len(raw) // 2]
    elif damage == "foreign":  # another dataset's cache under this one's name
        (tmp_path / "other").mkdir()
        other = _npz(tmp_path / "other" / "d.npz", seed=1)
        load_dataset(str(other))
        raw = bytearray(_entry(other).read_bytes())
    else:
        raw = bytearray(b"not a cache at all")
    entry.write_bytes(bytes(raw))
    again = load_dataset(str(path))
    assert again.fingerprint == good.fingerprint
    np.testing.assert_array_equal(again.features(), good.features())
    np.testing.assert_array_equal(again.train_y, good.train_y)
    assert entry.read_bytes() != bytes(raw)  # rebuilt in place


def test_a_changed_source_file_is_never_served_from_the_cache(tmp_path, cache_env):
    from infl_cli.data.datasets import load_dataset

    path = _npz(tmp_path / "d.npz", seed=0)
    old = load_dataset(str(path))
    stat_before = path.stat()
    _npz(path, seed=5)  # same name, same size, other contents
    os.utime(path, ns=(stat_before.st_atime_ns, stat_before.st_mtime_ns))
    new = load_dataset(str(path))
    assert new.fingerprint != old.fingerprint
    np.testing.assert_array_equal(new.features(), np.load(path)["X_train"])


def test_a_read_only_data_folder_caches_elsewhere_with_one_notice(tmp_path, cache_env):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = _npz(folder / "d.npz")
    read_only = stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP
    folder.chmod(read_only)
    try:
        work = tmp_path / "w"
        first = infl("train", "--dataset", path, "-w", work)
        assert first.returncode == 0, first.stderr[-2000:]
        notices = [line for line in first.stderr.splitlines() if line.startswith("notice:")]
        assert len(notices) == 1 and "is not writable" in notices[0], first.stderr
        assert not (folder / "infl-cache").exists()
        assert len(list(cache_env.glob("*-d.npz.safetensors"))) == 1
        second = infl("ihvp", "-w", work, "--solver", "cg", "-t", 0)
        assert second.returncode == 0 and "notice:" not in second.stderr, second.stderr
    finally:
        folder.chmod(stat.S_IRWXU)


def test_nowhere_to_write_the_cache_still_loads_with_one_notice(tmp_path, monkeypatch):
    from infl_cli.data.arrays import load_npz
    from infl_cli.data.datasets import load_dataset

    folder, cache = tmp_path / "ro", tmp_path / "ro-cache"
    folder.mkdir()
    cache.mkdir()
    path = _npz(folder / "d.npz")
    read_only = stat.S_IRUSR | stat.S_IXUSR
    monkeypatch.setenv("INFL_CACHE_DIR", str(cache))
    folder.chmod(read_only)
    cache.chmod(read_only)
    try:
        proc = infl("train", "--dataset", path, "-w", tmp_path / "w")
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = [line for line in proc.stderr.splitlines() if line.startswith("notice:")]
        assert len(lines) == 1 and "decoded on every load" in lines[0], proc.stderr
        assert load_dataset(str(path)).fingerprint == load_npz(path).fingerprint
        assert not list(cache.iterdir()) and not (folder / "infl-cache").exists()
    finally:
        folder.chmod(stat.S_IRWXU)
        cache.chmod(stat.S_IRWXU)


READER = """
import sys, time
from infl_cli.data.datasets import load_dataset
path, want, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
end, loads = time.monotonic() + seconds, 0
while time.monotonic() < end or loads < 5:
    data = load_dataset(path)
    assert data.fingerprint == want, data.fingerprint
    assert abs(float(data.features().sum()) - float(sys.argv[4])) < 1e-6
    loads += 1
print(loads)
"""


def test_the_cache_rewritten_by_one_process_while_another_reads(tmp_path, cache_env):
    """One process rebuilds the cache over and over (deleting it, loading, corrupting it,
    loading) while another loads in a loop: every load the reader makes is complete and
    right."""
    from infl_cli.data.datasets import load_dataset

    path = _npz(tmp_path / "d.npz", n=3000)
    data = load_dataset(str(path))
    total = float(data.features().sum())
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path), data.fingerprint, "6",
                               repr(total)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, INFL_CACHE_DIR=str(cache_env)))
    entry = _entry(path)
    rewrites = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        entry.unlink(missing_ok=True)
        assert load_dataset(str(path)).fingerprint == data.fingerprint
        raw = bytearray(entry.read_bytes())
        raw[-7] ^= 1
        tmp = entry.with_suffix(".damaged")
        tmp.write_bytes(bytes(raw))
        os.replace(tmp, entry)  # a corrupt file appears atomically: readers must reject it
        assert load_dataset(str(path)).fingerprint == data.fingerprint
        rewrites += 2
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-2000:]
    assert int(out.strip()) >= 5 and rewrites >= 4
