"""Stream a sharded dataset to one training rank: equal batches per rank, corrupt data skipped, resumable.

Per epoch every rank computes the same plan from the manifest alone (no communication):
  1. the shard list is permuted with (seed, epoch), identically on every rank;
  2. `assign_shards` gives each (rank, loader worker) reader its shards;
  3. batches this epoch = min over ranks of (unseen samples of the rank) // batch_size, so every rank stops
     at the same step and DDP never waits on a rank that ran dry.
Readers (DataLoader workers) open shards through webdataset's gopen (fsspec for s3:// and friends), check
each object's size against the manifest (webdataset would silently yield a truncated shard's prefix),
decode with sphere_core.transforms, shuffle in a seeded buffer and send chunks of samples to the rank's
main process, which cuts them into batches. Batching in the main process is what makes the cursor exact:
it records which sample positions of which shard were handed to training, and nothing else.

Cursor (JSON): {"epoch": e, "batches": n, "seen": {shard name: "all" | base64 bitmap of sample positions}}.
Each rank's cursor covers its own shards; `shards.merge_cursors` unions them; every rank must resume from the
same merged cursor so that all ranks recompute the same cut. A resumed epoch skips seen samples before
decoding, so each sample is still seen once per epoch (order after the resume differs: buffers restart).

Over 300 lines because the plan and the batcher must agree on one cursor format (reading shards is in
readers.py); split, a change to one would silently break resume in the other.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Generator, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset import filters

from orchestrator.data.config import DataConfig
from orchestrator.data.readers import read_shard, register_gopen
from orchestrator.data.shards import (
    DataError,
    Manifest,
    ShardInfo,
    assign_shards,
    decode_seen,
    encode_seen,
    epoch_order,
    rank_shards,
    read_manifest,
    seen_add,
    seen_count,
)
from orchestrator.data.storage import retrying
from sphere_core.transforms import random_hflip, to_signed_unit

log = logging.getLogger(__name__)
# (float (C, H, W) in [-1, 1], class id, shard name, position in shard)
Item = tuple[torch.Tensor, int, str, int]
Batch = tuple[torch.Tensor, torch.Tensor]  # (float (B, C, H, W) in [-1, 1], int64 (B,))


# --- the rank's readers (run in DataLoader workers) -------------------------------------------------


class _Readers(IterableDataset[dict[str, Any]]):
    """The rank's readers; DataLoader worker w reads `shards[w]` and yields chunks of decoded samples."""

    def __init__(
        self,
        manifest: Manifest,
        shards: list[list[ShardInfo]],
        seen: dict[str, bytearray],
        *,
        image_size: int,
        chunk: int,
        shuffle_buffer: int,
        seed_key: str,
        retry_s: float,
    ) -> None:
        super().__init__()
        self.manifest, self.shards, self.seen = manifest, shards, seen
        self.image_size, self.chunk, self.retry_s = image_size, chunk, retry_s
        self.shuffle_buffer, self.seed_key = shuffle_buffer, seed_key

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        register_gopen(self.manifest.url)  # in every process: spawned workers do not inherit the table
        skipped: Counter[str] = Counter()
        items: Iterator[Item] = (item for shard in self.shards[worker] for item in self._read(shard, skipped))
        if self.shuffle_buffer > 1:
            rng = random.Random(f"{self.seed_key}:worker{worker}")
            initial = min(100, self.shuffle_buffer)  # start yielding early: time to first batch
            items = filters.shuffle(bufsize=self.shuffle_buffer, initial=initial, rng=rng)(items)
        held: list[Item] = []
        for item in items:
            held.append(item)
            if len(held) == self.chunk:
                yield self._pack(held, skipped)
                held = []
        yield self._pack(held, skipped)  # the last chunk also carries the final skip counts

    def _pack(self, items: list[Item], skipped: Counter[str]) -> dict[str, Any]:
        c, s = self.manifest.channels, self.image_size
        images = torch.stack([i[0] for i in items]) if items else torch.empty(0, c, s, s)  # (n, C, H, W)
        chunk = {
            "images": images,
            "labels": torch.tensor([i[1] for i in items], dtype=torch.int64),
            "origins": [(i[2], i[3]) for i in items],
            "skipped": dict(skipped),
        }
        skipped.clear()
        return chunk

    def _read(self, shard: ShardInfo, skipped: Counter[str]) -> Iterator[Item]:
        for image, label, position in read_shard(
            self.manifest,
            shard,
            image_size=self.image_size,
            skipped=skipped,
            seen=self.seen.get(shard.name),
            retry_s=self.retry_s,
        ):
            yield to_signed_unit(image), label, shard.name, position


