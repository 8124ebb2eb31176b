"""Distribution metrics on feature vectors: Fréchet distance, KID, Inception Score, k-NN precision/recall.

Everything here takes features (rows = samples), never images, so one feature pass feeds every metric.
KID and IS are torchmetrics' own estimators (fed precomputed features through an identity "network",
their RNG pinned by a seed); the Fréchet distance is computed in float64 from (mean, covariance) so that
cached reference statistics can be reused; precision/recall is the k-NN estimator of Kynkäänniemi et al.
(2019), which torchmetrics does not provide for images.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance


@dataclass(frozen=True)
class GaussianStats:
    mu: torch.Tensor  # (d,) float64
    sigma: torch.Tensor  # (d, d) float64, unbiased (N - 1) covariance as in pytorch-fid

    @classmethod
    def of(cls, features: torch.Tensor) -> GaussianStats:
        f = features.to(torch.float64)  # (N, d)
        return cls(mu=f.mean(0), sigma=torch.cov(f.T))


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), all in float64.

    tr (S_a S_b)^(1/2) = tr (S_a^(1/2) S_b S_a^(1/2))^(1/2): the inner matrix is symmetric PSD, so two
    `eigh` calls replace scipy's sqrtm (same value to ~1e-13 when N > d; float32 is off by ~1e-3 when N < d).
    """
    w, v = torch.linalg.eigh(a.sigma.to(torch.float64))
    sqrt_a = (v * w.clamp_min(0).sqrt()) @ v.T  # S_a^(1/2); tiny negative eigenvalues are round-off
    m = sqrt_a @ b.sigma.to(torch.float64) @ sqrt_a
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    mean_term = (a.mu - b.mu).to(torch.float64).square().sum()
    return float(mean_term + a.sigma.trace() + b.sigma.trace() - 2 * tr_sqrt)


class _Precomputed(nn.Module):
    """Identity "feature network": lets torchmetrics' estimators run on features we already have."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def kid(
    real: torch.Tensor, fake: torch.Tensor, *, subsets: int, subset_size: int, seed: int
) -> tuple[float, float]:
    """Unbiased MMD^2 with the cubic kernel (x.y/d + 1)^3 over random subsets: (mean, std).

    Callers scale both feature sets by one scalar (the reference RMS) so the value is unit-free.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(
            feature=_Precomputed(real.shape[1]),
            subsets=subsets,
            subset_size=subset_size,
            sync_on_compute=False,  # local features: never gather (only rank 0 evaluates in training)
        )
    metric.update(real.to(torch.float64), real=True)
    metric.update(fake.to(torch.float64), real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws the subsets from the global RNG
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: torch.Tensor, *, splits: int, seed: int) -> tuple[float, float]:
    """exp E_x KL(p(y|x) || p(y)) over `splits` chunks of the shuffled logits: (mean, std)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        # normalize=False: with True torchmetrics would cast our float logits to uint8
        metric = InceptionScore(
            feature=_Precomputed(logits.shape[1]), splits=splits, normalize=False, sync_on_compute=False
        )
    metric.update(logits.to(torch.float64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _kth_neighbour_radius(features: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """(N,) distance from each row to its k-th nearest other row (the row itself is at distance 0)."""
    radii = []
    for rows in features.split(chunk):
        d = torch.cdist(rows, features)  # (chunk, N)
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, -1])
    return torch.cat(radii)


def _coverage(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """Fraction of queries inside at least one support ball (centre support[j], radius radii[j])."""
    inside = [(torch.cdist(rows, support) <= radii).any(dim=1) for rows in queries.split(chunk)]
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, *, k: int = 3, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019, k-NN manifolds).

    precision: share of fake samples inside the real manifold (fidelity);
    recall: share of real samples inside the fake manifold (diversity; drops under mode dropping).
    """
    real, fake = real.to(torch.float64), fake.to(torch.float64)  # exact distances, no mm round-off ties
    precision = _coverage(fake, real, _kth_neighbour_radius(real, k, chunk), chunk)
    recall = _coverage(real, fake, _kth_neighbour_radius(fake, k, chunk), chunk)
    return precision, recall


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images the classifier assigns to the class they were drawn (or encoded) for."""
    return float((logits.argmax(dim=1) == labels.to(logits.device)).float().mean())


def class_spread(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean distance of an image's features to its class's mean, averaged over the classes present: how
    much images of one class vary. Samples score it relative to the real held-out images (spread_clf
    = 1: as varied as real digits of the same class; near 0: one template per class)."""
    features, labels = features.double(), labels.to(features.device)
    per_class = [
        (features[labels == c] - features[labels == c].mean(0)).norm(dim=1).mean() for c in labels.unique()
    ]
    return float(torch.stack(per_class).mean())
