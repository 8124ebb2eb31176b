"""Named, typed SphereConfig presets and `build_model` (method §1.4, method §2, method §4).

Paper presets reproduce the official scripts' settings with the released model sizes (the scripts say
base/base; MODEL.md's models are large/xlarge), random horizontal flips included. Their schedules
convert the official epochs to optimiser steps at the reference global batch of 256.
CPU presets are ours: sized for the built-in 28-32 px datasets on 2 CPU cores, no flips (a flipped digit is
not a digit), and a feature distance and a critic that need no downloaded weights: the perceptual terms at
the paper's 1 / 0.5 with the project's random-conv network (no LPIPS/ConvNeXt weights ship offline; pass
`build_perceptual(random_conv=(channels, RANDOM_CONV_SEED))` to make_train_state, or the terms are off)
and the PatchGAN term (sphere_core/adversarial.py).

Parameter counts on the meta device (`count_parameters`, frozen position tables included, as in
MODEL.md): animal-faces-256-l 642.1M, oxford-flowers-256-l 948.8M, imagenet-256-l 950.4M,
imagenet-256-xl 1388.9M (MODEL.md rounds to "1.3B"), cifar-10-32-b 263.8M.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import nn

from sphere_core.config import (
    AugmentConfig,
    DiscriminatorConfig,
    LossWeights,
    ModelConfig,
    NoiseConfig,
    OptimConfig,
    SphereConfig,
    ViTSize,
)
from sphere_core.model import SphereEncoder

REFERENCE_BATCH = 256  # official global batch the LR is quoted at
OFFICIAL_AUGMENT = AugmentConfig(random_flip=True)  # every official script: --flip_image True


def _schedule(*, epochs: int, warmup_epochs: int, train_images: int) -> OptimConfig:
    """Official optimiser (lr 1e-4 at batch 256, encoder x0.1, EMA 0.9997) over `epochs` epochs."""
    steps_per_epoch = math.ceil(train_images / REFERENCE_BATCH)
    return OptimConfig(warmup_steps=warmup_epochs * steps_per_epoch, total_steps=epochs * steps_per_epoch)


# --- paper presets (method §4) ---------------------------------------------------------------


def cifar10_32_b() -> SphereConfig:
    return SphereConfig(
        model=ModelConfig(
            image_size=32,
            num_classes=10,
            encoder_size="base",
            decoder_size="base",
            compression_ratio=1.5,
            latent_resolution="high",
            encoder_mixer_depth=2,
            decoder_mixer_depth=2,
            pixel_head="conv",
        ),
        noise=NoiseConfig(alpha_max_deg=80.0),
        loss=LossWeights(recon_dist=1.0, recon_perc=1.0, con_dist=0.5, con_perc=0.5, latent_con=0.1),
        optim=_schedule(epochs=5000, warmup_epochs=10, train_images=50_000),
        augment=OFFICIAL_AUGMENT,
    )


def _imagenet_256(size: ViTSize) -> SphereConfig:
    return SphereConfig(
        model=ModelConfig(
            image_size=256,
            num_classes=1000,
            encoder_size=size,
            decoder_size=size,
            compression_ratio=3.0,
            encoder_mixer_depth=4,
            decoder_mixer_depth=4,
            pixel_head="linear",
        ),
        noise=NoiseConfig(alpha_max_deg=85.0),
        loss=LossWeights(recon_dist=50.0, recon_perc=1.0, con_dist=25.0, con_perc=1.0, latent_con=0.1),
        optim=_schedule(epochs=800, warmup_epochs=5, train_images=1_281_167),
        augment=OFFICIAL_AUGMENT,
    )


def imagenet_256_l() -> SphereConfig:
    return _imagenet_256("large")


def imagenet_256_xl() -> SphereConfig:
    return _imagenet_256("xlarge")


def _faces_or_flowers(num_classes: int, train_images: int) -> SphereConfig:
    return SphereConfig(
        model=ModelConfig(
            image_size=256,
            num_classes=num_classes,
            encoder_size="large",
            decoder_size="large",
            compression_ratio=1.5,
            encoder_mixer_depth=4,
            decoder_mixer_depth=4,
            pixel_head="linear",
        ),
        noise=NoiseConfig(alpha_max_deg=85.0),
        loss=LossWeights(recon_dist=25.0, recon_perc=1.0, con_dist=1.0, con_perc=1.0, latent_con=0.1),
        optim=_schedule(epochs=1000, warmup_epochs=10, train_images=train_images),
        augment=OFFICIAL_AUGMENT,
    )


def animal_faces_256_l() -> SphereConfig:
    # Unconditional (official --cond_generator False). AFHQ train split: 14,630 images.
    return _faces_or_flowers(num_classes=0, train_images=14_630)


def oxford_flowers_256_l() -> SphereConfig:
    # The official list files were not seen; 1,020 is the standard Flowers-102 train split.
    return _faces_or_flowers(num_classes=102, train_images=1_020)


# --- CPU presets (ours) ---------------------------------------------------------------------------


def _cpu(size: ViTSize, *, channels: int, compression_ratio: float) -> SphereConfig:
    """32 px, 10 classes, patch 4 ("low"): 8 x 8 = 64 tokens, so a nano step at batch 16 takes ~0.1 s on
    one CPU core (pixel and latent terms; ~0.3 s with the perceptual and adversarial terms). Those two make
    the one-step samples sharp and varied: pixel and latent terms alone draw one blurry template per class
    (1-step recall 0.05, fd_clf 30x the floor at 32,000 images), the random-conv perceptual distance and a
    16-wide PatchGAN on the large-noise decodes and on random sphere points' decodes, weight 0.5 from the
    quarter of the run on, reach 4x the floor with recall 0.6 (docs/benchmarks.md "Time to quality").
    The optimiser recipe was measured on the built-in MNIST (docs/results.md
    "Training recipe"; sweeps/recipe.yaml): alpha_max 85 (not the official 32 px 80: at L = 512 a tiny decoder
    reads the class from an 80-degree latent and ignores the label), a peak LR of 3e-3 at batch 16 after a
    200-step warmup (the official init starts the pixel head at tanh(0); without the warmup, Adam at 2e-3
    already saturates the tanh within ~100 steps and the decoder never recovers), and 2,000 steps, by which
    the 1-step samples are the digits asked for. The encoder keeps the official x0.1 LR: at x1 samples vary
    more within a class, but the label took hold late in some runs."""
    return SphereConfig(
        model=ModelConfig(
            image_size=32,
            channels=channels,
            num_classes=10,
            encoder_size=size,
            decoder_size=size,
            compression_ratio=compression_ratio,
            latent_resolution="low",
            encoder_mixer_depth=2,
            decoder_mixer_depth=2,
            pixel_head="conv",
        ),
        noise=NoiseConfig(alpha_max_deg=85.0),
        loss=LossWeights(
            recon_dist=1.0,
            recon_perc=1.0,
            con_dist=0.5,
            con_perc=0.5,
            latent_con=0.1,
            adversarial=0.5,
            adversarial_start_step=500,
            adversarial_on="large+prior",
        ),
        # lr at reference_batch 256: 3e-3 at the recipe's batch of 16.
        optim=OptimConfig(lr=4.8e-2, min_lr=4.8e-4, warmup_steps=200, total_steps=2000, ema_decay=0.99),
        discriminator=DiscriminatorConfig(width=16),  # 1.2-1.6x the step of pixel terms alone (64: 2-3x)
    )


def mnist_32_nano() -> SphereConfig:
    return _cpu("nano", channels=1, compression_ratio=2.0)  # d = 16/2 = 8, L = 512


def mnist_32_micro() -> SphereConfig:
    return _cpu("micro", channels=1, compression_ratio=2.0)


def fashion_mnist_32_nano() -> SphereConfig:
    return _cpu("nano", channels=1, compression_ratio=2.0)  # the MNIST recipe: sweeps/base/fashion-mnist.yaml


def fashion_mnist_32_micro() -> SphereConfig:
    return _cpu("micro", channels=1, compression_ratio=2.0)


def cifar10_32_nano() -> SphereConfig:
    return _cpu("nano", channels=3, compression_ratio=3.0)  # d = 48/3 = 16, L = 1024


PRESETS: dict[str, Callable[[], SphereConfig]] = {
    "cifar-10-32-b": cifar10_32_b,
    "imagenet-256-l": imagenet_256_l,
    "imagenet-256-xl": imagenet_256_xl,
    "animal-faces-256-l": animal_faces_256_l,
    "oxford-flowers-256-l": oxford_flowers_256_l,
    "mnist-32-nano": mnist_32_nano,
    "mnist-32-micro": mnist_32_micro,
    "fashion-mnist-32-nano": fashion_mnist_32_nano,
    "fashion-mnist-32-micro": fashion_mnist_32_micro,
    "cifar-10-32-nano": cifar10_32_nano,
}


def get_preset(name: str) -> SphereConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None


def build_model(
    preset_or_config: str | ModelConfig | SphereConfig,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SphereEncoder:
    """Builds the network directly on `device`; device="meta" allocates nothing (for inspection)."""
    cfg = preset_or_config
    if isinstance(cfg, str):
        cfg = get_preset(cfg)
    if isinstance(cfg, SphereConfig):
        cfg = cfg.model
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = SphereEncoder(cfg)
    return model if dtype is None else model.to(dtype)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """All parameters (what MODEL.md reports, frozen position tables included) or only trainable ones."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
