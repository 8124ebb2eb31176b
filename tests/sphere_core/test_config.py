import pytest

from sphere_core.config import (
    ConfigError,
    LossWeights,
    ModelConfig,
    NoiseConfig,
    SphereConfig,
    from_dict,
)


def test_round_trip_is_identity() -> None:
    cfg = SphereConfig(
        model=ModelConfig(num_classes=0, encoder_size="nano"), noise=NoiseConfig(alpha_max_deg=80)
    )
    assert SphereConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("image_size", "ratio", "resolution", "tokens", "channels", "latent"),
    [
        (32, 1.5, "high", 256, 8, 2048),  # CIFAR-10: 16x16 tokens x 8 = 2,048 (method §2)
        (256, 3.0, "high", 1024, 64, 65536),  # ImageNet
        (256, 1.5, "high", 1024, 128, 131072),  # Animal-Faces, Oxford-Flowers
        (256, 3.0, "low", 256, 256, 65536),
    ],
)
def test_latent_shape_matches_the_official_table(
    image_size: int, ratio: float, resolution: str, tokens: int, channels: int, latent: int
) -> None:
    m = ModelConfig(image_size=image_size, compression_ratio=ratio, latent_resolution=resolution)  # type: ignore[arg-type]
    assert (m.num_tokens, m.token_channels, m.latent_dim) == (tokens, channels, latent)


def test_unknown_key_names_the_dotted_field_and_the_allowed_keys() -> None:
    with pytest.raises(ConfigError) as err:
        SphereConfig.from_dict({"noise": {"alpha_max": 80}})
    assert str(err.value).startswith("noise.alpha_max: unknown key (allowed: alpha_max_deg,")


def test_literal_lists_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"loss.distance: 'l3' is not allowed \(allowed: 'smooth_l1', 'l2'"):
        SphereConfig.from_dict({"loss": {"distance": "l3"}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"optim": {"betas": [0.9]}}, "optim.betas: expected a list of 2 values"),
        ({"optim": {"total_steps": 1.5}}, "optim.total_steps: expected int"),
        ({"model": {"affine_latent_mixer": "yes"}}, "model.affine_latent_mixer: expected bool"),
        ({"model": {"num_classes": True}}, "model.num_classes: expected int"),
        ({"noise": {"alpha_max_deg": 95}}, "noise.alpha_max_deg: 95.0 must be in (0, 90)"),
        ({"model": {"image_size": 33}}, "model.image_size: 33 is not divisible"),
        ({"model": "base"}, "model: expected a mapping"),
    ],
)
def test_bad_values_fail_with_the_field_name(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        SphereConfig.from_dict(data)
    assert message in str(err.value)


def test_ints_are_accepted_for_floats() -> None:
    weights = from_dict(LossWeights, {"recon_dist": 50, "con_dist": 25})
    assert weights.recon_dist == 50.0 and isinstance(weights.recon_dist, float)
