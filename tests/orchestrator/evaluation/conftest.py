"""A digits protocol built once per test session (reference + floor cached in a temp directory)."""

from __future__ import annotations

import pytest
import torch

from orchestrator.evaluation.classifier import LabelledImages, load_split
from orchestrator.evaluation.protocol import Protocol


@pytest.fixture(scope="session")
def digits_train() -> LabelledImages:
    return load_split("digits", "train")


@pytest.fixture(scope="session")
def digits_test() -> LabelledImages:
    return load_split("digits", "test")


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("eval-cache"))


@pytest.fixture(scope="session")
def digits_protocol(eval_cache: str) -> Protocol:
    return Protocol.for_dataset("digits", cache=eval_cache)


@pytest.fixture(scope="session")
def digits_candidates(digits_train: LabelledImages) -> torch.Tensor:
    """594 real train images in [0, 1] (a seeded draw that is not the floor's), the undamaged candidate."""
    pick = torch.randperm(len(digits_train.labels), generator=torch.Generator().manual_seed(123))[:594]
    return digits_train.images[pick].float() / 255
