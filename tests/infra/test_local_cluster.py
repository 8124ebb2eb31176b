"""`infra/local/cluster.py` (behind make cluster-up/-down/-status/sweep) against real processes."""

import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.services import (
    LOOPBACK_LISTEN_ADDRESSES,
    LocalCluster,
    free_ports,
    start_local_cluster,
    stop_local_cluster,
)

pytestmark = pytest.mark.slow  # starts a Ray head, an MLflow server and SeaweedFS: ~15 s each time


def _get(url: str, headers: dict[str, str] | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as resp:
        assert resp.status == 200
        return bytes(resp.read())


def _service_pids(cluster: LocalCluster) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (cluster.state_dir / "pids").glob("*.pid")}


def test_services_are_healthy_and_status_says_so(local_cluster: LocalCluster) -> None:
    _get(f"{local_cluster.s3_url}/healthz")  # 200, empty body
    assert _get(f"{local_cluster.mlflow_url}/health").strip() == b"OK"
    token = {"Authorization": f"Bearer {local_cluster.ray_token}"}
    assert "ray_version" in json.loads(_get(f"{local_cluster.dashboard_url}/api/version", token))
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        _get(f"{local_cluster.dashboard_url}/api/version")
    assert anonymous.value.code == 401  # the job and state APIs take the token only
    status = local_cluster.script("status")
    assert status.returncode == 0, status.stdout
    for name, pid in _service_pids(local_cluster).items():
        assert re.search(rf"^{name}\s+up\s+pid {pid}\s", status.stdout, re.M), status.stdout


def test_second_up_changes_nothing(local_cluster: LocalCluster) -> None:
    env_file = local_cluster.state_dir / "env"
    before, mtime = _service_pids(local_cluster), env_file.stat().st_mtime_ns
    result = local_cluster.script("up")
    assert result.returncode == 0, result.stderr
    assert "cluster already up" in result.stdout and "this user's alone" not in result.stdout
    assert _service_pids(local_cluster) == before
    assert env_file.stat().st_mtime_ns == mtime


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs `ss` (iproute2) to list listening sockets")
def test_every_listener_of_the_cluster_is_loopback(local_cluster: LocalCluster) -> None:
    configured = local_cluster.ports
    deadline = time.monotonic() + 30
    while True:  # Ray's agents may be mid-restart on a loaded machine: rescan until every service is seen
        listeners = local_cluster.listeners()
        if configured <= {listener.port for listener in listeners} or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert configured <= {listener.port for listener in listeners}  # the scan saw the services: it can fail
    assert {listener.address for listener in listeners} <= LOOPBACK_LISTEN_ADDRESSES, listeners


def test_the_store_reports_nowhere_and_logs_only_into_the_cluster(local_cluster: LocalCluster) -> None:
    s3_log = (local_cluster.state_dir / "logs" / "s3.log").read_text()
    assert "Starting SeaweedFS Mini" in s3_log  # the log is the store's: the checks below can fail
    assert "Reporting anonymous cluster statistics" not in s3_log  # SeaweedFS's telemetry is on by default
    store_pid = _service_pids(local_cluster)["s3"]
    # glog's default writes weed.<host>.<user>.log.<level>.<date>.<pid> files into the temp dir as well
    assert not list(Path(tempfile.gettempdir()).glob(f"weed.*.{store_pid}"))


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
    command_lines = " ".join(Path(f"/proc/{pid}/cmdline").read_text() for pid in local_cluster.pids())
    assert secret not in command_lines and local_cluster.ray_token not in command_lines


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


