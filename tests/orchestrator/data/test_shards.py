from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.data.shards import (
    DataError,
    Manifest,
    ShardInfo,
    assign_shards,
    dataset_digest,
    decode_seen,
    encode_seen,
    epoch_order,
    merge_cursors,
    parse_manifest,
    rank_shards,
    read_manifest,
    seen_count,
    write_manifest,
)


@pytest.mark.parametrize(("n_shards", "world_size", "workers"), [(4, 2, 2), (7, 2, 2), (5, 1, 0), (9, 3, 3)])
def test_assign_shards_partitions_every_shard_exactly_once(
    n_shards: int, world_size: int, workers: int
) -> None:
    urls = [f"s3://b/shard-{i:06d}.tar" for i in range(n_shards)]
    got = [
        u
        for rank in range(world_size)
        for w in range(max(workers, 1))
        for u in assign_shards(urls, rank, world_size, w, workers)
    ]
    assert sorted(got) == urls
    per_reader = [
        len(assign_shards(urls, r, world_size, w, workers))
        for r in range(world_size)
        for w in range(max(workers, 1))
    ]
    assert min(per_reader) >= 1 and max(per_reader) - min(per_reader) <= 1


def test_assign_shards_is_rank_major() -> None:
    urls = list("abcdefgh")
    assert assign_shards(urls, 0, 2, 0, 2) == ["a", "e"]
    assert assign_shards(urls, 0, 2, 1, 2) == ["b", "f"]
    assert assign_shards(urls, 1, 2, 0, 2) == ["c", "g"]
    assert rank_shards(urls, 1, 2, 2) == ["c", "g", "d", "h"]


def test_fewer_shards_than_readers_is_refused() -> None:
    with pytest.raises(DataError, match=r"3 shards for 4 readers \(2 ranks x 2 loader workers\)"):
        assign_shards(["a", "b", "c"], 0, 2, 0, 2)


@pytest.mark.parametrize(("rank", "world_size", "worker"), [(2, 2, 0), (-1, 2, 0), (0, 2, 2), (0, 0, 0)])
def test_out_of_range_reader_is_refused(rank: int, world_size: int, worker: int) -> None:
    with pytest.raises(DataError):
        assign_shards(list("abcdefgh"), rank, world_size, worker, 2)


def test_epoch_order_is_a_seeded_permutation() -> None:
    items = list(range(20))
    assert epoch_order(items, seed=0, epoch=1) == epoch_order(items, seed=0, epoch=1)
    assert sorted(epoch_order(items, seed=0, epoch=1)) == items
    assert epoch_order(items, seed=0, epoch=1) != epoch_order(items, seed=0, epoch=2)
    assert epoch_order(items, seed=0, epoch=1) != epoch_order(items, seed=1, epoch=1)


def _manifest(url: str) -> Manifest:
    shards = (
        ShardInfo(name="shard-000000.tar", samples=3, bytes=10240, sha256="ab" * 32),
        ShardInfo(name="shard-000001.tar", samples=2, bytes=10240, sha256="cd" * 32),
    )
    return Manifest(
        url=url,
        shards=shards,
        class_names=("x", "y"),
        image_size=8,
        channels=1,
        source="t",
        digest=dataset_digest(shards),
    )


def test_manifest_round_trip_through_memory_fs() -> None:
    url = "memory://manifest-test/ds"
    write_manifest(_manifest(url))
    got = read_manifest(url)
    assert got == _manifest(url)
    assert (got.num_samples, got.num_classes) == (5, 2)
    assert got.shard_url(got.shards[1]) == "memory://manifest-test/ds/shard-000001.tar"


def test_manifest_digest_is_checked() -> None:
    body = json.loads(_manifest("x").to_json())
    body["shards"][0]["sha256"] = "00" * 32  # edited shard list, stale digest
    with pytest.raises(DataError, match="digest does not match"):
        parse_manifest(json.dumps(body), "x")


def test_missing_manifest_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(DataError, match=r"manifest\.json: not found; build the dataset first"):
        read_manifest(str(tmp_path))


def test_cursor_bitmaps_round_trip_and_merge() -> None:
    counts = {"s0": 10, "s1": 3}
    rank0 = {"s0": bytearray(2), "s1": bytearray(b"\x07")}
    rank0["s0"][0] = 0b0000_0101  # positions 0 and 2
    rank1 = {"s0": bytearray([0b1000_0000, 0b10])}  # positions 7 and 9
    c0: dict[str, Any] = {"epoch": 1, "batches": 4, "seen": encode_seen(rank0, counts)}
    c1: dict[str, Any] = {"epoch": 1, "batches": 4, "seen": encode_seen(rank1, counts)}
    assert c0["seen"]["s1"] == "all"
    merged = decode_seen(merge_cursors([c0, c1])["seen"], counts)
    assert seen_count(merged["s0"]) == 4 and seen_count(merged["s1"]) == 3
    assert json.loads(json.dumps(merge_cursors([c0, c1]))) == merge_cursors([c1, c0])
    with pytest.raises(DataError, match="disagree"):
        merge_cursors([c0, {**c1, "batches": 5}])
    with pytest.raises(DataError, match="does not list"):
        decode_seen({"other.tar": "all"}, counts)


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "sub/shard.tar", "..", "", "a\\..\\b.tar", 7])
def test_a_manifest_whose_shard_names_leave_the_dataset_is_refused_on_read(name: object) -> None:
    url = "memory://manifest-escape/ds"
    body = json.loads(_manifest(url).to_json())
    body["shards"][1]["name"] = name  # the digest covers sha256s only: it still matches
    with pytest.raises(DataError) as info:
        parse_manifest(json.dumps(body), url)
    assert str(info.value) == (
        f"{url}/manifest.json: shard name {name!r} is not a plain file name (allowed: a name inside the "
        "dataset folder, without '/', '\\' or '..')"
    )


def test_a_manifest_that_is_not_utf8_is_one_line_naming_it(tmp_path) -> None:
    (tmp_path / "manifest.json").write_bytes(b'{"format": "\xff"}')
    with pytest.raises(DataError) as info:
        read_manifest(str(tmp_path))
    assert str(info.value) == (
        f"{tmp_path}/manifest.json: line 1: not UTF-8 (byte 0xff at offset 12); save it as UTF-8"
    )
