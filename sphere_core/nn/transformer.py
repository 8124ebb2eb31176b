"""The ViT trunk shared by the encoder and decoder (method §2).

Block: pre-norm RMSNorm, multi-head self-attention (qkv bias, SDPA, no qk-norm, 2-D axial RoPE on
q and k), SwiGLU FFN, and AdaLN-Zero shift/scale/gate around both. Without a condition the block
has no AdaLN module: gates are 1 and nothing is modulated.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sphere_core.nn.layers import AdaLN, SwiGLU, modulate, rms_norm
from sphere_core.nn.posemb import apply_rope, rope_2d, sincos_2d


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """x: (B, N, width); rope: (N, head_dim/2) angles."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, hd)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = nn.functional.scaled_dot_product_attention(q, k, v)  # (B, H, N, hd)
        return self.proj(out.transpose(1, 2).flatten(2))  # (B, N, width)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, *, cond_width: int | None) -> None:
        super().__init__()
        self.norm1 = rms_norm(width)
        self.attn = Attention(width, heads)
        self.norm2 = rms_norm(width)
        self.mlp = SwiGLU(width)
        # shift/scale/gate for attention and for the MLP; zero-init makes the block the identity.
        self.adaln = AdaLN(cond_width, width, chunks=6) if cond_width is not None else None

    def forward(self, x: torch.Tensor, rope: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, width); c: (B, cond_width) for conditional blocks."""
        if self.adaln is None:
            x = x + self.attn(self.norm1(x), rope)
            return x + self.mlp(self.norm2(x))
        if c is None:
            raise ValueError("a conditional block needs a condition c")
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaln(c)  # each (B, width)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a), rope)
        return x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class Transformer(nn.Module):
    """+ fixed 2-D sin-cos position embedding, then `depth` blocks over a grid x grid token map."""

    def __init__(
        self, width: int, depth: int, heads: int, *, grid: int, rope_theta: float, cond_width: int | None
    ) -> None:
        super().__init__()
        self.grid, self.head_dim, self.rope_theta = grid, width // heads, rope_theta
        # Frozen parameter, as in MAE/DiT: it lives in the state_dict and counts towards the model
        # card's parameter totals, but never trains. Filled by `reset_pos_embed` (skipped on meta).
        self.pos_embed = nn.Parameter(torch.empty(grid * grid, width), requires_grad=False)
        self.blocks = nn.ModuleList(Block(width, heads, cond_width=cond_width) for _ in range(depth))
        # Activation checkpointing (OptimConfig.activation_checkpointing): each block keeps only its input
        # and recomputes its activations in backward. Blocks draw no randomness, so the recompute is exact.
        self.checkpointing = False
        self.reset_pos_embed()

    def reset_pos_embed(self) -> None:
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(self.grid, self.pos_embed.shape[1], self.pos_embed.device))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, width) -> (B, N, width)."""
        x = x + self.pos_embed.to(x.dtype)
        rope = rope_2d(self.grid, self.head_dim, self.rope_theta, x.device)  # (N, head_dim/2)
        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, c, use_reentrant=False)
            else:
                x = block(x, rope, c)
        return x
