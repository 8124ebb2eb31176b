"""Loss terms, their weights, and where gradients may (and may not) flow (method §1.4-1.6)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from sphere_core import losses
from sphere_core.config import LossWeights, NoiseConfig
from sphere_core.losses import SphereObjective, distance
from sphere_core.model import SphereEncoder
from sphere_core.perceptual import LPIPS, PerceptualLoss, RandomConvFeatures
from sphere_core.spherify import TrainingNoise, add_training_noise, spherify
from tests.sphere_core.tiny import images, tiny_model

ONLY = {  # one term switched on at a time
    "recon": LossWeights(recon_dist=1.0, recon_perc=0.0, con_dist=0.0, con_perc=0.0, latent_con=0.0),
    "con": LossWeights(recon_dist=0.0, recon_perc=0.0, con_dist=1.0, con_perc=0.0, latent_con=0.0),
    "latent": LossWeights(recon_dist=0.0, recon_perc=0.0, con_dist=0.0, con_perc=0.0, latent_con=1.0),
}


def unit_images(seed: int, shape: tuple[int, ...] = (4, 3, 8, 8)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# --- distance ------------------------------------------------------------------------------------


def test_smooth_l1_equals_half_mse_on_unit_images() -> None:
    a, b = unit_images(0), unit_images(1)
    assert torch.allclose(distance(a, b, "smooth_l1"), 0.5 * F.mse_loss(a, b), rtol=1e-6)


def test_distances_mean_per_sample_then_batch() -> None:
    a, b = unit_images(0), unit_images(1)
    per_sample_l2 = (a - b).square().flatten(1).mean(1)
    assert torch.allclose(distance(a, b, "l2"), per_sample_l2.mean())
    mixed = 0.5 * distance(a, b, "smooth_l1") + 0.5 * distance(a, b, "l2")
    assert torch.allclose(distance(a, b, "smooth_l1+l2"), mixed)
    # Outside [0, 1] smooth L1 leaves its quadratic branch: |d| - 0.5 for |d| >= 1.
    assert torch.allclose(
        distance(torch.full((1, 1, 1, 1), 3.0), torch.zeros(1, 1, 1, 1), "smooth_l1"), torch.tensor(2.5)
    )
    with pytest.raises(ValueError, match="unknown distance"):
        distance(a, b, "l1")


# --- the objective ---------------------------------------------------------------------------------


def objective(weights: LossWeights, *, model: SphereEncoder | None = None, **kw: object) -> SphereObjective:
    model = model if model is not None else tiny_model(label_dropout=0.0)
    return SphereObjective(model, weights, NoiseConfig(alpha_max_deg=80.0), **kw)  # type: ignore[arg-type]


def run(obj: SphereObjective, seed: int = 0, batch: int = 4) -> losses.LossOutput:
    cfg = obj.model.cfg
    x = images(batch, cfg, seed)
    y = torch.arange(batch) % cfg.num_classes
    return obj(x, y, generator=torch.Generator().manual_seed(seed))


@contextmanager
def recorded_outputs(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Keeps every output of `module` with retain_grad(), so a test can read each pass's .grad."""
    outputs: list[torch.Tensor] = []

    def hook(_m: torch.nn.Module, _inp: object, out: torch.Tensor) -> None:
        out.retain_grad()
        outputs.append(out)

    handle = module.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()


def is_zero(grad: torch.Tensor | None) -> bool:
    return grad is None or bool((grad == 0).all())


def decoder_output_grads(obj: SphereObjective) -> tuple[torch.Tensor, torch.Tensor]:
    """d total / d [x_hat_large; x_hat_small] after one backward."""
    with recorded_outputs(obj.model.decoder) as outs:
        run(obj).total.backward()
    assert outs[0].grad is not None
    large_grad, small_grad = outs[0].grad.chunk(2)
    return large_grad, small_grad


