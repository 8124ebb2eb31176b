"""Metric names come from orchestrator/config/metric_names.py; these bind the names to what reports them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orchestrator.config import metric_names
from orchestrator.config.loader import load_experiment
from sphere_core.presets import get_preset
from sphere_core.train_step import make_train_state, train_step

BASE = Path(__file__).resolve().parents[3] / "sweeps" / "base" / "mnist.yaml"


def test_names_and_their_inverses() -> None:
    logged = metric_names.under_protocol(metric_names.of_samples(metric_names.fd("clf"), 4), proxy=True)
    assert logged == "proxy/fd_clf_4step"
    assert metric_names.parse_protocol(logged) == ("fd_clf_4step", True)
    assert metric_names.space_of("fd_inception") == "inception"
    assert metric_names.floor_std("recon_fd_clf") == "recon_fd_clf_floor_std"


@pytest.mark.parametrize("tag", ["clf", "inception"])
def test_every_declared_score_is_found_again_from_any_name_it_is_logged_under(tag: str) -> None:
    for score in metric_names.SCORE_REGISTRY:
        name = score.named(tag)
        for logged in (name, metric_names.of_samples(name, 4), metric_names.of_reconstructions(name)):
            assert metric_names.score_of(metric_names.under_protocol(logged, proxy=True)) == score
    assert metric_names.score_of("loss") is None and metric_names.score_of("time_step_s") is None


def test_class_scores_need_the_dataset_classifier_and_memorisation_needs_samples() -> None:
    with_classes = set(metric_names.scores("clf", conditional=True)) - set(metric_names.scores("clf"))
    assert with_classes == {s.named("clf") for s in metric_names.SCORE_REGISTRY if s.needs == "labels"}
    assert metric_names.scores("inception", conditional=True) == metric_names.scores("inception")
    samples = metric_names.sample_scores("clf", conditional=False, pixels=True)
    recon = metric_names.reconstruction_scores("clf", conditional=False, pixels=True)
    assert set(samples) - set(recon) == {s.name for s in metric_names.SCORE_REGISTRY if s.samples_only}


def test_a_training_step_reports_the_declared_names() -> None:
    config = get_preset("mnist-32-nano")
    state = make_train_state(config, device="cpu")
    images, labels = torch.rand(4, 1, 32, 32) * 2 - 1, torch.arange(4)
    out = train_step(state, images, labels, optim=config.optim, global_batch=4, generator=torch.Generator())
    terms = config.loss.reported_terms(perceptual=False)  # no perceptual network given: no perceptual terms
    assert set(out.metrics) == {*metric_names.TRAIN_STEP, *terms}


def test_an_eval_reports_samples_at_each_step_count_and_reconstructions() -> None:
    cfg = load_experiment(BASE)
    names = cfg.eval_metrics
    assert names[-1] == metric_names.EVAL_SECONDS
    for steps in cfg.eval_steps:
        assert metric_names.of_samples(metric_names.fd(cfg.eval.tag), steps) in names
    assert metric_names.of_reconstructions(metric_names.fd(cfg.eval.tag)) in names
