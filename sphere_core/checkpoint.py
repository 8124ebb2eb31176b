"""Checkpoints as plain data: a directory of state_dicts and JSON, never pickled classes.

    model.pt    SphereEncoder state_dict (raw weights, the model's dtype)
    ema.pt      fp32 EMA state_dict
    optim.pt    AdamW state_dict (param groups carry lr_scale and name)
    step.json   {"format": 1, "step": optimiser steps done, "extra": caller's JSON, e.g. a data cursor}
    config.json SphereConfig.to_dict()
Written to a temporary sibling directory and renamed into place, so a reader never sees a half-written
checkpoint (when one is replaced, the path is missing for the instant between two renames).
Loading needs only sphere_core and uses torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sphere_core.config import SphereConfig
from sphere_core.model import SphereEncoder
from sphere_core.presets import build_model
from sphere_core.train_step import TrainState

FORMAT_VERSION = 1


def save_checkpoint(
    directory: str | Path, state: TrainState, config: SphereConfig, extra: dict[str, Any] | None = None
) -> Path:
    """Writes `state` to `directory` atomically, replacing an existing checkpoint there."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        torch.save(state.model.state_dict(), tmp / "model.pt")
        torch.save(state.ema.state_dict(), tmp / "ema.pt")
        torch.save(state.optimizer.state_dict(), tmp / "optim.pt")
        step = {"format": FORMAT_VERSION, "step": state.step, "extra": extra or {}}
        (tmp / "step.json").write_text(json.dumps(step, indent=2))
        (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _swap_into_place(tmp: Path, target: Path) -> None:
    """rename() cannot replace a non-empty directory: move the old one aside first, then delete it."""
    if not target.exists():
        tmp.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    old.rmdir()
    target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class LoadedCheckpoint:
    config: SphereConfig
    model: dict[str, torch.Tensor]  # state_dicts, on the requested device
    ema: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    step: int
    extra: dict[str, Any] = field(default_factory=dict)


def load_checkpoint(directory: str | Path, *, device: torch.device | str = "cpu") -> LoadedCheckpoint:
    path = Path(directory)
    step = json.loads((path / "step.json").read_text())
    if step.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {step.get('format')!r}, expected {FORMAT_VERSION}")

    def load(name: str) -> Any:
        return torch.load(path / name, map_location=device, weights_only=True)

    return LoadedCheckpoint(
        config=SphereConfig.from_dict(json.loads((path / "config.json").read_text())),
        model=load("model.pt"),
        ema=load("ema.pt"),
        optimizer_state=load("optim.pt"),
        step=int(step["step"]),
        extra=step["extra"],
    )


def restore(state: TrainState, loaded: LoadedCheckpoint) -> None:
    """Loads weights, EMA, optimizer moments and the step counter into a fresh `state` (resume)."""
    state.model.load_state_dict(loaded.model)
    state.ema.load_state_dict(loaded.ema)
    state.optimizer.load_state_dict(loaded.optimizer_state)
    state.step = loaded.step


def load_model(
    directory: str | Path, *, use_ema: bool = True, device: torch.device | str = "cpu"
) -> SphereEncoder:
    """The network for inference (eval mode): EMA weights by default, else the raw training weights."""
    path = Path(directory)
    config = SphereConfig.from_dict(json.loads((path / "config.json").read_text()))
    model = build_model(config.model, device=device)
    weights = torch.load(path / ("ema.pt" if use_ema else "model.pt"), map_location=device, weights_only=True)
    model.load_state_dict(weights)
    return model.eval()
