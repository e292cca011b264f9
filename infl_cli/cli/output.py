"""Where a command's results go: stdout. For a reader they are rich tables; with ``--json``
they are one strict JSON object (no NaN or infinity: a figure that is undefined is ``null``),
so that ``infl show -w W > t.txt`` or ``infl score --json | jq`` get the results and nothing
else. Progress bars, notices and warnings go to stderr (:mod:`~infl_cli.runtime.progress`).

A command opens its output once (:func:`start`); what it reports goes through :func:`emit`,
which draws the tables at once, or, with ``--json``, keeps the record for the single JSON
object that :func:`finish` prints.
"""

from __future__ import annotations

import json
import os
import sys

from rich.console import Console

from infl_cli.runtime.artifacts import strict_json

_state = {"json": False, "records": {}}


def console() -> Console:
    """The results console, on the current stdout (up to 200 columns wide when stdout is not a
    terminal, or ``$COLUMNS``, so that nothing is cut)."""
    out = Console(file=sys.stdout, highlight=False)
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out = Console(file=sys.stdout, highlight=False, width=200)
    return out


def start(as_json: bool = False) -> None:
    """Open the command's output: tables, or one JSON object (``as_json``)."""
    from infl_cli.runtime import progress

    progress.drop()
    _state["json"] = bool(as_json)
    _state["records"] = {}


def is_json() -> bool:
    """Whether the command prints its results as JSON."""
    return _state["json"]


def emit(name: str, record, render) -> None:
    """Report ``record`` under ``name``: ``render(record)`` draws its tables, unless the
    command prints JSON, which keeps it."""
    if _state["json"]:
        _state["records"][name] = record
    else:
        render(record)


def finish() -> None:
    """Print the JSON object (one record: itself; several: by name); nothing for tables."""
    from infl_cli.runtime import progress

    progress.flush()
    if not _state["json"]:
        return
    records = _state["records"]
    body = next(iter(records.values())) if len(records) == 1 else records
    sys.stdout.write(dumps(body) + "\n")
    sys.stdout.flush()
    _state["records"] = {}


def dumps(value) -> str:
    return json.dumps(strict_json(value), indent=2, sort_keys=True, allow_nan=False)
