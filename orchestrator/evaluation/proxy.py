"""What training evaluates at its eval cadence, on the evaluating rank: proxy metrics of the EMA model under
the pinned protocol (samples at 1 and `sampling.steps` steps, reconstructions of held-out images) with the
latent diagnostics, and the step-0 picture of the training noise's angles. The worker calls these; the
metric math is protocol.py's, the figures diagnostics.py's.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import torch

from orchestrator.config import metric_names
from orchestrator.config.schema import ExperimentConfig
from orchestrator.evaluation import diagnostics
from orchestrator.evaluation.from_config import protocol_for
from orchestrator.evaluation.protocol import (
    MetricResult,
    Protocol,
    evaluate_reconstructions,
    evaluate_samples,
)
from orchestrator.tracking.sinks import Evaluation
from sphere_core.editing import reconstruct
from sphere_core.model import SphereEncoder
from sphere_core.precision import bf16_autocast
from sphere_core.sampling import generate
from sphere_core.spherify import spherify
from sphere_core.train_step import TrainState

NOISE_ANGLE_BATCHES = 64  # training-noise draws for the angle histogram (x the per-rank batch)


def noise_angle_evaluation(cfg: ExperimentConfig) -> Evaluation:
    """The noise angles this run's NoiseConfig gives in training, at its per-rank batch size."""
    angles = diagnostics.training_noise_angles(
        cfg.noise,
        (cfg.model.num_tokens, cfg.model.token_channels),
        batch=cfg.data.batch_size,
        batches=NOISE_ANGLE_BATCHES,
        seed=cfg.run.seed,
    )
    return Evaluation(
        angles.metrics(), {"diagnostics/noise_angles.png": diagnostics.noise_angle_figure(angles)}
    )


