"""Sphere diagnostics (issue 5 item 5): how evenly the latents cover the sphere, and which noise angles
training actually uses. Pure: torch, numpy and matplotlib only; figures are `matplotlib.figure.Figure`
objects (no pyplot state), for the caller to log.

Coverage compares n unit latent directions u_i = v_i / ||v_i|| (v = f(E(x)), L = N*d) with n points drawn
uniformly on the same sphere S^(L-1):
    mean resultant length  ||mean_i u_i||       ~ 1/sqrt(n) for uniform points, 1 for a collapsed set
    pairwise cosines       u_i . u_j, i < j     ~ mean 0, std 1/sqrt(L) for uniform points
    cos_hist_tv            total variation between the two cosine histograms: 0 = as uniform as chance

Conditioning strength: one-step decodes of the same random sphere points under every class label. How far
the images move when only the label changes, against how far they move when only the point changes,
says whether the decoder draws the class from the label (what generation needs) or from the latent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from sphere_core.config import NoiseConfig
from sphere_core.model import SphereEncoder
from sphere_core.spherify import add_training_noise, angle_deg, spherify

COS_BINS = 200  # over [-1, 1]: 0.01 wide, ~4 bins per uniform std at L = 512


def unit_directions(v: torch.Tensor) -> torch.Tensor:
    """v: (n, ...) latents -> (n, L) float64 unit vectors."""
    flat = v.flatten(1).double()
    return flat / flat.norm(dim=1, keepdim=True)


def uniform_directions(n: int, dim: int, *, generator: torch.Generator) -> torch.Tensor:
    """n points uniform on S^(dim-1): normalised standard normals, (n, dim) float64."""
    return unit_directions(torch.randn(n, dim, generator=generator, dtype=torch.float64))


def mean_resultant_length(u: torch.Tensor) -> float:
    return float(u.mean(dim=0).norm())


def pairwise_cosines(u: torch.Tensor) -> torch.Tensor:
    """(n, L) unit vectors -> the n(n-1)/2 cosines of distinct pairs."""
    i, j = torch.triu_indices(u.shape[0], u.shape[0], offset=1)
    return (u @ u.T)[i, j]


def cosine_histogram(cosines: torch.Tensor) -> torch.Tensor:
    """Fractions per bin of [-1, 1] (sums to 1)."""
    counts = torch.histc(cosines.double(), bins=COS_BINS, min=-1.0, max=1.0)
    return counts / counts.sum()


@dataclass(frozen=True)
class Coverage:
    """Latent directions beside the same number of uniform points on the same sphere."""

    resultant: float
    uniform_resultant: float
    cosines: torch.Tensor  # (n(n-1)/2,) float64
    uniform_cosines: torch.Tensor

    @classmethod
    def of(cls, v: torch.Tensor, *, generator: torch.Generator) -> Coverage:
        """v: (n, N, d) spherified latents (or any (n, ...) vectors: only directions count)."""
        u = unit_directions(v)
        uniform = uniform_directions(u.shape[0], u.shape[1], generator=generator)
        return cls(
            resultant=mean_resultant_length(u),
            uniform_resultant=mean_resultant_length(uniform),
            cosines=pairwise_cosines(u),
            uniform_cosines=pairwise_cosines(uniform),
        )

    @property
    def histogram_tv(self) -> float:
        return 0.5 * float(
            (cosine_histogram(self.cosines) - cosine_histogram(self.uniform_cosines)).abs().sum()
        )

    def metrics(self) -> dict[str, float]:
        return {
            "latent_mean_resultant_length": self.resultant,
            "latent_cos_mean": float(self.cosines.mean()),
            "latent_cos_std": float(self.cosines.std()),
            "latent_cos_hist_tv": self.histogram_tv,
            "uniform_mean_resultant_length": self.uniform_resultant,
            "uniform_cos_mean": float(self.uniform_cosines.mean()),
            "uniform_cos_std": float(self.uniform_cosines.std()),
        }


def cosine_histogram_figure(coverage: Coverage, *, title: str = "") -> Figure:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    span = float(max(coverage.cosines.abs().max(), coverage.uniform_cosines.abs().max()))
    bins = np.linspace(-span, span, 81).tolist()
    ax.hist(
        coverage.uniform_cosines.numpy(), bins=bins, density=True, alpha=0.5, label="uniform on the sphere"
    )
    ax.hist(coverage.cosines.numpy(), bins=bins, density=True, alpha=0.5, label="latents")
    ax.set_xlabel("pairwise cosine")
    ax.set_ylabel("density")
    ax.set_title(
        f"{title} resultant {coverage.resultant:.3f} (uniform {coverage.uniform_resultant:.3f}), "
        f"TV {coverage.histogram_tv:.3f}".strip(),
        fontsize=9,
    )
    ax.legend()
    return fig


def random_projection(dim: int, *, seed: int) -> torch.Tensor:
    """A fixed random orthonormal (dim, 3) basis: the same view at every eval of a run."""
    gaussian = torch.randn(dim, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.linalg.qr(gaussian).Q


def projection_figure(
    v: torch.Tensor, labels: torch.Tensor | None, *, seed: int = 0, title: str = ""
) -> Figure:
    """The paper's picture: unit latents projected on a random 3-D subspace, each projection scaled to
    unit length, so latents covering S^(L-1) uniformly cover S^2 uniformly; coloured by class."""
    u = unit_directions(v)
    p = u @ random_projection(u.shape[1], seed=seed)
    p = (p / p.norm(dim=1, keepdim=True)).numpy()
    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    if labels is None:
        ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=6)
    else:
        ax.scatter(p[:, 0], p[:, 1], p[:, 2], c=labels.numpy(), cmap="tab10", s=6, vmin=0, vmax=9)
    ax.set_title(title or "latent directions, random 3-D projection", fontsize=9)
    return fig


# --- training noise -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseAngles:
    """Angles (degrees) between v and its noisy versions, as sphere_core draws them in training."""

    large: torch.Tensor  # v_NOISY: the decoder's large-noise input
    small: torch.Tensor  # v_noisy: the pixel-consistency anchor
    alpha_max_deg: float

    def metrics(self) -> dict[str, float]:
        return {
            "noise_angle_median_deg": float(self.large.median()),
            "noise_angle_mean_deg": float(self.large.mean()),
            "noise_angle_frac_beyond_alpha_max": float(
                (self.large > self.alpha_max_deg + 1e-3).double().mean()
            ),
            "noise_angle_small_median_deg": float(self.small.median()),
        }


def training_noise_angles(
    noise: NoiseConfig, latent_shape: tuple[int, int], *, batch: int, batches: int, seed: int = 0
) -> NoiseAngles:
    """`batches` draws of sphere_core's training noise at the per-rank batch size (the radii are
    stratified per batch), around uniform points on the sphere of shape (N, d)."""
    generator = torch.Generator().manual_seed(seed)
    large, small = [], []
    for _ in range(batches):
        v = spherify(torch.randn(batch, *latent_shape, generator=generator))
        drawn = add_training_noise(v, noise, generator=generator)
        large.append(angle_deg(v, drawn.v_large))
        small.append(angle_deg(v, drawn.v_small))
    return NoiseAngles(torch.cat(large), torch.cat(small), noise.alpha_max_deg)


def noise_angle_figure(angles: NoiseAngles) -> Figure:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    top = math.ceil(max(float(angles.large.max()), angles.alpha_max_deg)) + 1
    bins = np.linspace(0, top, 2 * top + 1).tolist()
    ax.hist(angles.large.numpy(), bins=bins, alpha=0.6, label="large noise (v_NOISY)")
    ax.hist(angles.small.numpy(), bins=bins, alpha=0.6, label="small noise (v_noisy)")
    ax.axvline(
        angles.alpha_max_deg, color="k", linestyle="--", label=f"alpha_max {angles.alpha_max_deg:g} deg"
    )
    median = angles.metrics()["noise_angle_median_deg"]
    ax.set_xlabel("angle between v and its noisy latent (deg)")
    ax.set_ylabel("samples")
    ax.set_title(f"training noise angles: median {median:.1f} deg (large)", fontsize=9)
    ax.legend()
    return fig


@torch.no_grad()
def conditioning_strength(
    model: SphereEncoder, *, points: int, generator: torch.Generator
) -> dict[str, float]:
    """label_effect: pixel std across the K labels for a fixed sphere point; noise_effect: pixel std across
    the points for a fixed label (both averaged over pixels, points and labels; images in [0, 1]). An
    unconditional model has no label effect to measure: {}."""
    classes = model.cfg.num_classes
    if not classes:
        return {}
    device = next(model.parameters()).device
    e = torch.randn(points, *model.latent_shape, generator=generator).to(device)
    v = spherify(e).repeat(classes, 1, 1)  # (K * points, N, d): every point under every label
    labels = torch.arange(classes, device=device).repeat_interleave(points)
    images = (model.decode(v, labels) * 0.5 + 0.5).unflatten(0, (classes, points))  # (K, P, C, H, W)
    return {
        "label_effect": float(images.std(dim=0).mean()),
        "noise_effect": float(images.std(dim=1).mean()),
    }
