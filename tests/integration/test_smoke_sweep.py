"""@slow, end to end on the real local cluster: the shipped smoke sweep as a Ray job -> MLflow runs,
metrics, sample grids and a registered alias -> `orchestrator.generate` from that alias writes a PNG, and
an inference-time sweep (kind: evaluate) scores settings of the frozen registered model under the run that
trained it; the REST API the MLflow UI reads shows the sweeps' summary/Pareto artifacts and comparable
child runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from ray.job_submission import JobStatus

from orchestrator.config.loader import load_sweep
from orchestrator.config.sweep_spec import SweepSpec
from orchestrator.train.worker_env import ALLOCATOR_TAG
from tests.fixtures.services import LOOPBACK_LISTEN_ADDRESSES, Listener
from tests.integration.conftest import REPO, Jobs
from tests.integration.test_faults import bucket_keys

pytestmark = pytest.mark.slow
SMOKE = REPO / "sweeps" / "smoke.yaml"
# Evaluated and checkpointed at steps 10 and 20, one checkpoint kept: the trial's best eval names the
# checkpoint Train keeps beside the latest and the sweep registers, whether or not it is the last.
SMOKE_SETS = {"run.eval_every": 10, "run.checkpoint_every": 10, "run.keep_checkpoints": 1}


def kept_checkpoint_steps(spec: SweepSpec, trial: str) -> set[int]:
    """The steps of the checkpoints a trial's Train run still holds in the bucket (each one's step.json)."""
    import boto3

    storage = spec.experiment.run.storage_path.removeprefix("s3://sphere/").rstrip("/")
    s3 = boto3.client("s3")
    return {
        json.loads(s3.get_object(Bucket="sphere", Key=key)["Body"].read())["step"]
        for key in bucket_keys(f"{storage}/{trial}/checkpoint_")
        if key.endswith("/step.json")
    }


@pytest.fixture(scope="module")
def listeners_during_smoke_sweep() -> set[Listener]:
    """Every listening socket the cluster's processes held while the smoke sweep ran (sampled each second)."""
    return set()


@pytest.fixture(scope="module")
def smoke_sweep(jobs: Jobs, mnist_shards: str, listeners_during_smoke_sweep: set[Listener]) -> SweepSpec:
    """The shipped smoke sweep, run once as a Ray job (it registers the model the other tests sample)."""

    def record_listeners() -> bool:
        listeners_during_smoke_sweep.update(jobs.cluster.listeners())
        return False

    sets = [arg for path, value in SMOKE_SETS.items() for arg in ("--set", f"{path}={value}")]
    job_id = jobs.submit("sweeps/smoke.yaml", *sets)
    status = jobs.wait(job_id, timeout_s=420, until=record_listeners)
    assert status == JobStatus.SUCCEEDED, jobs.logs(job_id)[-6000:]
    return load_sweep(SMOKE, SMOKE_SETS)


def test_smoke_sweep_tracks_registers_and_generates(smoke_sweep: SweepSpec, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    spec = smoke_sweep
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(spec.experiment.tracking.experiment)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep.digest") == spec.digest]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["git.commit"] not in ("", "unknown")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(c.data.params["noise.alpha_max_deg"] for c in children) == ["75.0", "85.0"]
    assert len({frozenset(c.data.params) for c in children}) == 1  # the whole config, field by field
    best = next(c for c in children if c.data.tags["sweep.trial"] == parent.data.tags["best.trial"])
    metric = spec.tune.metric
    # SMOKE_SETS: the best of the two evals (a tie goes to the later, as Train ranks them)
    evals = {int(m.step): m.value for m in client.get_metric_history(best.info.run_id, metric)}
    assert sorted(evals) == [10, 20]
    best_step = min(sorted(evals, reverse=True), key=evals.__getitem__)
    assert parent.data.metrics[f"best.{metric}"] == pytest.approx(evals[best_step])
    assert f"runs/{best.info.run_id})" in parent.data.tags["mlflow.note.content"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags[ALLOCATOR_TAG] == "jemalloc"  # the cluster preloads Ray's into its workers
        assert {"loss", "recon_dist", "lr", "images_per_s", "data_wait_s", "skipped_samples"} <= set(
            child.data.metrics
        )
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "loss")]
        assert steps == [5, 10, 15, 20]  # log_every 5 over 20 steps, each step logged once (rank 0 only)
        pngs = {a.path for a in client.list_artifacts(child.info.run_id, "samples")}
        assert pngs == {f"samples/samples_{t}step_step0000{s}.png" for t in (1, 4) for s in (10, 20)}
        assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"config.yaml", "samples"}
        assert child.inputs is not None
        (dataset,) = child.inputs.dataset_inputs
        assert dataset.dataset.source_type == "s3"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "summary.csv",
        "summary.md",
        "best_checkpoint",
    }

    tracked = spec.experiment.tracking
    version = client.get_model_version_by_alias(tracked.registered_model, tracked.alias)
    assert version.tags["sweep.digest"] == spec.digest
    assert version.tags["source.run_id"] == best.info.run_id
    assert version.tags["sweep.checkpoint_step"] == str(best_step)
    for child in children:  # keep_checkpoints 1: Train kept the best evaluated one and the latest (step 20)
        evals = {int(m.step): m.value for m in client.get_metric_history(child.info.run_id, metric)}
        kept = kept_checkpoint_steps(spec, child.data.tags["sweep.trial"])
        assert kept == {min(sorted(evals, reverse=True), key=evals.__getitem__), 20}, (kept, evals)
    assert version.tags["data.digest"] and version.current_stage == "None"

    out = tmp_path / "grid.png"
    model_uri = f"models:/{tracked.registered_model}@{tracked.alias}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.generate",
            "--model",
            model_uri,
            "--steps",
            "4",
            "--num",
            "8",
            "--labels",
            "3",
            "7",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    image = Image.open(out)
    side = 2 * (3 * 34 + 2)  # 8 images of 32 px, 3 per row, pad 2; pixels doubled for small images
    assert image.mode == "L" and image.size == (side, side)


