from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from orchestrator.evaluation.features import load_classifier
from orchestrator.evaluation.metrics import (
    GaussianStats,
    frechet_distance,
    inception_score,
    kid,
    precision_recall,
)


def relu_features(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """Correlated ReLU'd Gaussians; the mixing matrix is fixed, so equal shifts mean one distribution."""
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(1234), dtype=torch.float64) / d**0.5
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + shift).relu()


def scipy_fd(f1: np.ndarray, f2: np.ndarray) -> float:
    """The pytorch-fid/TTUR formula, float64 throughout."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize(("n", "d"), [(2000, 64), (3000, 128), (500, 32)])
def test_float64_fd_matches_scipy_sqrtm(n: int, d: int) -> None:
    f1, f2 = relu_features(n, d, seed=0), relu_features(n, d, seed=1, shift=0.1)
    ours = frechet_distance(GaussianStats.of(f1), GaussianStats.of(f2))
    reference = scipy_fd(f1.numpy(), f2.numpy())
    assert ours == pytest.approx(reference, rel=1e-8)


def test_fd_of_a_set_with_itself_is_zero() -> None:
    f = relu_features(2000, 64, seed=0)
    assert abs(frechet_distance(GaussianStats.of(f), GaussianStats.of(f))) < 1e-9


def test_fd_agrees_with_torchmetrics_fid_given_our_classifier(
    digits_test, digits_candidates: torch.Tensor
) -> None:
    """torchmetrics' FID with our module as `feature` computes the same number (its eigvals form)."""
    clf = load_classifier("digits")
    real = digits_test.images.float() / 255
    fid = FrechetInceptionDistance(feature=clf, normalize=True)
    fid.update(real, real=True)
    fid.update(digits_candidates, real=False)
    ours = frechet_distance(GaussianStats.of(clf(real)), GaussianStats.of(clf(digits_candidates)))
    assert float(fid.compute()) == pytest.approx(ours, rel=1e-5)  # its result is cast back to float32


def test_kid_is_zero_for_one_distribution_and_positive_when_shifted() -> None:
    a, b = relu_features(1000, 64, seed=0), relu_features(1000, 64, seed=1)
    same_mean, same_std = kid(a, b, subsets=20, subset_size=400, seed=0)
    shifted = relu_features(1000, 64, seed=1, shift=0.5)
    shifted_mean, shifted_std = kid(a, shifted, subsets=20, subset_size=400, seed=0)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert shifted_mean > 10 * max(shifted_std, same_std)


def test_kid_and_is_are_deterministic_under_a_seed_and_leave_global_rng_alone() -> None:
    a, b = relu_features(600, 32, seed=0), relu_features(600, 32, seed=1, shift=0.2)
    torch.manual_seed(7)
    expected_next = torch.rand(1)
    torch.manual_seed(7)
    first = kid(a, b, subsets=10, subset_size=200, seed=3)
    assert torch.rand(1) == expected_next  # the subset draws ran on a forked RNG
    assert kid(a, b, subsets=10, subset_size=200, seed=3) == first
    assert kid(a, b, subsets=10, subset_size=200, seed=4) != first
    logits = torch.randn(600, 10, generator=torch.Generator().manual_seed(0))
    assert inception_score(logits, splits=10, seed=1) == inception_score(logits, splits=10, seed=1)


@pytest.mark.filterwarnings("ignore:std\\(\\). degrees of freedom")  # one split has no spread
def test_inception_score_bounds() -> None:
    """Uniform predictions give IS = 1; confident predictions spread over K classes give IS -> K."""
    assert inception_score(torch.zeros(100, 10), splits=1, seed=0)[0] == pytest.approx(1.0)
    confident = 50 * torch.eye(10).repeat(10, 1)  # 100 samples, every class 10 times
    assert inception_score(confident, splits=1, seed=0)[0] == pytest.approx(10.0, rel=1e-6)


def test_precision_recall_separate_fidelity_from_mode_dropping() -> None:
    g = torch.Generator().manual_seed(0)
    centres = 10 * torch.randn(5, 4, generator=g, dtype=torch.float64)  # five well separated modes
    modes = torch.arange(1000) % 5

    def draw(mode_ids: torch.Tensor) -> torch.Tensor:
        return centres[mode_ids] + torch.randn(len(mode_ids), 4, generator=g, dtype=torch.float64)

    real = draw(modes)
    p_full, r_full = precision_recall(real, draw(modes), k=3)
    p_one, r_one = precision_recall(real, draw(torch.zeros(1000, dtype=torch.long)), k=3)
    assert p_full > 0.9 and r_full > 0.9
    assert p_one > 0.9  # every sample still looks real ...
    assert r_one < 0.3  # ... but four of five modes are never covered


def _score_on_rank_zero_only(rank: int, store_path: str) -> None:
    """One rank of a 2-process gloo group, as in Ray Train: rank 0 alone scores, then both meet."""
    from datetime import timedelta

    import torch.distributed as dist

    store = dist.FileStore(store_path, 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2, timeout=timedelta(seconds=30))
    if rank == 0:
        features = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
        kid(features, features + 0.1, subsets=4, subset_size=16, seed=0)
        inception_score(features, splits=2, seed=0)
    dist.barrier()
    dist.destroy_process_group()


def test_metrics_never_sync_across_an_initialised_process_group(tmp_path: Path) -> None:
    """torchmetrics gathers across ranks on compute by default: with only rank 0 evaluating inside a
    Ray Train worker group, that gather waited forever for the other ranks."""
    context = torch.multiprocessing.get_context("spawn")
    procs = [
        context.Process(target=_score_on_rank_zero_only, args=(rank, str(tmp_path / "store")))
        for rank in (0, 1)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    alive = [p for p in procs if p.is_alive()]
    for proc in alive:
        proc.kill()
    assert not alive and [p.exitcode for p in procs] == [0, 0]
