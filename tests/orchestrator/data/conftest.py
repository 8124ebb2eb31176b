"""Small synthetic datasets whose pixels spell their own sample index, so tests can tell samples apart."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import fsspec
import pytest
import torch

from orchestrator.data.shards import Manifest
from orchestrator.data.sources import SourceSample
from orchestrator.data.writer import write_dataset
from sphere_core.transforms import to_uint8

SIZE = 8  # px


@dataclass
class IndexedSource:
    """n grayscale 8x8 images; pixel (0, 0) = i % 256 and (0, 1) = i // 256; class i % 3."""

    n: int
    name: str = "indexed"
    class_names: tuple[str, ...] = ("a", "b", "c")
    image_size: int = SIZE
    channels: int = 1

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[SourceSample]:
        for i in range(self.n):
            image = torch.full((1, SIZE, SIZE), 128, dtype=torch.uint8)
            image[0, 0, 0], image[0, 0, 1] = i % 256, i // 256
            yield SourceSample(image, i % 3, {"index": i})


def sample_ids(images: torch.Tensor) -> list[int]:
    """Indices spelled by a float (B, 1, H, W) batch in [-1, 1] (inverse of IndexedSource)."""
    pixels = to_uint8(images).long()  # (B, 1, H, W)
    return (pixels[:, 0, 0, 0] + 256 * pixels[:, 0, 0, 1]).tolist()


@pytest.fixture
def make_dataset() -> Callable[..., Manifest]:
    def make(url: str, n: int, shard_size: int, *, overwrite: bool = False) -> Manifest:
        return write_dataset(
            IndexedSource(n), url, shard_size=shard_size, overwrite=overwrite, progress=False
        )

    return make


@pytest.fixture
def ids_of() -> Callable[[torch.Tensor], list[int]]:
    return sample_ids


def poison_png(shard_url: str, position: int) -> None:
    """Overwrite sample `position`'s PNG payload with same-length garbage: tar and byte size stay valid."""
    with fsspec.open(shard_url, "rb") as f:
        data = bytearray(f.read())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".png")][position]
    data[member.offset_data : member.offset_data + member.size] = b"x" * member.size
    with fsspec.open(shard_url, "wb") as f:
        f.write(bytes(data))


def truncate(shard_url: str, fraction: float = 0.6) -> None:
    """Cut the object short mid-way, as an interrupted upload would."""
    with fsspec.open(shard_url, "rb") as f:
        data = f.read()
    with fsspec.open(shard_url, "wb") as f:
        f.write(data[: int(len(data) * fraction)])


@pytest.fixture
def corrupt() -> Callable[[Manifest], tuple[str, str]]:
    """Truncate shard 1 and poison sample 3 of shard 2; returns (truncated name, poisoned name)."""

    def apply(manifest: Manifest) -> tuple[str, str]:
        truncated, poisoned = manifest.shards[1], manifest.shards[2]
        truncate(manifest.shard_url(truncated))
        poison_png(manifest.shard_url(poisoned), 3)
        return truncated.name, poisoned.name

    return apply
