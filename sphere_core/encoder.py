"""Encoder E(x, y) -> raw latent z (B, N, d) (method §2).

Conv2d patch embedding (no bias) -> 1x1 Conv2d -> tokens -> + sin-cos pos emb -> ViT blocks ->
ModulatedLinear(width -> d) -> latent MLP-Mixer over (N, d) ending in RMSNorm(d). The global
spherify projection f is applied by callers, never here.
"""

from __future__ import annotations

import torch
from torch import nn

from sphere_core.config import VIT_SIZES, ModelConfig
from sphere_core.nn.layers import ModulatedLinear, label_embedding
from sphere_core.nn.mixer import MLPMixer
from sphere_core.nn.transformer import Transformer


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        width, depth, heads = VIT_SIZES[cfg.encoder_size]
        cond_width = width if cfg.conditional else None
        p = cfg.patch_size
        self.width = width
        self.label_embed = label_embedding(cfg.num_classes, width) if cfg.conditional else None
        self.patch_embed = nn.Conv2d(cfg.channels, width, kernel_size=p, stride=p, bias=False)
        self.patch_proj = nn.Conv2d(width, width, kernel_size=1)
        self.transformer = Transformer(
            width, depth, heads, grid=cfg.grid_size, rope_theta=cfg.rope_theta, cond_width=cond_width
        )
        self.head = ModulatedLinear(width, cfg.token_channels, cond_width=cond_width)
        self.mixer = MLPMixer(
            cfg.num_tokens, cfg.token_channels, cfg.encoder_mixer_depth, affine_norm=cfg.affine_latent_mixer
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) in [-1, 1]; c: (B, width) condition or None -> z: (B, N, d)."""
        tokens = self.patch_proj(self.patch_embed(x)).flatten(2).transpose(1, 2)  # (B, N, width)
        h = self.transformer(tokens, c)
        # fp32 whatever the autocast: the sphere's noise is drawn and added at z's dtype, and bf16 (8-bit
        # mantissa, an ulp of 2^-7 at |v| ~ 1) would round away the small-noise offsets.
        return self.mixer(self.head(h, c)).float()  # (B, N, d)
