"""The latent MLP-Mixer at the end of the encoder and the start of the decoder (method §2).

Each MixerBlock mixes across tokens, then across channels, each through a residual whose learnable
scalar (alpha_1, alpha_2) starts at 0, so at init the mixer is just its final per-token RMSNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from sphere_core.nn.layers import rms_norm


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))


class MixerBlock(nn.Module):
    def __init__(self, num_tokens: int, channels: int) -> None:
        super().__init__()
        self.norm_token = rms_norm(channels)
        self.token_mix = _mlp(num_tokens, num_tokens)  # Linear(N, N) -> SiLU -> Linear(N, N)
        self.alpha_token = nn.Parameter(torch.zeros(()))
        self.norm_channel = rms_norm(channels)
        self.channel_mix = _mlp(channels, 2 * channels)  # Linear(d, 2d) -> SiLU -> Linear(2d, d)
        self.alpha_channel = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, channels)."""
        mixed = self.token_mix(self.norm_token(x).transpose(1, 2)).transpose(1, 2)  # mix along N
        x = x + self.alpha_token * mixed
        return x + self.alpha_channel * self.channel_mix(self.norm_channel(x))


class MLPMixer(nn.Module):
    """`depth` MixerBlocks over (N tokens, channels), ending in a per-token RMSNorm."""

    def __init__(self, num_tokens: int, channels: int, depth: int, *, affine_norm: bool = True) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(MixerBlock(num_tokens, channels) for _ in range(depth)))
        self.norm = rms_norm(channels, affine=affine_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(x))
