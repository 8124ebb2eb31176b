"""Editing: reconstruction, interpolation on the sphere, crossover stitching, class manipulation."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from sphere_core.config import NoiseConfig, SamplingConfig
from sphere_core.editing import (
    blerp,
    crossover,
    interpolate,
    interpolate_grid,
    lerp,
    manipulate_class,
    reconstruct,
    slerp,
    stitch,
    stitch_mask,
)
from sphere_core.model import SphereEncoder
from sphere_core.sampling import generate
from sphere_core.spherify import angle_deg, spherify
from tests.sphere_core.tiny import images, tiny_model

ALPHA = 80.0
TRAINED = NoiseConfig(alpha_max_deg=ALPHA)  # the samplers take the angle the model was trained with


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def model() -> SphereEncoder:
    return tiny_model()


def test_reconstruct_is_the_noise_free_null_class_round_trip(model: SphereEncoder) -> None:
    x = images(2, model.cfg)
    out = reconstruct(model, x)
    with torch.no_grad():
        null = model.null_labels(2, "cpu")
        expected = model.decode(spherify(model.encode(x, null)), null) * 0.5 + 0.5
    assert out.shape == x.shape and torch.allclose(out, expected.clamp(0, 1))


# --- interpolation --------------------------------------------------------------------------------


def test_slerp_stays_on_the_sphere_with_even_angles() -> None:
    g = gen()
    a, b = spherify(torch.randn(2, 16, 8, generator=g)).unbind(0)
    path = slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    assert torch.allclose(path.flatten(1).norm(dim=1), torch.full((5,), math.sqrt(128)), rtol=1e-5)
    steps = angle_deg(path[:-1], path[1:])  # equal arcs between consecutive points
    assert torch.allclose(steps, steps.mean().expand(4), atol=1e-2)
    chord = lerp(a, b, torch.tensor([0.5]))
    assert chord.flatten(1).norm() < math.sqrt(128) - 0.5  # the chord dips inside the sphere


def test_blerp_corners_and_centre() -> None:
    corners = torch.randn(4, 3, 2, generator=gen())
    grid = blerp(corners, rows=3, cols=5)
    assert grid.shape == (15, 3, 2)
    assert torch.equal(grid[0], corners[0]) and torch.allclose(grid[4], corners[1])
    assert torch.allclose(grid[10], corners[2]) and torch.allclose(grid[14], corners[3])
    assert torch.allclose(grid[7], corners.mean(0), atol=1e-6)  # row 1, column 2 = the centre


def test_interpolation_endpoints_are_the_samples_of_their_noise_and_class(model: SphereEncoder) -> None:
    one_step = SamplingConfig(steps=1)
    e_a, e_b = torch.randn(2, 16, 16, generator=gen(1)).unbind(0)
    labels = torch.tensor([1, 4])
    frames = interpolate(
        model, e_a, e_b, num=5, labels=labels, sampling=one_step.resolved(TRAINED), generator=gen()
    )
    assert frames.shape == (5, 3, 16, 16)
    for frame, e, y in ((frames[0], e_a, labels[:1]), (frames[-1], e_b, labels[1:])):
        ref = generate(model, y, sampling=one_step.resolved(TRAINED), generator=gen(), noise=e[None])
        assert torch.allclose(frame, ref[0], atol=1e-5)
    assert not torch.allclose(frames[1], frames[2])
    lerped = interpolate(
        model, e_a, e_b, num=5, mode="lerp", sampling=one_step.resolved(TRAINED), generator=gen()
    )
    assert not torch.allclose(lerped[2], frames[2])


def test_interpolate_grid_shape_corners_and_determinism(model: SphereEncoder) -> None:
    corners = torch.randn(4, 16, 16, generator=gen(2))
    labels = torch.tensor([0, 1, 2, 3])
    sampling = SamplingConfig(steps=2)

    def run() -> torch.Tensor:
        return interpolate_grid(
            model,
            corners,
            rows=3,
            cols=4,
            labels=labels,
            sampling=sampling.resolved(TRAINED),
            generator=gen(3),
        )

    grid = run()
    assert grid.shape == (12, 3, 16, 16) and torch.equal(grid, run())
    one_step = SamplingConfig(steps=1)
    flat = interpolate_grid(
        model, corners, rows=3, cols=4, labels=labels, sampling=one_step.resolved(TRAINED), generator=gen()
    )
    ref = generate(model, labels[3:], sampling=one_step.resolved(TRAINED), generator=gen(), noise=corners[3:])
    assert torch.allclose(flat[11], ref[0], atol=1e-5)


# --- crossover ------------------------------------------------------------------------------------


def test_stitch_masks_cover_half_or_a_triangle() -> None:
    n = 16
    assert stitch_mask(n, n, "vertical").sum() == n * n // 2
    assert stitch_mask(n, n, "vertical")[: n // 2].all()  # top half from the first image
    assert stitch_mask(n, n, "horizontal").sum() == n * n // 2
    assert stitch_mask(n, n, "horizontal")[:, : n // 2].all()  # left half
    backward, forward = stitch_mask(n, n, "tri_backward"), stitch_mask(n, n, "tri_forward")
    assert torch.equal(backward, torch.ones(n, n, dtype=torch.bool).triu())  # diagonal included
    assert torch.equal(forward, backward.flip(1))
    assert backward.sum() == forward.sum() == n * (n + 1) // 2


def test_stitch_and_swap() -> None:
    a, b = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    x = stitch(a, b, "horizontal")
    assert x[..., :4].eq(0).all() and x[..., 4:].eq(1).all()
    assert torch.equal(stitch(a, b, "horizontal", swap=True), 1 - x)


@torch.no_grad()
def edit_by_hand(
    model: SphereEncoder,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    r: Callable[[int], float],
    noise_scale: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """The official G.edit loop from x_enc_image, unguided, with cached noise: T steps, each encode ->
    f(f(z) + r_k * scale * tan(alpha) * e) -> decode, the first already noisy, e drawn at step 1."""
    g, e = gen(seed), None
    sigma = math.tan(math.radians(ALPHA))
    for k in range(1, steps + 1):
        z = model.encode(x, labels)
        e = torch.randn(z.shape, generator=g) if e is None else e
        x = model.decode(spherify(spherify(z) + r(k) * noise_scale * sigma * e), labels)
    return (x * 0.5 + 0.5).clamp(0, 1)


def test_crossover_runs_t_noisy_steps_from_the_stitch(model: SphereEncoder) -> None:
    a, b = images(2, model.cfg, seed=1), images(2, model.cfg, seed=2)
    x, null = stitch(a, b, "tri_forward"), model.null_labels(2, "cpu")

    def run(**kw: object) -> torch.Tensor:
        sampling = SamplingConfig(**kw)  # type: ignore[arg-type]
        return crossover(
            model, a, b, mode="tri_forward", sampling=sampling.resolved(TRAINED), generator=gen()
        )

    one = run(steps=1)
    assert torch.allclose(one, edit_by_hand(model, x, null, steps=1, r=lambda k: 1.0), atol=1e-6)
    assert not torch.allclose(one, reconstruct(model, x), atol=1e-3)  # the first step is noisy
    # "decay": the official edit() counts the input image as a step, so r_k = 1 - k / (T + 1).
    decayed = run(steps=3, schedule="decay", noise_scale=0.25)
    expected = edit_by_hand(model, x, null, steps=3, r=lambda k: 1 - k / 4, noise_scale=0.25)
    assert torch.allclose(decayed, expected, atol=1e-6)
    # Without noise a step is a plain reconstruction.
    assert torch.allclose(run(steps=1, noise_scale=0.0), reconstruct(model, x), atol=1e-5)


def test_crossover_honours_noise_scale_and_is_deterministic(model: SphereEncoder) -> None:
    a, b = images(2, model.cfg, seed=1), images(2, model.cfg, seed=2)

    def run(noise_scale: float, seed: int = 0) -> torch.Tensor:
        sampling = SamplingConfig(steps=3, noise_scale=noise_scale)
        return crossover(
            model, a, b, mode="vertical", sampling=sampling.resolved(TRAINED), generator=gen(seed)
        )

    full = run(1.0)
    assert full.shape == (2, 3, 16, 16) and torch.equal(full, run(1.0))
    assert not torch.allclose(full, run(0.25))
    assert not torch.allclose(full, run(1.0, seed=1))


# --- class manipulation ---------------------------------------------------------------------------


def test_manipulate_class_honours_cfg_noise_scale_and_target(model: SphereEncoder) -> None:
    x = images(2, model.cfg)

    def run(labels: list[int], **kw: object) -> torch.Tensor:
        sampling = SamplingConfig(steps=2, **kw)  # type: ignore[arg-type]
        return manipulate_class(
            model, x, torch.tensor(labels), sampling=sampling.resolved(TRAINED), generator=gen()
        )

    base = run([1, 2])
    assert base.shape == x.shape and torch.equal(base, run([1, 2]))
    assert not torch.allclose(base, run([3, 4]))
    assert not torch.allclose(base, run([1, 2], cfg=2.0))
    assert not torch.allclose(base, run([1, 2], noise_scale=0.25))


def test_manipulate_class_is_the_edit_loop_conditioned_on_the_targets(model: SphereEncoder) -> None:
    x, labels = images(2, model.cfg), torch.tensor([1, 2])
    out = manipulate_class(
        model, x, labels, sampling=SamplingConfig(steps=2).resolved(TRAINED), generator=gen()
    )
    assert torch.allclose(out, edit_by_hand(model, x, labels, steps=2, r=lambda k: 1.0), atol=1e-6)


def test_manipulate_class_needs_a_conditional_model() -> None:
    uncond = tiny_model(num_classes=0)
    with pytest.raises(ValueError, match="class-conditional"):
        manipulate_class(
            uncond, images(1, uncond.cfg), torch.tensor([0]), sampling=SamplingConfig().resolved(TRAINED),
            generator=gen(),
        )  # fmt: skip
