"""The command line: Typer commands that parse and check options (no torch), call the stages
and print their results. :func:`entry` is the console script ``infl``."""

from infl_cli.cli.app import entry, main

__all__ = ["entry", "main"]
