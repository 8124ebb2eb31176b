"""Re-read every shard of a dataset against its manifest: bytes, sha256, sample count, decoding, key order.

One streaming pass per shard: the bytes are hashed as tarfile parses them, so a shard is read once. A shard
that stops parsing is drained to the end so its size and hash are still reported. Tars in the folder that
the manifest does not list are reported too (a stale build mixed with a new one).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from typing import IO

from fsspec.core import url_to_fs

from orchestrator.data.shards import Manifest, ShardInfo, list_shards, read_manifest
from orchestrator.data.sources import decode_sample

MAX_LISTED = 5  # problems listed per shard; the rest are counted
CHUNK = 1 << 20


@dataclass
class ShardReport:
    name: str
    samples: int = 0  # samples found (good or bad)
    bad_samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        self.problems.append(text)


@dataclass
class VerifyReport:
    manifest: Manifest
    shards: list[ShardReport]
    unlisted: list[str]  # tar files in the folder that the manifest does not name

    @property
    def bad_shards(self) -> list[str]:
        return [r.name for r in self.shards if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.bad_shards and not self.unlisted

    def lines(self) -> list[str]:
        m = self.manifest
        out = [
            f"{m.url}: {len(m.shards)} shards, {m.num_samples} samples, {m.image_size}px x {m.channels}ch, "
            f"{m.num_classes} classes, digest {m.digest[:16]}"
        ]
        for r in self.shards:
            head = f"  {'ok ' if r.ok else 'BAD'} {r.name}: {r.samples} samples"
            out.append(head if r.ok else f"{head}; {'; '.join(_capped(r.problems))}")
        out += [f"  BAD {name}: not listed in manifest.json" for name in self.unlisted]
        out.append(
            "verify: OK" if self.ok else f"verify: FAILED ({', '.join(self.bad_shards + self.unlisted)})"
        )
        return out


def _capped(problems: list[str]) -> list[str]:
    extra = len(problems) - MAX_LISTED
    return problems[:MAX_LISTED] + ([f"... and {extra} more"] if extra > 0 else [])


class _HashingReader:
    """A read-only file wrapper that hashes and counts every byte handed to tarfile."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _check_group(key: str, members: dict[str, bytes], manifest: Manifest, report: ShardReport) -> None:
    report.samples += 1
    try:
        decode_sample(members, manifest)
        if "json" in members:
            json.loads(members["json"])
    except ValueError as exc:  # JSONDecodeError is a ValueError
        report.bad_samples += 1
        report.problem(f"sample {key}: {exc}")


def _scan_tar(reader: _HashingReader, manifest: Manifest, report: ShardReport) -> None:
    seen: set[str] = set()
    key, members = "", dict[str, bytes]()
    with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
        for info in tar:
            if not info.isreg():
                report.problem(f"{info.name}: not a regular file")
                continue
            name_key, _, suffix = info.name.rpartition("/")[2].partition(".")
            data = tar.extractfile(info).read()
            if name_key != key:
                if members:
                    _check_group(key, members, manifest, report)
                if name_key in seen:
                    report.problem(f"key {name_key}: members not contiguous (interleaved samples)")
                elif key and name_key < key:
                    report.problem(f"key {name_key} after {key}: keys not sorted")
                seen.add(name_key)
                key, members = name_key, {}
            if suffix in members:
                report.problem(f"{info.name}: duplicate member")
            members[suffix] = data
        if members:
            _check_group(key, members, manifest, report)


def check_shard(manifest: Manifest, shard: ShardInfo) -> ShardReport:
    """Read one shard end to end and list everything that disagrees with the manifest."""
    report = ShardReport(shard.name)
    fs, path = url_to_fs(manifest.shard_url(shard))
    try:
        f = fs.open(path, "rb")
    except FileNotFoundError:
        report.problem("missing")
        return report
    with f:
        reader = _HashingReader(f)
        try:
            _scan_tar(reader, manifest, report)
        except (tarfile.TarError, EOFError, OSError) as exc:
            report.problem(f"tar stops parsing after {report.samples} samples ({type(exc).__name__}: {exc})")
        reader.drain()
    if reader.size != shard.bytes:
        report.problem(f"{reader.size} bytes, manifest says {shard.bytes} (truncated or rewritten)")
    if reader.sha.hexdigest() != shard.sha256:
        report.problem("sha256 differs from the manifest")
    if report.samples != shard.samples:
        report.problem(f"{report.samples} samples, manifest says {shard.samples}")
    return report


def verify_dataset(url: str) -> VerifyReport:
    manifest = read_manifest(url)
    listed = {s.name for s in manifest.shards}
    unlisted = [u.rsplit("/", 1)[-1] for u in list_shards(url) if u.rsplit("/", 1)[-1] not in listed]
    return VerifyReport(manifest, [check_shard(manifest, s) for s in manifest.shards], unlisted)
