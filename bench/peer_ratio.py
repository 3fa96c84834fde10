"""TMCA against the published text-guided model (GuideDecoder), timed in alternating rounds in one process.

    python bench/peer_ratio.py [--batches 8 16] [--rounds 6] [--size 224] [--backends auto | eager onnx openvino]

Both models have random weights (the architecture, not the weights, sets the speed), run in eval
mode under ``torch.inference_mode`` in fp32 on the same threads, on 224 x 224 single-channel slices.
Rounds alternate (peer, TMCA per backend, peer, ...) so that load from other processes on a shared
machine hits all alike; the ratio of the medians is the result.

The published model ("Ariadne's Thread", Zhong et al., MICCAI 2023; code: LanGuideMedSeg-MICCAI2023,
``net/model.py`` and ``net/decoder.py``), rebuilt from its public code with the sizes it uses:

- image encoder ConvNeXt-Tiny (transformers ``ConvNextModel``, default config = convnext-tiny-224,
  no download), grey slices repeated to 3 channels, all hidden states kept;
- text encoder CXR-BERT-specialized's architecture: a 12-layer, 768-wide BERT (transformers
  ``BertModel``, BERT-base config), reports padded to 24 tokens, hidden states of layers 1, 2 and
  12 mean-pooled into a 512-d projection head (as in its ``BERTModel``); the report is encoded in
  every forward pass, as its model takes (image, text) pairs;
- decoder: three GuideDecoder stages (768->384 at 7x7, 384->192 at 14x14, 192->96 at 28x28), each a
  GuideDecoderLayer (text Conv1d 24->{24,12,9} tokens + GELU + Linear 768->C + LeakyReLU; 1-head
  self-attention over the visual tokens with sine positions; 4-head cross-attention to the text
  tokens; LayerNorms; learned scale) and MONAI's ``UnetrUpBlock`` (2x2 transposed convolution and a
  residual block with batch norm), then MONAI's ``SubpixelUpsample`` (x4, 96->24) and
  ``UnetOutBlock`` (1x1 convolution) and a sigmoid.

TMCA runs as the product runs it: a random-weight checkpoint of the default configuration
(EfficientNet-Lite0, MiniLM-L6 text encoder) loaded by ``tmca.inference.Segmenter`` (batch norm
folded, channels_last), and per round what ``Segmenter`` does for one batch of slices of one
finding: encode the finding's text (the text cache is cleared, so it is really encoded), run the
image encoder once, decode, and turn the logits into probabilities on the slice grid. By default
with the backend ``tmca segment`` picks (``auto``: OpenVINO on a CPU where it is installed), and
with idle OpenMP threads sleeping, as the ``tmca`` command sets them (``tmca.runtime``).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from tmca.runtime import let_idle_openmp_threads_sleep

let_idle_openmp_threads_sleep()  # as the tmca command does, before torch loads

import numpy as np
import torch
from torch import nn

REPORT = "Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung."


# --- the published GuideDecoder model -----------------------------------------------------------


class PositionalEncoding(nn.Module):
    """Sine/cosine positions added to (B, L, C) tokens (the published model's PositionalEncoding)."""

    def __init__(self, channels: int, max_len: int = 5000) -> None:
        super().__init__()
        position = torch.arange(max_len)[:, None]
        div = torch.exp(torch.arange(0, channels, 2) * (-math.log(10000.0) / channels))
        table = torch.zeros(max_len, channels)
        table[:, 0::2] = torch.sin(position * div)
        table[:, 1::2] = torch.cos(position * div)
        self.register_buffer("table", table[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table[:, : x.shape[1]]


class GuideDecoderLayer(nn.Module):
    def __init__(self, channels: int, output_text_len: int, input_text_len: int = 24, embed_dim: int = 768) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(channels)
        self.cross_attn_norm = nn.LayerNorm(channels)
        self.self_attn = nn.MultiheadAttention(channels, num_heads=1, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(channels, num_heads=4, batch_first=True)
        self.text_project = nn.Sequential(
            nn.Conv1d(input_text_len, output_text_len, kernel_size=1), nn.GELU(), nn.Linear(embed_dim, channels), nn.LeakyReLU()
        )
        self.vis_pos = PositionalEncoding(channels)
        self.txt_pos = PositionalEncoding(channels, max_len=output_text_len)
        self.norm1 = nn.LayerNorm(channels)
        self.norm2 = nn.LayerNorm(channels)
        self.scale = nn.Parameter(torch.tensor(0.01))

    def forward(self, x: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        txt = self.text_project(txt)
        vis2 = self.norm1(x)
        q = k = self.vis_pos(vis2)
        vis2 = self.self_attn_norm(self.self_attn(q, k, value=vis2, need_weights=False)[0])
        vis = x + vis2
        vis2 = self.norm2(vis)
        vis2 = self.cross_attn(query=self.vis_pos(vis2), key=self.txt_pos(txt), value=txt, need_weights=False)[0]
        return vis + self.scale * self.cross_attn_norm(vis2)


class GuideDecoder(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, spatial_size: int, text_len: int) -> None:
        super().__init__()
        from monai.networks.blocks import UnetrUpBlock

        self.guide_layer = GuideDecoderLayer(in_channels, text_len)
        self.spatial_size = spatial_size
        self.decoder = UnetrUpBlock(2, in_channels, out_channels, 3, 2, norm_name="BATCH")

    def forward(self, vis: torch.Tensor, skip: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        vis = self.guide_layer(vis, txt)
        size = self.spatial_size
        vis = vis.transpose(1, 2).reshape(vis.shape[0], -1, size, size)
        skip = skip.transpose(1, 2).reshape(skip.shape[0], -1, 2 * size, 2 * size)
        return self.decoder(vis, skip).flatten(2).transpose(1, 2)


class PublishedGuideDecoderModel(nn.Module):
    """LanGuideMedSeg with random weights: forward(image (B, 1, 224, 224), input_ids, attention_mask) -> probabilities."""

    def __init__(self, size: int = 224, project_dim: int = 512) -> None:
        super().__init__()
        from monai.networks.blocks import SubpixelUpsample, UnetOutBlock
        from transformers import BertConfig, BertModel, ConvNextConfig, ConvNextModel

        self.image_encoder = ConvNextModel(ConvNextConfig())
        self.image_project = nn.Linear(768, project_dim)
        self.text_encoder = BertModel(BertConfig(), add_pooling_layer=False)  # BERT-base sizes = CXR-BERT's
        self.text_project = nn.Sequential(nn.Linear(768, project_dim), nn.LayerNorm(project_dim), nn.GELU(), nn.Linear(project_dim, project_dim))
        spatial = [size // 32, size // 16, size // 8, size // 4]
        features = [768, 384, 192, 96]
        self.spatial = spatial
        self.decoder16 = GuideDecoder(features[0], features[1], spatial[0], 24)
        self.decoder8 = GuideDecoder(features[1], features[2], spatial[1], 12)
        self.decoder4 = GuideDecoder(features[2], features[3], spatial[2], 9)
        self.decoder1 = SubpixelUpsample(2, features[3], 24, 4)
        self.out = UnetOutBlock(2, in_channels=24, out_channels=1)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image = image.expand(-1, 3, -1, -1)
        vision = self.image_encoder(pixel_values=image, output_hidden_states=True)
        self.image_project(vision.pooler_output)  # computed by the published model every pass
        text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = text.hidden_states
        self.text_project(torch.stack([hidden[1], hidden[2], hidden[-1]]).permute(1, 0, 2, 3).mean(2).mean(1))
        tokens = hidden[-1]
        features = [f.flatten(2).transpose(1, 2) for f in vision.hidden_states[1:]]  # strides 4, 8, 16, 32
        x = self.decoder16(features[3], features[2], tokens)
        x = self.decoder8(x, features[1], tokens)
        x = self.decoder4(x, features[0], tokens)
        x = x.transpose(1, 2).reshape(x.shape[0], -1, self.spatial[-1], self.spatial[-1])
        return torch.sigmoid(self.out(self.decoder1(x)))


def published_tokens(batch: int, length: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """A report of 24 token ids (the published data pipeline pads/truncates to 24), one per image."""
    ids = torch.randint(1000, 30000, (batch, length))
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, torch.ones(batch, length, dtype=torch.long)


# --- TMCA as the product runs it ---------------------------------------------------------------


class TMCARound:
    """One Segmenter batch: encode the finding (cache cleared), image encoder once, decode, probabilities."""

    def __init__(self, folder: Path, batch: int, size: int, backend: str) -> None:
        from tmca.findings import split_findings
        from tmca.inference import Segmenter

        self.segmenter = Segmenter(folder, device="cpu", batch_size=batch, backend=backend)
        self.findings = split_findings(REPORT)[:1]
        self.slices = np.random.default_rng(0).random((batch, size, size), dtype=np.float32)
        self.size = (size, size)

    def __call__(self) -> np.ndarray:
        self.segmenter.model.text_encoder._cache.clear()
        texts = self.segmenter._encode_findings(self.findings)
        probabilities, _ = self.segmenter._predict_batch(self.slices, texts, self.size, False)
        return probabilities


def tmca_checkpoint(folder: Path, size: int) -> Path:
    from tmca.checkpoint import save_checkpoint
    from tmca.config import TMCAConfig
    from tmca.networks.tmca_net import TMCANet

    torch.manual_seed(0)
    return save_checkpoint(folder / "tmca-default", TMCANet(TMCAConfig(image_size=size, encoder_pretrained=False)))


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds per model and batch size (after one warm-up)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--backends", nargs="+", default=["auto"],
        help="TMCA inference backends (see tmca segment --backend); default: auto, as tmca segment runs. Each one listed joins the "
        "rotation, and their thread pools slow one another",
    )  # fmt: skip
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    peer = PublishedGuideDecoderModel(args.size).eval()
    peer_parameters = sum(p.numel() for p in peer.parameters())
    with tempfile.TemporaryDirectory() as scratch:
        folder = tmca_checkpoint(Path(scratch), args.size)
        for batch in args.batches:
            image = torch.rand(batch, 1, args.size, args.size)
            ids, mask = published_tokens(batch)
            runs = {backend: TMCARound(folder, batch, args.size, backend) for backend in args.backends}
            if batch == args.batches[0]:
                tmca_parameters = sum(p.numel() for p in next(iter(runs.values())).segmenter.model.parameters())
                print(f"parameters: published {peer_parameters / 1e6:.1f} M, TMCA {tmca_parameters / 1e6:.1f} M (both incl. text encoders)")
            with torch.inference_mode():
                peer_run = lambda: peer(image, ids, mask)  # noqa: E731
                peer_run()  # warm-up
                for run in runs.values():
                    run()
                peer_times, times = [], {backend: [] for backend in runs}
                for _ in range(args.rounds):
                    peer_times.append(timed(peer_run))
                    for backend, run in runs.items():
                        times[backend].append(timed(run))
            peer_rate = batch / statistics.median(peer_times)
            line = f"batch {batch:3d}: published {peer_rate:6.2f} slices/s"
            for backend, backend_times in times.items():
                rate = batch / statistics.median(backend_times)
                name = backend if backend != "auto" else f"auto ({runs[backend].segmenter.runner.name})"
                line += f"; TMCA {name} {rate:6.2f} slices/s, ratio {rate / peer_rate:.1f}x"
            print(f"{line} (medians of {args.rounds} alternating rounds; load average {os.getloadavg()[0]:.2f})", flush=True)


if __name__ == "__main__":
    main()
