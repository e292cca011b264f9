"""The ``infl`` command line: a thin Typer layer over :mod:`infl_cli.stages`.

Importing it loads Typer, rich and the settings only: ``--help``, ``--version`` and every
option error answer without torch, matplotlib or Dask, which each command imports when it
computes (:mod:`~infl_cli.cli.pipeline`, :mod:`~infl_cli.cli.run`).
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
import warnings

import typer
from rich.markup import escape

from infl_cli import __version__
from infl_cli.cli import benchmarks as cli_benchmarks
from infl_cli.cli import output
from infl_cli.cli import paper as cli_paper
from infl_cli.cli import pipeline as cli_commands
from infl_cli.cli import run as cli_run
from infl_cli.cli import studies as cli_studies
from infl_cli.errors import InflError, Interrupted
from infl_cli.runtime import progress

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Explain a prediction through its training data with influence functions "
                       "(Koh & Liang 2017) and check it by leave-one-out retraining.")

def _no_flag_placeholder():
    """A flag takes no value: Typer's help shows none for it (it would print ``<bool>``)."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_no_flag_placeholder()

JSON = typer.Option(False, "--json",
                    help="Print the results as one strict JSON object on stdout instead of "
                         "tables (progress and notices stay on stderr).")


def _results(command):
    """``command`` with ``--json``: its results go to stdout as tables, or as one JSON object
    (:mod:`~infl_cli.cli.output`)."""
    signature = inspect.signature(command)
    flag = inspect.Parameter("as_json", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=JSON,
                             annotation=bool)

    @functools.wraps(command)
    def wrapper(*args, as_json: bool = False, **kwargs):
        output.start(as_json)
        command(*args, **kwargs)
        output.finish()

    wrapper.__signature__ = signature.replace(
        parameters=[*signature.parameters.values(), flag])
    return wrapper


COMMANDS = (
    ("train", cli_commands.train_cmd, "Fit the model: model.safetensors."),
    ("ihvp", cli_commands.ihvp_cmd, "Solve s_test = H⁻¹∇L(z_test) for each test point."),
    ("score", cli_commands.score_cmd,
     "Influence of every training point on each test loss (or another estimator's, or "
     "imported scores)."),
    ("loo", cli_commands.loo_cmd,
     "Retrain without each selected training point: the actual changes, certified."),
    ("plot", cli_commands.plot_cmd, "Predicted against actual change (Figure 2) and metrics.json."),
    ("show", cli_commands.show_cmd,
     "A test image beside its most helpful and most harmful training images."),
    ("run", cli_run.run_cmd, "Every stage in order, skipping those up to date; or --figure 1|3."),
    ("self-influence", cli_studies.self_influence_cmd,
     "The training labels to check first, by self-influence."),
    ("mislabel", cli_studies.mislabel_cmd,
     "The paper's Figure 6: flipped labels found and fixed, every model retrained."),
    ("attack", cli_studies.attack_cmd,
     "The paper's Figure 5: training images perturbed to flip a test prediction, proven."),
    ("lds", cli_benchmarks.lds_cmd,
     "The LDS and LOO correlation of every scores artifact, on certified truth."),
    ("components", cli_paper.components_cmd,
     "The paper's Figure 1: the parts of influence on a binary model."),
    ("hinge", cli_paper.hinge_cmd,
     "The paper's Figure 3: a certified linear SVM seen through the smooth hinge."),
)
for _name, _command, _short in COMMANDS:
    app.command(_name, short_help=_short)(_results(_command))


def version_text() -> str:
    """``infl <version>``, with the commit when the package runs from a git checkout."""
    from infl_cli.runtime.provenance import commit

    return f"infl {__version__}" + (f" (commit {commit()})" if commit() else "")


def _version(value: bool) -> None:
    if value:
        print(version_text())
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version (and the commit, in a git "
                                            "checkout) and exit.")):
    """Explain a prediction through its training data with influence functions (Koh & Liang
    2017) and check it by leave-one-out retraining."""


# Typer may vendor its own click: take the exception classes from Typer itself.
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _interrupt(signum, frame):
    raise Interrupted()


def main() -> None:
    """Entry point: every error ends as one line on stderr and a non-zero exit.

    Ctrl-C and SIGTERM raise :class:`Interrupted` wherever the command is: it unwinds through
    the atomic writes (no half-written file stays behind) and ends as one line, exit 130.
    """
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    # torch.func's first use warns of a torch-internal deprecation: not the user's business
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    try:
        code = app(standalone_mode=False)
    except InflError as exc:
        _fail(str(exc), exc.EXIT_CODE)
    except Interrupted as exc:
        _fail(str(exc), Interrupted.EXIT_CODE)
    except (typer.Abort, KeyboardInterrupt):
        _fail(Interrupted.DEFAULT, Interrupted.EXIT_CODE)
    except _CLICK_ERROR as exc:
        if exc.format_message():  # empty for the help shown when no command is given
            _fail(exc.format_message(), exc.exit_code)
        sys.exit(exc.exit_code)
    except PermissionError as exc:  # a file the command must write or read
        _fail(f"permission denied: {exc.filename or exc}", 1)
    except OSError as exc:  # full disk, unreadable file
        _fail(str(exc), 1)
    except MemoryError:
        _fail("out of memory; use a smaller --chunk-size", 1)
    except Exception as exc:  # a bug: still one line, with its type, and a non-zero exit
        _fail(f"{type(exc).__name__}: {exc}", 2, prefix="internal error")
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int, prefix: str = "error") -> None:
    progress.drop()  # what a refused command would have said it read: not said
    progress.console.print(f"[red]{prefix}:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def entry() -> None:
    """The console script: :func:`main`, then a fast exit. Once the command has finished and
    its output is flushed, nothing is left to clean up (every file is written atomically and
    closed, the lock released, a local cluster shut down), so the process ends at once instead
    of spending most of a second tearing down torch's modules."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)
