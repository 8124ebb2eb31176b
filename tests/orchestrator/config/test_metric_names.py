"""Metric names come from orchestrator/config/metric_names.py; these bind the names to what reports them."""

from __future__ import annotations

from pathlib import Path

import torch

from orchestrator.config import metric_names
from orchestrator.config.loader import load_experiment
from sphere_core.presets import get_preset
from sphere_core.train_step import make_train_state, train_step

BASE = Path(__file__).resolve().parents[3] / "sweeps" / "base" / "mnist.yaml"


def test_names_and_their_inverses() -> None:
    assert metric_names.scores("clf", conditional=True) == (
        "fd_clf", "kid_clf", "precision_clf", "recall_clf", "acc_clf", "spread_clf",
    )  # fmt: skip
    # Inception's ImageNet classes say nothing about a dataset's classes: no acc/spread there.
    assert metric_names.scores("inception", conditional=True) == tuple(
        f"{s}_inception" for s in metric_names.SCORES
    )
    logged = metric_names.under_protocol(metric_names.of_samples(metric_names.fd("clf"), 4), proxy=True)
    assert logged == "proxy/fd_clf_4step"
    assert metric_names.parse_protocol(logged) == ("fd_clf_4step", True)
    assert metric_names.space_of("fd_inception") == "inception"
    assert metric_names.floor_std("recon_fd_clf") == "recon_fd_clf_floor_std"


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
