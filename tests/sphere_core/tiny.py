"""Tiny models, images and training states shared by the sphere_core tests (16 px, a few ms per step)."""

from __future__ import annotations

import torch

from sphere_core.config import LossWeights, ModelConfig, NoiseConfig, OptimConfig, SphereConfig
from sphere_core.model import SphereEncoder
from sphere_core.train_step import TrainState, make_train_state, train_step


def tiny_config(**overrides: object) -> ModelConfig:
    """16 px, patch 4: 16 tokens of 16 channels (L = 256), nano ViTs, 5 classes."""
    base: dict[str, object] = dict(
        image_size=16, channels=3, num_classes=5, encoder_size="nano", decoder_size="nano",
        compression_ratio=3.0, latent_resolution="low", encoder_mixer_depth=1, decoder_mixer_depth=1,
    )  # fmt: skip
    base.update(overrides)
    return ModelConfig(**base)  # type: ignore[arg-type]


def tiny_model(seed: int = 0, *, perturb: float = 0.05, **overrides: object) -> SphereEncoder:
    """A tiny model with a fixed init. `perturb` adds N(0, perturb^2) to every trainable parameter so
    the zero-initialised AdaLN/gates/mixer scalars act as in a trained model (labels matter)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SphereEncoder(tiny_config(**overrides))
    if perturb:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g) * perturb)
    return model


def images(batch: int, cfg: ModelConfig, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, cfg.channels, cfg.image_size, cfg.image_size, generator=g) * 2 - 1


CONFIG = SphereConfig(
    model=tiny_config(),
    noise=NoiseConfig(alpha_max_deg=80.0),
    loss=LossWeights(recon_dist=1.0, recon_perc=0.0, con_dist=0.5, con_perc=0.0, latent_con=0.1),
    optim=OptimConfig(lr=2e-3, min_lr=1e-5, warmup_steps=2, total_steps=50, ema_decay=0.9),
)


def fresh_state(config: SphereConfig = CONFIG, seed: int = 0) -> TrainState:
    torch.manual_seed(seed)
    return make_train_state(config, device="cpu")


def batch(seed: int = 0, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return images(size, CONFIG.model, seed), torch.arange(size) % CONFIG.model.num_classes


def step(state: TrainState, seed: int, config: SphereConfig = CONFIG) -> dict[str, float]:
    x, y = batch()
    gen = torch.Generator().manual_seed(seed)
    return train_step(state, x, y, optim=config.optim, global_batch=8, generator=gen).metrics
