"""A Ray cluster of containers of the project's image on this machine: a head and worker containers on the
host's network, every port bound to 127.0.0.1, training on the local cluster's S3 store and MLflow server.

    image_cluster.py up [--image IMAGE] [--workers N] | down | status

It is a shared cluster in miniature: the code comes from the image (a job names a sweep file of the image's
/home/ray/app, no working dir travels), several nodes share checkpoints through s3://, and the head offers 0
CPUs, so trials run on the worker containers only (as on KubeRay). Submit from the host with
    source .cluster/env    # the Ray token's file among the rest
    RAY_API_SERVER_ADDRESS=http://127.0.0.1:<dashboard port> .venv/bin/ray job submit -- \\
        python -m orchestrator.sweep sweeps/smoke.yaml

`up` needs the local cluster (`make cluster-up`) and the image (`make image`); a second `up` with every
container running changes nothing, any other state is replaced. The store's credentials, MLflow's address and
the local cluster's Ray token (this cluster takes clients with it only, RAY_AUTH_MODE=token) reach the
containers through an env file (<state dir>/<name>.env, mode 0600) read by `docker run --env-file`: never a
command line, never a Ray runtime env (which Ray writes to its logs and job API). The token goes by value
(RAY_AUTH_TOKEN): the containers' user (uid 1000) cannot read another uid's 0600 token file through a
bind mount. Clients on the host use it as for the local cluster (`source <state dir>/env`). `down`
removes exactly the containers labelled with this cluster's name (never `ray stop`, which would stop every
Ray cluster on the machine).

Settings come from the environment, beside the local cluster's own (CLUSTER_DIR, S3_PORT, MLFLOW_PORT, ...;
see cluster.py), which say whose store and MLflow to use:

    IMAGE_CLUSTER_NAME (sphere-image)      containers <name>-head, <name>-worker-<i>, labelled with <name>
    IMAGE_CLUSTER_PORT_BASE (17000)        node k (head 0, workers 1..N) takes base+100k .. base+100k+99
    IMAGE_CLUSTER_WORKER_CPUS (1)          CPUs each worker container offers Ray
    IMAGE_CLUSTER_OBJECT_STORE_BYTES (200000000)   each node's object store (its /dev/shm is twice that)

The default block, 17000-17299, is clear of the local cluster's defaults (6379, 8265, 10001, 52365, 5000,
9000-9009) and below the kernel's ephemeral range (32768-60999), where Ray's other clusters draw random ports.
Each node's ports, as offsets from its block: GCS +0, dashboard +1, client server +2 (head only); dashboard
agent HTTP +3 and gRPC +4, node manager +5, object manager +6, metrics +7, runtime-env agent +8, workers
+10..+99.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cluster_services import (
    HOST,
    REPO_ROOT,
    Settings,
    client_env,
    http_ok,
    ray_auth_header,
    ray_token_path,
    write_private,
)

LABEL = "sphere-orchestrator.image-cluster"
ROLE_LABEL = "sphere-orchestrator.role"
PORTS_PER_NODE = 100
# A worker node kept on 127.0.0.1, as infra/ray-cluster/loopback.py keeps `ray up`'s: Ray 2.60's `ray start
# --address` refuses to start under RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the env file's, which keeps the
# head on loopback), and with 1 rewrites 127.0.0.1 to the routable address, which loopback_hook.py, a
# RAY_START_HOOK (Ray's documented start hook), puts back before anything listens. The head's address is a
# host name for 127.0.0.1 (docker --add-host): Ray rewrites the literal 127.0.0.1 there too.
HOOK_FILE = REPO_ROOT / "infra" / "ray-cluster" / "loopback_hook.py"
HOOK_DIR = "/opt/sphere-loopback"  # where the worker containers see it (read-only)
HEAD_ALIAS = "sphere-head"
WORKER_START_ENV = (
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1",
    "RAY_START_HOOK=loopback_hook.keep_loopback_node_ip",
    f"PYTHONPATH={HOOK_DIR}",
)


def default_image() -> str:
    """`make image`'s tag: the Ray version pinned in pyproject.toml."""
    pin = re.search(r'"ray\[[^]]*\]==([0-9.]+)"', (REPO_ROOT / "pyproject.toml").read_text())
    return f"sphere-orchestrator:{pin[1] if pin else 'latest'}"


