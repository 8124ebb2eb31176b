"""AdamW groups (no-decay rules, decoder decay-free, encoder LR scale), LR schedule and the fp32 EMA."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from sphere_core.config import OptimConfig
from sphere_core.optim import build_optimizer, decays, lr_at, make_ema, param_groups, set_lr, update_ema
from tests.sphere_core.tiny import tiny_model

OPTIM = OptimConfig(lr=1e-3, min_lr=1e-5, weight_decay=0.05, warmup_steps=10, total_steps=110)


def group_of(groups: list[dict], name: str, model: torch.nn.Module) -> dict:
    param = dict(model.named_parameters())[name]
    (group,) = [g for g in groups if any(p is param for p in g["params"])]
    return group


# --- parameter groups ------------------------------------------------------------------------------


def test_every_trainable_parameter_is_in_exactly_one_group() -> None:
    model = tiny_model()
    groups = param_groups(model, OPTIM)
    in_groups = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(in_groups) == sorted(trainable)  # frozen position tables are left out
    assert len(trainable) < len(list(model.parameters()))


def test_no_decay_rules_and_decoder_is_decay_free() -> None:
    model = tiny_model()
    groups = param_groups(model, OPTIM)
    decayed: set[str] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = group_of(groups, name, model)["weight_decay"]
        if decay > 0:
            decayed.add(name)
    assert decayed  # encoder matrices decay ...
    assert all(n.startswith("encoder.") for n in decayed)  # ... the decoder never does
    assert "encoder.transformer.blocks.0.attn.qkv.weight" in decayed
    assert "encoder.mixer.blocks.0.token_mix.0.weight" in decayed  # official tok_mixer: no "token"
    for name in (
        "encoder.transformer.blocks.0.attn.qkv.bias",  # bias
        "encoder.transformer.blocks.0.norm1.weight",  # ndim 1 / norm
        "encoder.label_embed.weight",  # embed
        "encoder.patch_proj.weight",  # official encoder.x_embedder.1: "embed"
        "decoder.transformer.blocks.0.attn.qkv.weight",  # decoder
    ):
        assert name not in decayed, name
    assert {g["weight_decay"] for g in groups} == {0.0, OPTIM.weight_decay}


# Our parameter names -> the official G's (sphere/model.py, layers.py, mixer.py), applied in order.
OFFICIAL_NAMES = [
    (r"^(encoder|decoder)\.label_embed\.", r"\1.y_embedder.embedding_table."),
    (r"^encoder\.patch_embed\.", "encoder.x_embedder.0."),
    (r"^encoder\.patch_proj\.", "encoder.x_embedder.1."),
    (r"^decoder\.latent_proj\.", "decoder.x_embedder.0."),
    (r"^decoder\.mixer\.", "decoder.x_embedder.1."),
    (r"^encoder\.mixer\.", "encoder.out."),
    (r"^encoder\.head\.", "encoder.ffn."),
    (r"^decoder\.head\.linear\.", "decoder.ffn."),
    (r"^decoder\.head\.(conv|up|smooth)\.", "decoder.out.2."),
    (r"\.transformer\.", "."),  # blocks sit directly on the official Transformer
    (r"\.adaln\.proj\.", ".adaLN_modulation.1."),
    (r"\.mlp\.w[13]\.", ".mlp.w12."),  # one fused Linear
    (r"\.mlp\.w2\.", ".mlp.w3."),
    (r"\.token_mix\.", ".tok_mixer.mix."),
    (r"\.channel_mix\.", ".chn_mixer.mix."),
    (r"\.norm_token\.", ".norm1."),
    (r"\.norm_channel\.", ".norm2."),
    (r"\.alpha_token$", ".alpha1"),
    (r"\.alpha_channel$", ".alpha2"),
]


def official_name(name: str) -> str:
    for pattern, replacement in OFFICIAL_NAMES:
        name = re.sub(pattern, replacement, name)
    return name


@pytest.mark.parametrize("head", ["linear", "conv"])
@pytest.mark.parametrize("num_classes", [5, 0])
def test_decay_matches_the_official_rule_on_the_official_names(head: str, num_classes: int) -> None:
    """train.py: exclude p.ndim < 2 or names containing ln/bias/embedding/norm/embed/token/decoder."""
    model = tiny_model(pixel_head=head, num_classes=num_classes)
    keys = ("ln", "bias", "embedding", "norm", "embed", "token", "decoder")
    for name, param in model.named_parameters():
        if param.requires_grad:
            official = official_name(name)
            excluded = param.ndim < 2 or any(key in official for key in keys)
            assert decays(name, param) == (not excluded), (name, official)
    assert (
        official_name("encoder.mixer.blocks.0.token_mix.0.weight")
        == "encoder.out.blocks.0.tok_mixer.mix.0.weight"
    )


def test_encoder_learning_rate_scale() -> None:
    model = tiny_model()
    optimizer = build_optimizer(model, OPTIM)
    set_lr(optimizer, 2e-3)
    enc = group_of(optimizer.param_groups, "encoder.patch_embed.weight", model)
    dec = group_of(optimizer.param_groups, "decoder.latent_proj.weight", model)
    assert enc["lr_scale"] == OPTIM.encoder_lr_scale == 0.1 and dec["lr_scale"] == 1.0
    assert enc["lr"] == pytest.approx(2e-4) and dec["lr"] == pytest.approx(2e-3)
    assert all(g["betas"] == OPTIM.betas for g in optimizer.param_groups)


def test_the_fused_adamw_updates_as_torchs_default_does() -> None:
    """CPU and CUDA parameters get torch's fused kernel: the same steps, groups and decay as the default."""
    torch.manual_seed(0)
    fused_model, plain_model = tiny_model(), tiny_model()
    plain_model.load_state_dict(fused_model.state_dict())
    fused = build_optimizer(fused_model, OPTIM)
    plain = torch.optim.AdamW(param_groups(plain_model, OPTIM), lr=OPTIM.lr, betas=OPTIM.betas)
    assert all(group["fused"] for group in fused.param_groups)
    assert not any(group["fused"] for group in plain.param_groups)
    for _ in range(3):
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            set_lr(optimizer, 1e-2)
            optimizer.zero_grad()
            model(torch.linspace(-1, 1, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)).square().mean().backward()
            optimizer.step()
    for (name, a), b in zip(fused_model.named_parameters(), plain_model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name  # steps of 1e-2: equal to 0.1 % of one
    meta = build_optimizer(tiny_model().to("meta"), OPTIM)  # no fused kernel there: torch's default
    assert not any(group["fused"] for group in meta.param_groups)


# --- schedule ------------------------------------------------------------------------------------


def official_lr(step: int, *, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """The official cosine_scheduler(lr, min_lr, step, warmup, decay=True, decay_steps) as train.py calls
    it: decay_steps = int((1 - warmup_epochs / epochs) * total) = total - warmup."""
    decay_steps = total - warmup
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step > decay_steps:
        return min_lr
    ratio = (step - warmup) / (decay_steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_schedule_is_the_official_cosine_scheduler() -> None:
    lrs = [lr_at(s, OPTIM, 256) for s in range(130)]
    expected = [official_lr(s, lr=1e-3, min_lr=1e-5, warmup=10, total=110) for s in range(130)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    # The landmarks, by hand: warmup (s + 1) / (W + 1); the peak first at step W; the cosine half-way
    # at W + (T - 2W) / 2 = 55; min_lr from T - W = 100 on, also past total_steps.
    assert lrs[0] == pytest.approx(1e-3 / 11) and lrs[9] == pytest.approx(1e-3 * 10 / 11)
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[55] == pytest.approx((1e-3 + 1e-5) / 2)
    assert lrs[100] == lrs[101] == lrs[110] == lrs[129] == pytest.approx(1e-5)
    assert all(a < b for a, b in itertools.pairwise(lrs[:11]))
    assert all(a > b for a, b in itertools.pairwise(lrs[10:101]))


def test_lr_and_min_lr_scale_linearly_with_global_batch() -> None:
    for step in (0, 10, 60, 200):
        assert lr_at(step, OPTIM, 512) == pytest.approx(2 * lr_at(step, OPTIM, 256))
        assert lr_at(step, OPTIM, 64) == pytest.approx(lr_at(step, OPTIM, 256) / 4)


def test_constant_after_warmup_without_decay() -> None:
    optim = OptimConfig(lr=1e-3, warmup_steps=4, total_steps=10, decay_lr=False)
    assert lr_at(3, optim, 256) == pytest.approx(1e-3 * 4 / 5)  # still warming up: (3 + 1) / (4 + 1)
    assert [lr_at(s, optim, 256) for s in (4, 9, 50)] == [1e-3] * 3
    assert lr_at(0, OptimConfig(lr=1e-3, warmup_steps=0, total_steps=10), 256) == pytest.approx(1e-3)
    assert lr_at(5, OptimConfig(lr=1e-3, min_lr=0.0, total_steps=10), 256) == pytest.approx(
        1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5))
    )


# --- EMA -----------------------------------------------------------------------------------------


def test_ema_is_an_fp32_frozen_copy_with_parameters_and_buffers() -> None:
    model = tiny_model().to(torch.bfloat16)
    ema = make_ema(model)
    assert ema is not model and type(ema) is type(model)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in ema.parameters())
    assert not ema.training
    for (name, p), p_ema in zip(model.named_parameters(), ema.parameters(), strict=True):
        assert torch.equal(p.float(), p_ema), name


def test_update_ema_math_and_fp32_resolution() -> None:
    model = tiny_model().to(torch.bfloat16)
    ema = make_ema(model)
    start = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    update_ema(ema, model, decay=0.9997)
    for s, p, p_ema in zip(start, model.parameters(), ema.parameters(), strict=True):
        expected = 0.9997 * s + 0.0003 * p.float()
        assert torch.allclose(p_ema, expected, atol=1e-6)
        assert bool((p_ema != s).all())  # every 3e-4 step registers in fp32 (bf16 would drop most)
    update_ema(ema, model, decay=0.0)
    assert all(torch.equal(p.float(), e) for p, e in zip(model.parameters(), ema.parameters(), strict=True))


def test_update_ema_copies_buffers() -> None:
    model = torch.nn.BatchNorm1d(3)
    ema = make_ema(model)
    assert model.running_mean is not None and ema.running_mean is not None
    model.running_mean.fill_(5.0)
    update_ema(ema, model, decay=0.99)
    assert torch.equal(ema.running_mean, torch.full((3,), 5.0))
