"""Source -> webdataset tar shards + manifest.json at any fsspec URL.

Layout: `shard-000000.tar`, ... each holding `<key>.cls` (ASCII class id), `<key>.json` (small metadata) and
`<key>.png`, with keys the zero-padded global sample index, so keys are sorted and each sample's members
are contiguous. Tar headers carry no timestamps or owners, so the same source gives byte-identical shards
and the same dataset digest. Each shard is written to a local temp file, hashed, then uploaded; the
manifest is written last, so an interrupted build leaves no readable dataset behind. A build that fails
removes the shards it wrote; shards without a manifest (a build that was killed) are replaced by the next
build, while a folder with a manifest is only replaced with `overwrite`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from tqdm import tqdm

from orchestrator.data.shards import (
    MANIFEST_NAME,
    DataError,
    Manifest,
    ShardInfo,
    dataset_digest,
    join_url,
    write_manifest,
)
from orchestrator.data.sources import Source, SourceSample, encode_png

SHARD_NAME = re.compile(r"shard-\d{6}\.tar")  # what shard_name writes
KEY_DIGITS = 8  # keys "00000000".."99999999": sorted as text and as numbers
CHUNK = 1 << 20  # bytes per read when hashing


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # no timestamps: reproducible bytes
    tar.addfile(info, io.BytesIO(data))


def _write_tar(
    path: Path, samples: list[SourceSample], first_index: int, class_names: tuple[str, ...]
) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for offset, sample in enumerate(samples):
            key = f"{first_index + offset:0{KEY_DIGITS}d}"
            meta = dict(sample.meta)
            if class_names:
                meta["class_name"] = class_names[sample.class_id]
            # members in sorted suffix order: cls < json < png
            _add_member(tar, f"{key}.cls", str(sample.class_id).encode())
            _add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
            _add_member(tar, f"{key}.png", encode_png(sample.image))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _chunks(samples: Iterator[SourceSample], size: int) -> Iterator[list[SourceSample]]:
    while chunk := list(islice(samples, size)):
        yield chunk


def _tars(fs: AbstractFileSystem, path: str) -> tuple[list[str], list[str]]:
    """(shards a build wrote, other .tar files) directly under `path`."""
    tars = sorted(fs.glob(join_url(path, "*.tar")))
    shards = [t for t in tars if SHARD_NAME.fullmatch(t.rsplit("/", 1)[-1])]
    return shards, [t for t in tars if t not in shards]


def _prepare_output(out_url: str, overwrite: bool) -> None:
    fs, path = url_to_fs(out_url)
    manifest = join_url(path, MANIFEST_NAME)
    shards, others = _tars(fs, path)
    if fs.exists(manifest):
        if not overwrite:
            raise DataError(
                f"{out_url}: already holds a dataset ({len(shards) + len(others) + 1} files); "
                "pass --overwrite to replace"
            )
        fs.rm(manifest)  # first: a removal cut short then reads as an unfinished build, never as a dataset
    elif others and not overwrite:
        # only our own shard names are removed unasked: other .tar files may be someone's data
        name = others[0].rsplit("/", 1)[-1]
        raise DataError(f"{out_url}: holds {name}, which is not a shard; pass --overwrite to replace it")
    elif shards:
        print(f"removing {len(shards)} shards of an unfinished build at {out_url}", file=sys.stderr)
    if shards or others:
        fs.rm([*shards, *others])
    fs.makedirs(path, exist_ok=True)


def _check_sample(sample: SourceSample, source: Source) -> None:
    expected = (source.channels, source.image_size, source.image_size)
    if tuple(sample.image.shape) != expected:
        raise DataError(
            f"{source.name}: sample {sample.meta} has shape {tuple(sample.image.shape)}, expected {expected}"
        )
    if source.class_names and not 0 <= sample.class_id < len(source.class_names):
        raise DataError(
            f"{source.name}: sample {sample.meta} has class id {sample.class_id} outside the class names"
        )


def _write_shards(
    source: Source, fs: AbstractFileSystem, path: str, out_url: str, shard_size: int, progress: bool
) -> list[ShardInfo]:
    shards: list[ShardInfo] = []
    bar = tqdm(total=len(source), unit="img", desc=f"build {out_url}", file=sys.stderr, disable=not progress)
    with tempfile.TemporaryDirectory(prefix="sphere-shards-") as tmp, bar:
        for index, samples in enumerate(_chunks(iter(source), shard_size)):
            for sample in samples:
                _check_sample(sample, source)
            local = Path(tmp) / shard_name(index)
            _write_tar(local, samples, index * shard_size, source.class_names)
            fs.put_file(str(local), join_url(path, local.name))
            shards.append(
                ShardInfo(
                    name=local.name, samples=len(samples), bytes=local.stat().st_size, sha256=_sha256(local)
                )
            )
            local.unlink()
            bar.update(len(samples))
    return shards


def _remove_partial(fs: AbstractFileSystem, path: str) -> None:
    """Best effort: a failure here must not hide the build's own error, and the next build cleans up."""
    with contextlib.suppress(Exception):
        fs.rm([*_tars(fs, path)[0], *fs.glob(join_url(path, MANIFEST_NAME))])


def write_dataset(
    source: Source, out_url: str, *, shard_size: int, overwrite: bool = False, progress: bool = True
) -> Manifest:
    """Write `source` as shards of `shard_size` samples plus manifest.json under `out_url`."""
    if shard_size < 1:
        raise DataError(f"--shard-size must be >= 1, got {shard_size}")
    if len(source) == 0:
        raise DataError(f"{source.name}: no samples")
    _prepare_output(out_url, overwrite)
    fs, path = url_to_fs(out_url)
    try:
        shards = _write_shards(source, fs, path, out_url, shard_size, progress)
        manifest = Manifest(
            url=out_url,
            shards=tuple(shards),
            class_names=source.class_names,
            image_size=source.image_size,
            channels=source.channels,
            source=source.name,
            digest=dataset_digest(shards),
        )
        write_manifest(manifest)
    except BaseException as exc:  # Ctrl-C included: nothing half-written stays
        _remove_partial(fs, path)
        if isinstance(exc, OSError):  # storage (disk full, S3 denied): the user's to fix, so one line
            raise DataError(f"{out_url}: build failed, nothing kept ({type(exc).__name__}: {exc})") from None
        raise
    return manifest
