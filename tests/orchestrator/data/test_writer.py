from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest

from orchestrator.data.shards import DataError, Manifest, read_manifest


def _members(url: str) -> list[tuple[str, bytes]]:
    with fsspec.open(url, "rb") as f, tarfile.open(fileobj=io.BytesIO(f.read())) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def test_shards_hold_sorted_contiguous_keys_and_match_the_manifest(
    tmp_path: Path, make_dataset: Callable[..., Manifest]
) -> None:
    manifest = make_dataset(str(tmp_path / "ds"), 23, 10)
    assert [(s.name, s.samples) for s in manifest.shards] == [
        ("shard-000000.tar", 10),
        ("shard-000001.tar", 10),
        ("shard-000002.tar", 3),
    ]
    assert read_manifest(str(tmp_path / "ds")) == manifest
    body = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert body["num_samples"] == 23 and body["class_names"] == ["a", "b", "c"]
    assert (body["image_size"], body["channels"], body["num_classes"]) == (8, 1, 3)
    for shard in manifest.shards:
        raw = (tmp_path / "ds" / shard.name).read_bytes()
        assert len(raw) == shard.bytes and hashlib.sha256(raw).hexdigest() == shard.sha256
    names = [name for name, _ in _members(manifest.shard_url(manifest.shards[2]))]
    assert names == [f"{k:08d}.{ext}" for k in (20, 21, 22) for ext in ("cls", "json", "png")]
    members = dict(_members(manifest.shard_url(manifest.shards[2])))
    assert members["00000022.cls"] == b"1"
    assert json.loads(members["00000022.json"]) == {"class_name": "b", "index": 22}


def test_builds_are_byte_identical(tmp_path: Path, make_dataset: Callable[..., Manifest]) -> None:
    first = make_dataset(str(tmp_path / "a"), 15, 4)
    second = make_dataset(f"memory://writer-test-{tmp_path.name}/b", 15, 4)
    assert first.digest == second.digest
    assert [s.sha256 for s in first.shards] == [s.sha256 for s in second.shards]


def test_existing_dataset_needs_overwrite(tmp_path: Path, make_dataset: Callable[..., Manifest]) -> None:
    url = str(tmp_path / "ds")
    make_dataset(url, 12, 4)
    with pytest.raises(DataError, match=r"already holds a dataset .*--overwrite"):
        make_dataset(url, 5, 4)
    smaller = make_dataset(url, 5, 4, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "ds").glob("*.tar")) == [s.name for s in smaller.shards]


def test_shard_size_must_be_positive(tmp_path: Path, make_dataset: Callable[..., Manifest]) -> None:
    with pytest.raises(DataError, match="--shard-size must be >= 1"):
        make_dataset(str(tmp_path / "ds"), 5, 0)
