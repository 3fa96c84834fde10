"""``tmca info``: versions, devices and the default model."""

from __future__ import annotations

import argparse
import json

from tmca import __version__


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("info", help="show versions, devices and the default model")
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument("--model", help="also describe this checkpoint: its manifest sha256, architecture and lineage "
                                        "(parent and Val Dice of a fine-tuned model)")
    return parser


def collect_info() -> dict:
    import torch

    from tmca.devices import device_report
    from tmca.models import default_model_path

    model = default_model_path()
    default_model = {"name": "tmca-demo", "path": str(model) if model else None, "installed": model is not None}
    if model is not None:
        config = json.loads((model / "config.json").read_text(encoding="utf-8"))
        architecture = config.get("model", {})
        default_model.update(
            {key: architecture.get(key) for key in ("encoder", "text_encoder", "spatial_dims", "image_size")}
        )
    return {"version": __version__, "torch": torch.__version__, "devices": device_report(), "default_model": default_model}


def run(args: argparse.Namespace) -> int:
    from tmca.lineage import describe_lineage, model_summary

    info = collect_info()
    if args.model is not None:
        info["model"] = model_summary(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"tmca {info['version']} (torch {info['torch']})")
    for device in info["devices"]:
        details = ", ".join(f"{k}={v}" for k, v in device.items() if k != "type")
        print(f"  device: {device['type']}" + (f" ({details})" if details else ""))
    model = info["default_model"]
    print(f"  default model: {model['path'] or 'not installed'}")
    if "model" in info:
        print("\n".join(describe_lineage(info["model"])))
    return 0
