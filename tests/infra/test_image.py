"""@slow: the image `make image` builds runs the project as the non-root user `ray`, with what Ray's cluster
launcher and KubeRay use inside a node's container (rsync through `docker exec`, ssh both ways, wget, the
NVIDIA runtime's variables) and the venv on every kind of shell's PATH."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # a first build downloads the dependencies


def docker(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=False)


def test_sweep_dry_run_runs_in_the_image_as_ray(image: str) -> None:
    run = docker(
        "run", "--rm", "--network", "host", image, "python", "-m", "orchestrator.sweep", "sweeps/smoke.yaml",
        "--dry-run",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("sweep smoke (kind train)"), run.stdout  # the image's sweeps/smoke.yaml
    assert '  trial 0: {"noise.alpha_max_deg": 75.0}' in run.stdout, run.stdout
    assert '  trial 1: {"noise.alpha_max_deg": 85.0}' in run.stdout, run.stdout


def test_image_has_the_launchers_tools_the_gpu_variables_and_no_root(image: str) -> None:
    script = r"""
    set -e
    echo "uid=$(id -u) user=$(id -un) home=$HOME cwd=$PWD"
    for tool in rsync ssh sshd wget ray python; do echo "$tool=$(command -v $tool)"; done
    echo "nvidia=$NVIDIA_VISIBLE_DEVICES/$NVIDIA_DRIVER_CAPABILITIES"
    echo "login=$(bash --login -c -i 'command -v ray' 2>/dev/null)"
    echo "baked_host_keys=$(ls /etc/ssh/ssh_host_* 2>/dev/null | wc -l)"
    touch /opt/venv/.writable && echo venv_writable=yes
    python -c 'import orchestrator, sphere_core, torch; print("torch=" + torch.__version__)'
    """
    run = docker("run", "--rm", "--network", "none", image, "bash", "-c", script)
    assert run.returncode == 0, run.stdout + run.stderr
    seen = dict(line.split("=", 1) for line in run.stdout.splitlines() if "=" in line)
    assert "uid=1000 user=ray home=/home/ray cwd=/home/ray/app" in run.stdout, run.stdout
    assert seen["rsync"] == "/usr/bin/rsync" and seen["ssh"] == "/usr/bin/ssh", seen
    assert seen["sshd"] == "/usr/sbin/sshd" and seen["wget"] == "/usr/bin/wget", seen
    assert seen["ray"] == seen["login"] == "/opt/venv/bin/ray", seen  # also in the launcher's login shells
    assert seen["python"] == "/opt/venv/bin/python", seen
    assert seen["nvidia"] == "all/compute,utility", seen
    assert seen["baked_host_keys"] == "0", seen  # every container would share them
    assert seen["venv_writable"] == "yes" and seen["torch"].startswith("2.13.0"), seen


def test_user_ray_runs_sshd_and_logs_in_over_ssh_without_root(image: str) -> None:
    """How a launcher reaches a node container by ssh: sshd as `ray` on a high port, key login, a login shell
    that finds `ray`. In its own network namespace, so the port is the container's."""
    script = r"""
    set -e
    mkdir -p -m 700 ~/.ssh
    ssh-keygen -q -N '' -t ed25519 -f ~/.ssh/host_ed25519
    ssh-keygen -q -N '' -t ed25519 -f ~/.ssh/id_ed25519
    cp ~/.ssh/id_ed25519.pub ~/.ssh/authorized_keys
    /usr/sbin/sshd -p 2222 -h ~/.ssh/host_ed25519 -o UsePAM=no -o PidFile=/home/ray/sshd.pid
    ssh -p 2222 -o StrictHostKeyChecking=no -o BatchMode=yes ray@127.0.0.1 \
        "bash --login -c -i 'id -un; ray --version'" 2>/dev/null
    """
    run = docker("run", "--rm", "--network", "none", image, "bash", "-c", script)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[0] == "ray", run.stdout
    assert "ray, version 2.60.0" in run.stdout, run.stdout


@pytest.fixture
def container(image: str) -> Iterator[str]:
    name = f"sphere-test-{secrets.token_hex(4)}"
    started = docker("run", "--detach", "--name", name, "--network", "none", image, "sleep", "600")
    assert started.returncode == 0, started.stderr
    try:
        yield name
    finally:
        docker("rm", "--force", name)


def test_launcher_rsyncs_into_the_container_through_docker_exec(container: str, tmp_path: Path) -> None:
    """The cluster launcher's file sync (ray-project/ray#37823): rsync -e 'docker exec -i' into the node's
    container, landing as the user `ray` in its home."""
    (tmp_path / "bootstrap").mkdir()
    (tmp_path / "bootstrap" / "ray_bootstrap_config.yaml").write_text("cluster_name: test\n")
    argv = [
        "rsync",
        "-e",
        "docker exec -i",
        "-avz",
        f"{tmp_path}/bootstrap/",
        f"{container}:/home/ray/bootstrap/",
    ]
    sync = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sync.returncode == 0, sync.stdout + sync.stderr
    owned = docker("exec", container, "stat", "-c", "%U %n", "/home/ray/bootstrap/ray_bootstrap_config.yaml")
    assert owned.stdout.strip() == "ray /home/ray/bootstrap/ray_bootstrap_config.yaml", owned
