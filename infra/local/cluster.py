"""The local cluster: an S3 endpoint (moto), an MLflow server and a Ray head, as processes bound to 127.0.0.1.

    cluster.py up | down | status | pids | submit -- CMD ...

`up` starts what is not running and waits until every service answers its health URL; a second `up` on a
healthy cluster changes nothing. `down` stops exactly this cluster's processes (never `ray stop`, which stops
every Ray cluster on the machine). Clients `source <state dir>/env`. Settings come from the environment, so a
second cluster on other ports and another state dir can run beside the first (the tests start one):

    CLUSTER_DIR (.cluster)  S3_PORT (9000)  S3_BUCKET (sphere)  MLFLOW_PORT (5000)  RAY_GCS_PORT (6379)
    RAY_DASHBOARD_PORT (8265)  RAY_DASHBOARD_AGENT_PORT (52365)  RAY_CLIENT_PORT (10001)
    RAY_NUM_CPUS (CPUs of this process)  RAY_OBJECT_STORE_BYTES (500 MB)
    RAY_TEMP_DIR (/tmp/ray-<hash of the state dir>)  CLUSTER_START_TIMEOUT_S (180)

Ray's other ports (workers, raylet, object manager, agents' gRPC, metrics) are left to the OS, so two clusters
never collide on them. Uses the tools (ray, mlflow, moto_server) installed beside the Python that runs it.
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

import s3_snapshot
from procs import CLUSTER_MARKER, is_alive, marked_pids, stop_group, stop_pids

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


@dataclass(frozen=True, kw_only=True)
class Settings:
    state_dir: Path
    bucket: str
    s3_port: int
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
        return cls(
            state_dir=state_dir,
            bucket=env.get("S3_BUCKET", "sphere"),
            s3_port=int(env.get("S3_PORT", "9000")),
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
    def snapshot_dir(self) -> Path:
        return self.state_dir / "s3" / self.bucket


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]  # on top of the client environment
    url: str
    health_url: str
    ports: tuple[int, ...]


def client_env(s: Settings) -> dict[str, str]:
    """What every client, job and Ray worker needs to reach this cluster; the content of the env file."""
    s3_url = f"http://{HOST}:{s.s3_port}"
    return {
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{s.mlflow_port}",
        "AWS_ENDPOINT_URL": s3_url,  # one variable for boto3, s3fs and pyarrow
        "MLFLOW_S3_ENDPOINT_URL": s3_url,  # MLflow's own S3 artifact client reads this one
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
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
    s3 = Service(
        "s3",
        [f"{bin_}/moto_server", "-H", HOST, "-p", str(s.s3_port)],
        {},
        f"http://{HOST}:{s.s3_port}",
        f"http://{HOST}:{s.s3_port}/",
        (s.s3_port,),
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
    """The service's pid while it runs; a stale pid file is removed."""
    path = _pid_file(s, svc)
    if not path.exists():
        return None
    pid = int(path.read_text())
    if is_alive(pid):
        return pid
    path.unlink()
    return None


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
        s.env_file.write_text(text)


def create_bucket(s: Settings) -> None:
    # moto accepts an unsigned PUT and creating an existing bucket is a no-op, so `up` can always ask.
    request = urllib.request.Request(f"http://{HOST}:{s.s3_port}/{s.bucket}", method="PUT")
    with urllib.request.urlopen(request, timeout=10):
        pass


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
                pid = started[svc.name] = start(s, svc)
            pending[svc.name] = (svc, pid)
        wait_healthy(s, pending)
    except RuntimeError as err:
        for pid in started.values():  # leave nothing half-started behind
            stop_group(pid, timeout_s=30)
        print(f"cluster-up failed: {err}", file=sys.stderr)
        return 1
    create_bucket(s)
    if "s3" in started and s.snapshot_dir.is_dir():  # a fresh endpoint is empty: put the saved bucket back
        count = s3_snapshot.restore(f"http://{HOST}:{s.s3_port}", s.bucket, s.snapshot_dir)
        print(f"restored {count} objects into s3://{s.bucket} from {s.snapshot_dir}")
    print("cluster up" if started else "cluster already up")
    return status(s)


def save_bucket(s: Settings, svc: Service) -> None:
    """Snapshot the bucket before its in-memory endpoint stops; a failure keeps the previous snapshot."""
    if not http_ok(svc.health_url):
        print(f"s3: endpoint not answering, keeping the previous snapshot in {s.snapshot_dir}")
        return
    try:
        count, size = s3_snapshot.save(svc.url, s.bucket, s.snapshot_dir)
    except Exception as err:  # never let a failed snapshot keep the cluster running
        print(f"s3: snapshot failed ({err!r}); keeping the previous one in {s.snapshot_dir}", file=sys.stderr)
        return
    print(f"saved s3://{s.bucket} ({count} objects, {size / 1e6:.1f} MB) to {s.snapshot_dir}")


def down(s: Settings) -> int:
    for svc in reversed(services(s)):  # Ray first: its jobs may still write to MLflow and S3
        pid = read_pid(s, svc)
        if svc.name == "s3" and pid is not None:
            save_bucket(s, svc)
        if pid is not None and stop_group(pid, timeout_s=30):
            print(f"{svc.name}: did not stop on SIGTERM within 30 s, killed")
        _pid_file(s, svc).unlink(missing_ok=True)
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
        print(f"{svc.name:<7} {state:<9} pid {pid or '-':<8} {svc.url}")
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
    # Workers inherit nothing from this shell; the uploaded working dir has no .git, so the commit travels.
    runtime_env = json.dumps({"env_vars": client_env(s) | {"SPHERE_GIT_COMMIT": source_commit()}})
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
