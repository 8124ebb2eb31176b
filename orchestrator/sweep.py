"""`python -m orchestrator.sweep SWEEP.yaml [--dry-run]`: a Tune sweep of Ray Train (V2) trials.

Train V2 pattern: each Tune trial is a function (`train_driver_fn`, 0.01 CPU) that builds and fits a
TorchTrainer whose TuneReportCallback forwards rank 0's metrics to Tune; never `Tuner(trainer)`.
The Tune experiment is named after the sweep and a digest of its resolved content, so resubmitting the
same sweep after the driver died restores it (finished trials are not rerun), and each trial's Train
run is named after the sweep, its index and its params, so a rerun trial resumes from its checkpoint.
Ray, MLflow and torch are imported only when a sweep runs, so a config error or a dry run answers in
well under a second.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.loader import dump_yaml, load_sweep, parse_set
from orchestrator.config.schema import ExperimentConfig, ScalingSpec
from orchestrator.config.search_space import apply_trial_params, expand_trials, to_param_space
from orchestrator.config.sweep_spec import SweepSpec
from sphere_core.config import ConfigError

TRIAL_DRIVER_CPU = 0.01  # 0 is rejected by Tune; 1 (Tune's default) deadlocks the Train workers on 2 cores
# Workers inherit the raylet's env, not the driver's: these settings travel in their runtime env. Never a
# credential: Ray writes runtime envs in plain text to its logs and job API. Workers take credentials from
# their node (the local cluster's `ray start` env, an instance/pod role, a Kubernetes Secret).
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "SPHERE_GIT_COMMIT")
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


LOCK_NAMESPACE = "sphere-sweeps"  # the lock actors' namespace: a job's own namespace is anonymous


class SweepError(RuntimeError):
    """The sweep ran but produced nothing to register (every trial failed); one line, exit 1."""


class SweepBusy(RuntimeError):
    """The same sweep (same Tune experiment) is running in another driver; one line, exit 3."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial driver needs besides its own params (passed with tune.with_parameters)."""

    base: dict[str, Any]  # ExperimentConfig.to_dict() of the resolved sweep
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
        "--new-experiment",
        action="store_true",
        help="run as a new Tune experiment and MLflow parent run, even while the same sweep runs elsewhere "
        "(default: resubmitting a sweep resumes it, and is refused while it runs)",
    )
    args = parser.parse_args(argv)
    try:
        sets = dict(parse_set(assignment) for assignment in args.set)
        spec = load_sweep(resolve_sweep_path(args.sweep), sets)
        if args.new_experiment:
            spec = dataclasses.replace(spec, digest=f"{spec.digest}-{time.strftime('%Y%m%d-%H%M%S')}")
        if args.dry_run:
            print(dry_run_report(spec))
            return 0
        from orchestrator.tracking import QUIET_ENV

        os.environ.update(QUIET_ENV)  # before mlflow is imported anywhere in this process
        if spec.kind == "evaluate":
            from orchestrator.evaluate import run_evaluate_sweep

            run_evaluate_sweep(spec)
        else:
            run_train_sweep(spec)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
    """Which shards each rank reads in epoch 0, from the dataset manifest; or why it cannot be read."""
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
    head = (
        f"  {url}: {len(names)} shards, {manifest.num_samples} samples, digest {manifest.digest[:12]}; "
        f"{world} ranks x {max(loaders, 1)} loader workers; epoch 0 (later epochs reshuffle)"
    )
    return "\n".join([head, *(f"  rank {r}: {', '.join(shards)}" for r, shards in enumerate(plan))])


def dataset_input(cfg: ExperimentConfig) -> dict[str, Any]:
    """The manifest as logged with every trial; fails if the model cannot read this dataset."""
    from orchestrator.data.shards import read_manifest

    manifest = read_manifest(cfg.data.url)
    model, url = cfg.model, cfg.data.url
    if model.channels != manifest.channels:
        raise ConfigError(
            f"model.channels: {model.channels} but the dataset at {url} has {manifest.channels} "
            f"(allowed: {manifest.channels})"
        )
    served = cfg.data.image_size or manifest.image_size  # what the stream yields
    if model.image_size != served:
        raise ConfigError(
            f"model.image_size: {model.image_size} but the data stream yields {served} px "
            f"(allowed: {served}, or set data.image_size to resize)"
        )
    if model.num_classes not in (0, manifest.num_classes):
        raise ConfigError(
            f"model.num_classes: {model.num_classes} but the dataset at {cfg.data.url} has "
            f"{manifest.num_classes} classes (allowed: {manifest.num_classes}, or 0 = unconditional)"
        )
    profile = {
        "num_samples": manifest.num_samples,
        "num_shards": len(manifest.shards),
        "image_size": manifest.image_size,
        "channels": manifest.channels,
        "num_classes": manifest.num_classes,
    }
    return {"url": cfg.data.url, "name": manifest.source, "digest": manifest.digest, "profile": profile}


