"""What training evaluates at its eval cadence (orchestrator/evaluation/proxy.py): the proxy metrics with
their fingerprints, and the step-0 noise angles."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from orchestrator.config import metric_names
from orchestrator.config.loader import load_sweep
from orchestrator.config.schema import EvalConfig, ExperimentConfig
from orchestrator.evaluation.proxy import ProxyEval, noise_angle_evaluation
from orchestrator.tracking.sinks import Evaluation
from sphere_core.train_step import make_train_state

SMOKE = Path(__file__).resolve().parents[3] / "sweeps" / "smoke.yaml"


def test_proxy_eval_reports_the_contract_metrics_with_fingerprints(digits_cfg: ExperimentConfig) -> None:
    torch.manual_seed(0)
    state = make_train_state(digits_cfg.sphere, device="cpu")
    first = ProxyEval(state, digits_cfg)()
    scores = metric_names.sample_scores("clf", conditional=True, pixels=True)
    assert "acc_clf" in scores  # a conditional model is also scored on the classes it was asked for
    assert {"fd_pix", "nn_ratio_pix", "copies_pix"} <= set(scores)  # 32 px: also in pixel space
    recon = metric_names.reconstruction_scores("clf", conditional=True, pixels=True)
    assert digits_cfg.eval_metrics == (
        *(f"{s}_1step" for s in scores),
        *(f"{s}_4step" for s in scores),
        *(f"recon_{s}" for s in recon),
        "eval_s",
    )
    assert set(digits_cfg.eval_metrics) <= set(first.metrics)
    assert {"latent_mean_resultant_length", "latent_cos_std", "uniform_cos_std"} <= set(first.metrics)
    assert set(first.figures) == {"diagnostics/latent_cosines.png", "diagnostics/latent_projection.png"}
    prints = {first.tags[f"fingerprint.{m}"] for m in ("fd_clf_1step", "fd_clf_4step", "recon_fd_clf")}
    assert len(prints) == 3  # steps and kind are part of the protocol
    assert first.tags["eval_n.fd_clf_1step"] == "32 (proxy)" and float(first.tags["floor.fd_clf_1step"]) > 0
    again = ProxyEval(state, digits_cfg)()  # a later eval (or another trial) of the same weights
    for name in digits_cfg.eval_metrics[:-1]:
        assert again.metrics[name] == first.metrics[name], name  # fixed seed: comparable across evals
    assert again.tags == first.tags


def test_proxy_eval_is_off_without_a_classifier() -> None:
    cfg = dataclasses.replace(load_sweep(SMOKE).experiment, eval=EvalConfig(dataset="none"))
    state = make_train_state(cfg.sphere, device="cpu")
    assert cfg.eval_metrics == () and ProxyEval(state, cfg)() == Evaluation({})


def test_noise_angle_evaluation_is_the_runs_training_noise() -> None:
    cfg = load_sweep(SMOKE).experiment
    result = noise_angle_evaluation(cfg)
    assert set(result.figures) == {"diagnostics/noise_angles.png"}
    median = result.metrics["noise_angle_median_deg"]
    assert 60.0 < median < cfg.noise.alpha_max_deg  # stratified in magnitude: most angles are large
    assert 0.0 < result.metrics["noise_angle_frac_beyond_alpha_max"] < 0.5
