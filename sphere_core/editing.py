"""Editing with a trained Sphere Encoder (method §6): reconstruction, latent interpolation,
crossover of two images and class manipulation.

Images go in as (B, C, H, W) in [-1, 1] (the model's space) and come out in [0, 1], like `generate`.
Crossover and class manipulation run the official `G.edit` loop from the image: T = `sampling.steps`
encode -> re-noise -> decode steps, the first one already noisy,
    x_0 = the input image;  x_k = D(f(f(E(x_{k-1})) + r_k * noise_scale * tan(alpha_max) * e_k)),
with r_k = 1 ("fixed") or 1 - k/(T+1) ("decay": official edit() counts the input as an extra step).
Deliberate differences from the official edit.py: noise_scale (its --noise_strength_scaler) and CFG
are honoured, where edit.py never passes them to G.edit; and T = 1 is one noisy step from the image,
where G.edit with forward_steps == 1 returns its 1-step sample from random noise before the image is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import torch

from sphere_core.config import SamplingConfig
from sphere_core.model import SphereEncoder
from sphere_core.sampling import Condition, Guided, generate_from_noise, refine, to_unit_range
from sphere_core.spherify import spherify

StitchMode = Literal["vertical", "horizontal", "tri_backward", "tri_forward"]


@torch.no_grad()
def reconstruct(model: SphereEncoder, x: torch.Tensor) -> torch.Tensor:
    """D(f(E(x))) with the null class and no noise (how rFID is measured)."""
    return to_unit_range(model(x))


@torch.no_grad()
def refine_image(
    model: SphereEncoder,
    x: torch.Tensor,
    cond: Condition,
    *,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """T = sampling.steps noisy encode -> decode steps from the image x itself (official G.edit with
    x_enc_image). x: (B, C, H, W) in [-1, 1] -> [0, 1]."""
    guided = Guided.build(model, cond, x.shape[0], sampling)
    # `refine` runs the T-1 steps after a 1-step sample; the image takes that sample's place, so T + 1
    # here gives T steps with the official edit() schedule r_k = 1 - k/(T+1).
    with_image = dataclasses.replace(sampling, steps=sampling.steps + 1)
    x = refine(guided, x, sampling=with_image, generator=generator)
    return to_unit_range(x)


# --- interpolation --------------------------------------------------------------------------------


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """a, b: (...); t: (K,) -> (K, ...)."""
    return torch.lerp(a, b, t.view(-1, *([1] * a.ndim)).to(a.dtype))


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Great-circle path between f(a) and f(b) on the sphere of radius sqrt(L), with one global angle
    over all N*d entries (the official lerp.py normalises per token instead).
    a, b: (N, d); t: (K,) -> (K, N, d)."""
    v_a, v_b = spherify(torch.stack([a, b])).unbind(0)
    cos = torch.dot(v_a.flatten(), v_b.flatten()) / v_a.flatten().square().sum()  # equal norms
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega < 1e-4:  # (anti-)parallel to float precision: the chord is the arc
        return lerp(v_a, v_b, t)
    tt = t.view(-1, *([1] * a.ndim)).to(a.dtype)
    return (torch.sin((1 - tt) * omega) * v_a + torch.sin(tt * omega) * v_b) / torch.sin(omega)


