"""The warm engine's speed (run by hand): what a Slicer user waits for with ``tmca serve --stdio``.

Through the module's own client (TMCASegmenterLib.engine_client), on a synthetic CT:
1. process start to the engine's ``hello`` (Python, torch, the model loaded);
2. the first report on a volume (read, preprocess, segment, write) and a second report on the same
   volume (the loaded volume kept: ``volume_cached``), each from request to ``result``;
3. a click (``refine``) when the model has click inputs; with --click-model a model of the demo's
   architecture with click inputs and random weights is made for this (weights do not set the speed);
4. for comparison, the one-shot ``tmca segment`` from command to file.

    python bench/serve.py [--model DIR | --click-model] [--size 160] [--depth 80] [--device cpu]

The load average is printed with the results: on a shared machine other work slows every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "TMCASegmenter"))

import SimpleITK as sitk  # noqa: E402

from TMCASegmenterLib.commands import child_environment  # noqa: E402
from TMCASegmenterLib.engine_client import EngineClient, serve_command  # noqa: E402
from tmca.synth import write_dataset  # noqa: E402

REPORTS = ("Unilateral pulmonary infection, one infected area, middle left lung.", "Nodule in the upper right lung. No pleural effusion.")


def click_model(scratch: Path) -> Path:
    """The demo model's architecture with click inputs and random weights."""
    from tmca.checkpoint import read_checkpoint_config, save_checkpoint
    from tmca.config import TMCAConfig
    from tmca.models import resolve_model
    from tmca.networks.tmca_net import TMCANet

    settings = dict(read_checkpoint_config(resolve_model(None))["model"])
    settings.update(encoder_pretrained=False, click_inputs=True)
    return save_checkpoint(scratch / "click-model", TMCANet(TMCAConfig.from_dict(settings)))


def wait(client: EngineClient, request_id: str, events: list) -> float:
    started = time.perf_counter()
    while request_id in client.pending:
        client.poll()
        time.sleep(0.005)
    if events[-1].name != "result":
        raise SystemExit(f"{events[-1].name}: {events[-1].message}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder (default: the bundled demo model)")
    parser.add_argument("--click-model", action="store_true", help="time refine with a random click model of the demo's architecture")
    parser.add_argument("--size", type=int, default=160, help="in-plane size of the synthetic CT (default 160)")
    parser.add_argument("--depth", type=int, default=80, help="slices of the synthetic CT (default 80)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        model = str(click_model(scratch)) if args.click_model else args.model
        write_dataset(scratch / "data", 1, "CT", 3, seed=3, size=args.size, depth=args.depth)
        image = next((scratch / "data" / "images").glob("*.nii.gz"))
        results: dict = {"volume": "x".join(map(str, sitk.ReadImage(str(image)).GetSize())), "device": args.device}

        client = EngineClient(serve_command(sys.executable, model, args.device), env=child_environment(ROOT / "TMCASegmenter"))
        started = time.perf_counter()
        events: list = []
        first = client.request("segment", on_event=events.append, image=image, report=REPORTS[0], output=scratch / "a.seg.nrrd")
        while client.info is None:
            client.poll()
            time.sleep(0.005)
        results["start_to_hello_s"] = round(time.perf_counter() - started, 2)
        wait(client, first, events)
        results["first_report_s"] = events[-1].data["seconds"]
        results["start_to_first_result_s"] = round(time.perf_counter() - started, 2)
        result_id = events[-1].data["result_id"]
        events.clear()
        second = client.request("segment", on_event=events.append, image=image, report=REPORTS[1], output=scratch / "b.seg.nrrd")
        results["second_report_s"] = round(wait(client, second, events), 2)
        results["second_report_engine_s"] = events[-1].data["seconds"]
        results["second_volume_cached"] = events[-1].data["volume_cached"]
        if client.can_refine:
            reference = sitk.ReadImage(str(image))
            point = reference.TransformIndexToPhysicalPoint(tuple(n // 2 for n in reference.GetSize()))
            events.clear()
            click = client.request("refine", on_event=events.append, result_id=result_id, finding=0,
                                   clicks=[{"point": list(point), "positive": True}], output=scratch / "c.seg.nrrd")
            results["click_to_result_s"] = round(wait(client, click, events), 3)
            results["click_engine_s"] = events[-1].data["seconds"]
        client.stop()

        command = [sys.executable, "-m", "tmca.cli", "segment", str(image), "--report", REPORTS[1], "--output", str(scratch / "o.seg.nrrd"),
                   "--device", args.device] + (["--model", model] if model else [])
        started = time.perf_counter()
        subprocess.run(command, check=True, env=child_environment(ROOT / "TMCASegmenter"), capture_output=True)
        results["one_shot_segment_s"] = round(time.perf_counter() - started, 2)
    results["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
