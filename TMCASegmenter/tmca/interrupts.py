"""Turn SIGTERM (and SIGINT) into a prompt, clean cancellation of the running command."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from tmca.errors import CancelledError


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[threading.Event]:
    """While active, SIGINT and SIGTERM raise :class:`CancelledError` in the main thread.

    Outputs are written atomically, so a cancelled run leaves no output file behind. The yielded
    event is set when a signal arrived (for code that polls instead).
    """
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum, frame):
        event.set()
        raise CancelledError(f"stopped by {signal.Signals(signum).name}; nothing was written")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
