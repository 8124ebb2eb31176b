"""Where the shards are: fsspec URLs, the dataset manifest, and the pure shard plan.

A dataset is a folder URL (`s3://bucket/prefix/train`, `file:///data/x`, a plain path, `memory://x`) holding
`manifest.json` plus webdataset tar shards. The manifest is the source of truth for what a reader should find:
per-shard sample counts, byte sizes and sha256, so truncation and corruption are detectable without an index.
Endpoints and credentials come from the standard AWS variables / fsspec config; nothing here prints them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from fsspec.core import url_to_fs

from orchestrator.cli_errors import utf8
from sphere_core.config import ConfigError, short_repr

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "sphere-wds/1"
T = TypeVar("T")


class DataError(ConfigError):
    """A bad data input or plan, reported as one line (a ConfigError, so CLIs and sweeps print it alike)."""


# --- URLs ------------------------------------------------------------------------------------------


def join_url(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def list_shards(url: str) -> list[str]:
    """Every `*.tar` directly under the dataset URL, as full URLs in sorted order."""
    fs, path = url_to_fs(url)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(join_url(path, "*.tar")))
    return [join_url(url, name) for name in names]


# --- manifest --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ShardInfo:
    name: str  # file name inside the dataset folder
    samples: int
    bytes: int
    sha256: str  # hex digest of the whole tar file


@dataclass(frozen=True, kw_only=True)
class Manifest:
    url: str  # the dataset folder it was read from / written to (not stored in the file)
    shards: tuple[ShardInfo, ...]
    class_names: tuple[str, ...]  # index = class id; empty for an unconditional dataset
    image_size: int  # every stored image is image_size x image_size
    channels: int  # 1 (grayscale) or 3 (RGB)
    source: str  # what it was built from, e.g. "builtin:mnist/train" or a folder path
    digest: str  # dataset_digest(shards): changes when any shard's bytes change

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def shard_url(self, shard: ShardInfo) -> str:
        return join_url(self.url, shard.name)

    def to_json(self) -> str:
        body: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "source": self.source,
            "image_size": self.image_size,
            "channels": self.channels,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "num_samples": self.num_samples,
            "digest": self.digest,
            "shards": [asdict(s) for s in self.shards],
        }
        return json.dumps(body, indent=1) + "\n"


def dataset_digest(shards: Sequence[ShardInfo]) -> str:
    """sha256 over the per-shard hex digests, in shard order."""
    return hashlib.sha256("".join(s.sha256 for s in shards).encode()).hexdigest()


def parse_manifest(text: str, url: str) -> Manifest:
    where = join_url(url, MANIFEST_NAME)
    try:
        body = json.loads(text)
        if body.get("format") != MANIFEST_FORMAT:
            raise DataError(f"{where}: format {short_repr(body.get('format'))}, expected {MANIFEST_FORMAT!r}")
        manifest = Manifest(
            url=url,
            shards=tuple(ShardInfo(**s) for s in body["shards"]),
            class_names=tuple(body["class_names"]),
            image_size=int(body["image_size"]),
            channels=int(body["channels"]),
            source=str(body["source"]),
            digest=str(body["digest"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{where}: not a valid manifest ({type(exc).__name__}: {exc})") from None
    for shard in manifest.shards:
        if not is_plain_name(shard.name):  # else `../../x` would read, and size, a file outside the dataset
            raise DataError(
                f"{where}: shard name {short_repr(shard.name)} is not a plain file name (allowed: a name "
                "inside the dataset folder, without '/', '\\' or '..')"
            )
    if manifest.digest != dataset_digest(manifest.shards):
        raise DataError(f"{where}: digest does not match its shard list (edited by hand?)")
    return manifest


def is_plain_name(name: object) -> bool:
    """A file name that stays in its folder on every fsspec backend: no separator, not `.` or `..`."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in ("/", "\\", "\0"))
    )


