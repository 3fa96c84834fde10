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


@pytest.fixture(scope="module")
def tile_model_dir(tmp_path_factory, text_encoder):
    """A small checkpoint trained on native-resolution crops (large_images "tile", 64x64 windows)."""
    import torch

    from tmca.checkpoint import save_checkpoint
    from tmca.config import TMCAConfig
    from tmca.networks.tmca_net import TMCANet

    torch.manual_seed(1)
    config = TMCAConfig(encoder="small", encoder_pretrained=False, image_size=64, embed_dim=32, decoder_channels=(32, 16, 16, 8, 8),
                        large_images="tile")  # fmt: skip
    return save_checkpoint(tmp_path_factory.mktemp("models") / "tile", TMCANet(config, text_encoder))


def test_segmenting_with_a_tile_model_slides_windows_without_monai(tmp_path, tile_model_dir):
    import numpy as np
    import SimpleITK as sitk

    image, output = tmp_path / "large.nrrd", tmp_path / "large.seg.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((1, 200, 150)).astype(np.float32)), str(image))
    args = ["segment", str(image), "--report", "Nodule in the upper left lung.", "-o", str(output), "--model", str(tile_model_dir),
            "--plane", "axial", "--backend", "eager", "--device", "cpu"]  # fmt: skip
    code = (
        "import tmca.inference\nfrom tmca.cli import main\n"
        "slid = []\nreal = tmca.inference.predict_by_windows\n"
        "tmca.inference.predict_by_windows = lambda *a, **k: slid.append(a[2].shape) or real(*a, **k)\n"
        f"assert main({args!r}) == 0\nassert slid == [(1, 1, 200, 150)], slid"
    )
    assert "monai" not in _loaded_after(code)
    assert output.exists()


def _last_line(code: str, **env_changes: str | None) -> str:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "TMCASegmenter")}
    for name, value in env_changes.items():
        env.pop(name, None) if value is None else env.__setitem__(name, value)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_the_command_lets_idle_openmp_threads_sleep_unless_the_user_chose():
    """Spinning OpenMP threads halved OpenVINO's rate (docs/PERFORMANCE.md): the command sets the policy before torch loads."""
    command = "import os, tmca.cli\ntmca.cli.main(['info'])\nprint(os.environ.get('OMP_WAIT_POLICY'))"
    assert _last_line(command, OMP_WAIT_POLICY=None) == "PASSIVE"
    assert _last_line(command, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
    too_late = "import os, torch\nfrom tmca.runtime import let_idle_openmp_threads_sleep\nlet_idle_openmp_threads_sleep()\nprint(os.environ.get('OMP_WAIT_POLICY'))"
    assert _last_line(too_late, OMP_WAIT_POLICY=None) == "None"  # once torch is loaded the setting would not apply
