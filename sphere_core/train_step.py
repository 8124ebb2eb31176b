"""One optimiser step: forward (optionally under bf16 autocast), backward, clip, LR, AdamW, EMA.

Knows nothing of ranks, logging or IO: the orchestrator may wrap `TrainState.objective` in DDP
(Ray Train's prepare_model) and keeps `TrainState.model` as the raw network for EMA and checkpoints.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from sphere_core.config import OptimConfig, SphereConfig
from sphere_core.losses import LossOutput, SphereObjective
from sphere_core.model import SphereEncoder
from sphere_core.optim import build_optimizer, lr_at, make_ema, set_lr, update_ema
from sphere_core.perceptual import PerceptualLoss
from sphere_core.presets import build_model


@dataclass
class TrainState:
    objective: nn.Module  # SphereObjective, or its DDP wrapper; forward(x, y, *, generator) -> LossOutput
    model: SphereEncoder  # the raw network inside `objective` (EMA, state_dict, sampling)
    ema: SphereEncoder  # fp32 exponential moving average of `model`
    optimizer: torch.optim.Optimizer
    step: int = 0  # optimiser steps done


@dataclass(frozen=True)
class StepOutput:
    metrics: dict[str, float]  # loss, every loss term and diagnostic, lr, grad_norm (pre-clip)


def make_train_state(
    config: SphereConfig, *, device: torch.device | str, perceptual: PerceptualLoss | None = None
) -> TrainState:
    """A fresh model (built on `device`), its objective, fp32 EMA and AdamW; seed torch beforehand."""
    model = build_model(config.model, device=device)
    objective = SphereObjective(model, config.loss, config.noise, perceptual)
    return TrainState(
        objective=objective, model=model, ema=make_ema(model), optimizer=build_optimizer(model, config.optim)
    )


def train_step(
    state: TrainState,
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    optim: OptimConfig,
    global_batch: int,
    generator: torch.Generator | None,
) -> StepOutput:
    """x: (B, C, H, W) in [-1, 1]; y: (B,) labels or None. `global_batch` (over all ranks) scales the LR."""
    lr = lr_at(state.step, optim, global_batch)
    set_lr(state.optimizer, lr)
    state.objective.train()
    autocast = (
        torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)
        if optim.bf16_autocast
        else contextlib.nullcontext()
    )
    with autocast:
        out: LossOutput = state.objective(x, y, generator=generator)
    state.optimizer.zero_grad(set_to_none=True)
    out.total.backward()
    params = [p for p in state.model.parameters() if p.requires_grad]
    max_norm = optim.grad_clip if optim.grad_clip > 0 else math.inf  # <= 0 disables clipping
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    state.optimizer.step()
    update_ema(state.ema, state.model, optim.ema_decay)
    state.step += 1

    names = ["loss", "grad_norm", *out.terms]
    tensors = [out.total.detach(), grad_norm, *out.terms.values()]
    values = torch.stack([t.float() for t in tensors]).tolist()  # one device sync for all metrics
    return StepOutput(metrics={**dict(zip(names, values, strict=True)), "lr": lr})
