"""A Tune sweep of Ray Train (V2) trials, and what its end registers: run by `python -m orchestrator.sweep`.

Train V2 pattern: each Tune trial is a function (`train_driver_fn`, 0.01 CPU) that builds and fits a
TorchTrainer whose TuneReportCallback forwards rank 0's metrics to Tune; never `Tuner(trainer)`.
The Tune experiment is named after the sweep and a digest of its resolved content, so resubmitting the
same sweep after the driver died restores it (finished trials are not rerun), and each trial's Train
run is named after the sweep, its index and its params, so a rerun trial resumes from its checkpoint.
The checks it runs live in orchestrator/cluster/, what reaches workers in train/worker_env.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from orchestrator.cli_errors import Failed
from orchestrator.cluster.driver_node import keep_train_coordinator_on_this_node
from orchestrator.cluster.preflight import TRIAL_DRIVER_CPU, check_local_resources, connect_ray, dataset_input
from orchestrator.cluster.sweep_lock import sweep_lock
from orchestrator.config import metric_names
from orchestrator.config.schema import ExperimentConfig
from orchestrator.config.search_space import apply_trial_params
from orchestrator.config.sweep_spec import SearchDist, SweepSpec
from orchestrator.tracking import registry, reports, runs
from orchestrator.tracking.run_end import ended_with_the_sweep
from orchestrator.train.checkpoint_storage import ray_storage
from orchestrator.train.process_group import NodeBoundTorchConfig
from orchestrator.train.worker import train_fn_per_worker
from orchestrator.train.worker_env import keep_credentials_out_of_trial_runtime_envs, worker_env
from sphere_core.checkpoint import CorruptCheckpoint


class SweepError(Failed):
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
    metric: str  # tune.metric: ranks the trials and each trial's checkpoints
    mode: str  # tune.mode


# --- the trial driver ------------------------------------------------------------------------------


def train_driver_fn(params: dict[str, Any], context: TrialContext) -> None:
    """One Tune trial: its MLflow child run, then a TorchTrainer fit over `workers_per_trial` workers."""
    os.environ.update(context.worker_env)  # e.g. the object store's endpoint, for this actor's storage

    cfg = apply_trial_params(context.base, params)
    name = runs.trial_name(context.experiment_name, tune.get_context().get_trial_id(), params)
    client = MlflowClient(context.tracking_uri)
    run_id = runs.open_trial_run(
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
            "score_metric": context.metric,
        },
        torch_config=NodeBoundTorchConfig(),  # Ray's own store would listen on every interface
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
            # The best evaluated checkpoints are kept (and the latest, to resume from): the sweep registers
            # a trial's best, not its last.
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.run.keep_checkpoints,
                checkpoint_score_attribute=metric_names.CHECKPOINT_SCORE,
                checkpoint_score_order=context.mode,
            ),
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]  # mypy sees V1's RunConfig
            worker_runtime_env={"env_vars": context.worker_env},  # Train V2 (the default in Ray 2.60)
        ),  # type: ignore[call-arg]
    )
    try:
        trainer.fit()
    except BaseException:
        # A stopped sweep's driver has marked its trials KILLED, and Tune's teardown then ends this fit:
        # that is no failure to record over it (seen on a loaded machine, where the teardown comes later).
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


# --- the sweep driver ------------------------------------------------------------------------------


def run_train_sweep(spec: SweepSpec) -> None:
    """Preflight (resources, MLflow, dataset), parent run, Tune fit or restore, summary, registration."""
    cfg = spec.experiment
    check_local_resources(cfg.scaling)

    uri = runs.resolve_tracking_uri(cfg)
    dataset = dataset_input(cfg)
    connect_ray(cfg.scaling, cfg.run.storage_path)
    keep_train_coordinator_on_this_node()
    with sweep_lock(spec):
        train_sweep_under_lock(spec, uri, dataset)


def train_sweep_under_lock(spec: SweepSpec, uri: str, dataset: dict[str, Any]) -> None:

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
        metric=spec.tune.metric,
        mode=spec.tune.mode,
    )
    with ended_with_the_sweep(client, parent_id):
        results = fit_tuner(spec, context)
        finish(client, spec, exp_id, parent_id, results, dataset)


def fit_tuner(spec: SweepSpec, context: TrialContext) -> list[Any]:
    """Restores the sweep's Tune experiment if it exists (resume_errored), else starts it."""

    keep_credentials_out_of_trial_runtime_envs()

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


def to_param_space(search: Mapping[str, SearchDist]) -> dict[str, Any]:
    """Tune's param_space over flat dotted keys."""
    make = {
        "grid": lambda s: tune.grid_search(list(s)),
        "choice": lambda s: tune.choice(list(s)),
        "uniform": lambda s: tune.uniform(*s),
        "loguniform": lambda s: tune.loguniform(*s),
        "randint": lambda s: tune.randint(*s),
    }
    return {path: make[dist.kind](dist.spec) for path, dist in search.items()}


def tune_config(spec: SweepSpec) -> Any:

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
