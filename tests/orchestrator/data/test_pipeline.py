from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from orchestrator.data.config import DataConfig
from orchestrator.data.pipeline import ShardStream
from orchestrator.data.readers import read_images, read_shard, register_gopen
from orchestrator.data.shards import (
    DataError,
    Manifest,
    epoch_order,
    merge_cursors,
    rank_shards,
    read_manifest,
)
from orchestrator.data.storage import StorageUnavailable
from sphere_core.transforms import to_signed_unit
from tests.fixtures.services import free_ports

IdsOf = Callable[[torch.Tensor], list[int]]


@pytest.fixture(params=["file", "s3"])
def dataset_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same tests against a local folder and a real S3 endpoint on 127.0.0.1 (moto)."""
    if request.param == "file":
        return f"file://{tmp_path}/ds"
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/datasets/ds"


def _epoch(cfg: DataConfig, world_size: int, ids_of: IdsOf, **kw: object) -> list[list[list[int]]]:
    """Sample ids per batch for each rank, over one epoch."""
    out = []
    for rank in range(world_size):
        stream = ShardStream(cfg, rank=rank, world_size=world_size, **kw)  # type: ignore[arg-type]
        out.append([ids_of(images) for images, _ in stream.epoch_batches()])
    return out


def test_every_sample_once_over_2_ranks_x_2_workers(
    dataset_url: str, make_dataset: Callable[..., Manifest], ids_of: IdsOf
) -> None:
    make_dataset(dataset_url, 96, 12)  # 8 shards: 4 per rank, 48 samples = 12 batches each
    cfg = DataConfig(url=dataset_url, batch_size=4, loader_workers=2, shuffle_buffer=16)
    per_rank = _epoch(cfg, 2, ids_of)
    assert [len(batches) for batches in per_rank] == [12, 12]
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert sorted(seen) == list(range(96))


def test_uneven_shards_still_give_every_rank_the_same_batch_count(
    dataset_url: str, make_dataset: Callable[..., Manifest], ids_of: IdsOf
) -> None:
    manifest = make_dataset(dataset_url, 45, 10)  # shards of 10, 10, 10, 10, 5
    cfg = DataConfig(url=dataset_url, batch_size=4, loader_workers=2, shuffle_buffer=16, seed=3)
    order = epoch_order(manifest.shards, seed=3, epoch=0)
    rank_samples = [sum(s.samples for s in rank_shards(order, r, 2, 2)) for r in range(2)]
    assert rank_samples[0] != rank_samples[1]  # rank 0 reads 3 shards, rank 1 reads 2
    per_rank = _epoch(cfg, 2, ids_of)
    expected = min(rank_samples) // 4
    assert [len(batches) for batches in per_rank] == [expected, expected]
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert len(seen) == len(set(seen)) == 2 * expected * 4  # no sample twice; the rest is the cut


def test_corrupt_samples_and_shards_are_skipped_counted_and_the_rest_read(
    dataset_url: str,
    make_dataset: Callable[..., Manifest],
    corrupt: Callable[[Manifest], tuple[str, str]],
    ids_of: IdsOf,
) -> None:
    manifest = make_dataset(dataset_url, 40, 10)
    truncated, poisoned = corrupt(manifest)  # shard 1 cut short, sample 3 of shard 2 not an image
    cfg = DataConfig(url=dataset_url, batch_size=4, loader_workers=2, shuffle_buffer=8)
    stream = ShardStream(cfg, rank=0, world_size=1)
    batches = [ids_of(images) for images, _ in stream.epoch_batches()]
    assert len(batches) == 10  # planned from the manifest: a short rank is padded, never stops early
    readable = set(range(40)) - set(range(10, 20)) - {23}
    assert set().union(*batches) == readable
    stats = stream.stats()
    assert stats["skipped_per_shard"] == {truncated: 10, poisoned: 1}
    assert stats["skipped_total"] == 11 and stats["padded_samples"] == 40 - 29
    assert stats["samples"] == 29 and stats["data_wait_s"] > 0 and stats["time_to_first_batch_s"] > 0

    # Evaluation's in-memory reader skips the same samples and keeps the manifest order.
    read, images, labels, skipped = read_images(dataset_url)
    assert read.digest == manifest.digest and images.dtype == torch.uint8 and images.shape == (29, 1, 8, 8)
    assert ids_of(to_signed_unit(images)) == sorted(readable)
    assert labels.tolist() == [i % 3 for i in sorted(readable)]
    assert skipped == {truncated: 10, poisoned: 1}


def test_resume_from_merged_cursors_finishes_the_epoch_exactly(
    make_dataset: Callable[..., Manifest], ids_of: IdsOf
) -> None:
    url = "memory://pipeline-resume/ds"
    make_dataset(url, 96, 12)
    cfg = DataConfig(url=url, batch_size=4, loader_workers=0, shuffle_buffer=32)
    first: list[int] = []
    cursors = []
    for rank in range(2):
        stream = ShardStream(cfg, rank=rank, world_size=2)
        batches = stream.epoch_batches()
        first += [i for _ in range(5) for i in ids_of(next(batches)[0])]
        cursors.append(json.loads(json.dumps(stream.cursor())))  # what a checkpoint stores
        batches.close()
    cursor = merge_cursors(cursors)
    assert (cursor["epoch"], cursor["batches"]) == (0, 5)
    rest = _epoch(cfg, 2, ids_of, cursor=cursor)
    assert [len(b) for b in rest] == [7, 7]
    seen = first + [i for batches in rest for batch in batches for i in batch]
    assert sorted(seen) == list(range(96))


def test_shuffle_is_seeded_by_seed_and_epoch(make_dataset: Callable[..., Manifest], ids_of: IdsOf) -> None:
    url = "memory://pipeline-shuffle/ds"
    make_dataset(url, 64, 16)
    cfg = DataConfig(url=url, batch_size=8, loader_workers=0, shuffle_buffer=32)
    order = _epoch(cfg, 1, ids_of)[0]
    assert order == _epoch(cfg, 1, ids_of)[0]
    assert order != _epoch(cfg, 1, ids_of, epoch=1)[0]
    flat = [i for batch in order for i in batch]
    assert sorted(flat) == list(range(64)) and flat != sorted(flat)


def test_stream_runs_across_epochs_and_resizes_and_flips(make_dataset: Callable[..., Manifest]) -> None:
    url = "memory://pipeline-epochs/ds"
    make_dataset(url, 32, 8)
    cfg = DataConfig(
        url=url, batch_size=8, loader_workers=0, shuffle_buffer=0, random_flip=True, image_size=4
    )
    stream = ShardStream(cfg, rank=0, world_size=1)
    assert stream.batches_per_epoch() == 4
    it = iter(stream)
    images, labels = next(it)
    assert images.shape == (8, 1, 4, 4) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.min() >= -1 and images.max() <= 1
    assert bool((labels < 3).all())
    for _ in range(5):
        next(it)
    assert stream.cursor()["epoch"] == 1 and stream.cursor()["batches"] == 2
    left_column = torch.stack([b[0][:, 0, :, 0] for b in [next(it) for _ in range(2)]])
    assert left_column.std() > 0  # some images flipped: the marker pixel moves to the right edge


def test_fewer_shards_than_readers_is_refused_before_streaming(
    tmp_path: Path, make_dataset: Callable[..., Manifest]
) -> None:
    make_dataset(str(tmp_path / "ds"), 30, 10)  # 3 shards
    cfg = DataConfig(url=str(tmp_path / "ds"), batch_size=4, loader_workers=2)
    with pytest.raises(DataError, match="3 shards for 4 readers"):
        ShardStream(cfg, rank=0, world_size=2)


def test_labels_travel_with_their_images(make_dataset: Callable[..., Manifest], ids_of: IdsOf) -> None:
    url = "memory://pipeline-labels/ds"
    make_dataset(url, 24, 6)
    cfg = DataConfig(url=url, batch_size=6, loader_workers=0, shuffle_buffer=12)
    pairs: Counter[bool] = Counter()
    for images, labels in ShardStream(cfg, rank=0, world_size=1).epoch_batches():
        pairs.update((i % 3 == label) for i, label in zip(ids_of(images), labels.tolist(), strict=True))
    assert pairs == Counter({True: 24})


def test_batch_larger_than_a_rank_share_is_refused(make_dataset: Callable[..., Manifest]) -> None:
    url = "memory://pipeline-big-batch/ds"
    make_dataset(url, 20, 5)  # 2 ranks x 2 shards x 5 samples
    cfg = DataConfig(url=url, batch_size=11, loader_workers=0)
    with pytest.raises(DataError, match="batch_size 11 exceeds the 10 samples of the smallest of 2 ranks"):
        ShardStream(cfg, rank=0, world_size=2)


def test_read_images_limit_and_seeded_shard_order(
    dataset_url: str, make_dataset: Callable[..., Manifest], ids_of: IdsOf
) -> None:
    manifest = make_dataset(dataset_url, 40, 10)
    assert ids_of(to_signed_unit(read_images(dataset_url, limit=5)[1])) == [0, 1, 2, 3, 4]
    order = [
        int(s.name.removeprefix("shard-").removesuffix(".tar"))
        for s in epoch_order(manifest.shards, seed=3, epoch=0)
    ]
    _, pool, _, _ = read_images(dataset_url, limit=15, seed=3)
    expected = list(range(10 * order[0], 10 * order[0] + 10)) + list(range(10 * order[1], 10 * order[1] + 5))
    assert ids_of(to_signed_unit(pool)) == expected
    assert read_images(dataset_url, limit=15, seed=3, image_size=4)[1].shape == (15, 1, 4, 4)


@pytest.fixture
def restartable_s3(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Callable[[], None], Callable[[], None]]]:
    """(stop, start) of an S3 endpoint on a fixed loopback port; moto keeps its objects in this process."""
    from moto.server import ThreadedMotoServer
    from s3fs import S3FileSystem

    (port,) = free_ports(1)
    servers = [ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)]
    servers[0].start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    S3FileSystem.clear_instance_cache()

    def stop() -> None:
        servers[-1].stop()

    def start() -> None:
        servers.append(ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False))
        servers[-1].start()

    yield stop, start
    servers[-1].stop()
    S3FileSystem.clear_instance_cache()


def test_a_shard_read_rides_out_a_store_outage_and_fails_in_one_line_after_its_budget(
    restartable_s3: tuple[Callable[[], None], Callable[[], None]], make_dataset: Callable[..., Manifest]
) -> None:
    import boto3

    stop, start = restartable_s3
    boto3.client("s3").create_bucket(Bucket="outage")
    make_dataset("s3://outage/ds", 12, 6)
    manifest = read_manifest("s3://outage/ds")
    register_gopen(manifest.url)
    shard = manifest.shards[0]
    stop()
    restart = threading.Timer(2.0, start)
    restart.start()
    skipped: Counter[str] = Counter()
    started = time.monotonic()
    read = list(read_shard(manifest, shard, image_size=manifest.image_size, skipped=skipped, retry_s=60))
    restart.join()
    assert time.monotonic() - started >= 2.0  # it waited for the store instead of counting a corrupt shard
    assert [position for _, _, position in read] == list(range(6)) and skipped == Counter()

    stop()
    with pytest.raises(
        StorageUnavailable, match=r"^s3://outage/ds/shard-\d+\.tar: storage unreachable for 1 s"
    ):
        list(read_shard(manifest, shard, image_size=manifest.image_size, skipped=skipped, retry_s=1))
    assert skipped == Counter()
    start()
