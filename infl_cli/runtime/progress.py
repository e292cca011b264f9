"""Progress and tables, written to stderr so stdout stays clean for pipes.

On a terminal, progress is a rich bar redrawn in place. Anywhere else (a CI log,
``infl run 2> run.log``) a redrawn bar is unreadable, so progress is printed as plain lines:
the full description, done/total, status, elapsed time and ETA, at most every
``$INFL_PROGRESS_INTERVAL`` seconds (default 10) and once more when the loop ends. Tables are
then drawn up to 200 columns wide (or ``$COLUMNS``) instead of rich's default of 80, so that
nothing is cut. Colour follows rich: none when ``NO_COLOR`` is set or output is not a terminal.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

INTERVAL_ENV = "INFL_PROGRESS_INTERVAL"


def _make_console() -> Console:
    console = Console(stderr=True)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(stderr=True, width=200)
    return console


console = _make_console()
_shown = {"progress": True}


@contextmanager
def shown(on: bool = True):
    """Progress bars and the lines of what a command did on (the default) or off (the Python
    API's ``progress=False``); notices and warnings are always shown."""
    before = _shown["progress"]
    _shown["progress"] = bool(on)
    try:
        yield
    finally:
        _shown["progress"] = before


def notice(message: str) -> None:
    """A notice on stderr: something the user should know, not a result."""
    from rich.markup import escape

    console.print(f"[yellow]notice:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """A warning on stderr: something that may be wrong, though the command goes on."""
    from rich.markup import escape

    console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False,
                  soft_wrap=True)


def say(message: str) -> None:
    """A line of what the command did (a stage skipped, an artifact read), dim, on stderr."""
    from rich.markup import escape

    if not _shown["progress"]:
        return
    console.print(f"[dim]{escape(message)}[/dim]", highlight=False, soft_wrap=True)


_pending: list[str] = []


def say_later(message: str) -> None:
    """:func:`say`, once the command is past its checks: when its first progress bar starts
    or it finishes (:func:`flush`). A command refused in one line prints that line only."""
    _pending.append(message)


def flush() -> None:
    """Say what :func:`say_later` kept."""
    while _pending:
        say(_pending.pop(0))


def drop() -> None:
    """Forget what :func:`say_later` kept (the command failed)."""
    _pending.clear()


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _LineProgress:
    """Progress as plain lines, for output that is not a terminal."""

    def __init__(self, description: str, total: float | None):
        self.description, self.total = description, total
        self.completed, self.status = 0.0, ""
        self.start = time.monotonic()
        self.last = self.start
        # the ETA extrapolates from the first advance on: set-up before it (a Hessian, a
        # resumed checkpoint) is not part of the rate
        self.rate_from: tuple[float, float] | None = None
        try:
            self.interval = float(os.environ.get(INTERVAL_ENV, 10))
        except ValueError:
            self.interval = 10.0

    def update(self, advance: float = 1, status: str | None = None,
               completed: float | None = None, total: float | None = None):
        if advance or completed:
            flush()
        if total is not None:
            self.total = total
        before = self.completed
        self.completed = completed if completed is not None else self.completed + advance
        if status is not None:
            self.status = status
        now = time.monotonic()
        if self.rate_from is None and self.completed > before:
            self.rate_from = (now, self.completed)
        if now - self.last >= self.interval:
            self.last = now
            self._line(eta=True)

    def finish(self):
        self._line(eta=False)

    def _line(self, eta: bool):
        elapsed = time.monotonic() - self.start
        done = f"{self.completed:g}" + (f"/{self.total:g}" if self.total else "")
        parts = [f"{self.description}: {done}"]
        if self.status:
            parts.append(self.status)
        since, done_then = self.rate_from or (0.0, 0.0)
        if eta and self.total and self.rate_from and self.completed > done_then:
            rest = (time.monotonic() - since) * (self.total - self.completed) / (
                self.completed - done_then)
            parts.append(f"{_clock(elapsed)} elapsed, eta {_clock(rest)}")
        else:
            parts.append(f"{_clock(elapsed)} elapsed" + ("" if eta else ", done"))
        console.print(", ".join(parts), markup=False, highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(description: str, total: float | None):
    """Yield ``update(advance=1, status=None, completed=None, total=None)``; shows done/total,
    elapsed time and ETA. ``completed`` sets the position instead of advancing it; ``total``
    changes the total (work that turned out not to be needed). What :func:`say_later` kept is
    said once the bar first moves."""
    if not _shown["progress"]:
        yield lambda *args, **kwargs: None
        return
    if not console.is_terminal:
        lines = _LineProgress(description, total)
        yield lines.update
        lines.finish()
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def update(advance: float = 1, status: str | None = None,
                   completed: float | None = None, total: float | None = None):
            if advance or completed:
                flush()
            kwargs = {} if total is None else {"total": total}
            if status is not None:
                kwargs["status"] = status
            if completed is not None:
                kwargs["completed"] = completed
            else:
                kwargs["advance"] = advance
            progress.update(task, **kwargs)

        yield update
