"""Every metric name the project reports, built here and nowhere else: what the training loop sends, what an
eval scores, and the keys of the image sets it scores. The config checks a sweep's `tune.metric` against these
names before any cluster work, so they sit beside the config, below everything that reports them.

    SCORE_REGISTRY                       every score an evaluated image set can report, declared once
    scores("clf")                        -> ("fd_clf", "kid_clf", "is_clf", "precision_clf", "recall_clf")
    of_samples("fd_clf", 4)              -> "fd_clf_4step"   (scores of 4-step samples)
    of_reconstructions("fd_clf")         -> "recon_fd_clf"   (held-out images reconstructed with the null
                                                            class, as the official rFID: its proxy)
    under_protocol("fd_clf", proxy=True) -> "proxy/fd_clf"   (n below the dataset's standard n)
    floor("fd_clf")                      -> "fd_clf_floor"   (the real-vs-real value at the same n)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Score:
    """One score an evaluated image set reports, declared once: orchestrator/evaluation/protocol.py computes
    exactly the declared scores (tested), and every list of names below derives from SCORE_REGISTRY."""

    name: str  # per feature space ("fd" -> "fd_clf", "fd_inception"), or whole when `needs` is "pixels"
    needs: Literal["features", "labels", "pixels"]  # labels: a classifier of the dataset and the drawn class
    better: Literal["min", "max"] | None  # which way a sweep should rank it; None: neither (a ratio to real)
    deviation: bool = False  # also reports <name>_std, its spread over draws (KID's subsets, IS's splits)
    samples_only: bool = False  # not of reconstructions, which copy their inputs by design

    def named(self, tag: str) -> str:
        return self.name if self.needs == "pixels" else in_space(self.name, tag)


SCORE_REGISTRY = (
    Score("fd", "features", "min"),
    Score("kid", "features", "min", deviation=True),
    Score("is", "features", "max", deviation=True),
    Score("precision", "features", "max"),
    Score("recall", "features", "max"),
    # The share of images the dataset's classifier assigns to the class they were drawn for, and how much
    # the images of one class vary relative to real ones (Inception's ImageNet classes cannot say either).
    Score("acc", "labels", "max"),
    Score("spread", "labels", None),
    # Images of at most PIXEL_SPACE_MAX_VALUES values are also scored in pixel space (evaluation/pixels.py):
    # an FD no loss or network touches, and how close samples sit to the training images (memorisation).
    Score("fd_pix", "pixels", "min"),
    Score("nn_ratio_pix", "pixels", None, samples_only=True),
    Score("copies_pix", "pixels", "min", samples_only=True),
)
PIXEL_SPACE_MAX_VALUES = 64 * 64 * 3
# What sphere_core.train_step returns for every step.
TRAIN_STEP = ("loss", "grad_norm", "lr", "angle_large_deg", "angle_small_deg", "z_rms")
STEP = "step"  # the training step a report belongs to: Tune's and ASHA's clock
TRAIN_IMAGES = "train_images"  # images seen so far by the whole trial: the training-compute axis
# Where a worker's wall time goes, cumulative seconds since its train function started (orchestrator.train
# .loop): model build, resume and the step-0 eval, waiting on data, train steps, evals and sample grids,
# checkpoints (upload included), metric sends, and the rest; "time_loop_s" is their sum, the wall time.
LOOP_PHASES = ("setup", "data", "step", "eval", "checkpoint", "report", "other")
LOOP_WALL = "time_loop_s"


def phase_time(phase: str) -> str:
    """The cumulative seconds of one loop phase: "data" -> "time_data_s"."""
    return f"time_{phase}_s"


LOOP = (
    STEP,
    TRAIN_IMAGES,
    "images_per_s",
    "data_wait_s",
    "skipped_samples",
    *map(phase_time, LOOP_PHASES),
    LOOP_WALL,
)
EVAL_SECONDS = "eval_s"
EVAL_STEP = "eval_step"  # the step whose eval a report carries
# Sent to Ray with each checkpoint, never to MLflow: the sweep's metric where the checkpoint's own step was
# evaluated, NaN where it carries an earlier eval forward. Train keeps the best checkpoints by it (NaN ranks
# last; the latest is kept regardless), so an unevaluated checkpoint never passes for the one evaluated.
CHECKPOINT_SCORE = "checkpoint_score"


def in_space(score: str, tag: str) -> str:
    """A score in one feature space: ("fd", "clf") -> "fd_clf"."""
    return f"{score}_{tag}"


def deviation(name: str) -> str:
    """The spread of a score over its draws (KID's subsets, IS's splits): "kid_clf" -> "kid_clf_std"."""
    return f"{name}_std"


def declared(tag: str, *, conditional: bool, pixels: bool = False, samples: bool = True) -> tuple[Score, ...]:
    """The registry's scores of one image set: in feature space `tag`; the class scores when the model is
    conditional and the features are the dataset classifier's ("clf"); the pixel-space scores when the
    images have a pixel space; the memorisation scores only for samples."""
    needs = {
        "features",
        *(("labels",) if conditional and tag == "clf" else ()),
        *(("pixels",) if pixels else ()),
    }
    return tuple(s for s in SCORE_REGISTRY if s.needs in needs and (samples or not s.samples_only))


def scores(tag: str, *, conditional: bool = False) -> tuple[str, ...]:
    """The names in one feature space: ("fd_clf", "kid_clf", ...) or ("fd_inception", ...)."""
    return tuple(s.named(tag) for s in declared(tag, conditional=conditional))


def score_of(logged: str) -> Score | None:
    """The registry entry behind any logged score name ("proxy/recon_fd_clf_4step" -> fd), else None."""
    name = re.sub(r"_\d+step$", "", parse_protocol(logged)[0]).removeprefix("recon_")
    whole = next((s for s in SCORE_REGISTRY if s.needs == "pixels" and s.name == name), None)
    in_a_space = (s for s in SCORE_REGISTRY if s.needs != "pixels" and s.name == name.rsplit("_", 1)[0])
    return whole or next(in_a_space, None)


def fd(tag: str) -> str:
    return in_space("fd", tag)


def of_samples(score: str, steps: int) -> str:
    return f"{score}_{steps}step"


def of_reconstructions(score: str) -> str:
    return f"recon_{score}"


PROXY = "proxy/"


def under_protocol(name: str, *, proxy: bool) -> str:
    return f"{PROXY}{name}" if proxy else name


def parse_protocol(logged: str) -> tuple[str, bool]:
    """under_protocol's inverse: "proxy/fd_clf" -> ("fd_clf", True)."""
    return logged.removeprefix(PROXY), logged.startswith(PROXY)


