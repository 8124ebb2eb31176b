"""SphereEncoder: the encoder E, the decoder D and their label conditioning (spec section 2).

No loss and no sampling loop live here: `losses.py` and `sampling.py` build on encode/decode.
Conditioning: encoder and decoder each own a (K+1) x width label table, row K = null class. A caller
may pass `cond` (e.g. interpolated embeddings) instead of labels `y`. Unconditional models
(num_classes == 0) ignore both.
"""

from __future__ import annotations

import torch
from torch import nn

from sphere_core.config import ModelConfig
from sphere_core.decoder import Decoder
from sphere_core.encoder import Encoder
from sphere_core.spherify import rand, spherify


class SphereEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(N, d); the sphere has radius sqrt(N * d)."""
        return self.cfg.num_tokens, self.cfg.token_channels

    # --- conditioning ---------------------------------------------------------------------------

    def null_labels(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.full((batch,), self.cfg.num_classes, dtype=torch.long, device=device)

    def drop_labels(self, y: torch.Tensor, p: float, *, generator: torch.Generator | None) -> torch.Tensor:
        """Replaces each label by the null class with probability p (training-time CFG dropout)."""
        if not self.cfg.conditional or p <= 0:
            return y
        dropped = rand(tuple(y.shape), generator=generator, device=y.device) < p
        return torch.where(dropped, torch.full_like(y, self.cfg.num_classes), y)

    def encoder_condition(self, y: torch.Tensor) -> torch.Tensor | None:
        """Label embedding (B, encoder width), or None for an unconditional model."""
        table = self.encoder.label_embed
        return None if table is None else table(y)

    def decoder_condition(self, y: torch.Tensor) -> torch.Tensor | None:
        table = self.decoder.label_embed
        return None if table is None else table(y)

    def _resolve(
        self,
        y: torch.Tensor | None,
        cond: torch.Tensor | None,
        batch: int,
        device: torch.device,
        *,
        enc: bool,
    ) -> torch.Tensor | None:
        """The condition a network sees: `cond` if given, else the embedding of y (null class if None)."""
        if not self.cfg.conditional:
            return None
        if cond is not None:
            return cond
        labels = self.null_labels(batch, device) if y is None else y
        return self.encoder_condition(labels) if enc else self.decoder_condition(labels)

    # --- the two networks -----------------------------------------------------------------------

    def encode(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, C, H, W) in [-1, 1] -> raw z: (B, N, d); apply spherify for the sphere latent v."""
        return self.encoder(x, self._resolve(y, cond, x.shape[0], x.device, enc=True))

    def decode(
        self, v: torch.Tensor, y: torch.Tensor | None = None, *, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """v: (B, N, d) on the sphere -> x: (B, C, H, W) in [-1, 1]."""
        return self.decoder(v, self._resolve(y, cond, v.shape[0], v.device, enc=False))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Noise-free reconstruction D(f(E(x, y)), y)."""
        return self.decode(spherify(self.encode(x, y)), y)
