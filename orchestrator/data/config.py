"""What a training run reads: the data plane's own config (a field of the experiment config, `data.*`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sphere_core.config import ConfigError


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    url: str = field(  # fsspec URL of a folder holding manifest.json + shards
        default="s3://sphere/datasets/mnist/train",
        metadata={
            "give": "an fsspec URL of training shards: the --out of `python -m orchestrator.data build "
            "--source TRAIN_FOLDER_OR_LIST`"
        },
    )
    batch_size: int = 32  # per worker; the global batch is batch_size * workers
    loader_workers: int = 1  # DataLoader processes per Ray worker
    shuffle_buffer: int = 1000  # samples held by each reader's shuffle buffer
    random_flip: bool = False  # horizontal flips, off for digits (a preset's default: augment.random_flip)
    seed: int = 0
    image_size: int | None = None  # px; None = the manifest's size, else shorter side resized + center crop
    retry_s: float = 120.0  # how long a shard or manifest read retries a lost connection before failing

    def __post_init__(self) -> None:
        if self.retry_s < 0:
            raise ConfigError("data.retry_s: must be >= 0 (seconds)")
        if self.batch_size < 1:
            raise ConfigError("data.batch_size: must be >= 1")
        if self.loader_workers < 0:
            raise ConfigError("data.loader_workers: must be >= 0")
        if self.shuffle_buffer < 0:
            raise ConfigError("data.shuffle_buffer: must be >= 0 (0 or 1: no shuffling)")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError("data.image_size: must be >= 1 or null")
