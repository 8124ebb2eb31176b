"""Sweep driver pieces that need no cluster: trial names, resource checks, worker env, Tune settings."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import ASHAScheduler

from orchestrator.config.schema import ExperimentConfig, ScalingSpec
from orchestrator.config.sweep_spec import SearchDist, SweepSpec, TuneSpec
from orchestrator.sweep import (
    NodeType,
    check_resources,
    check_storage,
    keep_credentials_out_of_trial_runtime_envs,
    trial_cpus,
    tune_config,
    worker_env,
)
from orchestrator.tracking import QUIET_ENV, trial_name
from sphere_core.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


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
    with pytest.raises(ConfigError, match=r"has 0 \(allowed: a cluster with at least 0\.99 CPUs\)"):
        check_resources(two_by_half, {}, "a 0-CPU head")  # never a negative bound


def test_an_autoscaling_cluster_is_checked_against_what_it_can_grow_to() -> None:
    """KubeRay's shape: a 0-CPU head and a GPU group that starts at 0 nodes."""
    gpu_group = NodeType("gpu-group", {"CPU": 8.0, "GPU": 2.0, "memory": 6e10}, max_count=4)
    head = NodeType("headgroup", {"CPU": 0.0}, max_count=1)
    four_gpus = ScalingSpec(workers_per_trial=4, cpus_per_worker=3.0, use_gpu=True)
    plan = check_resources(four_gpus, {"CPU": 0.0}, "the cluster", [head, gpu_group])
    assert plan == (
        "trials: 4 workers of 3 CPU, 1 GPU each on node type gpu-group (2 per node; the autoscaler adds "
        "nodes as trials start)"
    )
    with pytest.raises(
        ConfigError, match=r"workers_per_trial: 9 workers .* grows to at most 8 \(allowed: 1\.\.8\)"
    ):
        check_resources(
            dataclasses.replace(four_gpus, workers_per_trial=9), {}, "the cluster", [head, gpu_group]
        )
    with pytest.raises(ConfigError, match=r"one worker needs 12 CPU, 1 GPU but no node type of the cluster"):
        check_resources(
            dataclasses.replace(four_gpus, cpus_per_worker=12.0), {}, "the cluster", [head, gpu_group]
        )
    unbounded = NodeType("cpu", {"CPU": 4.0}, max_count=-1)
    assert "on node type cpu" in check_resources(ScalingSpec(workers_per_trial=64), {}, "c", [unbounded])


def test_worker_env_forwards_the_endpoint_never_a_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "canary")
    env = worker_env("http://127.0.0.1:5000")
    assert (
        env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
        and env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    )
    assert "canary" not in env.values() and QUIET_ENV.items() <= env.items()
    with pytest.raises(ConfigError, match=r"tracking\.uri: holds a password"):
        worker_env("http://me:canary@127.0.0.1:5000")


def test_tune_copies_no_credential_into_a_trial_actors_runtime_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.tune.execution import class_cache

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "canary")
    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", set(class_cache.ENV_VARS_TO_PROPAGATE))
    captured: dict[str, object] = {}
    monkeypatch.setattr(
        class_cache.ray, "remote", lambda **options: captured.update(options) or (lambda cls: cls)
    )
    class_cache._ActorClassCache().get(type("Before", (), {}))
    assert "canary" in str(captured["runtime_env"])  # Ray's own behaviour, which this guards against
    keep_credentials_out_of_trial_runtime_envs()
    class_cache._ActorClassCache().get(type("After", (), {}))
    assert "canary" not in str(captured["runtime_env"])


def train_spec(search: dict[str, SearchDist], tune: TuneSpec) -> SweepSpec:
    return SweepSpec(
        name="x",
        kind="train",
        experiment=ExperimentConfig(),
        evaluate=None,
        digest="d",
        search=search,
        tune=tune,
    )


def test_tune_config_uses_the_reported_step_for_asha() -> None:
    spec = train_spec(
        {"noise.alpha_max_deg": SearchDist(grid=[80.0])},
        TuneSpec(scheduler="asha", grace_period=20, max_concurrent_trials=3),
    )
    config = tune_config(spec)
    assert isinstance(config.scheduler, ASHAScheduler) and config.scheduler._time_attr == "step"
    assert config.scheduler._max_t == spec.experiment.run.steps
    assert (config.metric, config.mode, config.max_concurrent_trials) == ("loss", "min", 3)


def test_optuna_search_samples_the_sweeps_distributions_with_the_run_seed() -> None:
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.config.search_space import to_param_space

    search = {"noise.alpha_max_deg": SearchDist(uniform=(70.0, 85.0))}
    spec = train_spec(search, TuneSpec(search_alg="optuna", metric="loss", num_samples=4))
    config = tune_config(spec)
    assert isinstance(config.search_alg, OptunaSearch) and config.num_samples == 4
    config.search_alg.set_search_properties("loss", "min", to_param_space(search))
    suggested = config.search_alg.suggest("trial-1")
    assert suggested is not None and 70.0 <= suggested["noise.alpha_max_deg"] <= 85.0


