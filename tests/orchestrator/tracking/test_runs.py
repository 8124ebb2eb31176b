"""Sinks, runs and inputs on a throwaway MLflow store: rank != 0 logs nothing, rank 0 logs everything."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient

from orchestrator.config.loader import load_sweep
from orchestrator.config.schema import ExperimentConfig, TrackingConfig
from orchestrator.config.search_space import apply_trial_params
from orchestrator.config.sweep_spec import SearchDist
from orchestrator.tracking import runs
from sphere_core.config import ConfigError

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowClient]:
    root = tmp_path_factory.mktemp("mlflow")
    yield MlflowClient(f"sqlite:///{root}/mlflow.db")


@pytest.fixture
def run_id(client: MlflowClient, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    exp = client.create_experiment(request.node.name, artifact_location=str(tmp_path / "artifacts"))
    return client.create_run(exp).info.run_id


def render() -> dict[str, torch.Tensor]:
    return {"one_step": torch.rand(5, 1, 8, 8), "four_step": torch.rand(5, 3, 8, 8)}


def test_rank_nonzero_logs_nothing_and_never_renders(client: MlflowClient, run_id: str) -> None:
    sink = runs.make_sink(1, "http://unused:1", run_id)
    assert isinstance(sink, runs.NullSink)

    def must_not_render() -> dict[str, torch.Tensor]:
        raise AssertionError("a rank that keeps no images rendered them")

    sink.log({"loss": 1.0}, step=1)
    sink.log_images(must_not_render, step=1)
    run = client.get_run(run_id)
    assert run.data.metrics == {} and client.list_artifacts(run_id) == []


def test_rank_zero_logs_metrics_and_sample_grids(client: MlflowClient, run_id: str) -> None:
    sink = runs.MLflowSink(client, run_id)
    sink.log({"loss": 2.0, "lr": 1e-3, "nan_is_dropped": float("nan")}, step=5)
    sink.log({"loss": 1.5, "lr": 1e-3}, step=10)
    sink.log_images(render, step=10)
    assert client.get_metric_history(run_id, "loss") == []  # held until the checkpoint's flush
    sink.flush(final=False)
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(5, 2.0), (10, 1.5)]
    assert "nan_is_dropped" not in client.get_run(run_id).data.metrics
    pngs = sorted(f.path for f in client.list_artifacts(run_id, "samples"))
    assert pngs == ["samples/four_step_step000010.png", "samples/one_step_step000010.png"]


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


def test_rank_zero_logs_an_evaluation_and_returns_its_metrics(client: MlflowClient, run_id: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    evaluation = runs.Evaluation(
        {"fd_clf_1step": 12.5, "eval_s": 3.0},
        {"diagnostics/curve.png": figure},
        {"fingerprint.fd_clf_1step": "ab"},
    )
    sink = runs.MLflowSink(client, run_id)
    returned = sink.log_eval(lambda: evaluation, step=20)
    sink.flush(final=True)
    assert returned == {"fd_clf_1step": 12.5, "eval_s": 3.0}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "fd_clf_1step")] == [(20, 12.5)]
    assert client.get_run(run_id).data.tags["fingerprint.fd_clf_1step"] == "ab"
    assert [f.path for f in client.list_artifacts(run_id, "diagnostics")] == ["diagnostics/curve.png"]


def test_rank_nonzero_never_evaluates() -> None:
    def must_not_evaluate() -> runs.Evaluation:
        raise AssertionError("a rank that keeps nothing evaluated")

    assert runs.NullSink().log_eval(must_not_evaluate, step=1) == {}


class FlakyClient:
    """An MlflowClient whose log_batch fails `failures` times, as while the server is down."""

    def __init__(self, client: MlflowClient, failures: int) -> None:
        self.client, self.failures = client, failures

    def get_run(self, run_id: str) -> object:
        return self.client.get_run(run_id)

    def log_batch(self, run_id: str, **kwargs: object) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("MLflow is down")
        self.client.log_batch(run_id, **kwargs)  # type: ignore[arg-type]


def test_an_mlflow_outage_loses_no_metric(
    client: MlflowClient, run_id: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runs.time, "sleep", lambda s: None)
    flaky = FlakyClient(client, failures=1)
    sink = runs.MLflowSink(flaky, run_id)  # type: ignore[arg-type]
    sink.log({"loss": 2.0}, step=5)
    sink.flush(final=False)  # the server is down: kept, training goes on
    assert "1 metric values kept for the next flush" in capsys.readouterr().out
    sink.log({"loss": 1.5}, step=10)
    flaky.failures = 3
    sink.flush(final=True)  # the last flush waits for the server to come back
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(5, 2.0), (10, 1.5)]
    assert sink.pending == []


def test_metrics_replayed_from_a_checkpoint_are_kept_once(client: MlflowClient, run_id: str) -> None:
    sink = runs.MLflowSink(client, run_id)
    sink.log({"loss": 2.0}, step=5)
    sink.log({"loss": 1.5}, step=10)
    saved = sink.unflushed()  # what the checkpoint at step 10 carries
    sink.flush(final=False)  # flushed, then the worker dies: the resumed one replays the checkpoint's
    resumed = runs.MLflowSink(client, run_id)
    resumed.restore(saved)
    resumed.log({"loss": 1.0}, step=15)
    resumed.flush(final=True)
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]
    assert history == [(5, 2.0), (10, 1.5), (15, 1.0)]
    never_flushed = runs.MLflowSink(client, run_id)  # killed between checkpoint and flush: nothing lost
    never_flushed.log({"loss": 0.5}, step=20)
    runs.MLflowSink(client, run_id).restore(never_flushed.unflushed())
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [5, 10, 15, 20]


def test_steps_an_earlier_attempt_sent_are_not_sent_again(client: MlflowClient, run_id: str) -> None:
    """The worker died after sending step 15 but before Ray registered its checkpoint: the restart replays
    what checkpoint 5 held, retrains 10 and 15 over two flushes, and MLflow keeps the first attempt's."""
    first = runs.MLflowSink(client, run_id)
    for step in (5, 10, 15):
        first.log({"loss": 1.0 / step, "step": float(step)}, step=step)
    first.flush(final=False)
    again = runs.MLflowSink(client, run_id)
    again.restore([])  # checkpoint 5 held nothing unsent: this first flush has nothing to send
    for step in (10, 15, 20):
        again.log({"loss": 2.0 / step, "step": float(step)}, step=step)
        again.flush(final=step == 20)
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]
    assert history == [(5, 0.2), (10, 0.1), (15, 1.0 / 15), (20, 0.1)]


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
