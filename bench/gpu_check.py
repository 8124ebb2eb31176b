"""The prepared GPU check: does everything run on a CUDA device, and how fast? About 5 minutes on one GPU.

    make gpu-check                       # install, cluster-up, MNIST shards, then this with --sweep
    .venv/bin/python bench/gpu_check.py [--preset imagenet-256-l] [--batch 16] [--steps 10] [--sweep]

1. Training: `train_step` of a paper preset under bf16 autocast on random inputs of its shape: step time,
   images/s, model FLOPs per step (counted by torch's FlopCounterMode on one step) and the model FLOP
   utilisation against the device's dense bf16 peak (--peak-tflops when the device is not in the table).
2. Sampling: `generate` at 1 and 4 steps under bf16 autocast, images/s.
3. Evaluation: the worker's proxy eval (samples, reconstructions, sphere diagnostics, conditioning
   strength) of the MNIST recipe on the device, scored by the digits classifier.
4. --sweep: `sweeps/smoke.yaml` with `--set scaling.use_gpu=true` as one 1-worker trial on the local
   cluster (needs `make cluster-up` and the MNIST shards; `make gpu-check` does both).
Every section prints one line; any device mismatch fails loudly. `--device cpu` runs the same path on a CPU
(with a small preset) to check the script itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import subprocess
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from orchestrator.config.loader import load_sweep
from orchestrator.config.schema import EvalConfig
from orchestrator.train.worker import ProxyEval
from sphere_core.config import SamplingConfig
from sphere_core.presets import PRESETS, get_preset
from sphere_core.sampling import generate
from sphere_core.train_step import make_train_state, train_step

REPO = Path(__file__).resolve().parents[1]
# Dense bf16 peak per device, in TFLOP/s (vendor data sheets, no sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_training(preset: str, batch: int, steps: int, device: torch.device, peak: float | None) -> None:
    config = get_preset(preset)
    optim = dataclasses.replace(config.optim, bf16_autocast=True)
    torch.manual_seed(0)
    state = make_train_state(config, device=device)
    m = config.model
    x = torch.rand(batch, m.channels, m.image_size, m.image_size, device=device) * 2 - 1
    y = torch.randint(m.num_classes, (batch,), device=device) if m.conditional else None
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> dict[str, float]:
        return dict(train_step(state, x, y, optim=optim, global_batch=batch, generator=generator).metrics)

    with FlopCounterMode(display=False) as counter:
        step()  # also the warm-up
    flops = counter.get_total_flops()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        metrics = step()
    synchronize(device)
    seconds = (time.perf_counter() - started) / steps
    mfu = f", MFU {flops / seconds / (peak * 1e12):.1%} of {peak:g} TFLOP/s bf16" if peak else ""
    params = sum(p.numel() for p in state.model.parameters())
    print(
        f"train    {preset} ({params / 1e6:.0f} M params) batch {batch} bf16: {seconds * 1e3:.0f} ms/step, "
        f"{batch / seconds:.1f} img/s, {flops / 1e12:.2f} TFLOP/step{mfu}; loss {metrics['loss']:.4f}"
    )
    for steps_per_sample in (1, 4):
        sampling = SamplingConfig(steps=steps_per_sample).resolved(config.noise)
        labels = torch.arange(batch, device=device) % m.num_classes if m.conditional else batch
        with torch.autocast(device.type, dtype=torch.bfloat16):
            sample = functools.partial(generate, sampling=sampling, generator=generator)
            sample(state.ema, labels)  # warm-up
            synchronize(device)
            started = time.perf_counter()
            images = sample(state.ema, labels)
            synchronize(device)
        assert images.device.type == device.type and images.isfinite().all()
        print(f"sample   {steps_per_sample} step(s): {batch / (time.perf_counter() - started):.1f} img/s")


def check_eval(device: torch.device) -> None:
    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml").experiment
    cfg = dataclasses.replace(cfg, eval=EvalConfig(dataset="digits", num_images=256, seed=0))
    torch.manual_seed(0)
    state = make_train_state(cfg.sphere, device=device)
    started = time.perf_counter()
    evaluation = ProxyEval(state, cfg)()
    names = ", ".join(
        f"{k} {v:.3g}" for k, v in evaluation.metrics.items() if k.startswith(("fd_", "recon_fd"))
    )
    print(
        f"eval     proxy eval of the MNIST recipe on {device}: {time.perf_counter() - started:.1f} s; {names}"
    )


def check_sweep() -> None:
    env_file = REPO / ".cluster" / "env"
    if not env_file.exists():
        raise SystemExit("--sweep needs the local cluster: make cluster-up (make gpu-check does it)")
    argv = [
        str(REPO / ".venv" / "bin" / "python"),
        str(REPO / "infra" / "local" / "cluster.py"),
        "submit",
        "--",
        "python",
        "-m",
        "orchestrator.sweep",
        "sweeps/smoke.yaml",
        "--new-experiment",
        *("--set", "scaling.use_gpu=true", "--set", "scaling.workers_per_trial=1"),
        *("--set", "scaling.cpus_per_worker=1"),  # its 2 trials share the GPU one after the other
    ]
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=REPO, env=os.environ, check=False)
    verdict = "passed" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
    elapsed = time.perf_counter() - started
    print(f"sweep    smoke.yaml, use_gpu, 1 worker per trial: {verdict} in {elapsed:.0f} s")
    if result.returncode:
        raise SystemExit(result.returncode)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="imagenet-256-l", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps after one warm-up")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device, for the MFU")
    parser.add_argument("--sweep", action="store_true", help="also run a one-trial use_gpu sweep")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA device visible (torch.cuda.is_available() is False); --device cpu checks the script"
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device   {name}, torch {torch.__version__}")
    check_training(args.preset, args.batch, args.steps, device, peak_tflops(device, args.peak_tflops))
    check_eval(device)
    if args.sweep:
        check_sweep()


if __name__ == "__main__":
    main()