def test_evaluate_dry_run_lists_every_setting_and_starts_nothing(tmp_path: Path) -> None:
    """No tracking server, no Ray, no model download: the settings and the resolved config only."""
    path = tmp_path / "steps.yaml"
    path.write_text(
        f"kind: evaluate\nbase: {REPO / 'sweeps' / 'base' / 'mnist.yaml'}\n"
        "evaluate: {model: 'runs:/0123abcd/checkpoint', num_images: 32}\n"
        "search:\n  sampling.steps: {grid: [1, 4]}\n  sampling.schedule: {grid: [fixed, decay]}\n"
    )
    probe = (
        "import sys; from orchestrator.sweep import main; code = main([sys.argv[1], '--dry-run']); "
        "print('loaded:', sorted(m for m in ('ray', 'mlflow') if m in sys.modules)); sys.exit(code)"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no MLFLOW_TRACKING_URI, no RAY_ADDRESS
    result = subprocess.run(
        [sys.executable, "-c", probe, str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "4 trials" in out and "runs:/0123abcd/checkpoint, 32 samples per setting" in out
    settings = [line for line in out.splitlines() if line.startswith("  trial ")]
    assert settings[-1] == '  trial 3: {"sampling.steps": 4, "sampling.schedule": "decay"}'
    assert "loaded: []" in out


def test_training_pareto_plots_fd_against_images_seen(tmp_path: Path) -> None:
    import mlflow
    import pandas as pd

    from orchestrator.registry import log_training_pareto

    spec = SweepSpec(
        name="x",
        kind="train",
        experiment=ExperimentConfig(),  # sampling.steps 1: the T-step curve is the 1-step one
        evaluate=None,
        digest="d",
        search={"noise.alpha_max_deg": SearchDist(grid=[75.0, 85.0])},
        tune=TuneSpec(),
    )

    def result(trial: int, alpha: float, fds: list[float]) -> SimpleNamespace:
        history = pd.DataFrame(  # step 30 only carries step 20's eval forward: not a point of its own
            {
                "train_images": [640.0, 960.0, 1280.0],
                "fd_clf_1step": [fds[0], fds[0], fds[1]],
                "step": [20.0, 30.0, 40.0],
                "eval_step": [20.0, 20.0, 40.0],
            }
        )
        metrics = {"trial_id": f"abc_{trial:05d}", **history.iloc[-1].to_dict()}
        return SimpleNamespace(
            metrics=metrics, metrics_dataframe=history, config={"noise.alpha_max_deg": alpha}, error=None
        )

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("sweep", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp).info.run_id
    results = [result(0, 75.0, [40.0, 30.0]), result(1, 85.0, [35.0, 31.0])]
    assert log_training_pareto(client, parent, spec, results) == ["fd_clf_1step"]
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert artifacts == {"pareto_fd_clf_1step.md", "pareto_fd_clf_1step.csv", "pareto_fd_clf_1step.png"}
    table = (tmp_path / "artifacts").glob("*/artifacts/pareto_fd_clf_1step.csv")
    lines = next(table).read_text().splitlines()[1:]
    assert len(lines) == 4  # 2 trials x 2 evaluations
    marked = {line.split(",")[3] for line in lines if line.startswith("✓")}
    assert marked == {"640.0", "1280.0"}  # 35 at 640 images beats 40 there; 30 at 1280 is lowest
    without = [
        SimpleNamespace(
            metrics={"trial_id": "abc_00000", "loss": 0.1}, metrics_dataframe=None, config={}, error=None
        )
    ]
    assert log_training_pareto(client, parent, spec, without) == []  # until trials report FD and images seen


def test_a_shipped_sweep_resolves_from_any_directory_and_sets_show_in_the_dry_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.sweep import main

    monkeypatch.chdir(tmp_path)  # as a job without --working-dir: not the project directory
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    assert (
        main(
            [
                "sweeps/noise.yaml",
                "--dry-run",
                "--set",
                "data.url=s3://mine/train",
                "--set",
                "scaling.use_gpu=true",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    project = Path(__file__).resolve().parents[2]
    assert (
        f"sweeps/noise.yaml: not in the working directory {tmp_path}; using the project's "
        f"{project}/sweeps/noise.yaml" in out
    )
    assert '--set data.url="s3://mine/train"' in out and "--set scaling.use_gpu=true" in out
    assert "url: s3://mine/train" in out and "use_gpu: true" in out  # in the resolved config
    (tmp_path / "sweeps").mkdir()  # a user's own file in the working directory wins
    (tmp_path / "sweeps" / "noise.yaml").write_text("name: mine\n")
    assert main(["sweeps/noise.yaml", "--dry-run"]) == 2
    assert "using the project's" not in capsys.readouterr().out


def test_a_local_storage_path_is_refused_once_there_are_several_nodes() -> None:
    check_storage("/tmp/ray-results", multi_node=False, where="one machine")
    check_storage("s3://bucket/ray-results", multi_node=True, where="the cluster")
    check_storage("file:///mnt/shared/ray-results", multi_node=True, where="the cluster")
    with pytest.raises(
        ConfigError, match=r"run\.storage_path: '/tmp/ray-results' is a local path, but the c"
    ):
        check_storage("/tmp/ray-results", multi_node=True, where="the cluster")
