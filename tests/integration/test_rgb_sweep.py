"""@slow, end to end on the real local cluster, in colour: RGB image folders drawn here -> `orchestrator.data
build` into the cluster's bucket -> a sweep on the shipped CIFAR-10 base (shrunk to a nano model on 16 px
shapes, its data and weight files given with --set as a user would) submitted as a Ray job, training with
the LPIPS-VGG16 loss and scored in Inception-v3 features (random weights in the published layouts: nothing
can be downloaded) -> the registered model drawn with `orchestrator.generate` and scored with
`orchestrator.evaluation` against the held-out shards. ~1.5 min on 2 quiet cores, most of it Inception."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from ray.job_submission import JobStatus

from orchestrator.config.loader import load_sweep
from orchestrator.config.sweep_spec import SweepSpec
from sphere_core.precision import native_bf16
from tests.fixtures.rgb_shapes import SHAPES, write_shape_folder
from tests.integration.conftest import REPO, Jobs

pytestmark = pytest.mark.slow
SHARDS = "s3://sphere/datasets/rgb-shapes"
SIZE = 16  # px: LPIPS-VGG16's smallest input
# What shrinks the official CIFAR-10 experiment to seconds on CPU; everything else is the shipped base.
TINY = {
    "model.image_size": SIZE,
    "model.num_classes": len(SHAPES),
    "model.encoder_size": "nano",
    "model.decoder_size": "nano",
    "model.latent_resolution": "low",  # patch 4: 16 tokens of d = 16
    "model.compression_ratio": 3.0,
    "optim.lr": 4.8e-2,  # the CPU recipe's 3e-3 at batch 16
    "optim.warmup_steps": 5,
    "optim.total_steps": 30,
    "optim.bf16_autocast": False,
    "optim.ema_decay": 0.9,  # at the official 0.9997, 30 steps leave the initial weights: grey samples
    "data.batch_size": 16,
    "data.loader_workers": 1,
    "data.shuffle_buffer": 64,
    "run.steps": 30,
    "run.log_every": 10,
    "run.eval_every": 30,
    "run.checkpoint_every": 30,
    "scaling.workers_per_trial": 1,
    "scaling.cpus_per_worker": 0.99,
    "scaling.use_gpu": False,
    "tracking.experiment": "sphere-rgb-e2e",
    "tracking.registered_model": "sphere-rgb-e2e",
    "eval.num_images": 16,  # the smallest n; the held-out split holds 18
}


def run(*argv: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert result.returncode == 0, f"{argv[:2]}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def given(local_cluster: object, tmp_path_factory: pytest.TempPathFactory, inception_weight_file: Path,
          perceptual_weight_files: dict[str, Path]) -> dict[str, str]:  # fmt: skip
    """The RGB shards in the cluster's bucket and the weight files: what the CIFAR-10 base leaves to users."""
    root = tmp_path_factory.mktemp("rgb-shapes")
    for split, per_class, seed in (("train", 40, 0), ("test", 6, 1)):
        write_shape_folder(root / split, per_class=per_class, size=SIZE, seed=seed)
        out = run("-m", "orchestrator.data", "build", "--source", str(root / split), "--out",
                  f"{SHARDS}/{split}", "--image-size", str(SIZE), "--overwrite", "--no-progress")  # fmt: skip
        assert f"{SIZE}px x 3ch, {len(SHAPES)} classes" in out.stdout
    return {
        "data.url": f"{SHARDS}/train",
        "eval.reference": f"{SHARDS}/test",
        "eval.inception": str(inception_weight_file),
        "perceptual.vgg16": str(perceptual_weight_files["vgg_path"]),
        "perceptual.lpips": str(perceptual_weight_files["lpips_path"]),
        # ConvNeXt-S takes 224 px inputs: seconds per step on CPU, and LPIPS alone is allowed
        "perceptual.convnext_small": "null",
    }


@pytest.fixture(scope="module")
def rgb_sweep(jobs: Jobs, given: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> SweepSpec:
    path = tmp_path_factory.mktemp("sweep") / "rgb-e2e.yaml"
    overrides = "".join(f"  {key}: {value}\n" for key, value in TINY.items())
    path.write_text(
        f"name: rgb-e2e\nbase: {REPO / 'sweeps' / 'base' / 'cifar-10.yaml'}\noverrides:\n{overrides}"
        "search:\n  noise.alpha_max_deg: {grid: [80.0]}\n"
        "tune: {metric: fd_inception_1step, mode: min, max_concurrent_trials: 1}\n"
    )
    sets = [f"--set={key}={value}" for key, value in given.items()]
    job_id = jobs.submit(path, *sets)
    status = jobs.wait(job_id, timeout_s=420)
    assert status == JobStatus.SUCCEEDED, jobs.logs(job_id)[-6000:]
    precision = "bf16" if native_bf16(torch.device("cpu")) else "fp32"  # perceptual.precision: auto
    assert f"perceptual loss ON: (LPIPS-VGG16 x1.0, {precision})" in jobs.logs(job_id)
    return load_sweep(path, {key: None if value == "null" else value for key, value in given.items()})


def test_rgb_sweep_trains_scores_in_inception_features_and_logs_colour_grids(
    rgb_sweep: SweepSpec, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(rgb_sweep.experiment.tracking.experiment)
    assert experiment is not None
    (trial,) = [
        r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]
    metrics = trial.data.metrics
    assert {
        "recon_perc",
        "con_perc",
        "fd_inception_1step",
        "fd_inception_4step",
        "recon_fd_inception",
    } <= set(metrics)
    # 30 steps of a nano model are far from the real shapes: further than real images are from each other
    floor = float(trial.data.tags["floor.fd_inception_1step"])
    assert metrics["fd_inception_1step"] > floor > 0
    grid = client.download_artifacts(trial.info.run_id, "samples/samples_1step_step000030.png", str(tmp_path))
    assert Image.open(grid).mode == "RGB"


def test_registered_rgb_model_generates_colour_rows_and_evaluates_against_held_out_shards(
    rgb_sweep: SweepSpec, given: dict[str, str], tmp_path: Path
) -> None:
    tracked = rgb_sweep.experiment.tracking
    model = f"models:/{tracked.registered_model}@{tracked.alias}"
    out = tmp_path / "rows.png"
    run(
        "-m",
        "orchestrator.generate",
        "--model",
        model,
        "--per-class",
        "4",
        "--steps",
        "1",
        "2",
        "--out",
        str(out),
    )
    image = Image.open(out)
    pixels = np.asarray(image).astype(int)
    assert image.mode == "RGB" and (pixels[..., 0] != pixels[..., 2]).any()  # colour, not grey saved as RGB
    # One setting: Inception features of its samples and the reconstructions are most of the test's time.
    result = run(
        "-m", "orchestrator.evaluation", "score", "--model", model, "--steps", "2", "--num", "16",
        "--inception", given["eval.inception"], "--reference", given["eval.reference"],
        "--floor", given["data.url"],
    )  # fmt: skip
    assert "fd_inception" in result.stdout and "1 settings, 1 with distinct samples" in result.stdout
