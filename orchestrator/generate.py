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
from PIL import Image

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


def side_by_side(blocks: list[torch.Tensor], columns: int) -> torch.Tensor:
    """Equal-length image sets (B, C, H, W), each laid out `columns` wide, joined left to right: row r of
    the result holds row r of every set. Returns images in grid order for `grid_image(nrow=columns * k)`."""
    rows = math.ceil(blocks[0].shape[0] / columns)
    padded = [torch.cat([b, b.new_ones(rows * columns - b.shape[0], *b.shape[1:])]) for b in blocks]
    return torch.cat([b.unflatten(0, (rows, columns)) for b in padded], dim=1).flatten(0, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.generate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS")
    parser.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[1],
        help="forward steps T (1 decoder pass + T-1 refinements); several values are drawn from the same "
        "noise and shown side by side",
    )
    parser.add_argument("--num", type=int, default=16, help="number of images")
    parser.add_argument("--out", required=True, type=Path, help="PNG grid to write")
    parser.add_argument("--labels", type=int, nargs="+", help="class ids, cycled to --num (default: random)")
    parser.add_argument(
        "--per-class", type=int, metavar="K", help="one row per class with K samples each (replaces --num)"
    )
    parser.add_argument("--cfg", type=float, default=1.0, help="guidance scale (1 = off)")
    parser.add_argument("--cfg-position", choices=("enc", "dec", "combo"), default="combo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw-weights", action="store_true", help="the training weights instead of the EMA")
    args = parser.parse_args(argv)
    os.environ.update(QUIET_ENV)
    try:
        if args.num < 1 or (args.per_class is not None and args.per_class < 1):
            raise ConfigError("--num: must be >= 1" if args.num < 1 else "--per-class: must be >= 1")
        samplings = [
            SamplingConfig(steps=steps, cfg=args.cfg, cfg_position=args.cfg_position) for steps in args.steps
        ]
        uri = resolve_tracking_uri(ExperimentConfig())
        model, config = load_registered(args.model, uri, use_ema=not args.raw_weights)
        classes = config.model.num_classes
        if args.per_class is not None:
            if classes == 0:
                raise ConfigError("--per-class: the model is unconditional (num_classes 0)")
            labels: torch.Tensor | int = torch.arange(classes).repeat_interleave(args.per_class)
            columns = args.per_class
        else:
            labels = sample_labels(args.labels, args.num, classes)
            columns = math.ceil(math.sqrt(args.num))
    except ConfigError as exc:
        message = str(exc)
        for field, flag in (("sampling.steps", "--steps"), ("sampling.cfg", "--cfg")):
            message = message.replace(field, flag)  # SamplingConfig names its fields; the user typed flags
        print(f"error: {message}", file=sys.stderr)
        return 2
    num = labels.shape[0] if isinstance(labels, torch.Tensor) else labels
    if classes and not isinstance(labels, torch.Tensor):  # random classes, the same for every --steps
        labels = torch.randint(classes, (num,), generator=torch.Generator().manual_seed(args.seed))
    # One initial noise for every --steps value, so a T-step sample refines the 1-step one beside it.
    noise = torch.randn(num, *model.latent_shape, generator=torch.Generator().manual_seed(args.seed))
    blocks = [
        generate(
            model,
            labels,
            sampling=sampling,
            alpha_max_deg=config.noise.alpha_max_deg,
            generator=torch.Generator().manual_seed(args.seed + 1),
            noise=noise,
        )
        for sampling in samplings
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid = grid_image(side_by_side(blocks, columns), nrow=columns * len(blocks))
    zoom = max(1, 64 // config.model.image_size)  # small digits: enlarge the pixels so a viewer shows them
    grid.resize((grid.width * zoom, grid.height * zoom), Image.Resampling.NEAREST).save(args.out)
    layout = f"a row per class, {args.per_class} each" if args.per_class else f"{num} samples"
    steps = " | ".join(f"{t} step{'s' if t > 1 else ''}" for t in args.steps)
    print(f"wrote {args.out}: {layout} from {args.model}, left to right: {steps}; cfg {args.cfg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