def test_total_is_the_weighted_sum_of_independently_recomputed_terms() -> None:
    weights = LossWeights(
        recon_dist=2.0, recon_perc=0.0, con_dist=0.7, con_perc=0.0, latent_con=0.3, distance="l2"
    )
    model = tiny_model(label_dropout=0.0)
    obj = objective(weights, model=model)
    out = run(obj, seed=3)

    # The same computation by hand, with the same random draws.
    x, y = images(4, model.cfg, 3), torch.arange(4) % model.cfg.num_classes
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        z = model.encode(x, y)
        noise = add_training_noise(spherify(z), obj.noise, generator=g)
        large = model.decode(noise.v_large, y) * 0.5 + 0.5
        small = model.decode(noise.v_small, y) * 0.5 + 0.5
        x01 = x * 0.5 + 0.5
        recon = (small - x01).square().mean()
        con = (large - small).square().mean()
        cos = F.cosine_similarity(model.encode(large * 2 - 1, y).flatten(1), z.flatten(1), dim=1)
        latent = (1 - cos).mean()
    assert set(out.terms) == {
        "recon_dist",
        "con_dist",
        "latent_con",
        "angle_large_deg",
        "angle_small_deg",
        "z_rms",
    }
    for name, expected in (("recon_dist", recon), ("con_dist", con), ("latent_con", latent)):
        assert torch.allclose(out.terms[name], expected, rtol=1e-4, atol=1e-6), name
    assert torch.allclose(out.total, 2.0 * recon + 0.7 * con + 0.3 * latent, rtol=1e-4)
    assert out.total.requires_grad and not any(t.requires_grad for t in out.terms.values())


def test_diagnostics_report_noise_angles_and_latent_rms() -> None:
    out = run(objective(LossWeights()), batch=16)
    # Stratified radii up to tan(80 deg): the mean large angle is far above the small one.
    assert 40.0 < out.terms["angle_large_deg"].item() < 80.0
    assert out.terms["angle_small_deg"] < out.terms["angle_large_deg"]
    assert out.terms["z_rms"].item() > 0


def test_pixel_consistency_target_is_stop_gradient() -> None:
    large_grad, small_grad = decoder_output_grads(objective(ONLY["con"]))
    assert not is_zero(large_grad)
    assert is_zero(small_grad)  # sg[x_hat_small]


def test_reconstruction_pairs_with_small_decode_unless_pixel_consistency_is_off() -> None:
    # Pixel consistency on (con_perc > 0; its term is skipped without a perceptual network).
    large_grad, small_grad = decoder_output_grads(
        objective(LossWeights(recon_perc=0, con_dist=0, latent_con=0))
    )
    assert is_zero(large_grad) and not is_zero(small_grad)
    # Off (both consistency weights 0): the official code reconstructs from x_hat_large instead.
    large_grad, small_grad = decoder_output_grads(objective(ONLY["recon"]))
    assert not is_zero(large_grad) and is_zero(small_grad)


def test_latent_consistency_target_is_stop_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    # Cut the other path from the first encoder pass (through v -> noise -> decoder -> re-encode), so
    # any gradient left on the first pass's output could only come through the target E(x).
    def noise_from_detached_v(
        v: torch.Tensor, noise: NoiseConfig, *, generator: torch.Generator | None
    ) -> TrainingNoise:
        return add_training_noise(v.detach(), noise, generator=generator)

    monkeypatch.setattr(losses, "add_training_noise", noise_from_detached_v)
    obj = objective(ONLY["latent"])
    with recorded_outputs(obj.model.encoder) as outs:
        run(obj).total.backward()
    first_pass, second_pass = outs
    assert is_zero(first_pass.grad)  # sg[E(x, y)]
    assert not is_zero(second_pass.grad)


