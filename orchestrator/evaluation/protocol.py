"""The pinned evaluation protocol: one extractor, one reference, one n, one fingerprint.

FD-like numbers move with the extractor weights, the reference set, n (FD is biased by n), the seeds and
the quantisation of the images, so every number leaves with a fingerprint over all of them and beside
its real-vs-real floor at the same n. Numbers with different fingerprints are not comparable
(`require_comparable`, which registry promotion calls). Runs with n below the dataset's standard n are
marked `proxy` (in-loop estimates, never leaderboard numbers).

    protocol = Protocol.for_dataset("digits")                     # clf-digits, n = 594 held-out images
    result = evaluate_samples(images01, protocol=protocol.with_sampler(steps=4, cfg=1.5))
    result.values["fd_clf"], result.floor["fd_clf"], result.fingerprint

Over 300 lines because the fingerprint must cover every element it pins, so the elements, their
digests and the comparability check stay in one reviewable file.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torchmetrics

from orchestrator.config import metric_names
from orchestrator.data.registry import BUILTINS
from orchestrator.evaluation import classifier, features, metrics, pixels, reference
from orchestrator.evaluation.classifier import LabelledImages, load_split
from orchestrator.evaluation.features import FeatureExtractor, load_classifier
from orchestrator.evaluation.metrics import (
    GaussianStats,
    class_accuracy,
    class_spread,
    frechet_distance,
    inception_score,
    kid,
    precision_recall,
)
from orchestrator.evaluation.pixels import COPY_QUANTILE, PixelSpace
from orchestrator.evaluation.reference import (
    ReferenceStats,
    cache_read,
    cache_write,
    default_cache,
    extract,
    reference_stats,
)


def code_digest(sources: Iterable[str]) -> str:
    """A digest of Python sources' code, their docstrings and comments aside: what changes it can change what
    the code computes."""
    digest = hashlib.sha256()
    for source in sources:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            first = body[0] if isinstance(body, list) and body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined,index]
        digest.update(ast.dump(tree).encode())
    return digest.hexdigest()[:12]


@functools.cache
def protocol_version() -> str:
    """The evaluator's version in every fingerprint: the digest of the code that turns images into numbers
    (this module, the metric math, the pixel space, reference statistics, feature extraction, the declared
    scores), so a change that could move a value also invalidates every cached floor and reference; nothing
    to bump by hand."""
    modules = (metrics, pixels, reference, features, classifier, metric_names, sys.modules[__name__])
    return code_digest(inspect.getsource(module) for module in modules)


# How `recon_*` images are made, by every caller (training's eval and `evaluate`): the official rFID's
# D(f(E(x))) with the null class and no noise. With the true labels the label alone carries the class, and
# a poor autoencoder's reconstructions would still score near the floor.
RECONSTRUCTION = "D(f(E(x, null)), null), no noise"
# What was scored -> its metric names (fd_clf for samples, recon_fd_clf for reconstructions).
KINDS: dict[str, Callable[[str], str]] = {
    "samples": lambda name: name,
    "reconstructions": metric_names.of_reconstructions,
}
SamplerValue = str | int | float | bool


class ProtocolMismatch(ValueError):
    """Two metric results were produced under different protocols (or one is a proxy)."""


@dataclass(frozen=True, kw_only=True)
class MetricResult:
    values: dict[
        str, float
    ]  # e.g. fd_clf, kid_clf, kid_clf_std, is_clf, is_clf_std, precision_clf, recall_clf
    floor: dict[str, float]  # the same metrics, real train images vs the reference at the same n (mean)
    floor_std: dict[str, float]  # their spread over the floor's draws: differences below it are noise
    fingerprint: str
    n: int
    proxy: bool  # n below the dataset's standard n: an in-loop estimate only

    def flat(self) -> dict[str, float]:
        """One dict for a metric sink: values, `<name>_floor`, `<name>_floor_std`; under `proxy/` if proxy."""
        out = {
            **self.values,
            **{metric_names.floor(k): v for k, v in self.floor.items()},
            **{metric_names.floor_std(k): v for k, v in self.floor_std.items()},
        }
        return {self.key(k): v for k, v in out.items()}

    def key(self, name: str) -> str:
        """The name a sink logs `name` under: `proxy/<name>` for a proxy result."""
        return metric_names.under_protocol(name, proxy=self.proxy)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MetricResult:
        return cls(**json.loads(text))


def comparable(a: MetricResult, b: MetricResult) -> bool:
    return a.fingerprint == b.fingerprint


def require_comparable(a: MetricResult, b: MetricResult, *, allow_proxy: bool = False) -> None:
    """Raise ProtocolMismatch unless a and b were measured under the same protocol."""
    if not comparable(a, b):
        raise ProtocolMismatch(
            f"metric protocols differ (fingerprint {a.fingerprint[:12]} vs {b.fingerprint[:12]}): "
            "re-evaluate both under one Protocol before comparing"
        )
    if not allow_proxy and (a.proxy or b.proxy):
        raise ProtocolMismatch(f"proxy result (n={min(a.n, b.n)}): evaluate at the standard n to compare")


@dataclass(frozen=True, kw_only=True, eq=False)
class Protocol:
    """Everything that fixes a metric value. Build with `for_dataset`; vary sampling with `with_sampler`."""

    dataset: str  # a built-in's name, or shards-<reference digest>-<floor digest>
    extractor: FeatureExtractor
    reference: ReferenceStats  # the real held-out split
    real: LabelledImages  # that split's images (uint8) and labels: reconstructions start from them
    # real-vs-real at this n: mean over draws of train images (never the reference); acc_<tag>: the
    # classifier's accuracy on the whole reference split, the most a generator's samples can expect;
    # spread_<tag>: the train draws' within-class spread relative to the reference's, measured like the rest
    floor: dict[str, float]
    floor_std: dict[str, float]  # std over those draws (FD of one draw of 1,000 MNIST images: 33..61)
    n: int  # samples per evaluation: fixed, because FD is biased by n
    standard_n: int  # the dataset's leaderboard n; n < standard_n marks results as proxy
    seed: int = 0  # KID subsets, IS shuffle, the floor's train subsets
    floor_draws: int = 5
    quantize: bool = True  # round to 1/255 steps, as saving PNGs would
    kid_subsets: int = 50
    kid_subset_size: int = 500
    pr_k: int = 3  # neighbours defining the k-NN manifolds
    is_splits: int = 10
    sampler: tuple[tuple[str, SamplerValue], ...] = field(default=())  # generation settings, sorted
    pixels: PixelSpace | None = None  # fd_pix and memorisation, for images small enough (pixels.py)

    @property
    def proxy(self) -> bool:
        """Below the dataset's standard n: an in-loop estimate, logged under `proxy/`."""
        return self.n < self.standard_n

    def key(self, name: str) -> str:
        """The name a result of this protocol logs `name` under (`proxy/fd_clf` for a proxy)."""
        return metric_names.under_protocol(name, proxy=self.proxy)

    def describe(self, kind: str = "samples") -> dict[str, Any]:
        """The fingerprinted elements, JSON-able (log them as run params)."""
        return {
            "evaluator": f"orchestrator.evaluation/{protocol_version()}",
            "torchmetrics": torchmetrics.__version__,
            "kind": kind,
            "dataset": self.dataset,
            "extractor": self.extractor.name,
            "extractor_sha256": self.extractor.weights_sha256,
            "preprocess": self.extractor.preprocess,
            "quantize": "uint8" if self.quantize else "none",
            "reference_sha256": self.reference.sha256,
            "reference_n": self.reference.n,
            "image_shape": list(self.reference.image_shape),
            "n": self.n,
            "seed": self.seed,
            "kid": [self.kid_subsets, self.kid_subset_size, "poly3"],
            "pr_k": self.pr_k,
            "is_splits": self.is_splits,
            "floor_draws": self.floor_draws,
            "sampler": dict(self.sampler),
            **({"reconstruction": RECONSTRUCTION} if kind == "reconstructions" else {}),
            **({"pixels": self.pixels.describe()} if self.pixels is not None else {}),
        }

    def fingerprint(self, kind: str = "samples") -> str:
        return hashlib.sha256(json.dumps(self.describe(kind), sort_keys=True).encode()).hexdigest()

    def with_sampler(self, **settings: SamplerValue) -> Protocol:
        """The same protocol for samples drawn with these settings (steps, cfg, seed, ...)."""
        return dataclasses.replace(self, sampler=tuple(sorted({**dict(self.sampler), **settings}.items())))

    @classmethod
    def for_dataset(
        cls,
        dataset: str,
        *,
        n: int | None = None,
        image_size: int | None = None,
        extractor: FeatureExtractor | None = None,
        reference: LabelledImages | None = None,
        floor_source: torch.Tensor | None = None,
        floor_labels: torch.Tensor | None = None,
        seed: int = 0,
        cache: str | None = None,
    ) -> Protocol:
        """Built-in datasets need only the name: the committed classifier, the held-out split as
        reference and the train split for the floor, at `image_size` (the size the model generates;
        default: the data plane's default for the dataset). Other data pass `extractor` (e.g.
        Inception), the `reference` images (N, C, H, W) uint8 with labels and `floor_source` images
        with their `floor_labels` (`protocol_for` reads both from shards). cache: directory/fsspec URL
        (default $SPHERE_EVAL_CACHE or ~/.cache/sphere-orchestrator/evaluation)."""
        cache = cache or default_cache()
        extractor = extractor or load_classifier(dataset)
        real = reference if reference is not None else load_split(dataset, "test", image_size)
        ref = reference_stats(real.images, extractor=extractor, cache=cache)
        standard_n = BUILTINS[dataset].test_size if dataset in BUILTINS else ref.n
        n = n or standard_n
        protocol = cls(
            dataset=dataset,
            extractor=extractor,
            reference=ref,
            real=real,
            floor={},
            floor_std={},
            n=n,
            standard_n=standard_n,
            seed=seed,
            kid_subset_size=min(1000, max(2, n // 2)),  # < n, so subsets differ and KID gets a spread
        )
        if floor_source is None:
            train = load_split(dataset, "train", image_size)
            floor_source, floor_labels = train.images, train.labels
        if metric_names.has_pixel_space(ref.image_shape):
            protocol = dataclasses.replace(protocol, pixels=PixelSpace.fit(floor_source, real.images))
        classes = floor_labels if extractor.classifies_dataset else None
        floor, floor_std = _floor(protocol, floor_source, cache, labels=classes)
        if extractor.classifies_dataset:
            # What real digits score: the classifier's accuracy on the held-out split itself (on the train
            # draws it would be the accuracy on its own training images).
            acc = f"acc_{extractor.tag}"
            floor[acc] = class_accuracy(extract(extractor, real.images)[1], real.labels)
            floor_std[acc] = 0.0
        return dataclasses.replace(protocol, floor=floor, floor_std=floor_std)


def _floor(
    protocol: Protocol, images: torch.Tensor, cache: str, labels: torch.Tensor | None = None
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and std of the metrics of `floor_draws` seeded draws of n real train images against the
    reference (with their `labels`, the class metrics too); cached by fingerprint."""
    name = f"floor-{protocol.fingerprint('floor')}.json"
    cached = cache_read(cache, name)
    if cached is not None:
        saved = json.loads(cached)
        return saved["mean"], saved["std"]
    if len(images) < protocol.n:
        raise ValueError(f"floor needs n={protocol.n} real images, the floor source has {len(images)}")
    gen = torch.Generator().manual_seed(protocol.seed)
    picks = [torch.randperm(len(images), generator=gen)[: protocol.n] for _ in range(protocol.floor_draws)]
    drawn, where = torch.cat(picks).unique(return_inverse=True)  # each drawn image is extracted once
    drawn_images = images[drawn]
    features, logits = extract(protocol.extractor, drawn_images)
    drawn_labels = labels[drawn] if labels is not None else None
    draws = [
        _score(
            protocol,
            features[index],
            logits[index],
            named=KINDS["samples"],
            labels=drawn_labels[index] if drawn_labels is not None else None,
            images=drawn_images[index],
            memorisation=False,  # these are training images: they sit on the training set by definition
        )
        for index in where.split(protocol.n)
    ]
    values = {k: torch.tensor([d[k] for d in draws], dtype=torch.float64) for k in draws[0]}
    mean = {k: float(v.mean()) for k, v in values.items()}
    std = {k: float(v.std()) if len(v) > 1 else 0.0 for k, v in values.items()}
    if protocol.pixels is not None:  # unseen real images score these by definition (pixels.py)
        mean |= {"nn_ratio_pix": 1.0, "copies_pix": COPY_QUANTILE}
        std |= {"nn_ratio_pix": 0.0, "copies_pix": 0.0}
    cache_write(cache, name, json.dumps({"mean": mean, "std": std}, sort_keys=True).encode())
    return mean, std


def _score(
    protocol: Protocol,
    features: torch.Tensor,
    logits: torch.Tensor,
    *,
    named: Callable[[str], str],
    labels: torch.Tensor | None = None,
    images: torch.Tensor | None = None,
    memorisation: bool = True,
) -> dict[str, float]:
    """The scores of one image set from its features and logits; with its `images` (uint8, or floats in
    [0, 1]) and a pixel space, fd_pix and, when `memorisation`, nn_ratio_pix and copies_pix too."""
    ref, tag = protocol.reference, protocol.extractor.tag
    kid_mean, kid_std = kid(
        ref.features / ref.rms,
        features / ref.rms,
        subsets=protocol.kid_subsets,
        subset_size=protocol.kid_subset_size,
        seed=protocol.seed,
    )
    is_mean, is_std = inception_score(logits, splits=protocol.is_splits, seed=protocol.seed)
    precision, recall = precision_recall(ref.features, features, k=protocol.pr_k)
    computed = {
        "fd": frechet_distance(ref.stats, GaussianStats.of(features)),
        "kid": kid_mean,
        "is": is_mean,
        "precision": precision,
        "recall": recall,
    }
    deviations = {"kid": kid_std, "is": is_std}
    conditional = labels is not None and protocol.extractor.classifies_dataset
    if labels is not None and conditional:
        computed["acc"] = class_accuracy(logits, labels)
        computed["spread"] = class_spread(features, labels) / class_spread(ref.features, protocol.real.labels)
    pixels = protocol.pixels is not None and images is not None
    if protocol.pixels is not None and images is not None:
        computed["fd_pix"] = protocol.pixels.fd(images)
        if memorisation:
            computed["nn_ratio_pix"], computed["copies_pix"] = protocol.pixels.memorisation(images)
    chosen = metric_names.declared(tag, conditional=conditional, pixels=pixels, samples=memorisation)
    if computed.keys() != {score.name for score in chosen}:
        raise RuntimeError(
            f"the protocol computes {sorted(computed)}; metric_names.SCORE_REGISTRY declares "
            f"{sorted(score.name for score in chosen)} for this image set: declare each score there"
        )
    values = {}
    for score in chosen:
        values[score.named(tag)] = computed[score.name]
        if score.deviation:
            values[metric_names.deviation(score.named(tag))] = deviations[score.name]
    return {named(k): v for k, v in values.items()}


def evaluate(
    images: torch.Tensor, *, protocol: Protocol, kind: str = "samples", labels: torch.Tensor | None = None
) -> MetricResult:
    """images: (n, C, H, W) float in [0, 1] (map a tanh output with (x + 1) / 2 first); labels (n,): the
    classes the images were drawn for, which adds `acc_<tag>` and `spread_<tag>` when the extractor
    classifies the dataset."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if images.shape[0] != protocol.n:
        raise ValueError(f"the protocol fixes n={protocol.n} images, got {images.shape[0]}")
    if tuple(images.shape[1:]) != protocol.reference.image_shape:
        raise ValueError(
            f"images are {tuple(images.shape[1:])}, the reference is {protocol.reference.image_shape}"
        )
    if labels is not None and labels.shape != (protocol.n,):
        raise ValueError(f"labels must be ({protocol.n},), got {tuple(labels.shape)}")
    if not images.is_floating_point() or images.min() < -1e-3 or images.max() > 1 + 1e-3:
        raise ValueError("images must be floats in [0, 1]; a [-1, 1] model output needs (x + 1) / 2")
    x = images.detach().float().clamp(0, 1)
    if protocol.quantize:
        x = (x * 255).round() / 255  # what a PNG round-trip of the samples would give
    named = KINDS[kind]
    values = _score(
        protocol,
        *extract(protocol.extractor, x),
        named=named,
        labels=labels,
        images=x,
        memorisation=kind == "samples",
    )
    return MetricResult(
        values=values,
        floor={named(k): v for k, v in protocol.floor.items() if named(k) in values},
        floor_std={named(k): v for k, v in protocol.floor_std.items() if named(k) in values},
        fingerprint=protocol.fingerprint(kind),
        n=protocol.n,
        proxy=protocol.proxy,
    )


def evaluate_samples(
    images: torch.Tensor, *, protocol: Protocol, labels: torch.Tensor | None = None
) -> MetricResult:
    """gFID-like: generated samples against the held-out reference; with the labels they were drawn for,
    also the class-conditional accuracy (acc_clf) and within-class variety (spread_clf)."""
    return evaluate(images, protocol=protocol, kind="samples", labels=labels)


def evaluate_reconstructions(
    images: torch.Tensor, *, protocol: Protocol, labels: torch.Tensor | None = None
) -> MetricResult:
    """rFID-like: reconstructions of the reference images; metric names get the prefix `recon_`."""
    return evaluate(images, protocol=protocol, kind="reconstructions", labels=labels)
