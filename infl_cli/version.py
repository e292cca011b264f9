"""The version of infl (one place: the package, the records, the help)."""

__version__ = "0.1.0"
