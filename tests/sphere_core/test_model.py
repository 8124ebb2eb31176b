"""SphereEncoder network: shapes for every preset, the sphere radius, AdaLN-Zero, conditioning, RoPE."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from sphere_core.model import SphereEncoder
from sphere_core.nn.layers import AdaLN
from sphere_core.nn.posemb import apply_rope, grid_coords, rope_2d
from sphere_core.nn.transformer import Block
from sphere_core.presets import PRESETS, build_model, get_preset
from sphere_core.spherify import spherify
from tests.sphere_core.tiny import images, tiny_config, tiny_model

# --- shapes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRESETS))
def test_real_presets_shapes_on_meta(name: str) -> None:
    cfg = get_preset(name).model
    model = build_model(name, device="meta")
    x = torch.empty(2, cfg.channels, cfg.image_size, cfg.image_size, device="meta")
    y = torch.zeros(2, dtype=torch.long, device="meta") if cfg.conditional else None
    z = model.encode(x, y)
    assert tuple(z.shape) == (2, *model.latent_shape) == (2, cfg.num_tokens, cfg.token_channels)
    assert tuple(model.decode(z, y).shape) == tuple(x.shape)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_at_tiny_width_run_for_real(name: str) -> None:
    cfg = dataclasses.replace(get_preset(name).model, encoder_size="nano", decoder_size="nano")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SphereEncoder(cfg)
    x = images(2, cfg)
    y = torch.tensor([0, 1]) if cfg.conditional else None
    with torch.no_grad():
        z = model.encode(x, y)
        out = model.decode(spherify(z), y)
    assert z.shape == (2, cfg.num_tokens, cfg.token_channels)
    assert out.shape == x.shape and out.abs().max() <= 1.0 and torch.isfinite(out).all()


@pytest.mark.parametrize("head", ["linear", "conv"])
@pytest.mark.parametrize("channels", [1, 3])
def test_pixel_heads_and_channels(head: str, channels: int) -> None:
    model = tiny_model(pixel_head=head, channels=channels)
    x = images(3, model.cfg)
    out = model(x, torch.tensor([0, 1, 2]))
    assert out.shape == (3, channels, 16, 16) and out.abs().max() <= 1.0


def test_spherified_latent_has_radius_sqrt_L() -> None:
    model = tiny_model()
    v = spherify(model.encode(images(4, model.cfg), torch.arange(4)))
    norms = v.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, model.cfg.latent_dim**0.5), rtol=1e-4)


@pytest.mark.parametrize("affine", [True, False])
def test_affine_latent_mixer_flag_reaches_both_mixers(affine: bool) -> None:
    # Official: --affine_latent_mlp_mixer sets use_affine of the encoder's output mixer AND of the mixer
    # inside the decoder's input embedding; the norms inside the mixer blocks stay affine either way.
    model = tiny_model(perturb=0.0, affine_latent_mixer=affine)
    for mixer in (model.encoder.mixer, model.decoder.mixer):
        assert (mixer.norm.weight is not None) == affine
        assert all(block.norm_token.weight is not None for block in mixer.blocks)


def test_build_model_xl_on_meta_allocates_no_weights() -> None:
    model = build_model("imagenet-256-xl", device="meta")
    assert all(p.is_meta for p in model.parameters())


# --- AdaLN-Zero and conditioning ------------------------------------------------------------------


def test_adaln_zero_blocks_are_identity_at_init() -> None:
    model = tiny_model(perturb=0.0)
    g = torch.Generator().manual_seed(0)
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    assert len(blocks) == 4  # 2 encoder + 2 decoder
    x = torch.randn(2, 16, 64, generator=g)
    rope = rope_2d(4, 32, 10000.0)
    c = torch.randn(2, 64, generator=g)
    for block in blocks:
        assert torch.equal(block(x, rope, c), x)


def test_conditional_model_ignores_labels_at_init_and_uses_them_after_training() -> None:
    x = images(2, tiny_config())
    fresh = tiny_model(perturb=0.0)
    assert torch.equal(fresh(x, torch.tensor([0, 0])), fresh(x, torch.tensor([3, 3])))
    trained = tiny_model()
    assert not torch.allclose(trained(x, torch.tensor([0, 0])), trained(x, torch.tensor([3, 3])))


def test_unconditional_model_has_no_label_embedders_or_adaln() -> None:
    model = tiny_model(num_classes=0)
    assert model.encoder.label_embed is None and model.decoder.label_embed is None
    assert not any(isinstance(m, AdaLN) for m in model.modules())
    assert model.encoder_condition(torch.tensor([0])) is None
    x = images(2, model.cfg)
    assert torch.equal(model.encode(x, torch.tensor([1, 2])), model.encode(x))
    assert torch.equal(model.drop_labels(torch.tensor([1, 2]), 0.9, generator=None), torch.tensor([1, 2]))


def test_encoder_and_decoder_label_embedders_are_distinct() -> None:
    model = tiny_model(encoder_size="nano", decoder_size="micro")
    enc, dec = model.encoder.label_embed, model.decoder.label_embed
    assert enc is not None and dec is not None and enc is not dec
    assert enc.weight.shape == (6, 64) and dec.weight.shape == (6, 128)  # (K+1) x width
    x, y = images(2, model.cfg), torch.tensor([1, 2])
    z = model.encode(x, y)
    with torch.no_grad():
        dec.weight.add_(1.0)  # the decoder's table must not reach the encoder
    assert torch.equal(model.encode(x, y), z)


def test_cond_argument_equals_labels_and_none_means_null_class() -> None:
    model = tiny_model()
    x, y = images(2, model.cfg), torch.tensor([1, 4])
    assert torch.equal(model.encode(x, cond=model.encoder_condition(y)), model.encode(x, y))
    v = spherify(model.encode(x, y))
    assert torch.equal(model.decode(v, cond=model.decoder_condition(y)), model.decode(v, y))
    assert torch.equal(model.decode(v), model.decode(v, model.null_labels(2, v.device)))
    assert torch.equal(model.null_labels(3, "cpu"), torch.full((3,), 5))


def test_drop_labels_rate_and_determinism() -> None:
    model = tiny_model()
    y = torch.zeros(10_000, dtype=torch.long)
    dropped = model.drop_labels(y, 0.1, generator=torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, 5}
    assert abs((dropped == 5).float().mean().item() - 0.1) < 0.01
    again = model.drop_labels(y, 0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dropped, again)
    assert torch.equal(model.drop_labels(y, 0.0, generator=None), y)


def test_unconditional_encoder_leaves_the_origin_on_the_second_step() -> None:
    """The zero-initialised unconditional heads put z at 0 and make D ignore v. Step 1 therefore trains
    only the decoder head; from step 2 gradients reach the encoder and z moves onto the sphere."""
    model = tiny_model(perturb=0.0, num_classes=0)
    x = images(4, model.cfg)
    assert model.encode(x).abs().max() == 0
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    head_grads = []
    for _ in range(2):
        opt.zero_grad()
        (model(x) - x).square().mean().backward()
        head_grads.append(model.encoder.head.linear.weight.grad.norm().item())  # type: ignore[union-attr]
        opt.step()
    assert head_grads[0] == 0 and head_grads[1] > 0
    z = spherify(model.encode(x))
    assert torch.allclose(z.flatten(1).norm(dim=1), torch.full((4,), model.cfg.latent_dim**0.5), rtol=1e-3)


def mae_sincos_2d(grid: int, dim: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed written out in float64: channels [0, dim/2) encode the column j of
    token t = i * grid + j and channels [dim/2, dim) its row i, each as [sin(pos w_k), cos(pos w_k)] with
    w_k = 10000^(-k / (dim/4))."""
    omega = 1.0 / 10000.0 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    rows, cols = np.divmod(np.arange(grid * grid), grid)

    def half(pos: np.ndarray) -> np.ndarray:
        angles = np.outer(pos, omega)  # (N, dim/4)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([half(cols), half(rows)], axis=1)


