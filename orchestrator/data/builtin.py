"""The built-in datasets as shard sources: each split of a registry entry (orchestrator/data/registry.py) as
uint8 tensors fitted to the image size. Grayscale stays one channel. MNIST-family images are padded 28 -> 32
(the paper's 32 px setting) when the target size is 28..32 and resized otherwise; digits are upsampled
bilinearly (their 17 grey levels are blocky).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from orchestrator.data.registry import BUILTINS, Builtin
from orchestrator.data.shards import DataError
from orchestrator.data.sources import SourceSample
from sphere_core.transforms import pad_to, resize


@dataclass
class ArraySource:
    """One split of a built-in dataset, fitted to image_size in one batched tensor op."""

    name: str
    class_names: tuple[str, ...]
    image_size: int
    channels: int
    images: torch.Tensor  # uint8 (N, 1, image_size, image_size)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[SourceSample]:
        for i in range(len(self.labels)):
            yield SourceSample(self.images[i], int(self.labels[i]), {"index": i})


def fit_builtin(images: torch.Tensor, spec: Builtin, image_size: int) -> torch.Tensor:
    """uint8 (N, 1, native, native) -> (N, 1, image_size, image_size): pad when allowed, else resize."""
    if spec.native_size <= image_size <= spec.pad_max:
        return pad_to(images, image_size)
    return resize(images, (image_size, image_size), mode="bilinear")


def builtin_sources(name: str, image_size: int | None = None) -> dict[str, ArraySource]:
    """Each split ("train", "test") of builtin `name` as a source ready for the writer."""
    if name not in BUILTINS:
        raise DataError(f"builtin:{name}: unknown built-in dataset (known: {', '.join(BUILTINS)})")
    spec = BUILTINS[name]
    size = image_size or spec.default_size
    sources = {}
    for split, (images, labels) in spec.load().items():
        pixels = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)  # (N, 1, native, native)
        sources[split] = ArraySource(
            f"builtin:{name}/{split}",
            spec.class_names,
            size,
            1,
            fit_builtin(pixels, spec, size),
            torch.from_numpy(np.ascontiguousarray(labels)),
        )
    return sources
