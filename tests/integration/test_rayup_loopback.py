"""`ray up` for real: Ray's cluster launcher brings up infra/ray-cluster/onprem.yaml on this machine
through infra/ray-cluster/loopback.py (an sshd on two loopback addresses, the project's image in docker),
the smoke sweep runs on it against the session cluster's S3 store and MLflow, every Train worker on the
worker node, nothing of it listens beyond loopback, and `ray down` leaves no container, listener or sshd
behind. 2.5 min on 2 quiet cores, 4 on busy ones.

Needs root (the launcher logs in as the user that runs docker), a docker daemon and sshd (`make test` installs
both as root); the `image` fixture builds the image with `make image`, and the cluster runs the code in it."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from mlflow import MlflowClient
from ray.job_submission import JobStatus, JobSubmissionClient

from tests.fixtures.services import LocalCluster, free_ports

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = REPO / "infra" / "ray-cluster" / "loopback.py"
HEAD_IP, WORKER_IP = "127.0.0.12", "127.0.0.13"  # not loopback.py's defaults: a `make rayup-loopback` may run


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the loopback cluster logs in over ssh as root, the user that runs docker here"
    if not shutil.which("docker") or subprocess.run(["docker", "info"], capture_output=True).returncode:
        return "no docker daemon"
    if not shutil.which("sshd") and not Path("/usr/sbin/sshd").exists():
        return "no sshd (`make docker` installs openssh-server as root)"
    return None


pytestmark = pytest.mark.skipif(bool(_missing()), reason=_missing() or "")


def _get(url: str, token: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return list(json.load(resp)["data"]["result"]["result"])


def _containers(names: set[str]) -> list[str]:
    out = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True)
    return [n for n in out.stdout.split() if n in names]


def _listeners_beyond_loopback(containers: list[str]) -> list[str]:
    """TCP listeners of the containers' processes (host pids; Ray runs them with --net=host) off loopback."""
    pids = set()
    for name in containers:
        out = subprocess.run(
            ["docker", "top", name, "-eo", "pid"], capture_output=True, text=True, check=True
        )
        pids |= {int(p) for p in out.stdout.split()[1:]}
    return [
        f"{conn.laddr.ip}:{conn.laddr.port} (pid {conn.pid})"
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN
        and conn.pid in pids
        and not ipaddress.ip_address(conn.laddr.ip.removeprefix("::ffff:")).is_loopback
    ]


