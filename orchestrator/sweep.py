"""`python -m orchestrator.sweep SWEEP.yaml [--dry-run]`: a Tune sweep of Ray Train (V2) trials.

Train V2 pattern: each Tune trial is a function (`train_driver_fn`, 0.01 CPU) that builds and fits a
TorchTrainer whose TuneReportCallback forwards rank 0's metrics to Tune; never `Tuner(trainer)`.
The Tune experiment is named after the sweep and a digest of its resolved content, so resubmitting the
same sweep after the driver died restores it (finished trials are not rerun), and each trial's Train
run is named after the sweep, its index and its params, so a rerun trial resumes from its checkpoint.
Ray, MLflow and torch are imported only when a sweep runs, so a config error or a dry run answers in
well under a second.

Over 300 lines because it is the one driver: CLI, dry-run report, Tune wiring and the end-of-sweep
registration; the checks it runs live in orchestrator/cluster/, what reaches workers in train/worker_env.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import cli_errors
from orchestrator.cluster.driver_node import keep_train_coordinator_on_this_node
from orchestrator.cluster.preflight import (
    TRIAL_DRIVER_CPU,
    check_local_resources,
    cluster_report,
    connect_ray,
    dataset_input,
    trial_cpus,
)
from orchestrator.cluster.sweep_lock import SweepBusy, sweep_lock
from orchestrator.config import metric_names
from orchestrator.config.loader import dump_yaml, load_sweep, parse_set
from orchestrator.config.schema import ExperimentConfig
from orchestrator.config.search_space import MAX_TRIALS, apply_trial_params, expand_trials, to_param_space
from orchestrator.config.sweep_spec import SweepSpec
from orchestrator.data.storage import check_scheme
from orchestrator.train.worker_env import keep_credentials_out_of_trial_runtime_envs, worker_env


class SweepError(RuntimeError):
    """The sweep ran but has nothing sound to register (every trial failed, the leading trial failed, or
    the best checkpoint is damaged); one line, exit 1, the parent run FAILED."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial driver needs besides its own params (passed with tune.with_parameters)."""

    base: ExperimentConfig  # the resolved sweep's experiment, typed (pickled by Ray, never a dict)
    experiment_name: str  # Tune experiment = sweep name + digest
    tracking_uri: str
    mlflow_experiment_id: str
    parent_run_id: str
    dataset: dict[str, Any]  # the manifest summary logged as each trial's input
    worker_env: dict[str, str]


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
    """The CLI's work; user errors (ConfigError, unreachable storage) are `run`'s, exit 2."""
    try:
        sets = dict(parse_set(assignment) for assignment in args.set)
        spec = load_sweep(resolve_sweep_path(args.sweep), sets, max_trials=args.max_trials)
        check_scheme(spec.experiment.data.url, "data.url")  # else each worker finds out alone
        if args.new_experiment:
            spec = dataclasses.replace(spec, digest=f"{spec.digest}-{time.strftime('%Y%m%d-%H%M%S')}")
        if args.dry_run:
            print(dry_run_report(spec))
            return 0
        from orchestrator.tracking.runs import QUIET_ENV

        os.environ.update(QUIET_ENV)  # before mlflow is imported anywhere in this process
        if spec.kind == "evaluate":
            from orchestrator.evaluate import run_evaluate_sweep

            run_evaluate_sweep(spec)
        else:
            run_train_sweep(spec)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except SweepBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
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
    from orchestrator.data.shards import epoch_order, rank_shards, read_manifest

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


# --- resources and Ray -----------------------------------------------------------------------------


# --- the trial driver ------------------------------------------------------------------------------


def train_driver_fn(params: dict[str, Any], context: TrialContext) -> None:
    """One Tune trial: its MLflow child run, then a TorchTrainer fit over `workers_per_trial` workers."""
    os.environ.update(context.worker_env)  # telemetry off before this actor imports mlflow
    from mlflow import MlflowClient
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestrator.tracking.runs import open_trial_run, trial_name
    from orchestrator.train.checkpoint_storage import ray_storage
    from orchestrator.train.worker import train_fn_per_worker

    cfg = apply_trial_params(context.base, params)
    name = trial_name(context.experiment_name, tune.get_context().get_trial_id(), params)
    client = MlflowClient(context.tracking_uri)
    run_id = open_trial_run(
        client,
        context.mlflow_experiment_id,
        parent_run_id=context.parent_run_id,
        name=name,
        cfg=cfg,
        dataset=context.dataset,
    )
    scaling = cfg.scaling
    storage_path, storage_filesystem = ray_storage(cfg.run.storage_path, cfg.run.storage_retry_s)
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={  # a dict by Ray's contract, shown as JSON in its dashboard: the one crossing
            "experiment": cfg.to_dict(),
            "tracking_uri": context.tracking_uri,
            "run_id": run_id,
        },
        scaling_config=ScalingConfig(
            num_workers=scaling.workers_per_trial,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]  # mypy sees V1's RunConfig
            worker_runtime_env={"env_vars": context.worker_env},  # Train V2 (the default in Ray 2.60)
        ),  # type: ignore[call-arg]
    )
    try:
        trainer.fit()
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


# --- the sweep driver ------------------------------------------------------------------------------


def run_train_sweep(spec: SweepSpec) -> None:
    """Preflight (resources, MLflow, dataset), parent run, Tune fit or restore, summary, registration."""
    cfg = spec.experiment
    check_local_resources(cfg.scaling)
    from orchestrator.tracking import runs

    uri = runs.resolve_tracking_uri(cfg)
    dataset = dataset_input(cfg)
    connect_ray(cfg.scaling, cfg.run.storage_path)
    keep_train_coordinator_on_this_node()
    with sweep_lock(spec):
        train_sweep_under_lock(spec, uri, dataset)


