"""The optional adversarial term (ours, not the paper's): a PatchGAN critic with the hinge loss and VQGAN's
adaptive weight, as the VQGAN and Stable Diffusion autoencoders train their decoders.

Why: pixel and feature distances reward the conditional mean, so a small decoder fed a far-from-data sphere
point draws a blurry class template. A critic that judges image patches pushes the large-noise decodes (and,
with `adversarial_on: large+prior`, decodes of random sphere points, the one-step samples themselves)
toward images it cannot tell from real ones. An unconditional critic passes a well-drawn digit of the wrong
class; the projection term also asks whether the image is of the class it was decoded for, which is what a
one-step sample from a random sphere point has to learn from the label alone.

    D(x)            PatchDiscriminator: (B, C, H, W) in [-1, 1] -> (B, 1, h, w) patch logits
    D(x, y)         with discriminator.conditional: D(x) + <e(y), mean_hw phi(x)>, the projection critic of
                    Miyato & Koyama (2018), phi the features under the last conv, e a label embedding whose
                    null class is 0 (label-dropped decodes are judged unconditionally)
    L_D             0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(sg[x_fake])))   (hinge, critic step)
                    + discriminator.r1_gamma / 2 * mean ||grad_x D(x)||^2 over real x (R1, Mescheder et
                    al. 2018): keeps the critic flat on the data, so it cannot win outright and leave the
                    generator a saturated, uninformative gradient (off at 0); with r1_every = k > 1,
                    k x the penalty on every k-th critic step (StyleGAN2's lazy regularisation: its double
                    backward costs ~10 % of a nano step when taken every step)
    L_G             -mean D(x_fake)                                         (generator, critic frozen)
    lambda          ||grad_W L_rest|| / (||grad_W L_G|| + 1e-4), clamped to [0, 1e4], at the decoder's
                    last layer W (VQGAN's adaptive weight; 1 when loss.adversarial_adaptive is false).
                    L_rest: every other term (loss.adversarial_balance: total), or the reconstruction and
                    pixel-consistency terms only (pixel: VQGAN's reconstruction + perceptual "nll")
    total           L_rest + loss.adversarial * lambda * L_G, from loss.adversarial_start_step on

The critic trains in its own step after the generator's (`train_step`), with its own Adam and the
generator's LR schedule times `discriminator.lr_scale`; it is checkpointed beside the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sphere_core.config import DiscriminatorConfig
from sphere_core.optim import adamw

ADAPTIVE_EPS = 1e-4  # VQGAN's: keeps lambda finite while the critic's gradient is ~0
ADAPTIVE_MAX = 1e4


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not VQGAN's BatchNorm: the per-rank batches here are 8-16 images, and GroupNorm keeps
    # the critic's output independent of the batch and of how DDP splits it.
    return nn.GroupNorm(math.gcd(32, channels), channels)


class PatchDiscriminator(nn.Module):
    """pix2pix/VQGAN PatchGAN: `layers` 4x4 stride-2 convs (width doubling, capped at 8x), one 4x4 stride-1
    conv, then a 4x4 stride-1 conv to one logit per patch. At 32 px with 3 layers: 2 x 2 logits."""

    def __init__(self, channels: int, cfg: DiscriminatorConfig, num_classes: int = 0) -> None:
        super().__init__()
        width = cfg.width
        blocks: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for i in range(1, cfg.layers + 1):
            prev, mult = mult, min(2**i, 8)
            stride = 2 if i < cfg.layers else 1
            blocks += [
                nn.Conv2d(width * prev, width * mult, 4, stride, 1, bias=False),
                _norm(width * mult),
                nn.LeakyReLU(0.2),
            ]
        blocks.append(nn.Conv2d(width * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)
        # Row num_classes is the null label's: zero and never updated (padding_idx).
        self.label_embed = (
            nn.Embedding(num_classes + 1, width * mult, padding_idx=num_classes)
            if cfg.conditional and num_classes > 0
            else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """VQGAN's init: conv weights N(0, 0.02), norm gains N(1, 0.02), biases 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 0.02)
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W); y: (B,) labels (num_classes = null) or None: judged unconditionally."""
        if self.label_embed is None or y is None:
            return self.net(x)
        features = self.net[:-1](x)  # (B, F, h, w)
        projection = (self.label_embed(y) * features.mean(dim=(2, 3))).sum(dim=1)  # (B,)
        return self.net[-1](features) + projection[:, None, None, None]


def frozen_logits(critic: PatchDiscriminator, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """D(x, y) with the critic's weights detached: gradients reach `x` (the generator) and never the critic,
    so the generator's backward leaves the critic's .grad untouched (and DDP never sees its parameters)."""
    params = {name: p.detach() for name, p in critic.named_parameters()}
    return functional_call(critic, params, (x, y))


def hinge_critic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.float().mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """mean over images of ||d sum(D(x)) / dx||^2 at the real images `real` (requires_grad), differentiable
    in the critic's weights (create_graph)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def adaptive_weight(rest_grad: torch.Tensor, adversarial_grad: torch.Tensor) -> torch.Tensor:
    """VQGAN's lambda from the two terms' gradients at the decoder's last layer; detached, in [0, 1e4]."""
    weight = rest_grad.float().norm() / (adversarial_grad.float().norm() + ADAPTIVE_EPS)
    return weight.clamp(0.0, ADAPTIVE_MAX).detach()


@dataclass
class Critic:
    """The critic as training holds it: `network` is what the critic step calls (the raw module, or its
    DDP wrapper under Ray Train), `raw` the module itself (frozen calls, state_dict), and its optimiser."""

    network: nn.Module
    raw: PatchDiscriminator
    optimizer: torch.optim.Optimizer
    r1_gamma: float = 0.0  # discriminator.r1_gamma
    r1_every: int = 1  # discriminator.r1_every


def make_critic(
    channels: int, cfg: DiscriminatorConfig, *, num_classes: int = 0, device: torch.device | str
) -> Critic:
    with torch.device(device):
        raw = PatchDiscriminator(channels, cfg, num_classes)
    optimizer = adamw(
        [{"params": list(raw.parameters()), "name": "critic", "lr_scale": cfg.lr_scale}],
        lr=1e-4,  # set by the step (set_lr) before every update
        betas=cfg.betas,
        weight_decay=0.0,
    )
    return Critic(network=raw, raw=raw, optimizer=optimizer, r1_gamma=cfg.r1_gamma, r1_every=cfg.r1_every)
