"""One writer per work folder: a lock file holding the writer's process id.

A command that writes artifacts holds ``WORKDIR/.infl.lock`` while it runs. The file is
created atomically (``O_CREAT | O_EXCL``) and holds JSON: process id, host, the process's
start time (Linux: from ``/proc``, so a recycled process id is not mistaken for the writer),
the command line and when it started. A second writer refuses at once, naming the first.
A lock left by a process that no longer runs (killed with SIGKILL, machine rebooted) is taken
over with a warning. Commands that only read (``--help``, ``infl show``) take no lock.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from infl_cli.errors import InflError

LOCK_NAME = ".infl.lock"


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    return int(stat.rsplit(")", 1)[1].split()[19])


def _is_running(pid: int, start_ticks: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    if start_ticks is not None:
        now = _start_ticks(pid)
        if now is not None and now != start_ticks:  # the id was recycled
            return False
    return True


def _describe(owner: dict) -> str:
    since = time.strftime("%H:%M:%S", time.localtime(owner.get("started", 0)))
    return f"pid {owner.get('pid')} (`{owner.get('command', 'infl')}`, since {since})"


@contextmanager
def workdir_lock(workdir: Path, command: str | None = None, warn=None):
    """Hold the work folder's lock for the duration of the ``with`` block.

    Raises :class:`InflError` when another running ``infl`` holds it. ``warn(message)`` is
    told when a stale lock is taken over (default: stderr). A folder this call had to create
    is removed again on exit when nothing was written into it.
    """
    workdir = Path(workdir)
    created = not workdir.exists()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise InflError(f"cannot create the work folder {workdir}: permission denied; choose "
                        "another --workdir") from None
    except FileExistsError:
        raise InflError(f"{workdir} is a file, not a folder; choose another --workdir") from None
    if not workdir.is_dir():
        raise InflError(f"{workdir} is a file, not a folder; choose another --workdir")
    path = workdir / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": _start_ticks(os.getpid()),
          "command": command or " ".join(["infl", *sys.argv[1:]]), "started": time.time()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except PermissionError:
            raise InflError(f"{workdir} is not writable (permission denied): infl writes its "
                            "artifacts there; choose another --workdir") from None
        except FileExistsError:
            owner = _read(path)
            if owner is None:  # being written this very moment, or garbage: look again
                time.sleep(0.05)
                owner = _read(path)
            if owner == {}:  # released meanwhile: try again
                continue
            if owner is not None and owner.get("host") != me["host"]:
                raise InflError(f"{workdir} is locked by {_describe(owner)} on host "
                                f"{owner.get('host')}; if that run is gone, delete {path}")
            if owner is not None and _is_running(int(owner["pid"]), owner.get("start_ticks")):
                raise InflError(f"{workdir} is in use by another infl, {_describe(owner)}; "
                                "wait for it to finish or stop it")
            (warn or _warn)(f"taking over the lock of {workdir} from "
                            f"{_describe(owner) if owner else 'an unreadable lock file'}, "
                            "which is no longer running")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:
        raise InflError(f"could not take the lock {path}; another infl keeps taking it")
    try:
        yield
    finally:
        if (_read(path) or {}).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
        if created:
            try:
                workdir.rmdir()  # only succeeds when empty
            except OSError:
                pass


def _read(path: Path) -> dict | None:
    """The lock's owner record; {} when there is no lock file, None when it is unreadable."""
    try:
        owner = json.loads(path.read_text())
        int(owner["pid"])
        return owner
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
