"""SphereEncoder: the encoder E, the decoder D and their label conditioning (method §2).

No loss and no sampling loop live here: `losses.py` and `sampling.py` build on encode/decode.
Every weight is set by one pass, `initialize_weights` (the official `Transformer.initialize_weights`).
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
from sphere_core.nn.init import xavier_uniform_flat_, xavier_uniform_fused_
from sphere_core.nn.layers import AdaLN, ModulatedLinear, SwiGLU
from sphere_core.nn.mixer import MixerBlock
from sphere_core.spherify import rand, spherify


class SphereEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.initialize_weights()

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute every transformer block's activations in backward instead of keeping them."""
        self.encoder.transformer.checkpointing = enabled
        self.decoder.transformer.checkpointing = enabled

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(N, d); the sphere has radius sqrt(N * d)."""
        return self.cfg.num_tokens, self.cfg.token_channels

    # --- initialisation ----------------------------------------------------------------------------

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Sets every parameter by the official rules (method §2, "Initialisation"): the global xavier pass
        first, then the overrides. Called on construction; a no-op on the meta device, so call it again
        after materialising such a model (`model.to_empty(device=...)`)."""
        if any(p.is_meta for p in self.parameters()):
            return
        for module in self.modules():  # official _basic_init: every Linear, mixers and heads included
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.RMSNorm) and module.weight is not None:
                nn.init.ones_(module.weight)
        for module in self.modules():
            if isinstance(module, SwiGLU):  # official w1 and w3 are one fused Linear(width, 2 * hidden)
                xavier_uniform_fused_(module.w1.weight, module.w3.weight)
            elif isinstance(module, MixerBlock):  # residual scalars: the mixer starts as its final norm
                nn.init.zeros_(module.alpha_token)
                nn.init.zeros_(module.alpha_channel)
            elif isinstance(module, AdaLN):  # AdaLN-Zero, in every block and in both heads
                nn.init.zeros_(module.proj.weight)
                nn.init.zeros_(module.proj.bias)
            elif isinstance(module, ModulatedLinear):  # official ffn.linear, zero whether conditional or not
                nn.init.zeros_(module.linear.weight)
                nn.init.zeros_(module.linear.bias)
        for table in (self.encoder.label_embed, self.decoder.label_embed):
            if table is not None:
                nn.init.normal_(table.weight, std=0.02)
        for transformer in (self.encoder.transformer, self.decoder.transformer):
            transformer.reset_pos_embed()  # the fixed sin-cos table, whatever was in memory before
        # Encoder input convs (official x_embedder): xavier on the flattened kernels, zero 1x1 bias.
        xavier_uniform_flat_(self.encoder.patch_embed.weight)
        xavier_uniform_flat_(self.encoder.patch_proj.weight)
        nn.init.zeros_(self.encoder.patch_proj.bias)  # type: ignore[arg-type]  # bias=True, never None
        # Decoder input embedding (official x_embedder = latent_proj + mixer): N(0, 1) for every Linear;
        # the mixer's final RMSNorm rescales whatever comes out.
        for module in (self.decoder.latent_proj, *self.decoder.mixer.modules()):
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=1.0)
                nn.init.zeros_(module.bias)
        # Pixel-head convs start near zero (gain 0.01): with the zeroed head Linear, D starts at tanh(0).
        for module in self.decoder.head.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                xavier_uniform_flat_(module.weight, gain=0.01)
                nn.init.zeros_(module.bias)  # type: ignore[arg-type]  # bias=True, never None

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
