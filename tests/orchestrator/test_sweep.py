"""The sweep CLI's pieces that need no cluster: trial names, dry runs, shipped sweep paths."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.config.schema import ExperimentConfig
from orchestrator.config.sweep_spec import SearchDist, SweepSpec, TuneConfig
from orchestrator.tracking.runs import trial_name

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
        "print('loaded:', sorted(m for m in ('mlflow', 'torch') if m in sys.modules)); "
        "print('ray started:', 'ray' in sys.modules and sys.modules['ray'].is_initialized()); sys.exit(code)"
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
    assert "loaded: []" in out and "ray started: False" in out


def test_training_pareto_plots_fd_against_images_seen(tmp_path: Path) -> None:
    import mlflow
    import pandas as pd

    from orchestrator.tracking.reports import log_training_pareto

    spec = SweepSpec(
        name="x",
        kind="train",
        experiment=ExperimentConfig(),  # sampling.steps 1: the T-step curve is the 1-step one
        evaluate=None,
        digest="d",
        search={"noise.alpha_max_deg": SearchDist(grid=[75.0, 85.0])},
        tune=TuneConfig(),
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


def test_the_dry_run_refuses_shards_the_model_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """RGB shards under 1-channel MNIST settings used to pass the dry run and fail only when submitted."""
    from orchestrator.data.sources import image_folder
    from orchestrator.data.writer import write_dataset
    from orchestrator.sweep import main
    from tests.fixtures.rgb_shapes import write_shape_folder

    source = image_folder(
        write_shape_folder(tmp_path / "shapes", per_class=4, size=16, seed=0), image_size=16
    )
    url = f"file://{tmp_path}/rgb"
    write_dataset(source, url, shard_size=8, progress=False)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"base: {REPO / 'sweeps' / 'base' / 'mnist.yaml'}\noverrides: {{eval.dataset: none}}\n"
        "search:\n  noise.alpha_max_deg: {grid: [80.0]}\ntune: {metric: loss}\n"
    )
    assert main([str(sweep), "--dry-run", "--set", f"data.url={url}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: model.channels: 1 but the dataset at {url} has 3 (allowed: 3)"
    fitted = [f"--set={path}" for path in ("model.channels=3", "model.image_size=16", "model.num_classes=3")]
    assert main([str(sweep), "--dry-run", "--set", f"data.url={url}", *fitted]) == 0
    assert f"  {url}: 2 shards, 12 samples" in capsys.readouterr().out
