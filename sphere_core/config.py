"""Typed, frozen configuration for the Sphere Encoder, and a strict dict <-> dataclass round trip.

Every default is the official code's unless its comment says otherwise (the method and where the paper and
its code differ: docs/method.md; what each module implements and the presets: docs/model.md). Units are
in the field names: angles in degrees (`_deg`), steps in optimiser steps.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin

# ViT sizes: (width, depth, heads). small..giant are the official SIZE_DICT; nano..mini are ours,
# small enough to train on 2 CPU cores (head dim stays divisible by 4 for the 2-D axial RoPE).
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "nano": (64, 2, 2),
    "micro": (128, 4, 4),
    "mini": (256, 6, 4),
    "small": (512, 8, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "xlarge": (1152, 28, 16),
    "huge": (1280, 32, 16),
    "giant": (1664, 40, 16),
}
# The seed of the random-conv perceptual network (sphere_core/perceptual.py) the CPU presets train with.
RANDOM_CONV_SEED = 20260215
RANDOM_CONV_WIDTH = (
    32  # its first conv's width; the later ones double at each stride (sphere_core/perceptual.py)
)
ViTSize = Literal["nano", "micro", "mini", "small", "base", "large", "xlarge", "huge", "giant"]


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the dotted field and what is allowed."""


