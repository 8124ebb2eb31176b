"""The local cluster: an S3 endpoint (SeaweedFS), an MLflow server and a Ray head, bound to 127.0.0.1.

    cluster.py up | down | status | pids | submit -- CMD ...

`up` starts what is not running and waits until every service answers its health URL; a second `up` on a
healthy cluster changes nothing; a service whose process died is restarted (a killed leader's leftover
children are stopped first, so they cannot keep its port). The state dir and Ray's temp dir are this
user's alone (folders 0700, files 0600: the services start under umask 077, and `up` first takes group and
other permissions off what an older version left there); the Ray head takes clients with its token only
(cluster_services.py). `down` stops exactly this cluster's processes (never `ray stop`, which stops every
Ray cluster on the machine). Clients `source <state dir>/env`.

What each service is, and the object store's persistence and credentials: cluster_services.py. Settings
come from the environment, so a second cluster on other ports and another state dir can run beside the
first (the tests start one):

    CLUSTER_DIR (.cluster)  S3_PORT (9000)  S3_BUCKET (sphere)  MLFLOW_PORT (5000)  RAY_GCS_PORT (6379)
    S3_INTERNAL_PORTS (SeaweedFS's own 9 ports, comma-separated; S3_PORT+1 .. S3_PORT+9)
    RAY_DASHBOARD_PORT (8265)  RAY_DASHBOARD_AGENT_PORT (52365)  RAY_CLIENT_PORT (10001)
    RAY_NUM_CPUS (CPUs of this process)  RAY_OBJECT_STORE_BYTES (500 MB)
    RAY_TEMP_DIR (/tmp/ray-<hash of the state dir>; Ray's own in its ray/)  CLUSTER_START_TIMEOUT_S (180)

Ray's other ports (workers, raylet, object manager, agents' gRPC, metrics) are left to the OS, so two clusters
never collide on them. Uses the tools (ray, mlflow, weed) installed beside the Python that runs it.
"""

import argparse
import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cluster_services import (
    HOST,
    PRIVATE_UMASK,
    REPO_ROOT,
    VENV_BIN,
    Service,
    Settings,
    client_env,
    http_ok,
    make_private,
    ray_auth_header,
    services,
    write_private,
)
from procs import CLUSTER_MARKER, group_members, is_alive, marked_pids, stop_group, stop_pids


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
            start_new_session=True,  # own group: stop it alone
            umask=PRIVATE_UMASK,  # its data, database and logs are born private
        )
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
        write_private(s.env_file, text)  # it holds the store's secret


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
    # What an older version left readable: every file is this user's alone from now on. Ray's own folder is
    # left as Ray makes it (0777 folders, see Settings.ray_dir): the 0700 folder around it keeps others out.
    tightened = sum(make_private(p, leave=s.ray_dir) for p in (s.state_dir, s.ray_temp_dir) if p.exists())
    if tightened:
        print(f"made {tightened} files and folders in {s.state_dir} and {s.ray_temp_dir} this user's alone")
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


def ray_api(s: Settings, path: str) -> Any:
    """The JSON of GET `path` on the Ray dashboard, sent with this cluster's token."""
    url = f"http://{HOST}:{s.ray_dashboard_port}{path}"
    request = urllib.request.Request(url, headers=ray_auth_header(s))
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)


def ray_auth_note(s: Settings) -> str:
    """A warning when the running Ray head takes no token (one started before cluster.py drew one)."""
    try:
        mode = ray_api(s, "/api/authentication_mode").get("authentication_mode")
    except (OSError, ValueError):
        return ""
    if mode == "token":
        return ""
    return "  (takes no token: started by an older cluster.py; `down`, then `up` restarts it with one)"


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
        note += ray_auth_note(s) if svc.name == "ray" and state == "up" else ""
        print(f"{svc.name:<7} {state:<9} pid {pid or '-':<8} {svc.url}{note}")
    print(f"bucket  s3://{s.bucket}   ray gcs {HOST}:{s.ray_gcs_port}")
    print(f"logs    {s.state_dir}/logs and {s.ray_dir}/session_latest/logs")
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
    try:
        ray_api(s, "/api/version")
    except urllib.error.HTTPError as err:
        print(f"the Ray dashboard at {dashboard} refused the token: HTTP {err.code}", file=sys.stderr)
        return 1
    except OSError:
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
    info = ray_api(s, f"/api/jobs/{job_id}")
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
    os.umask(PRIVATE_UMASK)  # the state dir, pid files, logs and env file: this user's alone
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
