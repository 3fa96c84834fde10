"""Process-wide settings that only take effect when made before torch is first imported."""

from __future__ import annotations

import os
import sys


def let_idle_openmp_threads_sleep() -> None:
    """Make torch's OpenMP threads sleep between parallel regions instead of spinning.

    By default libgomp's idle threads spin for a while after each parallel region, on the same
    cores that OpenVINO's and ONNX Runtime's own thread pools need next: on a 2-core CPU that
    spinning cost OpenVINO about a fifth of its speed (``docs/PERFORMANCE.md``). A value the user
    set in ``OMP_WAIT_POLICY`` is kept; once torch is loaded the setting can no longer change.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
