from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from orchestrator.config import metric_names
from orchestrator.config.schema import EvalConfig
from orchestrator.data.builtin import ArraySource, builtin_sources
from orchestrator.data.writer import write_dataset
from orchestrator.evaluation.classifier import LabelledImages
from orchestrator.evaluation.features import load_classifier
from orchestrator.evaluation.from_config import protocol_for
from orchestrator.evaluation.inception import FIDInceptionV3
from orchestrator.evaluation.protocol import (
    MetricResult,
    Protocol,
    ProtocolMismatch,
    code_digest,
    comparable,
    evaluate_reconstructions,
    evaluate_samples,
    protocol_version,
    require_comparable,
)
from orchestrator.evaluation.reference import ReferenceStats
from sphere_core.config import ConfigError


def noisy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("labelled", [True, False])
def test_an_image_set_reports_exactly_the_declared_scores(
    digits_protocol: Protocol, digits_test: LabelledImages, labelled: bool
) -> None:
    images, labels = digits_test.images.float() / 255, digits_test.labels if labelled else None
    pixels = digits_protocol.pixels is not None
    for result, samples in (
        (evaluate_samples(images, protocol=digits_protocol, labels=labels), True),
        (evaluate_reconstructions(images, protocol=digits_protocol, labels=labels), False),
    ):
        chosen = metric_names.declared("clf", conditional=labelled, pixels=pixels, samples=samples)
        names = [s.named("clf") for s in chosen] + [
            metric_names.deviation(s.named("clf")) for s in chosen if s.deviation
        ]
        named = (lambda n: n) if samples else metric_names.of_reconstructions
        assert set(result.values) == set(map(named, names))


def test_fd_of_the_reference_with_itself_is_zero_and_grows_with_noise(
    digits_protocol: Protocol, digits_test: LabelledImages, digits_candidates: torch.Tensor
) -> None:
    itself = evaluate_samples(digits_test.images.float() / 255, protocol=digits_protocol)
    assert abs(itself.values["fd_clf"]) < 1e-3  # rank-deficient covariances: round-off ~1e-5
    assert itself.values["precision_clf"] == 1.0 and itself.values["recall_clf"] == 1.0
    fds = [
        evaluate_samples(noisy(digits_candidates, s), protocol=digits_protocol).values["fd_clf"]
        for s in (0.1, 0.2, 0.4)
    ]
    assert fds[0] < fds[1] < fds[2]
    assert fds[2] > 10 * digits_protocol.floor["fd_clf"]


def test_kid_is_near_zero_for_real_images_and_positive_for_noisy_ones(
    digits_protocol: Protocol, digits_candidates: torch.Tensor
) -> None:
    real = evaluate_samples(digits_candidates, protocol=digits_protocol).values
    bad = evaluate_samples(noisy(digits_candidates, 0.4), protocol=digits_protocol).values
    assert abs(real["kid_clf"]) < 3 * real["kid_clf_std"] + 0.01
    assert bad["kid_clf"] > 10 * bad["kid_clf_std"]


def test_recall_drops_under_mode_dropping_while_precision_stays_high(
    digits_protocol: Protocol, digits_train: LabelledImages, digits_candidates: torch.Tensor
) -> None:
    zeros = digits_train.images[digits_train.labels == 0]
    one_class = zeros[torch.arange(594) % len(zeros)].float() / 255  # 594 images, all of class 0
    full = evaluate_samples(digits_candidates, protocol=digits_protocol).values
    dropped = evaluate_samples(one_class, protocol=digits_protocol).values
    assert full["recall_clf"] > 0.8 and full["precision_clf"] > 0.8
    assert dropped["recall_clf"] < 0.2
    assert dropped["precision_clf"] > 0.8
    assert dropped["is_clf"] < 1.5 < full["is_clf"]  # one class: the classifier is sure and never varies


