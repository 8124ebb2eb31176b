from __future__ import annotations

import torch

from orchestrator.tracking.images import grid_image


def test_grid_image_tiles_images_row_major() -> None:
    images = torch.zeros(5, 1, 4, 4)
    images[4] = 1.0  # the fifth image is white: second row, second column of a 3-wide grid
    grid = grid_image(images, pad=1)
    assert grid.size == (3 * 5 + 1, 2 * 5 + 1) and grid.mode == "L"
    assert grid.getpixel((1 + 5 + 1, 1 + 5 + 1)) == 255 and grid.getpixel((1, 1)) == 0
    assert grid_image(torch.rand(4, 3, 4, 4)).mode == "RGB"
