"""What the training loop reports through: a metric sink per rank and the Evaluation it logs.

Rank gating happens once, in `make_sink`: rank 0 gets an MLflowSink on the trial's run (created by the
trial driver, so its id is known before the workers start); every other rank gets a NullSink. Metrics are
held until the loop flushes them right after each checkpoint, so a resumed trial never logs a step twice.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from orchestrator.tracking.images import grid_image


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation leaves on a run: metrics at its step, figures, tags on how it was measured."""

    metrics: dict[str, float]
    figures: dict[str, Figure] = field(default_factory=dict)  # artifact path -> figure
    tags: dict[str, str] = field(default_factory=dict)  # e.g. fingerprint.<metric>: overwritten each time


class MetricSink(Protocol):
    """The loop's Reporter: metrics as plain dicts; sample grids rendered only by a sink that keeps them."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_images(self, render: Callable[[], Mapping[str, torch.Tensor]], step: int) -> None: ...

    def log_eval(self, evaluate: Callable[[], Evaluation], step: int) -> dict[str, float]: ...

    def flush(self, final: bool) -> None: ...

    def tag(self, tags: Mapping[str, str]) -> None: ...

    def unflushed(self) -> list[dict[str, Any]]: ...

    def restore(self, unflushed: list[dict[str, Any]]) -> None: ...


class NullSink:
    """What ranks other than 0 log to: nothing."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_images(self, render: Callable[[], Mapping[str, torch.Tensor]], step: int) -> None:
        pass  # never renders: ranks other than 0 spend no time sampling

    def log_eval(self, evaluate: Callable[[], Evaluation], step: int) -> dict[str, float]:
        return {}  # never evaluates: Ray Train hands Tune rank 0's report, which carries the metrics

    def flush(self, final: bool) -> None:
        pass

    def tag(self, tags: Mapping[str, str]) -> None:
        pass

    def unflushed(self) -> list[dict[str, Any]]:
        return []

    def restore(self, unflushed: list[dict[str, Any]]) -> None:
        pass


class MLflowSink:
    """Logs into an existing run. Metrics are held until the loop flushes them, right after each checkpoint:
    - a resumed run restarts from its last checkpoint: metrics held at that checkpoint travel in it and are
      replayed, and steps an earlier attempt already sent are not sent again, so MLflow keeps exactly one
      value per step;
    - an MLflow outage costs no metric: a flush that fails keeps them for the next one, and the final flush
      retries for up to FINAL_FLUSH_TIMEOUT_S.
    Sample grids, figures and tags go at once; one that cannot be sent is dropped with a warning rather than
    stopping training. The cost: metrics appear in the UI at checkpoint cadence (run.checkpoint_every)."""

    FINAL_FLUSH_TIMEOUT_S = 600.0
    BATCH = 1000  # MLflow's limit of metrics per log_batch

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self.pending: list[Any] = []  # mlflow.entities.Metric, oldest first
        # The last step an earlier attempt of this run sent, read at the first flush. Ray registers a
        # checkpoint a moment after the worker reports it, so a worker killed in between restarts from an
        # older one and trains steps again whose metrics were already sent: dropped, the first are kept.
        self.sent_through: float | None = None

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.pending += [Metric(key, float(v), now, step) for key, v in metrics.items() if math.isfinite(v)]

    def flush(self, final: bool) -> None:
        deadline = time.monotonic() + (self.FINAL_FLUSH_TIMEOUT_S if final else 0.0)
        while self.pending:
            try:
                if self.sent_through is None:
                    self.sent_through = self.client.get_run(self.run_id).data.metrics.get("step", -1.0)
                # Every flush: a resume from checkpoint 10 after step 20 was sent retrains 15 and 20 later.
                self.pending = [m for m in self.pending if m.step > self.sent_through]
                if not self.pending:
                    return
                self.client.log_batch(self.run_id, metrics=self.pending[: self.BATCH])
            except Exception as exc:
                if time.monotonic() >= deadline:
                    if final:
                        raise
                    print(
                        f"MLflow unreachable, {len(self.pending)} metric values kept for the next flush "
                        f"({type(exc).__name__}: {exc})"
                    )
                    return
                time.sleep(5.0)
                continue
            del self.pending[: self.BATCH]

    def unflushed(self) -> list[dict[str, Any]]:
        """The held metrics as plain records (for a checkpoint), timestamps included: replayed, they are
        exact repeats, which MLflow's store drops."""
        return [
            {"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step} for m in self.pending
        ]

    def restore(self, unflushed: list[dict[str, Any]]) -> None:
        self.pending = [Metric(**record) for record in unflushed] + self.pending
        self.flush(final=False)

    def tag(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def _send(self, what: str, send: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        try:
            send(*args, **kwargs)
        except Exception as exc:
            print(f"MLflow unreachable, {what} dropped: {type(exc).__name__}: {exc}")

    def log_images(self, render: Callable[[], Mapping[str, torch.Tensor]], step: int) -> None:
        """render() -> name -> images [B, C, H, W] in [0, 1], written as samples/<name>_step<step>.png."""
        with tempfile.TemporaryDirectory() as tmp:
            for name, images in render().items():
                path = Path(tmp) / f"{name}_step{step:06d}.png"
                grid_image(images).save(path)
            self._send(f"sample grids of step {step}", self.client.log_artifacts, self.run_id, tmp, "samples")

    def log_eval(self, evaluate: Callable[[], Evaluation], step: int) -> dict[str, float]:
        """Runs `evaluate`, logs its metrics at `step`, its tags and figures (PNG); returns the metrics."""
        result = evaluate()
        self.log(result.metrics, step)
        tags = [RunTag(k, v) for k, v in result.tags.items()]
        self._send(f"eval tags of step {step}", self.client.log_batch, self.run_id, tags=tags)
        for path, figure in result.figures.items():
            self._send(f"{path} of step {step}", self.client.log_figure, self.run_id, figure, path)
        return dict(result.metrics)


def make_sink(rank: int, tracking_uri: str, run_id: str) -> MetricSink:
    if rank != 0:
        return NullSink()

    return MLflowSink(MlflowClient(tracking_uri), run_id)


# --- server, tags ---------------------------------------------------------------------------------
