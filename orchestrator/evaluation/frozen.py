"""Inference-time evaluation of a frozen model: `python -m orchestrator.evaluation score --model URI ...` and
the `kind: evaluate` sweep (sweeps/steps.yaml) share every line below.

The model is a registry alias or version (`models:/NAME@ALIAS`, `models:/NAME/VERSION`) or a run's
checkpoint (`runs:/RUN_ID/PATH`). Its evaluation belongs to the run that trained it: the parent run goes into
that run's experiment, nested under it, so the MLflow UI shows the inference-time settings under the
training run. The parent holds the reconstruction metrics (rFID-proxy, once per model), the summary and
Pareto tables and plots; each sampling setting is a child run with its proxy metrics, their protocol
fingerprint, network passes per image, measured images/s and a sample grid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from mlflow import MlflowClient
from tqdm import tqdm

from orchestrator.config import metric_names
from orchestrator.config.search_space import apply_trial_params, expand_trials
from orchestrator.config.sweep_spec import SweepSpec
from orchestrator.data.registry import BUILTIN_NAMES
from orchestrator.evaluation.from_config import protocol_for
from orchestrator.evaluation.protocol import Protocol, evaluate_reconstructions, evaluate_samples
from orchestrator.tracking import reports, runs, sinks
from orchestrator.tracking.mlflow_model import load_registered
from orchestrator.tracking.registry import FINGERPRINT_TAG
from orchestrator.tracking.run_end import ended_with_the_sweep
from sphere_core.config import ConfigError, SamplingConfig, SphereConfig
from sphere_core.editing import reconstruct
from sphere_core.model import SphereEncoder
from sphere_core.sampling import generate, guidance_weights, passes_for


@dataclass(frozen=True)
class FrozenModel:
    uri: str
    model: SphereEncoder
    config: SphereConfig
    source_run_id: str  # the run that trained it: evaluations nest under it
    experiment_id: str  # that run's experiment
    version: str  # registry version, or "" for a runs:/ URI


def load_frozen(client: MlflowClient, uri: str, tracking_uri: str) -> FrozenModel:
    """The model and its lineage: a registered version's `source.run_id` tag, or the run in runs:/RUN_ID."""
    model, config = load_registered(uri, tracking_uri)
    source, version = lineage(client, uri)
    return FrozenModel(uri, model, config, source, client.get_run(source).info.experiment_id, version)


def lineage(client: MlflowClient, uri: str) -> tuple[str, str]:
    """(the run that trained the model at `uri`, its registry version or "" for a runs:/ URI)."""
    version = ""
    if uri.startswith("models:/"):
        name, alias_or_version = re.split("[@/]", uri.removeprefix("models:/"), maxsplit=1)
        registered = (
            client.get_model_version_by_alias(name, alias_or_version)
            if "@" in uri
            else client.get_model_version(name, alias_or_version)
        )
        version, source = registered.version, registered.tags.get("source.run_id") or registered.run_id
    else:
        source = uri.removeprefix("runs:/").split("/", 1)[0]
    if not source:
        raise ConfigError(f"evaluate.model: {uri} names no run that trained it (tag source.run_id)")
    return source, version


# --- one setting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SettingScore:
    metrics: dict[str, float]  # proxy metrics (+ floors), network_passes, images_per_s, seconds_per_image
    fingerprint: str
    fd_key: str  # e.g. "fd_clf", or "proxy/fd_clf" below the dataset's standard n


def score_setting(
    frozen: FrozenModel, sampling: SamplingConfig, protocol: Protocol, seed: int
) -> SettingScore:
    """Proxy metrics of n samples (balanced classes, the same noise for every setting), and their speed.
    `sampling` is resolved against the model (`sampling.resolved(frozen.config.noise)`)."""
    n, classes = protocol.n, frozen.config.model.num_classes
    labels: torch.Tensor | int = torch.arange(n) % classes if classes else n
    started = time.perf_counter()
    images = generate(
        frozen.model,
        labels,
        sampling=sampling,
        generator=torch.Generator().manual_seed(seed),
    )
    seconds = time.perf_counter() - started
    knobs = dataclasses.asdict(sampling)
    result = evaluate_samples(
        images,
        protocol=protocol.with_sampler(**{k: v for k, v in knobs.items() if v is not None}, seed=seed),
        labels=labels if isinstance(labels, torch.Tensor) else None,
    )
    metrics = {
        **result.flat(),
        "network_passes": float(passes_for(frozen.model, sampling)),
        "images_per_s": n / seconds,
        "seconds_per_image": seconds / n,
    }
    return SettingScore(metrics, result.fingerprint, protocol.key(metric_names.fd(protocol.extractor.tag)))


