"""Training vs few-step sampling throughput of the Sphere Encoder core on this machine.

    .venv/bin/python bench/bench_core.py [--preset mnist-32-nano] [--batch 64] [--repeats 5] [--threads 1]

Times `train_step` (the full objective: encoder on B, decoder on 2B, encoder again on B, backward, AdamW,
EMA) and `generate` at 1, 2, 4 and 8 forward steps, without and with (combo) CFG, on random inputs of the
preset's shape. Prints images/s (median of --repeats after one warm-up) beside the network passes per
sample, 1 + 2(T-1), doubled with CFG, and /proc/pressure/cpu, since other tenants skew timings.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sphere_core.config import SamplingConfig
from sphere_core.presets import PRESETS, get_preset
from sphere_core.sampling import generate, passes_for
from sphere_core.train_step import make_train_state, train_step

STEPS = (1, 2, 4, 8)


def cpu_pressure() -> str:
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "n/a"


def images_per_s(fn: Callable[[], object], batch: int, repeats: int) -> float:
    fn()  # warm-up: allocator, autograd graph, oneDNN kernels
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="mnist-32-nano", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = get_preset(args.preset)
    cfg = config.model
    state = make_train_state(config, device="cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, cfg.channels, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    y = torch.randint(max(cfg.num_classes, 1), (args.batch,), generator=g) if cfg.conditional else None

    def one_train_step() -> None:
        train_step(state, x, y, optim=config.optim, global_batch=args.batch, generator=g)

    print(f"preset {args.preset}: {cfg.image_size}px x{cfg.channels}, {cfg.encoder_size}/{cfg.decoder_size}, "
          f"N={cfg.num_tokens} d={cfg.token_channels} L={cfg.latent_dim}; batch {args.batch}, "
          f"{args.threads} thread(s); cpu pressure: {cpu_pressure()}")  # fmt: skip
    print(f"train_step: {images_per_s(one_train_step, args.batch, args.repeats):8.1f} images/s")

    model = state.model.eval()
    labels = y if y is not None else args.batch
    print(f"\n{'steps':>5} {'cfg':>4} {'passes/sample':>13} {'images/s':>9}")
    for steps in STEPS:
        for cfg_scale in (1.0, 1.4) if cfg.conditional else (1.0,):
            sampling = SamplingConfig(steps=steps, cfg=cfg_scale).resolved(config.noise)

            def sample(sampling: SamplingConfig = sampling) -> None:
                generate(model, labels, sampling=sampling, generator=g)

            rate = images_per_s(sample, args.batch, args.repeats)
            passes = passes_for(model, sampling)
            print(f"{steps:>5} {cfg_scale:>4} {passes:>13} {rate:>9.1f}")


if __name__ == "__main__":
    main()
