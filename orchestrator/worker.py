"""Ray Train's per-worker function: the only module that calls ray.train on the training path.

Touch points: `prepare_model` wraps the SphereObjective (the module whose forward holds the whole loss,
so DDP synchronises every gradient); `get_checkpoint` resumes weights, EMA, optimiser, step and the
merged data cursor; `report` (every rank, at the loop's checkpoint cadence) hands rank 0's checkpoint
directory to Ray. Rank 0 logs to the trial's MLflow run; the other ranks get a no-op sink.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from orchestrator.config.schema import ExperimentConfig
from orchestrator.data.pipeline import ShardStream
from orchestrator.data.shards import merge_cursors
from orchestrator.loop import run_loop
from orchestrator.tracking import make_sink
from sphere_core.checkpoint import load_checkpoint, restore, save_checkpoint
from sphere_core.sampling import generate
from sphere_core.train_step import TrainState, make_train_state, train_step

SAMPLE_GRID = 16  # images per logged grid; labels cycle through the classes


def noise_seed(run_seed: int, world_size: int, rank: int, start_step: int) -> int:
    """Per-rank seed run.seed * world_size + rank; a resumed run offsets it by its step so it draws
    fresh, reproducible noise instead of replaying the noise of the first steps."""
    return (run_seed * world_size + rank) * 1_000_003 + start_step


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """config: {"experiment": ExperimentConfig.to_dict(), "tracking_uri": str, "run_id": str}."""
    cfg = ExperimentConfig.from_dict(config["experiment"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    state = make_train_state(cfg.sphere, device=device)
    state.objective = ray.train.torch.prepare_model(state.objective)
    start_step, cursor = resume(state, device)
    stream = ShardStream(cfg.data, rank=rank, world_size=world, cursor=cursor)
    generator = torch.Generator().manual_seed(noise_seed(cfg.run.seed, world, rank, start_step))
    global_batch = cfg.data.batch_size * world

    def step_fn(images: torch.Tensor, labels: torch.Tensor) -> Mapping[str, float]:
        y = labels.to(device) if cfg.model.conditional else None
        out = train_step(
            state, images.to(device), y, optim=cfg.optim, global_batch=global_batch, generator=generator
        )
        return out.metrics

    run_loop(
        step_fn,
        iter(stream),
        run=cfg.run,
        start_step=start_step,
        reporter=make_sink(rank, config["tracking_uri"], config["run_id"]),
        checkpointer=RayCheckpointer(state, cfg, stream, rank),
        sample_fn=lambda: sample_grids(state, cfg),
        skipped_samples=lambda: int(stream.stats()["skipped_total"]),
    )


def resume(state: TrainState, device: torch.device) -> tuple[int, dict[str, Any] | None]:
    """(steps done, merged data cursor) from Ray's latest checkpoint, or (0, None) on a fresh start."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, None
    with checkpoint.as_directory() as directory:
        loaded = load_checkpoint(directory, device=device)
    restore(state, loaded)
    print(f"resumed from the checkpoint at step {loaded.step}")  # Ray forwards it to the job's log
    return loaded.step, loaded.extra.get("cursor")


@torch.no_grad()
def sample_grids(state: TrainState, cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """1-step and `sampling.steps`-step samples of the EMA model, from the same noise at every eval."""
    model = state.ema
    labels: torch.Tensor | int = SAMPLE_GRID
    if cfg.model.conditional:
        labels = torch.arange(SAMPLE_GRID) % cfg.model.num_classes
    grids = {}
    for steps in dict.fromkeys((1, cfg.sampling.steps)):
        sampling = dataclasses.replace(cfg.sampling, steps=steps)
        generator = torch.Generator().manual_seed(cfg.run.seed)
        grids[f"samples_{steps}step"] = generate(
            model, labels, sampling=sampling, alpha_max_deg=cfg.noise.alpha_max_deg, generator=generator
        )
    return grids


class RayCheckpointer:
    """Ray's checkpoint contract: every rank reports at the same step; rank 0 alone writes the directory."""

    def __init__(self, state: TrainState, cfg: ExperimentConfig, stream: ShardStream, rank: int) -> None:
        self.state, self.cfg, self.stream, self.rank = state, cfg, stream, rank

    def save(self, step: int, metrics: Mapping[str, float]) -> None:
        cursor = self._merged_cursor()
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                directory = save_checkpoint(
                    Path(tmp) / "checkpoint",
                    self.state,
                    self.cfg.sphere,
                    extra={"cursor": cursor, "metrics": dict(metrics)},
                )
                checkpoint = ray.train.Checkpoint.from_directory(str(directory))
            ray.train.report(dict(metrics), checkpoint=checkpoint)

    def _merged_cursor(self) -> dict[str, Any]:
        """Each rank's cursor covers only its shards; all ranks must resume from their union."""
        cursor = self.stream.cursor()
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return merge_cursors([cursor])
        cursors: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(cursors, cursor)
        return merge_cursors(cursors)