def test_class_accuracy_and_spread_of_images_drawn_for_given_classes(
    digits_protocol: Protocol, digits_test: LabelledImages
) -> None:
    images, labels = digits_test.images.float() / 255, digits_test.labels
    right = evaluate_samples(images, protocol=digits_protocol, labels=labels)
    # The real held-out digits score what the committed card says the classifier scores on them.
    assert right.values["acc_clf"] == right.floor["acc_clf"] > 0.95
    wrong = evaluate_samples(images, protocol=digits_protocol, labels=(labels + 1) % 10)
    assert wrong.values["acc_clf"] < 0.05  # a digit drawn "for" the next class is almost never that class
    zeros = images[labels == 0][torch.arange(594) % int((labels == 0).sum())]
    one_template = evaluate_samples(zeros, protocol=digits_protocol, labels=torch.arange(594) % 10)
    assert 0.05 < one_template.values["acc_clf"] < 0.15  # class 0 for every label: right 1 time in 10
    assert right.values["spread_clf"] == pytest.approx(1.0)  # the reference varies as much as itself
    templates = torch.stack([images[labels == c][0] for c in range(10)])[labels]  # one image per class
    assert evaluate_samples(templates, protocol=digits_protocol, labels=labels).values["spread_clf"] < 1e-6
    assert "acc_clf" not in evaluate_samples(images, protocol=digits_protocol).values  # no labels given
    with pytest.raises(ValueError, match="labels"):
        evaluate_samples(images, protocol=digits_protocol, labels=labels[:10])


def test_the_spread_floor_is_measured_on_real_train_draws_not_assumed(digits_protocol: Protocol) -> None:
    spread, std = digits_protocol.floor["spread_clf"], digits_protocol.floor_std["spread_clf"]
    assert spread != 1.0 and 0.8 < spread < 1.2  # real digits vary about as much as the held-out ones
    assert 0 < std < 0.1  # and it moves between draws, like the FD floor
    assert digits_protocol.floor_std["acc_clf"] == 0.0  # the held-out split's own accuracy: one number


def test_result_carries_floor_fingerprint_and_n(
    digits_protocol: Protocol, digits_candidates: torch.Tensor
) -> None:
    result = evaluate_samples(digits_candidates, protocol=digits_protocol)
    assert result.n == 594 and not result.proxy
    assert result.fingerprint == digits_protocol.fingerprint()
    assert set(result.floor) == set(result.floor_std) == set(result.values)
    assert 10 < result.floor["fd_clf"] < 150  # digits at n=594: the FD noise floor is large ...
    assert 0 < result.floor_std["fd_clf"] < result.floor["fd_clf"]  # ... and varies between draws
    assert result.flat()["fd_clf_floor"] == result.floor["fd_clf"]
    assert result.flat()["fd_clf_floor_std"] == result.floor_std["fd_clf"]
    assert MetricResult.from_json(result.to_json()) == result


def test_reconstructions_are_named_and_fingerprinted_apart(
    digits_protocol: Protocol, digits_test: LabelledImages
) -> None:
    recon = evaluate_reconstructions(noisy(digits_test.images.float() / 255, 0.05), protocol=digits_protocol)
    assert "recon_fd_clf" in recon.values and "recon_fd_clf" in recon.floor
    assert (
        recon.fingerprint == digits_protocol.fingerprint("reconstructions") != digits_protocol.fingerprint()
    )


def _other_reference(p: Protocol) -> Protocol:
    ref = ReferenceStats.from_features(
        p.reference.features[:-1], source_digest="fewer images", image_shape=p.reference.image_shape
    )
    return dataclasses.replace(p, reference=ref)


CHANGES: dict[str, Callable[[Protocol], Protocol]] = {
    "extractor weights": lambda p: dataclasses.replace(p, extractor=load_classifier("mnist")),
    "reference statistics": _other_reference,
    "n": lambda p: dataclasses.replace(p, n=p.n - 1),
    "seed": lambda p: dataclasses.replace(p, seed=p.seed + 1),
    "quantisation": lambda p: dataclasses.replace(p, quantize=not p.quantize),
    "kid subsets": lambda p: dataclasses.replace(p, kid_subsets=p.kid_subsets + 1),
    "kid subset size": lambda p: dataclasses.replace(p, kid_subset_size=p.kid_subset_size - 1),
    "k of precision/recall": lambda p: dataclasses.replace(p, pr_k=p.pr_k + 2),
    "is splits": lambda p: dataclasses.replace(p, is_splits=p.is_splits + 1),
    "floor draws": lambda p: dataclasses.replace(p, floor_draws=p.floor_draws + 1),
    "sampler settings": lambda p: p.with_sampler(steps=4),
    "dataset": lambda p: dataclasses.replace(p, dataset="mnist"),
}


