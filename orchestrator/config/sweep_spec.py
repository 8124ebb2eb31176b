"""The typed shape of a sweep file (`sweeps/*.yaml`), loaded strictly with `sphere_core.config.from_dict`.

A sweep file is an overlay on an ExperimentConfig:

    name: noise                 # optional; the file stem by default
    kind: train                 # train: Tune retrains per trial; evaluate: sample a frozen registered model
    base: base/mnist.yaml       # a YAML ExperimentConfig, relative to this file (or `experiment:` inline)
    overrides: {run.steps: 40}  # dotted path -> value
    search:                     # dotted path -> exactly one distribution
      noise.alpha_max_deg: {grid: [75.0, 85.0]}
    tune: {metric: loss, mode: min, scheduler: asha, grace_period: 10}
    evaluate: {model: "models:/sphere-encoder@champion", num_images: 64}   # kind: evaluate only
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from orchestrator.config.schema import ExperimentConfig, MetricSource
from orchestrator.data.registry import DatasetChoice
from sphere_core.config import ConfigError, short_repr

# A stored model: a registry alias or version (MLflow's own models:/ forms), or a checkpoint logged on a run.
MODEL_URI = re.compile(r"models:/[^/@]+(@[^/@]+|/\d+)|runs:/[^/]+/.+")
MODEL_URI_FORMS = "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH"
DIST_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")


@dataclass(frozen=True, kw_only=True)
class SearchDist:
    """One search dimension: exactly one of the fields is set (randint's high is exclusive, as in Tune)."""

    grid: list[Any] | None = None  # every value, crossed with the other grids
    choice: list[Any] | None = None  # one value drawn per sample
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @property
    def kind(self) -> str:
        return next(k for k in DIST_KINDS if getattr(self, k) is not None)

    @property
    def spec(self) -> Any:
        return getattr(self, self.kind)

    @property
    def is_random(self) -> bool:
        return self.kind != "grid"

    def describe(self) -> str:
        if self.kind == "grid":
            return f"grid{list(self.spec)}"
        return f"{self.kind}({', '.join(map(str, self.spec))})"


@dataclass(frozen=True, kw_only=True)
class TuneConfig:
    metric: str = "loss"  # one the training loop reports at each checkpoint (see orchestrator.train.loop)
    mode: Literal["min", "max"] = "min"
    search_alg: Literal["basic", "optuna"] = "basic"  # basic = Tune's grid/random variant generator
    scheduler: Literal["fifo", "asha"] = "fifo"
    grace_period: int = 10  # ASHA: optimiser steps before a trial may be stopped
    num_samples: int = 1  # basic: repeats of the grid; optuna: total trials
    max_concurrent_trials: int = 2

    def __post_init__(self) -> None:
        for name in ("grace_period", "num_samples", "max_concurrent_trials"):
            if getattr(self, name) < 1:
                raise ConfigError(f"tune.{name}: must be >= 1")


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(MetricSource):
    """Inference-time sweep on a frozen model: each setting becomes a child run of the model's run.
    With `reference` (held-out shards), `floor` (training shards) is required: the model's run does not
    say where its training data lived."""

    section: ClassVar[str] = "evaluate"
    model: str  # one of MODEL_URI_FORMS
    dataset: DatasetChoice = "mnist"
    num_images: int = 256  # samples per setting (FD/KID/P/R are biased by n: keep it fixed)
    seed: int = 0  # the same noise and labels for every setting, so settings differ only by their knobs

    def __post_init__(self) -> None:
        super().__post_init__()
        if not MODEL_URI.fullmatch(self.model):
            raise ConfigError(
                f"evaluate.model: {short_repr(self.model)} is not a frozen model (allowed: {MODEL_URI_FORMS})"
            )
        if self.num_images < 16:
            raise ConfigError("evaluate.num_images: must be >= 16 (the metrics need a spread of samples)")
        if not self.enabled:
            raise ConfigError(
                "evaluate.dataset: none needs evaluate.reference (allowed: digits, mnist, fashion-mnist, or "
                "none with reference shards)"
            )
        if self.reference is not None and self.floor is None:
            raise ConfigError(
                "evaluate.floor: required with evaluate.reference (allowed: an fsspec URL of training "
                "shards, for the real-vs-real floor)"
            )


@dataclass(frozen=True, kw_only=True)
class SweepFile:
    """A sweep file as written, before the base is read and the overrides applied."""

    name: str | None = None
    kind: Literal["train", "evaluate"] = "train"
    base: str | None = None
    experiment: dict[str, Any] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    search: dict[str, SearchDist] = field(default_factory=dict)
    tune: TuneConfig = field(default_factory=TuneConfig)
    evaluate: EvaluateConfig | None = None


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """A resolved sweep: the base experiment with overrides applied, and what varies around it."""

    name: str
    kind: Literal["train", "evaluate"]
    experiment: ExperimentConfig
    search: dict[str, SearchDist]
    tune: TuneConfig
    evaluate: EvaluateConfig | None
    digest: str  # sha256 prefix of the resolved content: names the Tune experiment, tags the parent run
    sets: dict[str, Any] = field(default_factory=dict)  # submit-time `--set` overrides, already applied

    @property
    def experiment_name(self) -> str:
        """Deterministic Tune experiment name: resubmitting the same resolved sweep restores it."""
        return f"{self.name}-{self.digest}"
