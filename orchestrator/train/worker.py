"""Ray Train's per-worker function: the only module that calls ray.train on the training path.

Touch points: `prepare_model` wraps the SphereObjective (the module whose forward holds the whole loss,
so DDP synchronises every gradient); `get_checkpoint` resumes weights, EMA, optimiser, step and the
merged data cursor; `report` (every rank, at the loop's checkpoint cadence) hands rank 0's checkpoint
directory to Ray. Rank 0 logs to the trial's MLflow run; the other ranks get a no-op sink, which never
samples nor evaluates, so only rank 0 pays for the proxy metrics and sphere diagnostics (ProxyEval).

Over 300 lines because everything that runs inside a Ray Train worker is here, so no other module of the
training path imports ray.train; the loop it drives is framework-free in loop.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from fsspec.core import url_to_fs

from orchestrator.config import metric_names
from orchestrator.config.schema import ExperimentConfig, PerceptualConfig
from orchestrator.data.pipeline import ShardStream
from orchestrator.data.shards import merge_cursors
from orchestrator.evaluation.proxy import ProxyEval, noise_angle_evaluation
from orchestrator.tracking.sinks import make_sink
from orchestrator.train.loop import run_loop
from orchestrator.train.worker_env import ALLOCATOR_TAG, preloaded_allocator
from sphere_core.checkpoint import CorruptCheckpoint, load_checkpoint, restore, save_checkpoint
from sphere_core.perceptual import PerceptualLoss, build_perceptual, perceptual_status
from sphere_core.precision import native_bf16
from sphere_core.sampling import generate
from sphere_core.train_step import TrainState, make_train_state, train_step

SAMPLE_GRID = 16  # images per logged grid; labels cycle through the classes


def noise_seed(run_seed: int, world_size: int, rank: int, start_step: int) -> int:
    """Per-rank seed run.seed * world_size + rank; a resumed run offsets it by its step so it draws
    fresh, reproducible noise instead of replaying the noise of the first steps."""
    return (run_seed * world_size + rank) * 1_000_003 + start_step


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """config: {"experiment": ExperimentConfig.to_dict(), "tracking_uri": str, "run_id": str,
    "score_metric": the sweep's metric, which ranks this trial's checkpoints}."""
    started = time.perf_counter()  # the loop reports the time before it (build, resume, step-0 eval) as setup
    # DDP compares a gradient's strides with its bucket's, including those of a size-1 dimension: a 1-channel
    # pixel head's ConvTranspose weight differs only there (tests/orchestrator/train/test_worker.py), so the
    # warning would read like a fault in every grayscale job's log for a layout that is the same.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    cfg = ExperimentConfig.from_dict(config["experiment"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    perceptual = load_perceptual(cfg.perceptual, cfg.model.channels, device)
    if rank == 0:
        print(perceptual_status(perceptual, cfg.loss))  # in the job's log: which loss terms are live
    state = make_train_state(cfg.sphere, device=device, perceptual=perceptual)
    state.objective = ray.train.torch.prepare_model(state.objective)
    if (
        state.critic is not None
    ):  # its own DDP wrapper: it trains in its own step (sphere_core/adversarial.py)
        state.critic.network = ray.train.torch.prepare_model(state.critic.network)
    start_step, extra = resume(state, device)
    cursor = extra.get("cursor")
    if rank == 0 and start_step:
        print(f"resumed from the checkpoint at step {start_step}")  # Ray forwards it to the job's log
    stream = ShardStream(cfg.data, rank=rank, world_size=world, cursor=cursor)
    generator = torch.Generator().manual_seed(noise_seed(cfg.run.seed, world, rank, start_step))
    global_batch = cfg.data.batch_size * world

    def step_fn(images: torch.Tensor, labels: torch.Tensor) -> Mapping[str, float]:
        y = labels.to(device) if cfg.model.conditional else None
        out = train_step(
            state, images.to(device), y, optim=cfg.optim, global_batch=global_batch, generator=generator
        )
        return out.metrics

    # The sink holds metrics across an outage itself: fail each request in ~7 s, not MLflow's ~4 min, so an
    # outage does not stall training at every flush.
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"})
    reporter = make_sink(rank, config["tracking_uri"], config["run_id"])
    reporter.restore(extra.get("unflushed", []))  # a kill may have come between checkpoint and flush
    reporter.tag({ALLOCATOR_TAG: preloaded_allocator()})  # the step's speed depends on it (worker_env.py)
    if start_step == 0:
        reporter.log_eval(lambda: noise_angle_evaluation(cfg), step=0)
    run_loop(
        step_fn,
        iter(stream),
        run=cfg.run,
        start_step=start_step,
        reporter=reporter,
        checkpointer=RayCheckpointer(
            state, cfg, stream, rank, unflushed=reporter.unflushed, score_metric=config["score_metric"]
        ),
        sample_fn=lambda: sample_grids(state, cfg),
        eval_fn=ProxyEval(state, cfg),
        global_batch=global_batch,
        skipped_samples=lambda: sum(skipped_per_shard(stream).values()),
        started=started,
    )
    skipped = skipped_per_shard(stream)  # every rank takes part: a collective
    if skipped:
        reporter.tag(read_tags(stream.manifest.digest, skipped))


def checkpoint_score(metrics: Mapping[str, float], carried: frozenset[str], score_metric: str) -> float:
    """The checkpoint's own `score_metric`, or NaN where an earlier step measured it (CHECKPOINT_SCORE)."""
    if score_metric in carried or score_metric not in metrics:
        return math.nan
    return float(metrics[score_metric])


