"""Decoder D(v, y) -> image (B, C, H, W) in [-1, 1] (method §2).

Linear(d -> width) -> MLP-Mixer over (N, width) -> + sin-cos pos emb -> ViT blocks -> pixel head
("linear" at 256 px, "conv" for CIFAR) -> tanh. Weights are set by `SphereEncoder.initialize_weights`.
"""

from __future__ import annotations

import torch
from torch import nn

from sphere_core.config import VIT_SIZES, ModelConfig
from sphere_core.nn.layers import ModulatedLinear, label_embedding
from sphere_core.nn.mixer import MLPMixer
from sphere_core.nn.transformer import Transformer

CONV_HEAD_CHANNELS = 32  # official conv head width


def unpatchify(tokens: torch.Tensor, grid: int, patch: int, channels: int) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, g*p, g*p); each token holds its p x p patch as (p, p, C)."""
    x = tokens.reshape(tokens.shape[0], grid, grid, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(tokens.shape[0], channels, grid * patch, grid * patch)


class LinearPixelHead(nn.Module):
    """ModulatedLinear(width -> p*p*C) -> unpatchify -> Conv3x3 (reflect) -> tanh."""

    def __init__(self, width: int, cfg: ModelConfig, *, cond_width: int | None) -> None:
        super().__init__()
        self.grid, self.patch, self.channels = cfg.grid_size, cfg.patch_size, cfg.channels
        self.linear = ModulatedLinear(width, self.patch**2 * self.channels, cond_width=cond_width)
        self.smooth = nn.Conv2d(self.channels, self.channels, 3, padding=1, padding_mode="reflect")

    @property
    def last_layer(self) -> torch.Tensor:
        return self.smooth.weight

    def forward(self, h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        x = unpatchify(self.linear(h, c), self.grid, self.patch, self.channels)  # (B, C, H, W)
        return torch.tanh(self.smooth(x))


class ConvPixelHead(nn.Module):
    """ModulatedLinear(width -> 32) -> Conv3x3 (reflect) -> SiLU -> ConvTranspose2d(32 -> C, p+2, stride p,
    padding 1) -> tanh. The transposed conv maps the g x g token map to (g*p) x (g*p) pixels."""

    def __init__(self, width: int, cfg: ModelConfig, *, cond_width: int | None) -> None:
        super().__init__()
        self.grid, p = cfg.grid_size, cfg.patch_size
        self.linear = ModulatedLinear(width, CONV_HEAD_CHANNELS, cond_width=cond_width)
        self.conv = nn.Conv2d(CONV_HEAD_CHANNELS, CONV_HEAD_CHANNELS, 3, padding=1, padding_mode="reflect")
        self.up = nn.ConvTranspose2d(CONV_HEAD_CHANNELS, cfg.channels, kernel_size=p + 2, stride=p, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.up.weight

    def forward(self, h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        feats = self.linear(h, c).transpose(1, 2).unflatten(2, (self.grid, self.grid))  # (B, 32, g, g)
        return torch.tanh(self.up(nn.functional.silu(self.conv(feats))))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        width, depth, heads = VIT_SIZES[cfg.decoder_size]
        cond_width = width if cfg.conditional else None
        self.width = width
        self.label_embed = label_embedding(cfg.num_classes, width) if cfg.conditional else None
        self.latent_proj = nn.Linear(cfg.token_channels, width)
        self.mixer = MLPMixer(
            cfg.num_tokens, width, cfg.decoder_mixer_depth, affine_norm=cfg.affine_latent_mixer
        )
        self.transformer = Transformer(
            width, depth, heads, grid=cfg.grid_size, rope_theta=cfg.rope_theta, cond_width=cond_width
        )
        head = LinearPixelHead if cfg.pixel_head == "linear" else ConvPixelHead
        self.head = head(width, cfg, cond_width=cond_width)

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight the adversarial term's adaptive weight balances gradients at (VQGAN's last layer)."""
        return self.head.last_layer

    def forward(self, v: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """v: (B, N, d) on the sphere; c: (B, width) or None -> x: (B, C, H, W) in [-1, 1]."""
        h = self.mixer(self.latent_proj(v))  # (B, N, width)
        return self.head(self.transformer(h, c), c)
