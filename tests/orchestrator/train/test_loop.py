"""Cadence of the framework-free loop, driven with fake Reporter/Checkpointer (no Ray, no MLflow)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping

import pytest
import torch

from orchestrator.config import metric_names
from orchestrator.config.schema import RunConfig
from orchestrator.tracking.sinks import Evaluation, NullSink
from orchestrator.train.loop import EvalFn, SampleFn, StepFn, run_loop


class FakeReporter:
    def __init__(self, keeps_images: bool = True) -> None:
        self.logged: dict[int, dict[str, float]] = {}
        self.image_steps: list[int] = []
        self.evaluated: dict[int, dict[str, float]] = {}
        self.keeps_images = keeps_images
        self.flushes: list[tuple[int, bool]] = []  # (last logged step, final)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.logged.setdefault(step, {}).update(metrics)  # as MLflow keeps every key logged at a step

    def log_images(self, render: SampleFn, step: int) -> None:
        if self.keeps_images:
            grids = render()
            assert grids["one_step"].shape == (4, 1, 8, 8)
            self.image_steps.append(step)

    def log_eval(self, evaluate: EvalFn, step: int) -> dict[str, float]:
        if not self.keeps_images:
            return {}
        self.evaluated[step] = evaluate().metrics
        return self.evaluated[step]

    def flush(self, final: bool) -> None:
        self.flushes.append((max(self.logged), final))


class FakeCheckpointer:
    def __init__(self) -> None:
        self.saved: dict[int, dict[str, float]] = {}
        self.carried: dict[int, frozenset[str]] = {}

    def save(self, step: int, metrics: Mapping[str, float], carried: frozenset[str]) -> None:
        self.saved[step], self.carried[step] = dict(metrics), carried


class Counter:
    """A step function whose loss is the number of steps it has taken (1, 2, 3, ...)."""

    def __init__(self, start: int = 0) -> None:
        self.calls = start

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> Mapping[str, float]:
        self.calls += 1
        return {"loss": float(self.calls), "lr": 0.1}


def batches(batch_size: int = 4) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield torch.zeros(batch_size, 1, 8, 8), torch.zeros(batch_size, dtype=torch.long)


def sample() -> dict[str, torch.Tensor]:
    return {"one_step": torch.rand(4, 1, 8, 8)}


class FakeEval:
    """fd_clf_1step = 100 / (number of evals so far): each eval returns a new value."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Evaluation:
        self.calls += 1
        return Evaluation({"fd_clf_1step": 100.0 / self.calls, "eval_s": 0.5})


RUN = RunConfig(steps=10, log_every=3, eval_every=4, checkpoint_every=5)


def test_cadence_logs_samples_and_checkpoints_on_schedule() -> None:
    reporter, checkpointer, step_fn = FakeReporter(), FakeCheckpointer(), Counter()
    final = run_loop(
        step_fn,
        batches(),
        run=RUN,
        start_step=0,
        reporter=reporter,
        checkpointer=checkpointer,
        sample_fn=sample,
        eval_fn=FakeEval(),
        global_batch=8,
        skipped_samples=lambda: 7,
    )
    assert step_fn.calls == 10
    assert sorted(reporter.logged) == [3, 4, 5, 6, 8, 9, 10]  # every 3, each eval and checkpoint, the last
    assert reporter.image_steps == [4, 8, 10] and sorted(reporter.evaluated) == [4, 8, 10]
    assert sorted(checkpointer.saved) == [5, 10]
    # Right after each checkpoint; the final flush follows the last one, with the loop's time totals.
    assert reporter.flushes == [(5, False), (10, False), (10, True)]
    assert reporter.logged[3]["loss"] == 2.0  # mean of steps 1..3
    assert reporter.logged[4]["loss"] == 4.0  # the window restarts after each log
    # A checkpoint carries its step's window and the latest eval (step 4's, carried to step 5).
    assert checkpointer.saved[5] == {**reporter.logged[5], **reporter.evaluated[4], "eval_step": 4.0}
    assert checkpointer.saved[5]["fd_clf_1step"] == 100.0
    assert checkpointer.saved[10]["fd_clf_1step"] == 100.0 / 3  # the final step's own eval
    assert checkpointer.saved[10]["eval_step"] == 10.0
    assert "fd_clf_1step" in checkpointer.carried[5] and "loss" not in checkpointer.carried[5]
    assert checkpointer.carried[10] == frozenset()  # measured at the checkpoint's own step
    assert final == checkpointer.saved[10] and final["step"] == 10.0
    for step, metrics in reporter.logged.items():
        assert set(metric_names.LOOP) <= set(metrics) and metrics["skipped_samples"] == 7.0
        assert metrics["images_per_s"] > 0 and metrics["data_wait_s"] >= 0
        assert metrics["train_images"] == step * 8  # every rank's images: step x global batch


def test_resume_continues_from_the_checkpointed_step() -> None:
    reporter, checkpointer, step_fn = FakeReporter(), FakeCheckpointer(), Counter(start=5)
    run_loop(
        step_fn,
        batches(),
        run=RUN,
        start_step=5,
        reporter=reporter,
        checkpointer=checkpointer,
        sample_fn=sample,
        eval_fn=FakeEval(),
        global_batch=8,
    )
    assert step_fn.calls == 10  # steps 6..10 only
    assert sorted(reporter.logged) == [6, 8, 9, 10] and sorted(checkpointer.saved) == [10]
    assert reporter.logged[6]["loss"] == 6.0
    assert reporter.logged[6]["train_images"] == 48.0  # counted from step 0, not from the resume


