"""Errors, and the rule for which one to raise.

- :class:`TMCAError` is user-facing: the user's input or environment is wrong (a file, an argument,
  a model folder, a dataset layout). Its message is one line that names the problem and what to do.
  It is raised at the boundaries: the CLI commands, the public API (``Segmenter``, ``run_batch``,
  ``load_samples``, ``Trainer``, ``write_dataset``), the validators of user choices
  (:mod:`tmca.choices`, :class:`tmca.config.TMCAConfig`) and the readers of user files.
- ``ValueError``/``TypeError`` are library errors: one part of tmca called another wrongly (a mask
  of the wrong shape, an unknown internal option). They are bugs, and the command line reports them
  as internal errors.
"""


class TMCAError(Exception):
    """An error caused by the user's input or environment, shown without a traceback.

    The message says what is wrong and what to do about it. The command line prints it
    as one line and exits with ``exit_code``.
    """

    exit_code = 2


class CancelledError(TMCAError):
    """The user cancelled a running job (callback, SIGINT or SIGTERM)."""

    exit_code = 130


def reason(error: BaseException) -> str:
    """The last non-empty line of an exception's message, else its type name.

    SimpleITK, ITK and Pillow put the useful reason on the last line of long messages.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