def score_reconstructions(frozen: FrozenModel, protocol: Protocol) -> tuple[dict[str, float], str]:
    """rFID-proxy: D(f(E(x))) of the first n held-out images, in the same features; (metrics, fingerprint)."""
    real, labels = protocol.real.images[: protocol.n], protocol.real.labels[: protocol.n]
    result = evaluate_reconstructions(
        reconstruct(frozen.model, real.float() / 127.5 - 1.0), protocol=protocol, labels=labels
    )
    return result.flat(), result.fingerprint


def canonical(model: SphereEncoder, sampling: SamplingConfig) -> SamplingConfig:
    """The setting with every knob that cannot change the samples at its default, so that equal samples
    are scored once: a 1-step sample has no refinement (schedule and noise sharing unused) and never
    meets the encoder (enc guidance unused); 2 steps draw refinement noise once, shared or not;
    unguided sampling has no position."""
    if sampling.steps == 1:
        sampling = dataclasses.replace(sampling, schedule="fixed", shared_noise=True)
    if sampling.steps == 2:
        sampling = dataclasses.replace(sampling, shared_noise=True)
    w_enc, w_dec = guidance_weights(model, sampling)
    if w_dec == 1.0 and (w_enc == 1.0 or sampling.steps == 1):
        sampling = dataclasses.replace(sampling, cfg=1.0, cfg_position="combo")
    return sampling


def sample_grid(frozen: FrozenModel, sampling: SamplingConfig) -> dict[str, torch.Tensor]:
    classes = frozen.config.model.num_classes
    labels: torch.Tensor | int = torch.arange(16) % classes if classes else 16
    images = generate(
        frozen.model,
        labels,
        sampling=sampling,
        generator=torch.Generator().manual_seed(0),
    )
    return {f"samples_{setting_name(sampling)}": images}


def setting_name(sampling: SamplingConfig) -> str:
    noise = "shared" if sampling.shared_noise else "indep"
    return f"{sampling.steps}step_cfg{sampling.cfg:g}_{sampling.cfg_position}_{sampling.schedule}_{noise}"


# --- the grid on one model (the sweep and the CLI) ---------------------------------------------


