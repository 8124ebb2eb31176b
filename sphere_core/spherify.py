"""The spherify projection f and the training-time noise on the sphere (method §1.2-1.3).

Symbols (paper -> code):
    z            raw encoder output, (B, N, d)              -> z
    f(z)         global RMS normalisation, ||f(z)|| = sqrt(L) -> spherify(z)
    v = f(E(x))  clean spherical latent                     -> v
    sigma_max    tan(alpha_max), the max noise-to-signal      -> NoiseConfig.sigma_max
    r            stratified jitter radius, sigma = r*sigma_max -> r_large
    v_NOISY      f(v + sigma * e), the large-noise latent     -> v_large
    v_noisy      f(v + r_s * sigma_max * e), same e           -> v_small
In high dimension e is nearly orthogonal to v and ||e|| ~ ||v||, so the angle between v and
v + sigma*e is ~ arctan(sigma).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sphere_core.config import NoiseConfig


def spherify(z: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """f(z) = z / RMS(z) over every non-batch entry (no mean subtraction): radius sqrt(L)."""
    dims = tuple(range(1, z.ndim))
    return z * torch.rsqrt(z.float().square().mean(dim=dims, keepdim=True) + eps).to(z.dtype)


def randn(
    shape: tuple[int, ...], *, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal noise drawn from `generator` (on its own device), then moved to `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def rand(shape: tuple[int, ...], *, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def stratified_unit_radii(
    batch: int, *, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Radii r in [0, 1], one stratum per sample: always one r=0 and one r=1 (official
    `stratified_unit_radii`). The other B-2 get (i + max(u_i, 1e-3)) / (B-2); order shuffled."""
    if batch == 1:
        return rand((1,), generator=generator, device=device)
    inner = batch - 2
    u = rand((inner,), generator=generator, device=device).clamp_min(1e-3)
    strata = (torch.arange(inner, device=device) + u) / max(inner, 1)
    r = torch.cat([torch.zeros(1, device=device), torch.ones(1, device=device), strata])
    perm = torch.randperm(batch, generator=generator, device=generator.device if generator else device)
    return r[perm.to(device)]


def mix_hard_cases(r: torch.Tensor, noise: NoiseConfig, *, generator: torch.Generator | None) -> torch.Tensor:
    """With probability `hard_case_prob`, move r into [1, tan(a_mix)/tan(a_max)], i.e. angles in
    [alpha_max, alpha_max + extra] (capped at 89 degrees)."""
    ratio = math.tan(math.radians(noise.hard_case_max_deg)) / noise.sigma_max
    s = rand(r.shape, generator=generator, device=r.device)
    mixed = s <= noise.hard_case_prob
    if noise.hard_case_mode == "official":
        # Official quirk: the same draw s picks both whether and where, so r <= 1 + p*(ratio-1).
        r_hard = 1.0 + s * (ratio - 1.0)
    else:
        # Paper intent: a fresh uniform position over the whole band.
        r_hard = 1.0 + rand(r.shape, generator=generator, device=r.device) * (ratio - 1.0)
    return torch.where(mixed, r_hard, r)


def reproject(v: torch.Tensor, e: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """f(v + sigma * e) per sample; samples with sigma == 0 keep v exactly.
    v, e: (B, ...); sigma: (B,)."""
    s = sigma.view(-1, *([1] * (v.ndim - 1))).to(v.dtype)
    return torch.where(s == 0, v, spherify(v + s * e))


@dataclass(frozen=True)
class TrainingNoise:
    v_large: torch.Tensor  # v_NOISY = f(v + r*sigma_max*e), (B, N, d)
    v_small: torch.Tensor  # v_noisy = f(v + r_s*sigma_max*e), the same e
    r_large: torch.Tensor  # (B,)
    r_small: torch.Tensor  # (B,)


def add_training_noise(
    v: torch.Tensor, noise: NoiseConfig, *, generator: torch.Generator | None
) -> TrainingNoise:
    """Both noisy latents of one training step (method §1.3). v: clean spherical latent (B, N, d)."""
    batch, device = v.shape[0], v.device
    e = randn(tuple(v.shape), generator=generator, device=device, dtype=v.dtype)
    r = stratified_unit_radii(batch, generator=generator, device=device)
    r_large = mix_hard_cases(r, noise, generator=generator) if noise.mix_hard_cases else r
    # The small level uses the un-mixed r: hard cases apply only to v_NOISY (official train.py).
    u = stratified_unit_radii(batch, generator=generator, device=device)
    r_small = noise.small_noise_fraction * r * u
    return TrainingNoise(
        v_large=reproject(v, e, r_large * noise.sigma_max),
        v_small=reproject(v, e, r_small * noise.sigma_max),
        r_large=r_large,
        r_small=r_small,
    )


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample angle in degrees between flattened a and b."""
    cos = torch.nn.functional.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=1)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
