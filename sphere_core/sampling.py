"""Few-step generation with the Sphere Encoder (method §3, "Algorithm 1").

    e ~ N(0, I) (B, N, d);  v = f(e);  x = D(v, y)               <- the 1-step sample
    for k = 1 .. T-1:
        z = E(x, y)
        v = f( f(z) + r_k * noise_scale * tan(alpha_max) * e_k )    r_k = 1 ("fixed") or 1 - k/T ("decay")
        x = D(v, y)
    return clamp(x * 0.5 + 0.5, 0, 1)

Shared noise (`SamplingConfig.shared_noise`, the official default): e_k is drawn ONCE, at the first
refinement step, and reused by every later step. It is not the initial e of the 1-step sample; this is
the official code's behaviour (method §3), where some reimplementations reuse e instead.

Classifier-free guidance: lerp(uncond, cond, w) = uncond + w * (cond - uncond), with the null class
as uncond, on the encoder's latent ("enc", refinement steps only), on the decoder's pixels ("dec",
then clamped to [-1, 1]) or on both with w = sqrt(cfg) ("combo"). Active only when cfg > 1 and the
model is conditional. All randomness comes from the explicit `generator`.

With `bf16_autocast` (the model's `optim.bf16_autocast`, as in training) only the network passes run
under autocast; noise, guidance and images stay fp32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sphere_core import precision
from sphere_core.config import SamplingConfig
from sphere_core.model import SphereEncoder
from sphere_core.spherify import randn, spherify


@dataclass(frozen=True)
class Condition:
    """What each network is conditioned on: label embeddings or interpolations of them (None when the
    model is unconditional). enc: (B, encoder width); dec: (B, decoder width)."""

    enc: torch.Tensor | None
    dec: torch.Tensor | None

    @classmethod
    def from_labels(cls, model: SphereEncoder, y: torch.Tensor | None) -> Condition:
        if y is None or not model.cfg.conditional:
            return cls(None, None)
        return cls(model.encoder_condition(y), model.decoder_condition(y))


def guidance_weights(model: SphereEncoder, sampling: SamplingConfig) -> tuple[float, float]:
    """(w_enc, w_dec); 1.0 means that network runs unguided."""
    if not model.cfg.conditional or sampling.cfg <= 1.0:
        return 1.0, 1.0
    if sampling.cfg_position == "enc":
        return sampling.cfg, 1.0
    if sampling.cfg_position == "dec":
        return 1.0, sampling.cfg
    w = math.sqrt(sampling.cfg)  # combo: split the guidance to avoid double dipping
    return w, w


def _lerp_guided(
    net: Callable[..., torch.Tensor],
    inp: torch.Tensor,
    cond: torch.Tensor | None,
    null: torch.Tensor | None,
    w: float,
) -> torch.Tensor:
    """net(inp, cond=...) with CFG: one batched pass over [cond; uncond], then lerp(uncond, cond, w)."""
    if w == 1.0 or cond is None or null is None:
        return net(inp, cond=cond)
    out_cond, out_null = net(torch.cat([inp, inp]), cond=torch.cat([cond, null])).chunk(2)
    return torch.lerp(out_null, out_cond, w)


@dataclass(frozen=True)
class Guided:
    """The model's encode/decode with a fixed condition and CFG applied where `sampling` asks for it."""

    model: SphereEncoder
    cond: Condition
    null: Condition
    w_enc: float
    w_dec: float
    bf16_autocast: bool = False

    @classmethod
    def build(
        cls,
        model: SphereEncoder,
        cond: Condition,
        batch: int,
        sampling: SamplingConfig,
        *,
        bf16_autocast: bool = False,
    ) -> Guided:
        device = next(model.parameters()).device
        null = Condition.from_labels(model, model.null_labels(batch, device))
        return cls(model, cond, null, *guidance_weights(model, sampling), bf16_autocast=bf16_autocast)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [-1, 1] -> raw z (B, N, d), fp32 (as the encoder returns it)."""
        with precision.bf16_autocast(x.device, self.bf16_autocast):
            return _lerp_guided(self.model.encode, x, self.cond.enc, self.null.enc, self.w_enc)

    def decode(self, v: torch.Tensor) -> torch.Tensor:
        """v: (B, N, d) -> x (B, C, H, W) in [-1, 1], fp32 (guided pixels can overshoot: clamp them)."""

        def decode_fp32(inp: torch.Tensor, *, cond: torch.Tensor | None) -> torch.Tensor:
            return self.model.decode(inp, cond=cond).float()  # guidance extrapolates: lerp in fp32

        with precision.bf16_autocast(v.device, self.bf16_autocast):
            x = _lerp_guided(decode_fp32, v, self.cond.dec, self.null.dec, self.w_dec)
        return x if self.w_dec == 1.0 else x.clamp(-1.0, 1.0)


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model space -> [0, 1] images."""
    return (x * 0.5 + 0.5).clamp(0.0, 1.0)