def test_latent_consistency_trains_the_decoder_through_the_second_encoder_pass() -> None:
    obj = objective(ONLY["latent"])
    large_grad, small_grad = decoder_output_grads(obj)
    assert not is_zero(large_grad)  # x_hat_large is not detached
    assert is_zero(small_grad)
    decoder_grads = [p.grad for p in obj.model.decoder.parameters() if p.requires_grad]
    assert sum(0 if is_zero(g) else 1 for g in decoder_grads) > len(decoder_grads) // 2


def test_zero_weight_terms_are_skipped_including_the_second_encoder_pass() -> None:
    obj = objective(LossWeights(recon_dist=1.0, recon_perc=0.0, con_dist=1.0, con_perc=0.0, latent_con=0.0))
    with recorded_outputs(obj.model.encoder) as enc_outs, recorded_outputs(obj.model.decoder) as dec_outs:
        out = run(obj)
    assert (len(enc_outs), len(dec_outs)) == (1, 1)
    assert "latent_con" not in out.terms and "recon_perc" not in out.terms


def labels_seen(model: SphereEncoder, run_objective: Callable[[], object]) -> dict[str, list[torch.Tensor]]:
    """The labels each encode/decode call received while `run_objective` ran."""
    seen: dict[str, list[torch.Tensor]] = {"encode": [], "decode": []}
    originals = {name: getattr(model, name) for name in seen}
    for name, original in originals.items():

        def spy(
            inp: torch.Tensor, y: torch.Tensor | None = None, *, _orig=original, _name=name, **kw: object
        ) -> torch.Tensor:
            assert y is not None
            seen[_name].append(y.clone())
            return _orig(inp, y, **kw)

        setattr(model, name, spy)
    try:
        run_objective()
    finally:
        for name, original in originals.items():
            setattr(model, name, original)
    return seen


def test_every_network_call_drops_labels_independently() -> None:
    model = tiny_model(label_dropout=0.5)
    obj = objective(LossWeights(), model=model)
    batch, null = 64, model.cfg.num_classes
    y = torch.arange(batch) % null
    seen = labels_seen(model, lambda: run(obj, batch=batch))
    (y_enc, y_re_enc), (y_dec,) = seen["encode"], seen["decode"]
    masks = {"enc": y_enc == null, "re_enc": y_re_enc == null}
    masks |= dict(zip(("dec_large", "dec_small"), (y_dec == null).chunk(2), strict=True))
    for name, mask in masks.items():
        assert 16 <= int(mask.sum()) <= 48, name  # p = 0.5 over 64 labels
    for labels in (y_enc, y_re_enc, *y_dec.chunk(2)):  # a label is either kept or the null class
        assert torch.equal(torch.where(labels == null, y, labels), y)
    # Independent p = 0.5 masks agree on about half the rows; shared draws would agree on all of them.
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            agreement = (masks[a] == masks[b]).float().mean().item()
            assert 0.25 < agreement < 0.75, (a, b, agreement)


