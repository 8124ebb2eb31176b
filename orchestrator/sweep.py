"""`python -m orchestrator.sweep SWEEP.yaml [--dry-run]`: load and check a sweep, print its dry run, or run
it: a Tune sweep of Ray Train trials (orchestrator/tuning.py) or, for `kind: evaluate`, the sampling
settings of a stored model (orchestrator/evaluation/frozen.py).

Those two import Ray Train, MLflow and torch (~4 s on 2 cores), so they are imported only when a sweep
runs: a config error or a dry run answers in under a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from orchestrator import cli_errors
from orchestrator.cluster.preflight import TRIAL_DRIVER_CPU, cluster_report, dataset_input, trial_cpus
from orchestrator.config.loader import dump_yaml, load_sweep, parse_set
from orchestrator.config.schema import ExperimentConfig
from orchestrator.config.search_space import MAX_TRIALS, expand_trials
from orchestrator.config.sweep_spec import SweepSpec
from orchestrator.data.shards import epoch_order, rank_shards, read_manifest
from orchestrator.data.storage import check_scheme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.sweep", description=__doc__.splitlines()[0])
    parser.add_argument(
        "sweep",
        help="a sweep YAML: a path, or one of the project's shipped sweeps (sweeps/noise.yaml) when the job "
        "does not run in the project directory",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="DOTTED.PATH=VALUE",
        help="override one field after the file's overrides, validated like them (repeatable): "
        "--set data.url=s3://mine/train --set scaling.use_gpu=true",
    )
    parser.add_argument("--dry-run", action="store_true", help="print trials, resolved config and shard plan")
    parser.add_argument(
        "--max-trials",
        type=cli_errors.at_least(1),
        default=MAX_TRIALS,
        metavar="N",
        help=f"refuse a sweep of more than N trials (default {MAX_TRIALS:,}): a typo in a grid can otherwise "
        "start millions",
    )
    parser.add_argument(
        "--new-experiment",
        action="store_true",
        help="run as a new Tune experiment and MLflow parent run, even while the same sweep runs elsewhere "
        "(default: resubmitting a sweep resumes it, and is refused while it runs)",
    )
    args = parser.parse_args(argv)
    return cli_errors.run(lambda: sweep(args))


def sweep(args: argparse.Namespace) -> int:
    """The CLI's work; its errors are `cli_errors.run`'s: a user error exits 2, a sweep that ran but has
    nothing to register 1, the same sweep running elsewhere 3."""
    sets = dict(parse_set(assignment) for assignment in args.set)
    spec = load_sweep(resolve_sweep_path(args.sweep), sets, max_trials=args.max_trials)
    check_scheme(spec.experiment.data.url, "data.url")  # else each worker finds out alone
    if args.new_experiment:
        spec = dataclasses.replace(spec, digest=f"{spec.digest}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.dry_run:
        print(dry_run_report(spec))
    elif spec.kind == "evaluate":
        from orchestrator.evaluation.frozen import run_evaluate_sweep  # see the module docstring

        run_evaluate_sweep(spec)
    else:
        from orchestrator.tuning import run_train_sweep  # see the module docstring

        run_train_sweep(spec)
    return 0


def resolve_sweep_path(given: str) -> Path:
    """`given` as a path; else, when it names one of the shipped sweeps, that file of the project this code
    was installed from (a `ray job submit` without --working-dir runs in Ray's directory, not the project's;
    SPHERE_PROJECT_DIR names the project where the code is installed apart from it, as in the image)."""
    path = Path(given)
    if path.exists() or path.is_absolute():
        return path
    roots = [os.environ.get("SPHERE_PROJECT_DIR", ""), str(Path(__file__).resolve().parents[1])]
    for root in filter(None, roots):
        candidate = Path(root) / path
        if candidate.is_file():
            print(f"{given}: not in the working directory {Path.cwd()}; using the project's {candidate}")
            return candidate
    return path  # load_sweep names the missing file


# --- dry run --------------------------------------------------------------------------------------


def dry_run_report(spec: SweepSpec) -> str:
    cfg, t, evaluate = spec.experiment, spec.tune, spec.evaluate
    if evaluate is not None:  # kind: evaluate: one run per grid point on the frozen model, no Tune
        trials = expand_trials(spec.search, 1, "basic")
        features = (
            f"Inception-v3 features ({evaluate.inception})"
            if evaluate.inception is not None
            else f"the {evaluate.dataset} classifier's features"
        )
        real = (
            f"held-out shards {evaluate.reference}, floor from {evaluate.floor}"
            if evaluate.reference is not None
            else f"the {evaluate.dataset} test split"
        )
        details = [
            f"evaluate: {evaluate.model}, {evaluate.num_images} samples per setting (seed {evaluate.seed}), "
            f"metrics in {features} against {real}",
            "runs: a parent nested under the run that trained the model, in that run's experiment; one "
            "child per setting with distinct samples",
        ]
    else:
        trials = expand_trials(spec.search, t.num_samples, t.search_alg)
        details = [
            f"tune: metric {t.metric} ({t.mode}), search_alg {t.search_alg}, scheduler {t.scheduler}, "
            f"num_samples {t.num_samples}, max_concurrent_trials {t.max_concurrent_trials}",
            f"per trial: {trial_cpus(cfg.scaling):g} CPU ({cfg.scaling.workers_per_trial} workers x "
            f"{cfg.scaling.cpus_per_worker:g} + {TRIAL_DRIVER_CPU} trial driver); this machine has "
            f"{os.cpu_count()} CPUs",
        ]
    lines = [f"sweep {spec.name} (kind {spec.kind}), experiment {spec.experiment_name}: {len(trials)} trials"]
    lines += [f"--set {path}={json.dumps(value)}" for path, value in spec.sets.items()]
    lines += details + [f"  trial {i}: {json.dumps(params)}" for i, params in enumerate(trials)]
    lines += ["resolved config:", dump_yaml(cfg.to_dict()).rstrip()]
    if evaluate is None:
        lines += ["shard plan:", shard_plan(cfg), "cluster:", cluster_report(cfg)]
    return "\n".join(lines)


def shard_plan(cfg: ExperimentConfig) -> str:
    """Which shards each rank reads in epoch 0, from the dataset manifest; or why it cannot be read. A
    dataset the model cannot read (channels, size, classes) fails the dry run as it fails the sweep."""
    url, world, loaders = cfg.data.url, cfg.scaling.workers_per_trial, cfg.data.loader_workers
    if (
        url.startswith("s3://")
        and not os.environ.get("AWS_ENDPOINT_URL")
        and not os.environ.get("AWS_ACCESS_KEY_ID")
    ):
        return f"  {url}: not reachable from here (neither AWS_ENDPOINT_URL nor AWS credentials are set)"
    try:
        manifest = read_manifest(url)
        names = epoch_order([s.name for s in manifest.shards], seed=cfg.data.seed, epoch=0)
        plan = [rank_shards(names, rank, world, loaders) for rank in range(world)]
    except Exception as exc:  # a dry run reports any failure to read the plan instead of raising it
        return f"  {url}: no plan ({type(exc).__name__}: {exc})"
    dataset_input(cfg)  # the sweep's own preflight: e.g. 1-channel MNIST settings on RGB shards
    head = (
        f"  {url}: {len(names)} shards, {manifest.num_samples} samples, digest {manifest.digest[:12]}; "
        f"{world} ranks x {max(loaders, 1)} loader workers; epoch 0 (later epochs reshuffle)"
    )
    return "\n".join([head, *(f"  rank {r}: {', '.join(shards)}" for r, shards in enumerate(plan))])


if __name__ == "__main__":
    sys.exit(main())
