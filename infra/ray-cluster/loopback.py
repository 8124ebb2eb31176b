"""`ray up` of infra/ray-cluster/onprem.yaml on this one machine: Ray's own cluster launcher with its
on-premise provider and the project's image; the head and the worker "machine" are two loopback addresses,
both served by one dedicated sshd.

    loopback.py up | down | config | status

`up` starts that sshd (its own config, host key and client key pair under LOOPBACK_DIR, key-only, bound to
HEAD_IP and WORKER_IP only; the system sshd is never touched), writes the local cluster's S3 endpoint,
credentials, MLflow URI and Ray token (CLUSTER_DIR/env, `make cluster-up`; onprem.yaml says why the token
goes by value) to an env file of mode 0600 that docker reads (`--env-file`), writes the cluster config
derived from onprem.yaml, runs `ray up -y` and waits until the worker has joined. `down` runs `ray down -y`,
stops the sshd and fails if a container of the cluster is left.

What had to differ from a cluster of real machines, each measured with Ray 2.60 (docs/scaling.md):
- Ray binds its GCS, raylet, object manager and agents on all interfaces unless the node's IP is 127.0.0.1
  (--node-ip-address=127.0.0.2 gave gcs_server on *:PORT). Ray runs the containers with --net=host, so every
  node's Ray takes 127.0.0.1 and ports of its own; only the ssh addresses differ.
- `ray start --address` refuses to start a worker under RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ("Multi-node Ray
  clusters are not supported on Windows and OSX"), and without it rewrites 127.0.0.1 (in --address and in
  --node-ip-address) to the machine's routable address. The worker joins through a name for 127.0.0.1
  (docker --add-host) and loopback_hook.py, a RAY_START_HOOK, puts its node IP back to 127.0.0.1.
- The v1 autoscaler matches heartbeats to the provider's IPs; WORKER_IP never reports (its Ray is 127.0.0.1),
  so the liveness check would restart the worker's Ray every 30 s: provider.worker_liveness_check is off.
- Autoscaler v2, which `ray up` turns on since Ray 2.50, never launches the on-premise provider's workers:
  RAY_UP_enable_autoscaler_v2=0.
- Ray names every node's container alike and both "machines" share one docker daemon: the name carries the
  address sshd was reached at ($SSH_CONNECTION), which the host's shell expands in every docker command.
- Port 22 on 127.0.0.2/3 would keep a system sshd (0.0.0.0:22) from starting, so the sshd listens on SSH_PORT:
  Ray has no ssh port setting, so the launcher reaches it through auth.ssh_proxy_command, and the head's
  autoscaler (Ray drops that proxy command from the head's copy of the config) through ~/.ssh/config.

Settings (environment): LOOPBACK_DIR (/tmp/sphere-rayup)  RAYUP_CLUSTER_NAME (sphere-loopback)
HEAD_IP (127.0.0.2)  WORKER_IP (127.0.0.3)  SSH_PORT (2299)  RAYUP_GCS_PORT (6600)
RAYUP_DASHBOARD_PORT (8500)
RAYUP_CLIENT_PORT (10300)  RAYUP_AGENT_PORT (52600; the worker's is +1)  RAYUP_WORKER_CPUS (2)
IMAGE (sphere-orchestrator:<Ray pin>)  CLUSTER_DIR (.cluster)  RAYUP_JOIN_TIMEOUT_S (300)
"""

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "infra" / "local"))  # the local cluster's helpers, beside its scripts
from cluster_services import write_private  # noqa: E402