def read_manifest(url: str) -> Manifest:
    """The manifest of the dataset folder at `url` (DataError if missing or malformed)."""
    fs, path = url_to_fs(url)
    try:
        with fs.open(join_url(path, MANIFEST_NAME), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(
            f"{join_url(url, MANIFEST_NAME)}: not found; build the dataset first "
            "(python -m orchestrator.data build --source ... --out URL)"
        ) from None
    return parse_manifest(utf8(data, join_url(url, MANIFEST_NAME), DataError), url)


def write_manifest(manifest: Manifest) -> None:
    fs, path = url_to_fs(manifest.url)
    with fs.open(join_url(path, MANIFEST_NAME), "wt") as f:
        f.write(manifest.to_json())


# --- the shard plan (pure) -------------------------------------------------------------------------


def epoch_order(items: Sequence[T], *, seed: int, epoch: int) -> list[T]:
    """One shard permutation per (seed, epoch), identical on every rank: ranks see new shards each epoch."""
    order = list(items)
    random.Random(f"shards:{seed}:{epoch}").shuffle(order)
    return order


def assign_shards(urls: Sequence[T], rank: int, world_size: int, worker_id: int, num_workers: int) -> list[T]:
    """The shards read by one reader: DataLoader worker `worker_id` of Ray rank `rank`.

    Readers are numbered rank-major (rank * workers + worker_id) and take every readers-th shard, so the
    readers partition `urls` exactly. `num_workers` 0 means the rank reads in-process (one reader).
    """
    workers = max(num_workers, 1)
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world_size {world_size}")
    if not 0 <= worker_id < workers:
        raise DataError(f"worker_id {worker_id} is outside {workers} loader workers")
    readers = world_size * workers
    if len(urls) < readers:
        raise DataError(
            f"{len(urls)} shards for {readers} readers ({world_size} ranks x {workers} loader workers): "
            "some readers would get no data; rebuild with a smaller --shard-size or lower data.loader_workers"
        )
    return list(urls[rank * workers + worker_id :: readers])


def rank_shards(urls: Sequence[T], rank: int, world_size: int, num_workers: int) -> list[T]:
    """Every shard one rank reads, over all of its loader workers."""
    return [
        u for w in range(max(num_workers, 1)) for u in assign_shards(urls, rank, world_size, w, num_workers)
    ]


# --- epoch cursor (pure): which sample positions of which shard training has used ---------------------


def seen_count(bits: bytearray | None) -> int:
    return int.from_bytes(bits, "little").bit_count() if bits else 0


def seen_has(bits: bytearray | None, position: int) -> bool:
    return bits is not None and bool(bits[position >> 3] >> (position & 7) & 1)


def seen_add(seen: dict[str, bytearray], name: str, count: int, position: int) -> None:
    """Marks sample `position` of shard `name` (of `count` samples) as handed to training."""
    bits = seen.setdefault(name, bytearray((count + 7) // 8))
    bits[position >> 3] |= 1 << (position & 7)


def encode_seen(seen: Mapping[str, bytearray], counts: Mapping[str, int]) -> dict[str, str]:
    return {
        name: "all" if seen_count(bits) == counts[name] else base64.b64encode(bits).decode()
        for name, bits in sorted(seen.items())
    }


def decode_seen(seen: Mapping[str, str], counts: Mapping[str, int]) -> dict[str, bytearray]:
    out = {}
    for name, text in seen.items():
        if name not in counts:
            raise DataError(
                f"cursor names shard {short_repr(name)}, which the manifest does not list (another dataset?)"
            )
        size = (counts[name] + 7) // 8
        bits = bytearray(base64.b64decode(text)) if text != "all" else bytearray(b"\xff" * size)
        if len(bits) != size:
            raise DataError(f"cursor bitmap of {name} has {len(bits)} bytes, expected {size}")
        if text == "all" and counts[name] % 8:
            bits[-1] = (1 << counts[name] % 8) - 1  # no bits past the last sample
        out[name] = bits
    return out


def merge_cursors(cursors: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Union of every rank's cursor (same epoch and batch count), for the checkpoint all ranks resume from."""
    if len({(c["epoch"], c["batches"]) for c in cursors}) != 1:
        raise DataError(
            f"cursors disagree on (epoch, batches): {[(c['epoch'], c['batches']) for c in cursors]}"
        )
    seen: dict[str, str] = {}
    for cursor in cursors:
        for name, text in cursor["seen"].items():
            if text == "all" or seen.get(name) == "all":
                seen[name] = "all"
            elif name in seen:
                mine, theirs = base64.b64decode(seen[name]), base64.b64decode(text)
                seen[name] = base64.b64encode(
                    bytes(a | b for a, b in zip(mine, theirs, strict=True))
                ).decode()
            else:
                seen[name] = text
    return {
        "epoch": cursors[0]["epoch"],
        "batches": cursors[0]["batches"],
        "seen": dict(sorted(seen.items())),
    }
