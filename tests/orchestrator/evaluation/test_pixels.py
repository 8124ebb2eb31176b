"""The pixel space: an FD no network touches, and a memorisation score that catches what fd_clf cannot,
a generator that hands back its training images."""

from __future__ import annotations

import pytest
import torch

from orchestrator.evaluation.classifier import LabelledImages
from orchestrator.evaluation.pixels import COPY_QUANTILE, PixelSpace, nearest_distances
from orchestrator.evaluation.protocol import Protocol, evaluate_samples


def test_nearest_distances_match_a_brute_force_search() -> None:
    g = torch.Generator().manual_seed(0)
    queries, pool = torch.rand(700, 12, generator=g), torch.rand(90, 12, generator=g)
    brute = torch.cdist(queries.double(), pool.double()).min(dim=1).values.float()
    assert torch.allclose(nearest_distances(queries, pool), brute, atol=1e-4)


def test_real_unseen_images_score_one_and_the_copy_quantile(
    digits_train: LabelledImages, digits_test: LabelledImages
) -> None:
    space = PixelSpace.fit(digits_train.images, digits_test.images)
    ratio, copies = space.memorisation(digits_test.images.float() / 255)
    assert ratio == pytest.approx(1.0, abs=1e-6)
    assert copies == pytest.approx(COPY_QUANTILE, abs=0.01)
    assert space.fd(digits_test.images.float() / 255) == pytest.approx(0.0, abs=1e-6)


def test_copies_of_training_images_are_caught_where_fd_clf_sees_real_digits(
    digits_protocol: Protocol, digits_train: LabelledImages, digits_candidates: torch.Tensor
) -> None:
    """digits_candidates are training images: a perfect copier. fd_clf puts them at the real-vs-real floor,
    the memorisation score flags every one."""
    copied = evaluate_samples(digits_candidates, protocol=digits_protocol).values
    assert copied["fd_clf"] < 2 * digits_protocol.floor["fd_clf"]
    assert copied["copies_pix"] == 1.0 and copied["nn_ratio_pix"] == 0.0
    assert digits_protocol.floor["nn_ratio_pix"] == 1.0
    assert digits_protocol.floor["copies_pix"] == COPY_QUANTILE


def test_fd_pix_grows_with_blur_and_its_floor_is_measured(
    digits_protocol: Protocol, digits_test: LabelledImages
) -> None:
    real = digits_test.images.float() / 255
    blurred = torch.nn.functional.avg_pool2d(real, 3, stride=1, padding=1)
    values = evaluate_samples(blurred, protocol=digits_protocol).values
    assert 0 < digits_protocol.floor["fd_pix"] < values["fd_pix"]
    assert digits_protocol.floor_std["fd_pix"] > 0


def test_the_pixel_space_is_in_the_fingerprint(digits_protocol: Protocol) -> None:
    described = digits_protocol.describe()
    assert described["pixels"]["components"] == 64  # type: ignore[index]
    assert len(described["pixels"]["pixels_sha256"]) == 64  # type: ignore[index]