def skipped_per_shard(stream: ShardStream) -> dict[str, int]:
    """Samples skipped so far as undecodable or truncated, per shard, over all ranks: each rank reads its own
    shards, so rank 0's count alone is not the run's. Every rank must call it at the same step."""
    own: dict[str, int] = stream.stats()["skipped_per_shard"]
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return own
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, own)
    merged: dict[str, int] = {}
    for counts in every:
        for shard, count in counts.items():
            merged[shard] = merged.get(shard, 0) + count
    return dict(sorted(merged.items()))


def read_tags(manifest_digest: str, skipped: Mapping[str, int]) -> dict[str, str]:
    """What the run actually read when it differs from the manifest: the skips per shard and a digest of
    (manifest digest, skips), so two runs that lost the same samples of the same data share it."""
    record = json.dumps({"manifest": manifest_digest, "skipped": dict(skipped)}, sort_keys=True)
    return {
        "data.skipped_per_shard": json.dumps(dict(skipped)),
        "data.read_digest": hashlib.sha256(record.encode()).hexdigest()[:32],
    }


def load_perceptual(weights: PerceptualConfig, channels: int, device: torch.device) -> PerceptualLoss | None:
    """The frozen perceptual network: the project's random conv features, the published networks from the
    configured files (local or any fsspec URL), or None."""
    bf16 = weights.precision == "bf16" or (weights.precision == "auto" and native_bf16(device))
    if weights.network == "random-conv":
        return build_perceptual(
            random_conv=(channels, weights.seed), random_conv_width=weights.width, device=device, bf16=bf16
        )
    if not weights.given:
        return None
    with tempfile.TemporaryDirectory(prefix="sphere-perceptual-") as tmp:
        local = {}
        for name in ("vgg16", "lpips", "convnext_small"):
            url = getattr(weights, name)
            if url is not None:
                local[name] = Path(tmp) / name
                fs, path = url_to_fs(url)
                fs.get(path, str(local[name]))
        return build_perceptual(
            local.get("vgg16"), local.get("lpips"), local.get("convnext_small"), device=device, bf16=bf16
        )


