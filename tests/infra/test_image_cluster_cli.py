"""infra/local/image_cluster.py answers bad settings and missing prerequisites in one line, before it starts
anything (the cluster itself: tests/integration/test_image_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.image import docker_unavailable

SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "local" / "image_cluster.py"


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    settings = {"CLUSTER_DIR": str(tmp_path / "cluster"), "IMAGE_CLUSTER_NAME": "sphere-cli-test"} | env
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=os.environ | settings,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMAGE_CLUSTER_PORT_BASE": "x"}, "image-cluster: IMAGE_CLUSTER_PORT_BASE: 'x' is not a number"),
        ({"IMAGE_CLUSTER_PORT_BASE": "80"}, "image-cluster: IMAGE_CLUSTER_PORT_BASE: 80 (allowed: 1024..6"),
        ({"IMAGE_CLUSTER_NAME": "a b"}, "image-cluster: IMAGE_CLUSTER_NAME: 'a b' (allowed: letters"),
        ({"IMAGE_CLUSTER_WORKER_CPUS": "0"}, "image-cluster: IMAGE_CLUSTER_WORKER_CPUS: 0 (allowed: > 0)"),
    ],
)
def test_bad_settings_fail_in_one_line(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = run(tmp_path, "up", **env)
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stdout == ""


def test_missing_image_and_missing_local_cluster_are_named(tmp_path: Path) -> None:
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    result = run(tmp_path, "up", "--image", "sphere-orchestrator:no-such-tag")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == (
        "image-cluster: image sphere-orchestrator:no-such-tag not found: run `make image` first\n"
    )
    status = run(tmp_path, "status")
    assert status.returncode == 3 and "no containers" in status.stdout, status.stdout
