"""`infra/local/cluster.py` (behind make cluster-up/-down/-status/sweep) against real processes."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.services import LocalCluster, free_ports, start_local_cluster, stop_local_cluster

pytestmark = pytest.mark.slow  # starts a Ray head, an MLflow server and SeaweedFS: ~15 s each time


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return bytes(resp.read())


def _service_pids(cluster: LocalCluster) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (cluster.state_dir / "pids").glob("*.pid")}


def test_services_are_healthy_and_status_says_so(local_cluster: LocalCluster) -> None:
    _get(f"{local_cluster.s3_url}/healthz")  # 200, empty body
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
    configured = local_cluster.ports
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


def _s3(cluster: LocalCluster, secret: str | None = None) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=cluster.s3_url,
        aws_access_key_id=cluster.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret or cluster.env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


def test_the_store_has_its_own_secret_and_refuses_other_callers(local_cluster: LocalCluster) -> None:
    import botocore.exceptions

    secret = local_cluster.env["AWS_SECRET_ACCESS_KEY"]
    assert len(secret) >= 30 and secret != "testing"
    for private in ("env", "s3-credentials"):
        assert (local_cluster.state_dir / private).stat().st_mode & 0o077 == 0, private
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{local_cluster.s3_url}/sphere", timeout=10)
    assert anonymous.value.code == 403
    with pytest.raises(botocore.exceptions.ClientError, match="SignatureDoesNotMatch"):
        _s3(local_cluster, secret="x" * 40).list_objects_v2(Bucket="sphere")
    assert secret not in " ".join(Path(f"/proc/{pid}/cmdline").read_text() for pid in local_cluster.pids())


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
    # The store starts, then MLflow's port turns out to be taken: up must stop moto again and say why.
    s3_port, *internal = free_ports(10)
    own = {
        "CLUSTER_DIR": str(tmp_path / "clash"),
        "S3_PORT": str(s3_port),
        "S3_INTERNAL_PORTS": ",".join(map(str, internal)),
    }
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
        # A store killed outright keeps what it acknowledged; the next `up` restarts it alone.
        _s3(other).put_object(Bucket="sphere", Key="datasets/x/manifest.json", Body=b"{}")
        pids = _service_pids(other)
        os.killpg(pids["s3"], signal.SIGKILL)
        assert other.script("status").returncode == 3
        assert other.script("up").returncode == 0
        after = _service_pids(other)
        assert after["s3"] != pids["s3"] and (after["mlflow"], after["ray"]) == (pids["mlflow"], pids["ray"])
        body = _s3(other).get_object(Bucket="sphere", Key="datasets/x/manifest.json")["Body"].read()
        assert body == b"{}"
        # MLflow's own process killed (not its group): its uvicorn child keeps the port. Status says so and
        # `up` stops the leftover before it restarts MLflow.
        os.kill(after["mlflow"], signal.SIGKILL)
        status = other.script("status")
        assert status.returncode == 3 and "`up` stops them" in status.stdout, status.stdout
        up = other.script("up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "mlflow: its process died; stopping" in up.stdout
        assert _get(f"{other.mlflow_url}/health").strip() == b"OK"
    finally:
        stop_local_cluster(other)  # raises if any process of it is left
    status = other.script("status")
    assert status.returncode == 3
    assert len(re.findall(r"^\w+\s+down\s", status.stdout, re.M)) == 3
    assert local_cluster.script("status").returncode == 0


def test_the_bucket_survives_down_and_up(tmp_path: Path) -> None:
    cluster = start_local_cluster(tmp_path / "restart")
    try:
        _s3(cluster).put_object(Bucket="sphere", Key="datasets/x/manifest.json", Body=b"{}")
        assert cluster.script("down").returncode == 0
        up = cluster.script("up")
        assert up.returncode == 0, up.stdout + up.stderr
        body = _s3(cluster).get_object(Bucket="sphere", Key="datasets/x/manifest.json")["Body"].read()
        assert body == b"{}"
    finally:
        stop_local_cluster(cluster)
