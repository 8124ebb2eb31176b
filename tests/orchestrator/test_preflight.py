"""Checks before any cluster work (orchestrator/preflight.py): resources now and at full scale, storage."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.config.schema import ScalingSpec
from orchestrator.preflight import NodeType, check_resources, check_storage, trial_cpus
from sphere_core.config import ConfigError


def test_resources_per_trial_and_refusals() -> None:
    two_by_half = ScalingSpec(workers_per_trial=2, cpus_per_worker=0.49)
    assert trial_cpus(two_by_half) == pytest.approx(0.99)
    check_resources(two_by_half, {"CPU": 1.0}, "a 1-CPU cluster")
    with pytest.raises(
        ConfigError, match=r"needs 2.01 CPUs \(2 workers x 1 \+ 0.01 trial driver\) but the x"
    ):
        check_resources(ScalingSpec(workers_per_trial=2, cpus_per_worker=1.0), {"CPU": 2.0}, "the x")
    with pytest.raises(ConfigError, match=r"scaling\.use_gpu: a trial needs 2 GPUs"):
        check_resources(ScalingSpec(use_gpu=True), {"CPU": 8.0, "GPU": 1.0}, "the x")
    with pytest.raises(ConfigError, match=r"has 0 \(allowed: a cluster with at least 0\.99 CPUs\)"):
        check_resources(two_by_half, {}, "a 0-CPU head")  # never a negative bound


def test_an_autoscaling_cluster_is_checked_against_what_it_can_grow_to() -> None:
    """KubeRay's shape: a 0-CPU head and a GPU group that starts at 0 nodes."""
    gpu_group = NodeType("gpu-group", {"CPU": 8.0, "GPU": 2.0, "memory": 6e10}, max_count=4)
    head = NodeType("headgroup", {"CPU": 0.0}, max_count=1)
    four_gpus = ScalingSpec(workers_per_trial=4, cpus_per_worker=3.0, use_gpu=True)
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
    assert "on node type cpu" in check_resources(ScalingSpec(workers_per_trial=64), {}, "c", [unbounded])


def test_a_local_storage_path_is_refused_once_there_are_several_nodes() -> None:
    check_storage("/tmp/ray-results", multi_node=False, where="one machine")
    check_storage("s3://bucket/ray-results", multi_node=True, where="the cluster")
    check_storage("file:///mnt/shared/ray-results", multi_node=True, where="the cluster")
    with pytest.raises(
        ConfigError, match=r"run\.storage_path: '/tmp/ray-results' is a local path, but the c"
    ):
        check_storage("/tmp/ray-results", multi_node=True, where="the cluster")
