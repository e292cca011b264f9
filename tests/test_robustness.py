"""What a new user trips over: interrupts, two runs in one folder, logs, colour (mnist-tiny)."""

import os
import pty
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, assert_clean_failure, copy_work, infl, listing, start_infl, wait_for

from infl_cli.errors import Interrupted

LONG_LISSA = ["ihvp", "--depth", "200000", "--stop-tol", "0", "--batch-size", "1000"]


def _no_leftovers(work):
    names = [p.name for p in work.iterdir()]
    assert not [n for n in names if n.endswith(".tmp")], names
    assert ".infl.lock" not in names, names


def test_ctrl_c_saves_finished_chunks_and_rerun_continues(tiny_work, tmp_path):
    work = copy_work(tiny_work, tmp_path)
    proc = start_infl("loo", "-w", work, "-t", 8, "-k", 24, "--chunk-size", 3)
    wait_for(work / "loo.partial.safetensors", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert re.search(r"interrupted; \d+ of 24 removals are saved in .*loo\.partial\."
                     r"safetensors; rerun the same command to continue", last), last
    assert not (work / "loo.safetensors").exists()
    _no_leftovers(work)
    again = infl("loo", "-w", work, "-t", 8, "-k", 24, "--chunk-size", 3)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (work / "loo.safetensors").is_file() and not (work / "loo.partial.safetensors").exists()


def test_sigterm_is_an_interrupt_too(tiny_work, tmp_path):
    work = copy_work(tiny_work, tmp_path)
    (work / "ihvp-lissa.safetensors").unlink()  # the artifact the interrupted stage writes
    proc = start_infl(*LONG_LISSA, "-w", work)
    wait_for(work / ".infl.lock", proc)
    time.sleep(1.0)  # well inside the LiSSA loop
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: " + Interrupted.DEFAULT
    assert "Traceback" not in err and not (work / "ihvp-lissa.safetensors").exists()
    _no_leftovers(work)


def test_second_writer_is_refused_and_readers_are_not(tiny_work, tmp_path):
    work = copy_work(tiny_work, tmp_path)
    proc = start_infl(*LONG_LISSA, "-w", work)
    try:
        wait_for(work / ".infl.lock", proc)
        before = listing(work)
        second = infl("score", "--solver", "cg", "-w", work)  # this process: another pid
        assert_clean_failure(second, f"in use by another infl, pid {proc.pid}")
        assert listing(work) == before
        assert infl("plot", "--help").returncode == 0
    finally:
        proc.kill()
        proc.communicate()


def test_stale_lock_is_taken_over_with_a_warning(tiny_work, tmp_path):
    work = copy_work(tiny_work, tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    (work / ".infl.lock").write_text(f'{{"pid": {dead_pid}, "host": "{os.uname().nodename}", '
                                     f'"command": "infl loo", "started": 0}}')
    proc = infl("score", "--solver", "cg", "-w", work)
    assert proc.returncode == 0, proc.stderr
    assert f"taking over the lock of {work} from pid {dead_pid}" in proc.stderr
    _no_leftovers(work)


def _run_in_terminal(args, env_extra):
    """Run infl with stdout and stderr on a pseudo-terminal; returns (exit code, output)."""
    primary, secondary = pty.openpty()
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="120", **env_extra)
    env.pop("NO_COLOR", None) if "NO_COLOR" not in env_extra else None
    proc = subprocess.Popen([sys.executable, "-m", "infl_cli", *args], cwd=REPO,
                            stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    return proc.wait(), b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("no_color", [False, True])
def test_colour_follows_no_color_on_a_terminal(tmp_path, no_color):
    code, output = _run_in_terminal(["train", "--dataset", "mnist-tiny", "--wd", "0", "-w",
                                     str(tmp_path)], {"NO_COLOR": "1"} if no_color else {})
    assert code == 2 and "error:" in output and "--wd must be > 0" in output
    colour = re.search(r"\x1b\[[0-9;]*(3[0-7]|9[0-7]|38;)[0-9;]*m", output)
    assert (colour is None) == no_color, repr(output)


def test_log_eta_leaves_out_the_set_up_before_the_first_advance(monkeypatch, capsys):
    """A 10 s set-up (say, a Hessian) before the first chunk must not inflate the ETA."""
    from infl_cli.runtime import progress

    clock = {"now": 100.0}
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock["now"])
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    lines = []
    monkeypatch.setattr(progress.console, "print", lambda text, **kw: lines.append(text))
    bar = progress._LineProgress("loo removals", 500)
    bar.update(advance=0)
    clock["now"] += 10.0  # set-up
    bar.update(advance=50)  # the first chunk: no rate yet, no ETA
    clock["now"] += 2.0
    bar.update(advance=50)  # 50 more in 2 s: 400 left take 16 s
    assert "eta" not in lines[-2] and lines[-1].endswith("0:00:12 elapsed, eta 0:00:16"), lines
