"""The adversarial term: the PatchGAN's shape, a critic the generator's backward never trains, the hinge loss,
VQGAN's adaptive weight, the delayed start, both networks under DDP, and the critic in checkpoints."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from sphere_core.adversarial import (
    PatchDiscriminator,
    adaptive_weight,
    frozen_logits,
    hinge_critic_loss,
    r1_penalty,
)
from sphere_core.checkpoint import CorruptCheckpoint, load_checkpoint, restore, save_checkpoint
from sphere_core.config import DiscriminatorConfig, LossWeights, SphereConfig
from sphere_core.losses import LossOutput, SphereObjective
from sphere_core.perceptual import PerceptualLoss, RandomConvFeatures
from tests.sphere_core.tiny import CONFIG, batch, fresh_state, step, tiny_model


def adversarial_config(start: int = 0, on: str = "large", **loss: object) -> SphereConfig:
    weights = dataclasses.replace(
        CONFIG.loss, adversarial=0.5, adversarial_start_step=start, adversarial_on=on, **loss
    )
    return dataclasses.replace(CONFIG, loss=weights, discriminator=DiscriminatorConfig(width=8, layers=2))


@pytest.mark.parametrize(("size", "layers", "patches"), [(32, 3, 2), (32, 2, 6), (16, 2, 2)])
def test_patch_discriminator_gives_one_logit_per_patch(size: int, layers: int, patches: int) -> None:
    critic = PatchDiscriminator(1, DiscriminatorConfig(width=8, layers=layers))
    assert critic(torch.zeros(3, 1, size, size)).shape == (3, 1, patches, patches)


def test_frozen_logits_pass_gradients_to_the_images_and_never_to_the_critic() -> None:
    critic = PatchDiscriminator(3, DiscriminatorConfig(width=8, layers=2))
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    frozen_logits(critic, x).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())
    assert torch.allclose(frozen_logits(critic, x), critic(x))


def test_the_projection_critic_judges_the_class_and_the_null_label_judges_none() -> None:
    cfg = DiscriminatorConfig(width=8, layers=2, conditional=True)
    critic = PatchDiscriminator(1, cfg, num_classes=10)
    with torch.no_grad():
        critic.label_embed.weight[:10].normal_()  # type: ignore[union-attr]
    x = torch.randn(4, 1, 16, 16)
    null = torch.full((4,), 10)
    assert torch.equal(critic(x, null), critic(x))  # label-dropped decodes: the unconditional logits
    assert not torch.allclose(
        critic(x, torch.zeros(4, dtype=torch.long)), critic(x, torch.ones(4, dtype=torch.long))
    )
    y = torch.tensor([0, 3, 10, 9])
    assert torch.allclose(frozen_logits(critic, x, y), critic(x, y))
    unconditional = PatchDiscriminator(1, dataclasses.replace(cfg, conditional=False), num_classes=10)
    assert unconditional.label_embed is None


def test_the_projection_critic_learns_the_classes_and_never_the_null_row() -> None:
    config = dataclasses.replace(
        adversarial_config(on="large+prior"),
        discriminator=DiscriminatorConfig(width=8, layers=2, conditional=True),
    )
    state = fresh_state(config)
    assert state.critic is not None and state.critic.raw.label_embed is not None
    table = state.critic.raw.label_embed.weight
    before = table.detach().clone()
    for seed in range(2):
        assert all(math.isfinite(v) for v in step(state, seed=seed, config=config).values())
    assert not torch.equal(table[:-1], before[:-1])
    assert torch.count_nonzero(table[-1]) == 0


def test_hinge_loss_is_zero_beyond_the_margins_and_one_at_zero() -> None:
    ones = torch.ones(4)
    assert hinge_critic_loss(2 * ones, -2 * ones).item() == 0.0
    assert hinge_critic_loss(0 * ones, 0 * ones).item() == 1.0
    assert hinge_critic_loss(-ones, ones).item() == 2.0


def test_r1_is_the_mean_squared_gradient_norm_at_the_real_images() -> None:
    # D(x) = <w, x> per image: the gradient at every image is w, so R1 = ||w||^2 whatever x is.
    w = torch.randn(1, 4, 4)
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    logits = (x * w).flatten(1).sum(1)
    assert r1_penalty(logits, x).item() == pytest.approx(w.pow(2).sum().item(), rel=1e-5)


def test_r1_flattens_the_critic_at_the_real_images() -> None:
    """Fifteen critic steps with and without the penalty, from the same start: R1 leaves a critic whose
    gradient at real images is several times smaller, and the step logs the penalty it added."""

    def critic_slope(r1_gamma: float) -> tuple[float, dict[str, float]]:
        config = dataclasses.replace(
            adversarial_config(),
            discriminator=DiscriminatorConfig(width=8, layers=2, lr_scale=50.0, r1_gamma=r1_gamma),
        )
        state = fresh_state(config)
        for _ in range(15):
            metrics = step(state, seed=0, config=config)
        assert state.critic is not None
        real = batch(seed=0)[0].requires_grad_(True)
        return r1_penalty(state.critic.raw(real), real).item(), metrics

    (free, free_metrics), (flat, flat_metrics) = critic_slope(0.0), critic_slope(10.0)
    assert "adv_r1" not in free_metrics and math.isfinite(flat_metrics["adv_r1"])
    assert flat < free / 3


def test_lazy_r1_adds_k_times_the_penalty_on_every_kth_critic_step() -> None:
    def critic_config(r1_every: int) -> SphereConfig:
        disc = DiscriminatorConfig(width=8, layers=2, r1_gamma=2.0, r1_every=r1_every)
        return dataclasses.replace(adversarial_config(), discriminator=disc)

    lazy = critic_config(3)
    state = fresh_state(lazy)
    assert ["adv_r1" in step(state, seed=i, config=lazy) for i in range(4)] == [True, False, False, True]
    # The same first step (same weights, batch and noise) with the penalty every step and every 3rd: the
    # loss differs by (3 - 1) x gamma / 2 x R1.
    every = step(fresh_state(critic_config(1)), seed=0, config=critic_config(1))
    third = step(fresh_state(lazy), seed=0, config=lazy)
    assert third["adv_r1"] == pytest.approx(every["adv_r1"], rel=1e-5)
    assert third["adv_d"] - every["adv_d"] == pytest.approx(2 * 0.5 * 2.0 * every["adv_r1"], rel=1e-4)


def test_adaptive_weight_is_the_ratio_of_the_two_gradient_norms_at_the_layer() -> None:
    rest, adv = torch.full((5,), 3.0), torch.full((5,), 0.5)
    assert adaptive_weight(rest, adv).item() == pytest.approx(3 / (0.5 + 1e-4 / math.sqrt(5)), rel=1e-3)
    assert adaptive_weight(rest, torch.zeros(5)).item() == 1e4  # clamped while the critic has no gradient


@pytest.mark.parametrize(("balance", "on"), [("total", "large+prior"), ("pixel", "large")])
def test_the_balanced_step_has_the_gradient_of_the_weighted_sum(balance: str, on: str) -> None:
    """The adaptive path takes the pixel and critic gradients once, at the decodes: the same draws through a
    plain sum with the critic weighted w_adv * lambda must give the same loss and the same gradient in
    every parameter, and lambda must be VQGAN's ratio of the two parts' gradients at the last layer."""
    perceptual = PerceptualLoss(None, None, RandomConvFeatures(CONFIG.model.channels, seed=1, width=4))
    config = adversarial_config(on=on, adversarial_balance=balance, recon_perc=1.0, con_perc=0.5)
    model = tiny_model()
    critic = PatchDiscriminator(CONFIG.model.channels, config.discriminator)
    x, y = batch()

    def run(weights: LossWeights) -> tuple[LossOutput, list[torch.Tensor]]:
        objective = SphereObjective(model, weights, config.noise, perceptual, critic)
        model.zero_grad(set_to_none=True)
        out = objective(x, y, generator=torch.Generator().manual_seed(3), adversarial=True)
        out.total.backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]
        return out, grads

    balanced, balanced_grads = run(config.loss)
    weight = float(balanced.terms["adv_lambda"])
    plain = dataclasses.replace(config.loss, adversarial_adaptive=False)
    summed, summed_grads = run(dataclasses.replace(plain, adversarial=0.5 * weight))
    assert balanced.total.item() == pytest.approx(summed.total.item(), rel=1e-5)
    for a, b in zip(balanced_grads, summed_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)

    rest_only, rest_grads = run(dataclasses.replace(plain, adversarial=0.0))
    _, adv_grads = run(dataclasses.replace(plain, adversarial=1.0))
    index = next(i for i, p in enumerate(model.parameters()) if p is model.decoder.last_layer)
    rest_at_layer = rest_grads[index]
    if balance == "pixel":  # the latent term left out: the same draws without it
        rest_at_layer = run(dataclasses.replace(plain, adversarial=0.0, latent_con=0.0))[1][index]
    expected = rest_at_layer.norm() / ((adv_grads[index] - rest_grads[index]).norm() + 1e-4)
    assert weight == pytest.approx(min(expected.item(), 1e4), rel=1e-4)
    assert rest_only.terms.keys() == balanced.terms.keys()


def test_the_term_and_the_critic_wait_for_the_start_step() -> None:
    state = fresh_state(adversarial_config(start=1))
    assert state.critic is not None
    before = [p.clone() for p in state.critic.raw.parameters()]
    first = step(state, seed=0, config=adversarial_config(start=1))
    assert not {"adv_g", "adv_d"} & set(first)
    assert all(torch.equal(a, b) for a, b in zip(before, state.critic.raw.parameters(), strict=True))
    second = step(state, seed=1, config=adversarial_config(start=1))
    assert {"adv_g", "adv_lambda", "adv_d", "adv_real_logit", "adv_fake_logit"} <= set(second)
    assert all(math.isfinite(v) for v in second.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, state.critic.raw.parameters(), strict=True))


def test_the_generator_loss_adds_weight_times_lambda_times_its_term() -> None:
    config = adversarial_config()
    metrics = step(fresh_state(config), seed=0, config=config)
    rest = metrics["recon_dist"] + 0.5 * metrics["con_dist"] + 0.1 * metrics["latent_con"]
    expected = rest + 0.5 * metrics["adv_lambda"] * metrics["adv_g"]
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
    fixed = adversarial_config(adversarial_adaptive=False)
    assert step(fresh_state(fixed), seed=0, config=fixed)["adv_lambda"] == 1.0


@pytest.mark.parametrize("balance", ["total", "pixel"])
def test_lambda_balances_the_critic_against_the_terms_it_is_told_to(balance: str) -> None:
    # "pixel" is VQGAN's nll: the latent term's weight changes the total, not the balance.
    def lambda_at(latent_con: float) -> float:
        config = adversarial_config(latent_con=latent_con, adversarial_balance=balance)
        state = fresh_state(config)
        noise = torch.Generator().manual_seed(5)
        with torch.no_grad():  # off the zero-initialised heads, where the latent term has no gradient yet
            for param in state.model.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=noise))
        x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
        noise_draw = torch.Generator().manual_seed(1)
        out = state.objective(x, torch.arange(4), generator=noise_draw, adversarial=True)
        return float(out.terms["adv_lambda"])

    same = lambda_at(5.0) == pytest.approx(lambda_at(0.1), rel=1e-5)
    assert same == (balance == "pixel")


def test_the_critic_learns_to_tell_real_images_from_decodes() -> None:
    # The tiny config's LR is 6e-5 at batch 8: the critic gets 50x, so 15 steps show it learning.
    config = dataclasses.replace(
        adversarial_config(), discriminator=DiscriminatorConfig(width=8, layers=2, lr_scale=50.0)
    )
    state = fresh_state(config)
    losses = [step(state, seed=0, config=config)["adv_d"] for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0]


def test_no_critic_without_the_term() -> None:
    assert fresh_state().critic is None
    assert LossWeights().adversarial == 0.0


@pytest.mark.parametrize(("on", "r1_gamma"), [("large", 0.0), ("large+prior", 0.0), ("large", 1.0)])
def test_objective_and_critic_each_under_ddp(tmp_path: Path, on: str, r1_gamma: float) -> None:
    """DDP raises on the next step if a trainable parameter got no gradient in the previous one: two steps
    show the critic's parameters are neither in the objective's backward nor missed by their own, and that
    R1's double backward runs under the critic's DDP wrapper."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        config = adversarial_config(on=on)
        config = dataclasses.replace(
            config, discriminator=dataclasses.replace(config.discriminator, r1_gamma=r1_gamma)
        )
        state = fresh_state(config)
        assert state.critic is not None
        assert not {id(p) for p in state.critic.raw.parameters()} & {
            id(p) for p in state.objective.parameters()
        }
        state.objective = DistributedDataParallel(state.objective)
        state.critic.network = DistributedDataParallel(state.critic.network)
        for i in range(2):
            metrics = step(state, seed=i, config=config)
        assert math.isfinite(metrics["adv_d"]) and state.step == 2
    finally:
        dist.destroy_process_group()


