"""What Ray Train costs: the same sphere_core training step in a plain loop and under Ray Train, side by side.

    .venv/bin/python bench/bench_ray_overhead.py [--sweep sweeps/smoke.yaml] [--steps 40] [--threads 1]

Both sides build the model of the sweep's base config, seed alike and train on the same in-memory
batches (data loading is bench_data.py's subject), with `--threads` torch threads: Ray gives a worker
one thread per CPU it reserves, so the plain loop gets the same. Under Ray the step runs in one Train V2
worker (`TorchTrainer`, DDP over gloo with world size 1, as a trial with one worker would). Printed:
images/s inside the loop (after warm-up) on each side and their ratio, and the end-to-end images/s of
the whole `fit()` (worker start, process group, teardown): the fixed cost a sweep pays per trial.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_data import cpu_pressure

from orchestrator.config.loader import load_sweep
from orchestrator.config.schema import ExperimentConfig
from sphere_core.train_step import make_train_state, train_step

WARMUP = 5  # steps left out of the timing (allocator and autograd caches)


def batches(cfg: ExperimentConfig, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    m = cfg.model
    shape = (cfg.data.batch_size, m.channels, m.image_size, m.image_size)
    return [
        (torch.rand(shape, generator=g) * 2 - 1, torch.randint(m.num_classes, shape[:1], generator=g))
        for _ in range(count)
    ]


def timed_steps(
    cfg: ExperimentConfig, wrap: Callable[[torch.nn.Module], torch.nn.Module], steps: int
) -> float:
    """images/s of `steps` train steps after WARMUP; `wrap` is identity or Ray's prepare_model."""
    torch.manual_seed(cfg.run.seed)
    state = make_train_state(cfg.sphere, device="cpu")
    state.objective = wrap(state.objective)
    data, generator = batches(cfg, WARMUP + steps), torch.Generator().manual_seed(1)
    for i, (x, y) in enumerate(data):
        if i == WARMUP:
            started = time.perf_counter()
        train_step(state, x, y, optim=cfg.optim, global_batch=cfg.data.batch_size, generator=generator)
    return steps * cfg.data.batch_size / (time.perf_counter() - started)


def plain(cfg: ExperimentConfig, steps: int, threads: int) -> float:
    torch.set_num_threads(threads)
    return timed_steps(cfg, lambda module: module, steps)


def ray_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = ExperimentConfig.from_dict(config["experiment"])
    torch.set_num_threads(config["threads"])
    images_per_s = timed_steps(cfg, ray.train.torch.prepare_model, config["steps"])
    with tempfile.TemporaryDirectory() as tmp:  # V2 returns metrics only with a checkpoint
        Path(tmp, "result.json").write_text(json.dumps({"images_per_s": images_per_s}))
        ray.train.report({"images_per_s": images_per_s}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def under_ray(cfg: ExperimentConfig, steps: int, threads: int, storage: str) -> tuple[float, float]:
    """(in-loop images/s, images/s over the whole fit() wall time) with one Train worker."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.train.process_group import NodeBoundTorchConfig

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # else a local Ray writes ~/.ray/auth_token, which
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # later `ray start`s pick up; loopback
    ray.init(num_cpus=max(2, threads), include_dashboard=False, log_to_driver=False)
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config={"experiment": cfg.to_dict(), "steps": steps, "threads": threads},
        torch_config=NodeBoundTorchConfig(),  # as a trial runs
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": threads}),
        run_config=RunConfig(name=f"bench-{time.time_ns()}", storage_path=storage),
    )
    started = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - started
    ray.shutdown()
    assert result.metrics is not None
    return float(result.metrics["images_per_s"]), (WARMUP + steps) * cfg.data.batch_size / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sweep", default="sweeps/smoke.yaml", help="its base experiment sets model and batch"
    )
    parser.add_argument("--steps", type=int, default=40, help="timed steps per side (after warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads = CPUs of the Ray worker")
    args = parser.parse_args()
    cfg = load_sweep(args.sweep).experiment
    print(
        f"model {cfg.model.encoder_size}/{cfg.model.decoder_size} {cfg.model.image_size}px, batch "
        f"{cfg.data.batch_size}, {args.steps} steps after {WARMUP} warm-up, {args.threads} thread(s)"
    )
    print(f"cpu pressure before: {cpu_pressure()}")
    base = plain(cfg, args.steps, args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as storage:
        in_loop, end_to_end = under_ray(cfg, args.steps, args.threads, storage)
    print(f"{'':<32}{'images/s':>10}{'vs plain':>10}")
    for name, value in (
        ("plain loop", base),
        ("Ray Train, in the loop", in_loop),
        ("Ray Train, whole fit()", end_to_end),
    ):
        print(f"{name:<32}{value:>10.1f}{value / base:>10.2f}")
    print(f"cpu pressure after:  {cpu_pressure()}")


if __name__ == "__main__":
    main()
