"""Few-step sampling (Algorithm 1): determinism, the 1-step identity, CFG, schedules and shared noise."""

from __future__ import annotations

import math

import pytest
import torch

from sphere_core.config import ConfigError, NoiseConfig, SamplingConfig
from sphere_core.model import SphereEncoder
from sphere_core.sampling import generate, guidance_weights, network_passes
from sphere_core.spherify import spherify
from tests.sphere_core.tiny import tiny_model

ALPHA = 80.0
TRAINED = NoiseConfig(alpha_max_deg=ALPHA)  # the samplers take the angle the model was trained with
LABELS = torch.tensor([0, 3, 4])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sample(
    model: SphereEncoder, seed: int = 0, labels: torch.Tensor | int = LABELS, **kw: object
) -> torch.Tensor:
    sampling = SamplingConfig(**kw)  # type: ignore[arg-type]
    return generate(model, labels, sampling=sampling.resolved(TRAINED), generator=gen(seed))


@pytest.fixture(scope="module")
def model() -> SphereEncoder:
    return tiny_model()


def test_one_step_is_the_decoded_spherified_noise(model: SphereEncoder) -> None:
    e = torch.randn(3, 16, 16, generator=gen(5))
    out = generate(
        model, LABELS, sampling=SamplingConfig(steps=1).resolved(TRAINED), generator=gen(0), noise=e
    )
    with torch.no_grad():
        expected = (model.decode(spherify(e), LABELS) * 0.5 + 0.5).clamp(0, 1)
    assert out.shape == (3, 3, 16, 16)
    assert torch.equal(out, expected)


