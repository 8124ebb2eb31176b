"""Loss terms, their weights, and where gradients may (and may not) flow (spec 1.4-1.6)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from sphere_core import losses
from sphere_core.config import LossWeights, NoiseConfig
from sphere_core.losses import SphereObjective, distance
from sphere_core.model import SphereEncoder
from sphere_core.perceptual import LPIPS, PerceptualLoss
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


def test_dropped_labels_are_shared_by_every_pass() -> None:
    model = tiny_model(label_dropout=0.5)
    seen: dict[str, list[torch.Tensor]] = {"encode": [], "decode": []}
    for name in seen:
        original = getattr(model, name)

        def spy(
            inp: torch.Tensor, y: torch.Tensor | None = None, *, _orig=original, _name=name, **kw: object
        ) -> torch.Tensor:
            assert y is not None
            seen[_name].append(y.clone())
            return _orig(inp, y, **kw)

        setattr(model, name, spy)
    obj = objective(LossWeights(), model=model)
    run(obj, batch=32)
    (y_enc, y_re_enc), (y_dec,) = seen["encode"], seen["decode"]
    null = model.cfg.num_classes
    assert 4 <= int((y_enc == null).sum()) <= 28  # p = 0.5 over 32 labels
    assert torch.equal(y_enc, y_re_enc) and torch.equal(y_dec, torch.cat([y_enc, y_enc]))


def test_perceptual_terms_use_the_frozen_network_and_pass_gradient_to_images() -> None:
    torch.manual_seed(0)
    perceptual = PerceptualLoss(LPIPS(), None)
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


def test_without_perceptual_network_the_perceptual_weights_are_ignored() -> None:
    out = run(objective(LossWeights(recon_dist=1.0, recon_perc=1.0, con_dist=0.5, con_perc=0.5)))
    assert "recon_perc" not in out.terms and "con_perc" not in out.terms
    assert torch.allclose(
        out.total, out.terms["recon_dist"] + 0.5 * out.terms["con_dist"] + 0.1 * out.terms["latent_con"]
    )
