"""Failures the command line reports as one line (exit code 2), never as a traceback."""


class UserError(Exception):
    """A mistake in what the user asked for: an unknown name, an impossible value, a folder that is not one."""


class RunFailed(RuntimeError):
    """A run that could not finish (a diverging loss, data that cannot serve its episodes); recorded as failed."""
