"""`python -m orchestrator.evaluation`: every evaluation a user runs by hand, under one name.

    score --model URI [sampling flags]   score a stored model's samples at every combination of the flags
    floor --dataset NAME                 cache the reference statistics and print the real-vs-real floor
    train-classifier --dataset NAME      retrain the committed metric classifier behind fd_clf

Bad input is answered in one line before torch, mlflow and torchmetrics load (~3 s together on 2 cores), so
each verb imports the module that does its work only after its flags have been checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Literal

from fsspec.core import url_to_fs

from orchestrator.cli_errors import at_least, run
from orchestrator.config.schema import ExperimentConfig
from orchestrator.config.search_space import apply_trial_params
from orchestrator.config.sweep_spec import MODEL_URI_FORMS, EvaluateConfig, SearchDist, SweepSpec, TuneConfig
from orchestrator.data.registry import BUILTIN_NAMES, NO_DATASET
from orchestrator.data.storage import check_scheme, reaching
from orchestrator.generate import SAMPLING_RENAMES, add_sampling_flags, check_registry_uri, sampling_values

PROG = "python -m orchestrator.evaluation"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="{score,floor,train-classifier}")
    score = verbs.add_parser(
        "score",
        help="score a stored model's samples at every combination of the sampling flags",
        description="Score a stored model's samples at every combination of the sampling flags (fd_clf or "
        "FID, KID, precision/recall, beside the real-vs-real floor), each a child run of the run that "
        "trained it.",
    )
    score.add_argument("--model", required=True, help=MODEL_URI_FORMS)
    add_sampling_flags(score, several=True, steps=[1, 2, 4])  # every combination is a setting
    score.add_argument(
        "--num",
        type=at_least(16),
        default=256,
        help="samples per setting (default 256; fixed: FD is biased by n)",
    )
    score.add_argument(
        "--dataset",
        choices=(*BUILTIN_NAMES, NO_DATASET),
        help="built-in whose classifier scores and whose splits are the real images (default: the one that "
        "scored the model in training, else mnist; none with --reference)",
    )
    score.add_argument(
        "--inception", help="FID Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth): path/URL"
    )
    score.add_argument(
        "--reference", help="held-out shards (fsspec URL) to compare with, e.g. s3://b/data/val"
    )
    score.add_argument("--floor", help="training shards (fsspec URL) for the real-vs-real floor")
    score.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")

    floor = verbs.add_parser("floor", help="cache reference statistics and print the real-vs-real floor")
    floor.add_argument("--dataset", choices=BUILTIN_NAMES, required=True, help="the built-in to measure")
    floor.add_argument(
        "--n", type=at_least(16), default=None, help="samples per evaluation (>= 16; default: standard n)"
    )
    floor.add_argument("--cache", default=None, help="directory or fsspec URL (default $SPHERE_EVAL_CACHE)")
    train = verbs.add_parser(
        "train-classifier", help="train the metric classifier (fixed seed) and write its weights"
    )
    train.add_argument("--dataset", choices=BUILTIN_NAMES, required=True, help="the built-in to train on")
    train.add_argument(
        "--out", type=Path, help="directory for the weights (default: the committed ones, in the package)"
    )
    for upkeep in (floor, train):
        upkeep.add_argument(
            "--threads", type=at_least(1), default=2, help="torch CPU threads (the committed weights: 2)"
        )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.verb == "score":
        renames = (("evaluate.num_images", "--num"), ("evaluate.", "--"), *SAMPLING_RENAMES)
        return run(lambda: _score(args), renames)  # the dataclasses name their fields; the user typed flags
    if args.verb == "floor":
        return run(lambda: _floor(args))
    return run(lambda: _train_classifier(args))


def one_off_spec(args: argparse.Namespace) -> SweepSpec:
    """The score verb's grid as an evaluate sweep of its own (named by its arguments, so a rerun reuses
    results)."""
    search = {f"sampling.{name}": SearchDist(grid=values) for name, values in sampling_values(args).items()}
    base = ExperimentConfig()
    for path, dist in search.items():  # every value must build a valid SamplingConfig
        for value in dist.spec:
            apply_trial_params(base, {path: value})
    default: Literal["none", "mnist"] = "none" if args.reference else "mnist"
    evaluate = EvaluateConfig(
        model=args.model,
        dataset=args.dataset or default,
        inception=args.inception,
        reference=args.reference,
        floor=args.floor,
        num_images=args.num,
        seed=args.seed,
    )
    content = json.dumps(
        {"evaluate": dataclasses.asdict(evaluate), "search": {k: v.spec for k, v in search.items()}}
    )
    digest = hashlib.sha256(content.encode()).hexdigest()[:10]
    return SweepSpec(
        name="evaluate",
        kind="evaluate",
        experiment=base,
        search=search,
        tune=TuneConfig(),
        evaluate=evaluate,
        digest=digest,
    )


def probe(url: str, flag: str) -> None:
    """One look at `url`, so a wrong scheme, an unreachable store or refused credentials fail in one line
    before the tracking server and the model are reached."""
    with reaching(url, flag):
        filesystem, path = url_to_fs(url)
        filesystem.exists(path)


def _score(args: argparse.Namespace) -> int:
    check_registry_uri(args.model, local_allowed=False)
    spec = one_off_spec(args)  # validates the grid and the metric source before any server is reached
    from orchestrator.evaluation import frozen  # torch and mlflow: after the flags are checked

    if args.dataset is None and args.reference is None:
        args.dataset = frozen.trained_dataset(frozen.MlflowClient(), args.model)
        spec = one_off_spec(args)
    for flag in ("--reference", "--floor"):
        url = getattr(args, flag.removeprefix("--"))
        if url is not None:
            probe(url, flag)
    frozen.run_evaluate_sweep(spec)
    return 0


def _floor(args: argparse.Namespace) -> int:
    if args.cache:
        check_scheme(args.cache, "--cache")
    import torch  # with torchmetrics: after the flags

    from orchestrator.evaluation import protocol, reference

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cache = args.cache or reference.default_cache()
    with reaching(cache, "--cache"):
        measured = protocol.Protocol.for_dataset(args.dataset, n=args.n, cache=cache)
    seconds = round(time.perf_counter() - start, 2)
    print(
        json.dumps(
            {
                "fingerprint": measured.fingerprint(),
                "n": measured.n,
                "floor": measured.floor,
                "floor_std": measured.floor_std,
                "s": seconds,
            }
        )
    )
    return 0


def _train_classifier(args: argparse.Namespace) -> int:
    import torch  # after the flags

    from orchestrator.evaluation import classifier

    torch.set_num_threads(args.threads)
    card = classifier.train_classifier(args.dataset, **({"out_dir": args.out} if args.out else {}))
    print(json.dumps({"name": card.name, "sha256": card.sha256, "heldout_accuracy": card.heldout_accuracy}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
