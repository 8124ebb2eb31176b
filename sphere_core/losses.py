"""The Sphere Encoder training objective (method §1.4-1.6) as one nn.Module.

Symbols (paper -> code), images in the losses are in [0, 1] (x * 0.5 + 0.5):
    x                        real images in [-1, 1], (B, C, H, W)     -> x
    z = E(x, y)              raw encoder output, (B, N, d)            -> z
    v = f(z)                 clean spherical latent                   -> v
    v_NOISY, v_noisy         large / small noise latents (same e)     -> noise.v_large, noise.v_small
    x_hat_L = D(v_NOISY, y)  large-noise decode                       -> x_hat_large
    x_hat_s = D(v_noisy, y)  small-noise decode                       -> x_hat_small
    sg[.]                    stop-gradient                            -> .detach()
    L = w_rd Dist(x_hat_s, x) + w_rp Perc(x_hat_s, x)                          (pixel reconstruction)
      + w_cd Dist(x_hat_L, sg[x_hat_s]) + w_cp Perc(x_hat_L, sg[x_hat_s])      (pixel consistency)
      + w_lat mean(1 - cos(E(x_hat_L, y), sg[E(x, y)]))                        (latent consistency)
      + w_adv lambda L_G(x_hat_L [, D(v_prior, y)])      (optional critic, ours: sphere_core/adversarial.py;
                                                          lambda balances it against the pixel terms)

The whole computation lives in `SphereObjective.forward` because DDP (Ray Train's prepare_model) only
synchronises gradients for work done inside the wrapped module's forward().
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sphere_core.adversarial import PatchDiscriminator, adaptive_weight, frozen_logits, generator_loss
from sphere_core.config import LossWeights, NoiseConfig
from sphere_core.model import SphereEncoder
from sphere_core.perceptual import PerceptualLoss
from sphere_core.spherify import add_training_noise, angle_deg, randn, spherify


def distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Dist(a, b): mean per sample over (C, H, W), then over the batch. Images in [0, 1].

    "smooth_l1" is the official "l1" (beta 1): on [0, 1] every |a - b| <= 1, so it equals 0.5 * MSE.
    """
    if kind == "smooth_l1":
        per_pixel = F.smooth_l1_loss(a, b, reduction="none", beta=1.0)
    elif kind == "l2":
        per_pixel = F.mse_loss(a, b, reduction="none")
    elif kind == "smooth_l1+l2":
        per_pixel = 0.5 * F.smooth_l1_loss(a, b, reduction="none", beta=1.0) + 0.5 * F.mse_loss(
            a, b, reduction="none"
        )
    else:
        raise ValueError(f"unknown distance {kind!r} (allowed: smooth_l1, l2, smooth_l1+l2)")
    return per_pixel.flatten(1).mean(dim=1).mean()


@dataclass(frozen=True)
class LossOutput:
    total: torch.Tensor  # weighted sum, the only tensor that carries gradients
    terms: dict[str, torch.Tensor]  # unweighted loss terms and diagnostics, detached scalars
    fakes: torch.Tensor | None = None  # detached decodes the critic step judges (adversarial term on)
    fake_labels: torch.Tensor | None = None  # the labels they were decoded with (null where dropped)


