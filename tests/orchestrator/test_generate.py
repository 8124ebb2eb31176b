"""The sample grid's layout (several step counts side by side, a row per class), and drawing it from a
local checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from orchestrator.generate import main
from orchestrator.tracking.images import side_by_side
from sphere_core.checkpoint import save_checkpoint
from tests.sphere_core.tiny import CONFIG, fresh_state


def test_side_by_side_puts_row_r_of_every_set_on_row_r() -> None:
    one_step = torch.arange(6.0).view(6, 1, 1, 1)  # 3 classes x 2 samples, row-major
    four_step = one_step + 100
    grid = side_by_side([one_step, four_step], columns=2).flatten().tolist()
    assert grid == [0, 1, 100, 101, 2, 3, 102, 103, 4, 5, 104, 105]


def test_side_by_side_pads_a_short_last_row_with_white() -> None:
    images = torch.zeros(3, 1, 2, 2)
    grid = side_by_side([images], columns=2)
    assert grid.shape == (4, 1, 2, 2) and torch.equal(grid[3], torch.ones(1, 2, 2))


def test_a_local_checkpoint_directory_samples_without_a_tracking_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    directory = save_checkpoint(tmp_path / "ckpt", fresh_state(), CONFIG)
    out = tmp_path / "rows.png"
    assert main(["--model", str(directory), "--per-class", "2", "--steps", "1", "2", "--out", str(out)]) == 0
    with Image.open(out) as grid:  # its layout: the side_by_side tests above
        assert grid.format == "PNG" and min(grid.size) > CONFIG.model.image_size
        fp32 = grid.copy()
    argv = ["--model", str(directory), "--per-class", "2", "--steps", "1", "2", "--out", str(out)]
    assert main([*argv, "--bf16-autocast"]) == 0
    with Image.open(out) as bf16:  # the same grid, drawn in training's bf16 precision
        assert bf16.size == fp32.size


def test_every_sampling_knob_is_a_flag_named_after_its_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = save_checkpoint(tmp_path / "ckpt", fresh_state(), CONFIG)
    out = tmp_path / "decay.png"
    knobs = ["--schedule", "decay", "--noise", "independent", "--noise-scale", "0.5", "--alpha-max-deg", "70"]
    assert main(["--model", str(directory), "--steps", "3", "--out", str(out), *knobs]) == 0
    assert main(["--model", str(directory), "--out", str(out), "--alpha-max-deg", "95"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --alpha-max-deg: 95.0 must be in (0, 90), or null"]
