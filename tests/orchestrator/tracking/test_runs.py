"""Runs and their inputs on a throwaway MLflow store: found again by their tags, config params, dataset
inputs, the tracking server check, the best trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from orchestrator.config.loader import load_sweep
from orchestrator.config.schema import ExperimentConfig, TrackingConfig
from orchestrator.config.search_space import apply_trial_params
from orchestrator.config.sweep_spec import SearchDist
from orchestrator.tracking import runs
from sphere_core.config import ConfigError

REPO = Path(__file__).resolve().parents[3]


def test_open_run_reuses_the_tagged_run(client: MlflowClient, tmp_path: Path) -> None:
    exp = runs.experiment_id(client, "reuse")
    assert runs.experiment_id(client, "reuse") == exp
    first, created = runs.open_run(client, exp, name="t0", tags={"a": "1"}, key={runs.TRIAL_TAG: "t0"})
    client.set_terminated(first, "FAILED")
    again, created_again = runs.open_run(client, exp, name="t0", tags={"a": "1"}, key={runs.TRIAL_TAG: "t0"})
    other, _ = runs.open_run(client, exp, name="t1", tags={}, key={runs.TRIAL_TAG: "t1"})
    assert created and not created_again and again == first and other != first
    assert client.get_run(first).info.status == "RUNNING"


def test_config_params_and_dataset_input(
    client: MlflowClient, run_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "MLFLOW_PARAMS_PER_BATCH", 10)
    cfg = ExperimentConfig(tracking=TrackingConfig(experiment="x"))
    runs.log_config(client, run_id, cfg, extra={"search.noise.alpha_max_deg": "grid [80.0]"})
    runs.log_dataset(
        client,
        run_id,
        url="s3://sphere/datasets/mnist/train",
        name="builtin:mnist/train",
        digest="abc123",
        profile={"num_samples": 10},
    )
    run = client.get_run(run_id)
    every_field = runs.flat_params(cfg.to_dict())
    assert run.data.params == every_field | {"search.noise.alpha_max_deg": "grid [80.0]"}
    assert run.data.params["noise.alpha_max_deg"] == "85.0" and len(every_field) > 5 * 10  # several batches
    assert run.inputs is not None
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == "abc123" and dataset_input.dataset.source_type == "s3"
    assert [(t.key, t.value) for t in dataset_input.tags] == [("mlflow.data.context", "training")]
    text = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path))).read_text()
    assert text.startswith("name: smoke") and "alpha_max_deg: 85.0" in text


def test_tracking_uri_preflight_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(
        ConfigError, match=r"tracking\.tracking_uri: unset and MLFLOW_TRACKING_URI is not exported"
    ):
        runs.resolve_tracking_uri(ExperimentConfig())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    with pytest.raises(ConfigError, match="is not a tracking server"):
        runs.resolve_tracking_uri(ExperimentConfig())
    closed = ExperimentConfig(tracking=TrackingConfig(tracking_uri="http://127.0.0.1:9"))
    with pytest.raises(ConfigError, match="does not answer /health"):
        runs.resolve_tracking_uri(closed, timeout_s=2)


def sample(dist: SearchDist) -> Any:
    """One value a trial could get: a grid's or choice's first, a range's lower end."""
    return (dist.grid or dist.choice or dist.uniform or dist.loguniform or [None])[0]


def test_trials_of_different_sweeps_share_every_config_param(client: MlflowClient, tmp_path: Path) -> None:
    """Each trial run carries its whole resolved config, so runs of the noise and the loss-weights sweeps
    compare field by field in the UI, the swept fields included."""
    trial_runs = {}
    for sweep in ("noise", "loss_weights"):
        spec = load_sweep(REPO / "sweeps" / f"{sweep}.yaml")
        params = {path: sample(dist) for path, dist in spec.search.items()}
        exp = client.create_experiment(f"shared-{sweep}", artifact_location=str(tmp_path / sweep))
        parent = client.create_run(exp).info.run_id
        trial_runs[sweep] = runs.open_trial_run(
            client,
            exp,
            parent_run_id=parent,
            name=f"{sweep}-t000",
            cfg=apply_trial_params(spec.experiment, params),
            dataset={"url": "s3://sphere/d", "name": "builtin:mnist/train", "digest": "d", "profile": {}},
        )
    noise, weights = (client.get_run(trial_runs[s]).data.params for s in ("noise", "loss_weights"))
    assert set(noise) == set(weights) and len(noise) > 50
    assert noise["noise.alpha_max_deg"] in {"70.0", "75.0", "80.0", "85.0"}
    assert weights["loss.recon_dist"] in {"0.5", "1.0", "2.0"} and noise["loss.recon_dist"] == "1.0"


def test_parent_run_carries_the_best_trial_and_links_it(client: MlflowClient, run_id: str) -> None:
    exp = client.get_run(run_id).info.experiment_id
    trial, _ = runs.open_run(client, exp, name="t3", tags={}, key={runs.TRIAL_TAG: "sweep-t003-abc"})
    runs.log_best_trial(client, exp, run_id, "sweep-t003-abc", "fd_clf_1step", 142.5)
    parent = client.get_run(run_id).data
    assert parent.metrics == {"best.fd_clf_1step": 142.5} and parent.tags["best.trial"] == "sweep-t003-abc"
    assert f"[sweep-t003-abc](#/experiments/{exp}/runs/{trial})" in parent.tags["mlflow.note.content"]
