"""The experiment config: the sphere_core configs plus data, run length, scaling and tracking.

YAML is loaded strictly into `ExperimentConfig` (orchestrator/config/loader.py) and travels typed; it
becomes a dict only where Ray asks for one (Ray Train's `train_loop_config`, which its dashboard shows as
JSON), and each worker rebuilds the typed object with `from_dict` on its first line. A trial's params arrive
from Tune as a dict of dotted paths and are applied with `apply_trial_params`, which validates them like the
file.
Dotted paths into this tree ("noise.alpha_max_deg", "loss.latent_con") are what sweeps vary.

Naming: each section a user writes in YAML is a `*Config` named after its key (`run:` RunConfig, `eval:`
EvalConfig, `evaluate:` EvaluateConfig), as sphere_core's are; `SweepFile` is a sweep file's typed shape and
`SweepSpec` the whole sweep resolved (base, overrides, --set), ready to run. Ray Train's own RunConfig and
ScalingConfig are imported only inside the function that builds the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from orchestrator.config import metric_names
from orchestrator.data.config import DataConfig
from orchestrator.data.registry import DatasetChoice
from sphere_core.config import (
    RANDOM_CONV_SEED,
    RANDOM_CONV_WIDTH,
    AugmentConfig,
    ConfigError,
    DiscriminatorConfig,
    LossWeights,
    ModelConfig,
    NoiseConfig,
    OptimConfig,
    SamplingConfig,
    SphereConfig,
    from_dict,
    to_dict,
)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    steps: int = 200  # optimiser steps per trial
    log_every: int = 10
    eval_every: int = 100  # sample grids / proxy metrics cadence
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    seed: int = 0  # per-rank seed = seed * world_size + rank
    storage_path: str = "s3://sphere/ray-results"  # Ray Train/Tune storage (local path or s3://)
    max_failures: int = 2  # worker-group restarts from the latest checkpoint
    storage_retry_s: float = 120.0  # checkpoint and Tune-state I/O retry a lost connection 1-2x this long

    def __post_init__(self) -> None:
        if self.storage_retry_s < 0:
            raise ConfigError("run.storage_retry_s: must be >= 0 (seconds)")
        for name in ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"run.{name}: must be >= 1")


@dataclass(frozen=True, kw_only=True)
class ScalingConfig:
    workers_per_trial: int = 2
    cpus_per_worker: float = 0.49  # Tune's driver takes 0.01, so 2 trials x 2 workers fit 2 cores
    use_gpu: bool = False

    def __post_init__(self) -> None:
        if self.workers_per_trial < 1:
            raise ConfigError("scaling.workers_per_trial: must be >= 1")
        if self.cpus_per_worker <= 0:
            raise ConfigError("scaling.cpus_per_worker: must be > 0")


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    experiment: str = "sphere-smoke"  # one MLflow experiment per sweep
    registered_model: str = "sphere-encoder"
    alias: str = "champion"
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI from the environment


CLASSIFIER_IMAGES = (1, 10)  # every built-in metric classifier: (channels, classes)


@dataclass(frozen=True, kw_only=True)
class MetricSource:
    """Which features score images, and which real images they are compared with.

    - features: Inception-v3 when `inception` names its weights, else the committed classifier of the
      built-in `dataset` (1-channel, 10 classes);
    - real images: the `reference` shards (a folder written by `python -m orchestrator.data build`, e.g.
      your held-out split) when given, else the built-in dataset's test split;
    - the real-vs-real floor: `floor` shards (training images), else the built-in's train split."""

    section: ClassVar[str]  # the YAML section, for error messages
    dataset: DatasetChoice = "none"
    inception: str | None = field(
        default=None,
        metadata={"give": "a path or fsspec URL of pytorch-fid's pt_inception-2015-12-05-6726825d.pth"},
    )
    reference: str | None = field(
        default=None,
        metadata={
            "give": "an fsspec URL of held-out shards: the --out of `python -m orchestrator.data build "
            "--source VAL_FOLDER_OR_LIST`"
        },
    )
    floor: str | None = field(
        default=None, metadata={"give": "an fsspec URL of training shards (the real-vs-real floor)"}
    )

    def __post_init__(self) -> None:
        s = self.section
        if self.dataset == "none" and self.reference is None:
            for name in ("inception", "floor"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"{s}.{name}: set {s}.dataset (allowed: digits, mnist, fashion-mnist) or "
                        f"{s}.reference (held-out shards): the real images to compare with"
                    )
        if self.dataset == "none" and self.reference is not None and self.inception is None:
            raise ConfigError(
                f"{s}.inception: required with {s}.reference when {s}.dataset is none: the committed "
                "classifiers score only the built-in datasets (allowed: a path or fsspec URL of "
                "pt_inception-2015-12-05-6726825d.pth)"
            )
        if self.floor is not None and self.reference is None:
            raise ConfigError(f"{s}.floor: only with {s}.reference (a built-in's floor is its train split)")

    @property
    def enabled(self) -> bool:
        return self.dataset != "none" or self.reference is not None

    @property
    def tag(self) -> str:
        """The feature space's metric-name suffix."""
        return "inception" if self.inception is not None else "clf"


