"""The exception types the CLI turns into one line on stderr and a non-zero exit."""


class InflError(Exception):
    """A user-facing error: a missing or mismatched artifact, missing data, a divergence, a
    retraining that could not be certified.

    The CLI prints ``str(error)`` on one line and exits with status ``EXIT_CODE`` (1);
    nothing else (no traceback) reaches the user.
    """

    EXIT_CODE = 1


class BadInput(InflError):
    """A value on the command line or in an input file that cannot be used: an option out of
    range, an unknown name, a malformed dataset, a problem too large for an exact path. Exit
    status 2, as for the usage errors Click reports itself."""

    EXIT_CODE = 2


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM reached a running command (exit status 130).

    A ``BaseException``, like ``KeyboardInterrupt``, so that no ``except Exception`` on the way
    up swallows it; unlike ``KeyboardInterrupt`` it passes through Click untouched. A stage
    that saved work re-raises it with a message saying how much (see ``infl loo``).
    """

    EXIT_CODE = 130
    DEFAULT = ("interrupted; what was under way was not written (what finished before is kept, "
               "and a rerun of the same command reuses it)")

    def __init__(self, message: str = DEFAULT):
        super().__init__(message)
