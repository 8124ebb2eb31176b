"""The training step under the settings a CPU user could turn on, side by side in one run: eager (all fp32),
the random-conv perceptual net under bf16 autocast (`perceptual.precision`: what `auto` picks on a CPU with
AVX512-BF16 or AMX), the whole step under bf16 autocast as well (`optim.bf16_autocast`), channels-last memory
for the conv networks (pixel head, random-conv perceptual net, PatchGAN), and `torch.compile` of the model,
the perceptual net and the critic; at 1 and 2 torch threads; for the nano and micro presets with their full
CPU recipe (perceptual and adversarial terms on). Also the step's FLOP/s as a fraction of this CPU's
measured fp32 matmul peak at the same threads.

    .venv/bin/python bench/bench_step_settings.py [--presets mnist-32-nano mnist-32-micro] [--batch 16]
        [--steps 8] [--rounds 3] [--threads 1 2]

Every setting gets its own train state (same seed) and two warm-up steps (compile's cost is printed apart);
then the settings take turns, `--steps` steps each per round for `--rounds` rounds, so all see the same load.
Prints the median seconds per step and the ratio to eager, with /proc/pressure/cpu.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
from bench_core import cpu_pressure
from torch.utils.flop_counter import FlopCounterMode

from sphere_core.config import RANDOM_CONV_SEED, SphereConfig
from sphere_core.perceptual import build_perceptual
from sphere_core.presets import get_preset
from sphere_core.train_step import TrainState, make_train_state, train_step

SETTINGS = ("eager", "bf16-features", "bf16-all", "channels-last", "compile")


def recipe(preset: str) -> SphereConfig:
    """The preset with its critic on from the first step, so every timed step pays for it."""
    config = get_preset(preset)
    return dataclasses.replace(config, loss=dataclasses.replace(config.loss, adversarial_start_step=0))


def make_state(config: SphereConfig, setting: str) -> TrainState:
    torch.manual_seed(0)
    bf16 = setting in ("bf16-features", "bf16-all")
    perceptual = build_perceptual(random_conv=(config.model.channels, RANDOM_CONV_SEED), bf16=bf16)
    state = make_train_state(config, device="cpu", perceptual=perceptual)
    assert perceptual is not None and perceptual.random_conv is not None and state.critic is not None
    convs = (state.model, state.ema, perceptual.random_conv, state.critic.raw)
    if setting == "channels-last":
        for module in convs:
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs
    elif setting == "compile":
        compiled: tuple[torch.nn.Module, ...] = (
            state.model.encoder,
            state.model.decoder,
            perceptual.random_conv,
            state.critic.raw,
        )
        for network in compiled:
            network.compile(dynamic=False)
    return state


def stepper(state: TrainState, config: SphereConfig, batch: int, setting: str) -> Callable[[], None]:
    generator = torch.Generator().manual_seed(0)
    shape = (batch, config.model.channels, config.model.image_size, config.model.image_size)
    images = torch.rand(shape, generator=generator) * 2 - 1
    if setting == "channels-last":
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(config.model.num_classes, (batch,), generator=generator)

    optim = dataclasses.replace(config.optim, bf16_autocast=setting == "bf16-all")

    def step() -> None:
        train_step(state, images, labels, optim=optim, global_batch=batch, generator=generator)

    return step


def flops_per_step(config: SphereConfig, batch: int) -> float:
    state = make_state(config, "eager")
    step = stepper(state, config, batch, "eager")
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def matmul_peak(size: int = 1024, repeats: int = 20) -> float:
    """fp32 FLOP/s of a square matmul at the current torch threads (best of `repeats`)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["mnist-32-nano", "mnist-32-micro"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="steps per setting per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"cpu pressure: {cpu_pressure()}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        peak = matmul_peak()
        print(f"\n{threads} thread(s): fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
        for preset in args.presets:
            config = recipe(preset)
            flops = flops_per_step(config, args.batch)
            steps = {}
            for setting in SETTINGS:
                step = stepper(make_state(config, setting), config, args.batch, setting)
                started = time.perf_counter()
                for _ in range(2):
                    step()
                warmup = time.perf_counter() - started
                steps[setting] = step
                print(f"  {preset} {setting}: two warm-up steps {warmup:.1f} s")
            seconds: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
            for _ in range(args.rounds):
                for setting, step in steps.items():
                    started = time.perf_counter()
                    for _ in range(args.steps):
                        step()
                    seconds[setting].append((time.perf_counter() - started) / args.steps)
            eager = statistics.median(seconds["eager"])
            for setting in SETTINGS:
                median = statistics.median(seconds[setting])
                print(
                    f"  {preset:<16}{setting:<15}{median:8.3f} s/step  x{eager / median:5.2f} vs eager  "
                    f"{flops / median / 1e9:6.1f} GFLOP/s = {flops / median / peak:5.1%} of the matmul peak"
                )
    print(f"cpu pressure: {cpu_pressure()}")


if __name__ == "__main__":
    main()
