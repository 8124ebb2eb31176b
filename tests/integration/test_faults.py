"""@slow fault injection on the real local cluster, one test per fault, each asserting what was kept:
- the object store killed (-9) mid-training and restarted: the sweep finishes, an earlier sweep's artifacts
  and registered model are intact and the registered version still downloads its checkpoint;
- MLflow killed for longer than the workers' retry window: no metric lost, none logged twice;
- the same sweep submitted twice at once: the second is refused naming the first; one run per trial;
- truncated shards on both ranks: the run's skipped_samples is the sum over ranks, and the run records
  what it actually read;
- a dataset build killed halfway: no manifest is left, and the next build replaces the leftovers.
(The resumed worker's one-value-per-step and the drawn-secret canary are in test_resume_sweep.py and
test_smoke_sweep.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ray.job_submission import JobStatus

from orchestrator.config.loader import load_sweep
from orchestrator.config.sweep_spec import SweepSpec
from tests.integration.conftest import MNIST, REPO, Jobs

pytestmark = pytest.mark.slow


def sweep_file(tmp_path: Path, name: str, *, steps: int, extra: str = "", search: str = "") -> Path:
    """A one-trial (unless `search`) sweep of the MNIST recipe, short and without the proxy eval."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""
name: {name}
base: {REPO / "sweeps" / "base" / "mnist.yaml"}
overrides:
  run.steps: {steps}
  run.log_every: 5
  run.checkpoint_every: 25
  optim.total_steps: {steps}
  optim.warmup_steps: 10
  loss.adversarial_start_step: {steps // 2}
  data.shuffle_buffer: 100
  tracking.experiment: sphere-{name}
  tracking.registered_model: sphere-{name}
  eval.dataset: none
{extra}
search:
{search or "  run.seed: {grid: [0]}"}
"""
    )
    return path


def mlflow_client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def trial_runs(spec: SweepSpec) -> list[Any]:
    client = mlflow_client()
    experiment = client.get_experiment_by_name(spec.experiment.tracking.experiment)
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]


def loss_steps(run_id: str) -> list[int]:
    return sorted(m.step for m in mlflow_client().get_metric_history(run_id, "loss"))


def logged_past(spec: SweepSpec, step: int) -> Callable[[], bool]:
    return lambda: any(max(loss_steps(r.info.run_id), default=0) >= step for r in trial_runs(spec))


def service_pid(jobs: Jobs, name: str) -> int:
    return int((jobs.cluster.state_dir / "pids" / f"{name}.pid").read_text())


def bucket_keys(prefix: str) -> dict[str, int]:
    import boto3

    s3 = boto3.client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="sphere", Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def test_the_store_killed_mid_training_loses_nothing(jobs: Jobs, mnist_shards: str, tmp_path: Path) -> None:
    import mlflow

    earlier = load_sweep(sweep_file(tmp_path, "fault-earlier", steps=20))
    job = jobs.submit(tmp_path / "fault-earlier.yaml")
    assert jobs.wait(job, timeout_s=300) == JobStatus.SUCCEEDED, jobs.logs(job)[-4000:]
    model_uri = f"models:/sphere-fault-earlier@{earlier.experiment.tracking.alias}"
    (earlier_run,) = trial_runs(earlier)
    kept = bucket_keys(f"mlflow-artifacts/{earlier_run.info.experiment_id}/")
    assert kept

    spec = load_sweep(sweep_file(tmp_path, "fault-store", steps=250))
    job = jobs.submit(tmp_path / "fault-store.yaml")
    assert jobs.wait(job, timeout_s=300, until=logged_past(spec, 50)) == JobStatus.RUNNING, jobs.logs(job)[
        -4000:
    ]
    os.killpg(service_pid(jobs, "s3"), signal.SIGKILL)  # mid-training: shard reads and checkpoints fail
    time.sleep(20)
    up = jobs.cluster.script("up")
    assert up.returncode == 0, up.stdout + up.stderr
    status = jobs.wait(job, timeout_s=420)
    assert status == JobStatus.SUCCEEDED, jobs.logs(job)[-6000:]
    (run,) = trial_runs(spec)
    assert loss_steps(run.info.run_id) == list(range(5, 251, 5))

    assert {
        k: v
        for k, v in bucket_keys(f"mlflow-artifacts/{earlier_run.info.experiment_id}/").items()
        if k in kept
    } == kept
    downloaded = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "model")))
    assert any(p.suffix in (".pt", ".safetensors") and p.stat().st_size > 0 for p in downloaded.rglob("*"))


def test_mlflow_down_longer_than_the_retry_window_loses_no_metric(
    jobs: Jobs, mnist_shards: str, tmp_path: Path
) -> None:
    spec = load_sweep(sweep_file(tmp_path, "fault-mlflow", steps=250))
    job = jobs.submit(tmp_path / "fault-mlflow.yaml")
    assert jobs.wait(job, timeout_s=300, until=logged_past(spec, 50)) == JobStatus.RUNNING, jobs.logs(job)[
        -4000:
    ]
    os.killpg(service_pid(jobs, "mlflow"), signal.SIGKILL)
    time.sleep(30)  # the workers' MLflow client gives up after ~7 s; checkpoints come every ~3 s
    up = jobs.cluster.script("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert jobs.wait(job, timeout_s=420) == JobStatus.SUCCEEDED, jobs.logs(job)[-6000:]
    assert "metric values kept for the next flush" in jobs.logs(job)  # the outage outlasted the client
    (run,) = trial_runs(spec)
    assert loss_steps(run.info.run_id) == list(range(5, 251, 5))  # every step once: none lost, none twice


def test_the_same_sweep_twice_at_once_is_refused(jobs: Jobs, mnist_shards: str, tmp_path: Path) -> None:
    spec = load_sweep(sweep_file(tmp_path, "fault-twice", steps=60))
    first = jobs.submit(tmp_path / "fault-twice.yaml")
    assert jobs.wait(first, timeout_s=300, until=logged_past(spec, 5)) == JobStatus.RUNNING
    second = jobs.submit(tmp_path / "fault-twice.yaml")
    assert jobs.wait(second, timeout_s=300) == JobStatus.FAILED
    refusal = [line for line in jobs.logs(second).splitlines() if line.startswith("error:")]
    assert refusal == [
        f"error: sweep {spec.experiment_name} is already running in Ray job {first} (`ray job stop {first}` "
        f"stops it), since {refusal[0].split(', since ')[1].split(';')[0]}; wait for it, stop it, or pass "
        "--new-experiment to run this submission as a new experiment"
    ]
    assert jobs.wait(first, timeout_s=300) == JobStatus.SUCCEEDED, jobs.logs(first)[-4000:]
    (run,) = trial_runs(spec)
    assert loss_steps(run.info.run_id) == list(range(5, 61, 5))


def test_truncated_shards_on_both_ranks_are_counted_over_all_ranks(
    jobs: Jobs, mnist_shards: str, tmp_path: Path
) -> None:
    import boto3

    from orchestrator.data.shards import epoch_order, rank_shards, read_manifest

    s3 = boto3.client("s3")
    source, target = f"{MNIST}/train".removeprefix("s3://sphere/"), "datasets/truncated"
    for key in bucket_keys(source + "/"):
        s3.copy_object(
            Bucket="sphere", Key=key.replace(source, target), CopySource={"Bucket": "sphere", "Key": key}
        )
    manifest = read_manifest(f"s3://sphere/{target}")
    order = epoch_order([s.name for s in manifest.shards], seed=0, epoch=0)
    first_of_each_rank = [rank_shards(order, rank, 2, 1)[0] for rank in range(2)]  # read first by each rank
    for name in first_of_each_rank:
        body = s3.get_object(Bucket="sphere", Key=f"{target}/{name}")["Body"].read()
        s3.put_object(Bucket="sphere", Key=f"{target}/{name}", Body=body[: len(body) // 2])
    per_shard = {s.name: s.samples for s in manifest.shards}
    expected = sum(per_shard[name] for name in first_of_each_rank)

    extra = (
        f"  data.url: s3://sphere/{target}\n  scaling.workers_per_trial: 2\n  scaling.cpus_per_worker: 0.49"
    )
    spec = load_sweep(sweep_file(tmp_path, "fault-truncated", steps=30, extra=extra))
    job = jobs.submit(tmp_path / "fault-truncated.yaml")
    assert jobs.wait(job, timeout_s=300) == JobStatus.SUCCEEDED, jobs.logs(job)[-4000:]
    (run,) = trial_runs(spec)
    assert run.data.metrics["skipped_samples"] == expected  # both ranks' skips, not rank 0's
    assert json.loads(run.data.tags["data.skipped_per_shard"]) == {
        n: per_shard[n] for n in sorted(first_of_each_rank)
    }
    assert len(run.data.tags["data.read_digest"]) == 32


def test_a_build_killed_halfway_leaves_no_dataset_and_the_next_build_replaces_it(local_cluster: Any) -> None:
    url = "s3://sphere/datasets/interrupted"
    argv = [sys.executable, "-m", "orchestrator.data", "build", "--source", "builtin:mnist", "--out", url,
            "--shard-size", "50", "--no-progress"]  # fmt: skip
    build = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(bucket_keys("datasets/interrupted/train/")) < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    build.kill()  # SIGKILL: no cleanup of its own can run
    build.wait()
    written = bucket_keys("datasets/interrupted/")
    assert len(written) >= 5 and not any(k.endswith("manifest.json") for k in written)

    again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    assert "shards of an unfinished build at s3://sphere/datasets/interrupted/train" in again.stderr
    verify = subprocess.run(
        [sys.executable, "-m", "orchestrator.data", "verify", f"{url}/train"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