# --- the rank's stream (main process) --------------------------------------------------------------


class _Held:
    """Samples received but not yet batched, kept as a list of chunk tensors."""

    def __init__(self) -> None:
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.origins: list[tuple[str, int]] = []

    def __len__(self) -> int:
        return len(self.origins)

    def add(self, chunk: Mapping[str, Any]) -> None:
        self.images.append(chunk["images"])
        self.labels.append(chunk["labels"])
        self.origins.extend(chunk["origins"])

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, int]]]:
        images, labels = torch.cat(self.images), torch.cat(self.labels)  # (held, C, H, W), (held,)
        self.images, self.labels = [images[n:]], [labels[n:]]
        origins, self.origins = self.origins[:n], self.origins[n:]
        return images[:n], labels[:n], origins


class ShardStream:
    """Batches (images float (B, C, H, W) in [-1, 1], labels int64 (B,)) for one rank.

    `epoch_batches()` yields the rest of the current epoch; iterating the stream itself runs epoch after
    epoch (training is step-based). With a `cursor`, the stream continues that cursor's epoch; `epoch` is
    used only without one. Take rank and world size from the trainer (e.g. ray.train.get_context()).
    """

    def __init__(
        self,
        cfg: DataConfig,
        *,
        rank: int,
        world_size: int,
        epoch: int = 0,
        cursor: Mapping[str, Any] | None = None,
        manifest: Manifest | None = None,
    ) -> None:
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        if manifest is None:
            manifest = retrying(lambda: read_manifest(cfg.url), url=cfg.url, budget_s=cfg.retry_s)
        self.manifest = manifest
        assign_shards(self.manifest.shards, rank, world_size, 0, cfg.loader_workers)  # refuse a bad plan now
        self._counts = {s.name: s.samples for s in self.manifest.shards}
        if cursor is None:
            self._start_epoch(epoch, 0, {})
        else:
            self._start_epoch(
                int(cursor["epoch"]), int(cursor["batches"]), decode_seen(cursor["seen"], self._counts)
            )
        self._skipped: Counter[str] = Counter()
        self._samples = self._padded = 0
        self._wait_s = 0.0
        self._first_batch_s: float | None = None

    def _start_epoch(self, epoch: int, batches: int, seen: dict[str, bytearray]) -> None:
        """Fix this epoch's shard order and its batch count, the same on every rank given the same cursor."""
        self._epoch, self._batches, self._seen = epoch, batches, seen
        self._order = epoch_order(self.manifest.shards, seed=self.cfg.seed, epoch=epoch)
        workers = self.cfg.loader_workers
        unseen = [
            sum(
                s.samples - seen_count(seen.get(s.name))
                for s in rank_shards(self._order, r, self.world_size, workers)
            )
            for r in range(self.world_size)
        ]
        self._total = batches + min(unseen) // self.cfg.batch_size
        if self._total == 0:
            raise DataError(
                f"data.batch_size {self.cfg.batch_size} exceeds the {min(unseen)} samples of the smallest of "
                f"{self.world_size} ranks in epoch {epoch}: no batch would be yielded"
            )

    @property
    def image_size(self) -> int:
        return self.cfg.image_size or self.manifest.image_size

    def batches_per_epoch(self) -> int:
        """Batches every rank yields in the current epoch (including those a cursor says are done)."""
        return self._total

    def cursor(self) -> dict[str, Any]:
        return {
            "epoch": self._epoch,
            "batches": self._batches,
            "seen": encode_seen(self._seen, self._counts),
        }

    def stats(self) -> dict[str, Any]:
        return {
            "epoch": self._epoch,
            "samples": self._samples,
            "skipped_total": sum(self._skipped.values()),
            "skipped_per_shard": dict(sorted(self._skipped.items())),
            "padded_samples": self._padded,  # repeats used to keep batch counts equal after skips
            "data_wait_s": self._wait_s,
            "time_to_first_batch_s": self._first_batch_s,
        }

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield from self.epoch_batches()
            self._start_epoch(self._epoch + 1, 0, {})

    def _readers(self) -> _Readers:
        workers = max(self.cfg.loader_workers, 1)
        return _Readers(
            self.manifest,
            [
                assign_shards(self._order, self.rank, self.world_size, w, self.cfg.loader_workers)
                for w in range(workers)
            ],
            {name: bytearray(bits) for name, bits in self._seen.items()},  # readers see the epoch-start view
            image_size=self.image_size,
            chunk=self.cfg.batch_size,
            shuffle_buffer=self.cfg.shuffle_buffer,
            seed_key=f"{self.cfg.seed}:{self._epoch}:{self.rank}:{self._batches}",
            retry_s=self.cfg.retry_s,
        )

    def epoch_batches(self) -> Generator[Batch, None, None]:
        total, started = self._total, time.perf_counter()
        readers = self._readers()
        workers = self.cfg.loader_workers
        chunks = iter(DataLoader(readers, batch_size=None, num_workers=workers) if workers else readers)
        held, last = _Held(), None
        try:
            while self._batches < total:
                t0 = time.perf_counter()
                chunk = next(chunks, None)
                self._wait_s += time.perf_counter() - t0
                if chunk is None:
                    break
                self._skipped.update(chunk["skipped"])
                held.add(chunk)
                while len(held) >= self.cfg.batch_size and self._batches < total:
                    images, labels, origins = held.take(self.cfg.batch_size)
                    last = (images, labels)
                    yield self._emit(images, labels, origins, started)
        finally:
            del chunks  # stops DataLoader workers when the epoch is cut or the consumer stops early
        while self._batches < total:  # skipped samples left this rank short: repeat recent ones
            yield self._pad(held, last, started)

    def _pad(self, held: _Held, last: Batch | None, started: float) -> Batch:
        """A batch of the samples still held plus repeats of the last batch (skips left this rank short)."""
        pool: list[Batch] = [last] if last is not None else []
        origins: list[tuple[str, int]] = []
        if len(held):
            images, labels, origins = held.take(len(held))
            pool.insert(0, (images, labels))
        if not pool:
            raise DataError(f"rank {self.rank}: no readable samples left in epoch {self._epoch}; run verify")
        pool_images = torch.cat([p[0] for p in pool])  # (n, C, H, W)
        pool_labels = torch.cat([p[1] for p in pool])  # (n,)
        repeat = torch.arange(self.cfg.batch_size) % len(pool_labels)
        missing = self.cfg.batch_size - len(origins)
        self._padded += missing
        log.warning("rank %d: batch %d padded with %d repeated samples", self.rank, self._batches, missing)
        return self._emit(pool_images[repeat], pool_labels[repeat], origins, started)

    def _emit(
        self, images: torch.Tensor, labels: torch.Tensor, origins: list[tuple[str, int]], started: float
    ) -> Batch:
        for name, position in origins:
            seen_add(self._seen, name, self._counts[name], position)
        if self.cfg.random_flip:  # seeded per batch, so a resumed run flips the same batches the same way
            key = f"flip:{self.cfg.seed}:{self._epoch}:{self.rank}:{self._batches}"
            generator = torch.Generator().manual_seed(random.Random(key).getrandbits(63))
            images = random_hflip(images, generator=generator)
        self._batches += 1
        self._samples += len(origins)
        if self._first_batch_s is None:
            self._first_batch_s = time.perf_counter() - started
        return images, labels