@dataclass(frozen=True, kw_only=True)
class ImageCluster:
    name: str
    port_base: int
    worker_cpus: float
    object_store_bytes: int
    start_timeout_s: float
    local: Settings  # the local cluster whose S3 store and MLflow the containers use

    @classmethod
    def from_env(cls, env: dict[str, str]) -> "ImageCluster":
        def number(key: str, default: str, kind: type[int] | type[float]) -> float:
            raw = env.get(key, default)
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{key}: {raw!r} is not a number (allowed: e.g. {default})") from None
            if value <= 0:
                raise ValueError(f"{key}: {raw} (allowed: > 0)")
            return value

        name = env.get("IMAGE_CLUSTER_NAME", "sphere-image")
        if not name.replace("-", "").isalnum() or not name[:1].isalpha():
            raise ValueError(f"IMAGE_CLUSTER_NAME: {name!r} (allowed: letters, digits, '-'; a letter first)")
        return cls(
            name=name,
            port_base=int(number("IMAGE_CLUSTER_PORT_BASE", "17000", int)),
            worker_cpus=number("IMAGE_CLUSTER_WORKER_CPUS", "1", float),
            object_store_bytes=int(number("IMAGE_CLUSTER_OBJECT_STORE_BYTES", "200000000", int)),
            start_timeout_s=number("CLUSTER_START_TIMEOUT_S", "180", float),
            local=Settings.from_env(env),
        )

    def check_ports(self, nodes: int) -> None:
        if self.port_base < 1024 or self.block(nodes) > 65536:
            raise ValueError(
                f"IMAGE_CLUSTER_PORT_BASE: {self.port_base} (allowed: 1024..{65536 - PORTS_PER_NODE * nodes} "
                f"for {nodes} nodes of {PORTS_PER_NODE} ports)"
            )

    def block(self, node: int) -> int:
        return self.port_base + PORTS_PER_NODE * node

    @property
    def gcs_port(self) -> int:
        return self.block(0)

    @property
    def dashboard_port(self) -> int:
        return self.block(0) + 1

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    @property
    def env_file(self) -> Path:
        return self.local.state_dir / f"{self.name}.env"

    def container(self, node: int) -> str:
        return f"{self.name}-head" if node == 0 else f"{self.name}-worker-{node}"


def ray_start_argv(c: ImageCluster, node: int) -> list[str]:
    """`ray start` of node `node` (0: the head), blocking as the container's main process."""
    base = c.block(node)
    argv = [
        *(["ray"] if node == 0 else ["env", *WORKER_START_ENV, "ray"]),
        "start",
        "--block",
        "--disable-usage-stats",
        "--node-ip-address",
        HOST,
        "--node-name",
        c.container(node),
        "--dashboard-agent-listen-port",
        str(base + 3),
        "--dashboard-agent-grpc-port",
        str(base + 4),
        "--node-manager-port",
        str(base + 5),
        "--object-manager-port",
        str(base + 6),
        "--metrics-export-port",
        str(base + 7),
        "--runtime-env-agent-port",
        str(base + 8),
        "--min-worker-port",
        str(base + 10),
        "--max-worker-port",
        str(base + PORTS_PER_NODE - 1),
        "--object-store-memory",
        str(c.object_store_bytes),
    ]
    if node == 0:  # 0 CPUs: the job's sweep driver runs here, trials on the workers
        return [
            *argv,
            "--head",
            "--port",
            str(c.gcs_port),
            "--include-dashboard",
            "true",
            "--dashboard-host",
            HOST,
            "--dashboard-port",
            str(c.dashboard_port),
            "--ray-client-server-port",
            str(base + 2),
            "--num-cpus",
            "0",
        ]
    return [*argv, "--address", f"{HEAD_ALIAS}:{c.gcs_port}", "--num-cpus", f"{c.worker_cpus:g}"]


