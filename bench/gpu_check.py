"""The prepared GPU check: does everything run on a CUDA device, and how fast? About 5 minutes on one GPU.

    make gpu-check                       # install, cluster-up, MNIST shards, then this with --sweep
    .venv/bin/python bench/gpu_check.py [--preset imagenet-256-l] [--batch 16] [--steps 10] [--sweep]
        [--grad-accum-steps K] [--activation-checkpointing]

1. Training: `train_step` of a paper preset under bf16 autocast on random inputs of its shape: step time,
   images/s, model FLOPs per step and the model FLOP utilisation against the device's dense bf16 peak
   (--peak-tflops when the device is not in PEAK_BF16_TFLOPS), peak memory. Two warm-up steps run first;
   the FLOPs are counted by torch's FlopCounterMode on a separate 2-image step (outside the timing, without
   recomputation, so checkpointed blocks count once: model FLOPs, not hardware FLOPs). A CUDA
   out-of-memory error retries with activation checkpointing, then with 2 micro-batches, and says so.
2. Sampling: `generate` at 1 and 4 steps under bf16 autocast from the EMA alone, images/s, peak memory.
3. Evaluation: the worker's proxy eval (samples, reconstructions, sphere diagnostics, conditioning
   strength) of the MNIST recipe on the device, scored by the digits classifier; peak memory.
4. DDP: 2 processes (torch.multiprocessing, no torchrun) train the same preset under DistributedDataParallel
   over NCCL on 2 GPUs, or over gloo on the CPU: step time, and the all-reduce time and bus bandwidth of one
   step's fp32 gradients. Skipped, saying why, with fewer than 2 visible GPUs.
5. --sweep: `sweeps/smoke.yaml` with `--set scaling.use_gpu=true` as one 1-worker trial on the local
   cluster (needs `make cluster-up` and the MNIST shards; `make gpu-check` does both).
Every section prints one line (peak memory is torch.cuda.max_memory_allocated, reset between sections); any
device mismatch fails loudly. `--device cpu --preset mnist-32-nano` runs the same path on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode

from orchestrator.config.loader import load_sweep
from orchestrator.config.schema import EvalConfig
from orchestrator.evaluation.proxy import ProxyEval
from sphere_core.config import OptimConfig, SamplingConfig, SphereConfig
from sphere_core.model import SphereEncoder
from sphere_core.presets import PRESETS, get_preset
from sphere_core.sampling import generate
from sphere_core.train_step import TrainState, make_train_state, train_step

REPO = Path(__file__).resolve().parents[1]
# Dense (no sparsity) bf16 tensor peak in TFLOP/s, from the vendors' data sheets, keyed by the words of
# torch.cuda.get_device_name ("NVIDIA H100 80GB HBM3" is the SXM part, "NVIDIA H100 PCIe", "NVIDIA H100
# NVL", "NVIDIA A100-SXM4-80GB"); the longest key whose words all appear in order wins, so "L4" never
# matches an L40.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,  # SXM
    "H200 NVL": 835.0,
    "H100": 989.0,  # SXM
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,  # per GPU of the pair
    "A100": 312.0,  # every A100: 40 and 80 GB, SXM4 and PCIe have the same tensor peak
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10": 125.0,
    "A10G": 70.0,  # AWS's figure (NVIDIA publishes no A10G sheet); the A10G trades tensor for FP32 throughput
}
FALLBACKS = ({"activation_checkpointing": True}, {"activation_checkpointing": True, "grad_accum_steps": 2})


def peak_tflops_of(name: str) -> float | None:
    """The table's entry for a CUDA device name, by whole words, longest key first; None if unknown."""
    words = name.upper().replace("-", " ").split()

    def contains(key: str) -> bool:
        k = key.upper().split()
        return any(words[i : i + len(k)] == k for i in range(len(words) - len(k) + 1))

    matches = [key for key in PEAK_BF16_TFLOPS if contains(key)]
    return PEAK_BF16_TFLOPS[max(matches, key=lambda key: len(key.split()))] if matches else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> str:
    if device.type != "cuda":
        return "peak memory n/a on cpu"
    return f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Seconds per call of fn, after the caller's warm-up."""
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - started) / repeats


