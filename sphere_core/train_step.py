"""One optimiser step: forward and backward (optionally under bf16 autocast, optionally over micro-batches),
clip, LR, AdamW, EMA; then, with the adversarial term on, one step of the critic on the same batch.

Knows nothing of ranks, logging or IO: the orchestrator may wrap `TrainState.objective` in DDP
(Ray Train's prepare_model) and keeps `TrainState.model` as the raw network for EMA and checkpoints.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sphere_core.adversarial import Critic, hinge_critic_loss, make_critic, r1_penalty
from sphere_core.config import OptimConfig, SphereConfig
from sphere_core.losses import LossOutput, SphereObjective
from sphere_core.model import SphereEncoder
from sphere_core.optim import build_optimizer, lr_at, make_ema, set_lr, update_ema
from sphere_core.perceptual import PerceptualLoss
from sphere_core.precision import bf16_autocast
from sphere_core.presets import build_model


@dataclass
class TrainState:
    objective: nn.Module  # SphereObjective, or its DDP wrapper; forward(x, y, *, generator) -> LossOutput
    model: SphereEncoder  # the raw network inside `objective` (EMA, state_dict, sampling)
    ema: SphereEncoder  # fp32 exponential moving average of `model`
    optimizer: torch.optim.Optimizer
    step: int = 0  # optimiser steps done
    critic: Critic | None = None  # the adversarial term's PatchGAN (loss.adversarial > 0)
    adversarial_start_step: int = 0  # loss.adversarial_start_step: the term and the critic step start here


@dataclass(frozen=True)
class StepOutput:
    metrics: dict[str, float]  # loss, every loss term and diagnostic, lr, grad_norm (pre-clip)


def make_train_state(
    config: SphereConfig, *, device: torch.device | str, perceptual: PerceptualLoss | None = None
) -> TrainState:
    """A fresh model (built on `device`), its objective, fp32 EMA and AdamW, and the critic when the
    adversarial term is on; seed torch beforehand."""
    model = build_model(config.model, device=device)
    critic = None
    if config.loss.adversarial > 0:
        critic = make_critic(
            config.model.channels, config.discriminator, num_classes=config.model.num_classes, device=device
        )
    objective = SphereObjective(model, config.loss, config.noise, perceptual, critic.raw if critic else None)
    return TrainState(
        objective=objective,
        model=model,
        ema=make_ema(model),
        optimizer=build_optimizer(model, config.optim),
        critic=critic,
        adversarial_start_step=config.loss.adversarial_start_step,
    )


LabelledImages = tuple[torch.Tensor, torch.Tensor | None]  # (B, C, H, W) images and their (B,) labels or None


def train_step(
    state: TrainState,
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    optim: OptimConfig,
    global_batch: int,
    generator: torch.Generator | None,
) -> StepOutput:
    """x: (B, C, H, W) in [-1, 1]; y: (B,) labels or None. `global_batch` (over all ranks) scales the LR.

    With optim.grad_accum_steps = k the batch runs as k micro-batches of B/k whose gradients add up to the
    batch's (each loss is a mean over its samples, so each is weighted 1/k); metrics are their means.
    """
    lr = lr_at(state.step, optim, global_batch)
    set_lr(state.optimizer, lr)
    state.objective.train()
    state.model.set_activation_checkpointing(optim.activation_checkpointing)
    state.optimizer.zero_grad(set_to_none=True)
    k = optim.grad_accum_steps
    if x.shape[0] % k:
        raise ValueError(f"optim.grad_accum_steps: {k} does not divide the batch of {x.shape[0]}")
    ys = [None] * k if y is None else y.chunk(k)
    adversarial = state.critic is not None and state.step >= state.adversarial_start_step
    sums: dict[str, torch.Tensor] = {}
    fakes: list[LabelledImages] = []
    for i, (x_micro, y_micro) in enumerate(zip(x.chunk(k), ys, strict=True)):
        with _grad_sync(state.objective, i == k - 1):
            with bf16_autocast(x.device, optim.bf16_autocast):
                out: LossOutput = state.objective(
                    x_micro, y_micro, generator=generator, adversarial=adversarial
                )
            (out.total / k).backward()
        for name, value in {"loss": out.total.detach(), **out.terms}.items():
            sums[name] = sums.get(name, 0) + value.float() / k
        if out.fakes is not None:
            fakes.append((out.fakes, out.fake_labels))
    params = [p for p in state.model.parameters() if p.requires_grad]
    max_norm = optim.grad_clip if optim.grad_clip > 0 else math.inf  # <= 0 disables clipping
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    state.optimizer.step()
    update_ema(state.ema, state.model, optim.ema_decay)
    if state.critic is not None and fakes:
        reals = list(zip(x.chunk(k), ys, strict=True))
        sums |= _critic_step(state.critic, reals, fakes, lr=lr, bf16=optim.bf16_autocast, step=state.step)
    state.step += 1

    names = ["loss", "grad_norm", *(n for n in sums if n != "loss")]
    tensors = [sums["loss"], grad_norm, *(sums[n] for n in names[2:])]
    values = torch.stack([t.float() for t in tensors]).tolist()  # one device sync for all metrics
    return StepOutput(metrics={**dict(zip(names, values, strict=True)), "lr": lr})


def _critic_step(
    critic: Critic,
    reals: list[LabelledImages],
    fakes: list[LabelledImages],
    *,
    lr: float,
    bf16: bool,
    step: int,
) -> dict[str, torch.Tensor]:
    """One hinge step of the critic on the batch's real images and the decodes the generator step made,
    per micro-batch, with R1 on the steps `step` says (lazy R1); returns its loss and mean logits (means over
    the micro-batches)."""
    r1_weight = 0.5 * critic.r1_gamma * critic.r1_every if step % critic.r1_every == 0 else 0.0
    set_lr(critic.optimizer, lr)
    critic.optimizer.zero_grad(set_to_none=True)
    k = len(fakes)
    sums: dict[str, torch.Tensor] = {}
    for i, ((real, real_labels), (fake, fake_labels)) in enumerate(zip(reals, fakes, strict=True)):
        labels = None if real_labels is None or fake_labels is None else torch.cat([real_labels, fake_labels])
        if r1_weight > 0:
            real = real.detach().requires_grad_(True)
        with _grad_sync(critic.network, i == k - 1):
            with bf16_autocast(real.device, bf16):
                logits = critic.network(torch.cat([real, fake]), labels).float()
            real_logits, fake_logits = logits.split([real.shape[0], fake.shape[0]])
            loss = hinge_critic_loss(real_logits, fake_logits)
            terms = {"adv_real_logit": real_logits.mean(), "adv_fake_logit": fake_logits.mean()}
            if r1_weight > 0:
                terms["adv_r1"] = r1_penalty(real_logits, real)
                loss = loss + r1_weight * terms["adv_r1"]
            (loss / k).backward()
        for name, value in {"adv_d": loss, **terms}.items():
            sums[name] = sums.get(name, 0) + value.detach() / k
    critic.optimizer.step()
    return sums


def _grad_sync(module: nn.Module, last: bool) -> contextlib.AbstractContextManager[object]:
    """DDP all-reduces gradients in every backward unless told not to: only the last micro-batch syncs."""
    if last or not isinstance(module, DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()