def test_label_drops_follow_the_generator() -> None:
    model = tiny_model(label_dropout=0.5)
    obj = objective(LossWeights(), model=model)

    def drops(seed: int) -> list[torch.Tensor]:
        seen = labels_seen(model, lambda: run(obj, seed=seed, batch=32))
        return [labels == model.cfg.num_classes for labels in seen["encode"] + seen["decode"]]

    first, again, other = drops(0), drops(0), drops(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # same seed, same drops
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    no_dropout = objective(LossWeights(), model=tiny_model(label_dropout=0.0))
    seen = labels_seen(no_dropout.model, lambda: run(no_dropout, batch=32))
    null = no_dropout.model.cfg.num_classes
    assert not any(bool((labels == null).any()) for labels in seen["encode"] + seen["decode"])


def seeded_perceptual(network: str) -> PerceptualLoss:
    """A frozen perceptual loss on LPIPS-VGG16 (random weights) or random-conv features, drawn from seed 0."""
    torch.manual_seed(0)
    if network == "lpips":
        return PerceptualLoss(LPIPS(), None)
    return PerceptualLoss(None, None, RandomConvFeatures(tiny_model().cfg.channels, seed=1))


@pytest.mark.parametrize("network", ["lpips", "random-conv"])
def test_perceptual_terms_use_the_frozen_network_and_pass_gradient_to_images(network: str) -> None:
    perceptual = seeded_perceptual(network)
    weights = LossWeights(recon_dist=0.0, recon_perc=1.0, con_dist=0.0, con_perc=1.0, latent_con=0.0)
    obj = objective(weights, perceptual=perceptual)
    obj.train()
    assert not perceptual.training  # frozen networks stay in eval mode
    with recorded_outputs(obj.model.decoder) as outs:
        out = run(obj)
    out.total.backward()
    assert {"recon_perc", "con_perc"} <= set(out.terms)
    assert all(p.grad is None for p in perceptual.parameters())
    assert not is_zero(outs[0].grad)
    assert torch.allclose(out.total, out.terms["recon_perc"] + out.terms["con_perc"])


@pytest.mark.parametrize("network", ["lpips", "random-conv"])
def test_perceptual_terms_sharing_features_equal_the_separate_distances_and_their_gradients(
    network: str,
) -> None:
    # The objective reuses the small-noise decode's features as the detached consistency target: it must
    # give Perc(x_hat_s, x) and Perc(x_hat_L, sg[x_hat_s]) as separate calls would, values and gradients at
    # the decodes.
    perceptual = seeded_perceptual(network)
    weights = LossWeights(recon_dist=0.0, recon_perc=1.0, con_dist=0.0, con_perc=0.5, latent_con=0.0)
    obj = objective(weights, perceptual=perceptual)
    with recorded_outputs(obj.model.decoder) as outs:
        out = run(obj)
    out.total.backward()
    decodes = outs[0].detach().requires_grad_()  # [x_hat_L; x_hat_s], in [-1, 1]
    large, small = (decodes * 0.5 + 0.5).chunk(2)
    x01 = images(4, obj.model.cfg, 0) * 0.5 + 0.5
    recon, con = perceptual(small, x01).mean(), perceptual(large, small.detach()).mean()
    (recon + 0.5 * con).backward()
    assert torch.allclose(out.terms["recon_perc"], recon, rtol=1e-5)
    assert torch.allclose(out.terms["con_perc"], con, rtol=1e-5)
    assert decodes.grad is not None and outs[0].grad is not None
    assert torch.allclose(outs[0].grad, decodes.grad, rtol=1e-4, atol=1e-9)


def test_without_perceptual_network_the_perceptual_weights_are_ignored() -> None:
    out = run(objective(LossWeights(recon_dist=1.0, recon_perc=1.0, con_dist=0.5, con_perc=0.5)))
    assert "recon_perc" not in out.terms and "con_perc" not in out.terms
    assert torch.allclose(
        out.total, out.terms["recon_dist"] + 0.5 * out.terms["con_dist"] + 0.1 * out.terms["latent_con"]
    )


@pytest.mark.parametrize("with_network", [True, False])
def test_the_objective_reports_exactly_the_terms_its_weights_declare(with_network: bool) -> None:
    # The names come from LossWeights' term fields: no list of them is kept anywhere else.
    torch.manual_seed(0)
    perceptual = PerceptualLoss(None, None, RandomConvFeatures(tiny_model().cfg.channels, seed=1))
    weights = LossWeights(recon_dist=1.0, recon_perc=1.0, con_dist=0.5, con_perc=0.5, latent_con=0.1)
    out = run(objective(weights, perceptual=perceptual if with_network else None))
    reported = set(out.terms) & set(LossWeights.terms("pixel", "perceptual", "latent"))
    assert reported == set(weights.reported_terms(perceptual=with_network))
    zeroed = LossWeights(recon_dist=1.0, recon_perc=0.0, con_dist=0.0, con_perc=0.0, latent_con=0.0)
    assert zeroed.reported_terms(perceptual=True) == ("recon_dist",)
