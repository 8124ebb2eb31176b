"""Checks before any cluster work (orchestrator/cluster/preflight.py): resources now and at full scale,
storage."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cluster.preflight import (
    NodeType,
    check_resources,
    check_storage,
    monitor_autoscaling_config,
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
        "nodes as trials start), trial drivers on a node of type gpu-group"
    )
    with pytest.raises(
        ConfigError, match=r"workers_per_trial: 9 workers .* grows to at most 8 \(allowed: 1\.\.8\)"
    ):
        check_resources(
            dataclasses.replace(four_gpus, workers_per_trial=9), {"CPU": 1.0}, "the cluster", [gpu_group]
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


def _kuberay(cluster: dict[str, Any]) -> tuple[list[NodeType], dict[str, float]]:
    """What the preflight sees on a head pod: Ray's own KubeRay reader turns the RayCluster into node
    types; the head offers what its rayStartParams say."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cluster["metadata"]["namespace"] = "default"  # as the API server returns it
    config = _derive_autoscaling_config_from_ray_cr(cluster)
    head = config["available_node_types"][config["head_node_type"]]["resources"]
    return node_types_from_autoscaling_config(config), {key: float(value) for key, value in head.items()}


def _shipped_raycluster() -> dict[str, Any]:
    cluster: dict[str, Any] = yaml.safe_load((REPO / "infra/kuberay/raycluster.yaml").read_text())
    return cluster


EIGHT_GPU_TRIAL = ON_GPUS | {"scaling.workers_per_trial": 8, "scaling.cpus_per_worker": 8.0}


def test_the_shipped_kuberay_cluster_places_an_eight_gpu_trial_on_one_node_and_its_driver_on_the_head() -> (
    None
):
    types, head = _kuberay(_shipped_raycluster())
    assert [(t.name, t.resources["GPU"], t.max_count) for t in types] == [("gpu-node", 8.0, 4)]
    assert head["CPU"] >= 1 and head.get("GPU", 0.0) == 0
    spec = load_sweep(REPO / "sweeps/noise.yaml", EIGHT_GPU_TRIAL)
    plan = check_resources(spec.experiment.scaling, head, "the RayCluster", types, head=head)
    assert plan.startswith("trials: 8 workers of 8 CPU, 1 GPU each on node type gpu-node (8 per node;")
    assert plan.endswith("trial drivers on the head")
    spec = load_sweep(REPO / "sweeps/noise.yaml", ON_GPUS)  # the shipped sweep with only --set overrides
    assert "trial drivers on the head" in check_resources(
        spec.experiment.scaling, head, "c", types, head=head
    )


def test_the_old_kuberay_layout_is_refused_because_its_trial_driver_has_nowhere_to_go() -> None:
    """A 0-CPU head and one GPU per 8-CPU pod, at most 8 pods: 8 workers of 8 CPU fill all 8 pods and the
    trial's driver needs a ninth, so Tune would wait forever."""
    cluster = _shipped_raycluster()
    cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = "0"
    group = cluster["spec"]["workerGroupSpecs"][0]
    group["maxReplicas"] = 8
    for key in ("requests", "limits"):
        group["template"]["spec"]["containers"][0]["resources"][key] |= {"cpu": "8", "nvidia.com/gpu": "1"}
    types, head = _kuberay(cluster)
    assert head["CPU"] == 0 and [(t.resources["CPU"], t.resources["GPU"], t.max_count) for t in types] == [
        (8.0, 1.0, 8)
    ]
    spec = load_sweep(REPO / "sweeps/noise.yaml", EIGHT_GPU_TRIAL)
    with pytest.raises(ConfigError) as refused:
        check_resources(spec.experiment.scaling, head, "the RayCluster", types, head=head)
    assert str(refused.value) == (
        "scaling.workers_per_trial: 8 workers of 8 CPU, 1 GPU each, but the trial driver (0.01 CPU) finds no "
        "CPU on the head of the RayCluster and takes a node of type gpu-node, which then hosts 1 worker(s) "
        "fewer: the RayCluster grows to at most 7 workers beside the driver (allowed: workers_per_trial "
        "1..7, a cpus_per_worker that leaves a node room for the driver, or a head with num-cpus >= 1)"
    )
    # 7.99 CPU per worker leaves a pod room for the driver: then the same cluster fits the trial
    fits = dataclasses.replace(spec.experiment.scaling, cpus_per_worker=7.99)
    assert "trial drivers on a node of type gpu-node" in check_resources(fits, head, "c", types, head=head)


