"""Spin a Qt event loop in tests until a condition holds (the pollers under test fire on it)."""

from __future__ import annotations

from PyQt5.QtCore import QEventLoop, QTimer


def run_until(condition, timeout_s: float) -> bool:
    """Run an event loop until ``condition()`` is true or ``timeout_s`` passed; returns ``condition()``."""
    loop = QEventLoop()
    check = QTimer()
    check.setInterval(10)
    check.timeout.connect(lambda: condition() and loop.quit())
    check.start()
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec_()
    check.stop()
    return bool(condition())
