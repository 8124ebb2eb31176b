"""A sphere_core checkpoint as an MLflow pyfunc model, so the registry serves it like any other model:

    sampler = mlflow.pyfunc.load_model("models:/sphere-mnist@champion")
    images = sampler.predict(pd.DataFrame({"label": [0, 1, 2], "steps": 4, "cfg": 1.5, "seed": 0}))
    # -> float32 array (3, C, H, W) in [0, 1]

The version's artifact directory holds `MLmodel` and the checkpoint under `data/`; `checkpoint_dir`
finds it, and `load_registered`/`load_local` (what orchestrator.generate and evaluate call) load it with
sphere_core alone, whatever the URI: models:/NAME@ALIAS, runs:/RUN_ID/PATH or a local directory. Columns
besides `label` (class id; -1 or absent = a random class) are sampling settings, one value per request.
Loading needs this project installed (sphere_core and this module); the requirements name torch and mlflow.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from orchestrator.cli_errors import UserError
from sphere_core.checkpoint import CorruptCheckpoint, load_model
from sphere_core.config import ConfigError, SamplingConfig, SphereConfig
from sphere_core.model import SphereEncoder
from sphere_core.sampling import generate

SETTINGS = ("steps", "cfg", "cfg_position", "schedule", "shared_noise", "noise_scale")


class SphereSampler:
    """What `mlflow.pyfunc.load_model` returns (wrapped): sampling from the EMA weights."""

    def __init__(self, model: SphereEncoder, config: SphereConfig) -> None:
        self.model, self.config = model, config

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        frame = model_input
        settings = {}
        for column in (*SETTINGS, "seed"):
            if column in frame:
                values = frame[column].unique()
                if len(values) != 1:
                    raise ConfigError(f"{column}: one value per request (got {list(values)})")
                settings[column] = values[0].item() if hasattr(values[0], "item") else values[0]
        seed = int(settings.pop("seed", 0))
        sampling = dataclasses.replace(SamplingConfig(), **settings).resolved(self.config.noise)
        generator = torch.Generator().manual_seed(seed)
        num = len(frame)
        labels: torch.Tensor | int = num
        if self.config.model.conditional and "label" in frame:
            given = torch.tensor(frame["label"].tolist(), dtype=torch.long)
            drawn = torch.randint(self.config.model.num_classes, (num,), generator=generator)
            labels = torch.where(given >= 0, given, drawn)
        images = generate(
            self.model,
            labels,
            sampling=sampling,
            generator=generator,
        )
        return images.numpy().astype(np.float32)


def _load_pyfunc(data_path: str) -> SphereSampler:
    """MLflow's loader_module entry point: `data_path` is the checkpoint directory."""
    return SphereSampler(*load_local(Path(data_path)))


def save_pyfunc(checkpoint: Path, dest: Path) -> None:
    """Writes the pyfunc model directory (MLmodel + the checkpoint under data/) at `dest`."""
    torch_version = torch.__version__.split("+")[0]
    mlflow.pyfunc.save_model(
        str(dest),
        loader_module=__name__,
        data_path=str(checkpoint),
        # Explicit, so MLflow does not load the model in a subprocess to infer them.
        pip_requirements=[
            f"torch=={torch_version}",
            f"mlflow=={mlflow.__version__}",
        ],
    )


def checkpoint_dir(local: Path) -> Path:
    """The sphere_core checkpoint inside a downloaded model directory (pyfunc or a bare checkpoint)."""
    if not (local / "MLmodel").exists():
        return local

    return local / Model.load(str(local / "MLmodel")).flavors["python_function"]["data"]


def load_registered(
    uri: str, tracking_uri: str, *, use_ema: bool = True
) -> tuple[SphereEncoder, SphereConfig]:
    """models:/NAME@ALIAS (or any artifact URI of a checkpoint directory) -> (model in eval mode, config)."""
    with tempfile.TemporaryDirectory(prefix="sphere-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp, tracking_uri=tracking_uri))
        except MlflowException as exc:
            raise ConfigError(f"--model: {uri} cannot be resolved ({exc.message.splitlines()[0]})") from None
        return load_local(local, use_ema=use_ema, source=uri)


def load_local(
    directory: Path, *, use_ema: bool = True, source: str | None = None
) -> tuple[SphereEncoder, SphereConfig]:
    """A checkpoint directory (bare, or a pyfunc model holding one) -> (model in eval mode, config).
    source: what the user named (a model URI), for the error line; default the directory."""
    local = checkpoint_dir(directory)
    if not (local / "config.json").is_file():
        raise UserError(f"--model {directory}: no sphere_core checkpoint in it (config.json is missing)")
    try:
        model = load_model(local, use_ema=use_ema)
    except CorruptCheckpoint as exc:
        damage = str(exc).removeprefix(f"{local}: ")
        raise UserError(f"--model {source or directory}: {damage}") from None
    return model, SphereConfig.from_dict(json.loads((local / "config.json").read_text()))
