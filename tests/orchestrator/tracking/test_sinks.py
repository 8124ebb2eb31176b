"""Metric sinks on a throwaway MLflow store: rank != 0 logs nothing, rank 0 logs everything, an outage loses
nothing and a resumed trial sends each step once."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

from orchestrator.tracking import sinks


def render() -> dict[str, torch.Tensor]:
    return {"one_step": torch.rand(5, 1, 8, 8), "four_step": torch.rand(5, 3, 8, 8)}


def test_rank_nonzero_logs_nothing_and_never_renders(client: MlflowClient, run_id: str) -> None:
    sink = sinks.make_sink(1, "http://unused:1", run_id)
    assert isinstance(sink, sinks.NullSink)

    def must_not_render() -> dict[str, torch.Tensor]:
        raise AssertionError("a rank that keeps no images rendered them")

    sink.log({"loss": 1.0}, step=1)
    sink.log_images(must_not_render, step=1)
    run = client.get_run(run_id)
    assert run.data.metrics == {} and client.list_artifacts(run_id) == []


def test_rank_zero_logs_metrics_and_sample_grids(client: MlflowClient, run_id: str) -> None:
    sink = sinks.MLflowSink(client, run_id)
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


def test_rank_zero_logs_an_evaluation_and_returns_its_metrics(client: MlflowClient, run_id: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    evaluation = sinks.Evaluation(
        {"fd_clf_1step": 12.5, "eval_s": 3.0},
        {"diagnostics/curve.png": figure},
        {"fingerprint.fd_clf_1step": "ab"},
    )
    sink = sinks.MLflowSink(client, run_id)
    returned = sink.log_eval(lambda: evaluation, step=20)
    sink.flush(final=True)
    assert returned == {"fd_clf_1step": 12.5, "eval_s": 3.0}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "fd_clf_1step")] == [(20, 12.5)]
    assert client.get_run(run_id).data.tags["fingerprint.fd_clf_1step"] == "ab"
    assert [f.path for f in client.list_artifacts(run_id, "diagnostics")] == ["diagnostics/curve.png"]


def test_rank_nonzero_never_evaluates() -> None:
    def must_not_evaluate() -> sinks.Evaluation:
        raise AssertionError("a rank that keeps nothing evaluated")

    assert sinks.NullSink().log_eval(must_not_evaluate, step=1) == {}


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
    monkeypatch.setattr(sinks.time, "sleep", lambda s: None)
    flaky = FlakyClient(client, failures=1)
    sink = sinks.MLflowSink(flaky, run_id)  # type: ignore[arg-type]
    sink.log({"loss": 2.0}, step=5)
    sink.flush(final=False)  # the server is down: kept, training goes on
    assert "1 metric values kept for the next flush" in capsys.readouterr().out
    sink.log({"loss": 1.5}, step=10)
    flaky.failures = 3
    sink.flush(final=True)  # the last flush waits for the server to come back
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(5, 2.0), (10, 1.5)]
    assert sink.pending == []


def test_metrics_replayed_from_a_checkpoint_are_kept_once(client: MlflowClient, run_id: str) -> None:
    sink = sinks.MLflowSink(client, run_id)
    sink.log({"loss": 2.0}, step=5)
    sink.log({"loss": 1.5}, step=10)
    saved = sink.unflushed()  # what the checkpoint at step 10 carries
    sink.flush(final=False)  # flushed, then the worker dies: the resumed one replays the checkpoint's
    resumed = sinks.MLflowSink(client, run_id)
    resumed.restore(saved)
    resumed.log({"loss": 1.0}, step=15)
    resumed.flush(final=True)
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]
    assert history == [(5, 2.0), (10, 1.5), (15, 1.0)]
    never_flushed = sinks.MLflowSink(client, run_id)  # killed between checkpoint and flush: nothing lost
    never_flushed.log({"loss": 0.5}, step=20)
    sinks.MLflowSink(client, run_id).restore(never_flushed.unflushed())
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [5, 10, 15, 20]


def test_steps_an_earlier_attempt_sent_are_not_sent_again(client: MlflowClient, run_id: str) -> None:
    """The worker died after sending step 15 but before Ray registered its checkpoint: the restart replays
    what checkpoint 5 held, retrains 10 and 15 over two flushes, and MLflow keeps the first attempt's."""
    first = sinks.MLflowSink(client, run_id)
    for step in (5, 10, 15):
        first.log({"loss": 1.0 / step, "step": float(step)}, step=step)
    first.flush(final=False)
    again = sinks.MLflowSink(client, run_id)
    again.restore([])  # checkpoint 5 held nothing unsent: this first flush has nothing to send
    for step in (10, 15, 20):
        again.log({"loss": 2.0 / step, "step": float(step)}, step=step)
        again.flush(final=step == 20)
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]
    assert history == [(5, 0.2), (10, 0.1), (15, 1.0 / 15), (20, 0.1)]