SHOWN_CHARS = 80  # the most of a value an error line shows: a hostile file can hold megabytes in one value
_SHORT = reprlib.Repr()  # visits a few items per level only: a value's full repr can be unbounded work
_SHORT.maxstring = _SHORT.maxother = SHOWN_CHARS
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 8
_SHORT.maxlevel = 3


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` cut to `limit` characters, the cut marked with `...`."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def short_repr(value: Any) -> str:
    """repr(value) for an error line: at most SHOWN_CHARS characters, in bounded time for any value."""
    return clip(_SHORT.repr(value))


def base_patch_size(image_size: int) -> int:
    """Official patch size by resolution: <=64 px -> 4, 128 -> 8, 256 -> 16, 512 -> 32."""
    if image_size <= 64:
        return 4
    return image_size // 16


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    image_size: int = 32
    channels: int = 3  # 3 for RGB, 1 for the grayscale built-in datasets
    num_classes: int = 10  # 0 = unconditional (no AdaLN, no label embedders, no CFG)
    encoder_size: ViTSize = "base"
    decoder_size: ViTSize = "base"
    compression_ratio: float = 1.5  # L = channels * H * W / compression_ratio
    latent_resolution: Literal["low", "high"] = "high"  # high halves the base patch (official default)
    encoder_mixer_depth: int = 2  # latent MLP-Mixer depth: 2 for CIFAR, 4 at 256 px
    decoder_mixer_depth: int = 2
    affine_latent_mixer: bool = True  # learnable gain on the final RMSNorm of BOTH latent mixers (official)
    pixel_head: Literal["linear", "conv"] = "conv"  # conv for CIFAR, linear at 256 px
    label_dropout: float = 0.1  # probability of replacing a label by the null class (for CFG)
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"model.image_size: {self.image_size} is not divisible by patch {self.patch_size}"
            )
        if self.token_channels < 1:
            raise ConfigError(
                f"model.compression_ratio: {self.compression_ratio} leaves < 1 channel per token "
                f"(patch {self.patch_size}, {self.channels} image channels)"
            )
        if self.num_classes < 0:
            raise ConfigError("model.num_classes: must be >= 0 (0 = unconditional)")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError("model.label_dropout: must be in [0, 1)")
        for name in ("encoder_size", "decoder_size"):
            width, _, heads = VIT_SIZES[getattr(self, name)]
            if (width // heads) % 4:
                raise ConfigError(f"model.{name}: head dim {width // heads} is not divisible by 4 (2-D RoPE)")

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def patch_size(self) -> int:
        p = base_patch_size(self.image_size)
        return p // 2 if self.latent_resolution == "high" else p

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:  # N
        return self.grid_size**2

    @property
    def token_channels(self) -> int:  # d = int(C * p^2 / compression_ratio), official formula
        return int(self.channels * self.patch_size**2 / self.compression_ratio)

    @property
    def latent_dim(self) -> int:  # L = N * d; the sphere has radius sqrt(L)
        return self.num_tokens * self.token_channels


@dataclass(frozen=True, kw_only=True)
class NoiseConfig:
    alpha_max_deg: float = 85.0  # max noise angle; sigma_max = tan(alpha_max). 80 for 32 px, 85 for 256 px
    mix_hard_cases: bool = True  # push some samples into [alpha_max, alpha_max + hard_case_extra_deg]
    hard_case_prob: float = 0.1
    hard_case_extra_deg: float = 5.0  # capped at 89 degrees total
    # "paper": with prob p, r ~ U[1, tan(a_mix)/tan(a_max)] over the whole band (the stated intent).
    # "official": the official code's quirk, one draw s decides both whether and where, so only the
    # lowest 10% of the band is ever used.
    hard_case_mode: Literal["paper", "official"] = "paper"
    small_noise_fraction: float = 0.5  # r_small = fraction * r * u, u ~ stratified U[0, 1]

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha_max_deg < 90.0:
            raise ConfigError(f"noise.alpha_max_deg: {self.alpha_max_deg} must be in (0, 90)")
        if not 0.0 <= self.hard_case_prob <= 1.0:
            raise ConfigError("noise.hard_case_prob: must be in [0, 1]")
        if self.hard_case_extra_deg < 0:
            raise ConfigError("noise.hard_case_extra_deg: must be >= 0")
        if not 0.0 <= self.small_noise_fraction <= 1.0:
            raise ConfigError("noise.small_noise_fraction: must be in [0, 1]")

    @property
    def sigma_max(self) -> float:
        return math.tan(math.radians(self.alpha_max_deg))

    @property
    def hard_case_max_deg(self) -> float:
        return min(self.alpha_max_deg + self.hard_case_extra_deg, 89.0)


TERM = "term"  # a LossWeights field's metadata: which kind of loss term it weights (see `loss_term`)


def loss_term(default: float, kind: Literal["pixel", "perceptual", "latent", "critic"]) -> Any:
    """A LossWeights field that weights one loss term. Pixel, perceptual and latent terms are reported under
    the field's own name whenever their weight is nonzero (a perceptual one only with a perceptual network);
    the critic's weight reports its adv_* diagnostics instead. Everything that lists loss terms derives
    from these fields (LossWeights.terms)."""
    return field(default=default, metadata={TERM: kind})


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    """The five loss weights (official CIFAR-10 values by default) and the distance function."""

    recon_dist: float = loss_term(1.0, "pixel")  # w_rd: Dist(x_hat_small, x)
    recon_perc: float = loss_term(1.0, "perceptual")  # w_rp: Perc(x_hat_small, x)
    con_dist: float = loss_term(0.5, "pixel")  # w_cd: Dist(x_hat_large, sg[x_hat_small])
    con_perc: float = loss_term(0.5, "perceptual")  # w_cp: Perc(x_hat_large, sg[x_hat_small])
    latent_con: float = loss_term(0.1, "latent")  # w_lat: 1 - cos(E(x_hat_large), sg[E(x)])
    distance: Literal["smooth_l1", "l2", "smooth_l1+l2"] = "smooth_l1"
    # The adversarial term (ours, off by default; sphere_core/adversarial.py): w_adv * lambda * L_G.
    adversarial: float = loss_term(0.0, "critic")  # w_adv; 0 = no critic at all
    adversarial_start_step: int = 0  # neither the term nor the critic trains before this optimiser step
    adversarial_adaptive: bool = True  # lambda = VQGAN's gradient-balancing weight (else 1)
    # What the critic judges as fake: the large-noise decodes, and with "large+prior" also decodes of random
    # sphere points (the one-step samples; one more batch through the decoder pass).
    adversarial_on: Literal["large", "large+prior"] = "large"
    # What the adaptive weight balances the critic against: "total", every other term (the recipe the CPU
    # presets were measured with), or "pixel", the reconstruction and pixel-consistency terms only (VQGAN's
    # reconstruction + perceptual loss; measured on MNIST it trades class accuracy for variety early on).
    adversarial_balance: Literal["total", "pixel"] = "total"

    def __post_init__(self) -> None:
        for name in self.terms("pixel", "perceptual", "latent", "critic"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name}: must be >= 0")
        if self.adversarial_start_step < 0:
            raise ConfigError("loss.adversarial_start_step: must be >= 0")

    @classmethod
    def terms(cls, *kinds: str) -> tuple[str, ...]:
        """The weight fields of the given kinds of loss term, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get(TERM) in kinds)

    def reported_terms(self, *, perceptual: bool) -> tuple[str, ...]:
        """The loss terms a training step reports under their own names: nonzero weight, and for a
        perceptual term, a perceptual network to compute it."""
        kinds = ("pixel", "latent", "perceptual") if perceptual else ("pixel", "latent")
        return tuple(name for name in self.terms(*kinds) if getattr(self, name) > 0)

    @property
    def pixel_consistency(self) -> bool:
        return self.con_dist > 0 or self.con_perc > 0


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    lr: float = 1e-4  # at reference_batch; scaled linearly with the global batch
    min_lr: float = 1e-6  # scaled the same way
    reference_batch: int = 256
    encoder_lr_scale: float = 0.1  # official --encoder_lr_scaler
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    total_steps: int = 1000  # run length; the cosine reaches min_lr at total_steps - warmup_steps (official)
    decay_lr: bool = True
    grad_clip: float = 1.0
    ema_decay: float = 0.9997  # EMA is kept in fp32 whatever the model dtype
    bf16_autocast: bool = False  # training, sample grids and evaluation (weights and EMA stay fp32)
    # Memory, not recipe (ours): neither changes the images per step, the LR or, to float rounding, the
    # gradient. grad_accum_steps splits each rank's batch into that many equal micro-batches, one
    # forward/backward each (DDP syncs on the last only); activation_checkpointing keeps only each
    # transformer block's input and recomputes the rest in backward (~1/3 more compute).
    grad_accum_steps: int = 1
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.min_lr < 0:
            raise ConfigError("optim.lr: must be > 0 (and optim.min_lr >= 0)")
        if self.total_steps < 1 or self.warmup_steps < 0:
            raise ConfigError("optim.total_steps: must be >= 1 (and optim.warmup_steps >= 0)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("optim.ema_decay: must be in [0, 1)")
        if self.grad_accum_steps < 1:
            raise ConfigError("optim.grad_accum_steps: must be >= 1 (1 = no accumulation)")


@dataclass(frozen=True, kw_only=True)
class DiscriminatorConfig:
    """The PatchGAN critic of the adversarial term (ours; used only when loss.adversarial > 0)."""

    width: int = 64  # first conv's channels (VQGAN's ndf); doubles per stride-2 conv, capped at 8x
    layers: int = 3  # stride-2 convs (VQGAN's n_layers); 3 at 32 px leaves 2 x 2 patch logits
    lr_scale: float = 1.0  # x the generator's scheduled LR
    betas: tuple[float, float] = (0.5, 0.9)  # VQGAN's critic Adam
    conditional: bool = False  # a projection critic that also judges the class (class-conditional models)
    r1_gamma: float = 0.0  # R1 gradient penalty on real images (sphere_core/adversarial.py); 0 = off
    r1_every: int = 1  # lazy R1 (StyleGAN2): the penalty x r1_every on every r1_every-th critic step

    def __post_init__(self) -> None:
        if self.r1_gamma < 0:
            raise ConfigError("discriminator.r1_gamma: must be >= 0 (0 = no R1 penalty)")
        if self.r1_every < 1:
            raise ConfigError("discriminator.r1_every: must be >= 1 (1 = the penalty on every critic step)")
        if self.width < 1:
            raise ConfigError("discriminator.width: must be >= 1")
        if not 1 <= self.layers <= 6:
            raise ConfigError("discriminator.layers: must be in [1, 6]")
        if self.lr_scale <= 0:
            raise ConfigError("discriminator.lr_scale: must be > 0")


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    steps: int = 1  # forward steps T: 1 decoder pass + (T-1) encode/noise/decode loops
    cfg: float = 1.0  # guidance scale; active only above 1
    cfg_position: Literal["enc", "dec", "combo"] = "combo"  # combo applies sqrt(cfg) at both
    schedule: Literal["fixed", "decay"] = "fixed"  # r_k = 1, or 1 - k/T
    shared_noise: bool = True  # one noise draw reused by every refinement step
    noise_scale: float = 1.0  # multiplies r_k (the official noise_strength_scaler)
    alpha_max_deg: float | None = None  # None = the angle the model was trained with (see `resolved`)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError("sampling.steps: must be >= 1")
        if self.cfg < 1.0:
            raise ConfigError("sampling.cfg: must be >= 1 (1 = no guidance)")
        if self.alpha_max_deg is not None and not 0.0 < self.alpha_max_deg < 90.0:
            raise ConfigError(f"sampling.alpha_max_deg: {self.alpha_max_deg} must be in (0, 90), or null")

    def resolved(self, noise: NoiseConfig) -> SamplingConfig:
        """This sampling with the model's training angle where none is set. Resolved once, where the model's
        config is known; the samplers read the angle from here alone."""
        if self.alpha_max_deg is not None:
            return self
        return dataclasses.replace(self, alpha_max_deg=noise.alpha_max_deg)

    @property
    def sigma_max(self) -> float:
        """tan(alpha_max): the re-noising strength of a refinement step at r_k = 1."""
        if self.alpha_max_deg is None:
            raise ConfigError(
                "sampling.alpha_max_deg: unresolved; sample with sampling.resolved(config.noise)"
            )
        return math.tan(math.radians(self.alpha_max_deg))


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Training-time augmentation, applied by the data pipeline (`transforms.random_hflip`)."""

    # p = 0.5 left-right flips; the official scripts keep --flip_image True for every dataset. Off by
    # default (ours): a flipped digit is not a digit. The paper presets turn it on.
    random_flip: bool = False


@dataclass(frozen=True, kw_only=True)
class SphereConfig:
    """Everything that defines a trained model: architecture, noise, losses, optimiser, augmentation, and
    the critic of the optional adversarial term."""

    model: ModelConfig = field(default_factory=ModelConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SphereConfig:
        return from_dict(cls, data)


# --- strict dict <-> dataclass ------------------------------------------------------------------

T = TypeVar("T")


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass tree as plain JSON/YAML-ready values (tuples become lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(obj)


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Builds dataclass `cls` from `data`, rejecting unknown keys and wrong types by dotted path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"{where}{clip(str(unknown[0]))}: unknown key (allowed: {', '.join(fields)})")
    kwargs = {name: _coerce(hints[name], value, _join(path, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{path or cls.__name__}: {exc}") from None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)  # type: ignore[arg-type]
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{path}: {short_repr(value)} is not allowed (allowed: {', '.join(map(repr, args))})"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{path}: {short_repr(value)} matches none of {tp}"
        )
    if origin is tuple:
        if not isinstance(value, list | tuple) or (args[-1] is not Ellipsis and len(value) != len(args)):
            raise ConfigError(f"{path}: expected a list of {len(args)} values, got {short_repr(value)}")
        item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        return tuple(
            _coerce(t, v, f"{path}[{i}]") for i, (t, v) in enumerate(zip(item_types, value, strict=True))
        )
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {short_repr(value)}")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {short_repr(value)}")
        return {str(k): _coerce(args[1], v, f"{path}.{clip(str(k))}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (bool, str) and isinstance(value, tp):
        return value
    raise ConfigError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {short_repr(value)}")
