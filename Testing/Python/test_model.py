"""The TMCA network: shapes, gradient flow, frozen text encoder, ablation switches."""

from __future__ import annotations

import pytest
import torch

from tmca.config import TMCAConfig
from tmca.errors import TMCAError
from tmca.losses import TMCALoss
from tmca.networks.decoder import TMCADecoder
from tmca.networks.lgte import LanguageGuidedTargetEnhancement, PlainCrossAttentionBlock
from tmca.networks.tmca_net import TMCANet

REPORTS = ["Small nodule in the upper left lung.", "Large nodule in the lower right lung."]


def _mask(shape) -> torch.Tensor:
    mask = torch.zeros(shape)
    mask[..., 8:24, 8:24] = 1.0
    return mask


@pytest.mark.parametrize(
    "encoder,spatial_dims,size",
    [("small", 2, 64), ("efficientnet_lite0", 2, 64), ("convnext_tiny", 2, 64), ("small", 3, 32), ("efficientnet_lite0", 3, 32)],
)
def test_forward_shapes(encoder, spatial_dims, size, small_config, text_encoder):
    config = small_config(encoder=encoder, spatial_dims=spatial_dims, image_size=max(size, 32), encoder_pretrained=False)
    model = TMCANet(config, text_encoder).eval()
    image = torch.rand((2, 1) + (size,) * spatial_dims)
    with torch.no_grad():
        output = model(image, REPORTS)
    assert output.logits.shape == (2, 1) + (size,) * spatial_dims
    assert [tuple(r.shape[2:]) for r in output.relevance] == [(size // 16,) * spatial_dims, (size // 8,) * spatial_dims, (size // 4,) * spatial_dims]
    assert output.embeddings == {}  # alignment projections are training-only


def test_pretrained_efficientnet_loads_imagenet_weights():
    from tmca.networks.encoders import EfficientNetLite0Encoder

    pretrained = EfficientNetLite0Encoder(pretrained=True)
    random = EfficientNetLite0Encoder(pretrained=False)
    assert not torch.equal(pretrained.stem.weight, random.stem.weight)
    assert pretrained.stem.weight.shape == (32, 3, 3, 3)


def test_gradients_reach_every_trainable_module_and_text_encoder_stays_frozen(small_config, text_encoder):
    model = TMCANet(small_config(), text_encoder).train()
    before = {k: v.clone() for k, v in text_encoder.state_dict().items()}
    image = torch.rand(2, 1, 64, 64)
    mask = _mask((2, 1, 64, 64))
    output = model(image, REPORTS)
    loss, stats = TMCALoss()(model, output, mask, REPORTS)
    loss.backward()
    no_grad = [name for name, p in model.named_parameters() if not name.startswith("text_encoder.") and (p.grad is None or p.grad.abs().sum() == 0)]
    assert no_grad == []
    assert all(p.grad is None for p in text_encoder.parameters())
    assert all(not p.requires_grad for p in text_encoder.parameters())
    torch.optim.AdamW(model.parameters(), lr=1e-2).step()
    after = text_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not text_encoder.training
    assert {"dice_loss", "bce", "align", "deep_supervision"} <= set(stats)


def test_text_changes_the_output(small_config, text_encoder):
    torch.manual_seed(0)
    model = TMCANet(small_config(), text_encoder).eval()
    image = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        a = model(image, REPORTS[:1]).logits
        b = model(image, REPORTS[1:]).logits
    assert not torch.allclose(a, b)


def test_ablation_text_off_is_an_image_only_unet(small_config):
    model = TMCANet(small_config(text=False)).eval()
    assert not hasattr(model, "text_encoder") and not hasattr(model, "projections") and not hasattr(model, "alignment")
    assert model.decoder.text_blocks is None
    image = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(image, ["left"]).logits, model(image, ["right"]).logits)
        assert torch.equal(model(image).logits, model(image, ["left"]).logits)


def test_ablation_lgte_off_uses_plain_cross_attention(small_config, text_encoder):
    model = TMCANet(small_config(lgte=False), text_encoder).eval()
    assert all(isinstance(b, PlainCrossAttentionBlock) for b in model.decoder.text_blocks)
    assert not any(isinstance(m, LanguageGuidedTargetEnhancement) for m in model.modules())
    with torch.no_grad():
        output = model(torch.rand(1, 1, 64, 64), REPORTS[:1])
    assert output.relevance == []  # no relevance maps, no deep supervision
    full = TMCANet(small_config(), text_encoder)
    assert any(isinstance(m, LanguageGuidedTargetEnhancement) for m in full.modules())


def test_ablation_multilevel_off_aligns_level_4_only(small_config, text_encoder):
    model = TMCANet(small_config(multilevel=False), text_encoder).train()
    output = model(torch.rand(2, 1, 64, 64), REPORTS)
    assert set(output.embeddings) == {4}
    full = TMCANet(small_config(), text_encoder).train()
    assert set(full(torch.rand(2, 1, 64, 64), REPORTS).embeddings) == {1, 2, 3, 4}


def test_ablation_tsd_off_ignores_the_target(small_config, text_encoder):
    torch.manual_seed(0)
    model = TMCANet(small_config(tsd=False), text_encoder).train()
    output = model(torch.rand(2, 1, 64, 64), REPORTS)
    first, stats = model.alignment(output.embeddings, _mask((2, 1, 64, 64)), REPORTS)
    moved = torch.zeros(2, 1, 64, 64)
    moved[..., 40:60, 40:60] = 1.0
    second, _ = model.alignment(output.embeddings, moved, REPORTS)
    assert torch.allclose(first, second)
    assert not any(key.startswith("tb_") for key in stats)
    full = TMCANet(small_config(), text_encoder).train()
    output = full(torch.rand(2, 1, 64, 64), REPORTS)
    a, stats = full.alignment(output.embeddings, _mask((2, 1, 64, 64)), REPORTS)
    b, _ = full.alignment(output.embeddings, moved, REPORTS)
    assert not torch.allclose(a, b)
    assert any(key.startswith("tb_") for key in stats)


def test_invalid_configuration_is_a_clear_error():
    with pytest.raises(TMCAError, match="encoder must be one of"):
        TMCAConfig(encoder="resnet")
    with pytest.raises(TMCAError, match="multiple of 32"):
        TMCAConfig(image_size=100)


def test_convnext_is_2d_only():
    from tmca.networks.encoders import build_encoder

    with pytest.raises(ValueError, match="2D only"):  # a library error inside networks/ (the errors rule)
        build_encoder("convnext_tiny", 3, 1, 64, False, None)
    with pytest.raises(TMCAError, match="2D only"):  # the user meets it at the boundary
        TMCAConfig(encoder="convnext_tiny", spatial_dims=3, encoder_pretrained=False)
    with pytest.raises(TMCAError, match="2D EfficientNet-Lite0 only"):
        TMCAConfig(encoder="efficientnet_lite0", spatial_dims=3, encoder_pretrained=True)
    with pytest.raises(TMCAError, match="1 or 3 input channels"):
        TMCAConfig(encoder="efficientnet_lite0", in_channels=2, encoder_pretrained=False)


def test_decoder_rejects_unknown_text_mode():
    with pytest.raises(ValueError):
        TMCADecoder(2, 1, (16, 24, 32, 64, 128), (32, 16, 16, 8, 8), 32, 384, 4, "film")


@pytest.mark.parametrize("encoder", ["efficientnet_lite0", "small"])
def test_inference_fusion_keeps_the_outputs(encoder, small_config, text_encoder):
    import copy

    from tmca.networks.fusion import fuse_for_inference

    torch.manual_seed(0)
    model = TMCANet(small_config(encoder=encoder), text_encoder)
    for module in model.modules():  # non-trivial batch-norm statistics, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    fused = fuse_for_inference(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert all(stage.merge is not None for stage in fused.decoder.stages)  # no concatenated tensors at inference
    image = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fused(image, REPORTS).logits, model(image, REPORTS).logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError, match="eval mode"):
        fuse_for_inference(TMCANet(small_config(), text_encoder).train())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_relevance_without_pixel_embeddings_is_the_same(spatial_dims, small_config, text_encoder):
    """Inference computes cos(V, u) from the encoder features without building V: the same relevance and mask."""
    from tmca.networks.tsd import LevelProjection

    torch.manual_seed(0)
    projection = LevelProjection(spatial_dims, 24, 32, 256)
    torch.nn.init.normal_(projection.image.bias, std=0.5)
    features = torch.randn((2, 24) + (6,) * spatial_dims) * 3
    features[0, :, 0] = 0  # pixels where only the bias remains
    tokens, mask, sentence = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.bool), torch.randn(2, 32)
    with torch.no_grad():
        full = projection(features, tokens, mask, sentence)
        cheap = projection(features, tokens, mask, sentence, pixels=False)
    assert cheap.V is None and full.cosine is None
    torch.testing.assert_close(cheap.sentence_cosine(), full.sentence_cosine(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cheap.K, full.K)

    model = TMCANet(small_config(spatial_dims=spatial_dims, image_size=32), text_encoder).eval()
    for level in model.projections.values():
        torch.nn.init.normal_(level.image.bias, std=0.5)
    image = torch.rand((2, 1) + (32,) * spatial_dims)
    with torch.no_grad():
        with_pixels = model(image, REPORTS, with_alignment=True)  # the alignment levels build V
        without = model(image, REPORTS, with_alignment=False)
    assert set(with_pixels.embeddings) >= {1, 2, 3}
    for a, b in zip(with_pixels.relevance, without.relevance):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(with_pixels.logits, without.logits, atol=1e-4, rtol=1e-4)