# --- resources and Ray -----------------------------------------------------------------------------


def trial_cpus(scaling: ScalingSpec) -> float:
    return TRIAL_DRIVER_CPU + scaling.workers_per_trial * scaling.cpus_per_worker


@dataclass(frozen=True)
class NodeType:
    """An autoscaler node group: what one node offers and how many there may be (-1: no limit)."""

    name: str
    resources: Mapping[str, float]
    max_count: int


def worker_bundle(scaling: ScalingSpec) -> dict[str, float]:
    return {"CPU": scaling.cpus_per_worker} | ({"GPU": 1.0} if scaling.use_gpu else {})


def workers_per_node(resources: Mapping[str, float], bundle: Mapping[str, float]) -> int:
    return min(int(float(resources.get(key, 0.0)) / need + 1e-9) for key, need in bundle.items() if need > 0)


def check_resources(
    scaling: ScalingSpec, available: Mapping[str, float], where: str, node_types: Sequence[NodeType] = ()
) -> str:
    """One trial (its driver and all its workers) must fit what the cluster has, or, on an autoscaling
    cluster (`node_types`), what it can grow to; otherwise Tune waits forever. Returns where trials go."""
    bundle, workers = worker_bundle(scaling), scaling.workers_per_trial
    need = ", ".join(f"{value:g} {key}" for key, value in bundle.items())
    if node_types:
        hosts = [(t, workers_per_node(t.resources, bundle)) for t in node_types if t.max_count != 0]
        hosts = [(t, per_node) for t, per_node in hosts if per_node > 0]
        if not hosts:
            offered = "; ".join(f"{t.name}: {dict(t.resources)}" for t in node_types)
            raise ConfigError(
                f"scaling: one worker needs {need} but no node type of {where} offers that (node types: "
                f"{offered}) (allowed: cpus_per_worker and use_gpu that one node type can host)"
            )
        unbounded = any(t.max_count < 0 for t, _ in hosts)
        grows_to = sum(per_node * t.max_count for t, per_node in hosts if t.max_count > 0)
        if not unbounded and grows_to < workers:
            raise ConfigError(
                f"scaling.workers_per_trial: {workers} workers of {need} each, but {where} grows to at "
                f"most {grows_to} (allowed: 1..{grows_to})"
            )
        host, per_node = hosts[0]
        return (
            f"trials: {workers} workers of {need} each on node type {host.name} ({per_node} per node; "
            "the autoscaler adds nodes as trials start)"
        )
    have, total = float(available.get("CPU", 0.0)), trial_cpus(scaling)
    if total > have + 1e-9:
        fits = max(int((have - TRIAL_DRIVER_CPU) / scaling.cpus_per_worker + 1e-9), 0)
        allowed = (
            f"workers_per_trial x cpus_per_worker <= {have - TRIAL_DRIVER_CPU:g}, e.g. {fits} workers"
            if fits
            else f"a cluster with at least {total:g} CPUs"
        )
        raise ConfigError(
            f"scaling.cpus_per_worker: a trial needs {total:g} CPUs ({workers} workers x "
            f"{scaling.cpus_per_worker:g} + {TRIAL_DRIVER_CPU} trial driver) but {where} has {have:g} "
            f"(allowed: {allowed})"
        )
    if scaling.use_gpu and float(available.get("GPU", 0.0)) < workers:
        raise ConfigError(
            f"scaling.use_gpu: a trial needs {workers} GPUs but {where} has "
            f"{available.get('GPU', 0.0):g} (allowed: use_gpu: false, or a cluster with GPUs)"
        )
    return f"trials: {workers} workers of {need} each on the {have:g} CPUs up now"


def check_local_resources(scaling: ScalingSpec) -> None:
    """Without RAY_ADDRESS a local Ray gets this machine's CPUs: check before starting anything."""
    if not os.environ.get("RAY_ADDRESS"):
        check_resources(scaling, {"CPU": float(os.cpu_count() or 1)}, "this machine (local Ray)")


