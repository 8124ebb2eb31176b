"""Checks before any cluster work (orchestrator/cluster/preflight.py): resources now and at full scale,
storage."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from orchestrator.cluster.preflight import (
    NodeType,
    check_resources,
    check_storage,
    node_types_from_autoscaling_config,
    trial_cpus,
)
from orchestrator.config.loader import load_sweep
from orchestrator.config.schema import ScalingConfig
from sphere_core.config import ConfigError


def test_resources_per_trial_and_refusals() -> None:
    two_by_half = ScalingConfig(workers_per_trial=2, cpus_per_worker=0.49)
    assert trial_cpus(two_by_half) == pytest.approx(0.99)
    check_resources(two_by_half, {"CPU": 1.0}, "a 1-CPU cluster")
    with pytest.raises(
        ConfigError, match=r"needs 2.01 CPUs \(2 workers x 1 \+ 0.01 trial driver\) but the x"
    ):
        check_resources(ScalingConfig(workers_per_trial=2, cpus_per_worker=1.0), {"CPU": 2.0}, "the x")
    with pytest.raises(ConfigError, match=r"scaling\.use_gpu: a trial needs 2 GPUs"):
        check_resources(ScalingConfig(use_gpu=True), {"CPU": 8.0, "GPU": 1.0}, "the x")
    with pytest.raises(ConfigError, match=r"has 0 \(allowed: a cluster with at least 0\.99 CPUs\)"):
        check_resources(two_by_half, {}, "a 0-CPU head")  # never a negative bound


def test_an_autoscaling_cluster_is_checked_against_what_it_can_grow_to() -> None:
    """KubeRay's shape: a 0-CPU head and a GPU group that starts at 0 nodes."""
    gpu_group = NodeType("gpu-group", {"CPU": 8.0, "GPU": 2.0, "memory": 6e10}, max_count=4)
    head = NodeType("headgroup", {"CPU": 0.0}, max_count=1)
    four_gpus = ScalingConfig(workers_per_trial=4, cpus_per_worker=3.0, use_gpu=True)
    plan = check_resources(four_gpus, {"CPU": 0.0}, "the cluster", [head, gpu_group])
    assert plan == (
        "trials: 4 workers of 3 CPU, 1 GPU each on node type gpu-group (2 per node; the autoscaler adds "
        "nodes as trials start)"
    )
    with pytest.raises(
        ConfigError, match=r"workers_per_trial: 9 workers .* grows to at most 8 \(allowed: 1\.\.8\)"
    ):
        check_resources(
            dataclasses.replace(four_gpus, workers_per_trial=9), {}, "the cluster", [head, gpu_group]
        )
    with pytest.raises(ConfigError, match=r"one worker needs 12 CPU, 1 GPU but no node type of the cluster"):
        check_resources(
            dataclasses.replace(four_gpus, cpus_per_worker=12.0), {}, "the cluster", [head, gpu_group]
        )
    unbounded = NodeType("cpu", {"CPU": 4.0}, max_count=-1)
    assert "on node type cpu" in check_resources(ScalingConfig(workers_per_trial=64), {}, "c", [unbounded])


def test_a_local_storage_path_is_refused_once_there_are_several_nodes() -> None:
    check_storage("/tmp/ray-results", multi_node=False, where="one machine")
    check_storage("s3://bucket/ray-results", multi_node=True, where="the cluster")
    check_storage("file:///mnt/shared/ray-results", multi_node=True, where="the cluster")
    with pytest.raises(
        ConfigError, match=r"run\.storage_path: '/tmp/ray-results' is a local path, but the c"
    ):
        check_storage("/tmp/ray-results", multi_node=True, where="the cluster")


REPO = Path(__file__).resolve().parents[3]
ON_GPUS = {"scaling.use_gpu": True, "data.url": "s3://mine/train", "run.storage_path": "s3://mine/ray"}


def test_the_shipped_kuberay_cluster_is_read_as_its_autoscaler_reads_it() -> None:
    """Ray's own KubeRay reader (what the preflight calls on a head pod) turns the shipped RayCluster into
    node types; the shipped sweep with only --set overrides fits its GPU group."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cluster = yaml.safe_load((REPO / "infra/kuberay/raycluster.yaml").read_text())
    cluster["metadata"]["namespace"] = "default"  # as the API server returns it
    types = node_types_from_autoscaling_config(_derive_autoscaling_config_from_ray_cr(cluster))
    assert [(t.name, t.resources["CPU"], t.resources["GPU"], t.max_count) for t in types] == [
        ("gpu", 8.0, 1.0, 8)
    ]
    spec = load_sweep(REPO / "sweeps/noise.yaml", ON_GPUS)
    plan = check_resources(spec.experiment.scaling, {"CPU": 0.0}, "the RayCluster", types)
    assert plan.startswith("trials: 1 workers of 0.99 CPU, 1 GPU each on node type gpu (1 per node;")


def test_the_shipped_cluster_launcher_config_is_read_without_its_head() -> None:
    config = yaml.safe_load((REPO / "infra/ray-cluster/aws-gpu.yaml").read_text())
    types = node_types_from_autoscaling_config(config)
    assert [t.name for t in types] == [
        n for n in config["available_node_types"] if n != config["head_node_type"]
    ]
    assert all(t.resources["GPU"] == 8 and 0 < t.max_count <= config["max_workers"] for t in types)
    spec = load_sweep(REPO / "sweeps/noise.yaml", ON_GPUS | {"scaling.workers_per_trial": 8})
    assert "8 per node" in check_resources(spec.experiment.scaling, {"CPU": 8.0}, "the cluster", types)


def test_the_cluster_wide_worker_limit_caps_each_node_type() -> None:
    config = {
        "max_workers": 3,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 4}, "max_workers": 0},
            "big": {"resources": {"CPU": 16}, "max_workers": 10},
            "small": {"resources": {"CPU": 2}},
            "off": {"resources": {"CPU": 2}, "max_workers": 0},
        },
    }
    assert node_types_from_autoscaling_config(config) == [
        NodeType("big", {"CPU": 16.0}, 3),
        NodeType("small", {"CPU": 2.0}, 3),
    ]
    unbounded = node_types_from_autoscaling_config({"available_node_types": {"w": {"resources": {"CPU": 1}}}})
    assert unbounded == [NodeType("w", {"CPU": 1.0}, -1)]
