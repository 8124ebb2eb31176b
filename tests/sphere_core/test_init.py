"""Initialisation against the official rules (method §2, "Initialisation"), checked on weight statistics.

Every bound and standard deviation below is computed from the rule (fans, gains), never from our output.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sphere_core.model import SphereEncoder
from sphere_core.nn.layers import AdaLN, ModulatedLinear
from sphere_core.nn.mixer import MixerBlock
from sphere_core.nn.posemb import sincos_2d
from sphere_core.presets import build_model
from tests.sphere_core.tiny import tiny_config


def build(seed: int = 0, **overrides: object) -> SphereEncoder:
    """A tiny model (16 px, patch 4, nano ViTs of width 64) with 40 classes: label tables of 2.6k entries."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return SphereEncoder(tiny_config(**{"num_classes": 40, **overrides}))


def xavier_bound(fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    return gain * math.sqrt(6.0 / (fan_in + fan_out))


def assert_uniform(w: torch.Tensor, bound: float) -> None:
    """U(-bound, bound): inside the bound, reaching close to it, with std bound / sqrt(3)."""
    w = w.detach().flatten().double()
    assert w.abs().max() <= bound * (1 + 1e-6)
    assert w.abs().max() > 0.9 * bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def assert_normal(w: torch.Tensor, std: float) -> None:
    w = w.detach().flatten().double()
    assert w.mean().item() == pytest.approx(0.0, abs=4 * std / math.sqrt(w.numel()))
    assert w.std().item() == pytest.approx(std, rel=0.1)
    assert w.abs().max() > 2.0 * std  # Gaussian tails, which a uniform of this std never reaches


def is_zero(t: torch.Tensor | None) -> bool:
    return t is not None and bool((t == 0).all())


def test_plain_linears_are_xavier_uniform_with_zero_bias() -> None:
    model = build()
    for net in (model.encoder, model.decoder):
        block = net.transformer.blocks[0]
        for linear in (block.attn.qkv, block.attn.proj, block.mlp.w2):
            assert_uniform(linear.weight, xavier_bound(linear.in_features, linear.out_features))
            assert is_zero(linear.bias)
        # SwiGLU: the official w12 is ONE Linear(width, 2 * hidden), so w1 and w3 share its fan.
        mlp = block.mlp
        fused = torch.cat([mlp.w1.weight, mlp.w3.weight])
        assert_uniform(fused, xavier_bound(mlp.w1.in_features, 2 * mlp.w1.out_features))
        assert is_zero(mlp.w1.bias) and is_zero(mlp.w3.bias)
    # The encoder's latent mixer keeps the global xavier pass (only the decoder's is overridden).
    mixer_linears = [m for m in model.encoder.mixer.modules() if isinstance(m, nn.Linear)]
    assert len(mixer_linears) == 4  # token mix and channel mix, two Linears each
    for linear in mixer_linears:
        assert_uniform(linear.weight, xavier_bound(linear.in_features, linear.out_features))
        assert is_zero(linear.bias)


def test_encoder_input_convs_use_the_flattened_kernel_fan() -> None:
    model = build()
    embed, proj = model.encoder.patch_embed, model.encoder.patch_proj
    c_in, p, width = 3, 4, 64
    # Flattened (width, 3 * p * p): fan_out is width alone, not width * p * p as nn.init would count.
    assert_uniform(embed.weight, xavier_bound(c_in * p * p, width))
    assert embed.bias is None
    assert_uniform(proj.weight, xavier_bound(width, width))
    assert is_zero(proj.bias)


def test_decoder_input_embedding_and_its_mixer_are_standard_normal() -> None:
    model = build(decoder_mixer_depth=2)
    mixer = [m for m in model.decoder.mixer.modules() if isinstance(m, nn.Linear)]
    linears = [model.decoder.latent_proj, *mixer]
    assert len(linears) == 1 + 2 * 4
    assert_normal(torch.cat([m.weight.flatten() for m in linears]), std=1.0)
    assert all(is_zero(m.bias) for m in linears)


def test_label_tables_are_normal_002() -> None:
    model = build()
    for table in (model.encoder.label_embed, model.decoder.label_embed):
        assert table is not None
        assert_normal(table.weight, std=0.02)


@pytest.mark.parametrize("num_classes", [40, 0])
@pytest.mark.parametrize("head", ["linear", "conv"])
def test_adaln_and_both_head_linears_start_at_zero(num_classes: int, head: str) -> None:
    model = build(num_classes=num_classes, pixel_head=head)
    adalns = [m for m in model.modules() if isinstance(m, AdaLN)]
    assert len(adalns) == (2 + 2 + 2 if num_classes else 0)  # one per block (2 + 2) and per head
    assert all(is_zero(m.proj.weight) and is_zero(m.proj.bias) for m in adalns)
    heads = [m for m in model.modules() if isinstance(m, ModulatedLinear)]
    assert heads == [model.encoder.head, model.decoder.head.linear]  # official ffn of either network
    assert all(is_zero(m.linear.weight) and is_zero(m.linear.bias) for m in heads)


def test_pixel_head_convs_are_xavier_gain_001_with_zero_bias() -> None:
    conv_head = build(pixel_head="conv").decoder.head
    conv, up = conv_head.conv, conv_head.up  # type: ignore[union-attr]
    assert_uniform(conv.weight, xavier_bound(32 * 3 * 3, 32, gain=0.01))
    # ConvTranspose2d weight is (in=32, out=3, k, k); official views it as (32, 3 * k * k).
    assert_uniform(up.weight, xavier_bound(3 * 6 * 6, 32, gain=0.01))
    assert is_zero(conv.bias) and is_zero(up.bias)
    smooth = build(pixel_head="linear").decoder.head.smooth  # type: ignore[union-attr]
    bound = xavier_bound(3 * 3 * 3, 3, gain=0.01)
    assert smooth.weight.abs().max() <= bound and smooth.weight.abs().max() > 0.5 * bound  # 81 entries
    assert is_zero(smooth.bias)


def test_mixer_scalars_norm_gains_and_frozen_position_tables() -> None:
    model = build()
    blocks = [m for m in model.modules() if isinstance(m, MixerBlock)]
    assert blocks and all(is_zero(b.alpha_token) and is_zero(b.alpha_channel) for b in blocks)
    norms = [m for m in model.modules() if isinstance(m, nn.RMSNorm) and m.weight is not None]
    assert norms and all(bool((m.weight == 1).all()) for m in norms)
    for net in (model.encoder, model.decoder):
        pos = net.transformer.pos_embed
        assert not pos.requires_grad and torch.equal(pos, sincos_2d(4, 64))


def test_initialize_weights_sets_every_parameter() -> None:
    model = build()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.initialize_weights()
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_meta_model_is_left_alone_then_materialised_by_initialize_weights() -> None:
    cfg = tiny_config(num_classes=40)
    meta = build_model(cfg, device="meta")  # initialize_weights is a no-op on meta: no crash
    assert all(p.is_meta for p in meta.parameters())
    real = meta.to_empty(device="cpu")
    ref = build()
    for model in (real, ref):
        torch.manual_seed(5)
        model.initialize_weights()
    ref_state = ref.state_dict()
    for name, value in real.state_dict().items():
        assert torch.equal(value, ref_state[name]), name
