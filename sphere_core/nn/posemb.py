"""Position information for a g x g token grid (method §2): a fixed 2-D sin-cos absolute
embedding added once after the input embedding, and 2-D axial RoPE applied to q and k in every block.

Tokens are in raster order: token t sits at row t // g, column t % g.
Both are computed on the fly from the grid size (a few kB), so no buffer can be left uninitialised
when a model is built on the meta device and materialised later.
"""

from __future__ import annotations

import torch


def grid_coords(grid: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column index of every token, each (N,) float32."""
    idx = torch.arange(grid * grid, device=device, dtype=torch.float32)
    return torch.div(idx, grid, rounding_mode="floor"), idx % grid


def _frequencies(num: int, base: float, device: torch.device | None) -> torch.Tensor:
    return base ** (-torch.arange(num, device=device, dtype=torch.float32) / num)  # (num,)


def sincos_2d(grid: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed absolute embedding (N, dim): the first half of the channels encodes the column, the second
    half the row, each as [sin(pos * w), cos(pos * w)] with w = 10000^(-i / (dim/4)).

    Column first, as MAE's `get_2d_sincos_pos_embed` (which the official model uses): its meshgrid puts
    the width coordinate first, so the half it calls "h" is in fact the column index."""
    if dim % 4:
        raise ValueError(f"sin-cos 2-D embedding needs dim divisible by 4, got {dim}")
    omega = _frequencies(dim // 4, 10000.0, device)  # (dim/4,)
    rows, cols = grid_coords(grid, device)
    parts = []
    for pos in (cols, rows):
        angles = pos[:, None] * omega[None, :]  # (N, dim/4)
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1)  # (N, dim)


def rope_2d(grid: int, head_dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """Axial RoPE angles (N, head_dim/2): the first half of the rotation pairs turn with the row
    index, the second half with the column index, each at head_dim/4 frequencies theta^(-2i/(head_dim/2))."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    freqs = _frequencies(head_dim // 4, theta, device)  # (head_dim/4,)
    rows, cols = grid_coords(grid, device)
    return torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1)  # (N, head_dim/2)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotates consecutive channel pairs (x[2i], x[2i+1]) of x (B, H, N, head_dim) by angles (N, head_dim/2).
    Computed in float32: it is a rotation, so the norm of every pair is preserved. Each pair is read as one
    complex number and turned by one complex product: a single kernel forward and backward, where the pairs
    written out as real arithmetic took ten (2-3x the time of the whole rotation, measured on CPU)."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, H, N, head_dim/2)
    turns = torch.polar(torch.ones_like(angles), angles)  # (N, head_dim/2): cos + i sin
    return torch.view_as_real(pairs * turns).flatten(-2).to(x.dtype)
