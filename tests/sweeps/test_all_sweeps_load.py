"""Every YAML under sweeps/ loads strictly and dry-runs (with any value its base leaves to the user given);
base files are full experiment configs, the paper's equal to their presets."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from orchestrator.cluster.preflight import check_resources, node_types_from_autoscaling_config
from orchestrator.config.loader import load_experiment, load_sweep, read_yaml, unset_fields
from orchestrator.config.search_space import expand_trials
from orchestrator.sweep import main
from sphere_core.config import ConfigError
from sphere_core.presets import get_preset

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
SWEEP_FILES = sorted(SWEEPS.glob("*.yaml"))
BASE_FILES = sorted((SWEEPS / "base").glob("*.yaml"))


def test_the_shipped_sweeps_are_all_here() -> None:
    assert {p.stem for p in SWEEP_FILES} >= {"smoke", "noise", "loss_weights", "steps"}
    assert BASE_FILES


@pytest.mark.parametrize("path", BASE_FILES, ids=lambda p: p.name)
def test_base_file_is_a_complete_experiment(path: Path) -> None:
    cfg = load_experiment(path)
    assert set(cfg.to_dict()) <= set(yaml.safe_load(path.read_text()))  # every section spelled out


def test_builtin_bases_are_their_nano_presets() -> None:
    assert load_experiment(SWEEPS / "base" / "mnist.yaml").sphere == get_preset("mnist-32-nano")
    fashion = load_experiment(SWEEPS / "base" / "fashion-mnist.yaml")
    assert fashion.sphere == get_preset("fashion-mnist-32-nano") and fashion.eval.dataset == "fashion-mnist"


@pytest.mark.parametrize(
    ("base", "preset"), [("cifar-10", "cifar-10-32-b"), ("imagenet-256", "imagenet-256-l")]
)
def test_paper_bases_are_their_presets_in_bf16_on_gpus(base: str, preset: str) -> None:
    cfg, official = load_experiment(SWEEPS / "base" / f"{base}.yaml"), get_preset(preset)
    # The presets count the official epochs in steps of the reference batch (256); at a smaller global batch
    # the same epochs take proportionally more steps (the LR follows by the linear rule).
    scale = official.optim.reference_batch / (cfg.data.batch_size * cfg.scaling.workers_per_trial)
    optim = dataclasses.replace(
        official.optim,
        bf16_autocast=True,
        warmup_steps=round(official.optim.warmup_steps * scale),
        total_steps=round(official.optim.total_steps * scale),
    )
    assert cfg.sphere == dataclasses.replace(official, optim=optim)
    assert cfg.run.steps == cfg.optim.total_steps
    assert cfg.scaling.use_gpu and cfg.model.channels == 3 and cfg.eval.tag == "inception"


@pytest.mark.parametrize("base", ["cifar-10", "imagenet-256"])
def test_paper_bases_fit_the_shipped_gpu_clusters_as_they_are(base: str) -> None:
    """Their trials fit the node types Ray's own readers find in infra/ (no --set scaling.* needed)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    scaling = load_experiment(SWEEPS / "base" / f"{base}.yaml").scaling
    infra = SWEEPS.parent / "infra"
    raycluster = yaml.safe_load((infra / "kuberay" / "raycluster.yaml").read_text())
    raycluster["metadata"]["namespace"] = "default"  # as the API server returns it
    for name, config in (
        ("aws-gpu.yaml", yaml.safe_load((infra / "ray-cluster" / "aws-gpu.yaml").read_text())),
        ("raycluster.yaml", _derive_autoscaling_config_from_ray_cr(raycluster)),
    ):
        head = config["available_node_types"][config["head_node_type"]]["resources"]
        plan = check_resources(scaling, head, name, node_types_from_autoscaling_config(config), head=head)
        assert plan.startswith(
            f"trials: {scaling.workers_per_trial} workers of 7 CPU, 1 GPU each on node type"
        )
        assert plan.endswith("trial drivers on the head")


