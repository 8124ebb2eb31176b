from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.data.builtin import builtin_sources, fit_builtin
from orchestrator.data.registry import BUILTINS, FASHION_MNIST_DIR, FASHION_MNIST_ENV
from orchestrator.data.shards import DataError


def test_naming_the_builtins_loads_neither_torch_nor_sklearn() -> None:
    code = (
        "import sys, orchestrator.data.registry, orchestrator.config.loader; "
        "print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_each_builtin_holds_out_the_split_size_its_entry_names(name: str) -> None:
    assert len(builtin_sources(name)["test"]) == BUILTINS[name].test_size


def test_digits_fixed_stratified_split() -> None:
    splits = builtin_sources("digits")
    train, test = splits["train"], splits["test"]
    assert (len(train), len(test)) == (1203, 594)
    assert train.images.shape == (1203, 1, 16, 16) and train.images.dtype == torch.uint8
    assert train.images.max() == 255  # 0..16 grey levels stretched to 0..255
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 58 and counts.max() <= 61  # stratified: ~33% of each 174..183 class
    again = builtin_sources("digits")["test"]
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


def test_mnist_split_is_4000_1000_with_100_per_class_held_out() -> None:
    splits = builtin_sources("mnist")
    assert (len(splits["train"]), len(splits["test"])) == (4000, 1000)
    assert torch.bincount(splits["test"].labels).tolist() == [100] * 10
    assert splits["train"].images.shape[1:] == (1, 32, 32)
    sample = next(iter(splits["train"]))
    assert sample.image.shape == (1, 32, 32) and sample.meta == {"index": 0}


def test_mnist_family_pads_28_to_32_and_resizes_otherwise() -> None:
    spec = BUILTINS["mnist"]
    images = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    padded = fit_builtin(images, spec, 32)
    assert (
        padded.shape == (2, 1, 32, 32)
        and padded[:, :, :2].max() == 0
        and padded[:, :, 2:30, 2:30].min() == 255
    )
    assert fit_builtin(images, spec, 28).shape == (2, 1, 28, 28)
    resized = fit_builtin(images, spec, 64)
    assert resized.shape == (2, 1, 64, 64) and resized.min() == 255  # resized, not padded
    digits = fit_builtin(torch.zeros(3, 1, 8, 8, dtype=torch.uint8), BUILTINS["digits"], 32)
    assert digits.shape == (3, 1, 32, 32)


def test_unknown_builtin_is_one_clear_error() -> None:
    with pytest.raises(
        DataError, match=r"builtin:cifar10: unknown built-in dataset .*digits, mnist, fashion-mnist"
    ):
        builtin_sources("cifar10")


def test_missing_fashion_mnist_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(DataError, match=f"apt-get install dataset-fashion-mnist` or set {FASHION_MNIST_ENV}"):
        builtin_sources("fashion-mnist")


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_sizes_from_the_debian_files() -> None:
    splits = builtin_sources("fashion-mnist")
    assert (len(splits["train"]), len(splits["test"])) == (60000, 10000)
    assert torch.bincount(splits["test"].labels).tolist() == [1000] * 10
    assert splits["test"].images.shape[1:] == (1, 32, 32)
