"""Forward time per 224x224 slice and parameter counts for each TMCA configuration (model only).

    python bench/bench_forward.py [--batch 16] [--size 224]

Random weights: the architecture, not the weights, sets the speed. Inference settings as the
engine uses them (eval mode, batch norm folded, channels_last, torch.inference_mode).
"""

from __future__ import annotations

import argparse
import time

import torch

from tmca.config import TMCAConfig
from tmca.networks.fusion import fuse_for_inference
from tmca.networks.text_encoder import FrozenTextEncoder
from tmca.networks.tmca_net import TMCANet

CONFIGS = {
    "TMCA (EfficientNet-Lite0, default)": {},
    "no TSD / no multi-level (same inference graph)": {"tsd": False},
    "no LGTE (plain cross-attention)": {"lgte": False},
    "image only": {"text": False},
    "TMCA with ConvNeXt-Tiny": {"encoder": "convnext_tiny"},
    "TMCA with the small MONAI encoder": {"encoder": "small"},
}


def slices_per_second(model: TMCANet, batch: int, size: int, text) -> float:
    image = torch.rand(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(2):
            model(image, text)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            model(image, text)
            times.append(time.perf_counter() - started)
    return batch / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    text_encoder = FrozenTextEncoder()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.size}x{args.size}")
    print("| configuration | trainable parameters | slices/s | ms per slice |")
    print("|---|---|---|---|")
    for name, overrides in CONFIGS.items():
        config = TMCAConfig(image_size=args.size, encoder_pretrained=False, **overrides)
        model = TMCANet(config, text_encoder if config.text else None).eval()
        fuse_for_inference(model)
        model = model.to(memory_format=torch.channels_last)
        text = model.encode_text(["Small nodule in the upper left lung."]).expand(args.batch) if config.text else None
        parameters = sum(p.numel() for p in model.trainable_parameters())
        rate = slices_per_second(model, args.batch, args.size, text)
        print(f"| {name} | {parameters / 1e6:.2f} M | {rate:.1f} | {1000 / rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
