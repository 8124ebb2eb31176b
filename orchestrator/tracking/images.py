"""Sample grids as the images a run logs and `generate` writes."""

from __future__ import annotations

import math

import torch
from PIL import Image


def grid_image(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> Image.Image:
    """images [B, C, H, W] in [0, 1] (C = 1 or 3) -> one PIL image, nrow per row (default ~square)."""
    images = images.detach().cpu()  # samples come from the model's device
    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    canvas = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i, image in enumerate(images.clamp(0, 1)):
        top, left = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        canvas[:, top : top + h, left : left + w] = image
    pixels = (canvas * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H, W, C)
    return Image.fromarray(pixels[..., 0] if c == 1 else pixels)


def side_by_side(blocks: list[torch.Tensor], columns: int) -> torch.Tensor:
    """Equal-length image sets (B, C, H, W), each laid out `columns` wide, joined left to right: row r of
    the result holds row r of every set. Returns images in grid order for `grid_image(nrow=columns * k)`."""
    rows = math.ceil(blocks[0].shape[0] / columns)
    padded = [torch.cat([b, b.new_ones(rows * columns - b.shape[0], *b.shape[1:])]) for b in blocks]
    return torch.cat([b.unflatten(0, (rows, columns)) for b in padded], dim=1).flatten(0, 1)
