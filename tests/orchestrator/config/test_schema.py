"""ExperimentConfig: the eval section (which metrics an eval reports, data a classifier cannot score) and
the SphereConfig it hands to sphere_core."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.config import metric_names
from orchestrator.config.schema import EvalConfig, ExperimentConfig
from orchestrator.data.config import DataConfig
from sphere_core.config import ConfigError, ModelConfig, OptimConfig, SamplingConfig

GRAY = ModelConfig(channels=1, num_classes=10)


def test_eval_metrics_name_each_step_count_and_the_reconstructions() -> None:
    cfg = ExperimentConfig(model=GRAY, sampling=SamplingConfig(steps=2), eval=EvalConfig(dataset="digits"))
    assert cfg.eval_steps == (1, 2)
    # A conditional model is also scored on the classes its samples were drawn for; images this small are
    # also scored in pixel space, with memorisation for samples only.
    samples = metric_names.sample_scores("clf", conditional=True, pixels=True)
    recon = metric_names.reconstruction_scores("clf", conditional=True, pixels=True)
    assert cfg.eval_metrics == (
        *(metric_names.of_samples(m, 1) for m in samples),
        *(metric_names.of_samples(m, 2) for m in samples),
        *map(metric_names.of_reconstructions, recon),
        metric_names.EVAL_SECONDS,
    )
    large = dataclasses.replace(cfg, model=ModelConfig(channels=1, num_classes=10, image_size=256))
    assert "fd_clf_1step" in large.eval_metrics and "fd_pix_1step" not in large.eval_metrics
    unconditional = dataclasses.replace(cfg, model=ModelConfig(channels=1, num_classes=0))
    assert "acc_clf_1step" not in unconditional.eval_metrics and "fd_clf_1step" in unconditional.eval_metrics
    one_step = dataclasses.replace(cfg, sampling=SamplingConfig(steps=1))
    assert one_step.eval_steps == (1,) and "fd_clf_1step" in one_step.eval_metrics


def test_eval_is_off_by_default_for_data_without_a_classifier() -> None:
    assert ExperimentConfig().eval.dataset == "none" and ExperimentConfig().eval_metrics == ()


def test_a_classifier_that_cannot_score_the_model_output_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"eval.dataset: .*model.channels is 3.*allowed: none"):
        ExperimentConfig(model=ModelConfig(channels=3), eval=EvalConfig(dataset="mnist"))
    with pytest.raises(ConfigError, match=r"model.num_classes 5"):
        ExperimentConfig(model=ModelConfig(channels=1, num_classes=5), eval=EvalConfig(dataset="mnist"))
    ExperimentConfig(model=ModelConfig(channels=1, num_classes=0), eval=EvalConfig(dataset="mnist"))


def test_inception_scores_any_images_against_reference_shards() -> None:
    cfg = ExperimentConfig(
        model=ModelConfig(channels=3, num_classes=1000),
        eval=EvalConfig(reference="s3://b/imagenet/val", inception="s3://b/weights/pt_inception.pth"),
    )
    assert cfg.eval.enabled and cfg.eval_metrics[0] == "fd_inception_1step"
    assert "recon_recall_inception" in cfg.eval_metrics
    assert cfg.eval_floor == cfg.data.url  # the floor's real images default to the training shards
    floor = dataclasses.replace(cfg.eval, floor="s3://b/imagenet/train-subset")
    assert dataclasses.replace(cfg, eval=floor).eval_floor == "s3://b/imagenet/train-subset"
    assert (
        ExperimentConfig(eval=EvalConfig(dataset="mnist", inception="w.pth")).eval_floor is None
    )  # built-in


def test_eval_num_images_needs_a_spread() -> None:
    with pytest.raises(ConfigError, match=r"eval\.num_images"):
        EvalConfig(num_images=8)


@pytest.mark.parametrize("flip", [True, False])
def test_sphere_config_records_the_data_flips(flip: bool) -> None:
    cfg = ExperimentConfig(data=DataConfig(random_flip=flip))
    assert cfg.sphere.augment.random_flip is flip
    assert (cfg.sphere.model, cfg.sphere.optim) == (cfg.model, cfg.optim)


def test_gradient_accumulation_must_split_the_batch_evenly() -> None:
    ExperimentConfig(data=DataConfig(batch_size=16), optim=OptimConfig(grad_accum_steps=4))
    with pytest.raises(ConfigError, match=r"optim\.grad_accum_steps: 3 does not divide data\.batch_size 16"):
        ExperimentConfig(data=DataConfig(batch_size=16), optim=OptimConfig(grad_accum_steps=3))
    with pytest.raises(ConfigError, match=r"optim\.grad_accum_steps: must be >= 1"):
        OptimConfig(grad_accum_steps=0)