@pytest.fixture(scope="module")
def evaluate_sweep(smoke_sweep: SweepSpec, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small inference-time sweep (kind: evaluate) on the smoke sweep's registered model; its name."""
    tracked = smoke_sweep.experiment.tracking
    tmp = tmp_path_factory.mktemp("steps")
    sweep = tmp / "steps.yaml"
    sweep.write_text(
        f"name: steps-test\nkind: evaluate\nbase: {REPO / 'sweeps' / 'base' / 'mnist.yaml'}\n"
        f"evaluate: {{model: 'models:/{tracked.registered_model}@{tracked.alias}', num_images: 32}}\n"
        "search:\n  sampling.steps: {grid: [1, 2]}\n  sampling.cfg: {grid: [1.0, 1.5]}\n"
        "  sampling.schedule: {grid: [fixed, decay]}\n"
    )
    # The classifier's reference statistics are cached under the test's tmp dir, not in ~/.cache.
    env = {**os.environ, "SPHERE_EVAL_CACHE": str(tmp / "eval-cache")}
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", str(sweep)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "8 settings, 6 with distinct samples" in result.stdout  # T = 1 has no schedule
    return "steps-test"


def test_evaluate_sweep_scores_settings_under_the_models_training_run(
    smoke_sweep: SweepSpec, evaluate_sweep: str
) -> None:
    from mlflow import MlflowClient

    tracked = smoke_sweep.experiment.tracking
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    version = client.get_model_version_by_alias(tracked.registered_model, tracked.alias)
    source = client.get_run(version.tags["source.run_id"])  # the trial that trained the model
    runs = client.search_runs(
        [source.info.experiment_id], filter_string=f"tags.`sweep.name` = '{evaluate_sweep}'"
    )
    (parent,) = runs
    assert parent.data.tags["mlflow.parentRunId"] == source.info.run_id
    assert parent.data.tags["model.version"] == version.version and parent.info.status == "FINISHED"
    assert {"proxy/recon_fd_clf", "proxy/recon_fd_clf_floor"} <= set(parent.data.metrics)  # once per model
    assert parent.data.tags["fingerprint.proxy/recon_fd_clf"]
    children = client.search_runs(
        [source.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    settings = {
        (c.data.params["sampling.steps"], c.data.params["sampling.cfg"], c.data.params["sampling.schedule"])
        for c in children
    }
    assert settings == {
        ("1", "1.0", "fixed"),
        ("1", "1.5", "fixed"),
        *(("2", cfg, schedule) for cfg in ("1.0", "1.5") for schedule in ("fixed", "decay")),
    }
    for child in children:  # n = 32 < the 1,000 reference images: proxy numbers with their floor beside
        assert {
            "proxy/fd_clf",
            "proxy/fd_clf_floor",
            "proxy/recall_clf",
            "network_passes",
            "images_per_s",
        } <= set(child.data.metrics)
        assert child.data.tags["fingerprint.proxy/fd_clf"]
        assert len(client.list_artifacts(child.info.run_id, "samples")) == 1
    passes = {
        (c.data.params["sampling.steps"], c.data.params["sampling.cfg"]): c.data.metrics["network_passes"]
        for c in children
    }
    assert passes == {("1", "1.0"): 1, ("1", "1.5"): 2, ("2", "1.0"): 3, ("2", "1.5"): 6}


def _rest(path: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST `body` to) the tracking server's REST API, as the MLflow UI does."""
    url = f"{os.environ['MLFLOW_TRACKING_URI'].rstrip('/')}/api/2.0/mlflow/{path}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _artifacts(run_id: str) -> set[str]:
    return {f["path"] for f in _rest(f"artifacts/list?run_id={run_id}").get("files", [])}


def _runs(experiment_id: str, filter_string: str) -> list[dict[str, Any]]:
    found = _rest(
        "runs/search", {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 100}
    )
    return list(found.get("runs", []))


def _metric_keys(run: dict[str, Any]) -> set[str]:
    return {m["key"] for m in run["data"].get("metrics", [])}


def test_the_ui_shows_pareto_summaries_and_comparable_children(
    smoke_sweep: SweepSpec, evaluate_sweep: str
) -> None:
    """Through the REST API the UI reads: each sweep's parent run holds its summary (and Pareto) artifacts,
    and its child runs carry the same metric keys, so they line up side by side in the compare view."""
    name = urllib.parse.quote(smoke_sweep.experiment.tracking.experiment)
    experiment_id = _rest(f"experiments/get-by-name?experiment_name={name}")["experiment"]["experiment_id"]

    (evaluation,) = _runs(experiment_id, f"tags.`sweep.name` = '{evaluate_sweep}'")
    assert _artifacts(evaluation["info"]["run_id"]) >= {
        "summary.md", "summary.csv", "pareto.md", "pareto.csv", "pareto.png", "fd_vs_steps.png",
    }  # fmt: skip
    settings = _runs(experiment_id, f"tags.`mlflow.parentRunId` = '{evaluation['info']['run_id']}'")
    assert len(settings) == 6 and len({frozenset(_metric_keys(r)) for r in settings}) == 1

    (parent,) = _runs(experiment_id, f"tags.`sweep.digest` = '{smoke_sweep.digest}'")
    trials = _runs(experiment_id, f"tags.`mlflow.parentRunId` = '{parent['info']['run_id']}'")
    assert len(trials) == 2 and _metric_keys(trials[0]) == _metric_keys(trials[1])
    expected = {"summary.md", "summary.csv"}
    if "fd_clf_1step" in _metric_keys(trials[0]) and "train_images" in _metric_keys(trials[0]):
        expected |= {f"pareto_fd_clf_1step.{ext}" for ext in ("md", "csv", "png")}  # FD vs training compute
    assert _artifacts(parent["info"]["run_id"]) >= expected


def test_the_trials_process_groups_listen_on_loopback_only(
    smoke_sweep: SweepSpec, listeners_during_smoke_sweep: set[Listener]
) -> None:
    """The smoke trials' two DDP workers each hold torch.distributed listeners (the TCPStore on rank 0, Gloo's
    pairs): on a 127.0.0.1 cluster none may listen beyond loopback (torch's store binds `*` by default)."""
    assert smoke_sweep.experiment.scaling.workers_per_trial == 2
    workers = {item for item in listeners_during_smoke_sweep if "ray::RayTrainWo" in item.programs}
    assert len(workers) >= 4, listeners_during_smoke_sweep  # the scan saw the trials' workers: it can fail
    exposed = {item for item in listeners_during_smoke_sweep if item.address not in LOOPBACK_LISTEN_ADDRESSES}
    assert exposed == set()


def test_no_secret_reaches_a_log_job_or_mlflow_record(
    smoke_sweep: SweepSpec, evaluate_sweep: str, jobs: Jobs
) -> None:
    """The test cluster's drawn S3 secret and Ray token are the canaries: after both sweeps neither may be in
    any file of Ray's session (logs, runtime-env records), in any job's details or logs, or anywhere MLflow
    stored anything (its database and every object in the bucket: artifacts, checkpoints, Tune state). Both
    sweeps also leave the state dir and Ray's temp dir private."""
    import boto3

    cluster = jobs.cluster
    canaries = {
        "S3 secret": os.environ["AWS_SECRET_ACCESS_KEY"].encode(),
        "Ray token": cluster.ray_token.encode(),
    }
    ray_files = [p for p in Path(cluster.settings["RAY_TEMP_DIR"]).rglob("*") if p.is_file()]
    assert len(ray_files) > 50 and any(b"runtime_env" in _read(p) for p in ray_files)  # the scan sees logs
    details = jobs.client.list_jobs()
    assert details  # the smoke sweep's job at least (the evaluate sweep runs as a plain driver)
    s3 = boto3.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="sphere")
            for o in page.get("Contents", [])]  # fmt: skip
    assert any(k.startswith("mlflow-artifacts/") for k in keys) and any(
        k.startswith("ray-results/") for k in keys
    )
    found: list[str] = []

    def scan(place: str, data: bytes) -> None:
        found.extend(f"{name} in {place}" for name, canary in canaries.items() if canary in data)

    for path in ray_files:
        scan(str(path), _read(path))
    for job in details:
        scan(f"job {job.submission_id}", job.json().encode())
        scan(f"job logs {job.submission_id}", jobs.logs(job.submission_id).encode())
    scan("mlflow.db", (cluster.state_dir / "mlflow.db").read_bytes())
    for key in keys:
        scan(f"s3://sphere/{key}", s3.get_object(Bucket="sphere", Key=key)["Body"].read())
    assert found == []
    assert cluster.not_private() == []


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # a socket or a file Ray removed meanwhile
        return b""
