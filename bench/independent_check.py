"""A registered model's samples judged by networks the project never trained against: class accuracy by an RBF
SVM on raw pixels (not the committed classifier that fd_clf and acc_clf use), and within-class spread in the
pixel-PCA space of orchestrator/evaluation/pixels.py, both beside what real held-out images score.

    source .cluster/env && .venv/bin/python bench/independent_check.py --model models:/sphere-demo@champion
        [--dataset mnist] [--num 1000] [--steps 1 4] [--svm-train 10000]

The SVM trains on (up to --svm-train of) the dataset's train split, the images the generator trained on, and
is scored on the held-out split first: its accuracy there is the most samples can expect.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from sklearn.svm import SVC

from orchestrator.evaluation.classifier import load_split
from orchestrator.evaluation.metrics import class_spread
from orchestrator.evaluation.pixels import PixelSpace
from orchestrator.tracking.mlflow_model import load_registered
from sphere_core.config import SamplingConfig
from sphere_core.sampling import generate


def pixels(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255.0 if images.dtype == torch.uint8 else images.float()).flatten(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/..."
    )
    parser.add_argument("--dataset", default="mnist", choices=["digits", "mnist", "fashion-mnist"])
    parser.add_argument("--num", type=int, default=1000, help="samples per step count, balanced over classes")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--svm-train", type=int, default=10_000, help="train images the SVM fits on (at most)"
    )
    args = parser.parse_args()
    model, config = load_registered(args.model, os.environ["MLFLOW_TRACKING_URI"])
    size = config.model.image_size
    train, test = load_split(args.dataset, "train", size), load_split(args.dataset, "test", size)
    pick = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(0))[: args.svm_train]
    started = time.perf_counter()
    svm = SVC(kernel="rbf", gamma="scale").fit(pixels(train.images[pick]).numpy(), train.labels[pick].numpy())
    real_acc = float(
        (torch.from_numpy(svm.predict(pixels(test.images).numpy())) == test.labels).float().mean()
    )
    space = PixelSpace.fit(train.images, test.images)

    def projected(images: torch.Tensor) -> torch.Tensor:
        return (pixels(images).double() - space.mean) @ space.components

    real_spread = class_spread(projected(test.images), test.labels)
    print(f"SVM on raw pixels, fitted in {time.perf_counter() - started:.0f} s on {len(pick)} train images")
    print(f"real held-out images: SVM accuracy {real_acc:.3f}, pixel-PCA spread 1 (by definition)")
    labels = torch.arange(args.num) % config.model.num_classes
    for steps in args.steps:
        samples = generate(
            model.eval(),
            labels,
            sampling=SamplingConfig(steps=steps).resolved(config.noise),
            generator=torch.Generator().manual_seed(0),
        )
        predicted = torch.from_numpy(svm.predict(pixels(samples).numpy()))
        hits = (predicted == labels).float()
        per_class = [float(hits[labels == c].mean()) for c in range(config.model.num_classes)]
        weakest = min(range(len(per_class)), key=per_class.__getitem__)
        spread = class_spread(projected(samples), labels) / real_spread
        ratio, copies = space.memorisation(samples)
        print(
            f"{steps}-step samples: SVM accuracy {float(hits.mean()):.3f} (weakest class {weakest}: "
            f"{per_class[weakest]:.2f}), pixel-PCA spread {spread:.2f}, nn_ratio_pix {ratio:.2f}, "
            f"copies_pix {copies:.3f}"
        )


if __name__ == "__main__":
    main()
