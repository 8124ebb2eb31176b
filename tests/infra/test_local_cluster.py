"""`infra/local/cluster.py` (behind make cluster-up/-down/-status/sweep) against real processes."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.services import LocalCluster, free_ports, start_local_cluster, stop_local_cluster

pytestmark = pytest.mark.slow  # starts a Ray head, an MLflow server and moto: ~15 s each time


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return bytes(resp.read())


def _service_pids(cluster: LocalCluster) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (cluster.state_dir / "pids").glob("*.pid")}


def test_services_are_healthy_and_status_says_so(local_cluster: LocalCluster) -> None:
    assert _get(f"{local_cluster.s3_url}/")
    assert _get(f"{local_cluster.mlflow_url}/health").strip() == b"OK"
    assert "ray_version" in json.loads(_get(f"{local_cluster.dashboard_url}/api/version"))
    status = local_cluster.script("status")
    assert status.returncode == 0, status.stdout
    for name, pid in _service_pids(local_cluster).items():
        assert re.search(rf"^{name}\s+up\s+pid {pid}\s", status.stdout, re.M), status.stdout


def test_second_up_changes_nothing(local_cluster: LocalCluster) -> None:
    env_file = local_cluster.state_dir / "env"
    before, mtime = _service_pids(local_cluster), env_file.stat().st_mtime_ns
    result = local_cluster.script("up")
    assert result.returncode == 0, result.stderr
    assert "cluster already up" in result.stdout
    assert _service_pids(local_cluster) == before
    assert env_file.stat().st_mtime_ns == mtime


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs `ss` (iproute2) to list listening sockets")
def test_every_listener_of_the_cluster_is_loopback(local_cluster: LocalCluster) -> None:
    configured = {int(v) for k, v in local_cluster.settings.items() if k.endswith("_PORT")}
    deadline = time.monotonic() + 30
    while True:  # Ray's agents may be mid-restart on a loaded machine: rescan until every service is seen
        listeners = cluster_listeners(local_cluster)
        if configured <= {port for _, port in listeners} or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert configured <= {port for _, port in listeners}  # the scan saw the services, so it can fail
    assert {address for address, _ in listeners} <= {"127.0.0.1", "[::ffff:127.0.0.1]"}, listeners


def cluster_listeners(cluster: LocalCluster) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket held by a process of the cluster."""
    pids = set(cluster.pids())
    listeners = []
    ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True)
    for line in ss.stdout.splitlines():
        owners = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            address, _, port = line.split()[3].rpartition(":")
            listeners.append((address, int(port)))
    return listeners


def test_bucket_exists_and_mlflow_artifacts_land_in_it(local_cluster: LocalCluster) -> None:
    import boto3
    import mlflow

    s3 = boto3.client("s3")  # endpoint and credentials come from the env the fixture exported
    s3.head_bucket(Bucket="sphere")
    mlflow.set_tracking_uri(local_cluster.mlflow_url)
    with mlflow.start_run() as run:
        mlflow.log_text("hello", "probe.txt")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="sphere", Prefix="mlflow-artifacts/")["Contents"]]
    assert f"mlflow-artifacts/0/{run.info.run_id}/artifacts/probe.txt" in keys


def test_submit_gives_workers_the_cluster_env_and_returns_the_entrypoint_code(
    local_cluster: LocalCluster,
) -> None:
    probe = (
        "import os, sys, ray\n"
        "ray.init()\n"
        "keys = ('MLFLOW_TRACKING_URI', 'AWS_ENDPOINT_URL')\n"
        "seen = ray.get(ray.remote(lambda: [os.environ.get(k) for k in keys]).remote())\n"
        "print('worker sees', *seen)\n"
        "sys.exit(7)\n"
    )
    result = local_cluster.submit(["python", "-c", probe])
    assert f"worker sees {local_cluster.mlflow_url} {local_cluster.s3_url}" in result.stdout, result.stdout
    assert result.returncode == 7, result.stderr  # `ray job submit` alone would say 1


def test_a_taken_port_fails_up_and_leaves_nothing(local_cluster: LocalCluster, tmp_path: Path) -> None:
    # moto starts, then MLflow's port turns out to be taken: up must stop moto again and say why.
    own = {"CLUSTER_DIR": str(tmp_path / "clash"), "S3_PORT": str(free_ports(1)[0])}
    settings = local_cluster.settings | own
    clash = LocalCluster(state_dir=tmp_path / "clash", settings=settings, env={})
    result = clash.script("up")
    assert result.returncode == 1
    assert f"mlflow: port {settings['MLFLOW_PORT']} on 127.0.0.1 is taken" in result.stderr
    assert clash.pids() == []
    assert local_cluster.script("status").returncode == 0


def test_a_second_cluster_runs_beside_and_stops_alone(local_cluster: LocalCluster, tmp_path: Path) -> None:
    other = start_local_cluster(tmp_path / "other")
    try:
        assert not set(other.pids()) & set(local_cluster.pids())
        # A dead service is restarted by the next `up`, the healthy ones are left alone.
        pids = _service_pids(other)
        os.killpg(pids["s3"], signal.SIGKILL)
        assert other.script("status").returncode == 3
        assert other.script("up").returncode == 0
        after = _service_pids(other)
        assert after["s3"] != pids["s3"] and (after["mlflow"], after["ray"]) == (pids["mlflow"], pids["ray"])
        _get(f"{other.s3_url}/sphere")  # the restarted, empty endpoint got its bucket back
    finally:
        stop_local_cluster(other)  # raises if any process of it is left
    status = other.script("status")
    assert status.returncode == 3
    assert len(re.findall(r"^\w+\s+down\s", status.stdout, re.M)) == 3
    assert local_cluster.script("status").returncode == 0


def test_the_bucket_survives_a_restart(tmp_path: Path) -> None:
    import boto3

    cluster = start_local_cluster(tmp_path / "restart")
    try:
        s3 = boto3.client("s3", endpoint_url=cluster.s3_url)
        s3.put_object(Bucket="sphere", Key="datasets/x/manifest.json", Body=b"{}")
        down = cluster.script("down")
        assert "saved s3://sphere (1 objects" in down.stdout, down.stdout + down.stderr
        assert (tmp_path / "restart" / "s3" / "sphere" / "datasets/x/manifest.json").read_bytes() == b"{}"
        up = cluster.script("up")
        assert "restored 1 objects" in up.stdout, up.stdout + up.stderr
        assert s3.get_object(Bucket="sphere", Key="datasets/x/manifest.json")["Body"].read() == b"{}"
    finally:
        stop_local_cluster(cluster)
