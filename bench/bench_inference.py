"""Inference benchmarks (run by hand; results go to docs/PERFORMANCE.md).

1. Slices per second end to end through ``Segmenter.segment`` on a 224x224xN volume (resizing,
   text encoding once per volume, batched forward passes, probabilities back on the grid).
2. A 512x512x200 CT: wall time of ``tmca segment`` from command to file, and its peak memory.
3. Start-up: ``import tmca.inference`` in a fresh process, and ``tmca segment --plane axial`` on the
   256x256x25 brain MRI of the shared data (command to file), each the median of --startup-runs.

    python bench/bench_inference.py [--model DIR] [--slices 200] [--encoder efficientnet_lite0] [--backend auto]

The backend (auto, eager, onnx, openvino) is that of ``tmca segment --backend``; with an exported backend the export is
made (once per checkpoint) before anything is timed. The load average is printed with the results:
on a shared machine other work slows every number.

Without --model the bundled demo model is used when installed, else a default-architecture
checkpoint with random weights (the architecture, not the weights, sets the speed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tmca.runtime import let_idle_openmp_threads_sleep

let_idle_openmp_threads_sleep()  # as the tmca command does, before torch loads

import numpy as np
import SimpleITK as sitk
import torch

from tmca.checkpoint import save_checkpoint
from tmca.choices import BACKENDS
from tmca.config import TMCAConfig
from tmca.inference import Segmenter
from tmca.models import default_model_path
from tmca.networks.tmca_net import TMCANet

REPORT = "Small nodule in the upper left lung."


def model_folder(args: argparse.Namespace, scratch: Path) -> Path:
    if args.model:
        return Path(args.model)
    if args.encoder is None and default_model_path() is not None:
        return default_model_path()
    config = TMCAConfig(encoder=args.encoder or "efficientnet_lite0", encoder_pretrained=False)
    torch.manual_seed(0)  # the masks of a random model, and so the time spent measuring them, depend on its weights
    return save_checkpoint(scratch / "model", TMCANet(config))


def slices_per_second(model: Path, slices: int, device: str, batch_size: int | None, backend: str) -> dict:
    segmenter = Segmenter(model, device=device, batch_size=batch_size, backend=backend)
    size = segmenter.config.image_size
    volume = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 200, (slices, size, size)).astype(np.float32))
    segmenter.segment(volume, REPORT, plane="axial")  # warm-up
    times = []
    for _ in range(3):
        started = time.perf_counter()
        segmenter.segment(volume, REPORT, plane="axial")
        times.append(time.perf_counter() - started)
    best = min(times)
    return {
        "slices": slices, "size": size, "batch_size": segmenter.batch_size, "backend": segmenter.runner.name,
        "seconds": round(best, 3), "slices_per_second": round(slices / best, 1),
    }  # fmt: skip


def whole_ct(model: Path, scratch: Path, device: str, backend: str) -> dict:
    volume = np.random.default_rng(1).normal(-300, 300, (200, 512, 512)).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.7, 0.7, 1.5))
    path = scratch / "ct512.nii.gz"
    sitk.WriteImage(image, str(path), useCompression=True)
    out = scratch / "ct512.seg.nrrd"
    command = [sys.executable, "-m", "tmca.cli", "segment", str(path), "--report", REPORT, "--output", str(out),
               "--model", str(model), "--device", device, "--modality", "CT", "--plane", "axial", "--backend", backend]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"shape": "512x512x200", "seconds": round(seconds, 2), "peak_rss_gb": round(peak_kb / 2**20, 2), "command": " ".join(command[1:])}


def startup(model: Path, mri: Path | None, runs: int, backend: str) -> dict:
    """Median wall seconds of importing the engine, and of the brain MRI command (when the file exists)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "TMCASegmenter")}

    def median_seconds(command: list[str]) -> float:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
            times.append(time.perf_counter() - started)
        return round(statistics.median(times), 2)

    if backend != "eager":
        Segmenter(model, device="cpu", backend=backend)  # the export exists before anything is timed
    result = {"import_tmca_inference_s": median_seconds([sys.executable, "-c", "import tmca.inference"])}
    if mri is not None and mri.is_file():
        with tempfile.TemporaryDirectory() as folder:
            command = [sys.executable, "-m", "tmca.cli", "segment", str(mri), "--report", "Tumour in the left frontal lobe.",
                       "--plane", "axial", "--output", str(Path(folder) / "brain.seg.nrrd"), "--progress", "json", "--backend", backend]
            if model != default_model_path():
                command += ["--model", str(model)]
            result["brain_mri_command_s"] = median_seconds(command)
            result["command"] = " ".join(command[1:])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--encoder", help="benchmark a random-weight model of this encoder instead of the default model")
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--skip-ct", action="store_true")
    parser.add_argument("--backend", default="eager", choices=BACKENDS)
    parser.add_argument("--mri", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "brain1_image.nrrd")
    parser.add_argument("--startup-runs", type=int, default=3, help="0 skips the start-up measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        model = model_folder(args, scratch)
        results = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "load_average_before": [round(v, 2) for v in os.getloadavg()],
            "model": str(model),
            "throughput": slices_per_second(model, args.slices, args.device, args.batch_size, args.backend),
        }
        if not args.skip_ct:
            results["ct_512x512x200"] = whole_ct(model, scratch, args.device, args.backend)
        if args.startup_runs > 0:
            results["startup"] = startup(default_model_path() or model, args.mri, args.startup_runs, args.backend)
        results["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
