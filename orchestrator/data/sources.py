"""What a dataset is built from: an image folder or a JSON-lines list, plus the PNG codec shards use.

Every source yields `SourceSample`s whose image is already uint8 (C, image_size, image_size), so the writer
only encodes. Input problems (missing folder, bad JSON line, unreadable image) raise one DataError naming
the file and line, before any shard is written where that can be checked up front.

A source reads only inside its root: a folder's symlinks (class folders and files) must resolve inside the
folder, and a list's image paths (relative, `..` or absolute) inside the list's folder, so a dataset
handed over by someone else cannot pull in files from elsewhere on the machine that builds it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from orchestrator.cli_errors import utf8
from orchestrator.data.shards import DataError, Manifest
from sphere_core.config import short_repr
from sphere_core.transforms import fit_square, hwc_to_chw

MIN_IMAGE_PX = 8  # smaller images (icons, 1x1 spacers) carry next to nothing to resize up from
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
PIL_MODE = {1: "L", 3: "RGB"}


@dataclass(frozen=True)
class SourceSample:
    image: torch.Tensor  # uint8 (C, H, W) at the source's image_size
    class_id: int  # 0 for unconditional sources
    meta: dict[str, Any] = field(default_factory=dict)  # stored as the sample's .json (small)


class Source(Protocol):
    name: str  # recorded as the manifest's `source`
    class_names: tuple[str, ...]  # empty = unconditional
    image_size: int
    channels: int

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[SourceSample]: ...


# --- PNG codec -------------------------------------------------------------------------------------


def encode_png(image: torch.Tensor) -> bytes:
    """uint8 (C, H, W) with C in {1, 3} -> PNG bytes (lossless, deterministic for a given Pillow)."""
    array = image.permute(1, 2, 0).numpy()  # (H, W, C)
    buf = io.BytesIO()
    Image.fromarray(array[:, :, 0] if image.shape[0] == 1 else array).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes, channels: int) -> torch.Tensor:
    """Image bytes -> uint8 (C, H, W); ValueError if they do not decode or hold another channel count."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            array = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"not a decodable image ({type(exc).__name__})") from None
    if mode != PIL_MODE[channels]:
        raise ValueError(f"image mode {mode}, expected {PIL_MODE[channels]} ({channels} channels)")
    return hwc_to_chw(torch.from_numpy(array.copy()))


def decode_sample(sample: Mapping[str, Any], manifest: Manifest) -> tuple[torch.Tensor, int]:
    """A tar sample's members -> (uint8 (C, H, W), class id) checked against the manifest, or ValueError."""
    missing = [suffix for suffix in ("png", "cls") if suffix not in sample]
    if missing:
        raise ValueError(f"missing member(s) {', '.join(missing)}")
    image = decode_png(sample["png"], manifest.channels)
    if tuple(image.shape[-2:]) != (manifest.image_size, manifest.image_size):
        raise ValueError(f"image is {tuple(image.shape[-2:])}, manifest says {manifest.image_size} px")
    try:
        label = int(sample["cls"])
    except ValueError:
        raise ValueError(f"cls {sample['cls'][:20]!r} is not an integer") from None
    if not 0 <= label < max(manifest.num_classes, 1):
        raise ValueError(f"class id {label} outside [0, {max(manifest.num_classes, 1)})")
    return image, label


def load_image(path: Path, channels: int, image_size: int) -> torch.Tensor:
    """An image file -> uint8 (C, image_size, image_size): converted, shorter side resized, center cropped."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            small = min(width, height) < MIN_IMAGE_PX  # refused below, outside this handler of PIL's errors
            array = None if small else np.asarray(img.convert(PIL_MODE[channels]))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # the warning arrives here only where warnings are errors; PIL's limit itself is left as it is
        raise DataError(f"{path}: image too large ({_bomb_reason(exc)}); skip it or resize it") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # how PIL reports corrupt or truncated bytes, by format and by where they break
        # (UnidentifiedImageError is an OSError)
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    if array is None:
        raise DataError(
            f"{path}: image is {width}x{height} px (allowed: at least {MIN_IMAGE_PX}x{MIN_IMAGE_PX} px)"
        )
    return fit_square(hwc_to_chw(torch.from_numpy(array.copy())), image_size)


def _bomb_reason(exc: Exception) -> str:
    """PIL's "Image size (N pixels) exceeds limit of M pixels, ..." as "N pixels > PIL limit M"."""
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(exc))
    return f"{found[1]} pixels > PIL limit {found[2]}" if found else str(exc)


# --- sources ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    path: Path
    class_id: int
    meta: dict[str, Any]


@dataclass
class FileListSource:
    """Images on local disk with known class ids; built by `image_folder` or `json_lines`."""

    name: str
    class_names: tuple[str, ...]
    image_size: int
    channels: int
    entries: list[_Entry]

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[SourceSample]:
        for entry in self.entries:
            yield SourceSample(
                load_image(entry.path, self.channels, self.image_size), entry.class_id, entry.meta
            )


