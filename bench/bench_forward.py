"""Forward time per 224x224 slice and parameter counts for each TMCA configuration (model only).

    python bench/bench_forward.py [--batch 16] [--size 224] [--rounds 5]

Configurations are timed in alternating rounds (each round times every configuration once; the
best round counts), so machine noise hits them alike.

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
    "TMCA, the previous decoder (128-64-32-16-8, no fine gates)": {"decoder_channels": (128, 64, 32, 16, 8), "fine_guidance": False},
    "TMCA with click inputs, clicks given": {"click_inputs": True},
    "no TSD / no multi-level (same inference graph)": {"tsd": False},
    "no LGTE (plain cross-attention)": {"lgte": False},
    "image only": {"text": False},
    "TMCA with ConvNeXt-Tiny": {"encoder": "convnext_tiny"},
    "TMCA with the small MONAI encoder": {"encoder": "small"},
}


def timed(model: TMCANet, image: torch.Tensor, text, clicks: torch.Tensor | None) -> float:
    started = time.perf_counter()
    model(image, text, clicks=clicks)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    text_encoder = FrozenTextEncoder()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.size}x{args.size}")
    image = torch.rand(args.batch, 1, args.size, args.size).contiguous(memory_format=torch.channels_last)
    runs = {}
    for name, overrides in CONFIGS.items():
        config = TMCAConfig(image_size=args.size, encoder_pretrained=False, **overrides)
        model = TMCANet(config, text_encoder if config.text else None).eval()
        fuse_for_inference(model)
        model = model.to(memory_format=torch.channels_last)
        text = model.encode_text(["Small nodule in the upper left lung."]).expand(args.batch) if config.text else None
        clicks = torch.rand(args.batch, 3, args.size, args.size) if config.click_inputs else None
        runs[name] = (model, text, clicks, sum(p.numel() for p in model.trainable_parameters()))
    best = {name: float("inf") for name in runs}
    with torch.inference_mode():
        for model, text, clicks, _ in runs.values():
            timed(model, image, text, clicks)  # warm-up
        for _ in range(args.rounds):
            for name, (model, text, clicks, _) in runs.items():
                best[name] = min(best[name], timed(model, image, text, clicks))
    print("| configuration | trainable parameters | slices/s | ms per slice |")
    print("|---|---|---|---|")
    for name, (_, _, _, parameters) in runs.items():
        rate = args.batch / best[name]
        print(f"| {name} | {parameters / 1e6:.2f} M | {rate:.1f} | {1000 / rate:.1f} |", flush=True)

if __name__ == "__main__":
    main()