def autoscaler_node_types() -> list[NodeType]:
    """The worker node groups the cluster's autoscaler reported to the GCS (KubeRay, `ray up`); [] when no
    autoscaler runs. Read through Ray's own state API, as Ray Data's autoscaling does."""
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    if config is None:
        return []
    return [
        NodeType(group.name, dict(group.resources), group.max_count)
        for group in config.node_group_configs
        if group.max_count != 0
    ]


def connect_ray(scaling: ScalingSpec, storage_path: str) -> None:
    """Joins the cluster in RAY_ADDRESS (set by `ray job submit`) or starts a local one, then checks it."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if not address:  # a local ray.init() would otherwise write ~/.ray/auth_token, and every later
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # `ray start` on this machine would require it
    ray.init(address=address or None, log_to_driver=True)
    print(cluster_preflight(scaling, storage_path, f"the Ray cluster at {address or 'local'}"))


def cluster_preflight(scaling: ScalingSpec, storage_path: str, where: str) -> str:
    """Checks a trial against the connected cluster (what it can grow to) and its storage; says where
    trials go."""
    import ray

    node_types = autoscaler_node_types()
    plan = check_resources(scaling, ray.cluster_resources(), where, node_types)
    alive = sum(1 for node in ray.nodes() if node["Alive"])
    check_storage(storage_path, alive > 1 or bool(node_types), where)
    return f"{plan}; {alive} node(s) up"


def cluster_report(cfg: ExperimentConfig) -> str:
    """The preflight against the cluster in RAY_ADDRESS, for a dry run (it connects, starts nothing)."""
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        return "  no RAY_ADDRESS: checked against this machine only (set it to check a cluster)"
    import ray

    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except Exception as exc:  # a dry run reports an unreachable cluster instead of raising
        return f"  {address}: not reachable ({type(exc).__name__}: {exc})"
    try:
        return "  " + cluster_preflight(cfg.scaling, cfg.run.storage_path, f"the Ray cluster at {address}")
    finally:
        ray.shutdown()


def check_storage(storage_path: str, multi_node: bool, where: str) -> None:
    """Checkpoints must be where every node can read them once there is more than one node."""
    if multi_node and "://" not in storage_path:
        raise ConfigError(
            f"run.storage_path: {storage_path!r} is a local path, but {where} has several nodes (or can add "
            "them): a worker restarted elsewhere would not find its checkpoints (allowed: s3://... or a "
            "filesystem mounted on every node, given as file:///path)"
        )


def this_driver() -> str:
    """How a user finds this driver again: its Ray job's submission id, else its host and pid."""
    job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    submission_id = job_config.get("metadata", {}).get("job_submission_id")
    if submission_id:
        return f"Ray job {submission_id} (`ray job stop {submission_id}` stops it)"
    return f"the driver with pid {os.getpid()} on {socket.gethostname()}"


