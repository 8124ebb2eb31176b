"""Per-setting evaluation of a frozen model without a tracking server: a tiny untrained model scored in
the digits classifier's features at a small n; network passes; the printed table and the steps curve."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.evaluation.__main__ import main, one_off_spec, parse_args
from orchestrator.evaluation.frozen import (
    FrozenModel,
    canonical,
    lineage,
    score_reconstructions,
    score_setting,
    setting_name,
    trained_dataset,
)
from orchestrator.evaluation.protocol import Protocol
from orchestrator.tracking.pareto import steps_curve
from orchestrator.tracking.reports import format_table
from sphere_core.config import ConfigError, SamplingConfig, SphereConfig
from sphere_core.sampling import generate, passes_for
from tests.sphere_core.tiny import tiny_model

N = 32


@pytest.fixture(scope="module")
def frozen() -> FrozenModel:
    model = tiny_model(channels=1, num_classes=10).eval()
    return FrozenModel("runs:/r/checkpoint", model, SphereConfig(model=model.cfg), "r", "0", "")


@pytest.fixture(scope="module")
def protocol(tmp_path_factory: pytest.TempPathFactory) -> Protocol:
    cache = str(tmp_path_factory.mktemp("eval-cache"))
    return Protocol.for_dataset("digits", n=N, image_size=16, cache=cache)


def test_guidance_doubles_only_the_guided_networks_passes(frozen: FrozenModel) -> None:
    def passes(**knobs: object) -> int:
        return passes_for(frozen.model, SamplingConfig(**knobs))  # type: ignore[arg-type]

    assert [passes(steps=t) for t in (1, 2, 4, 8)] == [1, 3, 7, 15]  # 1 decoder + (T-1) x (enc + dec)
    assert passes(steps=4, cfg=1.5, cfg_position="combo") == 14
    assert passes(steps=4, cfg=1.5, cfg_position="dec") == 7 + 4
    assert passes(steps=4, cfg=1.5, cfg_position="enc") == 7 + 3
    assert passes(steps=1, cfg=1.5, cfg_position="enc") == 1  # a 1-step sample never meets the encoder


def test_a_setting_is_scored_with_a_fingerprint_that_names_its_sampler(
    frozen: FrozenModel, protocol: Protocol
) -> None:
    two_steps = SamplingConfig(steps=2).resolved(frozen.config.noise)
    fixed = score_setting(frozen, two_steps, protocol, seed=0)
    again = score_setting(frozen, two_steps, protocol, seed=0)
    decay = score_setting(frozen, dataclasses.replace(two_steps, schedule="decay"), protocol, seed=0)
    assert fixed.fd_key == "proxy/fd_clf"  # n = 32 < digits' 594 held-out images
    assert {"proxy/fd_clf", "proxy/fd_clf_floor", "proxy/kid_clf", "proxy/recall_clf"} <= set(fixed.metrics)
    assert fixed.metrics["network_passes"] == 3 and fixed.metrics["images_per_s"] > 0
    assert fixed.metrics["proxy/fd_clf"] == pytest.approx(again.metrics["proxy/fd_clf"])  # same noise
    assert fixed.fingerprint == again.fingerprint != decay.fingerprint
    steeper = score_setting(frozen, dataclasses.replace(two_steps, alpha_max_deg=60.0), protocol, seed=0)
    assert steeper.fingerprint != fixed.fingerprint  # the angle it sampled at is part of the protocol
    recon, recon_fingerprint = score_reconstructions(frozen, protocol)
    assert "proxy/recon_fd_clf" in recon and recon_fingerprint not in (fixed.fingerprint, "")


def test_table_and_steps_curve(tmp_path: Path) -> None:
    rows = [
        {
            "setting": setting_name(SamplingConfig(steps=t, cfg=cfg)),
            "steps": t,
            "network_passes": float(2 * t - 1),
            "images_per_s": 1000.0 / t,
            "proxy/fd_clf": 40.0 / t + cfg,
            "proxy/fd_clf_floor": 5.0,
            "proxy/fd_clf_floor_std": 0.5,
            "proxy/kid_clf": 0.1,
            "proxy/precision_clf": 0.5,
            "proxy/recall_clf": 0.4,
            "fingerprint": "abcdef123456",
            "curve_start": setting_name(SamplingConfig(steps=1, cfg=cfg)),
        }
        for t in (1, 2, 4)
        for cfg in (1.0, 1.5)
    ] + [  # decay: its curve starts at the 1-step sample that the fixed-schedule curve also starts from
        {"setting": setting_name(SamplingConfig(steps=4, schedule="decay")), "steps": 4, "proxy/fd_clf": 7.0,
         "curve_start": setting_name(SamplingConfig(steps=1))}
    ]  # fmt: skip
    table = format_table(rows[:-1], "proxy/fd_clf").splitlines()
    assert table[0].split() == [
        "setting", "passes", "images/s", "fd_clf", "kid_clf", "precision_clf", "recall_clf", "fd", "floor",
        "fingerprint",
    ]  # fmt: skip
    assert table[1].split() == [
        "1step_cfg1_combo_fixed_shared", "1", "1000", "41", "0.1", "0.5", "0.4", "5±0.5", "abcdef123456",
    ]  # fmt: skip
    figure = steps_curve(rows, "proxy/fd_clf")
    lines = {str(line.get_label()): np.asarray(line.get_xydata()).tolist() for line in figure.axes[0].lines}
    assert lines["cfg1_combo_decay_shared"] == [[1, 41], [4, 7]]  # starts at the shared 1-step sample
    assert lines["cfg1.5_combo_fixed_shared"] == [[1, 41.5], [2, 21.5], [4, 11.5]]
    assert len(lines) == 4  # cfg 1 fixed, cfg 1.5 fixed, cfg 1 decay, and the floor
    figure.savefig(tmp_path / "curve.png")


def test_the_cli_grid_is_validated_before_anything_loads() -> None:
    args = parse_args(
        ["score", "--model", "models:/m@a", "--steps", "1", "4", "--cfg", "1", "1.5", "--schedule", "fixed",
         "decay", "--num", "64", "--dataset", "mnist"]
    )  # fmt: skip
    spec = one_off_spec(args)
    assert spec.kind == "evaluate" and spec.evaluate is not None and spec.evaluate.num_images == 64
    assert spec.search["sampling.shared_noise"].spec == [True]
    assert spec.search["sampling.alpha_max_deg"].spec == [None]  # the model's own angle, resolved on load
    assert spec.search["sampling.cfg"].spec == [1.0, 1.5]
    assert one_off_spec(args).digest == spec.digest  # the same one-off again finds its earlier results
    args.steps = [0]
    with pytest.raises(ConfigError, match=r"sampling\.steps: must be >= 1"):
        one_off_spec(args)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--reference", "s3://b/val", "--inception", "w.pth"], "error: --floor: required with --reference"),
        (
            ["--reference", "s3://b/val", "--floor", "s3://b/train"],
            "error: --inception: required with --reference",
        ),
        (["--inception", "w.pth", "--dataset", "none"], "error: --inception: set --dataset"),
    ],
)
def test_cli_metric_source_errors_are_one_line_before_any_tracking_server(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["score", "--model", "models:/m@a", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_cli_reference_shards_default_to_no_builtin_dataset() -> None:
    args = parse_args(
        ["score", "--model", "models:/m@a", "--steps", "1", "--num", "64", "--inception", "w.pth",
         "--reference", "s3://b/val", "--floor", "s3://b/train"]
    )  # fmt: skip
    spec = one_off_spec(args)
    assert spec.evaluate is not None and spec.evaluate.dataset == "none" and spec.evaluate.tag == "inception"


def test_settings_that_cannot_change_the_samples_collapse_to_one(frozen: FrozenModel) -> None:
    def canon(**knobs: object) -> SamplingConfig:
        return canonical(frozen.model, SamplingConfig(**knobs))  # type: ignore[arg-type]

    one_step = canon(steps=1)
    assert canon(steps=1, schedule="decay", shared_noise=False) == one_step
    assert canon(steps=1, cfg=1.5, cfg_position="enc") == one_step  # the decoder alone makes a 1-step sample
    assert canon(steps=1, cfg=1.5, cfg_position="dec") != one_step
    assert canon(steps=4, cfg=1.0, cfg_position="enc") == canon(steps=4, cfg=1.0, cfg_position="dec")
    assert canon(steps=4, cfg=1.5, cfg_position="enc") != canon(steps=4, cfg=1.5, cfg_position="dec")
    assert canon(steps=4, schedule="decay") != canon(steps=4)
    shipped = [SamplingConfig(steps=t, cfg=c, cfg_position=p, schedule=s, shared_noise=n)  # sweeps/steps.yaml
               for t in (1, 2, 4, 8) for c in (1.0, 1.5) for p in ("enc", "dec", "combo")
               for s in ("fixed", "decay") for n in (True, False)]  # fmt: skip
    assert len({canonical(frozen.model, s) for s in shipped}) == 3 + 8 + 2 * 16  # of 96
    assert canon(steps=2, shared_noise=False) == canon(steps=2)


def test_two_steps_give_the_same_samples_with_shared_or_independent_noise(frozen: FrozenModel) -> None:
    def sample(shared: bool) -> torch.Tensor:
        sampling = SamplingConfig(steps=2, shared_noise=shared).resolved(frozen.config.noise)
        return generate(
            frozen.model, torch.arange(4), sampling=sampling, generator=torch.Generator().manual_seed(3)
        )

    assert torch.equal(sample(True), sample(False))
    sampling = SamplingConfig(steps=3, shared_noise=False).resolved(frozen.config.noise)
    three = generate(
        frozen.model, torch.arange(4), sampling=sampling, generator=torch.Generator().manual_seed(3)
    )
    shared = dataclasses.replace(sampling, shared_noise=True)
    assert not torch.equal(
        three,
        generate(frozen.model, torch.arange(4), sampling=shared, generator=torch.Generator().manual_seed(3)),
    )


@pytest.mark.parametrize(("logged", "scored_with"), [("fashion-mnist", "fashion-mnist"), (None, "mnist")])
def test_a_model_is_scored_in_the_classifier_that_scored_it_in_training(
    tmp_path: Path, logged: str | None, scored_with: str
) -> None:
    from orchestrator.config.schema import TrackingConfig
    from orchestrator.tracking.registry import register_checkpoint
    from tests.orchestrator.tracking.test_registry import sqlite_registry, tiny_checkpoint

    _, client, parent = sqlite_registry(tmp_path)
    settings = TrackingConfig(registered_model="clothes", alias="champion")
    register_checkpoint(
        client, settings, parent_run_id=parent, checkpoint_dir=tiny_checkpoint(tmp_path), key={}, tags={}
    )
    if logged is not None:
        client.log_param(lineage(client, "models:/clothes@champion")[0], "eval.dataset", logged)
    assert trained_dataset(client, "models:/clothes@champion") == scored_with
