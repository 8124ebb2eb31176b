"""End-to-end helpers: the MNIST shards in the test cluster's bucket, and sweeps submitted as Ray jobs."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from tests.fixtures.services import LocalCluster

REPO = Path(__file__).resolve().parents[2]
MNIST = "s3://sphere/datasets/mnist"  # where sweeps/base/mnist.yaml reads (its /train split)
TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


@pytest.fixture(scope="session")
def mnist_shards(local_cluster: LocalCluster) -> str:
    """builtin:mnist written once per session into the cluster's S3 bucket; returns the train URL."""
    import fsspec

    if not fsspec.filesystem("s3").exists(f"{MNIST}/train/manifest.json"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator.data",
                "build",
                "--source",
                "builtin:mnist",
                "--out",
                MNIST,
                "--no-progress",
            ],
            cwd=REPO,
            check=True,
            timeout=300,
        )
    return f"{MNIST}/train"


class Jobs:
    """Sweeps submitted through the Ray job SDK, with the cluster's env and this checkout as working dir."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.client = JobSubmissionClient(cluster.dashboard_url)

    def submit(self, sweep: Path | str, *args: str) -> str:
        """`python -m orchestrator.sweep SWEEP ARGS...` as a Ray job (args: e.g. --set PATH=VALUE)."""
        # As `make sweep` does: the cluster env (credentials included) comes from the raylet, never from a
        # runtime env, which Ray writes to its logs and job API.
        env = {"SPHERE_GIT_COMMIT": git_commit()}
        runtime_env = {"working_dir": str(REPO), "env_vars": env, "excludes": [".git", "out", "runs"]}
        entrypoint = shlex.join(["python", "-m", "orchestrator.sweep", str(sweep), *args])
        return self.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)

    def wait(self, job_id: str, timeout_s: float = 300, until: Callable[[], bool] | None = None) -> JobStatus:
        """Polls until the job ends (or `until()` holds); returns the status then."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.client.get_job_status(job_id)
            if status in TERMINAL or (until is not None and until()):
                return status
            time.sleep(1.0)
        self.client.stop_job(job_id)
        raise TimeoutError(
            f"job {job_id} still {status} after {timeout_s:.0f} s:\n{self.logs(job_id)[-4000:]}"
        )

    def logs(self, job_id: str) -> str:
        return self.client.get_job_logs(job_id)


@pytest.fixture(scope="session")
def jobs(local_cluster: LocalCluster) -> Jobs:
    return Jobs(local_cluster)
