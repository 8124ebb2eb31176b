"""Every metric name the project reports, built here and nowhere else: what the training loop sends, what an
eval scores, and the keys of the image sets it scores. The config checks a sweep's `tune.metric` against these
names before any cluster work, so they sit beside the config, below everything that reports them.

    scores("clf")                        -> ("fd_clf", "kid_clf", "precision_clf", "recall_clf")
    of_samples("fd_clf", 4)              -> "fd_clf_4step"   (scores of 4-step samples)
    of_reconstructions("fd_clf")         -> "recon_fd_clf"   (held-out images reconstructed with the null
                                                            class, as the official rFID: its proxy)
    under_protocol("fd_clf", proxy=True) -> "proxy/fd_clf"   (n below the dataset's standard n)
    floor("fd_clf")                      -> "fd_clf_floor"   (the real-vs-real value at the same n)
"""

from __future__ import annotations

from collections.abc import Iterable

SCORES = ("fd", "kid", "precision", "recall")  # what each evaluated image set reports, per feature space
CLASS_SCORES = ("acc", "spread")  # a conditional model scored by a dataset classifier also reports these
# Images of at most this many values are also scored in pixel space (orchestrator/evaluation/pixels.py): an
# FD no loss or network touches, and how close samples sit to the training images (memorisation).
PIXEL_SPACE_MAX_VALUES = 64 * 64 * 3
PIXEL_FD = "fd_pix"
MEMORISATION = ("nn_ratio_pix", "copies_pix")  # samples only: reconstructions copy their inputs by design
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


def in_space(score: str, tag: str) -> str:
    """A score in one feature space: ("fd", "clf") -> "fd_clf"."""
    return f"{score}_{tag}"


def deviation(name: str) -> str:
    """The spread of a score over its draws (KID's subsets, IS's splits): "kid_clf" -> "kid_clf_std"."""
    return f"{name}_std"


def scores(tag: str, *, conditional: bool = False) -> tuple[str, ...]:
    """Metric names in one feature space: ("fd_clf", "kid_clf", ...) or ("fd_inception", ...). A
    conditional model scored by a dataset classifier also reports acc_clf, the fraction of images the
    classifier assigns to the class they were drawn for, and spread_clf, how much the images of one class
    vary relative to real ones (Inception's ImageNet classes cannot say either)."""
    names = (*SCORES, *CLASS_SCORES) if conditional and tag == "clf" else SCORES
    return tuple(in_space(score, tag) for score in names)


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
    """What an evaluated set of samples reports: `scores`, and with a pixel space fd_pix and memorisation."""
    return (*scores(tag, conditional=conditional), *((PIXEL_FD, *MEMORISATION) if pixels else ()))


def reconstruction_scores(tag: str, *, conditional: bool, pixels: bool) -> tuple[str, ...]:
    """What evaluated reconstructions report, before `of_reconstructions` names them."""
    return (*scores(tag, conditional=conditional), *((PIXEL_FD,) if pixels else ()))


def eval_metrics(tag: str, *, conditional: bool, steps: Iterable[int], pixels: bool) -> tuple[str, ...]:
    """What each training eval reports: the scores of the samples at each step count, of the
    reconstructions, and the eval's seconds."""
    names = sample_scores(tag, conditional=conditional, pixels=pixels)
    samples = [of_samples(score, t) for t in steps for score in names]
    recon = reconstruction_scores(tag, conditional=conditional, pixels=pixels)
    return (*samples, *map(of_reconstructions, recon), EVAL_SECONDS)
