from __future__ import annotations

import pytest
import torch

from sphere_core.transforms import (
    center_crop,
    fit_square,
    hwc_to_chw,
    pad_to,
    random_hflip,
    resize,
    resize_shorter_side,
    to_signed_unit,
    to_uint8,
)


def test_uint8_maps_to_tanh_range_and_back() -> None:
    pixels = torch.arange(256, dtype=torch.uint8)
    x = to_signed_unit(pixels)
    assert x.dtype == torch.float32
    assert x[0] == -1.0 and x[-1] == 1.0 and x[128].item() == pytest.approx(1 / 255, abs=1e-6)
    assert torch.equal(to_uint8(x), pixels)
    with pytest.raises(ValueError, match="uint8"):
        to_signed_unit(x)


def test_hwc_to_chw_layouts() -> None:
    hwc = torch.arange(2 * 3 * 3).reshape(2, 3, 3)  # (H, W, C)
    chw = hwc_to_chw(hwc)
    assert chw.shape == (3, 2, 3) and chw[1, 0, 2] == hwc[0, 2, 1]
    assert hwc_to_chw(torch.zeros(5, 7)).shape == (1, 5, 7)


def test_pad_28_to_32_centers_the_image() -> None:
    image = torch.ones(1, 28, 28, dtype=torch.uint8)
    padded = pad_to(image, 32)
    assert padded.shape == (1, 32, 32)
    assert padded.sum() == 28 * 28 and padded[0, 2:30, 2:30].min() == 1 and padded[0, :2].max() == 0
    with pytest.raises(ValueError, match="larger"):
        pad_to(image, 16)


def test_center_crop_and_fit_square() -> None:
    image = torch.arange(6 * 10, dtype=torch.float32).reshape(1, 6, 10)
    assert torch.equal(center_crop(image, 4), image[:, 1:5, 3:7])
    assert resize_shorter_side(torch.zeros(3, 40, 80), 20).shape == (3, 20, 40)
    assert fit_square(torch.zeros(3, 40, 80, dtype=torch.uint8), 16).shape == (3, 16, 16)
    assert fit_square(torch.zeros(2, 3, 9, 7), 7).shape == (2, 3, 7, 7)


def test_resize_keeps_dtype_and_constant_images() -> None:
    flat = torch.full((1, 8, 8), 200, dtype=torch.uint8)
    up = resize(flat, (16, 16), mode="bilinear")
    assert up.dtype == torch.uint8 and up.shape == (1, 16, 16) and bool((up == 200).all())
    down = resize(torch.rand(2, 3, 64, 64), (8, 8))
    assert down.shape == (2, 3, 8, 8) and down.dtype == torch.float32


def test_random_hflip_is_per_sample_and_reproducible() -> None:
    images = torch.arange(64 * 2 * 3, dtype=torch.float32).reshape(64, 1, 2, 3)
    a = random_hflip(images, generator=torch.Generator().manual_seed(0))
    b = random_hflip(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    flipped = [bool(torch.equal(a[i], images[i].flip(-1))) for i in range(64)]
    kept = [bool(torch.equal(a[i], images[i])) for i in range(64)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # each sample either flipped or untouched
    assert 16 < sum(flipped) < 48
    assert torch.equal(random_hflip(images, generator=None, p=0.0), images)
