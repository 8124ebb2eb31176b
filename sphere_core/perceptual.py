"""Frozen perceptual distance Perc = (1.0 * LPIPS_VGG + 0.1 * MSE(ConvNeXt-S logits)) / 1.1 (method §1.4).

Both networks are built here in plain torch (torchvision is not a dependency) with module names that
match the published state_dict layouts, and are filled ONLY from weight files the user points to:
    vgg_path       torchvision `vgg16` state_dict (the `features.*` keys are used; `classifier.*` ignored)
    lpips_path     LPIPS `vgg.pth` linear heads (`lin0.model.1.weight` ... `lin4.model.1.weight`)
    convnext_path  torchvision `convnext_small` state_dict (`features.*`, `classifier.*`)
Nothing is ever downloaded. Where no file can be had, `RandomConvFeatures` is the project's own feature
distance: a small conv net frozen at a seeded random initialisation, compared LPIPS-style (random conv
features already make a usable perceptual distance: Zhang et al. 2018, the LPIPS paper). With neither,
the perceptual terms are off; `perceptual_status` says so.
Inputs are images in [0, 1] (the loss space, method §1.4); grayscale is repeated to 3 channels for the
published networks.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sphere_core.config import RANDOM_CONV_WIDTH, LossWeights
from sphere_core.precision import bf16_autocast

# torchvision vgg16 `features`: conv widths per stage, a 2x2 max-pool between stages. LPIPS taps the
# last ReLU of each stage (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
LPIPS_TAPS = (3, 8, 15, 22, 29)  # their indices in `features`
LPIPS_CHANNELS = tuple(stage[-1] for stage in VGG16_STAGES)
# LPIPS ScalingLayer: maps [-1, 1] inputs to the statistics its VGG calibration was fitted on.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
# convnext_small: (input channels, output channels of the following downsample, blocks) per stage.
CONVNEXT_SMALL_STAGES = ((96, 192, 3), (192, 384, 3), (384, 768, 27), (768, None, 3))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LPIPS_WEIGHT, CONVNEXT_WEIGHT = 1.0, 0.1  # official spec string "lpips-convnext_s-1.0-0.1"

# One image batch's activations that a perceptual distance compares, (B, ...) each.
Features = list[torch.Tensor]


# --- LPIPS-VGG16 ---------------------------------------------------------------------------------


def vgg16_features() -> nn.Sequential:
    """torchvision's vgg16 `features` up to relu5_3 (the final pool is parameter-free and unused)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for i, stage in enumerate(VGG16_STAGES):
        if i > 0:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        for width in stage:
            layers += [nn.Conv2d(in_ch, width, kernel_size=3, padding=1), nn.ReLU()]
            in_ch = width
    return nn.Sequential(*layers)


