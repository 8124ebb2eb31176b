"""The worker's Ray-free pieces: per-rank noise seeds, the sample grids rank 0 logs at eval cadence, and
that they and the proxy eval run on the model's device and in training's precision."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import pytest
import torch

from orchestrator.config.loader import load_sweep
from orchestrator.config.schema import EvalConfig, ExperimentConfig
from orchestrator.evaluation.proxy import ProxyEval
from orchestrator.train.worker import SAMPLE_GRID, checkpoint_score, noise_seed, sample_grids
from sphere_core.train_step import make_train_state

SMOKE = Path(__file__).resolve().parents[3] / "sweeps" / "smoke.yaml"


def test_noise_seeds_differ_by_rank_and_by_resume_step() -> None:
    seeds = {noise_seed(3, 2, rank, step) for rank in range(2) for step in (0, 10)}
    assert len(seeds) == 4
    assert noise_seed(3, 2, 1, 0) == (3 * 2 + 1) * 1_000_003  # run.seed * world_size + rank, as in DiT/EDM


def test_sample_grids_are_one_and_multi_step_from_the_same_noise_each_time() -> None:
    cfg = load_sweep(SMOKE).experiment
    torch.manual_seed(0)
    state = make_train_state(cfg.sphere, device="cpu")
    first, again = sample_grids(state, cfg), sample_grids(state, cfg)
    size = cfg.model.image_size
    assert set(first) == {"samples_1step", f"samples_{cfg.sampling.steps}step"}
    for name, images in first.items():
        assert images.shape == (SAMPLE_GRID, cfg.model.channels, size, size)
        assert images.min() >= 0.0 and images.max() <= 1.0
        assert torch.equal(images, again[name])  # grids at successive evals are comparable


def test_perceptual_networks_load_from_s3_and_local_files(
    perceptual_weight_files: dict[str, Path], s3_bucket: str
) -> None:
    import fsspec

    from orchestrator.config.schema import PerceptualConfig
    from orchestrator.train.worker import load_perceptual
    from sphere_core.precision import native_bf16

    assert load_perceptual(PerceptualConfig(), 1, torch.device("cpu")) is None
    own = load_perceptual(PerceptualConfig(network="random-conv", seed=3, width=8), 1, torch.device("cpu"))
    assert own is not None and own.random_conv is not None
    assert (own.random_conv.seed, own.random_conv.width) == (3, 8)
    cpu = torch.device("cpu")
    for precision, bf16 in (("fp32", False), ("bf16", True), ("auto", native_bf16(cpu))):
        chosen = load_perceptual(PerceptualConfig(network="random-conv", precision=precision), 1, cpu)
        assert chosen is not None and chosen.bf16 == bf16
    fs = fsspec.filesystem("s3")
    for name in ("vgg_path", "lpips_path"):
        fs.put(str(perceptual_weight_files[name]), f"{s3_bucket}/weights/{name}.pth")
    weights = PerceptualConfig(
        vgg16=f"s3://{s3_bucket}/weights/vgg_path.pth",
        lpips=f"s3://{s3_bucket}/weights/lpips_path.pth",
        convnext_small=str(perceptual_weight_files["convnext_path"]),
    )
    perceptual = load_perceptual(weights, 1, torch.device("cpu"))
    assert perceptual is not None and perceptual.lpips is not None and perceptual.convnext is not None
    x = torch.rand(2, 1, 32, 32)
    assert perceptual(x, x).abs().max() < 1e-5 and (perceptual(x, x.flip(-1)) > 0).all()


def test_perceptual_weights_need_their_files() -> None:
    from orchestrator.config.schema import PerceptualConfig
    from sphere_core.config import ConfigError

    with pytest.raises(ConfigError, match=r"perceptual\.lpips: LPIPS needs both"):
        PerceptualConfig(vgg16="s3://b/vgg16.pth")
    assert PerceptualConfig(convnext_small="/w/cnx.pth").given and not PerceptualConfig().given


class NoMixedDevices(torch.overrides.TorchFunctionMode):
    """Fails any torch call whose tensor arguments (0-dim ones aside, as torch allows) sit on different
    devices: on CUDA each of these is a crash at the first eval of a GPU worker."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        devices = {t.device for t in leaves if isinstance(t, torch.Tensor) and t.dim() > 0}
        assert len(devices) <= 1, f"{getattr(func, '__name__', func)} mixes devices {devices}"
        return func(*args, **kwargs)