class ProxyEval:
    """Proxy metrics of the EMA model at eval cadence (eval.num_images per set, seeded by eval.seed, so
    evals compare across steps and trials) and the latent coverage of the held-out images it reconstructs.

    Metrics: <score>_<T>step for samples of T forward steps (T in 1 and sampling.steps; balanced
    labels), recon_<score> for reconstructions of held-out test images, the latent_* coverage
    diagnostics and eval_s. Tags: fingerprint.<metric> and floor(_std).<metric> (real vs real at n)."""

    def __init__(self, state: TrainState, cfg: ExperimentConfig) -> None:
        self.state, self.cfg = state, cfg
        self.sampling = cfg.sampling.resolved(cfg.noise)  # the angle it samples at, in every fingerprint

    @functools.cached_property
    def protocol(self) -> Protocol:  # built at the first eval: only the evaluating rank pays for it
        return protocol_for(
            self.cfg.eval,
            n=self.cfg.eval.num_images,
            image_size=self.cfg.model.image_size,
            channels=self.cfg.model.channels,
            seed=self.cfg.eval.seed,
            floor=self.cfg.eval_floor,
        )

    @functools.cached_property
    def held_out(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed draw of n held-out images (uint8) and labels: never trained on."""
        split = self.protocol.real
        generator = torch.Generator().manual_seed(self.cfg.eval.seed)
        pick = torch.randperm(len(split.labels), generator=generator)[: self.cfg.eval.num_images]
        return split.images[pick], split.labels[pick]

    @torch.no_grad()
    def __call__(self) -> Evaluation:
        if not self.cfg.eval.enabled:
            return Evaluation({})
        started = time.perf_counter()
        model = self.state.ema.eval()
        outputs = {name: tensor.cpu() for name, tensor in self.model_outputs(model).items()}
        labels = self.held_out[1]
        kinds = {"conditional": self.cfg.model.conditional, "pixels": self.protocol.pixels is not None}
        metrics: dict[str, float] = {}
        tags: dict[str, str] = {}
        for steps in self.cfg.eval_steps:
            result = self._score_samples(outputs[metric_names.sample_images(steps)], steps)
            for score in metric_names.sample_scores(self.cfg.eval.tag, **kinds):  # fd_clf -> fd_clf_1step
                name = metric_names.of_samples(score, steps)
                metrics[name] = result.values[score]
                tags |= protocol_tags(name, score, result)
        recon = evaluate_reconstructions(outputs["reconstructions"], protocol=self.protocol, labels=labels)
        scores = metric_names.reconstruction_scores(self.cfg.eval.tag, **kinds)
        for name in map(metric_names.of_reconstructions, scores):  # recon_fd_clf, ...
            metrics[name] = recon.values[name]
            tags |= protocol_tags(name, name, recon)
        v = outputs["latents"]
        coverage = diagnostics.Coverage.of(v, generator=torch.Generator().manual_seed(self.cfg.eval.seed))
        figures = {
            "diagnostics/latent_cosines.png": diagnostics.cosine_histogram_figure(coverage),
            "diagnostics/latent_projection.png": diagnostics.projection_figure(
                v, labels, seed=self.cfg.eval.seed
            ),
        }
        strength = diagnostics.conditioning_strength(
            model, points=16, generator=torch.Generator().manual_seed(self.cfg.eval.seed)
        )
        metrics |= {**coverage.metrics(), **strength, "eval_s": time.perf_counter() - started}
        return Evaluation(metrics, figures, tags)

    @torch.no_grad()
    def model_outputs(self, model: SphereEncoder) -> dict[str, torch.Tensor]:
        """Everything the eval asks of the model, on the model's device, in training's precision
        (optim.bf16_autocast): samples_<T>step and the held-out images' latents and reconstructions
        (images in [0, 1], fp32)."""
        device = next(model.parameters()).device
        bf16 = self.cfg.optim.bf16_autocast
        outputs = {}
        for steps in self.cfg.eval_steps:
            outputs[metric_names.sample_images(steps)] = generate(
                model,
                self._sample_labels(),
                sampling=dataclasses.replace(self.sampling, steps=steps),
                generator=torch.Generator().manual_seed(self.cfg.eval.seed),
                bf16_autocast=bf16,
            )
        images, labels = self.held_out
        x = (images.float() / 127.5 - 1.0).to(device)  # uint8 -> [-1, 1], the model's input range
        y = labels.to(device) if self.cfg.model.conditional else None
        with bf16_autocast(device, bf16):
            outputs["latents"] = spherify(model.encode(x, y))  # (n, N, d), fp32 as the encoder returns it
            # The official rFID's reconstruction, as `evaluate` scores it: with the null class, so the
            # label cannot carry the class past a poor autoencoder (RECONSTRUCTION in protocol.py).
            outputs["reconstructions"] = reconstruct(model, x).float()
        return outputs

    def _sample_labels(self) -> torch.Tensor | int:
        n, classes = self.cfg.eval.num_images, self.cfg.model.num_classes
        return torch.arange(n) % classes if classes else n

    def _score_samples(self, images: torch.Tensor, steps: int) -> MetricResult:
        sampling = dataclasses.replace(self.sampling, steps=steps)
        # The same sampler description as the evaluate sweep's, so equal settings share a fingerprint;
        # bf16 samples differ from fp32 ones, so they name it (fp32 fingerprints stay as they were).
        knobs = {k: v for k, v in dataclasses.asdict(sampling).items() if v is not None}
        if self.cfg.optim.bf16_autocast:
            knobs["autocast"] = "bf16"
        labels = self._sample_labels()
        return evaluate_samples(
            images,
            protocol=self.protocol.with_sampler(**knobs, seed=self.cfg.eval.seed),
            labels=labels if isinstance(labels, torch.Tensor) else None,
        )


def protocol_tags(name: str, key: str, result: MetricResult) -> dict[str, str]:
    """What makes metric `name` (the protocol's `key`) comparable: its fingerprint, n and floor."""
    return {
        f"fingerprint.{name}": result.fingerprint,
        f"floor.{name}": f"{result.floor[key]:.6g}",
        f"floor_std.{name}": f"{result.floor_std[key]:.6g}",
        f"eval_n.{name}": f"{result.n}{' (proxy)' if result.proxy else ''}",
    }
