"""A second feature space that no loss and no network touches, and a memorisation score in it.

The classifier's features (fd_clf) come from a network trained on the generator's own training images, and
a perceptual or adversarial term can learn to please a network. Pixels, projected on the top principal
components of the training images, are nobody's training target:

    fd_pix        Fréchet distance between the held-out images and the samples in that projection
    nn_ratio_pix  median distance from each sample to its nearest training image, over the same median for
                  the held-out images (1: as far from the training set as unseen real images are; well
                  below 1: samples sit on training images)
    copies_pix    the share of samples closer to a training image than all but COPY_QUANTILE of the
                  held-out images are (real unseen images: COPY_QUANTILE by definition; a generator that
                  copies its training set: far above it)

Distances are Euclidean in [0, 1] pixels over the whole image. Only images of at most
metric_names.PIXEL_SPACE_MAX_VALUES values are scored this way (a 256 px RGB image's PCA is the wrong tool,
and Inception is there for it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from orchestrator.evaluation.metrics import GaussianStats, frechet_distance

COMPONENTS = 64  # principal components kept
COPY_QUANTILE = 0.01
HELD_OUT_FOR_DISTANCES = 2000  # held-out images whose distances set the median and the quantile (seeded)
_CHUNK = 512  # rows per distance block: 512 x 60,000 floats is 120 MB


@dataclass(frozen=True, eq=False)
class PixelSpace:
    mean: torch.Tensor  # (D,) float64, the training images' mean
    components: torch.Tensor  # (D, COMPONENTS) float64, their top principal directions
    train: torch.Tensor  # (M, D) float32 in [0, 1]: the nearest-neighbour search set
    reference: GaussianStats  # the held-out images, projected
    held_out_nn: torch.Tensor  # (R,) each held-out image's distance to its nearest training image
    sha256: str  # of the training and held-out pixels: part of every fingerprint

    @classmethod
    def fit(cls, train: torch.Tensor, held_out: torch.Tensor) -> PixelSpace:
        """train, held_out: (N, C, H, W) uint8 images at the model's size."""
        x = _flat(train)
        mean = x.double().mean(0)
        # The covariance's top eigenvectors (eigh sorts them ascending): a D x D problem, not an N x D SVD.
        _, vectors = torch.linalg.eigh(torch.cov(x.double().T))
        components = vectors[:, -COMPONENTS:].flip(1).contiguous()
        ref = _flat(held_out)
        pick = torch.randperm(len(ref), generator=torch.Generator().manual_seed(0))[:HELD_OUT_FOR_DISTANCES]
        digest = hashlib.sha256(train.numpy().tobytes() + held_out.numpy().tobytes()).hexdigest()
        return cls(
            mean=mean,
            components=components,
            train=x,
            reference=GaussianStats.of((ref.double() - mean) @ components),
            held_out_nn=nearest_distances(ref[pick], x),
            sha256=digest,
        )

    def describe(self) -> dict[str, object]:
        return {
            "components": COMPONENTS,
            "copy_quantile": COPY_QUANTILE,
            "held_out_for_distances": HELD_OUT_FOR_DISTANCES,
            "pixels_sha256": self.sha256,
        }

    def fd(self, images01: torch.Tensor) -> float:
        projected = (_flat(images01).double() - self.mean) @ self.components
        return frechet_distance(self.reference, GaussianStats.of(projected))

    def memorisation(self, images01: torch.Tensor) -> tuple[float, float]:
        """(nn_ratio_pix, copies_pix) of images in [0, 1]."""
        distances = nearest_distances(_flat(images01), self.train)
        ratio = float(distances.median() / self.held_out_nn.median())
        threshold = torch.quantile(self.held_out_nn, COPY_QUANTILE)
        return ratio, float((distances < threshold).float().mean())


def _flat(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 or [0, 1] floats -> (N, D) float32 in [0, 1]."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return x.flatten(1)


def nearest_distances(queries: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """(Q,) Euclidean distance from each query row to its nearest row of `pool`."""
    pool_sq = pool.square().sum(1)
    out = []
    for block in queries.split(_CHUNK):
        # |q - p|^2 = |q|^2 - 2 q.p + |p|^2, one matmul per block; clamp the round-off below 0.
        squared = block.square().sum(1, keepdim=True) - 2 * block @ pool.T + pool_sq
        out.append(squared.min(dim=1).values.clamp_min(0).sqrt())
    return torch.cat(out)
