"""Metric protocol costs and sensitivity on the built-in datasets, at each dataset's standard n.

    .venv/bin/python bench/bench_metrics.py [--datasets digits mnist fashion-mnist] [--threads 2]

Per dataset: the committed classifier's held-out accuracy; the time to build the protocol from scratch
(reference statistics + real-vs-real floor, in a fresh temp cache) and again from the cache; feature
throughput; the cost of each metric on n x n features; and the metric values for known damage (real
train images, Gaussian noise, a single class) beside the floor. /proc/pressure/cpu is printed too:
other tenants on a shared machine skew timings 2-5x.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from orchestrator.evaluation.classifier import WEIGHTS_DIR, ClassifierCard, load_split
from orchestrator.evaluation.metrics import (
    GaussianStats,
    frechet_distance,
    inception_score,
    kid,
    precision_recall,
)
from orchestrator.evaluation.protocol import Protocol, evaluate_samples
from orchestrator.evaluation.reference import extract


def cpu_pressure() -> str:
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "n/a"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def candidates(dataset: str, n: int) -> dict[str, torch.Tensor]:
    """Known damage applied to n real train images (a draw other than the floor's)."""
    train = load_split(dataset, "train")
    g = torch.Generator().manual_seed(123)
    real = train.images[torch.randperm(len(train.labels), generator=g)[:n]].float() / 255
    one = train.images[train.labels == 0]
    return {
        "real train (other draw)": real,
        "noise 0.1": (real + 0.1 * torch.randn(real.shape, generator=g)).clamp(0, 1),
        "noise 0.4": (real + 0.4 * torch.randn(real.shape, generator=g)).clamp(0, 1),
        "one class": one[torch.arange(n) % len(one)].float() / 255,
    }


def bench(dataset: str) -> None:
    card = ClassifierCard.read(WEIGHTS_DIR / f"clf-{dataset}.json")
    print(f"\n== {dataset}: {card.name} held-out accuracy {card.heldout_accuracy:.4f}  [{cpu_pressure()}]")
    with tempfile.TemporaryDirectory() as cache:
        build = timed(lambda: Protocol.for_dataset(dataset, cache=cache))
        start = time.perf_counter()
        protocol = Protocol.for_dataset(dataset, cache=cache)
        cached = time.perf_counter() - start
    n, ref = protocol.n, protocol.reference
    print(f"n={n} reference={ref.n}  protocol build {build:.1f} s, from cache {cached:.2f} s")
    sets = candidates(dataset, n)
    real = sets["real train (other draw)"]
    extract_s = timed(lambda: extract(protocol.extractor, real))
    features, logits = extract(protocol.extractor, real)
    size = protocol.kid_subset_size
    costs = {
        "features": f"{n / extract_s:.0f} img/s",
        "fd": f"{timed(lambda: frechet_distance(ref.stats, GaussianStats.of(features))):.3f} s",
        "kid": f"{timed(lambda: kid(ref.features, features, subsets=50, subset_size=size, seed=0)):.3f} s",
        "is": f"{timed(lambda: inception_score(logits, splits=10, seed=0)):.3f} s",
        "p/r": f"{timed(lambda: precision_recall(ref.features, features, k=3)):.3f} s",
        "evaluate_samples": f"{timed(lambda: evaluate_samples(real, protocol=protocol)):.2f} s",
    }
    print("cost: " + ", ".join(f"{k} {v}" for k, v in costs.items()))
    floor = protocol.floor
    header = f"{'condition':<24}{'fd_clf':>10}{'x floor':>9}{'kid_clf':>10}{'prec':>7}{'recall':>8}{'is':>7}"
    print(header)
    print(f"(floor: mean of {protocol.floor_draws} draws; fd_clf std {protocol.floor_std['fd_clf']:.2f})")
    rows = {"floor (train vs ref)": floor} | {
        name: evaluate_samples(images, protocol=protocol).values for name, images in sets.items()
    }
    for name, v in rows.items():
        print(
            f"{name:<24}{v['fd_clf']:>10.2f}{v['fd_clf'] / floor['fd_clf']:>9.2f}{v['kid_clf']:>10.4f}"
            f"{v['precision_clf']:>7.3f}{v['recall_clf']:>8.3f}{v['is_clf']:>7.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist", "fashion-mnist"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for dataset in args.datasets:
        bench(dataset)


if __name__ == "__main__":
    main()
