"""Rich progress bars and tables, written to stderr so stdout stays clean for pipes."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: float | None):
    """Yield ``update(advance=1, status=None, completed=None)``; shows done/total, elapsed
    time and ETA. ``completed`` sets the position instead of advancing it."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def update(advance: float = 1, status: str | None = None,
                   completed: float | None = None):
            kwargs = {}
            if status is not None:
                kwargs["status"] = status
            if completed is not None:
                kwargs["completed"] = completed
            else:
                kwargs["advance"] = advance
            progress.update(task, **kwargs)

        yield update
