"""Frozen feature extractors, each named and versioned by the sha256 of its weights.

Every extractor maps images (B, C, H, W) in [0, 1] to (features, logits) and carries what the protocol
fingerprint needs: `name`, `weights_sha256`, and `preprocess` (how it resizes/normalises its input).
    clf-<dataset>  the project's classifier (classifier.py), committed under weights/ -> metrics `*_clf`
    inception      FID Inception-v3 from a user-supplied file or fsspec URL          -> metrics `*_inception`
Nothing is ever downloaded. `forward` returns features only, so an extractor can be passed straight to
torchmetrics (`FrechetInceptionDistance(feature=extractor, normalize=True)`).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import fsspec
import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.evaluation.classifier import (
    IMAGE_SIZE,
    WEIGHTS_DIR,
    ClassifierCard,
    SmallClassifier,
    to_metric_geometry,
)
from orchestrator.evaluation.inception import FID_INPUT_SIZE, POOL_FEATURES, FIDInceptionV3

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's release asset


class FeatureExtractor(nn.Module):
    """A frozen network; subclasses set the attributes and implement `features_and_logits`."""

    name: str
    tag: str  # metric-name suffix: fd_<tag>, kid_<tag>, ...
    weights_sha256: str
    preprocess: str  # human-readable resize/normalisation rule, part of the fingerprint
    num_features: int  # torchmetrics reads this instead of probing with a (1, 3, 299, 299) tensor
    # Whether the logits are over the dataset's own classes (so a sample's class can be checked):
    # the committed classifiers, not Inception's 1008 ImageNet classes.
    classifies_dataset: bool = False

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[0]


class ClassifierExtractor(FeatureExtractor):
    tag = "clf"
    classifies_dataset = True

    def __init__(self, net: SmallClassifier, *, name: str, weights_sha256: str) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.name, self.weights_sha256 = name, weights_sha256
        self.num_features = net.num_features
        self.preprocess = (
            f"1ch [0,1], bilinear to {IMAGE_SIZE}px unless {IMAGE_SIZE} (sphere_core.transforms.resize)"
        )

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[1] != 1 or images.shape[2] != images.shape[3]:
            raise ValueError(
                f"{self.name} takes square 1-channel images (B, 1, S, S), got {tuple(images.shape)}"
            )
        x = to_metric_geometry(images.float())  # (B, 1, 32, 32)
        features = self.net.features(x)  # (B, 128)
        return features, self.net.head(features)  # (B, 10) logits


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_classifier(dataset: str, *, weights_dir: Path = WEIGHTS_DIR) -> ClassifierExtractor:
    """The committed classifier for `dataset`; refuses weights whose sha256 differs from the JSON card."""
    card_path = weights_dir / f"clf-{dataset}.json"
    if not card_path.exists():
        raise FileNotFoundError(
            f"no metric classifier for {dataset!r} in {weights_dir}: "
            f"run `python -m orchestrator.evaluation train-classifier --dataset {dataset}`"
        )
    card = ClassifierCard.read(card_path)
    data = (weights_dir / f"{card.name}.pt").read_bytes()
    if sha256_bytes(data) != card.sha256:
        raise ValueError(f"{card.name}.pt does not match the sha256 recorded in {card_path.name}")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    net = SmallClassifier(num_classes=state["head.weight"].shape[0])
    net.load_state_dict(state)
    return ClassifierExtractor(net, name=card.name, weights_sha256=card.sha256)


# --- Inception (FID)


class InceptionExtractor(FeatureExtractor):
    tag = "inception"

    def __init__(self, net: FIDInceptionV3, *, weights_sha256: str) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.name, self.weights_sha256 = "inception-2015-12-05", weights_sha256
        self.num_features = POOL_FEATURES
        # pytorch-fid's input rule; torch-fidelity/clean-fid resize differently, so values differ slightly
        self.preprocess = f"gray->rgb, torch bilinear {FID_INPUT_SIZE}px align_corners=False, 2x-1"

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey -> RGB by repetition
        size = (FID_INPUT_SIZE, FID_INPUT_SIZE)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # (B, 3, 299, 299)
        return self.net(x * 2 - 1)  # (B, 2048), (B, 1008)


def check_inception_layout(state: dict[str, torch.Tensor]) -> None:
    """Raise with the exact differences if `state` is not an FID Inception-v3 state_dict.

    BatchNorm's `num_batches_tracked` counters are optional (older exports omit them, they are unused).
    """
    expected = {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}

    def relevant(keys: set[str]) -> set[str]:
        return {k for k in keys if not k.endswith("num_batches_tracked")}

    missing = sorted(relevant(expected.keys() - given.keys()))
    unexpected = sorted(relevant(given.keys() - expected.keys()))
    shapes = sorted(
        f"{k}: {given[k]} != {expected[k]}" for k in expected.keys() & given.keys() if given[k] != expected[k]
    )
    if missing or unexpected or shapes:
        raise ValueError(
            f"not an FID Inception-v3 state_dict ({INCEPTION_FILE} layout): "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}), shape mismatches {shapes[:5]} ({len(shapes)})"
        )


def load_inception(url: str) -> InceptionExtractor:
    """FID Inception-v3 from a local path or any fsspec URL (s3://..., file://...); never downloads
    from the internet on its own. The file is pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`."""
    with fsspec.open(url, "rb") as f:
        data = f.read()
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    check_inception_layout(state)
    net = FIDInceptionV3()
    net.load_state_dict(state, strict=False)  # strictness already enforced above, minus BN counters
    return InceptionExtractor(net, weights_sha256=sha256_bytes(data))