def run_evaluate_sweep(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every setting of the grid on one frozen model; returns the table rows. A resubmission against the
    same model version skips the settings already finished."""
    assert spec.evaluate is not None  # the loader requires it for kind: evaluate
    evaluate = spec.evaluate
    uri = runs.resolve_tracking_uri(spec.experiment)
    client = MlflowClient(uri)
    frozen = load_frozen(client, evaluate.model, uri)
    # The same sweep file against a newly promoted version is a new evaluation, not a resumed one.
    identity = f"{spec.digest}:{frozen.source_run_id}:{frozen.version}"
    spec = dataclasses.replace(spec, digest=hashlib.sha256(identity.encode()).hexdigest()[:10])
    nested_under_training = {
        "mlflow.parentRunId": frozen.source_run_id,
        "model.uri": frozen.uri,
        "model.version": frozen.version,
    }
    exp_id, parent_id = runs.open_sweep_run(client, spec, nested_under_training, exp_id=frozen.experiment_id)
    print(f"{frozen.uri} (version {frozen.version or '-'}, trained in run {frozen.source_run_id})")
    model = frozen.config.model
    protocol = protocol_for(
        evaluate,
        n=evaluate.num_images,
        image_size=model.image_size,
        channels=model.channels,
        seed=evaluate.seed,
    )
    with ended_with_the_sweep(client, parent_id):
        _log_reconstructions(client, parent_id, frozen, protocol)
        grid = [
            apply_trial_params(spec.experiment, p).sampling for p in expand_trials(spec.search, 1, "basic")
        ]
        # Resolved once against the model's training angle: every child run samples at the angle it names.
        resolved = (sampling.resolved(frozen.config.noise) for sampling in grid)
        distinct = list(dict.fromkeys(canonical(frozen.model, sampling) for sampling in resolved))
        print(f"{len(grid)} settings, {len(distinct)} with distinct samples (each scored once)")
        # 43 settings of sweeps/steps.yaml took ~5 min in silence: a bar on a terminal, none in a job log
        bar = tqdm(distinct, desc="settings", unit="setting", file=sys.stderr, disable=None)
        rows = [
            _evaluate_child(client, spec, exp_id, parent_id, frozen, protocol, sampling) for sampling in bar
        ]
        fd_key = protocol.key(metric_names.fd(protocol.extractor.tag))
        reports.log_summary(client, parent_id, rows, fd_key, "min")
        reports.log_evaluation_plots(client, parent_id, rows, fd_key=fd_key)
    print(reports.format_table(rows, fd_key))
    return rows


def _log_reconstructions(
    client: MlflowClient, parent_id: str, frozen: FrozenModel, protocol: Protocol
) -> None:
    recon_fd = protocol.key(metric_names.of_reconstructions(metric_names.fd(protocol.extractor.tag)))
    if recon_fd in client.get_run(parent_id).data.metrics:
        return  # once per model
    metrics, fingerprint = score_reconstructions(frozen, protocol)
    sink = sinks.MLflowSink(client, parent_id)
    sink.log(metrics, step=0)
    sink.flush(final=True)
    client.set_tag(parent_id, FINGERPRINT_TAG.format(recon_fd), fingerprint)
    floor = metrics[metric_names.floor(recon_fd)]
    print(f"  reconstructions: {recon_fd} {metrics[recon_fd]:.4g} (floor {floor:.4g})")


def _evaluate_child(
    client: MlflowClient,
    spec: SweepSpec,
    exp_id: str,
    parent_id: str,
    frozen: FrozenModel,
    protocol: Protocol,
    sampling: SamplingConfig,
) -> dict[str, Any]:
    assert spec.evaluate is not None
    params = {path: getattr(sampling, path.removeprefix("sampling.")) for path in spec.search}
    cfg = apply_trial_params(spec.experiment, params)
    run_name = f"{spec.experiment_name}-{setting_name(sampling)}"
    run_id, _ = runs.open_run(
        client,
        exp_id,
        name=run_name,
        key={runs.TRIAL_TAG: run_name},
        tags={"mlflow.parentRunId": parent_id, "model.version": frozen.version},
    )
    run = client.get_run(run_id)
    if run.info.status != "FINISHED":  # a resubmitted sweep keeps finished settings
        score = score_setting(frozen, sampling, protocol, spec.evaluate.seed)
        runs.log_config(client, run_id, cfg)
        client.set_tag(run_id, FINGERPRINT_TAG.format(score.fd_key), score.fingerprint)
        sink = sinks.MLflowSink(client, run_id)
        sink.log(score.metrics, step=0)
        sink.flush(final=True)
        sink.log_images(lambda: sample_grid(frozen, sampling), step=0)
        client.set_terminated(run_id, "FINISHED")
        run = client.get_run(run_id)
    fingerprints = {
        k.removeprefix("fingerprint."): v for k, v in run.data.tags.items() if k.startswith("fingerprint.")
    }
    return {
        "setting": setting_name(sampling),
        **dataclasses.asdict(sampling),
        **run.data.metrics,
        "fingerprint": next(iter(fingerprints.values()), "")[:12],
        "curve_start": setting_name(canonical(frozen.model, dataclasses.replace(sampling, steps=1))),
        "run": run_name,
    }


def trained_dataset(client: MlflowClient, uri: str) -> str:
    """The built-in whose classifier scored the model during training (its run's eval.dataset), so a
    Fashion-MNIST model is not scored by the MNIST classifier; mnist for a model trained without one."""
    params = client.get_run(lineage(client, uri)[0]).data.params
    dataset = params.get("eval.dataset", "mnist")
    return dataset if dataset in BUILTIN_NAMES else "mnist"
