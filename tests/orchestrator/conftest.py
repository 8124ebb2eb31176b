"""Fixtures shared by the orchestrator's tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator.config.loader import load_sweep
from orchestrator.config.schema import EvalConfig, ExperimentConfig
from orchestrator.data.builtin import builtin_sources
from orchestrator.data.writer import write_dataset

SMOKE = Path(__file__).resolve().parents[2] / "sweeps" / "smoke.yaml"


@pytest.fixture(params=["builtin", "shards"])
def digits_cfg(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ExperimentConfig:
    """The smoke config scored by the digits classifier (loads in ~1 s) at a small n, cache in tmp; the
    real images are the package's digits splits, or the same splits read back from shards."""
    monkeypatch.setenv("SPHERE_EVAL_CACHE", str(tmp_path / "eval-cache"))
    cfg = load_sweep(SMOKE).experiment
    if request.param == "builtin":
        return dataclasses.replace(cfg, eval=EvalConfig(dataset="digits", num_images=32, seed=3))
    for split, source in builtin_sources("digits", cfg.model.image_size).items():
        write_dataset(source, f"file://{tmp_path}/digits/{split}", shard_size=300, progress=False)
    eval_spec = EvalConfig(
        dataset="digits", reference=f"file://{tmp_path}/digits/test", num_images=32, seed=3
    )
    data = dataclasses.replace(cfg.data, url=f"file://{tmp_path}/digits/train")  # the floor's source
    return dataclasses.replace(cfg, data=data, eval=eval_spec)