@contextlib.contextmanager
def sweep_lock(spec: SweepSpec) -> Iterator[None]:
    """A named actor per Tune experiment, owned by this driver, so Ray removes it when the driver ends, even
    by kill -9: a second driver of the same sweep is refused while this one lives (both would otherwise
    train the same trials into the same runs)."""
    import ray

    @ray.remote(num_cpus=0)
    class SweepLock:
        def __init__(self, holder: str, since: str) -> None:
            self.holder, self.since = holder, since

        def describe(self) -> list[str]:
            return [self.holder, self.since]

    name = f"lock:{spec.experiment_name}"
    try:
        lock = SweepLock.options(name=name, namespace=LOCK_NAMESPACE).remote(  # type: ignore[attr-defined]
            this_driver(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
        )
        ray.get(lock.describe.remote())
    except ValueError:  # "The name ... is already taken"
        described: list[str] = ray.get(ray.get_actor(name, namespace=LOCK_NAMESPACE).describe.remote())
        holder, since = described
        raise SweepBusy(
            f"sweep {spec.experiment_name} is already running in {holder}, since {since}; wait "
            "for it, stop it, or pass --new-experiment to run this submission as a new experiment"
        ) from None
    try:
        yield
    finally:
        ray.kill(lock)


def worker_env(tracking_uri: str) -> dict[str, str]:
    from urllib.parse import urlsplit

    from orchestrator.tracking import QUIET_ENV

    if urlsplit(tracking_uri).password is not None:
        raise ConfigError(
            "tracking.uri: holds a password, which would reach Ray's logs with the workers' env (allowed: a "
            "URI without user:password@; set MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN on the nodes)"
        )

    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    return {**env, **QUIET_ENV, "MLFLOW_TRACKING_URI": tracking_uri}


# --- the trial driver ------------------------------------------------------------------------------


def train_driver_fn(params: dict[str, Any], context: TrialContext) -> None:
    """One Tune trial: its MLflow child run, then a TorchTrainer fit over `workers_per_trial` workers."""
    os.environ.update(context.worker_env)  # telemetry off before this actor imports mlflow
    from mlflow import MlflowClient
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestrator.storage import ray_storage
    from orchestrator.tracking import open_trial_run, trial_name
    from orchestrator.worker import train_fn_per_worker

    cfg = apply_trial_params(ExperimentConfig.from_dict(context.base), params)
    name = trial_name(context.experiment_name, tune.get_context().get_trial_id(), params)
    client = MlflowClient(context.tracking_uri)
    run_id = open_trial_run(
        client,
        context.mlflow_experiment_id,
        parent_run_id=context.parent_run_id,
        name=name,
        cfg=cfg,
        params=params,
        dataset=context.dataset,
    )
    scaling = cfg.scaling
    storage_path, storage_filesystem = ray_storage(cfg.run.storage_path, cfg.run.storage_retry_s)
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={
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
    from orchestrator import tracking

    uri = tracking.resolve_tracking_uri(cfg)
    dataset = dataset_input(cfg)
    connect_ray(cfg.scaling, cfg.run.storage_path)
    with sweep_lock(spec):
        train_sweep_under_lock(spec, uri, dataset)


def train_sweep_under_lock(spec: SweepSpec, uri: str, dataset: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    from orchestrator import tracking

    cfg = spec.experiment
    client = MlflowClient(uri)
    exp_id, parent_id = tracking.open_sweep_run(client, spec)
    print(f"sweep {spec.experiment_name}: parent run {parent_id} (MLflow experiment {exp_id})")
    context = TrialContext(
        base=cfg.to_dict(),
        experiment_name=spec.experiment_name,
        tracking_uri=uri,
        mlflow_experiment_id=exp_id,
        parent_run_id=parent_id,
        dataset=dataset,
        worker_env=worker_env(uri),
    )
    try:
        results = fit_tuner(spec, context)
        finish(client, spec, exp_id, parent_id, results, dataset)
    except BaseException:
        client.set_terminated(parent_id, "FAILED")
        raise
    client.set_terminated(parent_id, "FINISHED")


def keep_credentials_out_of_trial_runtime_envs() -> None:
    """Ray Tune copies the driver's AWS credentials into every trial actor's runtime env
    (ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE), and Ray writes runtime envs in plain text to
    runtime_env_agent.log. Trial actors take them from their node instead, like every other Ray worker."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = set(class_cache.ENV_VARS_TO_PROPAGATE) - set(CREDENTIAL_ENV)


def fit_tuner(spec: SweepSpec, context: TrialContext) -> list[Any]:
    """Restores the sweep's Tune experiment if it exists (resume_errored), else starts it."""
    from ray import tune

    keep_credentials_out_of_trial_runtime_envs()
    from orchestrator.storage import ray_storage

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
        ASHAScheduler(time_attr="step", max_t=spec.experiment.run.steps, grace_period=t.grace_period)
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
    """Summary tables on the parent run; the best trial's checkpoint registered under the alias."""
    from orchestrator import registry

    rows = registry.result_rows(spec, results)
    registry.log_summary(client, parent_id, rows, spec.tune.metric, spec.tune.mode)
    registry.log_training_pareto(client, parent_id, spec, results)
    version = registry.register_best(
        client,
        spec,
        exp_id=exp_id,
        parent_run_id=parent_id,
        rows=rows,
        results=results,
        data_digest=dataset["digest"],
    )
    if version is None:
        failed = [r for r in results if r.error is not None]
        first = f"; first error: {str(failed[0].error).strip().splitlines()[-1]}" if failed else ""
        raise SweepError(
            f"{len(failed)} of {len(results)} trials failed and none reported a finite "
            f"{spec.tune.metric!r} with a checkpoint{first} (summary.md on run {parent_id})"
        )
    tracked = spec.experiment.tracking
    holder = client.get_model_version_by_alias(tracked.registered_model, tracked.alias).version
    print(
        f"models:/{tracked.registered_model}@{tracked.alias} -> version {holder}; registered "
        f"version {version.version} "
        f"(trial {version.tags['sweep.trial']}, {spec.tune.metric} {version.tags[spec.tune.metric]})"
    )


if __name__ == "__main__":
    sys.exit(main())
