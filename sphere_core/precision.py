"""bf16 autocast as one switch (`OptimConfig.bf16_autocast`), shared by training and sampling."""

from __future__ import annotations

import contextlib

import torch


def bf16_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[object]:
    """torch.autocast to bf16 on `device`'s type when enabled, else a no-op: weights stay fp32 either way."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
