"""Norms, the SwiGLU FFN and the AdaLN pieces shared by the encoder and decoder (method §2).

AdaLN-Zero: a condition c (a label embedding) goes through SiLU -> Linear(width, k*width) whose
weights start at zero, so every modulated layer starts as the unmodulated one. Unconditional models
build no AdaLN module at all (`cond_width=None`).

These modules keep PyTorch's default init: every rule of the official init (zeroed AdaLN and heads,
N(0, 0.02) label tables, ...) lives in one pass, `SphereEncoder.initialize_weights`.
"""

from __future__ import annotations

import torch
from torch import nn

NORM_EPS = 1e-6  # every RMSNorm in the official model


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm computed in its input's dtype, the fp32 gain cast to it.

    Under bf16 autocast torch would otherwise take a slow path either way (torch 2.13): CPU autocast leaves
    rms_norm alone, and a bf16 input with an fp32 gain misses the fused kernel (layer_norm.cpp warns
    "Cannot dispatch to fused implementation"); CUDA autocast lists rms_norm as an fp32 op
    (autocast_mode.h), so every norm reads and writes fp32 activations. The fused kernel accumulates the
    mean square in fp32 whatever its dtype; only the output is rounded to bf16, as the next matmul would.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        device = x.device.type  # "meta" (shape checks) has no autocast at all
        if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):  # keeps CUDA autocast from upcasting to fp32
                return nn.functional.rms_norm(x, self.normalized_shape, weight, self.eps)
        return nn.functional.rms_norm(x, self.normalized_shape, weight, self.eps)


def rms_norm(dim: int, *, affine: bool = True) -> RMSNorm:
    return RMSNorm(dim, eps=NORM_EPS, elementwise_affine=affine)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x: (B, N, D); shift, scale: (B, D). scale is a residual (1 + scale) so zero means identity."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def label_embedding(num_classes: int, width: int) -> nn.Embedding:
    """(num_classes + 1) x width table; row num_classes is the null class used for CFG."""
    return nn.Embedding(num_classes + 1, width)


class AdaLN(nn.Module):
    """SiLU -> Linear(cond_width, chunks*width); returns `chunks` tensors (B, width)."""

    def __init__(self, cond_width: int, width: int, chunks: int) -> None:
        super().__init__()
        self.chunks = chunks
        self.proj = nn.Linear(cond_width, chunks * width)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.proj(nn.functional.silu(c)).chunk(self.chunks, dim=-1)


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x) with hidden = int(width * 8/3) (method §2)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        hidden = int(width * 8 / 3)
        self.w1 = nn.Linear(width, hidden)
        self.w3 = nn.Linear(width, hidden)
        self.w2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class ModulatedLinear(nn.Module):
    """The encoder's latent head and the projection that starts the decoder's pixel head (official `ffn`).

    Conditional: RMSNorm -> AdaLN shift/scale -> Linear. Unconditional: a plain Linear.
    """

    def __init__(self, width: int, out_features: int, *, cond_width: int | None) -> None:
        super().__init__()
        self.linear = nn.Linear(width, out_features)
        self.norm: nn.Module | None = None
        self.adaln: AdaLN | None = None
        if cond_width is not None:
            # The official norm keeps its learnable gain (nn.RMSNorm's default), unlike DiT's final layer.
            self.norm = rms_norm(width)
            self.adaln = AdaLN(cond_width, width, chunks=2)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, width); c: (B, cond_width) or None -> (B, N, out_features)."""
        if self.adaln is not None and self.norm is not None:
            if c is None:
                raise ValueError("a conditional ModulatedLinear needs a condition c")
            shift, scale = self.adaln(c)
            x = modulate(self.norm(x), shift, scale)
        return self.linear(x)
