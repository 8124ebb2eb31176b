"""@slow, end to end: stop a sweep's driver mid-run, resubmit the same file, and the sweep resumes:
the Tune experiment is restored, the finished trial is not rerun, the interrupted one resumes from its
Train checkpoint, and the MLflow parent and child runs are reused rather than duplicated."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from ray.job_submission import JobStatus

from orchestrator.config.loader import load_sweep
from tests.integration.conftest import REPO, Jobs

pytestmark = pytest.mark.slow

SWEEP = f"""
name: resume-test
base: {REPO / "sweeps" / "base" / "mnist.yaml"}
overrides:
  run.steps: 20
  run.log_every: 5
  run.eval_every: 20
  run.checkpoint_every: 5
  optim.total_steps: 20
  data.batch_size: 16
  data.shuffle_buffer: 100
  tracking.experiment: sphere-resume-test
  tracking.registered_model: sphere-resume-test
search:
  noise.alpha_max_deg: {{grid: [75.0, 85.0]}}
tune:
  max_concurrent_trials: 1    # one trial after the other: the first is finished when the driver dies
"""


def test_resubmitted_sweep_resumes_after_the_driver_died(
    jobs: Jobs, mnist_shards: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    path = tmp_path / "resume.yaml"  # the local cluster shares this machine's disk with the test
    path.write_text(SWEEP)
    spec = load_sweep(path)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])

    def children() -> list:
        experiment = client.get_experiment_by_name(spec.experiment.tracking.experiment)
        if experiment is None:
            return []
        runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
        return [r for r in runs if "mlflow.parentRunId" in r.data.tags]

    def second_trial_past_step_10() -> bool:
        runs = children()
        return len(runs) == 2 and any(
            m.step >= 10 for m in client.get_metric_history(runs[1].info.run_id, "loss")
        )

    first_job = jobs.submit(path)
    status = jobs.wait(first_job, timeout_s=300, until=second_trial_past_step_10)
    assert status == JobStatus.RUNNING, jobs.logs(first_job)[-6000:]
    jobs.client.stop_job(first_job)  # the driver dies with the second trial half done
    assert jobs.wait(first_job, timeout_s=120) == JobStatus.STOPPED
    finished_before = [r.info.run_id for r in children() if r.info.status == "FINISHED"]
    assert len(finished_before) == 1

    second_job = jobs.submit(path)
    status = jobs.wait(second_job, timeout_s=300)
    logs = jobs.logs(second_job)
    assert status == JobStatus.SUCCEEDED, logs[-6000:]
    assert f"restoring {spec.experiment.run.storage_path}/{spec.experiment_name}" in logs

    runs = children()
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)  # reused, not duplicated
    steps = [m.step for m in client.get_metric_history(finished_before[0], "loss")]
    assert steps == [5, 10, 15, 20]  # the finished trial was not rerun: each step logged exactly once
    resumed = [int(step) for step in re.findall(r"resumed from the checkpoint at step (\d+)", logs)]
    assert resumed and min(resumed) >= 5  # the interrupted trial continued from its Train checkpoint
    parents = client.search_runs(
        [runs[0].info.experiment_id], filter_string=f"tags.`sweep.digest` = '{spec.digest}'"
    )
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
