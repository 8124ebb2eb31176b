"""The sample grid's layout: several step counts side by side, a row per class."""

from __future__ import annotations

import torch

from orchestrator.generate import side_by_side


def test_side_by_side_puts_row_r_of_every_set_on_row_r() -> None:
    one_step = torch.arange(6.0).view(6, 1, 1, 1)  # 3 classes x 2 samples, row-major
    four_step = one_step + 100
    grid = side_by_side([one_step, four_step], columns=2).flatten().tolist()
    assert grid == [0, 1, 100, 101, 2, 3, 102, 103, 4, 5, 104, 105]


def test_side_by_side_pads_a_short_last_row_with_white() -> None:
    images = torch.zeros(3, 1, 2, 2)
    grid = side_by_side([images], columns=2)
    assert grid.shape == (4, 1, 2, 2) and torch.equal(grid[3], torch.ones(1, 2, 2))
