"""Model configuration: architecture, ablation switches and preprocessing, with a JSON round trip."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tmca.choices import MODALITIES, PLANE_AXIS, PLANES
from tmca.errors import TMCAError

ARCHITECTURES = ("tmca", "unet")
ENCODERS = ("efficientnet_lite0", "convnext_tiny", "small")
LARGE_IMAGE_MODES = ("resize", "tile")
LEGACY_VALUES: dict[str, Any] = {"fine_depth": 1, "fine_guidance": False, "click_inputs": False}
"""The architecture of checkpoints saved before these fields existed."""
LEVELS = (1, 2, 3, 4)


@dataclass
class TMCAConfig:
    """Everything needed to rebuild a TMCA network (the weights live beside it).

    ``architecture`` is "tmca" (the language-guided network) or "unet" (the image-only MONAI
    BasicUNet baseline of ``tmca train --ablation unet``; it uses none of the encoder, decoder and
    text settings, and needs ``text`` off).
    Ablation switches (TMCA_SPEC.md): ``tsd`` (off: global pooling and a plain cosine),
    ``multilevel`` (off: level 4 only), ``lgte`` (off: plain cross-attention),
    ``text`` (off: image-only U-Net with the same encoder and decoder).
    ``modality`` is what the model was trained on, assumed for inputs without a modality tag;
    ``plane`` is the slicing plane a 2D model was trained on, the default at inference.
    ``fine_depth`` and ``fine_guidance`` shape the decoder's stride-2 and stride-1 stages (see
    :class:`tmca.networks.decoder.TMCADecoder`); ``click_inputs``: the decoder takes corrective clicks
    and the current mask (:mod:`tmca.networks.clicks`), so the model can refine a finding.
    ``large_images`` is how the model saw slices larger than ``image_size``: "resize" (each slice
    squeezed to image_size x image_size, in training and inference) or "tile" (trained on
    image_size crops at native resolution; inference slides a window of that size over large slices).
    """

    spatial_dims: int = 2
    architecture: str = "tmca"
    in_channels: int = 1
    image_size: int = 224
    encoder: str = "efficientnet_lite0"
    encoder_pretrained: bool = True
    encoder_weights: str | None = None
    text_encoder: str = "minilm"
    max_length: int = 64
    embed_dim: int = 256
    decoder_channels: tuple[int, ...] = (128, 64, 32, 24, 16)
    fine_depth: int = 1
    fine_guidance: bool = True
    click_inputs: bool = False
    lgte_heads: int = 4
    align_levels: tuple[int, ...] = LEVELS
    level_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    beta: float = 0.5
    tau_init: float = 0.07
    margin: float = 0.2
    lambda_align: float = 0.1
    lambda_ds: float = 0.1
    tsd: bool = True
    multilevel: bool = True
    lgte: bool = True
    text: bool = True
    modality: str = "OT"
    plane: str = "axial"
    large_images: str = "resize"
    intensity_policy: dict[str, Any] = field(default_factory=dict)
    training_summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.decoder_channels = tuple(int(c) for c in self.decoder_channels)
        self.align_levels = tuple(int(level) for level in self.align_levels)
        self.level_weights = tuple(float(w) for w in self.level_weights)
        self.modality = str(self.modality).strip().upper()
        self.plane = str(self.plane).strip().lower()
        self.validate()

    @property
    def active_align_levels(self) -> tuple[int, ...]:
        """Encoder levels that take part in the contrastive alignment (level 4 only without ``multilevel``)."""
        if not self.text:
            return ()
        return self.align_levels if self.multilevel else (4,)

    def level_weight(self, level: int) -> float:
        return self.level_weights[level - 1]

    def validate(self) -> None:
        problems = []
        if self.spatial_dims not in (2, 3):
            problems.append(f"spatial_dims must be 2 or 3, not {self.spatial_dims}")
        if self.architecture not in ARCHITECTURES:
            problems.append(f"architecture must be one of {', '.join(ARCHITECTURES)}, not {self.architecture!r}")
        if self.architecture == "unet" and (self.text or self.click_inputs):
            problems.append("the unet architecture takes the image only; set text and click_inputs to false")
        if self.encoder not in ENCODERS:
            problems.append(f"encoder must be one of {', '.join(ENCODERS)}, not {self.encoder!r}")
        if self.fine_depth < 1:
            problems.append(f"fine_depth must be at least 1, not {self.fine_depth}")
        if len(self.decoder_channels) != 5:
            problems.append("decoder_channels needs 5 widths (strides 16, 8, 4, 2, 1)")
        if any(c % self.lgte_heads for c in self.decoder_channels[:3]):
            problems.append(f"decoder widths at strides 16, 8, 4 must be divisible by lgte_heads={self.lgte_heads}")
        if not set(self.align_levels) <= set(LEVELS) or not self.align_levels:
            problems.append(f"align_levels must be a non-empty subset of {LEVELS}")
        if len(self.level_weights) != 4:
            problems.append("level_weights needs 4 values")
        if self.plane not in PLANE_AXIS:
            problems.append(f"plane must be one of {', '.join(PLANES)}, not {self.plane!r}")
        if self.large_images not in LARGE_IMAGE_MODES:
            problems.append(f"large_images must be one of {', '.join(LARGE_IMAGE_MODES)}, not {self.large_images!r}")
        if self.modality not in MODALITIES:
            problems.append(f"modality must be one of {', '.join(MODALITIES)}, not {self.modality!r}")
        if self.encoder == "convnext_tiny" and self.spatial_dims != 2:
            problems.append("the ConvNeXt-Tiny encoder is 2D only; use encoder 'small' or 'efficientnet_lite0' for 3D")
        if self.encoder == "efficientnet_lite0" and self.encoder_pretrained and self.spatial_dims != 2:
            problems.append("ImageNet weights exist for the 2D EfficientNet-Lite0 only; set encoder_pretrained=false for 3D")
        if self.encoder in ("efficientnet_lite0", "convnext_tiny") and self.in_channels not in (1, 3):
            problems.append(f"the {self.encoder} encoder takes 1 or 3 input channels, not {self.in_channels}")
        if self.image_size % 32:
            problems.append(f"image_size must be a multiple of 32, not {self.image_size}")
        if problems:
            raise TMCAError("invalid model configuration: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TMCAConfig":
        """Build from user settings (a YAML 'model:' section); missing keys take today's defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TMCAError(f"unknown model configuration keys: {', '.join(unknown)}; is the model from a newer tmca?")
        return cls(**values)

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> "TMCAConfig":
        """Build from a checkpoint's config; a key that the checkpoint predates takes the value that rebuilds its architecture."""
        return cls.from_dict({**LEGACY_VALUES, **values})
