"""Start-up: the engine and the default text encoder load without the heavy libraries they do not use.

Each check runs in a fresh interpreter (sys.modules of this test process already holds everything).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("monai", "transformers", "scipy", "pydicom", "PIL", "torch._dynamo", "torch._inductor", "onnxruntime")


def _loaded_after(code: str) -> list[str]:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "TMCASegmenter")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_engine_loads_no_heavy_library():
    assert _loaded_after("import tmca.inference, tmca.cli\ntmca.cli.build_parser()") == []


def test_loading_the_demo_model_needs_neither_monai_nor_transformers():
    from tmca.models import default_model_path

    if default_model_path() is None:
        pytest.skip("the bundled demo model is not installed")
    assert _loaded_after("from tmca.inference import Segmenter\nSegmenter(None, device='cpu')") == []
