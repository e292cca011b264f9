"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class InflError(Exception):
    """A user-facing error: bad input, missing or mismatched artifact, divergence.

    The CLI prints ``str(error)`` on one line and exits with status 1; nothing else
    (no traceback) reaches the user.
    """
