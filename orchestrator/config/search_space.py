"""Dotted paths into ExperimentConfig, the `search:` block as a Tune param_space, and trial expansion.

A trial's params are a flat dict of dotted paths ("noise.alpha_max_deg" -> 80.0). `apply_trial_params`
writes exactly those fields into a copy of the base config and re-validates the whole tree, so a trial
can never carry a value its dataclass would reject.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from collections.abc import Mapping
from typing import Any

from orchestrator.config.schema import ExperimentConfig
from orchestrator.config.sweep_spec import DIST_KINDS, SearchDist
from sphere_core.config import ConfigError, from_dict, short_repr


def check_path(path: str, where: str) -> None:
    """Fails unless `path` names a leaf field of ExperimentConfig ("noise.alpha_max_deg")."""
    node: Any = ExperimentConfig
    walked: list[str] = []
    for part in path.split("."):
        if not (dataclasses.is_dataclass(node) and isinstance(node, type)):
            raise ConfigError(f"{where}.{path}: {'.'.join(walked)} is a value, not a section")
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            prefix = ".".join(walked) + "." if walked else ""
            raise ConfigError(f"{where}.{path}: unknown field {prefix}{part} (allowed: {', '.join(names)})")
        node = typing.get_type_hints(node)[part]
        walked.append(part)
    if dataclasses.is_dataclass(node):
        fields = ", ".join(f"{path}.{f.name}" for f in dataclasses.fields(node))
        raise ConfigError(f"{where}.{path}: is a section, name one of its fields ({fields})")


def field_of(path: str) -> dataclasses.Field[Any]:
    """The dataclass field a valid dotted path names (its metadata says what a value is)."""
    node: Any = ExperimentConfig
    *parents, leaf = path.split(".")
    for part in parents:
        node = typing.get_type_hints(node)[part]
    return next(f for f in dataclasses.fields(node) if f.name == leaf)


def apply_trial_params(base: ExperimentConfig, params: Mapping[str, Any]) -> ExperimentConfig:
    """A copy of `base` with each dotted path set; every other field is untouched."""
    tree = base.to_dict()
    for path, value in params.items():
        check_path(path, "params")
        *parents, leaf = path.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[leaf] = value
    return from_dict(ExperimentConfig, tree)


def validate_search(base: ExperimentConfig, search: Mapping[str, SearchDist], search_alg: str) -> None:
    """Every dimension names a real field and every value it can take builds a valid config."""
    for path, dist in search.items():
        where = f"search.{path}"
        check_path(path, "search")
        given = [k for k in DIST_KINDS if getattr(dist, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"{where}: give exactly one of {', '.join(DIST_KINDS)} (got {given or 'none'})")
        if dist.kind in ("grid", "choice") and not dist.spec:
            raise ConfigError(f"{where}.{dist.kind}: empty list (give at least one value)")
        if dist.kind == "grid" and search_alg == "optuna":
            raise ConfigError(
                f"{where}.grid: optuna samples, it does not grid (allowed with optuna: choice, "
                "uniform, loguniform, randint)"
            )
        if dist.kind in ("uniform", "loguniform", "randint"):
            low, high = dist.spec
            if not low < high or (dist.kind == "loguniform" and low <= 0):
                need = "0 < low < high" if dist.kind == "loguniform" else "low < high"
                raise ConfigError(f"{where}.{dist.kind}: [{low}, {high}] needs {need}")
        for value in extreme_values(dist):
            try:
                apply_trial_params(base, {path: value})
            except ConfigError as exc:
                raise ConfigError(
                    f"{where}.{dist.kind}: value {short_repr(value)} is invalid: {exc}"
                ) from None


def extreme_values(dist: SearchDist) -> list[Any]:
    """The values to validate: all of a list, both ends of a range (randint's high is exclusive)."""
    if dist.kind in ("grid", "choice"):
        return list(dist.spec)
    low, high = dist.spec
    return [low, high - 1] if dist.kind == "randint" else [low, high]


MAX_TRIALS = 10_000  # per sweep unless raised (--max-trials): a grid typo can otherwise ask for millions


def trial_count(search: Mapping[str, SearchDist], num_samples: int, search_alg: str) -> int:
    """len(expand_trials(...)), without building them."""
    if search_alg != "basic":
        return num_samples
    return num_samples * math.prod(len(d.spec) for d in search.values() if not d.is_random)


def check_trial_count(count: int, max_trials: int) -> None:
    if count > max_trials:
        raise ConfigError(
            f"search: {count:,} trials exceed the cap of {max_trials:,} (allowed: <= {max_trials:,}; a "
            "bigger sweep needs --max-trials N)"
        )


def expand_trials(
    search: Mapping[str, SearchDist], num_samples: int, search_alg: str
) -> list[dict[str, Any]]:
    """The trials Tune will create, in order; random dimensions are shown as their distribution.

    basic: the grid's cross product, repeated num_samples times (Tune's BasicVariantGenerator).
    optuna: num_samples trials, all sampled.
    """
    grids = {p: d.spec for p, d in search.items() if not d.is_random}
    randoms = {p: d.describe() for p, d in search.items() if d.is_random}
    if search_alg != "basic":
        return [dict(randoms) for _ in range(num_samples)]
    points = [dict(zip(grids, combo, strict=True)) for combo in itertools.product(*grids.values())]
    return [{**point, **randoms} for _ in range(num_samples) for point in points]
