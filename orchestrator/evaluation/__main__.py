"""`python -m orchestrator.evaluation train-classifier|floor --dataset NAME`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from orchestrator.evaluation.classifier import DATASETS, WEIGHTS_DIR, train_classifier


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.evaluation")
    sub = parser.add_subparsers(dest="verb", required=True)
    train = sub.add_parser(
        "train-classifier", help="train the metric classifier (fixed seed) and write weights"
    )
    train.add_argument("--dataset", choices=DATASETS, required=True)
    train.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    floor = sub.add_parser("floor", help="cache reference statistics and print the real-vs-real floor")
    floor.add_argument("--dataset", choices=DATASETS, required=True)
    floor.add_argument("--n", type=int, default=None, help="samples per evaluation (default: standard n)")
    floor.add_argument("--cache", default=None, help="directory or fsspec URL (default $SPHERE_EVAL_CACHE)")
    for p in (train, floor):
        p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the committed weights: 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.verb == "train-classifier":
        card = train_classifier(args.dataset, out_dir=args.out)
        print(
            json.dumps({"name": card.name, "sha256": card.sha256, "heldout_accuracy": card.heldout_accuracy})
        )
        return
    from orchestrator.evaluation.protocol import Protocol  # loads torchmetrics: only when needed

    start = time.perf_counter()
    protocol = Protocol.for_dataset(args.dataset, n=args.n, cache=args.cache)
    seconds = round(time.perf_counter() - start, 2)
    print(
        json.dumps(
            {
                "fingerprint": protocol.fingerprint(),
                "n": protocol.n,
                "floor": protocol.floor,
                "floor_std": protocol.floor_std,
                "s": seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
