"""Errors in the data a user points us at: one line that names the file and the problem."""


class DataError(Exception):
    """Bad or missing input data. ``str(err)`` is a complete one-line message."""
