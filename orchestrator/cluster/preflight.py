"""Checks before any cluster work: does a trial fit what the cluster has or can grow to, is the checkpoint
storage shared once there are several nodes, can the model read the dataset. Each failure is a ConfigError
naming the field and what is allowed."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray._private.state
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.kuberay.node_provider import KubernetesHttpApiClient

from orchestrator.config.schema import ExperimentConfig, ScalingConfig
from orchestrator.data.shards import read_manifest
from sphere_core.config import ConfigError, short_repr

HEAD_MARKER = "node:__internal_head__"  # ray._common.constants.HEAD_NODE_RESOURCE_NAME
TRIAL_DRIVER_CPU = 0.01  # 0 is rejected by Tune; 1 (Tune's default) deadlocks the Train workers on 2 cores


def trial_cpus(scaling: ScalingConfig) -> float:
    return TRIAL_DRIVER_CPU + scaling.workers_per_trial * scaling.cpus_per_worker


@dataclass(frozen=True)
class NodeType:
    """An autoscaler node group: what one node offers and how many there may be (-1: no limit)."""

    name: str
    resources: Mapping[str, float]
    max_count: int


def worker_bundle(scaling: ScalingConfig) -> dict[str, float]:
    return {"CPU": scaling.cpus_per_worker} | ({"GPU": 1.0} if scaling.use_gpu else {})


def workers_per_node(resources: Mapping[str, float], bundle: Mapping[str, float]) -> int:
    return min(int(float(resources.get(key, 0.0)) / need + 1e-9) for key, need in bundle.items() if need > 0)


def _minus(resources: Mapping[str, float], used: Mapping[str, float]) -> dict[str, float]:
    return {key: float(value) - float(used.get(key, 0.0)) for key, value in resources.items()}


def _fits(resources: Mapping[str, float], bundle: Mapping[str, float]) -> bool:
    return all(float(resources.get(key, 0.0)) + 1e-9 >= need for key, need in bundle.items())


def check_resources(
    scaling: ScalingConfig,
    available: Mapping[str, float],
    where: str,
    node_types: Sequence[NodeType] = (),
    head: Mapping[str, float] | None = None,
) -> str:
    """One trial (its driver and all its workers) must fit what the cluster has, or, on an autoscaling
    cluster (`node_types`), what it can grow to; otherwise Tune waits forever. `head` is what the node the
    sweep runs on offers (`available` when not given). Returns where trials go."""
    if node_types:
        return _check_autoscaling(scaling, where, node_types, available if head is None else head)
    bundle, workers = worker_bundle(scaling), scaling.workers_per_trial
    need = ", ".join(f"{value:g} {key}" for key, value in bundle.items())
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


def _check_autoscaling(
    scaling: ScalingConfig, where: str, node_types: Sequence[NodeType], head: Mapping[str, float]
) -> str:
    """The trial driver (a Tune actor of TRIAL_DRIVER_CPU) goes first: on the head when it offers a CPU,
    else on a node of some type, which then hosts fewer workers. KubeRay's usual 0-CPU head with 8-CPU GPU
    pods needs, for 8 workers of 8 CPU, 9 pods: one of them only for the driver."""
    bundle, workers = worker_bundle(scaling), scaling.workers_per_trial
    need = ", ".join(f"{value:g} {key}" for key, value in bundle.items())
    per_node = {t.name: workers_per_node(t.resources, bundle) for t in node_types}
    hosts = [t for t in node_types if per_node[t.name] > 0]
    if not hosts:
        offered = "; ".join(f"{t.name}: {dict(t.resources)}" for t in node_types)
        raise ConfigError(
            f"scaling: one worker needs {need} but no node type of {where} offers that (node types: "
            f"{offered}) (allowed: cpus_per_worker and use_gpu that one node type can host)"
        )
    unbounded = any(t.max_count < 0 for t in hosts)
    grows_to = sum(per_node[t.name] * t.max_count for t in hosts if t.max_count > 0)
    driver = {"CPU": TRIAL_DRIVER_CPU}
    if _fits(head, driver):
        driver_at, lost = "the head", 0
        grows_to += workers_per_node(_minus(head, driver), bundle)
    else:  # the node type whose nodes lose the fewest workers to the driver
        losses = [
            (per_node[t.name] - workers_per_node(_minus(t.resources, driver), bundle), t.name)
            for t in node_types
            if _fits(t.resources, driver)
        ]
        if not losses:
            raise ConfigError(
                f"scaling: the trial driver needs {TRIAL_DRIVER_CPU} CPU but neither the head of {where} "
                f"(0 CPU) nor any node type offers one (allowed: a head with num-cpus >= 1, or a CPU "
                "node type)"
            )
        lost, host_name = min(losses)
        driver_at = f"a node of type {host_name}"
    if not unbounded and grows_to - lost < workers:
        if lost:
            raise ConfigError(
                f"scaling.workers_per_trial: {workers} workers of {need} each, but the trial driver "
                f"({TRIAL_DRIVER_CPU} CPU) finds no CPU on the head of {where} and takes {driver_at}, "
                f"which then hosts {lost} worker(s) fewer: {where} grows to at most {grows_to - lost} "
                f"workers beside the driver (allowed: workers_per_trial 1..{grows_to - lost}, a "
                "cpus_per_worker that leaves a node room for the driver, or a head with num-cpus >= 1)"
            )
        raise ConfigError(
            f"scaling.workers_per_trial: {workers} workers of {need} each, but {where} grows to at "
            f"most {grows_to} (allowed: 1..{grows_to})"
        )
    return (
        f"trials: {workers} workers of {need} each on node type {hosts[0].name} ({per_node[hosts[0].name]} "
        f"per node; the autoscaler adds nodes as trials start), trial drivers on {driver_at}"
    )


def check_local_resources(scaling: ScalingConfig) -> None:
    """Without RAY_ADDRESS a local Ray gets this machine's CPUs: check before starting anything."""
    if not os.environ.get("RAY_ADDRESS"):
        check_resources(scaling, {"CPU": float(os.cpu_count() or 1)}, "this machine (local Ray)")