def test_matches_algorithm_1_written_out(model: SphereEncoder) -> None:
    """T=3, fixed r=1, shared noise drawn at the FIRST refinement step (not the initial e)."""
    out = sample(model, steps=3, noise_scale=0.5)
    g = gen(0)
    sigma = 0.5 * math.tan(math.radians(ALPHA))
    with torch.no_grad():
        e = torch.randn(3, 16, 16, generator=g)
        x = model.decode(spherify(e), LABELS)
        e_shared = torch.randn(3, 16, 16, generator=g)
        for _ in range(2):
            v = spherify(spherify(model.encode(x, LABELS)) + sigma * e_shared)
            x = model.decode(v, LABELS)
    assert torch.allclose(out, (x * 0.5 + 0.5).clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize("position", ["enc", "dec", "combo"])
def test_cfg_one_equals_no_guidance(model: SphereEncoder, position: str) -> None:
    assert guidance_weights(model, SamplingConfig(cfg=1.0, cfg_position=position)) == (1.0, 1.0)  # type: ignore[arg-type]
    unguided = sample(model, steps=3)
    assert torch.equal(sample(model, steps=3, cfg=1.0, cfg_position=position), unguided)
    assert not torch.allclose(sample(model, steps=3, cfg=2.0, cfg_position=position), unguided)


def test_dec_cfg_is_a_clamped_lerp_from_the_null_class(model: SphereEncoder) -> None:
    e = torch.randn(3, 16, 16, generator=gen(1))
    sampling = SamplingConfig(steps=1, cfg=3.0, cfg_position="dec")
    out = generate(model, LABELS, sampling=sampling.resolved(TRAINED), generator=gen(0), noise=e)
    with torch.no_grad():
        v = spherify(e)
        cond, uncond = model.decode(v, LABELS), model.decode(v, model.null_labels(3, "cpu"))
    expected = torch.lerp(uncond, cond, 3.0).clamp(-1, 1) * 0.5 + 0.5
    assert torch.allclose(out, expected, atol=1e-6)


def test_enc_cfg_has_no_effect_on_one_step_and_combo_splits_the_scale(model: SphereEncoder) -> None:
    assert torch.equal(sample(model, steps=1, cfg=2.0, cfg_position="enc"), sample(model, steps=1))
    assert guidance_weights(model, SamplingConfig(cfg=4.0, cfg_position="combo")) == (2.0, 2.0)
    assert guidance_weights(model, SamplingConfig(cfg=4.0, cfg_position="enc")) == (4.0, 1.0)


def test_unconditional_model_ignores_cfg_and_labels() -> None:
    uncond = tiny_model(num_classes=0)
    assert guidance_weights(uncond, SamplingConfig(cfg=2.0)) == (1.0, 1.0)
    plain = sample(uncond, labels=3, steps=2)
    assert torch.equal(sample(uncond, labels=3, steps=2, cfg=2.0), plain)
    assert plain.shape == (3, 3, 16, 16)


def test_seeds(model: SphereEncoder) -> None:
    assert torch.equal(sample(model, seed=7, steps=3), sample(model, seed=7, steps=3))
    assert not torch.allclose(sample(model, seed=7, steps=3), sample(model, seed=8, steps=3))
    n_a, n_b = sample(model, seed=1, labels=6, steps=2), sample(model, seed=1, labels=6, steps=2)
    assert torch.equal(n_a, n_b) and n_a.shape == (6, 3, 16, 16)
    assert n_a.min() >= 0.0 and n_a.max() <= 1.0


def test_decay_and_fixed_schedules_differ(model: SphereEncoder) -> None:
    assert not torch.allclose(
        sample(model, steps=3, schedule="decay"), sample(model, steps=3, schedule="fixed")
    )


def test_shared_and_independent_noise(model: SphereEncoder) -> None:
    # T = 2 has one refinement draw either way; from T = 3 the second draw differs.
    assert torch.equal(sample(model, steps=2, shared_noise=True), sample(model, steps=2, shared_noise=False))
    assert not torch.allclose(
        sample(model, steps=3, shared_noise=True), sample(model, steps=3, shared_noise=False)
    )


def test_noise_scale_and_angle_override_change_the_refinement(model: SphereEncoder) -> None:
    base = sample(model, steps=2)
    assert not torch.allclose(sample(model, steps=2, noise_scale=0.25), base)
    assert not torch.allclose(sample(model, steps=2, alpha_max_deg=60.0), base)
    assert torch.equal(sample(model, steps=2, alpha_max_deg=ALPHA), base)


def test_the_angle_travels_in_the_sampling_config_resolved_from_the_model() -> None:
    assert SamplingConfig(steps=4).resolved(TRAINED).alpha_max_deg == ALPHA
    assert SamplingConfig(alpha_max_deg=60.0).resolved(TRAINED).alpha_max_deg == 60.0  # an override stays
    assert SamplingConfig().resolved(TRAINED).sigma_max == pytest.approx(TRAINED.sigma_max)
    with pytest.raises(
        ConfigError, match=r"sampling\.alpha_max_deg: unresolved; sample with sampling\.resolved"
    ):
        generate(tiny_model(), LABELS, sampling=SamplingConfig(steps=2), generator=gen(0))
    with pytest.raises(ConfigError, match=r"sampling\.alpha_max_deg: 95\.0 must be in \(0, 90\), or null"):
        SamplingConfig(alpha_max_deg=95.0)


def test_network_passes() -> None:
    assert [network_passes(t) for t in (1, 2, 4, 8)] == [1, 3, 7, 15]  # 1 + 2(T-1)
    assert network_passes(4, guide_enc=True, guide_dec=True) == 14  # combo CFG doubles every pass
    assert network_passes(4, guide_dec=True) == 11 and network_passes(4, guide_enc=True) == 10


GOLDEN = [0.517048, 0.030267, 0.506185, 0.500674]  # mean, std, two pixels (CPU float32)


def test_golden_numbers() -> None:
    """Regression pin: a fixed tiny model, generator and config (4 steps, combo CFG 1.5)."""
    out = sample(tiny_model(seed=3), seed=11, steps=4, cfg=1.5)
    assert out.shape == (3, 3, 16, 16)
    got = [out.mean().item(), out.std().item(), out[0, 0, 0, 0].item(), out[2, 1, 7, 9].item()]
    assert got == pytest.approx(GOLDEN, abs=1e-4)