def refine(
    guided: Guided,
    x: torch.Tensor,
    *,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The T-1 encode -> re-noise -> decode steps of Algorithm 1. x: (B, C, H, W) in [-1, 1]."""
    steps = sampling.steps
    sigma_max = sampling.sigma_max  # re-inject at the full training angle (r_k = 1)
    e_k: torch.Tensor | None = None
    for k in range(1, steps):
        z = guided.encode(x)  # (B, N, d)
        r_k = 1.0 if sampling.schedule == "fixed" else 1.0 - k / steps
        if e_k is None or not sampling.shared_noise:
            # Shared noise is drawn here at k = 1 and then reused (official), not the initial e.
            e_k = randn(tuple(z.shape), generator=generator, device=z.device, dtype=z.dtype)
        v = spherify(spherify(z) + r_k * sampling.noise_scale * sigma_max * e_k)
        x = guided.decode(v)
    return x


@torch.no_grad()
def generate_from_noise(
    model: SphereEncoder,
    noise: torch.Tensor,
    cond: Condition,
    *,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
    bf16_autocast: bool = False,
) -> torch.Tensor:
    """Algorithm 1 from given initial noise e (B, N, d) and condition -> images (B, C, H, W) in [0, 1]."""
    guided = Guided.build(model, cond, noise.shape[0], sampling, bf16_autocast=bf16_autocast)
    x = guided.decode(spherify(noise))  # the 1-step sample
    x = refine(guided, x, sampling=sampling, generator=generator)
    return to_unit_range(x)


@torch.no_grad()
def generate(
    model: SphereEncoder,
    labels_or_n: torch.Tensor | int,
    *,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
    noise: torch.Tensor | None = None,
    bf16_autocast: bool = False,
) -> torch.Tensor:
    """Samples images (B, C, H, W) in [0, 1], fp32.

    Args:
        labels_or_n: class labels (B,) long, or a count n (random classes from `generator` for a
            conditional model; ignored labels for an unconditional one).
        sampling: resolved against the model's config (`sampling.resolved(config.noise)`), which sets the
            refinement angle.
        noise: initial e (B, N, d); drawn from `generator` when None.
        bf16_autocast: run the encoder and decoder passes under bf16 autocast on the model's device.
    """
    param = next(model.parameters())
    if isinstance(labels_or_n, int):
        batch, labels = labels_or_n, None
        if model.cfg.conditional:
            labels = torch.randint(
                model.cfg.num_classes,
                (batch,),
                generator=generator,
                device=generator.device if generator else None,
            ).to(param.device)
    else:
        batch, labels = labels_or_n.shape[0], labels_or_n.to(param.device)
    if noise is None:
        noise = randn(
            (batch, *model.latent_shape), generator=generator, device=param.device, dtype=param.dtype
        )
    cond = Condition.from_labels(model, labels)
    noise = noise.to(param.device, param.dtype)
    return generate_from_noise(
        model, noise, cond, sampling=sampling, generator=generator, bf16_autocast=bf16_autocast
    )


def network_passes(steps: int, *, guide_enc: bool = False, guide_dec: bool = False) -> int:
    """Network evaluations per image for T steps: 1 decoder + (T-1) x (encoder + decoder) = 1 + 2(T-1).
    A guided network runs on [cond; uncond], so its own passes double: all T decoder passes with CFG on
    the decoder, the T-1 refinement encoder passes with CFG on the encoder (combo guides both)."""
    return 1 + 2 * (steps - 1) + steps * guide_dec + (steps - 1) * guide_enc


def passes_for(model: SphereEncoder, sampling: SamplingConfig) -> int:
    """`network_passes` of this model sampled with these settings (cfg <= 1 or unconditional: no CFG)."""
    w_enc, w_dec = guidance_weights(model, sampling)
    return network_passes(sampling.steps, guide_enc=w_enc != 1.0, guide_dec=w_dec != 1.0)