def test_fingerprints_differ_when_any_protocol_element_changes(digits_protocol: Protocol) -> None:
    base = digits_protocol.fingerprint()
    assert base == digits_protocol.fingerprint()  # deterministic
    prints = {name: change(digits_protocol).fingerprint() for name, change in CHANGES.items()}
    assert all(fp != base for fp in prints.values()), [k for k, fp in prints.items() if fp == base]
    assert len(set(prints.values())) == len(prints)
    sampled = digits_protocol.with_sampler(steps=4, cfg=1.5)
    assert sampled.fingerprint() == digits_protocol.with_sampler(cfg=1.5, steps=4).fingerprint()
    assert sampled.fingerprint() != digits_protocol.with_sampler(steps=4, cfg=2.0).fingerprint()


def test_promotion_refuses_mismatched_fingerprints_and_proxies(
    digits_protocol: Protocol, digits_candidates: torch.Tensor
) -> None:
    a = evaluate_samples(digits_candidates, protocol=digits_protocol.with_sampler(steps=1))
    b = evaluate_samples(digits_candidates, protocol=digits_protocol.with_sampler(steps=1))
    c = evaluate_samples(digits_candidates, protocol=digits_protocol.with_sampler(steps=4))
    assert comparable(a, b) and not comparable(a, c)
    require_comparable(a, b)
    with pytest.raises(ProtocolMismatch, match="fingerprint"):
        require_comparable(a, c)
    proxy = dataclasses.replace(a, proxy=True)
    with pytest.raises(ProtocolMismatch, match="proxy"):
        require_comparable(proxy, proxy)
    require_comparable(proxy, proxy, allow_proxy=True)


def test_small_n_is_a_proxy_with_its_own_floor(eval_cache: str, digits_candidates: torch.Tensor) -> None:
    protocol = Protocol.for_dataset("digits", n=200, cache=eval_cache)
    result = evaluate_samples(digits_candidates[:200], protocol=protocol)
    assert result.proxy and all(k.startswith("proxy/") for k in result.flat())
    full = Protocol.for_dataset("digits", cache=eval_cache)
    assert protocol.floor["fd_clf"] > full.floor["fd_clf"]  # FD is biased upwards at small n


def test_evaluate_refuses_wrong_n_and_wrong_range(
    digits_protocol: Protocol, digits_candidates: torch.Tensor
) -> None:
    with pytest.raises(ValueError, match="n=594"):
        evaluate_samples(digits_candidates[:100], protocol=digits_protocol)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate_samples(digits_candidates * 2 - 1, protocol=digits_protocol)  # a raw tanh output
    with pytest.raises(ValueError, match="reference is"):  # 32 px samples against the 16 px digits split
        evaluate_samples(torch.nn.functional.pad(digits_candidates, (8, 8, 8, 8)), protocol=digits_protocol)


def test_reference_cache_is_reused_and_checked(eval_cache: str, digits_protocol: Protocol) -> None:
    files = sorted(Path(eval_cache).glob("reference-*.pt"))
    assert len(files) >= 1
    again = Protocol.for_dataset("digits", cache=eval_cache)
    assert again.reference.sha256 == digits_protocol.reference.sha256
    assert again.reference.stats.sigma.dtype == torch.float64


def test_reference_cache_on_an_fsspec_url_and_corruption_is_detected(
    digits_protocol: Protocol, digits_test: LabelledImages
) -> None:
    import fsspec

    from orchestrator.evaluation.reference import reference_stats

    url = "memory://eval-cache-test"
    first = reference_stats(digits_test.images, extractor=digits_protocol.extractor, cache=url)
    assert first.sha256 == digits_protocol.reference.sha256  # same images + extractor -> same statistics
    fs = fsspec.filesystem("memory")
    (path,) = fs.glob("/eval-cache-test/reference-*.pt")
    saved = torch.load(fs.open(path, "rb"), weights_only=True)
    saved["mu"] = saved["mu"] + 1.0
    with fs.open(path, "wb") as f:
        torch.save(saved, f)
    with pytest.raises(ValueError, match="corrupt"):
        reference_stats(digits_test.images, extractor=digits_protocol.extractor, cache=url)


# --- real images from shards (eval.reference / evaluate.reference) --------------------------------