def test_ray_up_runs_the_smoke_sweep_on_a_worker_node_and_ray_down_leaves_nothing(
    image: str,
    local_cluster: LocalCluster,
    mnist_shards: str,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ssh_port, gcs, dashboard, client, agent = free_ports(5)
    name = f"sphere-rayup-{uuid.uuid4().hex[:6]}"
    env = os.environ | {
        "LOOPBACK_DIR": str(tmp_path_factory.mktemp("rayup")),
        "RAYUP_CLUSTER_NAME": name,
        "HEAD_IP": HEAD_IP,
        "WORKER_IP": WORKER_IP,
        "SSH_PORT": str(ssh_port),
        "RAYUP_GCS_PORT": str(gcs),
        "RAYUP_DASHBOARD_PORT": str(dashboard),
        "RAYUP_CLIENT_PORT": str(client),
        "RAYUP_AGENT_PORT": str(agent),  # and agent + 1 for the worker
        "CLUSTER_DIR": str(local_cluster.state_dir),
        "RAYUP_JOIN_TIMEOUT_S": "240",
        "IMAGE": image,  # what `make image` built from this checkout
    }
    names = {f"sphere-{HEAD_IP}", f"sphere-{WORKER_IP}"}
    assert not _containers(names), "a loopback cluster of this test is still running"
    url = f"http://127.0.0.1:{dashboard}"
    started = time.monotonic()
    try:
        up = subprocess.run([sys.executable, str(LOOPBACK), "up"], env=env, capture_output=True, text=True)
        assert up.returncode == 0, f"loopback.py up failed:\n{up.stdout[-6000:]}\n{up.stderr[-3000:]}"
        print(f"ray up, worker joined: {time.monotonic() - started:.0f} s")
        token = local_cluster.ray_token  # the loopback cluster takes the local cluster's (loopback.py)
        nodes = _get(f"{url}/api/v0/nodes?detail=true", token)
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(f"{url}/api/jobs/", timeout=10)
        assert anonymous.value.code == 401
        assert len(nodes) == 2 and {n["node_ip"] for n in nodes} == {"127.0.0.1"}
        (worker_node,) = [n["node_id"] for n in nodes if not n["is_head_node"]]
        assert not _listeners_beyond_loopback(_containers(names))

        # As a user would: the code and sweep files come with the image, credentials from the env file.
        # RAY_API_SERVER_ADDRESS (the session cluster's, in this process's env) wins over the client's
        # address argument in Ray 2.60: without this the sweep ran on the session cluster.
        monkeypatch.setenv("RAY_API_SERVER_ADDRESS", url)
        jobs = JobSubmissionClient(url)
        run = f"rayup-{uuid.uuid4().hex[:6]}"
        job = jobs.submit_job(  # its own experiment and model: the session cluster's MLflow is shared
            entrypoint="python -m orchestrator.sweep sweeps/smoke.yaml "
            f"--set data.url={mnist_shards} --set run.storage_path=s3://sphere/{run} "
            f"--set tracking.experiment=sphere-{run} --set tracking.registered_model=sphere-{run}"
        )
        deadline = time.monotonic() + 420
        while (status := jobs.get_job_status(job)) not in {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.STOPPED,
        }:
            assert time.monotonic() < deadline, f"job still {status}:\n{jobs.get_job_logs(job)[-4000:]}"
            time.sleep(2)
        logs = jobs.get_job_logs(job)
        assert status == JobStatus.SUCCEEDED, logs[-6000:]
        # The driver saw the worker's CPUs (the head has none), and every Train worker ran there.
        preflight = [line for line in logs.splitlines() if "node(s) up" in line]
        assert preflight and "on the 2 CPUs up now" in preflight[0], (preflight, logs[:3000])
        actors = _get(f"{url}/api/v0/actors?limit=10000&detail=true", token)
        train_workers = [a for a in actors if a["class_name"] == "RayTrainWorker"]
        seen = sorted({(a["class_name"], a["node_id"] == worker_node, a["state"]) for a in actors})
        assert len(train_workers) == 4, (seen, logs[-3000:])
        assert {a["node_id"] for a in train_workers} == {worker_node}, seen
        tracking = MlflowClient(local_cluster.mlflow_url)
        experiment = tracking.get_experiment_by_name(f"sphere-{run}")
        assert experiment is not None
        runs = tracking.search_runs([experiment.experiment_id])
        assert len([r for r in runs if "mlflow.parentRunId" in r.data.tags]) == 2  # nested under the parent
        assert tracking.get_model_version_by_alias(f"sphere-{run}", "champion").version == "1"
        print(f"smoke sweep done: {time.monotonic() - started:.0f} s")
    finally:
        down = subprocess.run(
            [sys.executable, str(LOOPBACK), "down"], env=env, capture_output=True, text=True
        )
        print(f"ray down: {time.monotonic() - started:.0f} s")
    assert down.returncode == 0, f"loopback.py down failed:\n{down.stdout[-6000:]}\n{down.stderr[-3000:]}"
    assert not _containers(names)
    time.sleep(11)  # the launcher's ssh masters persist 10 s (ControlPersist) after their last command
    left = [
        c.laddr
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
        and c.laddr.port in {ssh_port, gcs, dashboard, client, agent, agent + 1}
    ]
    assert not left, f"still listening after ray down: {left}"
    assert not [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if name in " ".join(p.info["cmdline"] or [])
        or env["LOOPBACK_DIR"] in " ".join(p.info["cmdline"] or [])
    ], "processes of the loopback cluster left after ray down"
