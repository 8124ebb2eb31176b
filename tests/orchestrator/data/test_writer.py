from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pytest
import torch

from orchestrator.data.shards import DataError, Manifest, read_manifest
from orchestrator.data.sources import SourceSample
from orchestrator.data.writer import write_dataset


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
    assert read_manifest(url).num_samples == 12  # the refused build touched nothing
    smaller = make_dataset(url, 5, 4, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "ds").glob("*.tar")) == [s.name for s in smaller.shards]


@dataclass
class FailingSource:
    """n blank 8x8 grayscale images that raises `error` when sample `fail_at` is due."""

    fail_at: int
    error: Exception
    n: int = 20
    name: str = "failing"
    class_names: tuple[str, ...] = ()
    image_size: int = 8
    channels: int = 1

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[SourceSample]:
        for i in range(self.n):
            if i == self.fail_at:
                raise self.error
            yield SourceSample(torch.zeros((1, 8, 8), dtype=torch.uint8), 0, {"index": i})


@pytest.fixture(params=["file", "memory", "s3"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/ds"
    if request.param == "memory":
        return f"memory://writer-{tmp_path.name}/ds"
    return f"s3://{request.getfixturevalue('s3_bucket')}/ds"


def _names(url: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(url)
    return sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{path}/*"))


def test_failed_build_leaves_no_shard_and_no_manifest(url: str) -> None:
    with pytest.raises(RuntimeError, match="source broke"):
        write_dataset(FailingSource(13, RuntimeError("source broke")), url, shard_size=4, progress=False)
    assert _names(url) == []  # shards 0-2 were written, then removed


def test_storage_error_is_one_line_naming_the_url(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    with pytest.raises(DataError) as info:
        write_dataset(
            FailingSource(5, OSError(28, "No space left on device")), url, shard_size=4, progress=False
        )
    assert (
        str(info.value) == f"{url}: build failed, nothing kept (OSError: [Errno 28] No space left on device)"
    )
    assert list((tmp_path / "ds").iterdir()) == []


def test_unfinished_build_is_replaced_without_overwrite(
    url: str, make_dataset: Callable[..., Manifest], capsys: pytest.CaptureFixture[str]
) -> None:
    make_dataset(url, 30, 4)
    fs, path = fsspec.core.url_to_fs(url)
    fs.rm(f"{path}/manifest.json")  # as a build killed before its manifest leaves it
    manifest = make_dataset(url, 5, 4)
    assert capsys.readouterr().err == f"removing 8 shards of an unfinished build at {url}\n"
    assert _names(url) == ["manifest.json", "shard-000000.tar", "shard-000001.tar"]
    assert read_manifest(url) == manifest


def test_foreign_tar_files_need_overwrite(tmp_path: Path, make_dataset: Callable[..., Manifest]) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "mine.tar").write_bytes(b"")
    with pytest.raises(DataError, match=r"ds: holds mine\.tar, which is not a shard; pass --overwrite"):
        make_dataset(str(tmp_path / "ds"), 5, 4)
    assert (tmp_path / "ds" / "mine.tar").exists()
    make_dataset(str(tmp_path / "ds"), 5, 4, overwrite=True)
    assert not (tmp_path / "ds" / "mine.tar").exists()


def test_shard_size_must_be_positive(tmp_path: Path, make_dataset: Callable[..., Manifest]) -> None:
    with pytest.raises(DataError, match="--shard-size must be >= 1"):
        make_dataset(str(tmp_path / "ds"), 5, 0)