@pytest.fixture(scope="module")
def digits_shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The digits splits written as shards: the same pixels as the package's splits, read back."""
    root = tmp_path_factory.mktemp("digits-shards")
    for split, source in builtin_sources("digits").items():
        write_dataset(source, f"file://{root}/{split}", shard_size=250, progress=False)
    return f"file://{root}"


def test_shards_give_the_reference_statistics_of_the_same_images(
    digits_shards: str, digits_protocol: Protocol, eval_cache: str
) -> None:
    source = EvalConfig(dataset="digits", reference=f"{digits_shards}/test")
    protocol = protocol_for(
        source, n=594, image_size=16, channels=1, seed=0, floor=f"{digits_shards}/train", cache=eval_cache
    )
    assert protocol.reference.sha256 == digits_protocol.reference.sha256  # PNG shards are lossless
    assert torch.equal(protocol.real.labels, digits_protocol.real.labels)
    assert protocol.dataset.startswith("shards-") and protocol.standard_n == 594
    assert protocol.fingerprint() != digits_protocol.fingerprint()  # a different floor source
    # The floor draws come from a pool of n x draws shard images instead of the whole split: same scale.
    assert 0.5 < protocol.floor["fd_clf"] / digits_protocol.floor["fd_clf"] < 2.0


def test_inception_features_score_shards_of_rgb_images(tmp_path: Path, eval_cache: str) -> None:
    """Random weights in the FID file's layout: exercises the wiring (3-channel shards, *_inception metric
    names, the weights' sha256 in the fingerprint), not real FID values."""
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        images = torch.randint(0, 256, (20, 3, 12, 12), dtype=torch.uint8, generator=generator)
        source = ArraySource(f"random/{split}", ("a", "b"), 12, 3, images, torch.arange(20) % 2)
        write_dataset(source, f"file://{tmp_path}/{split}", shard_size=10, progress=False)
    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), tmp_path / "inception.pth")
    source = EvalConfig(reference=f"file://{tmp_path}/test", inception=str(tmp_path / "inception.pth"))
    protocol = protocol_for(
        source, n=16, image_size=12, channels=3, seed=0, floor=f"file://{tmp_path}/train", cache=eval_cache
    )
    assert protocol.extractor.name == "inception-2015-12-05" and protocol.real.images.shape == (20, 3, 12, 12)
    samples = torch.rand(16, 3, 12, 12, generator=generator)
    result = evaluate_samples(samples, protocol=protocol)
    assert {"fd_inception", "kid_inception", "precision_inception", "recall_inception"} <= set(result.values)
    assert result.proxy and result.values["fd_inception"] > 0 and result.floor["fd_inception"] > 0
    assert protocol.describe()["extractor_sha256"] == protocol.extractor.weights_sha256

    with pytest.raises(ConfigError, match=r"eval: .*holds 3-channel images, the model makes 1-channel"):
        protocol_for(source, n=16, image_size=12, channels=1, seed=0, floor=f"file://{tmp_path}/train")
    with pytest.raises(
        ConfigError, match=r"eval\.floor: .* has 20 readable images, n = 32 needs at least 32"
    ):
        protocol_for(source, n=32, image_size=12, channels=3, seed=0, floor=f"file://{tmp_path}/train")
    missing = dataclasses.replace(source, inception=str(tmp_path / "nowhere.pth"))
    with pytest.raises(ConfigError, match=r"eval.inception: .*nowhere.pth"):
        protocol_for(missing, n=16, image_size=12, channels=3, seed=0, floor=f"file://{tmp_path}/train")
    classifier = EvalConfig(dataset="digits", reference=f"file://{tmp_path}/test")
    with pytest.raises(ConfigError, match=r"eval\.inception: the digits classifier scores 1-channel images"):
        protocol_for(classifier, n=16, image_size=12, channels=3, seed=0, floor=f"file://{tmp_path}/train")


def test_the_protocol_version_follows_the_code_not_its_comments() -> None:
    code = 'def fd(a):\n    """Frechet distance."""\n    return a * 2  # squared\n'
    reworded = 'def fd(a):\n    """The Frechet distance, reworded."""\n    return a * 2  # another comment\n'
    changed = 'def fd(a):\n    """Frechet distance."""\n    return a * 3\n'
    assert code_digest([code]) == code_digest([reworded])
    assert code_digest([code]) != code_digest([changed])
    assert len(protocol_version()) == 12 and protocol_version() == protocol_version()  # cached, stable
