"""Sampling from the model registry: `python -m orchestrator.generate --model models:/NAME@ALIAS ...`.

A registered version is a plain sphere_core checkpoint directory (see orchestrator/tracking/registry.py):
it is downloaded over the tracking server and loaded with sphere_core alone (EMA weights by default). A local
checkpoint directory is loaded as it is, without a tracking server.
Scoring a stored model's samples per sampling setting is `python -m orchestrator.evaluation score`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
from pathlib import Path

from orchestrator.cli_errors import UserError, at_least, run
from orchestrator.config.schema import ExperimentConfig
from orchestrator.config.sweep_spec import MODEL_URI, MODEL_URI_FORMS
from sphere_core.config import ConfigError, SamplingConfig

# The sampling knobs as flags, derived from SamplingConfig's fields (cfg_position -> --cfg-position) by both
# generate and evaluate; shared_noise reads as --noise shared|independent.
SAMPLING_HELP = {
    "steps": "forward steps T (1 decoder pass + T-1 refinements)",
    "cfg": "guidance scale (1 = off)",
    "cfg_position": "where guidance applies: the encoder, the decoder or both",
    "schedule": "refinement noise strength per step: fixed (r_k = 1) or decay (r_k = 1 - k/T)",
    "shared_noise": "refinement noise drawn once (shared, official) or at every step",
    "noise_scale": "multiplies the refinement noise (the official noise_strength_scaler)",
    "alpha_max_deg": "refinement angle in degrees (default: the angle the model was trained with)",
}
NOISE_MODES = {"shared": True, "independent": False}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# SamplingConfig's errors name its fields; the user typed flags (longest first: cfg_position before cfg).
SAMPLING_RENAMES = tuple(
    (f"sampling.{name}", "--noise" if name == "shared_noise" else f"--{name.replace('_', '-')}")
    for name in sorted(SAMPLING_HELP, key=len, reverse=True)
)


def add_sampling_flags(
    parser: argparse.ArgumentParser, *, several: bool, steps: list[int], steps_note: str = ""
) -> None:
    """A flag per SamplingConfig field, its choices and default from the field; with `several`, each flag
    takes a list (evaluate scores every combination). `steps` is the step counts' default (always a list:
    generate draws several side by side)."""
    defaults, hints = SamplingConfig(), typing.get_type_hints(SamplingConfig)
    for field in dataclasses.fields(SamplingConfig):
        name, default = field.name, getattr(defaults, field.name)
        flag, kind, choices = f"--{name.replace('_', '-')}", hints[name], None
        if name == "shared_noise":
            flag, kind, choices = "--noise", str, tuple(NOISE_MODES)
            default = next(mode for mode, shared in NOISE_MODES.items() if shared == default)
        elif typing.get_origin(kind) is typing.Literal:
            kind, choices = str, typing.get_args(kind)
        else:
            kind = at_least(1) if name == "steps" else float
        listed = several or name == "steps"
        value = steps if name == "steps" else [default] if several else default
        shown = " ".join(map(str, value)) if isinstance(value, list) else value
        parser.add_argument(
            flag,
            dest=name,
            type=kind,
            choices=choices,
            nargs="+" if listed else None,
            default=value,
            help=SAMPLING_HELP[name]
            + (steps_note if name == "steps" else "")
            + (f" (default {shown})" if shown is not None else ""),
        )


def sampling_values(args: argparse.Namespace) -> dict[str, list[typing.Any]]:
    """SamplingConfig field -> the values given for it (a list even for a single-valued flag)."""
    values = {}
    for field in dataclasses.fields(SamplingConfig):
        given = getattr(args, field.name)
        given = given if isinstance(given, list) else [given]
        values[field.name] = [NOISE_MODES[v] for v in given] if field.name == "shared_noise" else given
    return values


def image_file(text: str) -> Path:
    """argparse type: a file name Pillow can write an image to, by its suffix."""
    path = Path(text)
    if path.suffix.lower() not in IMAGE_SUFFIXES or path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an image file name (allowed: *.png, *.jpg, *.webp)"
        )
    return path


def check_registry_uri(uri: str, *, local_allowed: bool) -> None:
    """UserError unless `uri` is a registry or run URI, or (when allowed) an existing local directory."""
    if MODEL_URI.fullmatch(uri) or (local_allowed and Path(uri).is_dir()):
        return
    forms = f"{MODEL_URI_FORMS} or a local checkpoint directory" if local_allowed else MODEL_URI_FORMS
    looks_local = local_allowed and "://" not in uri and not uri.startswith(("models:", "runs:"))
    what = "no such directory" if looks_local else "not a model URI"
    raise UserError(f"--model {uri}: {what} (accepted: {forms})")


def sample_labels(labels: list[int] | None, num: int, num_classes: int) -> list[int] | int:
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
    return (labels * math.ceil(num / len(labels)))[:num]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.generate", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model",
        required=True,
        help=f"{MODEL_URI_FORMS} (over MLflow), or a local checkpoint directory (no server needed)",
    )
    add_sampling_flags(
        parser, several=False, steps=[1], steps_note="; several are drawn from the same noise, side by side"
    )
    parser.add_argument("--num", type=at_least(1), default=16, help="number of images (default 16)")
    parser.add_argument("--out", required=True, type=image_file, help="PNG grid to write (or .jpg, .webp)")
    parser.add_argument(
        "--labels", type=at_least(0), nargs="+", help="class ids, cycled to --num (default: random)"
    )
    parser.add_argument(
        "--per-class",
        type=at_least(1),
        metavar="K",
        help="one row per class with K samples each (replaces --num)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and random classes")
    parser.add_argument("--raw-weights", action="store_true", help="the training weights instead of the EMA")
    parser.add_argument(
        "--bf16-autocast",
        action="store_true",
        help="run the networks under bf16 autocast, as training with optim.bf16_autocast (default: fp32)",
    )
    args = parser.parse_args(argv)
    return run(lambda: _generate(args), SAMPLING_RENAMES)


def _generate(args: argparse.Namespace) -> int:
    check_registry_uri(args.model, local_allowed=True)
    # torch, mlflow and PIL take ~3 s to import on 2 cores: only once the flags have been checked.
    import torch
    from PIL import Image

    from orchestrator.tracking.images import grid_image, side_by_side
    from orchestrator.tracking.mlflow_model import load_local, load_registered
    from orchestrator.tracking.runs import resolve_tracking_uri
    from sphere_core.sampling import generate

    knobs = {name: values[0] for name, values in sampling_values(args).items() if name != "steps"}
    samplings = [SamplingConfig(steps=steps, **knobs) for steps in args.steps]
    use_ema = not args.raw_weights
    if MODEL_URI.fullmatch(args.model):
        uri = resolve_tracking_uri(ExperimentConfig())
        model, config = load_registered(args.model, uri, use_ema=use_ema)
    else:
        model, config = load_local(Path(args.model), use_ema=use_ema)
    classes = config.model.num_classes
    if args.per_class is not None:
        if classes == 0:
            raise ConfigError("--per-class: the model is unconditional (num_classes 0)")
        labels: torch.Tensor | int = torch.arange(classes).repeat_interleave(args.per_class)
        columns = args.per_class
    else:
        given = sample_labels(args.labels, args.num, classes)
        labels = torch.tensor(given) if isinstance(given, list) else given
        columns = math.ceil(math.sqrt(args.num))
    num = labels.shape[0] if isinstance(labels, torch.Tensor) else labels
    if classes and not isinstance(labels, torch.Tensor):  # random classes, the same for every --steps
        labels = torch.randint(classes, (num,), generator=torch.Generator().manual_seed(args.seed))
    # One initial noise for every --steps value, so a T-step sample refines the 1-step one beside it.
    noise = torch.randn(num, *model.latent_shape, generator=torch.Generator().manual_seed(args.seed))
    blocks = [
        generate(
            model,
            labels,
            sampling=sampling.resolved(config.noise),
            generator=torch.Generator().manual_seed(args.seed + 1),
            noise=noise,
            bf16_autocast=args.bf16_autocast,
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