def blerp(corners: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Bilinear grid over 4 corners (top-left, top-right, bottom-left, bottom-right), each (...)
    -> (rows * cols, ...) in row-major order."""
    s = torch.linspace(0, 1, cols, device=corners.device)
    u = torch.linspace(0, 1, rows, device=corners.device)
    top, bottom = lerp(corners[0], corners[1], s), lerp(corners[2], corners[3], s)  # (cols, ...)
    grid = torch.lerp(top[None], bottom[None], u.view(-1, *([1] * top.ndim)).to(top.dtype))
    return grid.flatten(0, 1)  # (rows * cols, ...)


def _interpolated_condition(
    model: SphereEncoder, labels: torch.Tensor | None, path: Callable[[torch.Tensor], torch.Tensor]
) -> Condition:
    """Class embeddings of the corner labels carried along `path` (linearly, as the official lerp.py);
    without labels a conditional model uses the null class."""
    corners = Condition.from_labels(model, labels)
    if corners.enc is None or corners.dec is None:
        return corners
    return Condition(path(corners.enc), path(corners.dec))


@torch.no_grad()
def interpolate(
    model: SphereEncoder,
    noise_a: torch.Tensor,
    noise_b: torch.Tensor,
    *,
    num: int,
    mode: Literal["lerp", "slerp"] = "slerp",
    labels: torch.Tensor | None = None,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """`num` samples along a path between two initial noises (N, d), and between the class
    embeddings of labels (2,) when given -> (num, C, H, W) in [0, 1]."""
    t = torch.linspace(0, 1, num, device=noise_a.device)
    path = (slerp if mode == "slerp" else lerp)(noise_a, noise_b, t)  # (num, N, d)
    cond = _interpolated_condition(model, labels, lambda c: lerp(c[0], c[1], t.to(c.device)))
    return generate_from_noise(model, path, cond, sampling=sampling, generator=generator)


@torch.no_grad()
def interpolate_grid(
    model: SphereEncoder,
    corners: torch.Tensor,
    *,
    rows: int,
    cols: int,
    labels: torch.Tensor | None = None,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Bilinear grid between 4 corner noises (4, N, d) and, when given, the embeddings of 4 corner
    labels -> (rows * cols, C, H, W) in [0, 1], row-major."""
    cond = _interpolated_condition(model, labels, lambda c: blerp(c, rows, cols))
    noise = blerp(corners, rows, cols)  # (rows * cols, N, d)
    return generate_from_noise(model, noise, cond, sampling=sampling, generator=generator)


# --- crossover and class manipulation ----------------------------------------------------------------


def stitch_mask(
    height: int, width: int, mode: StitchMode, device: torch.device | None = None
) -> torch.Tensor:
    """(H, W) bool, True where the first image is kept:
    vertical = top half, horizontal = left half, tri_backward = upper-right triangle (diagonal
    included, a "\\" seam), tri_forward = the same mirrored left-right (a "/" seam)."""
    i = torch.arange(height, device=device)[:, None]
    j = torch.arange(width, device=device)[None, :]
    if mode == "vertical":
        return (i < height // 2).expand(height, width)
    if mode == "horizontal":
        return (j < width // 2).expand(height, width)
    if mode == "tri_backward":
        return j * height >= i * width
    if mode == "tri_forward":
        return (width - 1 - j) * height >= i * width
    raise ValueError(f"unknown stitch mode {mode!r} (vertical, horizontal, tri_backward, tri_forward)")


def stitch(a: torch.Tensor, b: torch.Tensor, mode: StitchMode, *, swap: bool = False) -> torch.Tensor:
    """a, b: (B, C, H, W) -> a where the mask holds, b elsewhere (the other way round with swap)."""
    if swap:
        a, b = b, a
    return torch.where(stitch_mask(a.shape[-2], a.shape[-1], mode, a.device), a, b)


@torch.no_grad()
def crossover(
    model: SphereEncoder,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    mode: StitchMode,
    swap: bool = False,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Stitches a and b, then lets the model harmonise the seams with the null class (`refine_image`)."""
    x = stitch(a, b, mode, swap=swap)
    null = Condition.from_labels(model, model.null_labels(x.shape[0], x.device))
    return refine_image(model, x, null, sampling=sampling, generator=generator)


@torch.no_grad()
def manipulate_class(
    model: SphereEncoder,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Re-renders x as the target classes (B,) by `refine_image` conditioned on them. One step keeps the
    object and adopts the class's texture; more steps move further (method §6)."""
    if not model.cfg.conditional:
        raise ValueError("class manipulation needs a class-conditional model (num_classes > 0)")
    cond = Condition.from_labels(model, labels.to(x.device))
    return refine_image(model, x, cond, sampling=sampling, generator=generator)