def space_of(name: str) -> str:
    """in_space's feature space: "fd_clf" -> "clf"."""
    return name.split("_", 1)[1]


def floor(name: str) -> str:
    return f"{name}_floor"


def floor_std(name: str) -> str:
    return deviation(floor(name))


def sample_images(steps: int) -> str:
    """The key of an eval's T-step samples (and of their grid image, samples_<T>step.png)."""
    return f"samples_{steps}step"


def has_pixel_space(image_shape: tuple[int, int, int]) -> bool:
    """Whether images of (C, H, W) are also scored in pixel space."""
    channels, height, width = image_shape
    return channels * height * width <= PIXEL_SPACE_MAX_VALUES


def sample_scores(tag: str, *, conditional: bool, pixels: bool) -> tuple[str, ...]:
    """What an evaluated set of samples reports (without the deviations)."""
    return tuple(s.named(tag) for s in declared(tag, conditional=conditional, pixels=pixels))


def reconstruction_scores(tag: str, *, conditional: bool, pixels: bool) -> tuple[str, ...]:
    """What evaluated reconstructions report, before `of_reconstructions` names them."""
    chosen = declared(tag, conditional=conditional, pixels=pixels, samples=False)
    return tuple(s.named(tag) for s in chosen)


def eval_metrics(tag: str, *, conditional: bool, steps: Iterable[int], pixels: bool) -> tuple[str, ...]:
    """What each training eval reports: the scores of the samples at each step count, of the
    reconstructions, and the eval's seconds."""
    names = sample_scores(tag, conditional=conditional, pixels=pixels)
    samples = [of_samples(score, t) for t in steps for score in names]
    recon = reconstruction_scores(tag, conditional=conditional, pixels=pixels)
    return (*samples, *map(of_reconstructions, recon), EVAL_SECONDS)