def autoscaler_node_types() -> list[NodeType]:
    """The worker node groups the cluster's autoscaler can add; [] when no autoscaler runs.

    Ray reads them from the GCS (Ray Data's autoscaling does), but Ray 2.60's autoscaler never reports them
    there, so the config it reads is read here as well: the file the head's autoscaler monitor was started
    with (`ray up` gives it ~/ray_bootstrap_config.yaml; `ray start --head --autoscaling-config`), or on
    KubeRay the RayCluster resource, through Ray's own KubeRay reader. The sweep driver runs on the head."""
    reported = ray._private.state.state.get_cluster_config()
    if reported is not None and reported.node_group_configs:
        return [
            NodeType(group.name, dict(group.resources), group.max_count)
            for group in reported.node_group_configs
            if group.max_count != 0
        ]
    gcs_port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[-1]
    config = monitor_autoscaling_config(gcs_port) or kuberay_autoscaling_config()
    return node_types_from_autoscaling_config(config) if config else []


def node_types_from_autoscaling_config(config: Mapping[str, Any]) -> list[NodeType]:
    """Worker node types of a Ray autoscaling config (cluster-launcher YAML or KubeRay's derived one)."""
    cluster_max = int(config.get("max_workers", -1))
    types = []
    for name, spec in dict(config.get("available_node_types") or {}).items():
        if name == config.get("head_node_type"):
            continue
        max_count = int(spec.get("max_workers", cluster_max))
        if cluster_max >= 0:
            max_count = cluster_max if max_count < 0 else min(max_count, cluster_max)
        if max_count != 0:
            resources = {key: float(value) for key, value in (spec.get("resources") or {}).items()}
            types.append(NodeType(name, resources, max_count))
    return types


