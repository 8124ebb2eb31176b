"""@slow: one sweep across several Ray nodes on this machine (Ray's own `ray.cluster_utils.Cluster`: a 0-CPU
head and three 1-CPU raylets, all on 127.0.0.1), sharing the session cluster's MLflow server and S3 store:
- the two trials land on different nodes (each node fits one trial) and checkpoint to the shared store;
- cluster-wide actors (Ray Train's autoscaling coordinator, the sweep lock) stay on the head node;
- a worker *node* removed mid-trial takes the trial's driver and worker with it: Tune reruns the trial,
  which resumes on the spare node from its last checkpoint; MLflow keeps one value per step."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config.loader import load_sweep
from tests.fixtures.services import LocalCluster, free_ports
from tests.integration.conftest import REPO

pytestmark = pytest.mark.slow

SWEEP = f"""
name: multinode
base: {REPO / "sweeps" / "base" / "mnist.yaml"}
overrides:
  run.steps: 200
  run.log_every: 5
  run.checkpoint_every: 20
  optim.total_steps: 200
  optim.warmup_steps: 10
  loss.adversarial_start_step: 100
  data.shuffle_buffer: 100
  scaling.workers_per_trial: 1
  scaling.cpus_per_worker: 0.99    # + the 0.01 trial driver: one trial fills one 1-CPU node
  tracking.experiment: sphere-multinode
  tracking.registered_model: sphere-multinode
  eval.dataset: none
search:
  run.seed: {{grid: [0, 1]}}
tune:
  max_concurrent_trials: 2
"""


@pytest.fixture(scope="module")
def nodes(local_cluster: LocalCluster) -> Iterator[Any]:
    """A Cluster whose raylets inherit this process's env: the session's MLflow server and store."""

    # Every port its own: a user's cluster (`make demo` leaves one up) holds Ray's defaults, 6379 and 8265.
    gcs_port, dashboard_port, *agent_ports = free_ports(6)  # agents: one per raylet
    temp_dir = tempfile.mkdtemp(prefix="mn-", dir="/tmp")  # short: Ray's socket paths
    loopback = {"node_ip_address": "127.0.0.1", "temp_dir": temp_dir}
    # Cluster records its address where ray.init("auto") looks (/tmp/ray/ray_current_cluster): removed below.
    address_file = Path("/tmp/ray/ray_current_cluster")
    address_file.parent.mkdir(exist_ok=True)
    # Not the session cluster's RAY_ADDRESS: Ray Train's PlacementGroupCleaner asks the state API at
    # RAY_ADDRESS whether its controller lives, found none there, exited, and a lost node's placement
    # groups then held the surviving nodes' CPUs (the CI saw both trials wait 10 min for workers).
    with pytest.MonkeyPatch.context() as env:
        env.delenv("RAY_ADDRESS", raising=False)
        env.delenv("RAY_API_SERVER_ADDRESS", raising=False)
        cluster = start_cluster(gcs_port, dashboard_port, agent_ports, loopback)
    try:
        yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if address_file.exists() and address_file.read_text().strip() == cluster.address:
            address_file.unlink()


def start_cluster(
    gcs_port: int, dashboard_port: int, agent_ports: list[int], loopback: dict[str, Any]
) -> Any:
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **loopback,
            "num_cpus": 0,  # as on KubeRay: the head runs the sweep driver, not trials
            "gcs_server_port": gcs_port,
            "dashboard_agent_listen_port": agent_ports[0],
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
        },
    )
    for port in agent_ports[1:4]:
        cluster.add_node(num_cpus=1, dashboard_agent_listen_port=port, **loopback)
    return cluster


def node_of(pid: int, nodes: Any) -> Any:
    """The node whose raylet started process `pid` (a Ray worker is a child of its node's raylet)."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in nodes}
    while pid > 1:
        if pid in raylets:
            return raylets[pid]
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


def test_trials_spread_over_nodes_and_a_lost_node_resumes_from_its_checkpoint(
    nodes: Any, mnist_shards: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    cluster = nodes
    path = tmp_path / "multinode.yaml"
    path.write_text(SWEEP)
    spec = load_sweep(path)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    env = {**os.environ, "RAY_ADDRESS": cluster.address}

    def dry_run(*sets: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "orchestrator.sweep", "sweeps/noise.yaml", "--dry-run"]
        argv += [arg for assignment in sets for arg in ("--set", assignment)]
        return subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
        )

    # The shipped sweep, unedited, checked against this cluster before anything runs.
    checked = dry_run()
    assert checked.returncode == 0, checked.stderr
    assert "trials: 1 workers of 0.99 CPU each on the 3 CPUs up now; 4 node(s) up" in checked.stdout
    local = dry_run("run.storage_path=/tmp/ray-results")
    assert local.returncode == 2
    assert local.stderr.startswith("error: run.storage_path: '/tmp/ray-results' is a local path"), (
        local.stderr
    )
    log = tmp_path / "driver.log"
    with log.open("w") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.sweep", str(path)], cwd=REPO, env=env, stdout=out, stderr=out
        )

    def output() -> str:
        return log.read_text(errors="replace")

    def trial_runs() -> list[Any]:
        experiment = client.get_experiment_by_name(spec.experiment.tracking.experiment)
        if experiment is None:
            return []
        runs = client.search_runs([experiment.experiment_id])
        return [r for r in runs if "mlflow.parentRunId" in r.data.tags]

    def steps(run_id: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(run_id, "loss"))

    # Ray registers a checkpoint at its controller's next poll of the worker, after the worker's report has
    # returned and its metrics were flushed: a kill in between resumes from the checkpoint before (here, a
    # fresh start). Step 40 in MLflow means the report at 40 was queued, which Ray's one-slot report queue
    # allows only once the controller had taken (and registered) the report at 20.
    deadline = time.monotonic() + 420
    while not (
        len(runs := trial_runs()) == 2 and all(max(steps(r.info.run_id), default=0) >= 40 for r in runs)
    ):
        assert driver.poll() is None and time.monotonic() < deadline, output()[-6000:]
        time.sleep(2)
    pids = {int(pid) for pid in re.findall(r"RayTrainWorker pid=(\d+)", output())}
    workers = {pid for pid in pids if Path(f"/proc/{pid}").exists()}
    hosts = {node_of(pid, cluster.worker_nodes) for pid in workers}
    assert len(workers) == 2 and len(hosts) == 2 and None not in hosts, (workers, hosts)  # one trial per node

    # Cluster-wide actors live on the driver's (head) node, so losing any worker node leaves them be.
    from ray.util.state import list_actors

    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", f"http://{cluster.head_node.webui_url}")  # over RAY_ADDRESS
    alive = list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
    placed = {actor.name: actor.node_id for actor in alive if actor.name}
    for name in ("AutoscalingCoordinator", f"lock:{spec.experiment_name}"):
        assert placed.get(name) == cluster.head_node.node_id, (name, placed)

    victim = next(iter(hosts))
    cluster.remove_node(victim, allow_graceful=False)  # the node dies with the trial's driver and worker
    assert driver.wait(timeout=600) == 0, output()[-6000:]
    resumed = {int(step) for step in re.findall(r"resumed from the checkpoint at step (\d+)", output())}
    assert resumed and min(resumed) >= 20, output()[-6000:]  # from a checkpoint in the shared store
    runs = trial_runs()
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert steps(run.info.run_id) == list(range(5, 201, 5))