def user_values(path: Path) -> dict[str, str]:
    """A URL for each value the sweep leaves to the user (`???` where its kind reads it)."""
    raw = read_yaml(path)
    if raw.get("kind") == "evaluate":
        missing = unset_fields(raw["evaluate"], "evaluate.")
    else:
        missing = unset_fields(load_experiment(path.parent / raw["base"]).to_dict())
    return {dotted: f"s3://given/{dotted}" for dotted in missing}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_loads_and_dry_runs(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"):
        monkeypatch.delenv(var, raising=False)
    given = user_values(path)
    if given:  # refused, naming each, until they are given
        with pytest.raises(ConfigError, match=rf"{path}: {', '.join(map(re.escape, given))}: not set"):
            load_sweep(path)
    spec = load_sweep(path, given)
    trials = expand_trials(spec.search, spec.tune.num_samples, spec.tune.search_alg)
    assert main([str(path), "--dry-run", *(f"--set={p}={v}" for p, v in given.items())]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"sweep {spec.name} (kind {spec.kind}), experiment {spec.experiment_name}: {len(trials)} trials"
    )
    assert out.count("\n  trial ") == len(trials)
    assert "resolved config:\nname: " in out
    if spec.kind == "train":
        assert "shard plan:\n  s3://" in out and "not reachable from here" in out
    else:
        assert spec.evaluate is not None
        assert f"evaluate: {spec.evaluate.model}" in out and "shard plan" not in out


def test_smoke_sweep_fits_two_cores_and_is_tiny() -> None:
    spec = load_sweep(SWEEPS / "smoke.yaml")
    cfg = spec.experiment
    trials = expand_trials(spec.search, spec.tune.num_samples, spec.tune.search_alg)
    concurrent = min(len(trials), spec.tune.max_concurrent_trials)
    assert len(trials) == 2 and cfg.run.steps <= 50
    assert concurrent * (0.01 + cfg.scaling.workers_per_trial * cfg.scaling.cpus_per_worker) <= 2.0
    assert cfg.data.url == "s3://sphere/datasets/mnist/train"


@pytest.mark.parametrize("name", ["smoke", "noise", "loss_weights"])
def test_training_sweeps_rank_on_the_one_step_proxy_fd(name: str) -> None:
    spec = load_sweep(SWEEPS / f"{name}.yaml")
    assert (spec.tune.metric, spec.tune.mode) == ("fd_clf_1step", "min")
    assert spec.tune.metric in spec.experiment.eval_metrics
    assert spec.experiment.run.eval_every <= spec.experiment.run.checkpoint_every  # in every Tune report


def test_smoke_evals_are_small_and_proxy() -> None:
    cfg = load_sweep(SWEEPS / "smoke.yaml").experiment
    assert cfg.eval.dataset == "mnist" and cfg.eval.num_images <= 256
    assert cfg.run.steps // cfg.run.eval_every == 1  # one eval per trial: ~12 s on rank 0 (7 s: MNIST splits)


def write_sweep(tmp_path: Path, overrides: str, metric: str = "fd_clf_1step") -> Path:
    path = tmp_path / "eval.yaml"
    path.write_text(
        f"base: {SWEEPS / 'base' / 'mnist.yaml'}\noverrides: {{{overrides}}}\n"
        f"search:\n  noise.alpha_max_deg: {{grid: [80.0]}}\ntune: {{metric: {metric}}}\n"
    )
    return path


def test_an_eval_metric_needs_an_eval_by_the_first_checkpoint(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, "run.eval_every: 20, run.checkpoint_every: 10")
    with pytest.raises(
        ConfigError, match=r"run.eval_every: 20 exceeds run.checkpoint_every 10.*fd_clf_1step"
    ):
        load_sweep(path)
    load_sweep(write_sweep(tmp_path, "run.eval_every: 20, run.checkpoint_every: 10", metric="loss"))
    load_sweep(write_sweep(tmp_path, "run.eval_every: 5, run.checkpoint_every: 10"))  # carried forward


def test_eval_metrics_are_not_reported_with_eval_off(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tune.metric: 'fd_clf_1step' is never reported"):
        load_sweep(write_sweep(tmp_path, "eval.dataset: none"))
    with pytest.raises(ConfigError, match=r"tune.metric: 'fd_clf_8step' is never reported"):
        load_sweep(write_sweep(tmp_path, "eval.dataset: mnist", metric="fd_clf_8step"))  # sampling.steps 4
