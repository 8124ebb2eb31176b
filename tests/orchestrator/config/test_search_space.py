"""The search block maps onto Tune's distributions; trial params touch only the fields they name."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from orchestrator.config.schema import ExperimentConfig
from orchestrator.config.search_space import (
    apply_trial_params,
    check_path,
    expand_trials,
    trial_count,
)
from orchestrator.config.sweep_spec import SearchDist
from sphere_core.config import ConfigError, to_dict


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out.update(leaves(value, f"{path}.") if isinstance(value, dict) else {path: value})
    return out


def test_apply_trial_params_touches_only_the_named_fields() -> None:
    base = ExperimentConfig()
    params = {"noise.alpha_max_deg": 70.0, "loss.latent_con": 0.3, "run.steps": 5}
    trial = apply_trial_params(base, params)
    before, after = leaves(base.to_dict()), leaves(trial.to_dict())
    changed = {path for path in before if before[path] != after[path]}
    assert changed == set(params)
    assert all(after[path] == value for path, value in params.items())
    assert base.noise.alpha_max_deg == 85.0  # the base is frozen and untouched
    assert isinstance(trial.noise, type(base.noise)) and dataclasses.is_dataclass(trial)


def test_apply_trial_params_revalidates_and_coerces() -> None:
    assert apply_trial_params(ExperimentConfig(), {"noise.alpha_max_deg": 80}).noise.alpha_max_deg == 80.0
    with pytest.raises(ConfigError, match=r"noise.alpha_max_deg: 90.0 must be in \(0, 90\)"):
        apply_trial_params(ExperimentConfig(), {"noise.alpha_max_deg": 90.0})
    with pytest.raises(ConfigError, match=r"unknown field loss\.latent"):
        apply_trial_params(ExperimentConfig(), {"loss.latent": 1.0})


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("nosie.alpha_max_deg", "unknown field nosie (allowed: name, model"),
        ("noise", "is a section"),
        ("noise.alpha_max_deg.x", "noise.alpha_max_deg is a value, not a section"),
    ],
)
def test_check_path_names_what_is_wrong(path: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_path(path, "search")


def test_expand_trials_crosses_grids_and_repeats_num_samples() -> None:
    search = {
        "noise.alpha_max_deg": SearchDist(grid=[75.0, 85.0]),
        "loss.recon_dist": SearchDist(grid=[1.0, 2.0]),
        "optim.lr": SearchDist(loguniform=(1e-4, 1e-2)),
    }
    trials = expand_trials(search, num_samples=3, search_alg="basic")
    assert len(trials) == 2 * 2 * 3
    grid_points = {(t["noise.alpha_max_deg"], t["loss.recon_dist"]) for t in trials}
    assert grid_points == {(75.0, 1.0), (75.0, 2.0), (85.0, 1.0), (85.0, 2.0)}
    assert all(t["optim.lr"] == "loguniform(0.0001, 0.01)" for t in trials)
    sampled = expand_trials(
        {"optim.lr": SearchDist(loguniform=(1e-4, 1e-2))}, num_samples=5, search_alg="optuna"
    )
    assert len(sampled) == 5


@pytest.mark.parametrize(
    ("search", "num_samples", "search_alg"),
    [
        ({"a": SearchDist(grid=[1, 2, 3]), "b": SearchDist(grid=[1, 2]), "c": SearchDist(uniform=(0, 1))},
         4, "basic"),
        ({"a": SearchDist(choice=[1, 2, 3])}, 7, "basic"),
        ({"a": SearchDist(loguniform=(1e-4, 1e-2))}, 5, "optuna"),
    ],
)  # fmt: skip
def test_trial_count_is_the_length_of_the_expansion(
    search: dict[str, SearchDist], num_samples: int, search_alg: str
) -> None:
    assert trial_count(search, num_samples, search_alg) == len(expand_trials(search, num_samples, search_alg))


def test_search_dist_round_trips_through_to_dict() -> None:
    dist = SearchDist(uniform=(0.1, 1.0))
    assert to_dict(dist)["uniform"] == [0.1, 1.0] and dist.kind == "uniform" and dist.is_random