ONPREM = REPO_ROOT / "infra" / "ray-cluster" / "onprem.yaml"
RAY = str(Path(sys.executable).parent / "ray")
# Ray's commands run in a shell on the host, so this expands there to the address ssh reached: one container
# per "machine" on a docker daemon that both share.
CONTAINER_NAME = "sphere-$(set -- $SSH_CONNECTION; echo $3)"
# Not under ~: Ray bind-mounts file_mounts at the image's ENV HOME, or /root when the image sets none.
MOUNT = "/tmp/sphere-loopback"
HOOK = "loopback_hook.keep_loopback_node_ip"
HEAD_ALIAS = "sphere-head"  # 127.0.0.1 inside the containers, under a name Ray does not rewrite
# What the containers get from the local cluster's env file (not RAY_API_SERVER_ADDRESS: that is the host's).
PASSED_ENV = re.compile(r"^(AWS_[A-Z_]+|MLFLOW_[A-Z_]+|DO_NOT_TRACK)$")


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    cluster_name: str
    head_ip: str
    worker_ip: str
    ssh_port: int
    gcs_port: int
    dashboard_port: int
    client_port: int
    agent_port: int
    worker_cpus: int
    image: str
    cluster_env: Path
    join_timeout_s: float

    @classmethod
    def from_env(cls, env: dict[str, str]) -> "Settings":
        pin = re.search(r'"ray\[[^]]*\]==([0-9.]+)"', (REPO_ROOT / "pyproject.toml").read_text())
        assert pin, "pyproject.toml pins no ray version"
        cluster_dir = Path(env.get("CLUSTER_DIR", ".cluster"))
        if not cluster_dir.is_absolute():
            cluster_dir = REPO_ROOT / cluster_dir
        return cls(
            state_dir=Path(env.get("LOOPBACK_DIR", "/tmp/sphere-rayup")).absolute(),
            cluster_name=env.get("RAYUP_CLUSTER_NAME", "sphere-loopback"),
            head_ip=env.get("HEAD_IP", "127.0.0.2"),
            worker_ip=env.get("WORKER_IP", "127.0.0.3"),
            ssh_port=int(env.get("SSH_PORT", "2299")),
            gcs_port=int(env.get("RAYUP_GCS_PORT", "6600")),
            dashboard_port=int(env.get("RAYUP_DASHBOARD_PORT", "8500")),
            client_port=int(env.get("RAYUP_CLIENT_PORT", "10300")),
            agent_port=int(env.get("RAYUP_AGENT_PORT", "52600")),
            worker_cpus=int(env.get("RAYUP_WORKER_CPUS", "2")),
            image=env.get("IMAGE", f"sphere-orchestrator:{pin[1]}"),
            cluster_env=cluster_dir / "env",
            join_timeout_s=float(env.get("RAYUP_JOIN_TIMEOUT_S", "300")),
        )

    @property
    def key(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def env_file(self) -> Path:
        return self.state_dir / "cluster.env"

    @property
    def config_file(self) -> Path:
        return self.state_dir / "cluster.yaml"

    @property
    def sshd_pid_file(self) -> Path:
        return self.state_dir / "sshd.pid"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"


def cluster_config(s: Settings) -> dict[str, Any]:
    """onprem.yaml with this machine's addresses, key, image, env file and ports filled in."""
    config: dict[str, Any] = yaml.safe_load(ONPREM.read_text())
    config["cluster_name"] = s.cluster_name
    config["provider"] = {
        "type": "local",
        "head_ip": s.head_ip,
        "worker_ips": [s.worker_ip],
        "worker_liveness_check": False,  # the worker's Ray reports 127.0.0.1, never WORKER_IP
    }
    config["auth"] = {
        "ssh_user": "root",  # the user that runs docker here; the sshd takes this key only
        "ssh_private_key": str(s.key),
        # bash's /dev/tcp: no netcat needed on the host
        "ssh_proxy_command": f"bash -c 'exec 3<>/dev/tcp/%h/{s.ssh_port}; cat <&3 & exec cat >&3'",
    }
    docker = config["docker"]
    docker.update(image=s.image, container_name=CONTAINER_NAME, pull_before_run=False)
    docker["run_options"] = [
        f"--env-file {s.env_file}" if opt.startswith("--env-file") else opt for opt in docker["run_options"]
    ]
    # This machine's hard limit on open files may be below onprem.yaml's 65536 (docker then fails with "error
    # setting rlimit type 7: operation not permitted"), so both the container and `ulimit -n` get at most it.
    nofile = min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    kept = [opt for opt in docker["run_options"] if not opt.startswith(("--shm-size", "--ulimit nofile"))]
    docker["run_options"] = [*kept, f"--ulimit nofile={nofile}:{nofile}", "--shm-size=1g"]
    docker["worker_run_options"] = [f"--add-host={HEAD_ALIAS}:127.0.0.1"]
    config["file_mounts"] = {MOUNT: str(s.state_dir / "mount")}  # loopback_hook.py, on every node
    # Ray drops auth.ssh_proxy_command from the config it hands the head (commands.py: it is meant for the
    # way from the laptop), so the head's autoscaler reaches the worker's sshd port through ssh's own config.
    config["head_setup_commands"] = [
        f"mkdir -p ~/.ssh && printf 'Host {s.worker_ip}\\n  Port {s.ssh_port}\\n' > ~/.ssh/config"
        " && chmod 600 ~/.ssh/config"
    ]
    common = "--node-ip-address=127.0.0.1 --min-worker-port=0 --max-worker-port=0 --disable-usage-stats"
    config["head_start_ray_commands"] = [
        "ray stop",
        # 0 CPUs: trials can only run on the worker, which is what the test checks
        f"ulimit -n {nofile}; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head {common}"
        f" --port={s.gcs_port} --dashboard-host=127.0.0.1 --dashboard-port={s.dashboard_port}"
        f" --ray-client-server-port={s.client_port}"
        f" --dashboard-agent-listen-port={s.agent_port} --num-cpus=0 --object-store-memory=300000000"
        " --autoscaling-config=~/ray_bootstrap_config.yaml",
    ]
    config["worker_start_ray_commands"] = [
        "ray stop",
        # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (from the env file) makes `ray start --address` refuse to start;
        # with 1 it rewrites 127.0.0.1 to the routable address, which loopback_hook.py puts back
        f"ulimit -n {nofile}; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 RAY_START_HOOK={HOOK}"
        f" PYTHONPATH={MOUNT} ray start --address={HEAD_ALIAS}:{s.gcs_port}"
        f" {common} --dashboard-agent-listen-port={s.agent_port + 1} --num-cpus={s.worker_cpus}"
        " --object-store-memory=300000000",
    ]
    return config


def container_env(cluster_env: Path) -> dict[str, str]:
    """The S3 endpoint, its credentials, MLflow and the Ray token from the local cluster's env file (`export
    K=V` lines; the token from the file its RAY_AUTH_TOKEN_PATH names, as onprem.yaml's env file holds it)."""
    env = {}
    for line in cluster_env.read_text().splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            if PASSED_ENV.match(key):
                env[key] = value
            elif key == "RAY_AUTH_TOKEN_PATH":
                env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": Path(value).read_text().strip()}
    # Drivers and Ray workers in the containers connect to 127.0.0.1 as written (see the module docstring).
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def sshd_config(s: Settings) -> str:
    return "\n".join(
        [
            f"ListenAddress {s.head_ip}:{s.ssh_port}",
            f"ListenAddress {s.worker_ip}:{s.ssh_port}",
            f"HostKey {s.state_dir}/ssh_host_ed25519_key",
            f"PidFile {s.sshd_pid_file}",
            f"AuthorizedKeysFile {s.state_dir}/authorized_keys",
            "AuthenticationMethods publickey",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "AllowUsers root@127.*",
            "UsePAM no",
            "X11Forwarding no",
            "PrintMotd no",
            "StrictModes no",  # the state dir may sit under a world-writable /tmp; the keys are 0600
            "",
        ]
    )


def running(pid: int) -> bool:
    """True while the process runs; a zombie (exited, its parent gone without reaping it) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def sshd_pid(s: Settings) -> int | None:
    try:
        pid = int(s.sshd_pid_file.read_text())
    except (OSError, ValueError):
        return None
    return pid if running(pid) else None


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def start_sshd(s: Settings) -> None:
    s.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for key, comment in ((s.key, "ray-up-loopback"), (s.state_dir / "ssh_host_ed25519_key", "host")):
        if not key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)], check=True
            )
    public = (s.state_dir / "id_ed25519.pub").read_text().strip()
    write_private(s.state_dir / "authorized_keys", f'from="127.0.0.0/8" {public}\n')
    write_private(s.state_dir / "sshd_config", sshd_config(s))
    if sshd_pid(s):
        return
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's compiled-in privilege-separation directory
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    subprocess.run(
        [sshd, "-f", str(s.state_dir / "sshd_config"), "-E", str(s.state_dir / "sshd.log")], check=True
    )
    deadline = time.monotonic() + 10
    while not all(port_open(ip, s.ssh_port) for ip in (s.head_ip, s.worker_ip)):
        if time.monotonic() > deadline:
            raise SystemExit(
                f"sshd did not listen on {s.head_ip}/{s.worker_ip}:{s.ssh_port}; see {s.state_dir}/sshd.log"
            )
        time.sleep(0.2)


def stop_sshd(s: Settings) -> None:
    pid = sshd_pid(s)
    if pid:
        os.kill(pid, signal.SIGTERM)  # the listener only: sessions still open end by themselves
        deadline = time.monotonic() + 10
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if running(pid):
            os.kill(pid, signal.SIGKILL)
    s.sshd_pid_file.unlink(missing_ok=True)


def alive_nodes(s: Settings) -> list[dict[str, Any]]:
    """The cluster's live Ray nodes, from the dashboard's state API (empty while it does not answer)."""
    url = f"{s.dashboard_url}/api/v0/nodes?limit=100&detail=true"
    token = container_env(s.cluster_env).get("RAY_AUTH_TOKEN")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            result = json.load(resp)["data"]["result"]["result"]
    except (OSError, ValueError, KeyError):
        return []
    return [node for node in result if node.get("state") == "ALIVE"]


def ray_cli(s: Settings, *args: str) -> None:
    # The host's own state file of the on-premise provider (cluster-<name>.state) goes to the state dir.
    # Autoscaler v2, which `ray up` turns on since Ray 2.50, never launches the on-premise provider's workers
    # (see onprem.yaml): the head's autoscaler is v1.
    env = os.environ | {"RAY_TMPDIR": str(s.state_dir), "RAY_UP_enable_autoscaler_v2": "0"}
    subprocess.run([RAY, *args], check=True, env=env, cwd=REPO_ROOT)


def containers(s: Settings) -> list[str]:
    names = {f"sphere-{ip}" for ip in (s.head_ip, s.worker_ip)}
    out = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, check=True
    )
    return [name for name in out.stdout.split() if name in names]


def host_state_file(s: Settings) -> Path:
    """The on-premise provider's record of the nodes on the machine that runs `ray up`/`ray down`."""
    return s.state_dir / "ray" / f"cluster-{s.cluster_name}.state"


def up(s: Settings) -> None:
    if subprocess.run(["docker", "image", "inspect", s.image], capture_output=True).returncode:
        raise SystemExit(f"no docker image {s.image}: build it with `make image`")
    if not s.cluster_env.exists():
        raise SystemExit(f"{s.cluster_env} missing: start the local cluster first (`make cluster-up`)")
    start_sshd(s)
    (s.state_dir / "mount").mkdir(exist_ok=True)
    shutil.copy(Path(__file__).with_name("loopback_hook.py"), s.state_dir / "mount")
    write_private(s.env_file, "".join(f"{k}={v}\n" for k, v in container_env(s.cluster_env).items()))
    s.config_file.write_text(yaml.safe_dump(cluster_config(s), sort_keys=False))
    if not containers(s):
        # Ray 2.60's `ray down` marks every node teardown_complete in this file, and only the head's
        # autoscaler (inside the head's container) marks a worker running again: a second `ray down` from
        # the same state would skip the worker's container. Start from no record when nothing runs.
        host_state_file(s).unlink(missing_ok=True)
    started = time.monotonic()
    ray_cli(s, "up", "-y", "--no-config-cache", str(s.config_file))
    print(f"== head up after {time.monotonic() - started:.0f} s; waiting for the worker to join")
    deadline = time.monotonic() + s.join_timeout_s
    while len(alive_nodes(s)) < 2:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"the worker did not join within {s.join_timeout_s:.0f} s; the head's autoscaler log: "
                f"{RAY} exec {s.config_file} 'tail -n 50 /tmp/ray/session_latest/logs/monitor.*'"
            )
        time.sleep(3)
    print(f"== 2 nodes up after {time.monotonic() - started:.0f} s")
    print(f"jobs:  source {s.cluster_env}; RAY_API_SERVER_ADDRESS={s.dashboard_url} {RAY} job submit -- ...")
    print(f"down:  {sys.executable} {Path(__file__).relative_to(REPO_ROOT)} down")


def down(s: Settings) -> None:
    if s.config_file.exists():
        if not sshd_pid(s):
            start_sshd(s)  # ray down reaches the nodes over ssh
        ray_cli(s, "down", "-y", str(s.config_file))
        host_state_file(s).unlink(missing_ok=True)  # see up()
    stop_sshd(s)
    s.env_file.unlink(missing_ok=True)
    left = containers(s)
    if left:
        raise SystemExit(f"containers left running after ray down: {left}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "config", "status"])
    command = parser.parse_args().command
    s = Settings.from_env(dict(os.environ))
    if command == "up":
        up(s)
    elif command == "down":
        down(s)
    elif command == "config":
        print(yaml.safe_dump(cluster_config(s), sort_keys=False), end="")
    else:
        nodes = alive_nodes(s)
        print(f"sshd pid {sshd_pid(s)}  containers {containers(s)}  live Ray nodes {len(nodes)}")
        sys.exit(0 if len(nodes) >= 2 else 3)


if __name__ == "__main__":
    main()
