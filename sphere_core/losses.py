"""The Sphere Encoder training objective (paper spec 1.4-1.6) as one nn.Module.

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

The whole computation lives in `SphereObjective.forward` because DDP (Ray Train's prepare_model) only
synchronises gradients for work done inside the wrapped module's forward().
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sphere_core.config import LossWeights, NoiseConfig
from sphere_core.model import SphereEncoder
from sphere_core.perceptual import PerceptualLoss
from sphere_core.spherify import add_training_noise, angle_deg, spherify


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


class SphereObjective(nn.Module):
    """Noise -> decode twice -> re-encode, and the three loss terms. Terms whose weights are 0 are not
    computed (and not reported); with `perceptual=None` the perceptual terms are off."""

    def __init__(
        self,
        model: SphereEncoder,
        weights: LossWeights,
        noise: NoiseConfig,
        perceptual: PerceptualLoss | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.weights = weights
        self.noise = noise
        self.perceptual = perceptual

    def _pixel_term(
        self, name: str, pred: torch.Tensor, target: torch.Tensor, w_dist: float, w_perc: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """w_dist * Dist + w_perc * Perc on [0, 1] images; returns (weighted sum, unweighted terms)."""
        total = pred.new_zeros(())
        terms: dict[str, torch.Tensor] = {}
        if w_dist > 0:
            d = distance(pred, target, self.weights.distance)
            total, terms[f"{name}_dist"] = total + w_dist * d, d
        if w_perc > 0 and self.perceptual is not None:
            p = self.perceptual(pred, target).mean()
            total, terms[f"{name}_perc"] = total + w_perc * p, p
        return total, terms

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> LossOutput:
        """x: (B, C, H, W) in [-1, 1]; y: (B,) labels or None (unconditional)."""
        model, w = self.model, self.weights

        def drop(labels: torch.Tensor | None) -> torch.Tensor | None:
            # Official: each network's LabelEmbedder drops inside its own forward, so every call below
            # (encode, the 2B-row decode, re-encode) draws its own mask, row by row (spec 1.5).
            if labels is None:
                return None
            return model.drop_labels(labels, model.cfg.label_dropout, generator=generator)

        z = model.encode(x, drop(y))  # (B, N, d)
        v = spherify(z)
        noise = add_training_noise(v, self.noise, generator=generator)
        # One decoder pass over [v_NOISY; v_noisy], 2B latents (spec 1.6).
        y2 = None if y is None else torch.cat([y, y])
        x_hat = model.decode(torch.cat([noise.v_large, noise.v_small]), drop(y2))  # (2B, C, H, W)
        x_hat_large, x_hat_small = x_hat.chunk(2)
        x01, large01, small01 = x * 0.5 + 0.5, x_hat_large * 0.5 + 0.5, x_hat_small * 0.5 + 0.5

        # Reconstruction pairs with the small-noise decode; without pixel consistency the official
        # code pairs it with the large-noise decode instead.
        recon_pred = small01 if w.pixel_consistency else large01
        total, terms = self._pixel_term("recon", recon_pred, x01, w.recon_dist, w.recon_perc)
        if w.pixel_consistency:
            # sg[x_hat_small]: the large-noise decode is pulled toward the small-noise one ("bootstrap").
            con, con_terms = self._pixel_term("con", large01, small01.detach(), w.con_dist, w.con_perc)
            total, terms = total + con, terms | con_terms
        if w.latent_con > 0:
            # x_hat_large is NOT detached: this term trains the decoder through the second encoder pass.
            z_re = model.encode(x_hat_large, drop(y))  # (B, N, d)
            # sg[E(x)]: the clean latent is the target; cosine ignores scale, so raw z equals f(z) here.
            cos = F.cosine_similarity(z_re.flatten(1).float(), z.detach().flatten(1).float(), dim=1)
            latent = (1.0 - cos).mean()
            total, terms["latent_con"] = total + w.latent_con * latent, latent

        with torch.no_grad():
            terms["angle_large_deg"] = angle_deg(noise.v_large, v).mean()
            terms["angle_small_deg"] = angle_deg(noise.v_small, v).mean()
            terms["z_rms"] = z.float().square().mean().sqrt()
        return LossOutput(total=total, terms={k: t.detach() for k, t in terms.items()})
