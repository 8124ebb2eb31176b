"""Reference statistics of the real held-out split, computed once per (images, extractor) and cached.

The cache is a directory or any fsspec URL (`s3://bucket/eval-cache`), so a team shares one pinned copy:
features computed on other hardware differ in the last bits, and the reference sha256 is part of every
fingerprint. Key = sha256(real-images digest, extractor name, extractor weights sha256).
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import fsspec
import torch

from orchestrator.evaluation.features import FeatureExtractor
from orchestrator.evaluation.metrics import GaussianStats

DEFAULT_CACHE = str(Path.home() / ".cache" / "sphere-orchestrator" / "evaluation")


def default_cache() -> str:
    return os.environ.get("SPHERE_EVAL_CACHE", DEFAULT_CACHE)


@torch.no_grad()
def extract(
    extractor: FeatureExtractor, images: torch.Tensor, *, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N, C, H, W), uint8 or float in [0, 1] -> features (N, d), logits (N, K): float32 on CPU.

    Batches go to the extractor's device (move it with `.to("cuda")` to extract on a GPU)."""
    device = next(extractor.parameters()).device
    features, logits = [], []
    for batch in images.split(batch_size):
        x = batch.to(device)
        f, l = extractor.features_and_logits(x.float() / 255.0 if x.dtype == torch.uint8 else x)
        features.append(f.float().cpu())
        logits.append(l.float().cpu())
    return torch.cat(features), torch.cat(logits)


@dataclass(frozen=True)
class ReferenceStats:
    features: torch.Tensor  # (N, d) float32: KID and precision/recall need the samples themselves
    stats: GaussianStats  # float64 mean and covariance: the Fréchet distance needs only these
    source_digest: str  # sha256 of the real images
    image_shape: tuple[int, int, int]  # (C, H, W) of the real images: samples must match it
    sha256: str  # over features + mean + covariance bytes; enters every fingerprint

    @property
    def n(self) -> int:
        return self.features.shape[0]

    @property
    def rms(self) -> float:
        """One scalar that makes KID unit-free: both feature sets are divided by it."""
        return float(self.features.double().square().mean().sqrt())

    @classmethod
    def from_features(
        cls, features: torch.Tensor, *, source_digest: str, image_shape: tuple[int, int, int]
    ) -> ReferenceStats:
        stats = GaussianStats.of(features)
        return cls(features, stats, source_digest, image_shape, _digest(features.float(), stats))


def _digest(features: torch.Tensor, stats: GaussianStats) -> str:
    h = hashlib.sha256()
    for t in (features, stats.mu, stats.sigma):
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def images_digest(images: torch.Tensor) -> str:
    """sha256 over dtype, shape and pixels: names the exact real images a statistic came from."""
    h = hashlib.sha256(str((images.dtype, tuple(images.shape))).encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(source_digest: str, extractor: FeatureExtractor) -> str:
    return hashlib.sha256(f"{source_digest}|{extractor.name}|{extractor.weights_sha256}".encode()).hexdigest()


def cache_read(cache: str, name: str) -> bytes | None:
    """The bytes stored under `name` in the cache directory/URL, or None."""
    fs, root = fsspec.core.url_to_fs(cache)
    path = f"{root.rstrip('/')}/{name}"
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return f.read()


def cache_write(cache: str, name: str, data: bytes) -> None:
    fs, root = fsspec.core.url_to_fs(cache)
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root.rstrip('/')}/{name}", "wb") as f:
        f.write(data)


def reference_stats(
    images: torch.Tensor, *, extractor: FeatureExtractor, cache: str | None
) -> ReferenceStats:
    """Load from `cache` or compute from the real images (N, C, H, W) and store; cache=None: no cache."""
    source_digest = images_digest(images)
    image_shape = (images.shape[1], images.shape[2], images.shape[3])
    name = f"reference-{cache_key(source_digest, extractor)}.pt"
    data = cache_read(cache, name) if cache is not None else None
    if data is not None:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        stats = GaussianStats(mu=saved["mu"], sigma=saved["sigma"])
        if _digest(saved["features"], stats) != saved["sha256"]:
            raise ValueError(f"corrupt reference statistics {name} in {cache}: delete it to recompute")
        return ReferenceStats(saved["features"], stats, source_digest, image_shape, saved["sha256"])
    features = extract(extractor, images)[0]
    ref = ReferenceStats.from_features(features, source_digest=source_digest, image_shape=image_shape)
    if cache is not None:
        buf = io.BytesIO()
        saved = {"features": ref.features, "mu": ref.stats.mu, "sigma": ref.stats.sigma}
        torch.save({**saved, "sha256": ref.sha256}, buf)
        cache_write(cache, name, buf.getvalue())
    return ref
