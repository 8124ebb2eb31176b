"""@slow, end to end: `infra/local/image_cluster.py` (behind `make image-cluster`) starts a Ray head and two
worker containers of the project's image on this machine, on the session cluster's S3 store and MLflow;
`ray job submit` of the shipped smoke sweep, with no working dir (the code is the image's), trains both trials
on the worker containers and ends with nested MLflow runs and a registered model; no secret reaches Ray's
job metadata or any Ray log; every port listens on 127.0.0.1; `down` removes exactly those containers."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.train.worker_env import ALLOCATOR_TAG
from tests.fixtures.services import LocalCluster
from tests.integration.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # the image fixture may build from scratch
SCRIPT = REPO / "infra" / "local" / "image_cluster.py"
NODES = 3  # head + 2 workers
PORTS_PER_NODE = 100


@dataclass(frozen=True)
class Containers:
    name: str
    port_base: int
    env: dict[str, str]  # what the script reads: the session cluster's settings and this cluster's

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.port_base + 1}"

    def script(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def labelled(self) -> list[str]:
        label = f"label=sphere-orchestrator.image-cluster={self.name}"
        argv = ["docker", "ps", "-a", "--filter", label, "--format", "{{.Names}}"]
        out = subprocess.run(argv, capture_output=True, text=True, check=True)
        return sorted(out.stdout.split())


def free_block(size: int) -> int:
    """A base port whose `size` ports all bind on 127.0.0.1 now."""
    for base in range(18000 + secrets.randbelow(40) * 300, 32768 - size, size):  # below the ephemeral range
        socks = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {size} free ports in a row on 127.0.0.1")


@pytest.fixture
def containers(image: str, local_cluster: LocalCluster, mnist_shards: str) -> Iterator[Containers]:
    name = f"sphere-test-{secrets.token_hex(3)}"
    base = free_block(NODES * PORTS_PER_NODE)
    own = {"IMAGE_CLUSTER_NAME": name, "IMAGE_CLUSTER_PORT_BASE": str(base)}
    env = os.environ | local_cluster.settings | own
    cluster = Containers(name, base, env)
    started = cluster.script("up", "--image", image, "--workers", "2")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield cluster
    finally:
        stopped = cluster.script("down")
        assert stopped.returncode == 0 and cluster.labelled() == [], stopped.stdout + stopped.stderr


def listeners(ports: range) -> list[str]:
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    local = [line.split()[3] for line in out.splitlines()]
    return [addr for addr in local if int(addr.rsplit(":", 1)[1]) in ports]


def test_sweep_job_trains_on_the_worker_containers_and_registers(
    containers: Containers, local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors, list_nodes

    began = time.monotonic()
    name = containers.name
    assert containers.labelled() == [f"{name}-head", f"{name}-worker-1", f"{name}-worker-2"]
    env_file = Path(local_cluster.state_dir) / f"{name}.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    secret, token = local_cluster.env["AWS_SECRET_ACCESS_KEY"], local_cluster.ray_token
    args = ["docker", "inspect", "--format", "{{json .Args}}", f"{name}-head"]
    inspect = subprocess.run(args, capture_output=True, text=True, check=True)
    assert secret not in inspect.stdout and token not in inspect.stdout  # not on the command lines
    with pytest.raises(urllib.error.HTTPError) as anonymous:  # the head takes no client without the token
        urllib.request.urlopen(f"{containers.dashboard_url}/api/jobs/", timeout=10)
    assert anonymous.value.code == 401
    bound = listeners(range(containers.port_base, containers.port_base + NODES * PORTS_PER_NODE))
    assert bound and all(addr.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")) for addr in bound), bound

    again = containers.script("up", "--image", "unused:tag")
    assert again.returncode == 0 and "already up" in again.stdout, again.stdout + again.stderr

    # The user's command, from the host: the sweep file and the code are the image's. The variable also
    # points Ray's job and state clients here: it overrides any address they are given.
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", containers.dashboard_url)
    job_id = f"image-cluster-{secrets.token_hex(3)}"
    experiment = f"sphere-{name}"
    sets = {
        "tracking.experiment": experiment,
        "tracking.registered_model": experiment,
        "run.storage_path": f"s3://sphere/ray-results-{name}",  # a fresh Tune experiment, not a restore
    }
    entrypoint = ["python", "-m", "orchestrator.sweep", "sweeps/smoke.yaml"]
    entrypoint += [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    ray_cli = str(Path(sys.executable).parent / "ray")
    submit = subprocess.run(
        [ray_cli, "job", "submit", "--submission-id", job_id, "--", *entrypoint],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert submit.returncode == 0, (submit.stdout + submit.stderr)[-6000:]
    jobs = JobSubmissionClient(containers.dashboard_url)
    logs = jobs.get_job_logs(job_id)
    assert jobs.get_job_status(job_id) == JobStatus.SUCCEEDED, logs[-6000:]
    submitted = time.monotonic()

    # Both trials ran on the worker containers (the head offers 0 CPUs), one per container (1 CPU each).
    nodes = {n.node_id: n.node_name for n in list_nodes(address=containers.dashboard_url)}
    workers = list_actors(
        address=containers.dashboard_url, filters=[("class_name", "=", "RayTrainWorker")], limit=1000
    )
    placed = sorted(nodes[w.node_id] for w in workers)
    assert placed == [f"{name}-worker-1"] * 2 + [f"{name}-worker-2"] * 2, placed

    client = MlflowClient(local_cluster.mlflow_url)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs = client.search_runs([found.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [r.info for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(c.data.params["noise.alpha_max_deg"] for c in children) == ["75.0", "85.0"]
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags[ALLOCATOR_TAG] for c in children} == {"jemalloc"}  # the image's Ray preloads it
    assert parents[0].data.tags["git.commit"] not in ("", "unknown")  # the commit baked into the image
    version = client.get_model_version_by_alias(experiment, "champion")
    assert version.tags["source.run_id"] in {c.info.run_id for c in children}

    # The store's secret and the Ray token reached the trials through the containers' env, never Ray's job
    # API or its logs.
    info = jobs.get_job_info(job_id)
    recorded = f"{info.entrypoint} {info.runtime_env} {info.metadata} {logs}"
    assert secret not in recorded and token not in recorded
    for node in (f"{name}-head", f"{name}-worker-1", f"{name}-worker-2"):
        look = 'grep -rlF -e "$AWS_SECRET_ACCESS_KEY" -e "$RAY_AUTH_TOKEN" /tmp/ray || true'
        grep = subprocess.run(
            ["docker", "exec", node, "sh", "-c", look],
            capture_output=True,
            text=True,
            check=True,
        )
        assert grep.stdout == "", (node, grep.stdout)
    checked = time.monotonic()
    print(f"image cluster: the job took {submitted - began:.0f} s, the checks {checked - submitted:.0f} s")
