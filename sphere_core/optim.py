"""AdamW parameter groups, the learning-rate schedule and the fp32 EMA (method §4).

Official recipe: AdamW(betas 0.9/0.95, weight decay 0); no decay for parameters with ndim < 2, for names
containing ln/bias/embedding/norm/embed/token, and for every decoder parameter (`decays` states what that
rule does on the official names, in ours); encoder LR x 0.1;
LR 1e-4 (min 1e-6) at global batch 256, scaled linearly with the real global batch; linear warmup then
cosine decay to min_lr (`lr_at`). Every group carries `lr_scale`, so a step sets lr = lr_at(step) * lr_scale.
"""

from __future__ import annotations

import copy
import math
from typing import Any, TypeVar

import torch
from torch import nn

from sphere_core.config import OptimConfig

# Official train.py excludes names containing ln/bias/embedding/norm/embed/token/decoder. On the official
# names only bias, norm, embed and decoder ever match: "ln" and "token" hit nothing ("adaLN_modulation"
# is upper case, the token mixer is `out.blocks.i.tok_mixer.mix`), "embedding" only the label table
# (`y_embedder.embedding_table`, caught by "embed" too). So the token-mixing weights DO decay, and both
# encoder input convs (`x_embedder.0`, `x_embedder.1`) do not. Our names differ, so the rule is kept by
# effect: the keys that matter, plus our 1x1 input conv, whose name lacks the official "embed".
NO_DECAY_KEYS = ("bias", "norm", "embed")  # biases, RMSNorm gains, label tables, patch_embed
INPUT_CONVS = ("encoder.patch_embed.", "encoder.patch_proj.")  # official encoder.x_embedder.0 / .1
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies (encoder and other non-decoder parameters only)."""
    if name.startswith("decoder."):
        return False  # official: the whole decoder is decay-free
    if param.ndim < 2 or name.startswith(INPUT_CONVS):
        return False
    return not any(key in name for key in NO_DECAY_KEYS)


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """Trainable parameters of a SphereEncoder split by (encoder or not) x (decay or not); empty groups
    are dropped. Each group has `lr_scale` (encoder_lr_scale for the encoder) and a `name`."""
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (name.startswith("encoder."), decays(name, param))
            buckets.setdefault(key, []).append(param)
    groups = []
    for (is_encoder, decay), params in sorted(buckets.items()):
        groups.append(
            {
                "params": params,
                "name": f"{'encoder' if is_encoder else 'decoder'}_{'decay' if decay else 'no_decay'}",
                "weight_decay": optim.weight_decay if decay else 0.0,
                "lr_scale": optim.encoder_lr_scale if is_encoder else 1.0,
            }
        )
    return groups


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups`; the step sets the real LR (`set_lr`) before every update."""
    return adamw(param_groups(model, optim), lr=optim.lr, betas=optim.betas)


FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def adamw(groups: list[dict[str, Any]], **options: Any) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel where every parameter is on a CPU or CUDA device: one kernel over all
    parameters instead of about ten small ones per tensor (nano's 127 tensors on one CPU thread: ~9 -> ~2 ms
    an update), the same update to rounding. Elsewhere (meta, other accelerators) torch's default."""
    devices = {p.device.type for group in groups for p in group["params"]}
    fused = devices <= set(FUSED_ADAMW_DEVICES)
    return torch.optim.AdamW(groups, fused=fused or None, **options)


# --- schedule ------------------------------------------------------------------------------------


def scaled_lrs(optim: OptimConfig, global_batch: int) -> tuple[float, float]:
    """(lr, min_lr) scaled linearly from `reference_batch` to `global_batch` (official)."""
    factor = global_batch / optim.reference_batch
    return optim.lr * factor, optim.min_lr * factor


def lr_at(step: int, optim: OptimConfig, global_batch: int) -> float:
    """LR for optimiser step `step` (0-based), the official `cosine_scheduler` as train.py calls it.

    With W = warmup_steps and T = total_steps:
        step < W:            lr * (step + 1) / (W + 1)     (never quite the peak)
        W <= step <= T - W:  cosine from lr at step W to min_lr at step T - W
        step > T - W:        min_lr                        (the last W steps, and any beyond T)
    or lr from step W on when decay_lr is False. The decay ends at T - W because train.py passes
    decay_steps = int((1 - warmup_epochs / epochs) * T) as the step where the cosine reaches min_lr.
    """
    lr, min_lr = scaled_lrs(optim, global_batch)
    warmup = optim.warmup_steps
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if not optim.decay_lr:
        return lr
    decay_end = optim.total_steps - warmup
    progress = min((step - warmup) / max(decay_end - warmup, 1), 1.0)  # max(): official divides by 0
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# --- EMA -----------------------------------------------------------------------------------------


def make_ema(model: ModuleT) -> ModuleT:
    """A frozen fp32 copy (parameters and floating buffers) of `model`, whatever the model's dtype:
    a bf16 EMA at decay 0.9997 cannot move (the 3e-4 increment is below bf16 resolution)."""
    ema = copy.deepcopy(model).float().eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model for parameters; buffers are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)