class SphereObjective(nn.Module):
    """Noise -> decode twice -> re-encode, and the three loss terms. Terms whose weights are 0 are not
    computed (and not reported); with `perceptual=None` the perceptual terms are off; with a `critic`, the
    adversarial term is added when forward() is told to."""

    def __init__(
        self,
        model: SphereEncoder,
        weights: LossWeights,
        noise: NoiseConfig,
        perceptual: PerceptualLoss | None = None,
        critic: PatchDiscriminator | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.weights = weights
        self.noise = noise
        self.perceptual = perceptual
        # Held in a tuple so nn.Module does not register it: the critic trains in its own step, and a DDP
        # wrapper of this objective must neither sync its gradients nor expect them from this backward.
        self._critic = (critic,)

    def _pixel_term(
        self,
        name: str,
        pred: torch.Tensor,
        target: torch.Tensor,
        w_dist: float,
        w_perc: float,
        perc: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """w_dist * Dist + w_perc * Perc on [0, 1] images, Perc(pred, target) given per sample as `perc`
        (None: the perceptual term is off); returns (weighted sum, unweighted terms)."""
        total = pred.new_zeros(())
        terms: dict[str, torch.Tensor] = {}
        if w_dist > 0:
            d = distance(pred, target, self.weights.distance)
            total, terms[f"{name}_dist"] = total + w_dist * d, d
        if w_perc > 0 and perc is not None:
            p = perc.mean()
            total, terms[f"{name}_perc"] = total + w_perc * p, p
        return total, terms

    def _perceptual_distances(
        self, x01: torch.Tensor, small01: torch.Tensor, large01: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Perc per sample for the reconstruction and the pixel-consistency terms (None where off). The
        small-noise decode's features serve both terms: as the reconstruction's prediction and, detached, as
        the consistency target, the values a pass over sg[x_hat_small] gives, without that pass."""
        w, perceptual = self.weights, self.perceptual
        recon_on, con_on = w.recon_perc > 0, w.pixel_consistency and w.con_perc > 0
        if perceptual is None or not (recon_on or con_on):
            return None, None
        small = perceptual.features(small01) if w.pixel_consistency else None
        recon = None
        if recon_on:
            prediction = small if small is not None else perceptual.features(large01)
            recon = perceptual.distance(prediction, perceptual.features(x01))
        con = None
        if con_on and small is not None:
            con = perceptual.distance(perceptual.features(large01), [f.detach() for f in small])
        return recon, con

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        adversarial: bool = False,
    ) -> LossOutput:
        """x: (B, C, H, W) in [-1, 1]; y: (B,) labels or None (unconditional). `adversarial`: add the critic's
        term (the step decides, from loss.adversarial_start_step)."""
        model, w = self.model, self.weights
        critic = self._critic[0] if adversarial else None
        if adversarial and critic is None:
            raise ValueError("adversarial=True needs the objective built with a critic")

        def drop(labels: torch.Tensor | None) -> torch.Tensor | None:
            # Official: each network's LabelEmbedder drops inside its own forward, so every call below
            # (encode, the 2B-row decode, re-encode) draws its own mask, row by row (method §1.5).
            if labels is None:
                return None
            return model.drop_labels(labels, model.cfg.label_dropout, generator=generator)

        z = model.encode(x, drop(y))  # (B, N, d)
        v = spherify(z)
        noise = add_training_noise(v, self.noise, generator=generator)
        # One decoder pass over [v_NOISY; v_noisy], 2B latents (method §1.6), plus B random sphere points when
        # the critic also judges one-step samples.
        latents = [noise.v_large, noise.v_small]
        if critic is not None and w.adversarial_on == "large+prior":
            latents.append(
                spherify(randn(tuple(v.shape), generator=generator, device=v.device, dtype=v.dtype))
            )
        y_decoded = drop(None if y is None else torch.cat([y] * len(latents)))
        x_hat = model.decode(torch.cat(latents), y_decoded)  # (2B or 3B, C, H, W)
        # With the adaptive weight the pixel terms and the critic read the decodes through `cut`, a leaf with
        # their values: their gradients at the decodes are taken once, balanced, and sent on through the
        # decoder by the step's one backward (`_balanced`), instead of twice through the feature network and
        # the critic (for the weight, then for the step).
        balanced = critic is not None and w.adversarial_adaptive
        cut = x_hat.detach().requires_grad_() if balanced else x_hat
        x_hat_large, x_hat_small, *x_hat_prior = cut.chunk(len(latents))
        x01, large01, small01 = x * 0.5 + 0.5, x_hat_large * 0.5 + 0.5, x_hat_small * 0.5 + 0.5

        # Reconstruction pairs with the small-noise decode; without pixel consistency the official
        # code pairs it with the large-noise decode instead.
        recon_pred = small01 if w.pixel_consistency else large01
        recon_perc, con_perc = self._perceptual_distances(x01, small01, large01)
        total, terms = self._pixel_term("recon", recon_pred, x01, w.recon_dist, w.recon_perc, recon_perc)
        if w.pixel_consistency:
            # sg[x_hat_small]: the large-noise decode is pulled toward the small-noise one ("bootstrap").
            con, con_terms = self._pixel_term(
                "con", large01, small01.detach(), w.con_dist, w.con_perc, con_perc
            )
            total, terms = total + con, terms | con_terms
        pixel_total = total  # what VQGAN balances its critic against: its reconstruction + perceptual loss
        latent_total = total.new_zeros(())
        if w.latent_con > 0:
            # The decode itself, not the cut: this term trains the decoder through the second encoder pass.
            z_re = model.encode(x_hat.chunk(len(latents))[0], drop(y))  # (B, N, d)
            # sg[E(x)]: the clean latent is the target; cosine ignores scale, so raw z equals f(z) here.
            cos = F.cosine_similarity(z_re.flatten(1).float(), z.detach().flatten(1).float(), dim=1)
            latent = (1.0 - cos).mean()
            latent_total, terms["latent_con"] = w.latent_con * latent, latent
            total = total + latent_total

        fakes = fake_labels = None
        if critic is not None:
            fakes = torch.cat([x_hat_large, *x_hat_prior])
            if y_decoded is not None:  # each decode is judged as the class it was decoded for
                large_labels, _, *prior_labels = y_decoded.chunk(len(latents))
                fake_labels = torch.cat([large_labels, *prior_labels])
            adv = generator_loss(frozen_logits(critic, fakes, fake_labels))
            if balanced:
                total, weight = self._balanced(x_hat, cut, pixel_total, latent_total, adv)
            else:
                total, weight = total + w.adversarial * adv, adv.new_ones(())
            terms["adv_g"], terms["adv_lambda"] = adv, weight
            fakes = fakes.detach()

        with torch.no_grad():
            terms["angle_large_deg"] = angle_deg(noise.v_large, v).mean()
            terms["angle_small_deg"] = angle_deg(noise.v_small, v).mean()
            terms["z_rms"] = z.float().square().mean().sqrt()
        terms = {k: t.detach() for k, t in terms.items()}
        return LossOutput(total=total, terms=terms, fakes=fakes, fake_labels=fake_labels)

    def _balanced(
        self,
        x_hat: torch.Tensor,
        cut: torch.Tensor,
        pixel_total: torch.Tensor,
        latent_total: torch.Tensor,
        adv: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(total, lambda): the loss with VQGAN's adaptive weight on the critic's term, as a tensor whose
        value is pixel + latent + w_adv * lambda * L_G and whose gradient is that loss's. The pixel terms
        and L_G reach the decodes `x_hat` through the leaf `cut`: their gradients there are taken once, and
        the layer-W gradients lambda compares follow from them through the last layer alone."""
        w, last_layer = self.weights, self.model.decoder.last_layer

        def at_decodes(loss: torch.Tensor) -> torch.Tensor:
            if not loss.requires_grad:  # every pixel term off
                return torch.zeros_like(cut)
            return torch.autograd.grad(loss, cut)[0]

        def at_last_layer(grad: torch.Tensor) -> torch.Tensor:
            return torch.autograd.grad(x_hat, last_layer, grad_outputs=grad, retain_graph=True)[0]

        pixel_grad, adv_grad = at_decodes(pixel_total), at_decodes(adv)
        rest_at_layer = at_last_layer(pixel_grad)
        if w.adversarial_balance == "total" and latent_total.requires_grad:
            latent_at_layer = torch.autograd.grad(latent_total, last_layer, retain_graph=True)[0]
            rest_at_layer = rest_at_layer + latent_at_layer
        weight = adaptive_weight(rest_at_layer, at_last_layer(adv_grad))
        surrogate = (x_hat * (pixel_grad + w.adversarial * weight * adv_grad)).sum() + latent_total
        value = pixel_total.detach() + latent_total.detach() + w.adversarial * weight * adv.detach()
        return surrogate + (value - surrogate.detach()), weight