class LinearHead(nn.Module):
    """LPIPS NetLinLayer: index 0 held the (eval-time no-op) dropout, index 1 the 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        self.lins = nn.ModuleList(LinearHead(c) for c in LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised (over channels) activations at the 5 LPIPS layers. x: (B, 3, H, W) in [0, 1]."""
        if min(x.shape[-2:]) < 16:
            raise ValueError(f"LPIPS-VGG16 needs images of at least 16 px, got {tuple(x.shape[-2:])}")
        h = ((x * 2 - 1) - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in LPIPS_TAPS:
                out.append(h / (h.square().sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def distance(self, fa: Features, fb: Features) -> torch.Tensor:
        """Per-sample LPIPS distance (B,) between two batches' `taps`."""
        dist = torch.zeros(fa[0].shape[0], device=fa[0].device, dtype=fa[0].dtype)
        for lin, a, b in zip(self.lins, fa, fb, strict=True):
            dist = dist + lin((a - b).square()).mean(dim=(1, 2, 3))  # spatial average
        return dist

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-sample LPIPS distance (B,)."""
        return self.distance(self.taps(a), self.taps(b))


def load_lpips(vgg_path: str | Path, lpips_path: str | Path) -> LPIPS:
    net = LPIPS()
    vgg = torch.load(vgg_path, map_location="cpu", weights_only=True)
    features = {k.removeprefix("features."): v for k, v in vgg.items() if k.startswith("features.")}
    net.features.load_state_dict(features, strict=True)
    lins = torch.load(lpips_path, map_location="cpu", weights_only=True)
    net.lins.load_state_dict({k.removeprefix("lin"): v for k, v in lins.items()}, strict=True)
    return net


# --- ConvNeXt-Small ------------------------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ToChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class ToChannelsFirst(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """dwconv7 -> LN -> Linear(4x) -> GELU -> Linear -> layer scale, residual (no stochastic depth:
    the network is frozen)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim),
            ToChannelsLast(),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            ToChannelsFirst(),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale * self.block(x)


class ConvNeXt(nn.Module):
    def __init__(
        self, stages: tuple[tuple[int, int | None, int], ...] = CONVNEXT_SMALL_STAGES, num_classes: int = 1000
    ) -> None:
        super().__init__()
        stem = nn.Sequential(
            nn.Conv2d(3, stages[0][0], kernel_size=4, stride=4), LayerNorm2d(stages[0][0], eps=1e-6)
        )
        layers: list[nn.Module] = [stem]
        for dim, out_dim, depth in stages:
            layers.append(nn.Sequential(*(ConvNeXtBlock(dim) for _ in range(depth))))
            if out_dim is not None:
                layers.append(
                    nn.Sequential(
                        LayerNorm2d(dim, eps=1e-6), nn.Conv2d(dim, out_dim, kernel_size=2, stride=2)
                    )
                )
        self.features = nn.Sequential(*layers)
        last = stages[-1][0]
        self.classifier = nn.Sequential(
            LayerNorm2d(last, eps=1e-6), nn.Flatten(1), nn.Linear(last, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) ImageNet-normalised -> logits (B, num_classes)."""
        return self.classifier(self.features(x).mean(dim=(2, 3), keepdim=True))


def load_convnext(convnext_path: str | Path) -> ConvNeXt:
    net = ConvNeXt()
    net.load_state_dict(torch.load(convnext_path, map_location="cpu", weights_only=True), strict=True)
    return net


# --- the project's own features: a random conv net ------------------------------------------------

# Five 3x3 convs (ReLU after each), stride 2 at the second and fourth, the width doubling at each stride
# (32, 64, 64, 128, 128 from the default first width); the distance taps the second, fourth and fifth. The
# architecture and seed are kept apart from every metric network (orchestrator/evaluation): a loss must not
# train the model toward the features it is scored in.
RANDOM_CONV_WIDENING = (1, 2, 2, 4, 4)
RANDOM_CONV_STRIDES = (1, 2, 1, 2, 1)
RANDOM_CONV_TAPS = (1, 3, 4)


class RandomConvFeatures(nn.Module):
    """Frozen random conv features; forward(a, b) is the LPIPS-style distance (B,): channel-unit-normalised
    activations at each tap, squared differences summed over channels (LPIPS with unit heads), averaged over
    space, then over taps."""

    def __init__(self, channels: int, seed: int, width: int = RANDOM_CONV_WIDTH) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        in_ch = channels
        widths = [width * factor for factor in RANDOM_CONV_WIDENING]
        for out_ch, stride in zip(widths, RANDOM_CONV_STRIDES, strict=True):
            conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)
            with torch.no_grad():  # Kaiming-normal for ReLU, drawn from the seed alone
                conv.weight.normal_(0.0, (2.0 / (in_ch * 9)) ** 0.5, generator=generator)
            layers += [conv, nn.ReLU()]
            in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        self.channels, self.seed, self.width = channels, seed, widths[0]

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, out = x * 2 - 1, []
        for index in range(len(RANDOM_CONV_WIDENING)):
            h = self.layers[2 * index + 1](self.layers[2 * index](h))
            if index in RANDOM_CONV_TAPS:
                out.append(h / (h.square().sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def distance(self, fa: Features, fb: Features) -> torch.Tensor:
        """(B,) between two batches' `taps`."""
        pairs = zip(fa, fb, strict=True)
        return torch.stack([(a - b).square().sum(dim=1).mean(dim=(1, 2)) for a, b in pairs]).mean(dim=0)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b: (B, channels, H, W) in [0, 1] -> (B,)."""
        return self.distance(self.taps(a), self.taps(b))


# --- the combined loss ---------------------------------------------------------------------------


class PerceptualLoss(nn.Module):
    """Frozen Perc(a, b) -> per-sample distance (B,), a weighted mean of whichever networks are loaded:
    the published pair from weight files, or the project's random conv features alone."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        lpips: LPIPS | None,
        convnext: ConvNeXt | None,
        random_conv: RandomConvFeatures | None = None,
        *,
        bf16: bool = False,
    ) -> None:
        super().__init__()
        self.bf16 = bf16  # run the networks under bf16 autocast; the distance is returned in fp32
        if (lpips is None and convnext is None) == (random_conv is None):
            raise ValueError(
                "PerceptualLoss needs LPIPS and/or ConvNeXt weights, or else random conv features"
            )
        self.lpips = lpips
        self.convnext = convnext
        self.random_conv = random_conv
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # frozen: stays in eval mode inside a training objective

    def describe(self) -> str:
        precision = "bf16" if self.bf16 else "fp32"
        if self.random_conv is not None:
            features = self.random_conv
            return (
                f"random conv features, seed {features.seed}, width {features.width}, LPIPS-style distance, "
                f"{precision}"
            )
        parts = [f"LPIPS-VGG16 x{LPIPS_WEIGHT}"] if self.lpips is not None else []
        parts += [f"ConvNeXt-S logits MSE x{CONVNEXT_WEIGHT}"] if self.convnext is not None else []
        return " + ".join(parts) + f", {precision}"

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        assert self.convnext is not None
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        return self.convnext((x - self.mean) / self.std)  # (B, 1000)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b: (B, C, H, W) in [0, 1], C in {1, 3} -> (B,) in fp32."""
        return self.distance(self.features(a), self.features(b))

    def features(self, x: torch.Tensor) -> Features:
        """What `distance` compares, per image: computing them once lets one image be compared with several
        others (the training objective's small-noise decode is a prediction and, detached, a target)."""
        with bf16_autocast(x.device, self.bf16):
            if self.random_conv is not None:
                return self.random_conv.taps(x)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            taps = self.lpips.taps(x) if self.lpips is not None else []
            return taps + ([self.logits(x)] if self.convnext is not None else [])

    def distance(self, fa: Features, fb: Features) -> torch.Tensor:
        """Perc per sample (B,) in fp32, between `features` of two batches of images."""
        with bf16_autocast(fa[0].device, self.bf16):
            if self.random_conv is not None:
                return self.random_conv.distance(fa, fb).float()
            total = torch.zeros(fa[0].shape[0], device=fa[0].device)
            norm = 0.0
            if self.lpips is not None:
                taps = len(LPIPS_TAPS)
                total, norm = total + LPIPS_WEIGHT * self.lpips.distance(fa[:taps], fb[:taps]), LPIPS_WEIGHT
            if self.convnext is not None:
                mse = (fa[-1] - fb[-1]).square().mean(dim=1)
                total, norm = total + CONVNEXT_WEIGHT * mse, norm + CONVNEXT_WEIGHT
            return (total / norm).float()


def build_perceptual(
    vgg_path: str | Path | None = None,
    lpips_path: str | Path | None = None,
    convnext_path: str | Path | None = None,
    *,
    random_conv: tuple[int, int] | None = None,
    random_conv_width: int = RANDOM_CONV_WIDTH,
    device: torch.device | str = "cpu",
    bf16: bool = False,
) -> PerceptualLoss | None:
    """The frozen perceptual loss from local weight files, or from `random_conv` = (image channels, seed)
    with its first conv `random_conv_width` wide, or None when neither is given. LPIPS needs both
    `vgg_path` and `lpips_path`; either network alone is allowed (renormalised weight). `bf16`: its
    networks run under bf16 autocast."""
    if (vgg_path is None) != (lpips_path is None):
        raise ValueError("LPIPS needs both vgg_path (torchvision vgg16) and lpips_path (LPIPS vgg.pth)")
    if random_conv is not None:
        if vgg_path is not None or convnext_path is not None:
            raise ValueError("random conv features replace the weight files: give one or the other")
        features = RandomConvFeatures(*random_conv, width=random_conv_width)
        return PerceptualLoss(None, None, features, bf16=bf16).to(device)
    lpips = load_lpips(vgg_path, lpips_path) if vgg_path is not None and lpips_path is not None else None
    convnext = load_convnext(convnext_path) if convnext_path is not None else None
    if lpips is None and convnext is None:
        return None
    return PerceptualLoss(lpips, convnext, bf16=bf16).to(device)


def perceptual_status(perceptual: PerceptualLoss | None, weights: LossWeights | None = None) -> str:
    """One line for logs: whether the perceptual terms are on, and what is ignored when they are off."""
    if perceptual is not None:
        return f"perceptual loss ON: ({perceptual.describe()}) / total weight"
    ignored = ""
    if weights is not None and (weights.recon_perc > 0 or weights.con_perc > 0):
        ignored = f"; loss.recon_perc={weights.recon_perc} and loss.con_perc={weights.con_perc} are ignored"
    return (
        "perceptual loss OFF: no LPIPS-VGG16 / ConvNeXt-S weight files given (nothing is downloaded) and "
        "no random conv features asked for, "
        f"training uses the pixel distance and latent consistency only{ignored}"
    )
