from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from orchestrator.data.registry import BUILTINS
from orchestrator.evaluation.classifier import (
    WEIGHTS_DIR,
    ClassifierCard,
    accuracy,
    load_split,
    to_metric_input,
    train_classifier,
)
from orchestrator.evaluation.features import load_classifier

COMMITTED = sorted(p.stem.removeprefix("clf-") for p in WEIGHTS_DIR.glob("clf-*.json"))


def test_every_builtin_has_a_committed_classifier() -> None:
    assert set(COMMITTED) == set(BUILTINS)


@pytest.mark.parametrize("dataset", COMMITTED)
def test_committed_classifier_matches_its_card_and_accuracy_floor(dataset: str) -> None:
    card = ClassifierCard.read(WEIGHTS_DIR / f"clf-{dataset}.json")
    assert hashlib.sha256((WEIGHTS_DIR / f"{card.name}.pt").read_bytes()).hexdigest() == card.sha256
    try:
        test = load_split(dataset, "test")
    except ValueError as err:  # the data plane's DataError: Debian's Fashion-MNIST files are absent
        pytest.skip(str(err))
    measured = accuracy(load_classifier(dataset).net, test)
    assert measured == pytest.approx(card.heldout_accuracy, abs=1e-4)  # the card tells the truth
    assert measured > BUILTINS[dataset].classifier_accuracy_floor
    assert 190_000 < card.num_params < 205_000


@pytest.mark.parametrize(
    ("dataset", "sizes", "px"), [("digits", (1203, 594), 16), ("mnist", (4000, 1000), 32)]
)
def test_splits_are_the_data_planes_fixed_stratified_splits(
    dataset: str, sizes: tuple[int, int], px: int
) -> None:
    train, test = load_split(dataset, "train"), load_split(dataset, "test")
    assert (len(train.labels), len(test.labels)) == sizes
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, px, px)
    assert to_metric_input(test.images[:4]).shape == (4, 1, 32, 32)
    assert torch.equal(load_split(dataset, "test").images, test.images)  # deterministic
    assert torch.bincount(test.labels).min() >= 0.09 * len(test.labels)  # stratified: every class ~10 %
    if dataset == "mnist":  # 28 px padded to 32: a black 2 px frame
        assert test.images[..., :2, :].max() == 0 and test.images[..., :, -2:].max() == 0


def test_unknown_dataset_and_split_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        load_split("cifar-10", "test")
    with pytest.raises(ValueError, match="split"):
        load_split("digits", "validation")


@pytest.mark.slow
def test_training_command_reproduces_the_committed_digits_accuracy(tmp_path: Path) -> None:
    """~40-120 s on 2 shared cores. Same seed and thread count also reproduced the sha256 bit for bit
    on the machine that trained the committed weights; other CPUs may differ in the last bits."""
    committed = ClassifierCard.read(WEIGHTS_DIR / "clf-digits.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(committed.torch_threads)
    try:
        card = train_classifier("digits", out_dir=tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert abs(card.heldout_accuracy - committed.heldout_accuracy) < 0.015
    assert card.heldout_accuracy > BUILTINS["digits"].classifier_accuracy_floor
