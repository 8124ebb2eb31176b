"""Reading shards: webdataset's tar reader over any fsspec URL, with every sample checked, skipped and counted
when it does not decode, and lost connections ridden out from where they broke. `read_shard` feeds the
training stream's readers (pipeline.py) and `read_images` evaluation's real images.

webdataset 1.0.2 has no s3:// or memory:// opener: `register_gopen` lends it fsspec's. Each shard's size is
checked against the manifest first, since webdataset would silently yield a truncated shard's prefix.
"""

from __future__ import annotations

import itertools
import logging
import tarfile
from collections import Counter
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import urlsplit

import fsspec
import torch
from fsspec.core import url_to_fs
from webdataset import gopen_schemes
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander

from orchestrator.data.config import DataConfig
from orchestrator.data.shards import (
    DataError,
    Manifest,
    ShardInfo,
    epoch_order,
    read_manifest,
    seen_count,
    seen_has,
)
from orchestrator.data.sources import decode_sample
from orchestrator.data.storage import Backoff, is_transient, retrying
from sphere_core.transforms import fit_square

log = logging.getLogger(__name__)


def _fsspec_gopen(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> IO[bytes]:
    return fsspec.open(url, mode).open()  # endpoint and credentials from the AWS env / fsspec config


def register_gopen(url: str) -> None:
    """Let webdataset open `url`'s scheme through fsspec (1.0.2 has no s3:// or memory:// opener)."""
    scheme = urlsplit(url).scheme
    if scheme and scheme != "file" and scheme not in gopen_schemes:
        gopen_schemes[scheme] = _fsspec_gopen


def _skip(shard: ShardInfo, skipped: Counter[str], seen: bytearray | None, first: int, why: str) -> None:
    """Count the unseen positions first.. of `shard` as skipped."""
    lost = sum(not seen_has(seen, p) for p in range(first, shard.samples))
    if lost:
        skipped[shard.name] += lost
        log.warning("skipping %d samples of %s: %s", lost, shard.name, why)


def _object_size(url: str) -> int:
    fs, path = url_to_fs(url)
    try:
        return int(fs.size(path))
    except FileNotFoundError:
        return -1


def read_shard(
    manifest: Manifest,
    shard: ShardInfo,
    *,
    image_size: int,
    skipped: Counter[str],
    seen: bytearray | None = None,
    retry_s: float = DataConfig.retry_s,
) -> Iterator[tuple[torch.Tensor, int, int]]:
    """(uint8 (C, image_size, image_size), class id, position) of each sample of `shard` not in `seen`.

    A sample that does not decode, or a shard whose size differs from the manifest or whose tar breaks off,
    is logged and counted in `skipped[shard.name]`; the rest is read. A lost connection is not corruption:
    the shard is reopened and read on from where it broke, for up to `retry_s` without progress, after
    which StorageUnavailable (one line, naming the URL) ends the read."""
    if seen_count(seen) == shard.samples:
        return
    url = manifest.shard_url(shard)
    size = retrying(lambda: _object_size(url), url=url, budget_s=retry_s)
    if size != shard.bytes:
        _skip(shard, skipped, seen, 0, f"{size} bytes (-1: missing), manifest says {shard.bytes}")
        return
    position = 0  # samples of the shard passed so far: yielded, seen before, or undecodable
    backoff = Backoff(url, retry_s)
    while True:
        stream = None
        try:
            stream = gopen(url)
            samples = group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
            for index, sample in enumerate(samples):
                if index < position:  # reopened after a lost connection: pass what was already handled
                    continue
                position = index + 1
                backoff.reset()
                if seen_has(seen, position - 1):
                    continue
                try:
                    image, label = decode_sample(sample, manifest)
                except ValueError as exc:
                    skipped[shard.name] += 1
                    log.warning("skipping sample %s of %s: %s", sample.get("__key__"), shard.name, exc)
                    continue
                if image_size != manifest.image_size:
                    image = fit_square(image, image_size)
                yield image, label, position - 1
            break
        except Exception as exc:
            if is_transient(exc):
                log.warning("%s: connection lost after %d samples, reopening: %s", shard.name, position, exc)
                backoff.wait(exc)
                continue
            if not isinstance(exc, (tarfile.TarError, OSError, EOFError, ValueError)):
                raise
            log.warning("%s stops after %d samples: %s: %s", shard.name, position, type(exc).__name__, exc)
            break
        finally:
            if stream is not None:
                stream.close()
    _skip(shard, skipped, seen, position, "tar ended early")


def read_images(
    url: str, *, image_size: int | None = None, limit: int | None = None, seed: int | None = None
) -> tuple[Manifest, torch.Tensor, torch.Tensor, Counter[str]]:
    """A dataset folder's images in memory: (manifest, uint8 (N, C, S, S), int64 labels (N,), skipped per
    shard), for evaluation's real images. Shards in manifest order, or a seeded permutation of them when
    `seed` is given; stops after `limit` samples. S: `image_size`, default the manifest's."""
    manifest = read_manifest(url)
    register_gopen(url)
    size = image_size or manifest.image_size
    shards = manifest.shards if seed is None else epoch_order(manifest.shards, seed=seed, epoch=0)
    skipped: Counter[str] = Counter()
    samples = (
        sample for shard in shards for sample in read_shard(manifest, shard, image_size=size, skipped=skipped)
    )
    read = list(itertools.islice(samples, limit))
    samples.close()  # closes the open shard's stream when `limit` stopped the read inside it
    if not read:
        raise DataError(f"{url}: no readable image in its {len(manifest.shards)} shards")
    images = torch.stack([image for image, _, _ in read])
    labels = torch.tensor([label for _, label, _ in read], dtype=torch.int64)
    return manifest, images, labels, skipped
