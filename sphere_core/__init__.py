"""The Sphere Encoder (arXiv 2602.15030) in pure PyTorch: images onto a sphere of radius sqrt(L), a decoder
that turns any point of it into an image, one-step generation and few-step refinement.

    import torch
    import sphere_core

    config = sphere_core.get_preset("mnist-32-nano")  # or build_model("imagenet-256-xl", device="meta")
    state = sphere_core.make_train_state(config, device="cpu")
    images, labels = torch.rand(8, 1, 32, 32) * 2 - 1, torch.arange(8)  # images in [-1, 1]
    out = sphere_core.train_step(state, images, labels, optim=config.optim, global_batch=8, generator=None)
    samples = sphere_core.generate(  # (10, 1, 32, 32) in [0, 1]; 4 steps = 7 network passes
        state.ema, torch.arange(10), sampling=sphere_core.SamplingConfig(steps=4),
        alpha_max_deg=config.noise.alpha_max_deg, generator=torch.Generator().manual_seed(0),
    )

The package never imports ray, mlflow, fsspec, s3fs, webdataset, yaml or PIL (tests/sphere_core enforce it).
"""

from sphere_core.checkpoint import load_checkpoint, load_model, save_checkpoint
from sphere_core.config import (
    AugmentConfig,
    ConfigError,
    LossWeights,
    ModelConfig,
    NoiseConfig,
    OptimConfig,
    SamplingConfig,
    SphereConfig,
)
from sphere_core.editing import crossover, interpolate, interpolate_grid, manipulate_class, reconstruct
from sphere_core.losses import SphereObjective
from sphere_core.model import SphereEncoder
from sphere_core.presets import PRESETS, build_model, count_parameters, get_preset
from sphere_core.sampling import generate, network_passes
from sphere_core.spherify import add_training_noise, spherify
from sphere_core.train_step import TrainState, make_train_state, train_step

__all__ = [
    "PRESETS",
    "AugmentConfig",
    "ConfigError",
    "LossWeights",
    "ModelConfig",
    "NoiseConfig",
    "OptimConfig",
    "SamplingConfig",
    "SphereConfig",
    "SphereEncoder",
    "SphereObjective",
    "TrainState",
    "add_training_noise",
    "build_model",
    "count_parameters",
    "crossover",
    "generate",
    "get_preset",
    "interpolate",
    "interpolate_grid",
    "load_checkpoint",
    "load_model",
    "make_train_state",
    "manipulate_class",
    "network_passes",
    "reconstruct",
    "save_checkpoint",
    "spherify",
    "train_step",
]
