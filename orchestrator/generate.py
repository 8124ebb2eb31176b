"""Sampling from the model registry: `python -m orchestrator.generate --model models:/NAME@ALIAS ...`.

A registered version is a plain sphere_core checkpoint directory (see orchestrator/registry.py): it is
downloaded over the tracking server and loaded with sphere_core alone (EMA weights by default).
The inference-time evaluation of a frozen model (metrics per sampling setting) is orchestrator.evaluate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import torch

from orchestrator.config.schema import ExperimentConfig
from orchestrator.mlflow_model import checkpoint_dir
from orchestrator.tracking import QUIET_ENV, grid_image, resolve_tracking_uri
from sphere_core.checkpoint import load_model
from sphere_core.config import ConfigError, SamplingConfig, SphereConfig
from sphere_core.model import SphereEncoder
from sphere_core.sampling import generate


def load_registered(
    uri: str, tracking_uri: str, *, use_ema: bool = True
) -> tuple[SphereEncoder, SphereConfig]:
    """models:/NAME@ALIAS (or any artifact URI of a checkpoint directory) -> (model in eval mode, config)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="sphere-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp, tracking_uri=tracking_uri))
        except MlflowException as exc:
            raise ConfigError(f"--model: {uri} cannot be resolved ({exc.message.splitlines()[0]})") from None
        local = checkpoint_dir(local)
        config = SphereConfig.from_dict(json.loads((local / "config.json").read_text()))
        return load_model(local, use_ema=use_ema), config


def sample_labels(labels: list[int] | None, num: int, num_classes: int) -> torch.Tensor | int:
    """--labels cycled to `num` images; without labels, `num` (random classes, or unconditional)."""
    if not labels:
        return num
    if num_classes == 0:
        raise ConfigError("--labels: the model is unconditional (num_classes 0); drop --labels")
    bad = [y for y in labels if not 0 <= y < num_classes]
    if bad:
        raise ConfigError(
            f"--labels: {bad[0]} is outside the model's classes (allowed: 0..{num_classes - 1})"
        )
    return torch.tensor(labels).repeat(math.ceil(num / len(labels)))[:num]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.generate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS")
    parser.add_argument(
        "--steps", type=int, default=1, help="forward steps T (1 decoder pass + T-1 refinements)"
    )
    parser.add_argument("--num", type=int, default=16, help="number of images")
    parser.add_argument("--out", required=True, type=Path, help="PNG grid to write")
    parser.add_argument("--labels", type=int, nargs="+", help="class ids, cycled to --num (default: random)")
    parser.add_argument("--cfg", type=float, default=1.0, help="guidance scale (1 = off)")
    parser.add_argument("--cfg-position", choices=("enc", "dec", "combo"), default="combo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw-weights", action="store_true", help="the training weights instead of the EMA")
    args = parser.parse_args(argv)
    os.environ.update(QUIET_ENV)
    try:
        if args.num < 1:
            raise ConfigError("--num: must be >= 1")
        sampling = SamplingConfig(steps=args.steps, cfg=args.cfg, cfg_position=args.cfg_position)
        uri = resolve_tracking_uri(ExperimentConfig())
        model, config = load_registered(args.model, uri, use_ema=not args.raw_weights)
        labels = sample_labels(args.labels, args.num, config.model.num_classes)
    except ConfigError as exc:
        message = str(exc)
        for field, flag in (("sampling.steps", "--steps"), ("sampling.cfg", "--cfg")):
            message = message.replace(field, flag)  # SamplingConfig names its fields; the user typed flags
        print(f"error: {message}", file=sys.stderr)
        return 2
    generator = torch.Generator().manual_seed(args.seed)
    images = generate(
        model, labels, sampling=sampling, alpha_max_deg=config.noise.alpha_max_deg, generator=generator
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images).save(args.out)
    print(f"wrote {args.out}: {args.num} samples from {args.model}, {args.steps} steps, cfg {args.cfg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
