"""Simulated corrective clicks for training a model with click inputs (the DeepEdit / RITM recipe).

Half of the batches train as before, without clicks. The other half first let the model predict
from the report alone, then add 1 or 2 rounds of clicks, each placed by :func:`tmca.interactive.next_click`
in the largest error region of the model's current prediction, with that prediction as the prior
mask; the loss is taken on the prediction after the last round. The simulation runs without
gradients and reuses the batch's encoder features, so it costs decoder passes only.
"""

from __future__ import annotations

import numpy as np
import torch

from tmca.interactive import click_maps, next_click
from tmca.networks.text_encoder import TextFeatures

CLICK_TRAINING_PROBABILITY = 0.5
MAX_SIMULATED_ROUNDS = 2


def wants_clicks(rng: np.random.Generator) -> bool:
    """Whether this batch trains with simulated clicks."""
    return bool(rng.random() < CLICK_TRAINING_PROBABILITY)


@torch.no_grad()
def simulated_click_maps(
    model: torch.nn.Module,
    features: list[torch.Tensor],
    image: torch.Tensor,
    text: TextFeatures | None,
    mask: torch.Tensor,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Click maps (B, 3, S, S) after 1..MAX_SIMULATED_ROUNDS simulated rounds on ``image`` (B, C, S, S)
    with ground truth ``mask`` (B, 1, S, S); ``features`` are the batch's encoder features (detached)."""
    count, _, height, width = image.shape
    truth = mask[:, 0].detach().cpu().numpy() > 0.5
    positive: list[list[tuple[int, int]]] = [[] for _ in range(count)]
    negative: list[list[tuple[int, int]]] = [[] for _ in range(count)]
    clicks = None
    for _ in range(int(rng.integers(1, MAX_SIMULATED_ROUNDS + 1))):
        logits = model.decode(features, image, text, with_alignment=False, clicks=clicks).logits
        probability = torch.sigmoid(logits.float())[:, 0].cpu()
        prediction = probability.numpy() > 0.5
        for item in range(count):
            click = next_click(prediction[item], truth[item])
            if click is not None:
                (positive if click[1] else negative)[item].append(click[0])
        maps = [click_maps((height, width), height, positive[i], negative[i], probability[i]) for i in range(count)]
        clicks = torch.stack(maps).to(image.device, image.dtype)
    return clicks
