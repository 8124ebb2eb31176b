"""@slow, end to end, both ways a sweep loses a process on a real cluster:
- a Train worker is killed mid-trial: Ray restarts the worker group from the trial's latest checkpoint
  (run.max_failures) and the trial finishes;
- the sweep's driver is stopped mid-run and the same file resubmitted: the Tune experiment is restored,
  the finished trial is not rerun, the interrupted one resumes from its Train checkpoint, and the MLflow
  parent and child runs are reused rather than duplicated;
- either way MLflow keeps one value per step (metrics are sent after each checkpoint)."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from ray.job_submission import JobStatus
from ray.util.state import list_actors

from orchestrator.config.loader import load_sweep
from tests.integration.conftest import REPO, Jobs

pytestmark = pytest.mark.slow

SWEEP = f"""
name: resume-test
base: {REPO / "sweeps" / "base" / "mnist.yaml"}
overrides:
  run.steps: 60                # long enough that the worker is killed mid-trial, not after it
  run.log_every: 5
  run.checkpoint_every: 10      # steps 15, 25 are logged between checkpoints: a resume must not repeat them
  optim.total_steps: 60
  loss.adversarial_start_step: 20  # the killed worker's critic and its Adam come back from the checkpoint
  data.batch_size: 16
  data.shuffle_buffer: 100
  scaling.workers_per_trial: 2  # a DDP worker group: one worker is killed while its peer waits
  scaling.cpus_per_worker: 0.49
  tracking.experiment: sphere-resume-test
  tracking.registered_model: sphere-resume-test
  eval.dataset: none          # resumption is under test here, not the proxy metrics: no eval to wait for
search:
  noise.alpha_max_deg: {{grid: [75.0, 85.0]}}
tune:
  max_concurrent_trials: 1    # one trial after the other: the first is finished when the driver dies
"""


def test_a_killed_worker_and_a_stopped_driver_both_resume(
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

    def trial_past_step_20(index: int) -> bool:
        """Its checkpoint at step 10 is registered by then: Ray registers one a moment after its report."""
        runs = children()
        return len(runs) == index + 1 and any(
            m.step >= 20 for m in client.get_metric_history(runs[index].info.run_id, "loss")
        )

    def loss_history(run_id: str) -> list[tuple[int, float, int]]:
        return [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, "loss")]

    def resumed_steps(logs: str) -> list[int]:
        return [int(step) for step in re.findall(r"resumed from the checkpoint at step (\d+)", logs)]

    first_job = jobs.submit(path)
    status = jobs.wait(first_job, timeout_s=300, until=lambda: trial_past_step_20(0))
    assert status == JobStatus.RUNNING, jobs.logs(first_job)[-6000:]
    workers = list_actors(
        address=jobs.cluster.dashboard_url,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
    )
    assert len(workers) == spec.experiment.scaling.workers_per_trial  # the first trial's worker group
    os.kill(int(workers[-1].pid), signal.SIGKILL)

    status = jobs.wait(first_job, timeout_s=300, until=lambda: trial_past_step_20(1))
    assert status == JobStatus.RUNNING, jobs.logs(first_job)[-6000:]
    jobs.client.stop_job(first_job)  # the driver dies with the second trial half done
    assert jobs.wait(first_job, timeout_s=120) == JobStatus.STOPPED
    stopped = {run.info.run_id: run.info.status for run in children()}
    (parent_run,) = client.search_runs(
        [children()[0].info.experiment_id], filter_string=f"tags.`sweep.digest` = '{spec.digest}'"
    )
    assert parent_run.info.status == "KILLED"  # ended by the stop, not left RUNNING until a resubmission
    assert sorted(stopped.values()) == ["FINISHED", "KILLED"]
    first_logs = jobs.logs(first_job)
    restarted_at = set(resumed_steps(first_logs))  # Ray's log forwarding may repeat a worker's line
    assert len(restarted_at) == 1, first_logs[-6000:]
    assert 10 <= restarted_at.pop() < 60  # from a checkpoint, not from scratch
    finished_before = [r.info.run_id for r in children() if r.info.status == "FINISHED"]
    assert len(finished_before) == 1
    history_before = loss_history(finished_before[0])
    assert max(step for step, _, _ in history_before) == 60

    second_job = jobs.submit(path)
    status = jobs.wait(second_job, timeout_s=300)
    logs = jobs.logs(second_job)
    assert status == JobStatus.SUCCEEDED, logs[-6000:]
    assert f"restoring {spec.experiment.run.storage_path}/{spec.experiment_name}" in logs

    runs = children()
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)  # reused, not duplicated
    for run in runs:  # both resumed (the killed worker, the stopped driver): still one value per step
        assert [step for step, _, _ in loss_history(run.info.run_id)] == list(range(5, 61, 5))
    assert loss_history(finished_before[0]) == history_before  # the finished trial was not rerun
    resumed = resumed_steps(logs)
    assert resumed and min(resumed) >= 10  # the interrupted trial continued from its Train checkpoint
    parents = client.search_runs(
        [runs[0].info.experiment_id], filter_string=f"tags.`sweep.digest` = '{spec.digest}'"
    )
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