def shuffled(source: FileListSource, *, seed: int = 0) -> FileListSource:
    """The same images in a seeded random order. Folders and lists come grouped by class, and shards
    written in that order hold one or two classes each: a reader's bounded shuffle buffer then yields
    class-skewed batches, and evaluation's real-image pools (read shard by shard) would be skewed too."""
    entries = list(source.entries)
    random.Random(seed).shuffle(entries)
    return dataclasses.replace(source, entries=entries)


def _inside(path: Path, root: Path) -> Path:
    """`path`, unless it is a symlink that resolves outside `root` (resolved): then a DataError naming it.
    Only symlinks need resolving: every entry on the way down is checked, so none of its parents is one
    that leads out."""
    if path.is_symlink() and not path.resolve().is_relative_to(root):
        raise DataError(f"{path}: a symlink that resolves outside the source folder {root}; copy the file in")
    return path


def _images_under(folder: Path, root: Path) -> list[Path]:
    """Image files under `folder`; a symlink (file or folder) out of `root` is refused, not skipped (rglob
    lists a symlinked folder without descending into it)."""
    entries = (_inside(p, root) for p in folder.rglob("*"))
    return sorted(p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_folder(root: str | Path, *, image_size: int, channels: int = 3) -> FileListSource:
    """One subfolder per class (ids in sorted name order), or a flat folder of images (unconditional);
    every symlink in it must resolve inside it."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    inside = root.resolve()
    class_dirs = sorted(
        _inside(p, inside) for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    loose = [_inside(p, inside) for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if class_dirs and loose:
        raise DataError(
            f"{root}: has both class subfolders and loose images ({loose[0].name}); pick one layout"
        )
    if class_dirs:
        entries = [
            _Entry(path, class_id, {"path": str(path.relative_to(root))})
            for class_id, folder in enumerate(class_dirs)
            for path in _images_under(folder, inside)
        ]
        class_names = tuple(d.name for d in class_dirs)
    else:
        entries = [_Entry(path, 0, {"path": path.name}) for path in sorted(loose)]
        class_names = ()
    if not entries:
        raise DataError(f"{root}: no images found (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    return FileListSource(str(root), class_names, image_size, channels, entries)


def _parse_line(line: str, where: str, base: Path) -> tuple[_Entry, str | None]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(row, dict) or "image_path" not in row or "class_id" not in row:
        raise DataError(f"{where}: expected an object with class_id and image_path")
    class_id, image_path = row["class_id"], row["image_path"]
    if not isinstance(class_id, int) or isinstance(class_id, bool) or class_id < 0:
        raise DataError(f"{where}: class_id must be an integer >= 0, got {short_repr(class_id)}")
    if not isinstance(image_path, str) or not image_path:
        raise DataError(f"{where}: image_path must be a non-empty string")
    if row.get("is_absolute_path", False):
        # The official lists of ImageNet name images anywhere this way; the list says so per entry.
        path = Path(image_path)
        if not path.is_absolute():
            raise DataError(
                f"{where}: image {short_repr(image_path)} has is_absolute_path: true but is relative "
                "(allowed: an absolute path, or is_absolute_path: false for a path inside the list's folder)"
            )
    else:
        path = base / image_path
        if not path.resolve().is_relative_to(base.resolve()):  # `..`, an absolute path or a symlink out
            raise DataError(
                f"{where}: image {short_repr(image_path)} resolves outside the list's folder {base} "
                "(allowed: paths inside it, or an absolute path marked is_absolute_path: true)"
            )
    if not path.is_file():
        raise DataError(f"{where}: image {path} not found")
    name = row.get("class_name")
    return _Entry(path, class_id, {"path": image_path}), (str(name) if name is not None else None)


def json_lines(list_path: str | Path, *, image_size: int, channels: int = 3) -> FileListSource:
    """The official list format, one {"class_id", "class_name", "image_path", "is_absolute_path"} per line;
    an image path not marked absolute must resolve inside the list's folder (no `..` or symlink out)."""
    list_path = Path(list_path)
    if not list_path.is_file():
        raise DataError(f"{list_path}: no such file")
    entries: list[_Entry] = []
    names: dict[int, str] = {}
    for lineno, line in enumerate(
        utf8(list_path.read_bytes(), str(list_path), DataError).splitlines(), start=1
    ):
        if not line.strip():
            continue
        where = f"{list_path}:{lineno}"
        entry, name = _parse_line(line, where, list_path.parent)
        if name is not None and names.setdefault(entry.class_id, name) != name:
            raise DataError(
                f"{where}: class_id {entry.class_id} named {short_repr(name)}, earlier "
                f"{short_repr(names[entry.class_id])}"
            )
        entries.append(entry)
    if not entries:
        raise DataError(f"{list_path}: no entries")
    num_classes = max(e.class_id for e in entries) + 1
    class_names = tuple(names.get(i, str(i)) for i in range(num_classes))
    return FileListSource(str(list_path), class_names, image_size, channels, entries)