def test_a_driver_with_no_cpu_anywhere_is_refused() -> None:
    gpus_only = NodeType("gpu", {"CPU": 0.005, "GPU": 8.0}, max_count=2)
    with pytest.raises(ConfigError, match=r"^scaling: the trial driver needs 0.01 CPU but neither the head"):
        check_resources(ScalingConfig(cpus_per_worker=0.0001, use_gpu=True), {}, "c", [gpus_only])


def test_the_autoscaler_config_is_read_with_a_home_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ray up` starts the monitor with --autoscaling-config=~/ray_bootstrap_config.yaml, unexpanded (no shell
    expands a `~` after `=`); a cold GPU cluster was refused when the preflight read that path literally."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump({"max_workers": 2}))
    (tmp_path / "monitor.py").write_text("import time; time.sleep(60)")
    argv = [sys.executable, str(tmp_path / "monitor.py"), "--gcs-address=127.0.0.1:64999"]
    monitor = subprocess.Popen([*argv, "--autoscaling-config=~/ray_bootstrap_config.yaml"])
    try:
        deadline = time.monotonic() + 10
        while (config := monitor_autoscaling_config("64999")) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert config == {"max_workers": 2}
    finally:
        monitor.kill()
        monitor.wait()


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


@pytest.mark.parametrize(
    ("address", "mode", "expected"),
    [
        (None, None, "disabled"),  # a local ray.init() writes no ~/.ray/auth_token
        (None, "token", "token"),  # an explicit mode (the local cluster's env file) is kept
        ("127.0.0.1:6379", None, None),  # a cluster's address: Ray's own default, untouched
    ],
)
def test_connect_ray_disables_token_auth_only_for_a_local_ray_with_no_mode_set(
    monkeypatch: pytest.MonkeyPatch, address: str | None, mode: str | None, expected: str | None
) -> None:
    import os

    import ray

    from orchestrator.cluster import preflight

    for name, value in (("RAY_ADDRESS", address), ("RAY_AUTH_MODE", mode)):
        monkeypatch.setenv(name, value or "")  # recorded, so what connect_ray sets is undone too
        if value is None:
            monkeypatch.delenv(name)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(
        ray, "init", lambda **kwargs: seen.update(kwargs, mode=os.environ.get("RAY_AUTH_MODE"))
    )
    monkeypatch.setattr(preflight, "cluster_preflight", lambda *args: "checked")
    preflight.connect_ray(ScalingConfig(), "/tmp/x")
    assert seen["address"] == address and seen["mode"] == expected


LOCAL_RAY_LISTENERS = """
import os, subprocess
from orchestrator.cluster.preflight import connect_ray
from orchestrator.config.schema import ScalingConfig

def listening():
    shown = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True)
    return set(shown.stdout.splitlines())

before = listening()
connect_ray(ScalingConfig(workers_per_trial=1, cpus_per_worker=0.99), "/tmp/sphere-preflight-probe")
import ray
print("NODE", ray.util.get_node_ip_address())
for line in sorted(listening()):
    if line.split()[3] not in {old.split()[3] for old in before}:
        print("LISTEN", line.split()[3], line.split()[-1])
ray.shutdown()
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ss") is None, reason="needs `ss` (iproute2) to list listening sockets")
def test_a_ray_started_by_the_sweep_itself_listens_on_loopback_only() -> None:
    """Without RAY_ADDRESS (`python -m orchestrator.sweep` with no cluster) connect_ray starts a Ray of its
    own: by Ray's default on the routable address, with GCS, raylet and agents on every interface (the switch
    that keeps it on loopback is set when the orchestrator package is imported)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    temp_dir = tempfile.mkdtemp(prefix="rp-", dir="/tmp")  # short (Ray's socket paths), no other Ray's
    try:
        ran = subprocess.run(
            [sys.executable, "-c", LOCAL_RAY_LISTENERS],
            env=env | {"RAY_TMPDIR": temp_dir},
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = ran.stdout.splitlines()
    assert "NODE 127.0.0.1" in lines
    opened = [line.split()[1] for line in lines if line.startswith("LISTEN")]
    assert any("gcs_server" in line for line in lines), lines  # the scan saw the new Ray: it can fail
    loopback = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")
    exposed = [addr for addr in opened if not addr.startswith(loopback)]
    assert exposed == [], lines
