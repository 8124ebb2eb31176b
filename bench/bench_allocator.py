"""The training step under each malloc a Ray worker can run on, side by side in one run: the C library's
(glibc: what Ray's workers get by default), Ray's bundled jemalloc with its default purging (what
RAY_LD_PRELOAD_ON_WORKERS=1 alone gives), and that jemalloc with the trial workers' MALLOC_CONF, which keeps
freed pages (orchestrator/train/worker_env.py). One process per measurement, since a process's allocator is
chosen when it starts; the allocators take turns for `--rounds` rounds, alone and `--side-by-side` at once
(the demo's two trials on two cores), so all see the same load.

    .venv/bin/python bench/bench_allocator.py [--preset mnist-32-nano] [--steps 20] [--rounds 3]
        [--threads 1] [--side-by-side 1 2]

The step is the preset's full CPU recipe (perceptual and adversarial terms, the critic on from the first step,
the perceptual net at the precision a trial picks: `perceptual.precision: auto`), batch 16, fixed inputs.
Prints the median seconds per step, its ratio to glibc, each process's peak RSS and /proc/pressure/cpu.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import ray
from bench_core import cpu_pressure
from bench_step_settings import make_state, recipe, stepper

from orchestrator.train.worker_env import TRAIN_WORKER_MALLOC_CONF, preloaded_allocator

JEMALLOC = str(Path(ray.__file__).parent / "core" / "libjemalloc.so")
# What a trial worker on a node with RAY_LD_PRELOAD_ON_WORKERS=1 runs on (its MALLOC_CONF: worker_env.py).
TRIAL_WORKER_ALLOCATOR_ENV = {"LD_PRELOAD": JEMALLOC, "MALLOC_CONF": TRAIN_WORKER_MALLOC_CONF}
ALLOCATORS = {
    "glibc": {},
    "jemalloc, Ray's default": {"LD_PRELOAD": JEMALLOC},
    "jemalloc, trial workers' conf": TRIAL_WORKER_ALLOCATOR_ENV,
}
WARMUP = 3


def child(preset: str, steps: int, threads: int, batch: int) -> None:
    """Print {"s_per_step", "allocator", "rss_mb"} for `steps` steps after WARMUP."""
    import torch

    from sphere_core.precision import native_bf16

    torch.set_num_threads(threads)
    config = recipe(preset)
    setting = "bf16-features" if native_bf16(torch.device("cpu")) else "eager"  # as `precision: auto` picks
    step = stepper(make_state(config, setting), config, batch, setting)
    for i in range(WARMUP + steps):
        if i == WARMUP:
            started = time.perf_counter()
        step()
    seconds = (time.perf_counter() - started) / steps
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"s_per_step": seconds, "allocator": preloaded_allocator(), "rss_mb": rss_mb}))


def measure(env: dict[str, str], args: argparse.Namespace, count: int) -> list[dict[str, float | str]]:
    command = [sys.executable, __file__, "--child", args.preset, str(args.steps), str(args.threads), "16"]
    env = os.environ | env
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"error: a step process failed (exit {proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        preset, steps, threads, batch = sys.argv[2], *map(int, sys.argv[3:6])
        child(preset, steps, threads, batch)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mnist-32-nano")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--side-by-side", type=int, nargs="+", default=[1, 2], help="processes at once")
    args = parser.parse_args()
    if not Path(JEMALLOC).exists():
        raise SystemExit(f"error: this Ray ships no jemalloc at {JEMALLOC}")
    print(f"{args.preset}, batch 16, {args.threads} thread(s); cpu pressure {cpu_pressure()}")
    for count in args.side_by_side:
        seconds: dict[str, list[float]] = {name: [] for name in ALLOCATORS}
        rss: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, env in ALLOCATORS.items():
                for result in measure(env, args, count):
                    expected = "jemalloc" if "LD_PRELOAD" in env else "system"
                    if result["allocator"] != expected:
                        raise SystemExit(f"error: {name} ran on {result['allocator']}")
                    seconds[name].append(float(result["s_per_step"]))
                    rss[name] = max(rss.get(name, 0.0), float(result["rss_mb"]))
        base = statistics.median(seconds["glibc"])
        print(f"\n{count} process(es) at once, median of {args.rounds} rounds x {args.steps} steps:")
        for name, values in seconds.items():
            median = statistics.median(values)
            print(f"  {name:30s} {median:.4f} s/step  x{base / median:.2f}  peak RSS {rss[name]:.0f} MB")
    print(f"\ncpu pressure after: {cpu_pressure()}")


if __name__ == "__main__":
    main()
