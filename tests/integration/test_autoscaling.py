"""@slow: the shipped sweep on an autoscaling Ray cluster, KubeRay's shape on this machine: a 0-CPU head whose
autoscaler (v2, with the fake multi-node provider Ray's own autoscaler tests use) adds 1-CPU worker nodes, up
to two, sharing the session cluster's MLflow server and S3 store.
- the dry run of `sweeps/noise.yaml` with only `--set` overrides accepts the cluster, though nothing can run
  on it now, and names the node type that will host trials; a request beyond what it can grow to is refused;
- a one-trial sweep makes the autoscaler add a node, and the trial trains there and finishes.

`ray.cluster_utils.AutoscalingCluster` is not used: it runs `ray stop --force` (every Ray cluster on the
machine, the session's included) and reads a config file the Ray wheel does not ship."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.services import LocalCluster, free_ports
from tests.integration.conftest import REPO

pytestmark = pytest.mark.slow

WORKER_TYPE = "cpu-worker"
MAX_WORKERS = 2
HEAD_ID = "f" * 51 + "00000"  # the fake provider's id for the head it did not start
SWEEP = f"""
name: autoscaling
base: {REPO / "sweeps" / "base" / "mnist.yaml"}
overrides:
  run.steps: 30
  run.log_every: 5
  run.checkpoint_every: 10
  optim.total_steps: 30
  optim.warmup_steps: 5
  loss.adversarial_start_step: 15
  data.shuffle_buffer: 100
  scaling.workers_per_trial: 1
  scaling.cpus_per_worker: 0.99    # + the 0.01 trial driver: one trial fills one added node
  tracking.experiment: sphere-autoscaling
  tracking.registered_model: sphere-autoscaling
  eval.dataset: none
search:
  run.seed: {{grid: [0]}}
"""


def load_procs() -> Any:
    """infra/local/procs.py: finds every process carrying a cluster's marker, the autoscaler's nodes too."""
    spec = importlib.util.spec_from_file_location("procs", REPO / "infra" / "local" / "procs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def autoscaling_config(gcs_port: int) -> dict[str, Any]:
    """What `ray up` would hand the head's autoscaler, for nodes started as processes on this machine."""
    provider = {
        "type": "external",  # the fake provider's own type reads an example file missing from the wheel
        "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
        "gcs_address": f"127.0.0.1:{gcs_port}",
        "head_node_id": HEAD_ID,
        "launch_multiple": True,
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
    }
    worker = {"CPU": 1, "object_store_memory": 150_000_000}
    return {
        "cluster_name": "sphere-autoscaling-test",
        "max_workers": MAX_WORKERS,
        "provider": provider,
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {
                "resources": worker,
                "node_config": {},
                "min_workers": 0,
                "max_workers": MAX_WORKERS,
            },
        },
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@pytest.fixture(scope="module")
def autoscaling_cluster(local_cluster: LocalCluster) -> Iterator[str]:
    """The head's GCS address; every process of this cluster carries its own marker, so only it is stopped."""
    procs = load_procs()
    state = Path(tempfile.mkdtemp(prefix="as-", dir="/tmp"))  # short: Ray's socket paths
    gcs_port, dashboard_port, agent_port, client_port = free_ports(4)
    config = state / "autoscaling.json"
    config.write_text(json.dumps(autoscaling_config(gcs_port)))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env |= {
        "RAY_FAKE_CLUSTER": "1",
        "RAY_enable_autoscaler_v2": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        "RAY_CLOUD_INSTANCE_ID": HEAD_ID,
        "RAY_OVERRIDE_NODE_ID_FOR_TESTING": HEAD_ID,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback only (see the stack notes)
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        procs.CLUSTER_MARKER: str(state),
    }
    ray = Path(sys.executable).with_name("ray")
    argv = [str(ray), "start", "--head", "--block", "--disable-usage-stats", "--num-cpus", "0"]
    argv += ["--port", str(gcs_port), "--autoscaling-config", str(config), "--temp-dir", str(state / "ray")]
    argv += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port)]
    argv += ["--dashboard-agent-listen-port", str(agent_port), "--ray-client-server-port", str(client_port)]
    argv += ["--object-store-memory", "150000000", "--min-worker-port", "0", "--max-worker-port", "0"]
    log = (state / "head.log").open("w")
    head = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not dashboard_up(dashboard_port, local_cluster.ray_token):
            assert head.poll() is None and time.monotonic() < deadline, (state / "head.log").read_text()
            time.sleep(1)
        yield f"127.0.0.1:{gcs_port}"
    finally:
        procs.stop_pids(procs.marked_pids(state), timeout_s=20)
        log.close()
        left = procs.marked_pids(state)
        shutil.rmtree(state, ignore_errors=True)
        assert not left, f"autoscaling cluster left processes: {left}"


def dashboard_up(port: int, token: str) -> bool:
    """The head inherits the session's RAY_AUTH_MODE=token and token file: its dashboard takes the token."""
    url = f"http://127.0.0.1:{port}/api/version"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_the_shipped_sweep_fits_what_the_cluster_can_grow_to_and_the_autoscaler_adds_its_node(
    autoscaling_cluster: str, mnist_shards: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    env = {**os.environ, "RAY_ADDRESS": autoscaling_cluster, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_API_SERVER_ADDRESS", None)

    def sweep(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "orchestrator.sweep", *args]
        return subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )

    checked = sweep("sweeps/noise.yaml", "--dry-run", "--set", f"data.url={mnist_shards}")
    assert checked.returncode == 0, checked.stderr
    assert (
        f"trials: 1 workers of 0.99 CPU each on node type {WORKER_TYPE} (1 per node; the autoscaler adds "
        f"nodes as trials start), trial drivers on a node of type {WORKER_TYPE}; 1 node(s) up"
    ) in checked.stdout  # the 0-CPU head has no room for a driver; a 1-CPU node has, beside its worker
    too_big = sweep("sweeps/noise.yaml", "--dry-run", "--set", "scaling.workers_per_trial=3")
    assert too_big.returncode == 2
    assert too_big.stderr.startswith(
        f"error: scaling.workers_per_trial: 3 workers of 0.99 CPU each, but the Ray cluster at "
        f"{autoscaling_cluster} grows to at most {MAX_WORKERS} (allowed: 1..{MAX_WORKERS})"
    ), too_big.stderr

    path = tmp_path / "autoscaling.yaml"
    path.write_text(SWEEP)
    started = time.monotonic()
    finished = sweep(str(path), timeout_s=600)
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output[-6000:]
    assert f"Adding 1 node(s) of type {WORKER_TYPE}" in output, output[-6000:]
    print(f"one trial on an autoscaled node: {time.monotonic() - started:.0f} s")

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("sphere-autoscaling")
    assert experiment is not None
    trials = [
        r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(trials[0].info.run_id, "loss"))
    assert steps == list(range(5, 31, 5))
