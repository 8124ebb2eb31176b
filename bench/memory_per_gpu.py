"""Training memory per GPU of every preset, without a GPU: what docs/scaling.md's memory table comes from.

    .venv/bin/python bench/memory_per_gpu.py [--batch 16]

- weights, gradients, AdamW's two moments and the EMA: 4 bytes each per parameter, all fp32 (exact); bf16
  autocast adds a bf16 copy of each weight while a step runs (2 bytes, autocast's weight cache);
- activations: the bytes autograd saves for backward in one training step (encode, the 2B decode,
  re-encode), counted with saved_tensors_hooks on the meta device (no memory, exact shapes) at batch 1 and
  scaled by the batch, attention probabilities excluded (flash attention keeps none); fp32, since the
  meta device has no autocast. Under bf16 autocast the saved tensors
  are a mix of bf16 and fp32; the ratio printed on the last line is measured on mnist-32-nano under CPU
  autocast and is the scale to apply.
The ckpt columns: with optim.activation_checkpointing only each transformer block's input is kept. Totals are
fp32 (states + batch x activations); docs/scaling.md applies the bf16 ratio.
"""

from __future__ import annotations

import argparse

import torch

from sphere_core.config import SphereConfig
from sphere_core.precision import bf16_autocast
from sphere_core.presets import PRESETS, get_preset
from sphere_core.train_step import make_train_state

GIB = 2**30


def saved_bytes(config: SphereConfig, device: str, *, checkpointing: bool, bf16: bool, batch: int = 1) -> int:
    """Bytes autograd keeps for backward in one forward of the objective on `batch` images, weights
    excluded; a storage saved twice (views, the same tensor for two ops) counts once. Attention
    probabilities (B, heads, N, N), which only the math SDPA kernel (the meta device's) keeps, are left out:
    CUDA's flash and memory-efficient kernels keep a (B, heads, N) log-sum-exp instead."""
    torch.manual_seed(0)
    state = make_train_state(config, device=device)
    state.model.set_activation_checkpointing(checkpointing)
    weights = {p.untyped_storage()._cdata for p in state.model.parameters()}
    m = config.model
    x = torch.zeros(batch, m.channels, m.image_size, m.image_size, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device) if m.conditional else None
    attention = (m.num_tokens, m.num_tokens)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in weights and not (t.dim() == 4 and tuple(t.shape[-2:]) == attention):
            seen[storage._cdata] = storage.nbytes()
        return t

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        bf16_autocast(torch.device(device), bf16),
    ):
        state.objective(x, y, generator=None)
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16, help="images per GPU and step")
    args = parser.parse_args()
    print(
        f"{'preset':24} {'params':>13} {'states GiB':>10} {'act/img GiB':>11} {'ckpt/img GiB':>12} "
        f"{'total @' + str(args.batch):>10} {'ckpt @' + str(args.batch):>10}"
    )
    for name in sorted(PRESETS):
        config = get_preset(name)
        params = sum(p.numel() for p in make_train_state(config, device="meta").model.parameters())
        states = params * (4 * 4 + 2) / GIB  # weights, grads, 2 moments, EMA (fp32) + autocast's bf16 copy
        act = saved_bytes(config, "meta", checkpointing=False, bf16=False) / GIB
        ckpt = saved_bytes(config, "meta", checkpointing=True, bf16=False) / GIB
        print(
            f"{name:24} {params:13,} {states:10.2f} {act:11.3f} {ckpt:12.3f} "
            f"{states + args.batch * act:10.1f} {states + args.batch * ckpt:10.1f}"
        )
    nano = get_preset("mnist-32-nano")
    ratio = saved_bytes(nano, "cpu", checkpointing=False, bf16=True, batch=8) / saved_bytes(
        nano, "cpu", checkpointing=False, bf16=False, batch=8
    )
    print(f"bf16 autocast / fp32 saved bytes, mnist-32-nano on the CPU: {ratio:.2f}")


if __name__ == "__main__":
    main()