def resume(state: TrainState, device: torch.device) -> tuple[int, dict[str, Any]]:
    """(steps done, the checkpoint's extra: merged data cursor, unflushed metrics) from Ray's latest
    checkpoint, or from the newest older one Ray kept when that one is damaged; (0, {}) on a fresh start."""
    latest = ray.train.get_checkpoint()
    if latest is None:
        return 0, {}
    damaged = []
    for checkpoint in [latest, *older_checkpoints(latest)]:
        with checkpoint.as_directory() as directory:
            try:
                loaded = load_checkpoint(directory, device=device)
            except CorruptCheckpoint as exc:  # its path is a local copy: name the stored checkpoint
                damaged.append(f"{checkpoint.path}: {str(exc).removeprefix(f'{directory}: ')}")
                print(f"not resuming from {damaged[-1]}")
                continue
        restore(state, loaded)
        if damaged:
            print(f"resumed from the older checkpoint {checkpoint.path} (step {loaded.step}) instead")
        return loaded.step, loaded.extra
    raise CorruptCheckpoint(f"no intact checkpoint to resume from ({len(damaged)} damaged: {damaged[0]})")


def older_checkpoints(latest: ray.train.Checkpoint) -> list[ray.train.Checkpoint]:
    """The checkpoints Ray kept beside `latest` (run.keep_checkpoints), newest first: Ray names them by
    the time they were reported, so their names sort in time order. Only older ones: a newer directory is
    an upload Ray never registered."""
    parent, name = latest.path.rstrip("/").rsplit("/", 1)
    filesystem = latest.filesystem
    if filesystem is None:  # Ray resolves one for every checkpoint it hands out
        return []
    listing = filesystem.get_file_info(pyarrow.fs.FileSelector(parent))
    older = sorted(
        (
            entry.base_name
            for entry in listing
            if entry.type == pyarrow.fs.FileType.Directory
            and entry.base_name.startswith("checkpoint_")
            and entry.base_name < name
        ),
        reverse=True,
    )
    return [ray.train.Checkpoint(f"{parent}/{older_name}", filesystem=filesystem) for older_name in older]


@torch.no_grad()
def sample_grids(state: TrainState, cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """1-step and `sampling.steps`-step samples of the EMA model, from the same noise at every eval, in
    training's precision (optim.bf16_autocast)."""
    model = state.ema
    labels: torch.Tensor | int = SAMPLE_GRID
    if cfg.model.conditional:
        labels = torch.arange(SAMPLE_GRID) % cfg.model.num_classes
    grids, resolved = {}, cfg.sampling.resolved(cfg.noise)
    for steps in cfg.eval_steps:
        sampling = dataclasses.replace(resolved, steps=steps)
        generator = torch.Generator().manual_seed(cfg.run.seed)
        grids[metric_names.sample_images(steps)] = generate(
            model, labels, sampling=sampling, generator=generator, bf16_autocast=cfg.optim.bf16_autocast
        )
    return grids


class RayCheckpointer:
    """Ray's checkpoint contract: every rank reports at the same step; rank 0 alone writes the directory."""

    def __init__(
        self,
        state: TrainState,
        cfg: ExperimentConfig,
        stream: ShardStream,
        rank: int,
        unflushed: Callable[[], list[dict[str, Any]]],
        score_metric: str,
    ) -> None:
        self.state, self.cfg, self.stream, self.rank = state, cfg, stream, rank
        self.unflushed, self.score_metric = unflushed, score_metric

    def save(self, step: int, metrics: Mapping[str, float], carried: frozenset[str]) -> None:
        cursor = self._merged_cursor()
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                directory = save_checkpoint(
                    Path(tmp) / "checkpoint",
                    self.state,
                    self.cfg.sphere,
                    # metrics logged since the last flush: the flush follows the checkpoint, so a run killed
                    # in between replays them on resume (MLflow drops exact repeats: never twice, never lost)
                    extra={"cursor": cursor, "metrics": dict(metrics), "unflushed": self.unflushed()},
                )
                checkpoint = ray.train.Checkpoint.from_directory(str(directory))
            ray.train.report(
                {
                    **metrics,
                    metric_names.CHECKPOINT_SCORE: checkpoint_score(metrics, carried, self.score_metric),
                },
                checkpoint=checkpoint,
            )

    def _merged_cursor(self) -> dict[str, Any]:
        """Each rank's cursor covers only its shards; all ranks must resume from their union."""
        cursor = self.stream.cursor()
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return merge_cursors([cursor])
        cursors: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(cursors, cursor)
        return merge_cursors(cursors)
