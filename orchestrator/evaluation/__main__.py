"""`python -m orchestrator.evaluation train-classifier|floor --dataset NAME`: the metric's own upkeep (the
committed classifiers behind fd_clf, the real-vs-real floors). Scoring a model is `python -m
orchestrator.evaluate`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from orchestrator.cli_errors import at_least, run
from orchestrator.data.registry import BUILTIN_NAMES
from orchestrator.data.storage import check_scheme, reaching


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.evaluation", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    train = sub.add_parser(
        "train-classifier", help="train the metric classifier (fixed seed) and write weights"
    )
    train.add_argument("--dataset", choices=BUILTIN_NAMES, required=True, help="the built-in to train on")
    train.add_argument(
        "--out", type=Path, help="directory for the weights (default: the committed ones, in the package)"
    )
    floor = sub.add_parser("floor", help="cache reference statistics and print the real-vs-real floor")
    floor.add_argument("--dataset", choices=BUILTIN_NAMES, required=True, help="the built-in to measure")
    floor.add_argument(
        "--n", type=at_least(16), default=None, help="samples per evaluation (>= 16; default: standard n)"
    )
    floor.add_argument("--cache", default=None, help="directory or fsspec URL (default $SPHERE_EVAL_CACHE)")
    for p in (train, floor):
        p.add_argument(
            "--threads", type=at_least(1), default=2, help="torch CPU threads (the committed weights: 2)"
        )
    args = parser.parse_args(argv)
    return run(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.verb == "floor" and args.cache:
        check_scheme(args.cache, "--cache")  # before seconds of imports
    import torch

    torch.set_num_threads(args.threads)
    if args.verb == "train-classifier":
        from orchestrator.evaluation.classifier import train_classifier

        card = train_classifier(args.dataset, **({"out_dir": args.out} if args.out else {}))
        print(
            json.dumps({"name": card.name, "sha256": card.sha256, "heldout_accuracy": card.heldout_accuracy})
        )
        return 0
    from orchestrator.evaluation.protocol import Protocol  # loads torchmetrics: only when needed
    from orchestrator.evaluation.reference import default_cache

    start = time.perf_counter()
    cache = args.cache or default_cache()
    with reaching(cache, "--cache"):
        protocol = Protocol.for_dataset(args.dataset, n=args.n, cache=cache)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
