"""@slow, end to end on the real local cluster: the shipped smoke sweep as a Ray job -> MLflow runs,
metrics, sample grids and a registered alias -> `orchestrator.generate` from that alias writes a PNG."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from ray.job_submission import JobStatus

from orchestrator.config.loader import load_sweep
from tests.integration.conftest import REPO, Jobs

pytestmark = pytest.mark.slow
SMOKE = REPO / "sweeps" / "smoke.yaml"


def test_smoke_sweep_tracks_registers_and_generates(jobs: Jobs, mnist_shards: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    spec = load_sweep(SMOKE)
    job_id = jobs.submit("sweeps/smoke.yaml")
    status = jobs.wait(job_id, timeout_s=420)
    logs = jobs.logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-6000:]

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
