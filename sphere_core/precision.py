"""bf16 autocast as one switch (`OptimConfig.bf16_autocast`), shared by training and sampling; and whether a
device does bf16 in hardware (the frozen feature networks' `auto` precision)."""

from __future__ import annotations

import contextlib

import torch


def bf16_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[object]:
    """torch.autocast to bf16 on `device`'s type when enabled, else a no-op: weights stay fp32 either way."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or
    AMX (where oneDNN's bf16 convolutions run ~2x faster than fp32; elsewhere they are emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False
