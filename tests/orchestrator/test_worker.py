"""The worker's Ray-free pieces: per-rank noise seeds and the sample grids logged at eval cadence."""

from __future__ import annotations

from pathlib import Path

import torch

from orchestrator.config.loader import load_sweep
from orchestrator.worker import SAMPLE_GRID, noise_seed, sample_grids
from sphere_core.train_step import make_train_state

SMOKE = Path(__file__).resolve().parents[2] / "sweeps" / "smoke.yaml"


def test_noise_seeds_differ_by_rank_and_by_resume_step() -> None:
    seeds = {noise_seed(3, 2, rank, step) for rank in range(2) for step in (0, 10)}
    assert len(seeds) == 4
    assert noise_seed(3, 2, 1, 0) == (3 * 2 + 1) * 1_000_003  # run.seed * world_size + rank, as in DiT/EDM


def test_sample_grids_are_one_and_multi_step_from_the_same_noise_each_time() -> None:
    cfg = load_sweep(SMOKE).experiment
    torch.manual_seed(0)
    state = make_train_state(cfg.sphere, device="cpu")
    first, again = sample_grids(state, cfg), sample_grids(state, cfg)
    size = cfg.model.image_size
    assert set(first) == {"samples_1step", f"samples_{cfg.sampling.steps}step"}
    for name, images in first.items():
        assert images.shape == (SAMPLE_GRID, cfg.model.channels, size, size)
        assert images.min() >= 0.0 and images.max() <= 1.0
        assert torch.equal(images, again[name])  # grids at successive evals are comparable
