"""Perceptual loss: offline construction from weight files in the published layouts, and behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sphere_core.config import LossWeights
from sphere_core.perceptual import (
    LPIPS,
    ConvNeXt,
    PerceptualLoss,
    RandomConvFeatures,
    build_perceptual,
    perceptual_status,
    vgg16_features,
)

# torchvision's published parameter counts: convnext_small meta["num_params"]; vgg16 is 138,357,544
# in all, of which the three classifier Linears hold 123,642,856.
CONVNEXT_SMALL_PARAMS = 50_223_688
VGG16_FEATURE_PARAMS = 138_357_544 - (25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000)
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
TINY_CONVNEXT = ((8, 16, 1), (16, None, 1))


def tiny_perceptual(seed: int = 0) -> PerceptualLoss:
    torch.manual_seed(seed)
    lpips = LPIPS()
    lpips.lins.load_state_dict(
        {k: v.abs() for k, v in lpips.lins.state_dict().items()}
    )  # LPIPS heads are >= 0
    return PerceptualLoss(lpips, ConvNeXt(TINY_CONVNEXT))


def pair(seed: int, channels: int = 3, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, channels, size, size, generator=g), torch.rand(2, channels, size, size, generator=g)


# --- layouts -------------------------------------------------------------------------------------


def test_architectures_match_the_published_layouts() -> None:
    convnext = ConvNeXt()
    assert sum(p.numel() for p in convnext.parameters()) == CONVNEXT_SMALL_PARAMS
    shapes = {k: tuple(v.shape) for k, v in convnext.state_dict().items()}
    assert len(shapes) == 4 + 36 * 9 + 3 * 4 + 4  # stem, 36 blocks, 3 downsamples, classifier
    assert shapes["features.0.0.weight"] == (96, 3, 4, 4)
    assert shapes["features.1.0.layer_scale"] == (96, 1, 1)
    assert shapes["features.1.0.block.0.weight"] == (96, 1, 7, 7)
    assert shapes["features.5.26.block.3.weight"] == (1536, 384)
    assert shapes["features.6.1.weight"] == (768, 384, 2, 2)
    assert shapes["classifier.2.weight"] == (1000, 768)

    vgg = vgg16_features()
    assert sum(p.numel() for p in vgg.parameters()) == VGG16_FEATURE_PARAMS
    assert {k.split(".")[0] for k in vgg.state_dict()} == {str(i) for i in VGG16_CONV_INDICES}
    lpips = LPIPS()
    # Each LPIPS tap is the ReLU right after a stage's last conv.
    for tap, channels in zip((3, 8, 15, 22, 29), (64, 128, 256, 512, 512), strict=True):
        assert isinstance(lpips.features[tap], torch.nn.ReLU)
        assert lpips.features[tap - 1].out_channels == channels


def test_build_from_files_offline(perceptual_weight_files: dict[str, Path]) -> None:
    perceptual = build_perceptual(
        perceptual_weight_files["vgg_path"],
        perceptual_weight_files["lpips_path"],
        perceptual_weight_files["convnext_path"],
    )
    assert perceptual is not None and perceptual.lpips is not None and perceptual.convnext is not None
    saved = torch.load(perceptual_weight_files["convnext_path"], weights_only=True)
    assert torch.equal(perceptual.convnext.state_dict()["classifier.2.weight"], saved["classifier.2.weight"])
    assert all(not p.requires_grad for p in perceptual.parameters())
    a, b = pair(0)
    b[1] = a[1]  # one different pair, one identical pair: a single (slow, 224 px) ConvNeXt-S call
    dist = perceptual(a, b)
    assert dist.shape == (2,) and dist[0] > 0
    assert abs(dist[1].item()) < 1e-6
    assert "ON" in perceptual_status(perceptual)


def test_partial_weight_sets(perceptual_weight_files: dict[str, Path]) -> None:
    assert build_perceptual() is None
    with pytest.raises(ValueError, match="needs both"):
        build_perceptual(vgg_path=perceptual_weight_files["vgg_path"])
    lpips_only = build_perceptual(perceptual_weight_files["vgg_path"], perceptual_weight_files["lpips_path"])
    assert lpips_only is not None and lpips_only.convnext is None
    a, b = pair(1)
    # With LPIPS alone its weight renormalises to 1: Perc is the plain LPIPS distance.
    assert lpips_only.lpips is not None
    assert torch.allclose(lpips_only(a, b), lpips_only.lpips(a, b))


def test_lpips_rejects_images_below_16px() -> None:
    a, b = pair(6, size=8)  # VGG16's four pools would shrink relu5_3 to nothing
    with pytest.raises(ValueError, match="at least 16 px"):
        tiny_perceptual()(a, b)


def test_wrong_layout_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "cnx.pth"
    torch.save({"features.0.0.weight": torch.zeros(96, 3, 4, 4)}, path)
    with pytest.raises(RuntimeError, match="Missing key"):
        build_perceptual(convnext_path=path)


def test_status_says_when_perceptual_terms_are_off() -> None:
    status = perceptual_status(None, LossWeights(recon_perc=1.0, con_perc=0.5))
    assert "OFF" in status and "recon_perc=1.0" in status and "ignored" in status
    assert "ignored" not in perceptual_status(None, LossWeights(recon_perc=0.0, con_perc=0.0))


# --- behaviour -----------------------------------------------------------------------------------


def test_combination_is_the_normalised_weighted_mean() -> None:
    perceptual = tiny_perceptual()
    a, b = pair(2)
    assert perceptual.lpips is not None
    lpips = perceptual.lpips(a, b)
    mse = (perceptual.logits(a) - perceptual.logits(b)).square().mean(dim=1)
    assert torch.allclose(perceptual(a, b), (1.0 * lpips + 0.1 * mse) / 1.1, rtol=1e-5)


def test_properties_identity_symmetry_nonnegativity() -> None:
    perceptual = tiny_perceptual()
    a, b = pair(3)
    assert torch.allclose(perceptual(a, a), torch.zeros(2), atol=1e-6)
    assert torch.allclose(perceptual(a, b), perceptual(b, a), rtol=1e-5)
    assert bool((perceptual(a, b) > 0).all())


def test_convnext_sees_224px_imagenet_normalised_input() -> None:
    perceptual = tiny_perceptual()
    seen: list[torch.Tensor] = []
    assert perceptual.convnext is not None
    perceptual.convnext.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0]))
    mean_image = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(2, 3, 16, 16)
    perceptual.logits(mean_image)
    assert seen[0].shape == (2, 3, 224, 224)
    assert torch.allclose(seen[0], torch.zeros_like(seen[0]), atol=1e-5)  # the ImageNet mean maps to 0


def test_grayscale_is_repeated_to_three_channels() -> None:
    perceptual = tiny_perceptual()
    a, b = pair(4, channels=1)
    expected = perceptual(a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1))
    assert torch.allclose(perceptual(a, b), expected)


def test_gradient_reaches_the_input_not_the_weights() -> None:
    perceptual = tiny_perceptual()
    perceptual.train()
    assert not perceptual.training
    a, b = pair(5)
    a.requires_grad_(True)
    perceptual(a, b).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in perceptual.parameters())


def test_random_conv_features_are_a_function_of_their_seed_alone() -> None:
    torch.manual_seed(123)  # the global generator must not matter
    first = RandomConvFeatures(1, seed=7).state_dict()
    torch.manual_seed(456)
    again, other = RandomConvFeatures(1, seed=7).state_dict(), RandomConvFeatures(1, seed=8).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not any(torch.equal(first[k], other[k]) for k in first)


def test_the_random_conv_width_sets_every_layer_and_keeps_the_distance_usable() -> None:
    narrow, default = RandomConvFeatures(1, seed=7, width=8), RandomConvFeatures(1, seed=7)
    widths = [m.out_channels for m in narrow.layers if isinstance(m, torch.nn.Conv2d)]
    assert widths == [8, 16, 16, 32, 32] and default.width == 32
    assert sum(p.numel() for p in default.parameters()) > 10 * sum(p.numel() for p in narrow.parameters())
    perceptual = build_perceptual(random_conv=(1, 7), random_conv_width=8)
    assert perceptual is not None and "width 8" in perceptual.describe()
    a, b = pair(0, channels=1, size=32)
    assert perceptual(a, a).abs().max() < 1e-6 and bool((perceptual(a, b) > perceptual(a, a)).all())


def test_random_conv_distance_is_zero_on_equal_images_and_grows_with_the_difference() -> None:
    perceptual = build_perceptual(random_conv=(1, 7))
    assert perceptual is not None and "random conv features, seed 7" in perceptual.describe()
    a, b = pair(0, channels=1, size=32)
    assert perceptual(a, a).abs().max() < 1e-6
    small, large = perceptual(a, (a + 0.05 * (b - a))), perceptual(a, b)
    assert small.shape == large.shape == (2,) and bool((small > 0).all() and (small < large).all())
    a.requires_grad_(True)
    perceptual(a, b).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in perceptual.parameters())  # frozen


def test_random_conv_features_replace_weight_files_rather_than_mix_with_them(
    perceptual_weight_files: dict[str, Path],
) -> None:
    with pytest.raises(ValueError, match="give one or the other"):
        build_perceptual(convnext_path=perceptual_weight_files["convnext_path"], random_conv=(3, 1))
    status = perceptual_status(build_perceptual(random_conv=(3, 1)))
    assert status.startswith("perceptual loss ON: (random conv features, seed 1")


@pytest.mark.parametrize("published", [False, True])
def test_bf16_features_give_the_fp32_distance_to_bf16_rounding(published: bool) -> None:
    def build(bf16: bool) -> PerceptualLoss:
        if published:
            torch.manual_seed(0)
            return PerceptualLoss(LPIPS(), ConvNeXt(TINY_CONVNEXT), bf16=bf16)
        perceptual = build_perceptual(random_conv=(3, 7), bf16=bf16)
        assert perceptual is not None
        return perceptual

    fp32, bf16 = build(False), build(True)
    assert "fp32" in fp32.describe() and "bf16" in bf16.describe()
    a, b = pair(0, channels=3, size=32)
    a.requires_grad_(True)
    exact, rounded = fp32(a, b), bf16(a, b)
    assert rounded.dtype == torch.float32  # the loss adds up in fp32
    torch.testing.assert_close(rounded, exact, rtol=0.03, atol=1e-4)
    (grad_exact,) = torch.autograd.grad(exact.sum(), a)
    (grad_rounded,) = torch.autograd.grad(rounded.sum(), a)
    cosine = torch.nn.functional.cosine_similarity(grad_exact.flatten(), grad_rounded.flatten(), dim=0)
    assert cosine > 0.99