def test_position_embedding_is_the_frozen_mae_sincos_table_and_in_state_dict() -> None:
    model = tiny_model(decoder_size="micro")
    for net, width in ((model.encoder, 64), (model.decoder, 128)):
        pos = net.transformer.pos_embed
        assert not pos.requires_grad
        np.testing.assert_allclose(pos.double().numpy(), mae_sincos_2d(4, width), atol=1e-6)
    pos = model.encoder.transformer.pos_embed
    # Token 1 sits at row 0, column 1: the column half comes first, so it starts at sin(1), the row half at 0.
    assert pos[1, 0] == pytest.approx(math.sin(1.0)) and pos[1, 32] == 0.0
    assert "encoder.transformer.pos_embed" in model.state_dict()


# --- RoPE -----------------------------------------------------------------------------------------


def test_rope_is_a_rotation() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 36, 32, generator=g)
    rotated = apply_rope(q, rope_2d(6, 32, 10000.0))
    assert not torch.allclose(rotated, q)
    pair_norms = q.unflatten(-1, (-1, 2)).norm(dim=-1)
    assert torch.allclose(rotated.unflatten(-1, (-1, 2)).norm(dim=-1), pair_norms, atol=1e-5)


def test_rope_turns_each_pair_counterclockwise_by_its_angle() -> None:
    """(x[2i], x[2i+1]) -> (x cos - y sin, x sin + y cos): the convention trained weights depend on, kept
    when the rotation became a complex product; on a strided view of qkv, as the attention passes it."""
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 36, 3 * 2 * 8, generator=g)
    q = qkv.unflatten(-1, (3, 2, 8)).permute(2, 0, 3, 1, 4)[0]  # (B, H, N, head_dim), not contiguous
    angles = rope_2d(6, 8, 10000.0)
    x, y = q[..., 0::2], q[..., 1::2]
    cos, sin = angles.cos(), angles.sin()
    expected = torch.stack([x * cos - y * sin, x * sin + y * cos], dim=-1).flatten(-2)
    assert torch.allclose(apply_rope(q, angles), expected, atol=1e-6)
    assert apply_rope(q.bfloat16(), angles).dtype == torch.bfloat16


def test_rope_scores_depend_only_on_2d_offsets() -> None:
    grid, head_dim = 6, 16
    g = torch.Generator().manual_seed(0)
    q = torch.randn(head_dim, generator=g).expand(1, 1, grid * grid, head_dim)
    k = torch.randn(head_dim, generator=g).expand(1, 1, grid * grid, head_dim)
    angles = rope_2d(grid, head_dim, 100.0)
    scores = (apply_rope(q, angles) @ apply_rope(k, angles).transpose(-1, -2))[0, 0]  # (N, N)
    rows, cols = (c.long() for c in grid_coords(grid))

    def at(r1: int, c1: int, r2: int, c2: int) -> torch.Tensor:
        return scores[r1 * grid + c1, r2 * grid + c2]

    assert torch.allclose(at(0, 0, 2, 3), at(3, 1, 5, 4), atol=1e-5)  # same (2, 3) offset
    assert torch.allclose(at(1, 4, 0, 0), at(5, 5, 4, 1), atol=1e-5)  # same (-1, -4) offset
    assert not torch.allclose(at(0, 0, 2, 3), at(0, 0, 3, 2), atol=1e-3)  # rows and columns differ
    assert rows[7] == 1 and cols[7] == 1
