"""Sweep driver pieces that need no cluster: trial names, resource checks, worker env, Tune settings."""

from __future__ import annotations

import re

import pytest
from ray.tune.schedulers import ASHAScheduler

from orchestrator.config.schema import ExperimentConfig, ScalingSpec
from orchestrator.config.sweep_spec import SearchDist, SweepSpec, TuneSpec
from orchestrator.sweep import check_resources, trial_cpus, tune_config, worker_env
from orchestrator.tracking import QUIET_ENV, trial_name
from sphere_core.config import ConfigError


def test_trial_names_are_deterministic_and_distinct() -> None:
    params = {"noise.alpha_max_deg": 80.0, "loss.latent_con": 0.1}
    name = trial_name("noise-abc", "f00d1_00003", params)
    assert re.fullmatch(r"noise-abc-t003-[0-9a-f]{6}", name)
    assert (
        trial_name("noise-abc", "beef2_00003", dict(reversed(params.items()))) == name
    )  # restore: new prefix
    assert trial_name("noise-abc", "f00d1_00003", {**params, "loss.latent_con": 0.2}) != name
    assert trial_name("noise-abc", "f00d1_00004", params) != name


def test_resources_per_trial_and_refusals() -> None:
    two_by_half = ScalingSpec(workers_per_trial=2, cpus_per_worker=0.49)
    assert trial_cpus(two_by_half) == pytest.approx(0.99)
    check_resources(two_by_half, {"CPU": 1.0}, "a 1-CPU cluster")
    with pytest.raises(
        ConfigError, match=r"needs 2.01 CPUs \(2 workers x 1 \+ 0.01 trial driver\) but the x"
    ):
        check_resources(ScalingSpec(workers_per_trial=2, cpus_per_worker=1.0), {"CPU": 2.0}, "the x")
    with pytest.raises(ConfigError, match=r"scaling\.use_gpu: a trial needs 2 GPUs"):
        check_resources(ScalingSpec(use_gpu=True), {"CPU": 8.0, "GPU": 1.0}, "the x")


def test_worker_env_forwards_storage_credentials_and_quiets_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    env = worker_env("http://127.0.0.1:5000")
    assert (
        env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
        and env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    )
    assert "AWS_ACCESS_KEY_ID" not in env and QUIET_ENV.items() <= env.items()


def test_tune_config_uses_the_reported_step_for_asha() -> None:
    spec = SweepSpec(
        name="x",
        kind="train",
        experiment=ExperimentConfig(),
        evaluate=None,
        digest="d",
        search={"noise.alpha_max_deg": SearchDist(grid=[80.0])},
        tune=TuneSpec(scheduler="asha", grace_period=20, max_concurrent_trials=3),
    )
    config = tune_config(spec)
    assert isinstance(config.scheduler, ASHAScheduler) and config.scheduler._time_attr == "step"
    assert config.scheduler._max_t == spec.experiment.run.steps
    assert (config.metric, config.mode, config.max_concurrent_trials) == ("loss", "min", 3)
