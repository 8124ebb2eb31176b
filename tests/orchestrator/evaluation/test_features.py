from __future__ import annotations

import shutil
from pathlib import Path

import fsspec
import pytest
import torch

from orchestrator.evaluation.classifier import WEIGHTS_DIR, to_metric_geometry
from orchestrator.evaluation.features import check_inception_layout, load_classifier, load_inception
from orchestrator.evaluation.inception import FIDInceptionV3


@pytest.fixture(scope="module")
def random_inception_state() -> dict[str, torch.Tensor]:
    """Random weights in the FID file's layout: exercises loading and shapes, not the real values."""
    torch.manual_seed(0)
    return FIDInceptionV3().state_dict()


def test_inception_layout_matches_the_fid_weights_file(
    random_inception_state: dict[str, torch.Tensor],
) -> None:
    # pt_inception-2015-12-05-6726825d.pth: 94 conv+BN units (6 tensors each) + fc 2048 -> 1008
    assert len(random_inception_state) == 566
    params = sum(
        v.numel() for k, v in random_inception_state.items() if "running" not in k and "num_batches" not in k
    )
    assert 23_800_000 < params < 24_000_000
    assert random_inception_state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert random_inception_state["fc.weight"].shape == (1008, 2048)


def test_load_inception_from_path_and_fsspec_url(random_inception_state, tmp_path: Path) -> None:
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_inception_state, path)
    with fsspec.open("memory://weights/inception.pth", "wb") as f:
        f.write(path.read_bytes())
    from_path, from_url = load_inception(str(path)), load_inception("memory://weights/inception.pth")
    assert from_path.weights_sha256 == from_url.weights_sha256
    grey = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))  # resized to 299 inside
    features, logits = from_path.features_and_logits(grey)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.equal(from_url(grey), features)  # same file, same network
    assert torch.equal(from_path(grey.expand(-1, 3, -1, -1)), features)  # grey is replicated to RGB


def test_inception_without_bn_counters_loads_but_a_wrong_layout_is_refused(random_inception_state) -> None:
    without_counters = {
        k: v for k, v in random_inception_state.items() if not k.endswith("num_batches_tracked")
    }
    check_inception_layout(without_counters)  # older exports omit them
    missing = dict(random_inception_state)
    del missing["Mixed_6b.branch7x7_2.conv.weight"]
    with pytest.raises(ValueError, match=r"Mixed_6b\.branch7x7_2\.conv\.weight"):
        check_inception_layout(missing)
    reshaped = {**random_inception_state, "fc.weight": torch.zeros(1000, 2048)}
    with pytest.raises(ValueError, match=r"fc\.weight"):
        check_inception_layout(reshaped)


def test_classifier_refuses_weights_that_do_not_match_their_card(tmp_path: Path) -> None:
    for suffix in (".pt", ".json"):
        shutil.copy(WEIGHTS_DIR / f"clf-digits{suffix}", tmp_path / f"clf-digits{suffix}")
    assert (
        load_classifier("digits", weights_dir=tmp_path).weights_sha256
        == load_classifier("digits").weights_sha256
    )
    state = torch.load(tmp_path / "clf-digits.pt", weights_only=True)
    state["head.bias"] += 1e-3
    torch.save(state, tmp_path / "clf-digits.pt")
    with pytest.raises(ValueError, match="sha256"):
        load_classifier("digits", weights_dir=tmp_path)


def test_classifier_extractor_brings_any_square_grey_size_to_32_px() -> None:
    clf = load_classifier("digits")
    x16 = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert clf(x16).shape == (3, 128)
    assert torch.equal(clf(x16), clf(to_metric_geometry(x16)))  # 16 px digits are upsampled like training
    with pytest.raises(ValueError, match="square 1-channel"):
        clf(torch.rand(3, 3, 32, 32))
    with pytest.raises(FileNotFoundError, match="train-classifier"):
        load_classifier("cifar-10")
