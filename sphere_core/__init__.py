"""The Sphere Encoder (arXiv 2602.15030) in pure PyTorch: images onto a sphere of radius sqrt(L), a decoder
that turns any point of it into an image, one-step generation and few-step refinement.

    import torch
    import sphere_core

    config = sphere_core.get_preset("mnist-32-nano")  # or build_model("imagenet-256-xl", device="meta")
    # The CPU presets' perceptual terms use the project's random-conv features (no weight file to download).
    perceptual = sphere_core.build_perceptual(random_conv=(1, sphere_core.RANDOM_CONV_SEED))
    state = sphere_core.make_train_state(config, device="cpu", perceptual=perceptual)
    images, labels = torch.rand(8, 1, 32, 32) * 2 - 1, torch.arange(8)  # images in [-1, 1]
    out = sphere_core.train_step(state, images, labels, optim=config.optim, global_batch=8, generator=None)
    samples = sphere_core.generate(  # (10, 1, 32, 32) in [0, 1]; 4 steps = 7 network passes
        state.ema, torch.arange(10), sampling=sphere_core.SamplingConfig(steps=4).resolved(config.noise),
        generator=torch.Generator().manual_seed(0),
    )

The package never imports ray, mlflow, fsspec, s3fs, webdataset, yaml or PIL (tests/sphere_core enforce it).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sphere_core.checkpoint import load_checkpoint, load_model, save_checkpoint
    from sphere_core.config import (
        RANDOM_CONV_SEED,
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
    from sphere_core.perceptual import build_perceptual
    from sphere_core.presets import PRESETS, build_model, count_parameters, get_preset
    from sphere_core.sampling import generate, network_passes
    from sphere_core.spherify import add_training_noise, spherify
    from sphere_core.train_step import TrainState, make_train_state, train_step

_HOME = {  # public name -> its module, imported on first use: `import sphere_core.config` stays torch-free
    "load_checkpoint": "sphere_core.checkpoint",
    "load_model": "sphere_core.checkpoint",
    "save_checkpoint": "sphere_core.checkpoint",
    "RANDOM_CONV_SEED": "sphere_core.config",
    "AugmentConfig": "sphere_core.config",
    "ConfigError": "sphere_core.config",
    "LossWeights": "sphere_core.config",
    "ModelConfig": "sphere_core.config",
    "NoiseConfig": "sphere_core.config",
    "OptimConfig": "sphere_core.config",
    "SamplingConfig": "sphere_core.config",
    "SphereConfig": "sphere_core.config",
    "crossover": "sphere_core.editing",
    "interpolate": "sphere_core.editing",
    "interpolate_grid": "sphere_core.editing",
    "manipulate_class": "sphere_core.editing",
    "reconstruct": "sphere_core.editing",
    "SphereObjective": "sphere_core.losses",
    "SphereEncoder": "sphere_core.model",
    "build_perceptual": "sphere_core.perceptual",
    "PRESETS": "sphere_core.presets",
    "build_model": "sphere_core.presets",
    "count_parameters": "sphere_core.presets",
    "get_preset": "sphere_core.presets",
    "generate": "sphere_core.sampling",
    "network_passes": "sphere_core.sampling",
    "add_training_noise": "sphere_core.spherify",
    "spherify": "sphere_core.spherify",
    "TrainState": "sphere_core.train_step",
    "make_train_state": "sphere_core.train_step",
    "train_step": "sphere_core.train_step",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'sphere_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing a submodule binds it on the package: `spherify` and `train_step` name the functions,
        # not their modules (as when this file imported everything eagerly).
        if not (name in _HOME and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "PRESETS",
    "RANDOM_CONV_SEED",
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
    "build_perceptual",
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
