"""Sphere diagnostics: coverage statistics against uniform points, and the training noise angles."""

from __future__ import annotations

import math

import pytest
import torch
from matplotlib.figure import Figure

from orchestrator.evaluation.diagnostics import (
    Coverage,
    conditioning_strength,
    cosine_histogram_figure,
    noise_angle_figure,
    projection_figure,
    random_projection,
    training_noise_angles,
    uniform_directions,
)
from sphere_core.config import NoiseConfig
from sphere_core.nn.layers import AdaLN
from tests.sphere_core.tiny import tiny_model

N, TOKENS, CHANNELS = 256, 64, 8  # the nano MNIST latent: L = 512


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_uniform_points_cover_like_the_uniform_reference() -> None:
    v = torch.randn(N, TOKENS, CHANNELS, generator=gen(1)) * 3.0  # scale is irrelevant: directions only
    metrics = Coverage.of(v, generator=gen(0)).metrics()
    assert metrics["latent_mean_resultant_length"] == pytest.approx(1 / math.sqrt(N), rel=0.3)
    assert metrics["latent_mean_resultant_length"] == pytest.approx(
        metrics["uniform_mean_resultant_length"], rel=0.3
    )
    assert abs(metrics["latent_cos_mean"]) < 0.005
    assert metrics["latent_cos_std"] == pytest.approx(1 / math.sqrt(TOKENS * CHANNELS), rel=0.05)
    assert metrics["latent_cos_hist_tv"] < 0.05  # the two cosine histograms agree up to sampling noise


def test_a_collapsed_set_has_resultant_one_and_a_disjoint_cosine_histogram() -> None:
    centre = torch.randn(1, TOKENS, CHANNELS, generator=gen(1))
    v = centre + 0.05 * torch.randn(N, TOKENS, CHANNELS, generator=gen(2))
    metrics = Coverage.of(v, generator=gen(0)).metrics()
    assert metrics["latent_mean_resultant_length"] > 0.99
    assert metrics["latent_cos_mean"] > 0.99
    assert metrics["latent_cos_hist_tv"] == pytest.approx(1.0)
    assert metrics["uniform_mean_resultant_length"] < 0.1  # the reference does not depend on the latents


def test_uniform_directions_are_unit_vectors() -> None:
    u = uniform_directions(10, 512, generator=gen(0))
    assert torch.allclose(u.norm(dim=1), torch.ones(10, dtype=torch.float64))


def test_random_projection_is_orthonormal_and_fixed_by_its_seed() -> None:
    q = random_projection(512, seed=4)
    assert q.shape == (512, 3)
    assert torch.allclose(q.T @ q, torch.eye(3, dtype=torch.float64), atol=1e-10)
    assert torch.equal(q, random_projection(512, seed=4)) and not torch.equal(
        q, random_projection(512, seed=5)
    )


def test_noise_angles_median_80_deg_at_alpha_max_85() -> None:
    """Spec 1.3: r stratified uniform in magnitude, so the median angle is arctan(0.5 tan 85) ~ 80 deg."""
    angles = training_noise_angles(
        NoiseConfig(alpha_max_deg=85.0), (TOKENS, CHANNELS), batch=32, batches=32, seed=0
    )
    metrics = angles.metrics()
    assert metrics["noise_angle_median_deg"] == pytest.approx(80.0, abs=1.5)
    assert metrics["noise_angle_small_median_deg"] < metrics["noise_angle_median_deg"]
    assert 0.0 < metrics["noise_angle_frac_beyond_alpha_max"] < 0.3  # hard cases and r ~ 1 only


def test_hard_cases_push_angles_beyond_alpha_max() -> None:
    """At L = 512 the angle of v + sigma*e scatters around arctan(sigma) (e . v is not 0), so some
    angles pass alpha_max even without hard cases; the hard cases add more."""
    shape = (TOKENS, CHANNELS)
    plain = training_noise_angles(
        NoiseConfig(alpha_max_deg=85.0, mix_hard_cases=False), shape, batch=32, batches=32
    )
    mixed = training_noise_angles(NoiseConfig(alpha_max_deg=85.0), shape, batch=32, batches=32)
    beyond = "noise_angle_frac_beyond_alpha_max"
    assert plain.metrics()[beyond] < mixed.metrics()[beyond]
    assert float(plain.large.min()) == 0.0  # stratified radii always include r = 0: v itself


def test_figures_render() -> None:
    v = torch.randn(64, TOKENS, CHANNELS, generator=gen(1))
    angles = training_noise_angles(NoiseConfig(), (TOKENS, CHANNELS), batch=16, batches=2)
    figures = [
        cosine_histogram_figure(Coverage.of(v, generator=gen(0))),
        projection_figure(v, torch.arange(64) % 10),
        projection_figure(v, None),
        noise_angle_figure(angles),
    ]
    for figure in figures:
        assert isinstance(figure, Figure) and figure.axes
        figure.canvas.draw()  # renders without a display (no pyplot state)


def test_conditioning_strength_separates_label_from_latent() -> None:
    model = tiny_model(perturb=0.2).eval()
    for module in model.decoder.modules():  # a decoder deaf to the label: every AdaLN projection zero
        if isinstance(module, AdaLN):
            torch.nn.init.zeros_(module.proj.weight)
            torch.nn.init.zeros_(module.proj.bias)
    deaf = conditioning_strength(model, points=8, generator=gen(0))
    assert deaf["label_effect"] < 1e-6 < deaf["noise_effect"]
    listening = conditioning_strength(tiny_model(perturb=0.2).eval(), points=8, generator=gen(0))
    assert listening["label_effect"] > 1e-3
    assert conditioning_strength(tiny_model(num_classes=0).eval(), points=8, generator=gen(0)) == {}
