"""@slow: the README's headline command as written, `ray job submit -- python -m orchestrator.sweep
sweeps/noise.yaml` with no --working-dir, finds the shipped sweep, says which file it used, and takes
submit-time `--set` overrides (dry run: the point is what the job resolves, not another training run)."""

from __future__ import annotations

import pytest
from ray.job_submission import JobStatus

from tests.integration.conftest import REPO, Jobs

pytestmark = pytest.mark.slow


def test_the_headline_command_finds_the_shipped_sweep_without_a_working_dir(
    jobs: Jobs, mnist_shards: str
) -> None:
    job = jobs.client.submit_job(
        entrypoint="python -m orchestrator.sweep sweeps/noise.yaml --dry-run --set run.steps=600 "
        "--set data.batch_size=8"
    )  # no runtime_env: the job runs in Ray's directory, as `ray job submit -- ...` does
    status = jobs.wait(job, timeout_s=180)
    logs = jobs.logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert f"using the project's {REPO}/sweeps/noise.yaml" in logs
    assert "--set run.steps=600" in logs and "--set data.batch_size=8" in logs
    assert f"{mnist_shards}: " in logs and "rank 0:" in logs  # the shard plan, read from the cluster's bucket
