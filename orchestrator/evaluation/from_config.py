"""The protocol a config asks for (`eval:` in training, `evaluate:` on a frozen model, the CLI's flags): a
built-in dataset by name, or held-out and floor images read from shards, in the classifier's or a
user-given Inception's features."""

from __future__ import annotations

import logging

from orchestrator.config.schema import CLASSIFIER_IMAGES, MetricSource
from orchestrator.data.readers import read_images
from orchestrator.evaluation.classifier import LabelledImages
from orchestrator.evaluation.features import FeatureExtractor, load_classifier, load_inception
from orchestrator.evaluation.protocol import Protocol
from sphere_core.config import ConfigError

log = logging.getLogger(__name__)


def protocol_for(
    source: MetricSource,
    *,
    n: int,
    image_size: int,
    channels: int,
    seed: int,
    floor: str | None = None,
    cache: str | None = None,
) -> Protocol:
    """The protocol a config asks for (`eval:` in training, `evaluate:` on a frozen model), at the
    model's image size. Shards are read into memory: the whole `reference` (10,000 RGB images of 256 px
    take 2 GB) and n x floor_draws images of `floor` (default: source.floor), in a seeded shard order."""
    extractor = _inception(source) if source.inception is not None else None
    if extractor is None and channels != CLASSIFIER_IMAGES[0]:
        raise ConfigError(
            f"{source.section}.inception: the {source.dataset} classifier scores 1-channel images, the model "
            f"makes {channels}-channel ones (allowed: Inception weights for them)"
        )
    if source.reference is None:
        return Protocol.for_dataset(
            source.dataset, n=n, image_size=image_size, extractor=extractor, seed=seed, cache=cache
        )
    floor_url = floor or source.floor
    if floor_url is None:
        raise ConfigError(f"{source.section}.floor: training shards for the real-vs-real floor are needed")
    if extractor is None:
        extractor = load_classifier(source.dataset)
    reference, reference_digest = _read_real(source, source.reference, image_size, channels)
    pool, floor_digest = _read_real(
        source, floor_url, image_size, channels, limit=n * Protocol.floor_draws, shard_seed=seed
    )
    for name, url, images, needed in (
        ("reference", source.reference, reference, max(2, n // 2)),  # KID draws subsets of n // 2
        ("floor", floor_url, pool, n),
    ):
        if len(images.labels) < needed:
            raise ConfigError(
                f"{source.section}.{name}: {url} has {len(images.labels)} readable images, "
                f"n = {n} needs at least {needed}"
            )
    return Protocol.for_dataset(
        f"shards-{reference_digest[:12]}-{floor_digest[:12]}",
        n=n,
        extractor=extractor,
        reference=reference,
        floor_source=pool.images,
        floor_labels=pool.labels,
        seed=seed,
        cache=cache,
    )


def _inception(source: MetricSource) -> FeatureExtractor:
    assert source.inception is not None
    try:
        return load_inception(source.inception)
    except (OSError, ValueError, RuntimeError) as exc:  # missing file, not a state_dict, wrong layout
        raise ConfigError(f"{source.section}.inception: {source.inception}: {exc}") from None


def _read_real(
    source: MetricSource,
    url: str,
    image_size: int,
    channels: int,
    *,
    limit: int | None = None,
    shard_seed: int | None = None,
) -> tuple[LabelledImages, str]:
    """Real images from shards at the model's size, all of them in manifest order or the first `limit`
    in a seeded shard order; (images, the dataset's digest)."""
    manifest, images, labels, skipped = read_images(url, image_size=image_size, limit=limit, seed=shard_seed)
    if manifest.channels != channels:
        raise ConfigError(
            f"{source.section}: {url} holds {manifest.channels}-channel images, "
            f"the model makes {channels}-channel ones"
        )
    if skipped:
        log.warning("%s: skipped %d unreadable samples %s", url, sum(skipped.values()), dict(skipped))
    return LabelledImages(images, labels), manifest.digest