def test_checkpoints_carry_the_critic_and_its_optimiser(tmp_path: Path) -> None:
    config = adversarial_config()
    state = fresh_state(config)
    step(state, seed=0, config=config)
    save_checkpoint(tmp_path / "ckpt", state, config)
    resumed = fresh_state(config, seed=1)
    restore(resumed, load_checkpoint(tmp_path / "ckpt"))
    assert state.critic is not None and resumed.critic is not None
    for a, b in zip(
        state.critic.raw.state_dict().values(), resumed.critic.raw.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert (
        resumed.critic.optimizer.state_dict()["state"].keys()
        == state.critic.optimizer.state_dict()["state"].keys()
    )
    (tmp_path / "ckpt" / "critic.pt").write_bytes(b"\0" * 10)
    with pytest.raises(CorruptCheckpoint, match=r"critic\.pt is damaged"):
        load_checkpoint(tmp_path / "ckpt")


def test_a_checkpoint_from_before_the_term_resumes_with_a_fresh_critic(tmp_path: Path) -> None:
    plain = fresh_state()
    step(plain, seed=0)
    save_checkpoint(tmp_path / "ckpt", plain, CONFIG)
    assert not (tmp_path / "ckpt" / "critic.pt").exists()
    state = fresh_state(adversarial_config())
    fresh = [p.clone() for p in state.critic.raw.parameters()]  # type: ignore[union-attr]
    restore(state, load_checkpoint(tmp_path / "ckpt"))
    assert state.step == 1
    assert all(torch.equal(a, b) for a, b in zip(fresh, state.critic.raw.parameters(), strict=True))  # type: ignore[union-attr]
