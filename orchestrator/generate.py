"""Sampling from the model registry: `python -m orchestrator.generate --model models:/NAME@ALIAS ...`.

A registered version is a plain sphere_core checkpoint directory (see orchestrator/registry.py): it is
downloaded over the tracking server and loaded with sphere_core alone (EMA weights by default).
Also the inference-time sweep (`kind: evaluate`): each (steps, cfg, cfg_position) setting on the frozen
model is a child run with its sample grid and proxy metrics in the committed classifier's features.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from orchestrator.config.schema import ExperimentConfig
from orchestrator.config.search_space import apply_trial_params, expand_trials
from orchestrator.config.sweep_spec import SweepSpec
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


# --- the inference-time sweep (kind: evaluate) ------------------------------------------------------


def run_evaluate_sweep(spec: SweepSpec) -> None:
    """Every setting of the grid on one frozen model; a resubmitted sweep skips settings already finished."""
    from mlflow import MlflowClient

    from orchestrator import registry, tracking
    from orchestrator.evaluation.protocol import Protocol

    assert spec.evaluate is not None  # the loader requires it for kind: evaluate
    cfg, evaluate = spec.experiment, spec.evaluate
    uri = resolve_tracking_uri(cfg)
    model, config = load_registered(evaluate.model, uri)
    client = MlflowClient(uri)
    name, alias = evaluate.model.removeprefix("models:/").split("@", 1)
    version = client.get_model_version_by_alias(name, alias).version
    exp_id, parent_id = tracking.open_sweep_run(
        client, spec, {"model.uri": evaluate.model, "model.version": version}
    )
    print(f"sweep {spec.experiment_name}: parent run {parent_id}; {evaluate.model} is version {version}")
    protocol = Protocol.for_dataset(
        evaluate.dataset, n=evaluate.num_images, image_size=config.model.image_size, seed=evaluate.seed
    )
    rows = []
    for params in expand_trials(spec.search, 1, "basic"):
        setting = apply_trial_params(cfg, params).sampling
        run_name = f"{spec.experiment_name}-" + "-".join(
            f"{p.rsplit('.', 1)[-1]}{v}" for p, v in params.items()
        )
        run_id, _ = tracking.open_run(
            client,
            exp_id,
            name=run_name,
            key={tracking.TRIAL_TAG: run_name},
            tags={"mlflow.parentRunId": parent_id, "model.version": version},
        )
        run = client.get_run(run_id)
        if run.info.status != "FINISHED":  # a resubmitted sweep keeps finished settings
            metrics = evaluate_setting(model, config, setting, protocol, evaluate.seed)
            tracking.log_config(client, run_id, apply_trial_params(cfg, params), params)
            sink = tracking.MLflowSink(client, run_id)
            sink.log(metrics, step=0)
            sink.log_images(functools.partial(sample_grid, model, config, setting), step=0)
            client.set_terminated(run_id, "FINISHED")
            run = client.get_run(run_id)
        rows.append({"run": run_name, **params, **run.data.metrics})
        print(f"  {json.dumps(params)}: {_brief(run.data.metrics)}")
    metric = next(k for k in rows[0] if k.endswith("fd_clf"))
    registry.log_summary(client, parent_id, rows, metric, "min")
    client.set_terminated(parent_id, "FINISHED")


def evaluate_setting(
    model: SphereEncoder, config: SphereConfig, sampling: SamplingConfig, protocol: Any, seed: int
) -> dict[str, float]:
    """Proxy metrics of n samples (balanced classes, the same noise for every setting) + time per image."""
    from orchestrator.evaluation.protocol import evaluate_samples

    n, classes = protocol.n, config.model.num_classes
    labels: torch.Tensor | int = torch.arange(n) % classes if classes else n
    started = time.perf_counter()
    images = generate(
        model,
        labels,
        sampling=sampling,
        alpha_max_deg=config.noise.alpha_max_deg,
        generator=torch.Generator().manual_seed(seed),
    )
    seconds = (time.perf_counter() - started) / n
    settings = protocol.with_sampler(
        steps=sampling.steps, cfg=sampling.cfg, cfg_position=sampling.cfg_position, seed=seed
    )
    result = evaluate_samples(images, protocol=settings)
    return {**result.flat(), "seconds_per_image": seconds}


def sample_grid(
    model: SphereEncoder, config: SphereConfig, sampling: SamplingConfig
) -> dict[str, torch.Tensor]:
    classes = config.model.num_classes
    labels: torch.Tensor | int = torch.arange(16) % classes if classes else 16
    images = generate(
        model,
        labels,
        sampling=sampling,
        alpha_max_deg=config.noise.alpha_max_deg,
        generator=torch.Generator().manual_seed(0),
    )
    return {f"samples_{sampling.steps}step_cfg{sampling.cfg:g}_{sampling.cfg_position}": images}


def _brief(metrics: dict[str, float]) -> str:
    keys = [k for k in metrics if k.endswith(("fd_clf", "recall_clf", "precision_clf", "seconds_per_image"))]
    return ", ".join(f"{k} {metrics[k]:.4g}" for k in sorted(keys))


if __name__ == "__main__":
    sys.exit(main())
