"""Checkpoints as plain data: a directory of state_dicts and JSON, never pickled classes.

    model.pt    SphereEncoder state_dict (raw weights, the model's dtype)
    ema.pt      fp32 EMA state_dict
    optim.pt    AdamW state_dict (param groups carry lr_scale and name)
    config.json SphereConfig.to_dict()
    critic.pt, critic_optim.pt   the adversarial term's critic and its Adam (only when loss.adversarial > 0)
    step.json   {"format": 2, "step": optimiser steps done, "extra": caller's JSON, e.g. a data cursor,
                 "files": {name: {"bytes": size, "sha256": digest} for every file above}}
Written to a temporary sibling directory and renamed into place, so a reader never sees a half-written
checkpoint (when one is replaced, the path is missing for the instant between two renames). A copy can still
be cut short or damaged on its way through object storage: every load checks the files it reads against
step.json and names the first that differs (`CorruptCheckpoint`), so a caller can fall back to an older one.
Format 1 (before checksums) still loads, unchecked. Loading needs only sphere_core and uses
torch.load(weights_only=True).
"""

from __future__ import annotations

import hashlib
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

FORMAT_VERSION = 2
CHECKED_FROM_FORMAT = 2  # format 1 has no checksums
WEIGHT_FILES = ("model.pt", "ema.pt", "optim.pt")
CRITIC_FILES = ("critic.pt", "critic_optim.pt")


class CorruptCheckpoint(ValueError):
    """A checkpoint whose files are missing, cut short or changed since it was written: one line naming
    the directory and the file."""


def file_digest(path: Path) -> dict[str, int | str]:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"bytes": path.stat().st_size, "sha256": sha.hexdigest()}


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
        names = [*WEIGHT_FILES, "config.json"]
        if state.critic is not None:
            torch.save(state.critic.raw.state_dict(), tmp / "critic.pt")
            torch.save(state.critic.optimizer.state_dict(), tmp / "critic_optim.pt")
            names += CRITIC_FILES
        (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        files = {name: file_digest(tmp / name) for name in names}
        step = {"format": FORMAT_VERSION, "step": state.step, "extra": extra or {}, "files": files}
        (tmp / "step.json").write_text(json.dumps(step, indent=2))
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
    critic: dict[str, torch.Tensor] | None = None  # with critic_optimizer_state, when the run had a critic
    critic_optimizer_state: dict[str, Any] | None = None


def verify_checkpoint(directory: str | Path, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """step.json, after checking `names` (default: every file it lists) against their recorded size and
    sha256. Raises CorruptCheckpoint naming the first file that is missing or differs."""
    path = Path(directory)
    try:
        step = json.loads((path / "step.json").read_text())
    except (OSError, ValueError) as exc:
        raise CorruptCheckpoint(f"{path}: step.json unreadable ({type(exc).__name__})") from None
    if not isinstance(step, dict) or step.get("format") not in range(1, FORMAT_VERSION + 1):
        found = step.get("format") if isinstance(step, dict) else None
        raise CorruptCheckpoint(f"{path}: checkpoint format {found!r}, expected 1..{FORMAT_VERSION}")
    if step["format"] < CHECKED_FROM_FORMAT:
        return step
    recorded: dict[str, dict[str, Any]] = step.get("files", {})
    for name in names if names is not None else tuple(recorded):
        expected = recorded.get(name)
        if expected is None:
            raise CorruptCheckpoint(f"{path}: step.json records no checksum for {name}")
        if not (path / name).is_file():
            raise CorruptCheckpoint(f"{path}: {name} is missing (step {step.get('step')})")
        found = file_digest(path / name)
        if found != expected:
            what = (
                f"{found['bytes']:,} bytes, expected {expected['bytes']:,}"
                if found["bytes"] != expected["bytes"]
                else "its sha256 differs from the one recorded"
            )
            raise CorruptCheckpoint(f"{path}: {name} is damaged: {what} (step {step.get('step')})")
    return step


def load_checkpoint(directory: str | Path, *, device: torch.device | str = "cpu") -> LoadedCheckpoint:
    """Everything a resume needs, after `verify_checkpoint` of every file."""
    path = Path(directory)
    step = verify_checkpoint(path, (*WEIGHT_FILES, "config.json"))
    has_critic = "critic.pt" in step.get("files", {})
    if has_critic:
        verify_checkpoint(path, CRITIC_FILES)

    def load(name: str) -> Any:
        return torch.load(path / name, map_location=device, weights_only=True)

    return LoadedCheckpoint(
        config=SphereConfig.from_dict(json.loads((path / "config.json").read_text())),
        model=load("model.pt"),
        ema=load("ema.pt"),
        optimizer_state=load("optim.pt"),
        step=int(step["step"]),
        extra=step["extra"],
        critic=load("critic.pt") if has_critic else None,
        critic_optimizer_state=load("critic_optim.pt") if has_critic else None,
    )


def restore(state: TrainState, loaded: LoadedCheckpoint) -> None:
    """Loads weights, EMA, optimizer moments, the critic and the step counter into a fresh `state`
    (resume). A checkpoint without a critic leaves a fresh one: the adversarial term was turned on later."""
    state.model.load_state_dict(loaded.model)
    state.ema.load_state_dict(loaded.ema)
    state.optimizer.load_state_dict(loaded.optimizer_state)
    if state.critic is not None and loaded.critic is not None and loaded.critic_optimizer_state is not None:
        state.critic.raw.load_state_dict(loaded.critic)
        state.critic.optimizer.load_state_dict(loaded.critic_optimizer_state)
    state.step = loaded.step


def load_model(
    directory: str | Path, *, use_ema: bool = True, device: torch.device | str = "cpu"
) -> SphereEncoder:
    """The network for inference (eval mode): EMA weights by default, else the raw training weights."""
    path = Path(directory)
    weights_file = "ema.pt" if use_ema else "model.pt"
    verify_checkpoint(path, (weights_file, "config.json"))
    config = SphereConfig.from_dict(json.loads((path / "config.json").read_text()))
    model = build_model(config.model, device=device)
    weights = torch.load(path / weights_file, map_location=device, weights_only=True)
    model.load_state_dict(weights)
    return model.eval()