def test_a_rank_that_logs_nothing_never_samples_nor_evaluates_but_checkpoints_in_step() -> None:
    calls = []

    def counting_sample() -> dict[str, torch.Tensor]:
        calls.append(1)
        return sample()

    evaluation, checkpointer = FakeEval(), FakeCheckpointer()
    run_loop(
        Counter(),
        batches(),
        run=RUN,
        start_step=0,
        reporter=NullSink(),
        checkpointer=checkpointer,
        sample_fn=counting_sample,
        eval_fn=evaluation,
        global_batch=8,
    )
    assert calls == [] and evaluation.calls == 0
    assert sorted(checkpointer.saved) == [5, 10]  # every rank reports at the same steps as rank 0
    assert "fd_clf_1step" not in checkpointer.saved[10]  # Ray Train hands Tune rank 0's metrics


def run_with_fakes(step_fn: StepFn, eval_fn: EvalFn, run: RunConfig, **kwargs: float) -> FakeReporter:
    """A fresh run of `run.steps` steps of batch 4 into fakes; returns what it reported."""
    reporter = FakeReporter()
    run_loop(
        step_fn,
        batches(),
        run=run,
        start_step=0,
        reporter=reporter,
        checkpointer=FakeCheckpointer(),
        sample_fn=sample,
        eval_fn=eval_fn,
        global_batch=4,
        **kwargs,  # type: ignore[arg-type]
    )
    return reporter


def test_images_per_s_excludes_the_eval() -> None:
    import time

    def slow_eval() -> Evaluation:
        time.sleep(0.2)
        return Evaluation({"eval_s": 0.2})

    reporter = run_with_fakes(
        Counter(), slow_eval, RunConfig(steps=4, log_every=2, eval_every=2, checkpoint_every=4)
    )
    assert reporter.logged[4]["images_per_s"] > 8 / 0.2  # 8 images, not slowed by step 2's 0.2 s eval


def test_the_loop_accounts_for_its_wall_time_phase_by_phase() -> None:
    import time

    def slow_step(images: torch.Tensor, labels: torch.Tensor) -> Mapping[str, float]:
        time.sleep(0.02)
        return {"loss": 1.0}

    def slow_eval() -> Evaluation:
        time.sleep(0.1)
        return Evaluation({"eval_s": 0.1})

    run = RunConfig(steps=4, log_every=2, eval_every=4, checkpoint_every=4)
    started = time.perf_counter() - 0.3  # as if the worker spent 0.3 s building its model
    reporter = run_with_fakes(slow_step, slow_eval, run, started=started)
    seconds = {
        phase: reporter.logged[4][metric_names.phase_time(phase)] for phase in metric_names.LOOP_PHASES
    }
    assert seconds["setup"] >= 0.3 and seconds["step"] >= 0.08 and seconds["eval"] >= 0.1
    assert sum(seconds.values()) == pytest.approx(reporter.logged[4][metric_names.LOOP_WALL])
    assert reporter.logged[2][metric_names.phase_time("step")] < seconds["step"]  # cumulative, live
    assert reporter.logged[2][metric_names.phase_time("eval")] == 0.0  # step 4's eval came after step 2


def test_loop_imports_neither_ray_nor_mlflow() -> None:
    code = (
        "import sys, orchestrator.train.loop; print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_data_wait_counts_the_iterator_not_the_step() -> None:
    import time

    def slow_step(images: torch.Tensor, labels: torch.Tensor) -> Mapping[str, float]:
        time.sleep(0.03)
        return {"loss": 1.0}

    def slow_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in batches():
            time.sleep(0.01)
            yield batch

    run = RunConfig(steps=4, log_every=4, eval_every=4, checkpoint_every=4)
    common = dict(
        run=run,
        start_step=0,
        checkpointer=FakeCheckpointer(),
        sample_fn=sample,
        eval_fn=FakeEval(),
        global_batch=4,
    )
    fast_data = run_loop(slow_step, batches(), reporter=FakeReporter(False), **common)  # type: ignore[arg-type]
    slow_data = run_loop(Counter(), slow_batches(), reporter=FakeReporter(False), **common)  # type: ignore[arg-type]
    assert fast_data["data_wait_s"] < 0.03  # counting the step would give at least its 30 ms sleep
    assert slow_data["data_wait_s"] >= 0.01  # each batch's 10 ms sleep is data wait


def test_a_metric_that_starts_mid_window_is_averaged_over_the_steps_that_report_it() -> None:
    """The adversarial terms start at loss.adversarial_start_step, wherever that falls in a log window."""

    def step_fn(images: torch.Tensor, labels: torch.Tensor) -> Mapping[str, float]:
        step_fn.calls += 1  # type: ignore[attr-defined]
        late = {"adv_g": 10.0 * step_fn.calls} if step_fn.calls >= 2 else {}  # type: ignore[attr-defined]
        return {"loss": 1.0, **late}

    step_fn.calls = 0  # type: ignore[attr-defined]
    reporter = FakeReporter(keeps_images=False)
    run_loop(
        step_fn,
        batches(),
        run=RunConfig(steps=3, log_every=3, eval_every=3, checkpoint_every=3),
        start_step=0,
        reporter=reporter,
        checkpointer=FakeCheckpointer(),
        sample_fn=sample,
        eval_fn=FakeEval(),
        global_batch=4,
        skipped_samples=lambda: 0,
    )
    assert reporter.logged[3]["loss"] == 1.0 and reporter.logged[3]["adv_g"] == 25.0  # (20 + 30) / 2
