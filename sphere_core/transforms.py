"""Tensor-only image preprocessing: uint8 pixels in, float CHW in [-1, 1] out (pure torch, no PIL).

The decoder ends in tanh, so training images live in [-1, 1] (method §1.1). Geometry helpers work on
(C, H, W) or (B, C, H, W) tensors of any dtype; resampling happens in float and is rounded back for uint8.
Randomness (flips) comes only from an explicit torch.Generator so data order and augmentation replay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sphere_core.spherify import rand


def hwc_to_chw(image: torch.Tensor) -> torch.Tensor:
    """(H, W) or (H, W, C) -> (C, H, W); the layout PIL/numpy decoders produce."""
    if image.ndim == 2:
        return image.unsqueeze(0)
    if image.ndim != 3:
        raise ValueError(f"expected (H, W) or (H, W, C), got shape {tuple(image.shape)}")
    return image.permute(2, 0, 1).contiguous()


def to_signed_unit(image: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float32 in [-1, 1] (the tanh range of the decoder)."""
    if image.dtype != torch.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    return image.float().div(127.5).sub(1.0)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 in [0, 255], rounded and clamped (inverse of to_signed_unit)."""
    return image.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def pad_to(image: torch.Tensor, size: int, *, value: float = 0.0) -> torch.Tensor:
    """Center-pad the last two dims to (size, size), e.g. MNIST 28 -> 32 as for the paper's 32 px setting."""
    h, w = image.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} to {size}x{size}: image is larger")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(image, (left, size - w - left, top, size - h - top), value=value)


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Crop the central (size, size) window of the last two dims."""
    h, w = image.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot crop {h}x{w} to {size}x{size}: image is smaller")
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top : top + size, left : left + size]


def resize(image: torch.Tensor, size: tuple[int, int], *, mode: str = "bicubic") -> torch.Tensor:
    """Resample the last two dims to `size` (H, W), antialiased when shrinking; dtype is preserved."""
    batched = image if image.ndim == 4 else image.unsqueeze(0)  # (B, C, H, W)
    out = F.interpolate(batched.float(), size=size, mode=mode, align_corners=False, antialias=True)
    out = out.round().clamp(0, 255).to(torch.uint8) if image.dtype == torch.uint8 else out.to(image.dtype)
    return out if image.ndim == 4 else out.squeeze(0)


def resize_shorter_side(image: torch.Tensor, size: int, *, mode: str = "bicubic") -> torch.Tensor:
    """Scale so that min(H, W) == size, keeping the aspect ratio (ADM-style, before a center crop)."""
    h, w = image.shape[-2:]
    scale = size / min(h, w)
    target = (max(size, round(h * scale)), max(size, round(w * scale)))
    return image if target == (h, w) else resize(image, target, mode=mode)


def fit_square(image: torch.Tensor, size: int, *, mode: str = "bicubic") -> torch.Tensor:
    """Any (…, H, W) -> (…, size, size): shorter side to `size`, then center crop."""
    return center_crop(resize_shorter_side(image, size, mode=mode), size)


def random_hflip(images: torch.Tensor, *, generator: torch.Generator | None, p: float = 0.5) -> torch.Tensor:
    """Flip each image of a (B, C, H, W) batch left-right with probability p, drawn from `generator`."""
    flip = rand((images.shape[0],), generator=generator, device=images.device) < p  # (B,)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)