def container_env(c: ImageCluster) -> dict[str, str]:
    """The env file's content: the local cluster's client env (store credentials, MLflow, RAY_AUTH_MODE),
    its Ray token by value in place of the host's token file, this cluster's job address, and Ray's loopback
    switch (already in the client env)."""
    env = client_env(c.local) | {
        "RAY_API_SERVER_ADDRESS": c.dashboard_url,  # `ray job` inside a container reaches this head
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # `docker stop` ends `ray start --block` at once
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_TOKEN": ray_token_path(c.local).read_text().strip(),
    }
    del env["RAY_AUTH_TOKEN_PATH"]  # a file of the host
    for key, value in env.items():
        if "\n" in value:  # docker's env file is one KEY=VALUE a line, the value taken literally
            raise ValueError(f"{key}: a value with a newline cannot go through docker's --env-file")
    return env


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {args[0]} failed: {(result.stderr or result.stdout).strip()}")
    return result


def containers(c: ImageCluster) -> dict[str, str]:
    """name -> state (running, exited, created, ...) of every container labelled with this cluster."""
    listing = ("ps", "-a", "--filter", f"label={LABEL}={c.name}", "--format", "{{.Names}} {{.State}}")
    out = docker(*listing).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if line)


def http_json(c: ImageCluster, path: str) -> object:
    """GET `path` on this cluster's dashboard, with the token."""
    request = urllib.request.Request(f"{c.dashboard_url}{path}", headers=ray_auth_header(c.local))
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.load(resp)


def alive_nodes(c: ImageCluster) -> set[str]:
    """Names of the alive Ray nodes, from the head's state API; empty while it does not answer."""
    try:
        reply = http_json(c, "/api/v0/nodes?limit=1000")
    except (OSError, ValueError):
        return set()
    result = reply.get("data", {}).get("result", {}).get("result", []) if isinstance(reply, dict) else []
    return {str(n.get("node_name")) for n in result if n.get("state") == "ALIVE"}


def taken_ports(c: ImageCluster, nodes: int) -> list[int]:
    taken = []
    for port in range(c.block(0), c.block(nodes)):
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((HOST, port)) == 0:
                taken.append(port)
    return taken


def local_cluster_up(c: ImageCluster) -> bool:
    s = c.local
    return http_ok(f"http://{HOST}:{s.s3_port}/healthz") and http_ok(f"http://{HOST}:{s.mlflow_port}/health")


def remove(c: ImageCluster, names: list[str]) -> None:
    if names:
        docker("stop", "--time", "20", *names, check=False)  # SIGTERM: `ray start --block` stops its node
        docker("rm", "--force", *names)


def logs_tail(name: str) -> str:
    out = docker("logs", "--tail", "30", name, check=False)
    return (out.stdout + out.stderr).strip()


def start_node(c: ImageCluster, image: str, node: int) -> None:
    role = "head" if node == 0 else "worker"
    docker(
        "run",
        "--detach",
        "--name",
        c.container(node),
        "--label",
        f"{LABEL}={c.name}",
        "--label",
        f"{ROLE_LABEL}={role}",
        "--network",
        "host",  # its ports are the host's: each node binds its own block on 127.0.0.1
        "--init",  # reaps Ray's orphaned workers; forwards `docker stop`'s SIGTERM to `ray start`
        "--shm-size",
        str(2 * c.object_store_bytes),
        "--env-file",
        str(c.env_file),
        *(() if node == 0 else ("--volume", f"{HOOK_FILE}:{HOOK_DIR}/loopback_hook.py:ro")),
        *(() if node == 0 else ("--add-host", f"{HEAD_ALIAS}:{HOST}")),
        image,
        *ray_start_argv(c, node),
    )