def monitor_autoscaling_config(gcs_port: str) -> dict[str, Any] | None:
    """The config file of the autoscaler monitor serving the GCS on `gcs_port`, if it runs on this node."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = [arg.decode(errors="replace") for arg in cmdline.read_bytes().split(b"\0") if arg]
        except OSError:  # gone meanwhile, or another user's process
            continue
        if not any(arg.endswith("monitor.py") for arg in argv[:3]):
            continue
        flags = dict(arg.split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)
        path = flags.get("--autoscaling-config")
        if path and flags.get("--gcs-address", "").rsplit(":", 1)[-1] == gcs_port:
            try:
                # `ray up` passes --autoscaling-config=~/ray_bootstrap_config.yaml: no shell expands a `~`
                # after `=`, and the monitor expands it itself
                return dict(yaml.safe_load(Path(path).expanduser().read_text()))
            except (OSError, yaml.YAMLError) as exc:
                print(
                    f"preflight: cannot read the autoscaler's config {path} ({exc}); "
                    "checking the nodes up now"
                )
    return None


def kuberay_autoscaling_config() -> dict[str, Any] | None:
    """On a KubeRay pod (the operator sets RAY_CLUSTER_NAME), the autoscaling config Ray's KubeRay
    autoscaler derives from this RayCluster, read with the pod's service account as that autoscaler does."""
    name = os.environ.get("RAY_CLUSTER_NAME")
    namespace_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    if not name or not namespace_file.exists():
        return None

    try:  # once, not with the autoscaler's five 5-s retries: a preflight answers at once
        cluster = KubernetesHttpApiClient(namespace=namespace_file.read_text().strip()).get(
            f"rayclusters/{name}"
        )
        return dict(_derive_autoscaling_config_from_ray_cr(cluster))
    except Exception as exc:  # RBAC, API server, or a CR Ray cannot read: fall back to the nodes up now
        print(
            f"preflight: cannot read RayCluster {name} ({type(exc).__name__}: {exc}); "
            "checking the nodes up now"
        )
        return None


def connect_ray(scaling: ScalingConfig, storage_path: str) -> None:
    """Joins the cluster in RAY_ADDRESS (set by `ray job submit`) or starts a local one, then checks it."""
    address = os.environ.get("RAY_ADDRESS")
    # A local ray.init() would otherwise write ~/.ray/auth_token, and every later `ray start` on this machine
    # would require it; a mode set explicitly (the local cluster's env file says token) is kept.
    if not address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=address or None, log_to_driver=True)
    print(cluster_preflight(scaling, storage_path, f"the Ray cluster at {address or 'local'}"))


def cluster_preflight(scaling: ScalingConfig, storage_path: str, where: str) -> str:
    """Checks a trial against the connected cluster (what it can grow to) and its storage; says where
    trials go."""
    node_types = autoscaler_node_types()
    alive = [node for node in ray.nodes() if node["Alive"]]
    # Ray marks its head with this resource; the trial drivers may use what it offers
    head: dict[str, float] = next((n["Resources"] for n in alive if HEAD_MARKER in n["Resources"]), {})
    plan = check_resources(scaling, ray.cluster_resources(), where, node_types, head=head)
    check_storage(storage_path, len(alive) > 1 or bool(node_types), where)
    return f"{plan}; {len(alive)} node(s) up"


def cluster_report(cfg: ExperimentConfig) -> str:
    """The preflight against the cluster in RAY_ADDRESS, for a dry run (it connects, starts nothing)."""
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        return "  no RAY_ADDRESS: checked against this machine only (set it to check a cluster)"

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
            f"run.storage_path: {short_repr(storage_path)} is a local path, but {where} has several "
            "nodes (or can add them): a worker restarted elsewhere would not find its checkpoints (allowed: "
            "s3://... or a filesystem mounted on every node, given as file:///path)"
        )


def dataset_input(cfg: ExperimentConfig) -> dict[str, Any]:
    """The manifest as logged with every trial; fails if the model cannot read this dataset."""
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