def test_everything_the_eval_and_the_sample_grids_feed_the_model_is_on_the_models_device(
    digits_cfg: ExperimentConfig,
) -> None:
    """Without a GPU: the model on the meta device, where a CPU tensor reaching it is caught."""
    state = make_train_state(digits_cfg.sphere, device="cpu")
    state.ema.to("meta")
    proxy = ProxyEval(state, digits_cfg)
    proxy.held_out  # noqa: B018  # the real images load on the CPU, as in training
    with NoMixedDevices():
        outputs = proxy.model_outputs(state.ema)
        grids = sample_grids(state, digits_cfg)
    n, size = digits_cfg.eval.num_images, digits_cfg.model.image_size
    assert outputs["reconstructions"].shape == (n, digits_cfg.model.channels, size, size)
    assert {t.device.type for t in [*outputs.values(), *grids.values()]} == {"meta"}
    with pytest.raises(AssertionError, match="mixes devices"), NoMixedDevices():  # the check itself bites
        state.ema.encode(
            torch.zeros(1, digits_cfg.model.channels, size, size), torch.zeros(1, dtype=torch.long)
        )


def _note_autocast(seen: set[bool], *_: object) -> None:
    seen.add(torch.is_autocast_enabled("cpu"))


def test_sample_grids_and_eval_run_the_networks_in_trainings_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """optim.bf16_autocast reaches every network pass of the grids and the eval (and nothing else: their
    images and latents stay fp32), and bf16 samples are scored under a fingerprint of their own."""
    monkeypatch.setenv("SPHERE_EVAL_CACHE", str(tmp_path / "eval-cache"))
    smoke = load_sweep(SMOKE).experiment
    prints = []
    for bf16 in (False, True):
        cfg = dataclasses.replace(
            smoke,
            optim=dataclasses.replace(smoke.optim, bf16_autocast=bf16),
            eval=EvalConfig(dataset="digits", num_images=32, seed=3),
        )
        torch.manual_seed(0)
        state = make_train_state(cfg.sphere, device="cpu")
        autocast_seen: set[bool] = set()
        for module in state.ema.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_pre_hook(functools.partial(_note_autocast, autocast_seen))
        proxy = ProxyEval(state, cfg)
        outputs, grids = proxy.model_outputs(state.ema), sample_grids(state, cfg)
        assert autocast_seen == {bf16}
        assert {t.dtype for t in [*outputs.values(), *grids.values()]} == {torch.float32}
        prints.append(proxy._score_samples(outputs["samples_1step"], steps=1).fingerprint)
    assert prints[0] != prints[1]


def test_gradients_share_their_parameters_layout_but_for_size_one_dims() -> None:
    # The worker silences DDP's stride warning on this ground: were a gradient laid out differently in a
    # dimension that holds data, DDP's copies would cost something and the warning would matter.
    cfg = load_sweep(SMOKE.parent / "demo.yaml").experiment.sphere  # the grayscale recipe, critic included
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, adversarial_start_step=0))
    state = make_train_state(cfg, device="cpu")
    x, y = torch.rand(4, 1, 32, 32) * 2 - 1, torch.arange(4)
    state.objective(x, y, generator=torch.Generator().manual_seed(0), adversarial=True).total.backward()

    def data_strides(t: torch.Tensor) -> tuple[int, ...]:
        return tuple(stride for stride, size in zip(t.stride(), t.shape, strict=True) if size != 1)

    params = [p for p in state.model.parameters() if p.grad is not None]
    assert params and all(data_strides(p.grad) == data_strides(p) for p in params if p.grad is not None)


def test_a_checkpoint_scores_only_what_was_measured_at_its_own_step() -> None:
    metrics = {"fd_clf_1step": 41.5, "eval_step": 200.0, "loss": 0.3}
    assert checkpoint_score(metrics, frozenset(), "fd_clf_1step") == 41.5
    carried = frozenset({"fd_clf_1step", "eval_step"})  # a later checkpoint carrying step 200's eval
    assert math.isnan(checkpoint_score(metrics, carried, "fd_clf_1step"))
    assert checkpoint_score(metrics, carried, "loss") == 0.3  # the window's: this checkpoint's own
    assert math.isnan(checkpoint_score(metrics, frozenset(), "recall_clf_1step"))  # never measured