@dataclass(frozen=True, kw_only=True)
class EvalConfig(MetricSource):
    """Proxy metrics at run.eval_every and the final step (rank 0, EMA weights), for Tune and MLflow.
    Off while neither eval.dataset nor eval.reference is set; eval.floor defaults to data.url."""

    section: ClassVar[str] = "eval"
    num_images: int = 256  # n per image set: small and fixed (FD is biased by n), so marked proxy
    seed: int = 0  # the same noise, labels and held-out images at every eval and in every trial

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_images < 16:
            raise ConfigError("eval.num_images: must be >= 16 (the metrics need a spread of samples)")


@dataclass(frozen=True, kw_only=True)
class PerceptualConfig:
    """The frozen network of the perceptual loss terms (method §1.4). `files`: the published LPIPS-VGG16
    and/or ConvNeXt-S from weight files, as paths or fsspec URLs (s3://, gs://); none ship with the project
    and nothing is fetched from the internet (LPIPS needs both vgg16 and lpips; ConvNeXt-S alone is allowed).
    `random-conv`: the project's own features, a small conv net frozen at a random initialisation drawn
    from `seed` (sphere_core/perceptual.py), which needs no file. Without either, the perceptual terms
    must be 0."""

    network: Literal["files", "random-conv"] = "files"
    seed: int = RANDOM_CONV_SEED  # the random-conv weights; apart from every metric network's
    width: int = RANDOM_CONV_WIDTH  # the random-conv net's first width (32: 32-64-64-128-128 channels)
    # The frozen network's arithmetic: bf16 autocast where the device does bf16 in hardware (a GPU that
    # supports it; a CPU with AVX512-BF16 or AMX), else fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    vgg16: str | None = field(
        default=None, metadata={"give": "a path or fsspec URL of torchvision's vgg16-397923af.pth"}
    )
    lpips: str | None = field(
        default=None,
        metadata={
            "give": "a path or fsspec URL of the LPIPS VGG heads (the lpips package's weights/v0.1/vgg.pth)"
        },
    )
    convnext_small: str | None = field(
        default=None, metadata={"give": "a path or fsspec URL of torchvision's convnext_small-0c510722.pth"}
    )

    def __post_init__(self) -> None:
        if (self.vgg16 is None) != (self.lpips is None):
            raise ConfigError("perceptual.lpips: LPIPS needs both perceptual.vgg16 and perceptual.lpips")
        if not 1 <= self.width <= 1024:
            raise ConfigError(f"perceptual.width: {self.width} (allowed: 1..1024)")
        files = self.vgg16 is not None or self.convnext_small is not None
        if self.network == "random-conv" and files:
            raise ConfigError(
                "perceptual.network: random-conv takes no weight files (allowed: files with "
                "perceptual.vgg16/lpips/convnext_small, or random-conv without them)"
            )

    @property
    def given(self) -> bool:
        """Whether the perceptual terms have a network."""
        return self.network == "random-conv" or self.vgg16 is not None or self.convnext_small is not None


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    name: str = "smoke"
    model: ModelConfig = field(default_factory=ModelConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # used for eval grids
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    discriminator: DiscriminatorConfig = field(
        default_factory=DiscriminatorConfig
    )  # when loss.adversarial > 0

    def __post_init__(self) -> None:
        if self.data.batch_size % self.optim.grad_accum_steps:
            raise ConfigError(
                f"optim.grad_accum_steps: {self.optim.grad_accum_steps} does not divide data.batch_size "
                f"{self.data.batch_size} (each rank's batch is split into equal micro-batches)"
            )
        channels, classes = CLASSIFIER_IMAGES
        if (
            self.eval.enabled
            and self.eval.tag == "clf"
            and (self.model.channels != channels or self.model.num_classes not in (0, classes))
        ):
            raise ConfigError(
                f"eval.dataset: the {self.eval.dataset} classifier scores {channels}-channel images of "
                f"{classes} classes, but model.channels is {self.model.channels} and model.num_classes "
                f"{self.model.num_classes} (allowed: none, or eval.inception for other data)"
            )

    @property
    def eval_floor(self) -> str | None:
        """The training shards behind the real-vs-real floor when eval.reference is set."""
        return (self.eval.floor or self.data.url) if self.eval.reference is not None else None

    @property
    def eval_steps(self) -> tuple[int, ...]:
        """Forward steps of the evaluated samples: 1 and sampling.steps."""
        return tuple(dict.fromkeys((1, self.sampling.steps)))

    @property
    def eval_metrics(self) -> tuple[str, ...]:
        """What each eval reports (fd_clf_1step, ..., recon_fd_clf, ..., eval_s); () when eval is off."""
        if not self.eval.enabled:
            return ()
        shape = (self.model.channels, self.model.image_size, self.model.image_size)
        return metric_names.eval_metrics(
            self.eval.tag,
            conditional=self.model.conditional,
            steps=self.eval_steps,
            pixels=metric_names.has_pixel_space(shape),
        )

    @property
    def sphere(self) -> SphereConfig:
        # Flips are read by the data pipeline from data.random_flip; the SphereConfig (saved with every
        # checkpoint, compared with the presets) records them as `augment`.
        augment = AugmentConfig(random_flip=self.data.random_flip)
        return SphereConfig(
            model=self.model,
            noise=self.noise,
            loss=self.loss,
            optim=self.optim,
            augment=augment,
            discriminator=self.discriminator,
        )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        return from_dict(cls, data)