def test_the_state_and_ray_temp_dirs_are_private_after_a_job(local_cluster: LocalCluster) -> None:
    result = local_cluster.submit(
        ["python", "-c", "import ray; ray.init(); print(ray.get(ray.put('logged')))"]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (Path(local_cluster.settings["RAY_TEMP_DIR"]) / "ray" / "session_latest" / "logs").is_dir()
    for private in ("env", "s3-credentials", "ray-auth-token", "mlflow.db", "logs/ray.log", "pids/ray.pid"):
        assert (local_cluster.state_dir / private).stat().st_mode & 0o777 == 0o600, private
    assert local_cluster.not_private() == []
    # The token travels as the name of its file only: in no log of Ray's, no job's details or logs.
    token = local_cluster.ray_token
    assert len(token) == 64 and local_cluster.env["RAY_AUTH_MODE"] == "token"
    ray_files = [p for p in Path(local_cluster.settings["RAY_TEMP_DIR"]).rglob("*") if p.is_file()]
    assert len(ray_files) > 20 and [str(p) for p in ray_files if token.encode() in _read(p)] == []
    assert token not in result.stdout + result.stderr


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # a socket, or a file Ray removed meanwhile
        return b""


def test_up_makes_an_older_world_readable_state_dir_private(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    # A state dir and Ray temp dir as an older cluster.py left them (umask 022, Ray's 0777 folders). Its
    # ports are the session cluster's, so `up` stops at the first taken port, after the tightening.
    state, ray_temp, outside = (
        tmp_path / "old",
        Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp")),
        tmp_path / "o",
    )
    try:
        for folder in (state / "logs", state / "s3-data", ray_temp / "session_1" / "logs"):
            folder.mkdir(parents=True)
        for file in ("mlflow.db", "logs/ray.log", "s3-data/1.dat"):
            (state / file).write_text("x")
        (state / "s3-credentials").write_text('{"access_key": "sphere-old", "secret_key": "old-secret"}\n')
        (ray_temp / "session_1" / "logs" / "job-driver.log").write_text("x")
        outside.write_text("not the cluster's")
        (state / "link").symlink_to(outside)
        for path in [state, *state.rglob("*"), ray_temp, *ray_temp.rglob("*"), outside]:
            if not path.is_symlink():
                path.chmod(0o777 if path.is_dir() else 0o644)
        old = LocalCluster(
            state, local_cluster.settings | {"CLUSTER_DIR": str(state), "RAY_TEMP_DIR": str(ray_temp)}, {}
        )
        first = old.script("up")
        assert first.returncode == 1 and "is taken by another process" in first.stderr, (
            first.stdout + first.stderr
        )
        assert (
            first.stdout.splitlines()[0]
            == f"made 11 files and folders in {state} and {ray_temp} this user's alone"
        )
        assert old.not_private() == []
        assert outside.stat().st_mode & 0o777 == 0o644  # a link is not followed
        again = old.script("up")
        assert again.returncode == 1 and "this user's alone" not in again.stdout, again.stdout
        assert old.pids() == [] and local_cluster.script("status").returncode == 0
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)


NOBODY = 65534


def as_nobody(code: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -c code args...` as user nobody, with none of the cluster's env (the venv's Python, run
    directly by setpriv: nobody may not search the folder its interpreter lives in, but may exec it)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    argv = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", sys.executable]
    return subprocess.run(
        [*argv, "-c", code, *args],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def nobody_home() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("running a probe as another user (nobody) needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run a probe as user nobody")
    home = Path(tempfile.mkdtemp(prefix="nobody-", dir="/tmp"))
    os.chown(home, NOBODY, NOBODY)
    # The probes run this venv's Ray as nobody, who must be able to search the folders above it: a checkout
    # made with `git clone . "$(mktemp -d)"` sits in a 0700 folder. Search only (o+x, no listing), restored.
    closed = [p for p in Path(sys.prefix).parents if p != Path("/") and not p.stat().st_mode & stat.S_IXOTH]
    modes = {p: p.stat().st_mode for p in closed}
    for path, mode in modes.items():
        path.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
    try:
        yield home
    finally:
        for path, mode in modes.items():
            path.chmod(stat.S_IMODE(mode))
        shutil.rmtree(home, ignore_errors=True)


def test_another_user_reads_no_state_and_ray_refuses_their_jobs_and_drivers(
    local_cluster: LocalCluster, nobody_home: Path
) -> None:
    from ray.job_submission import JobSubmissionClient

    state = local_cluster.state_dir
    s3_file = next(p for p in (state / "s3-data").rglob("*") if p.is_file())
    ray_log = Path(local_cluster.settings["RAY_TEMP_DIR"]) / "ray" / "session_latest" / "logs" / "raylet.out"
    assert ray_log.exists()
    targets = [state / name for name in ("mlflow.db", "s3-credentials", "ray-auth-token", "env")] + [s3_file]
    reads = as_nobody(
        "import sys\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        open(path, 'rb').read(1); print('READ', path)\n"
        "    except OSError as err:\n"
        "        print(type(err).__name__, path)\n",
        nobody_home,
        *map(str, [*targets, ray_log]),
    )
    assert reads.returncode == 0, reads.stderr
    assert reads.stdout.split("\n")[:-1] == [f"PermissionError {p}" for p in [*targets, ray_log]], (
        reads.stdout
    )

    dashboard, marker = local_cluster.dashboard_url, f"probe-{secrets.token_hex(4)}"
    sdk = as_nobody(
        "from ray.job_submission import JobSubmissionClient\n"
        f"JobSubmissionClient({dashboard!r}).submit_job(entrypoint='echo {marker}')\n",
        nobody_home,
    )
    refusal = "ray.exceptions.AuthenticationError: Authentication required: " + (
        "Unauthorized: Missing authentication token"
    )
    assert sdk.returncode == 1 and refusal in sdk.stderr.splitlines(), sdk.stderr[-3000:]
    cli = as_nobody(  # `ray job submit`: the CLI's own code, run through this Python (see as_nobody)
        "import sys\nfrom ray.scripts.scripts import main\nsys.argv[0] = 'ray'\nmain()\n",
        nobody_home,
        *("job", "submit", "--address", dashboard, "--", "echo", marker),
    )
    assert cli.returncode == 1 and refusal in cli.stderr.splitlines(), cli.stderr[-3000:]
    driver = as_nobody(
        f"import ray\nray.init(address={local_cluster.gcs_address!r})\nprint('CONNECTED')\n", nobody_home
    )
    assert driver.returncode == 1 and "CONNECTED" not in driver.stdout, driver.stdout + driver.stderr[-3000:]
    assert (
        "Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect"
        in driver.stderr
    )
    assert (
        f"ConnectionError: Failed to connect to Ray cluster at {local_cluster.gcs_address}" in driver.stderr
    )

    # Nothing of theirs ran (the job server, asked with the token, knows no job of theirs), and the cluster
    # is as it was.
    assert not [job for job in JobSubmissionClient(dashboard).list_jobs() if marker in job.entrypoint]
    assert local_cluster.script("status").returncode == 0
