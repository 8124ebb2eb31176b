"""@slow, end to end on the real local cluster: the shipped smoke sweep as a Ray job -> MLflow runs,
metrics, sample grids and a registered alias -> `orchestrator.generate` from that alias writes a PNG, and
an inference-time sweep (kind: evaluate) scores settings of the frozen registered model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from ray.job_submission import JobStatus

from orchestrator.config.loader import load_sweep
from orchestrator.config.sweep_spec import SweepSpec
from tests.integration.conftest import REPO, Jobs

pytestmark = pytest.mark.slow
SMOKE = REPO / "sweeps" / "smoke.yaml"


@pytest.fixture(scope="module")
def smoke_sweep(jobs: Jobs, mnist_shards: str) -> SweepSpec:
    """The shipped smoke sweep, run once as a Ray job (it registers the model the other tests sample)."""
    job_id = jobs.submit("sweeps/smoke.yaml")
    status = jobs.wait(job_id, timeout_s=420)
    assert status == JobStatus.SUCCEEDED, jobs.logs(job_id)[-6000:]
    return load_sweep(SMOKE)


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
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"loss", "recon_dist", "lr", "images_per_s", "data_wait_s", "skipped_samples"} <= set(
            child.data.metrics
        )
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "loss")]
        assert steps == [5, 10, 15, 20]  # log_every 5 over 20 steps, each step logged once (rank 0 only)
        pngs = {a.path for a in client.list_artifacts(child.info.run_id, "samples")}
        assert pngs == {"samples/samples_1step_step000020.png", "samples/samples_4step_step000020.png"}
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
    assert version.tags["source.run_id"] in {c.info.run_id for c in children}
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
    assert image.mode == "L" and image.size == (3 * 34 + 2, 3 * 34 + 2)  # 8 images of 32 px, 3 per row, pad 2


def test_evaluate_sweep_scores_settings_of_the_frozen_model(smoke_sweep: SweepSpec, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    tracked = smoke_sweep.experiment.tracking
    sweep = tmp_path / "steps.yaml"
    sweep.write_text(
        f"name: steps-test\nkind: evaluate\nbase: {REPO / 'sweeps' / 'base' / 'mnist.yaml'}\n"
        "overrides: {tracking.experiment: sphere-steps-test}\n"
        f"evaluate: {{model: 'models:/{tracked.registered_model}@{tracked.alias}', num_images: 32}}\n"
        "search:\n  sampling.steps: {grid: [1, 2]}\n  sampling.cfg: {grid: [1.0, 1.5]}\n"
    )
    # The classifier's reference statistics are cached under the test's tmp dir, not in ~/.cache.
    env = {**os.environ, "SPHERE_EVAL_CACHE": str(tmp_path / "eval-cache")}
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", str(sweep)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("sphere-steps-test")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    settings = {(c.data.params["sampling.steps"], c.data.params["sampling.cfg"]) for c in children}
    assert settings == {("1", "1.0"), ("1", "1.5"), ("2", "1.0"), ("2", "1.5")}
    for child in children:  # n = 32 < the 1,000 reference images: proxy numbers with their floor beside
        assert {"proxy/fd_clf", "proxy/fd_clf_floor", "proxy/recall_clf", "seconds_per_image"} <= set(
            child.data.metrics
        )
        assert len(client.list_artifacts(child.info.run_id, "samples")) == 1
    assert (
        parent.data.tags["model.version"]
        == client.get_model_version_by_alias(tracked.registered_model, tracked.alias).version
    )
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"summary.csv", "summary.md"}
