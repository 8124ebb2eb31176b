"""Preset registry: paper settings, model-card parameter counts, CPU presets that train on 2 cores."""

from __future__ import annotations

import pytest
import torch

from sphere_core.config import ModelConfig, SphereConfig
from sphere_core.presets import PRESETS, build_model, count_parameters, get_preset

# The official release's model card: sphere-l-af 642M, sphere-l-of 948M, sphere-l-imagenet 950M; counting
# the architecture of method §2 gives one more digit. Exact counts pin the architecture (any change to a
# layer moves them).
MODEL_CARD = {
    "animal-faces-256-l": (642.1e6, 642_148_324),
    "oxford-flowers-256-l": (948.8e6, 948_844_516),
    "imagenet-256-l": (950.4e6, 950_354_532),
}


@pytest.mark.parametrize("name", list(MODEL_CARD))
def test_parameter_counts_match_model_card(name: str) -> None:
    card, exact = MODEL_CARD[name]
    n = count_parameters(build_model(name, device="meta"))
    assert abs(n - card) / card < 0.005
    assert n == exact


def test_xl_and_cifar_counts() -> None:
    assert (
        count_parameters(build_model("imagenet-256-xl", device="meta")) == 1_388_922_404
    )  # "1.3B" in MODEL.md
    assert count_parameters(build_model("cifar-10-32-b", device="meta")) == 263_818_155  # spec estimate ~264M


def test_trainable_count_excludes_the_frozen_position_tables() -> None:
    model = build_model("animal-faces-256-l", device="meta")
    frozen = 2 * 1024 * 1024  # one (N, width) sin-cos table per network
    assert count_parameters(model) - count_parameters(model, trainable_only=True) == frozen


def _weights(cfg: SphereConfig) -> tuple[float, ...]:
    w = cfg.loss
    return (w.recon_dist, w.recon_perc, w.con_dist, w.con_perc, w.latent_con)


def test_paper_presets_follow_the_official_scripts() -> None:
    cifar = get_preset("cifar-10-32-b")
    assert (cifar.model.encoder_size, cifar.model.num_classes, cifar.model.pixel_head) == ("base", 10, "conv")
    assert (cifar.model.num_tokens, cifar.model.token_channels, cifar.model.latent_dim) == (256, 8, 2048)
    assert cifar.noise.alpha_max_deg == 80.0
    assert _weights(cifar) == (1.0, 1.0, 0.5, 0.5, 0.1)
    imnet = get_preset("imagenet-256-l")
    assert (imnet.model.num_tokens, imnet.model.token_channels, imnet.model.encoder_mixer_depth) == (
        1024,
        64,
        4,
    )
    assert imnet.noise.alpha_max_deg == 85.0 and _weights(imnet) == (50.0, 1.0, 25.0, 1.0, 0.1)
    assert get_preset("imagenet-256-xl").model.decoder_size == "xlarge"
    af, of = get_preset("animal-faces-256-l"), get_preset("oxford-flowers-256-l")
    assert af.model.num_classes == 0 and of.model.num_classes == 102
    assert af.model.token_channels == of.model.token_channels == 128
    assert _weights(af) == _weights(of) == (25.0, 1.0, 1.0, 1.0, 0.1)
    assert cifar.optim.total_steps == 5000 * 196 and cifar.optim.warmup_steps == 10 * 196


PAPER = ["cifar-10-32-b", "imagenet-256-l", "imagenet-256-xl", "animal-faces-256-l", "oxford-flowers-256-l"]
CPU = [
    "mnist-32-nano",
    "mnist-32-micro",
    "fashion-mnist-32-nano",
    "fashion-mnist-32-micro",
    "cifar-10-32-nano",
]


def test_paper_presets_flip_like_the_official_scripts_and_cpu_presets_do_not() -> None:
    assert set(PAPER) | set(CPU) == set(PRESETS)
    assert all(get_preset(name).augment.random_flip for name in PAPER)  # official --flip_image True
    assert not any(get_preset(name).augment.random_flip for name in CPU)  # a flipped digit is not one


@pytest.mark.parametrize("name", CPU)
def test_cpu_presets_have_a_small_latent_and_weight_free_feature_and_adversarial_terms(name: str) -> None:
    cfg = get_preset(name)
    assert cfg.model.image_size == 32 and cfg.model.num_tokens == 64 and cfg.model.patch_size == 4
    assert cfg.model.latent_dim in (512, 1024)
    assert (cfg.loss.recon_perc, cfg.loss.con_perc) == (1.0, 0.5)  # the paper's, on the random-conv network
    assert cfg.loss.adversarial > 0 and 0 < cfg.loss.adversarial_start_step < cfg.optim.total_steps
    assert count_parameters(build_model(cfg, device="meta")) < 3_000_000


def test_get_preset_error_lists_the_names() -> None:
    with pytest.raises(KeyError, match=r"imagenet-256-l.*mnist-32-nano"):
        get_preset("imagenet-512")
    assert all(isinstance(factory(), SphereConfig) for factory in PRESETS.values())


def test_build_model_accepts_name_model_config_and_sphere_config() -> None:
    cfg = get_preset("mnist-32-nano")
    by_name, by_sphere, by_model = build_model("mnist-32-nano"), build_model(cfg), build_model(cfg.model)
    assert by_name.cfg == by_sphere.cfg == by_model.cfg == cfg.model
    assert isinstance(by_model.cfg, ModelConfig)
    half = build_model(cfg, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    # The sin-cos table is filled when built on a real device, so meta -> real keeps it correct.
    assert torch.equal(by_name.encoder.transformer.pos_embed, by_model.encoder.transformer.pos_embed)
