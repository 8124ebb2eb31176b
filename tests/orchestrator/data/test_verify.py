from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

from orchestrator.data.shards import Manifest
from orchestrator.data.verify import check_shard, verify_dataset


def test_clean_dataset_verifies(tmp_path: Path, make_dataset: Callable[..., Manifest]) -> None:
    make_dataset(str(tmp_path / "ds"), 25, 10)
    report = verify_dataset(str(tmp_path / "ds"))
    assert report.ok and [r.samples for r in report.shards] == [10, 10, 5]
    assert report.lines()[-1] == "verify: OK"


def test_truncated_and_poisoned_shards_are_named(
    tmp_path: Path, make_dataset: Callable[..., Manifest], corrupt: Callable[[Manifest], tuple[str, str]]
) -> None:
    manifest = make_dataset(str(tmp_path / "ds"), 40, 10)
    truncated, poisoned = corrupt(manifest)
    report = verify_dataset(manifest.url)
    assert not report.ok and report.bad_shards == [truncated, poisoned]
    by_name = {r.name: r for r in report.shards}
    assert any("truncated or rewritten" in p for p in by_name[truncated].problems)
    assert any("manifest says 10" in p for p in by_name[truncated].problems)  # fewer samples found
    bad = by_name[poisoned]
    assert bad.samples == 10 and bad.bad_samples == 1
    assert "sample 00000023: not a decodable image" in "; ".join(bad.problems)
    assert "sha256 differs" in "; ".join(bad.problems)
    assert report.lines()[-1] == f"verify: FAILED ({truncated}, {poisoned})"


def test_interleaved_keys_and_stray_shards_are_reported(
    tmp_path: Path, make_dataset: Callable[..., Manifest]
) -> None:
    manifest = make_dataset(str(tmp_path / "ds"), 20, 10)
    shard_path = tmp_path / "ds" / manifest.shards[0].name
    with tarfile.open(shard_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    members[1], members[3] = members[3], members[1]  # 00000000.json <-> 00000001.cls: keys interleave
    with tarfile.open(shard_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "ds" / "shard-000099.tar").write_bytes(b"")
    report = verify_dataset(manifest.url)
    assert report.unlisted == ["shard-000099.tar"]
    problems = "; ".join(check_shard(manifest, manifest.shards[0]).problems)
    assert "key 00000000: members not contiguous" in problems
    assert "shard-000099.tar: not listed in manifest.json" in "\n".join(report.lines())
