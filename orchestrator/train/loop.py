"""The framework-free training loop: cadence only (log every N, evaluate every M, checkpoint every K).

It imports neither Ray nor MLflow. The worker hands it a step function (one sphere_core train step on a
batch), a batch iterator, an evaluation, and two small protocols:
- Reporter: where metrics, sample grids and evaluations go (MLflow on rank 0, nothing elsewhere: only
  rank 0 samples and evaluates);
- Checkpointer: Ray's contract, called on every rank at the same steps (rank 0 writes, all report).
Every log line also carries where the worker's wall time went so far (metric_names.LOOP_PHASES); the final
totals follow the last checkpoint. Every eval and checkpoint step is also a log step. A checkpoint carries
that window's metrics plus the latest eval's and its `eval_step` (carried forward from an earlier eval step
when it is not one), so Tune sees one result per checkpoint; the final step is always logged, evaluated and
checkpointed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from orchestrator.config import metric_names
from orchestrator.config.schema import RunConfig

if TYPE_CHECKING:
    from orchestrator.tracking.sinks import Evaluation

StepFn = Callable[[torch.Tensor, torch.Tensor], Mapping[str, float]]  # (images, labels) -> metrics
SampleFn = Callable[[], Mapping[str, torch.Tensor]]  # name -> images [B, C, H, W] in [0, 1]
EvalFn = Callable[[], "Evaluation"]


class Reporter(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_images(self, render: SampleFn, step: int) -> None:
        """Calls `render` only if the grids are kept, so ranks that log nothing never sample."""
        ...

    def log_eval(self, evaluate: EvalFn, step: int) -> Mapping[str, float]:
        """Calls `evaluate` only if its results are kept; returns its metrics ({} where not kept)."""
        ...

    def flush(self, final: bool) -> None:
        """Called right after each checkpoint: what was logged up to it may now be sent for good."""
        ...


class Checkpointer(Protocol):
    def save(self, step: int, metrics: Mapping[str, float], carried: frozenset[str]) -> None:
        """`carried`: the keys of `metrics` that an earlier step's eval measured, not this checkpoint."""
        ...


@dataclass
class _Window:
    """Sums since the last log line. A metric is averaged over the steps that reported it: some start mid-run
    (the adversarial terms, from loss.adversarial_start_step)."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    data_wait_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def add(self, metrics: Mapping[str, float], batch_size: int, wait_s: float) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1
        self.steps += 1
        self.images += batch_size
        self.data_wait_s += wait_s

    def means(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        means = {key: total / self.counts[key] for key, total in self.sums.items()}
        return {**means, "images_per_s": self.images / elapsed, "data_wait_s": self.data_wait_s / self.steps}


@dataclass
class _Clock:
    """Cumulative seconds per loop phase since `started` (the worker's train function's start: setup is the
    time before the loop)."""

    started: float
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(metric_names.LOOP_PHASES, 0.0))

    def __post_init__(self) -> None:
        self.seconds["setup"] = time.perf_counter() - self.started

    @contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        since = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - since

    def totals(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        measured = sum(s for phase, s in self.seconds.items() if phase != "other")
        seconds = self.seconds | {"other": max(wall - measured, 0.0)}
        return {**{metric_names.phase_time(p): s for p, s in seconds.items()}, metric_names.LOOP_WALL: wall}


def run_loop(
    step_fn: StepFn,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    *,
    run: RunConfig,
    start_step: int,
    reporter: Reporter,
    checkpointer: Checkpointer,
    sample_fn: SampleFn,
    eval_fn: EvalFn,
    global_batch: int,
    skipped_samples: Callable[[], int] = lambda: 0,
    started: float | None = None,
) -> dict[str, float]:
    """Trains from `start_step` (steps already done) to `run.steps`; returns the last checkpoint's metrics.

    train_images = step * global_batch (every rank's images: the training-compute axis); images_per_s
    counts this worker's images and excludes evaluation time; data_wait_s is the mean time per step
    spent waiting on the iterator; skipped_samples is the stream's running count of undecodable samples;
    `started` (time.perf_counter) is when the worker began, so the time before the loop counts as setup.
    """
    clock = _Clock(time.perf_counter() if started is None else started)
    window, latest, evaluated = _Window(), {"step": float(start_step)}, {}
    step = start_step
    for step in range(start_step + 1, run.steps + 1):
        waiting_since = time.perf_counter()
        images, labels = next(batches)
        wait_s = time.perf_counter() - waiting_since  # before the step runs: only the data's share
        clock.seconds["data"] += wait_s
        with clock.timing("step"):
            metrics = step_fn(images, labels)
        window.add(metrics, images.shape[0], wait_s)
        last = step == run.steps
        evaluating = step % run.eval_every == 0 or last
        checkpoint = step % run.checkpoint_every == 0 or last
        logging = step % run.log_every == 0 or evaluating or checkpoint
        if logging:  # a checkpoint always carries this step's window; an eval its train_images
            with clock.timing("report"):
                latest = {
                    **window.means(),
                    "step": float(step),
                    "train_images": float(step * global_batch),
                    "skipped_samples": float(skipped_samples()),
                    **clock.totals(),
                }
                reporter.log(latest, step)
        if evaluating:
            with clock.timing("eval"):
                reporter.log_images(sample_fn, step)
                evaluated = dict(reporter.log_eval(eval_fn, step))
            if evaluated:  # a checkpoint after a non-eval step carries this: pair the metrics with it
                evaluated[metric_names.EVAL_STEP] = float(step)
        if logging:
            window = _Window()  # restarted after the eval, whose time is not training throughput
        if checkpoint:
            latest = {**latest, **evaluated}
            carried = frozenset() if evaluating else frozenset(evaluated)
            with clock.timing("checkpoint"):
                checkpointer.save(step, latest, carried)
            with clock.timing("report"):
                reporter.flush(final=False)
    # The last step's eval and checkpoint came after its log line: the totals follow them, in the final flush
    # (which keeps retrying through an MLflow outage).
    reporter.log(clock.totals(), step)
    reporter.flush(final=True)
    return latest
