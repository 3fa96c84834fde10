"""User-facing errors: one clear message that names the problem and what to do."""


class TMCAError(Exception):
    """An error caused by the user's input or environment, shown without a traceback.

    The message says what is wrong and what to do about it. The command line prints it
    as one line and exits with ``exit_code``.
    """

    exit_code = 2


class CancelledError(TMCAError):
    """The user cancelled a running job (callback, SIGINT or SIGTERM)."""

    exit_code = 130