def train_sweep_under_lock(spec: SweepSpec, uri: str, dataset: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    from orchestrator.tracking import runs
    from orchestrator.tracking.run_end import ended_with_the_sweep

    cfg = spec.experiment
    client = MlflowClient(uri)
    exp_id, parent_id = runs.open_sweep_run(client, spec)
    print(f"sweep {spec.experiment_name}: parent run {parent_id} (MLflow experiment {exp_id})")
    context = TrialContext(
        base=cfg,
        experiment_name=spec.experiment_name,
        tracking_uri=uri,
        mlflow_experiment_id=exp_id,
        parent_run_id=parent_id,
        dataset=dataset,
        worker_env=worker_env(uri),
    )
    with ended_with_the_sweep(client, parent_id):
        results = fit_tuner(spec, context)
        finish(client, spec, exp_id, parent_id, results, dataset)


def fit_tuner(spec: SweepSpec, context: TrialContext) -> list[Any]:
    """Restores the sweep's Tune experiment if it exists (resume_errored), else starts it."""
    from ray import tune

    keep_credentials_out_of_trial_runtime_envs()
    from orchestrator.train.checkpoint_storage import ray_storage

    trainable = tune.with_resources(
        tune.with_parameters(train_driver_fn, context=context), {"CPU": TRIAL_DRIVER_CPU}
    )
    run = spec.experiment.run
    storage, filesystem = ray_storage(run.storage_path.rstrip("/"), run.storage_retry_s)
    path = f"{storage}/{spec.experiment_name}"
    if tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        print(
            f"restoring {run.storage_path.rstrip('/')}/{spec.experiment_name}: finished trials are kept, "
            "unfinished and errored ones resume"
        )
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True, storage_filesystem=filesystem)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=to_param_space(spec.search),
            tune_config=tune_config(spec),
            run_config=tune.RunConfig(
                name=spec.experiment_name,
                storage_path=storage,
                storage_filesystem=filesystem,
                # A lost node takes the trial's driver with its workers: rerun the trial, whose Train run
                # then resumes from its last checkpoint (Train's own max_failures covers the workers alone).
                failure_config=tune.FailureConfig(max_failures=run.max_failures),
            ),
        )
    grid = tuner.fit()
    return [grid[i] for i in range(len(grid))]


def tune_config(spec: SweepSpec) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    t = spec.tune
    scheduler = (
        ASHAScheduler(
            time_attr=metric_names.STEP, max_t=spec.experiment.run.steps, grace_period=t.grace_period
        )
        if t.scheduler == "asha"
        else FIFOScheduler()
    )
    search_alg = None
    if t.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=spec.experiment.run.seed)
    return tune.TuneConfig(
        metric=t.metric,
        mode=t.mode,
        search_alg=search_alg,
        scheduler=scheduler,
        num_samples=t.num_samples,
        max_concurrent_trials=t.max_concurrent_trials,
    )


def finish(
    client: Any, spec: SweepSpec, exp_id: str, parent_id: str, results: list[Any], dataset: Mapping[str, Any]
) -> None:
    """Summary tables and the best trial on the parent run; its checkpoint registered under the alias."""
    from orchestrator.tracking import registry, reports, runs
    from sphere_core.checkpoint import CorruptCheckpoint

    rows = reports.result_rows(spec, results)
    reports.log_summary(client, parent_id, rows, spec.tune.metric, spec.tune.mode)
    metric = spec.tune.metric
    leader = reports.best_row(rows, metric, spec.tune.mode, errored=True)
    if leader is not None and leader["status"] != "ok":
        result = next(r for r, row in zip(results, rows, strict=True) if row is leader)
        raise SweepError(
            f"trial {leader['trial']} led on {metric} ({leader[metric]:.6g}) but ended in error "
            f"({last_line(result.error)}): nothing registered; resubmit the same file to resume it"
        )
    best = reports.best_row(rows, metric, spec.tune.mode)
    if best is not None:
        runs.log_best_trial(client, exp_id, parent_id, best["trial"], metric, float(best[metric]))
    reports.log_training_pareto(client, parent_id, spec, results)
    try:
        version = registry.register_best(
            client,
            spec,
            exp_id=exp_id,
            parent_run_id=parent_id,
            rows=rows,
            results=results,
            data_digest=dataset["digest"],
        )
    except CorruptCheckpoint as exc:
        raise SweepError(f"the best trial's checkpoint cannot be registered: {exc}") from None
    failed = [r for r in results if r.error is not None]
    if version is None:
        first = f"; first error: {last_line(failed[0].error)}" if failed else ""
        raise SweepError(
            f"{len(failed)} of {len(results)} trials failed and none reported a finite "
            f"{metric!r} with a checkpoint{first} (summary.md on run {parent_id})"
        )
    if failed:
        print(
            f"warning: {len(failed)} of {len(results)} trials ended in error, none of them the best "
            f"(first error: {last_line(failed[0].error)}); summary.md on run {parent_id}"
        )
    tracked = spec.experiment.tracking
    holder = client.get_model_version_by_alias(tracked.registered_model, tracked.alias).version
    print(
        f"models:/{tracked.registered_model}@{tracked.alias} -> version {holder}; registered "
        f"version {version.version} "
        f"(trial {version.tags['sweep.trial']}, {spec.tune.metric} {version.tags[spec.tune.metric]})"
    )


def last_line(error: BaseException) -> str:
    """A trial's error as one line: Ray wraps the worker's exception, whose own line comes last."""
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