def wait_up(c: ImageCluster, names: list[str]) -> None:
    deadline = time.monotonic() + c.start_timeout_s
    while True:
        states = containers(c)
        dead = [name for name in names if states.get(name) != "running"]
        if dead:
            raise RuntimeError(f"container {dead[0]} is {states.get(dead[0], 'gone')}:\n{logs_tail(dead[0])}")
        missing = set(names) - alive_nodes(c)
        if not missing:
            return
        if time.monotonic() > deadline:
            name = sorted(missing)[0]
            raise RuntimeError(
                f"node {name} not alive in Ray after {c.start_timeout_s:.0f} s; its log:\n{logs_tail(name)}"
            )
        time.sleep(1)


def up(c: ImageCluster, image: str, workers: int) -> int:
    c.check_ports(workers + 1)
    names = [c.container(node) for node in range(workers + 1)]
    states = containers(c)
    running = sorted(states) == sorted(names) and all(state == "running" for state in states.values())
    if running and set(names) <= alive_nodes(c):
        print("image cluster already up")
        return status(c)
    if docker("image", "inspect", image, check=False).returncode != 0:
        print(f"image-cluster: image {image} not found: run `make image` first", file=sys.stderr)
        return 1
    if not local_cluster_up(c):
        print(
            f"image-cluster: the local cluster of {c.local.state_dir} (its S3 store and MLflow) is not up: "
            "run `make cluster-up` first",
            file=sys.stderr,
        )
        return 1
    remove(c, sorted(states))  # a partial or stale cluster of this name
    taken = taken_ports(c, workers + 1)
    if taken:
        print(
            f"image-cluster: ports {taken[:5]} of {c.block(0)}-{c.block(workers + 1) - 1} on {HOST} are "
            "taken: choose another IMAGE_CLUSTER_PORT_BASE",
            file=sys.stderr,
        )
        return 1
    write_private(c.env_file, "".join(f"{key}={value}\n" for key, value in container_env(c).items()))
    try:
        start_node(c, image, 0)
        wait_up(c, names[:1])  # workers join a GCS that answers
        for node in range(1, workers + 1):
            start_node(c, image, node)
        wait_up(c, names)
    except RuntimeError as err:
        remove(c, sorted(containers(c)))  # leave nothing half-started behind
        print(f"image-cluster up failed: {err}", file=sys.stderr)
        return 1
    print(f"image cluster up: {len(names)} containers of {image}")
    return status(c)


def down(c: ImageCluster) -> int:
    names = sorted(containers(c))
    remove(c, names)
    c.env_file.unlink(missing_ok=True)
    left = sorted(containers(c))
    if left:
        print(f"image-cluster down: containers still there: {left}", file=sys.stderr)
        return 1
    print(f"image cluster {c.name} down ({len(names)} container(s) removed)")
    return 0


def status(c: ImageCluster) -> int:
    states = containers(c)
    if not states:
        print(f"image cluster {c.name}: no containers (`make image-cluster` starts them)")
        return 3
    alive = alive_nodes(c)
    for name, state in sorted(states.items()):
        print(f"{name:<24} {state:<9} ray node {'alive' if name in alive else 'not alive'}")
    print(
        f"jobs    source {c.local.env_file}; RAY_API_SERVER_ADDRESS={c.dashboard_url} .venv/bin/ray job ..."
    )
    print(f"gcs     {HOST}:{c.gcs_port}   ports {c.block(0)}-{c.block(max(len(states), 1)) - 1}")
    running = bool(states) and all(state == "running" for state in states.values())
    return 0 if running and set(states) <= alive else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infra/local/image_cluster.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up")
    start.add_argument("--image", default=default_image(), help="every node's image (default: %(default)s)")
    start.add_argument("--workers", type=int, default=2, choices=range(1, 10), metavar="1..9")
    sub.add_parser("down")
    sub.add_parser("status")
    args = parser.parse_args(argv)
    try:
        c = ImageCluster.from_env(dict(os.environ))
        if args.command == "up":
            return up(c, args.image, args.workers)
        return down(c) if args.command == "down" else status(c)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        print(f"image-cluster: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