def random_batch(
    config: SphereConfig, batch: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    m = config.model
    x = torch.rand(batch, m.channels, m.image_size, m.image_size, device=device) * 2 - 1
    y = torch.randint(m.num_classes, (batch,), device=device) if m.conditional else None
    return x, y


def optim_of(config: SphereConfig, **memory: object) -> OptimConfig:
    return dataclasses.replace(config.optim, bf16_autocast=True, **memory)  # type: ignore[arg-type]


def model_flops_per_image(config: SphereConfig, device: torch.device) -> float:
    """FLOPs of one training step per image (forward, backward, optimiser), counted on 2 images."""
    torch.manual_seed(0)
    state = make_train_state(config, device=device)
    x, y = random_batch(config, 2, device)
    with FlopCounterMode(display=False) as counter:
        train_step(state, x, y, optim=optim_of(config), global_batch=2, generator=None)
    return counter.get_total_flops() / 2


# --- 1. training ----------------------------------------------------------------------------------


def fitting_state(
    config: SphereConfig, batch: int, device: torch.device, optim: OptimConfig
) -> tuple[TrainState, OptimConfig]:
    """A train state that survived two warm-up steps: `optim` as given, or on a CUDA out-of-memory error
    the first of FALLBACKS that fits (each attempt prints its line)."""
    x, y = random_batch(config, batch, device)
    for attempt in (optim, *(dataclasses.replace(optim, **f) for f in FALLBACKS)):
        reset_peak_memory(device)
        torch.manual_seed(0)
        state = make_train_state(config, device=device)
        try:
            for _ in range(2):
                train_step(state, x, y, optim=attempt, global_batch=batch, generator=None)
            return state, attempt
        except torch.cuda.OutOfMemoryError:
            print(f"train    {memory_setting(attempt)}: out of memory ({peak_memory(device)}), retrying")
            del state
    raise SystemExit("train: out of memory even with activation checkpointing and 2 micro-batches")


def memory_setting(optim: OptimConfig) -> str:
    setting = f"{optim.grad_accum_steps} micro-batches" if optim.grad_accum_steps > 1 else "1 batch"
    return setting + (", activation checkpointing" if optim.activation_checkpointing else "")


def check_training(
    preset: str, batch: int, steps: int, device: torch.device, peak: float | None, optim: OptimConfig
) -> tuple[SphereEncoder, OptimConfig]:
    """Prints the training line; returns the EMA model and the memory setting that fitted."""
    config = get_preset(preset)
    flops = model_flops_per_image(config, device) * batch
    state, optim = fitting_state(config, batch, device, optim)
    x, y = random_batch(config, batch, device)
    seconds = timed(
        lambda: train_step(state, x, y, optim=optim, global_batch=batch, generator=None), device, steps
    )
    mfu = f", MFU {flops / seconds / (peak * 1e12):.1%} of {peak:g} TFLOP/s bf16" if peak else ""
    params = sum(p.numel() for p in state.model.parameters())
    print(
        f"train    {preset} ({params / 1e6:.3g} M params) batch {batch} bf16, {memory_setting(optim)}: "
        f"{seconds * 1e3:.0f} ms/step, {batch / seconds:.1f} img/s, {flops / 1e12:.3g} model TFLOP/step"
        f"{mfu}; {peak_memory(device)}"
    )
    return state.ema, optim


# --- 2. sampling and 3. evaluation ----------------------------------------------------------------


def check_sampling(ema: SphereEncoder, preset: str, batch: int, device: torch.device) -> None:
    config = get_preset(preset)
    m = config.model
    labels = torch.arange(batch, device=device) % m.num_classes if m.conditional else batch
    for steps in (1, 4):
        sampling = SamplingConfig(steps=steps).resolved(config.noise)
        sample = functools.partial(
            generate,
            ema,
            labels,
            sampling=sampling,
            generator=torch.Generator(device=device).manual_seed(0),
            bf16_autocast=True,
        )

        reset_peak_memory(device)
        images = sample()  # warm-up
        assert images.device.type == device.type and images.isfinite().all()
        seconds = timed(sample, device, repeats=3)
        print(f"sample   {steps} step(s) bf16: {batch / seconds:.1f} img/s; {peak_memory(device)}")


def check_eval(device: torch.device) -> None:
    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml").experiment
    cfg = dataclasses.replace(cfg, eval=EvalConfig(dataset="digits", num_images=256, seed=0))
    reset_peak_memory(device)
    torch.manual_seed(0)
    state = make_train_state(cfg.sphere, device=device)
    started = time.perf_counter()
    evaluation = ProxyEval(state, cfg)()
    names = ", ".join(
        f"{k} {v:.3g}" for k, v in evaluation.metrics.items() if k.startswith(("fd_", "recon_fd"))
    )
    print(
        f"eval     proxy eval of the MNIST recipe on {device}: {time.perf_counter() - started:.1f} s; "
        f"{names}; {peak_memory(device)}"
    )


# --- 4. DDP ---------------------------------------------------------------------------------------


def check_ddp(preset: str, batch: int, steps: int, device: torch.device, optim: OptimConfig) -> None:
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        print(f"ddp      skipped: {torch.cuda.device_count()} CUDA device(s) visible, DDP needs 2")
        return
    with socket.socket() as s:  # a free port for the process group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(ddp_worker, args=(port, preset, batch, steps, device.type, optim), nprocs=2, join=True)


def ddp_worker(
    rank: int, port: int, preset: str, batch: int, steps: int, kind: str, optim: OptimConfig
) -> None:
    """One of 2 DDP ranks: NCCL on cuda:rank, or gloo on the CPU. Rank 0 prints the line."""
    device = torch.device(f"cuda:{rank}") if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if kind == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        config = get_preset(preset)
        torch.manual_seed(0)
        state = make_train_state(config, device=device)
        state.objective = DistributedDataParallel(
            state.objective, device_ids=[rank] if kind == "cuda" else None
        )
        x, y = random_batch(config, batch, device)
        generator = torch.Generator(device=device).manual_seed(rank)

        def step() -> object:
            return train_step(state, x, y, optim=optim, global_batch=2 * batch, generator=generator)

        for _ in range(2):  # warm-up: DDP's buckets are rebuilt after the first step
            step()
        seconds = timed(step, device, steps)
        # One step's all-reduce: every trainable parameter's fp32 gradient, as one flat buffer.
        grads = torch.zeros(
            sum(p.numel() for p in state.model.parameters() if p.requires_grad), device=device
        )
        dist.all_reduce(grads)  # warm-up: the communicator is set up lazily
        reduce_s = timed(lambda: dist.all_reduce(grads), device, repeats=5)
        # Ring all-reduce moves 2 (n - 1) / n of the buffer over each link: nccl-tests' bus bandwidth.
        bus_gb_s = 2 * (2 - 1) / 2 * grads.nbytes / reduce_s / 1e9
        if rank == 0:
            setting = f"{preset} batch 2 x {batch}, {memory_setting(optim)}"
            print(
                f"ddp      2 x {device.type} ({backend}), {setting}: {seconds * 1e3:.0f} ms/step, "
                f"{2 * batch / seconds:.1f} img/s; all-reduce of {grads.nbytes / 1e6:.0f} MB fp32 gradients "
                f"{reduce_s * 1e3:.1f} ms ({bus_gb_s:.1f} GB/s bus bandwidth); {peak_memory(device)}"
            )
    finally:
        dist.destroy_process_group()


# --- 5. a sweep on the local cluster --------------------------------------------------------------


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
    parser.add_argument("--batch", type=int, default=16, help="images per GPU and step")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps after two warm-up steps")
    parser.add_argument("--grad-accum-steps", type=int, default=1, help="micro-batches per step (optim)")
    parser.add_argument(
        "--activation-checkpointing", action="store_true", help="recompute blocks in backward"
    )
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device, for the MFU")
    parser.add_argument("--sweep", action="store_true", help="also run a one-trial use_gpu sweep")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA device visible (torch.cuda.is_available() is False); --device cpu checks the script"
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or (peak_tflops_of(name) if device.type == "cuda" else None)
    print(f"device   {name}, torch {torch.__version__}, dense bf16 peak {peak or 'unknown'} TFLOP/s")
    optim = optim_of(
        get_preset(args.preset),
        grad_accum_steps=args.grad_accum_steps,
        activation_checkpointing=args.activation_checkpointing,
    )
    ema, optim = check_training(args.preset, args.batch, args.steps, device, peak, optim)
    check_sampling(ema, args.preset, args.batch, device)
    del ema
    check_eval(device)
    check_ddp(args.preset, args.batch, args.steps, device, optim)
    if args.sweep:
        check_sweep()


if __name__ == "__main__":
    main()
