"""Strict YAML -> ExperimentConfig / SweepSpec, and the resolved config back to YAML.

Every failure is a ConfigError whose one-line message starts with the file and names the dotted field
and what is allowed; entry points print it and exit 2.

Files and `--set` values are parsed with limits (size, nesting, no aliases) before any value is built, the
trial count is capped before any trial is expanded, and an error line shows a value clipped to 80
characters: a hostile file costs milliseconds, never memory (docs/sweeps.md).

A base file may leave a string field to the user by writing `???` (OmegaConf's spelling for a value that
must be supplied): where the data and the weight files live are not the project's to know. A sweep resolves
only once the file's overrides or `--set` have filled every one that its kind uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from orchestrator.cli_errors import utf8
from orchestrator.config import metric_names
from orchestrator.config.schema import ExperimentConfig
from orchestrator.config.search_space import (
    MAX_TRIALS,
    apply_trial_params,
    check_path,
    check_trial_count,
    extreme_values,
    field_of,
    trial_count,
    validate_search,
)
from orchestrator.config.sweep_spec import EvaluateConfig, SweepFile, SweepSpec
from sphere_core.config import ConfigError, LossWeights, clip, from_dict, short_repr, to_dict

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # becomes a directory and an MLflow experiment name
_MERGE_TAG = "tag:yaml.org,2002:merge"  # the `<<` key
UNSET = "???"  # a value a base file leaves to the user (data and weight locations)


MAX_YAML_BYTES = 64 * 1024  # per file or --set value: parsed in well under a second; shipped files are < 5 KB
MAX_DEPTH = 32  # nesting of mappings and lists; the shipped files nest 4 deep at most


class Refused(yaml.composer.ComposerError):
    """YAML the loader will not build: an alias, or nesting deeper than MAX_DEPTH (found while composing,
    before any value is constructed, so a billion-laughs file costs nothing)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases, deep nesting and a key given twice in one mapping (PyYAML would keep
    the last silently).

    Aliases are refused outright: no shipped sweep uses one, and a few nested aliases expand to billions of
    nodes (as shared references, so loading is cheap but every later walk over the tree, an error message's
    repr included, is not)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise Refused(
                problem=f"alias *{clip(str(event.anchor))} is not allowed (write the value out)",
                problem_mark=event.start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise Refused(
                    problem=f"nested deeper than {MAX_DEPTH} levels (allowed: <= {MAX_DEPTH})",
                    problem_mark=self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_unique(node, "")
        return super().construct_document(node)

    def _check_unique(self, node: yaml.Node, where: str) -> None:
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_unique(item, f"{where}[{i}]")
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}  # key -> its line
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue  # merged keys may be overridden; complex keys fail in construction anyway
                key = self.construct_object(key_node)  # so `1` and `'1'` differ, `yes` and `true` do not
                if key in first:
                    inside = f" in {clip(where)}" if where else ""
                    raise yaml.constructor.ConstructorError(
                        problem=f"duplicate key {short_repr(key)}{inside} (first at line {first[key]})",
                        problem_mark=key_node.start_mark,
                    )
                first[key] = key_node.start_mark.line + 1
                self._check_unique(value_node, f"{where}.{key}" if where else str(key))


def parse_yaml(text: str) -> Any:
    """One YAML document through the strict loader. Raises yaml.YAMLError (Refused for the limits), or
    ValueError for a value Python will not build (an integer of over 4,300 digits, a 13th month)."""
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _problem(exc: Exception) -> str:
    """A YAML or value error as `line N: what` (the line where PyYAML marks it)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    if isinstance(exc, yaml.YAMLError):
        return where + (getattr(exc, "problem", None) or "invalid YAML")
    return f"invalid value ({clip(str(exc))})"


def read_yaml(path: Path) -> Any:
    """A sweep or base file, refused in one line when too big, not UTF-8, not YAML or over the limits."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)  # never more: a huge file or /dev/zero is refused as read
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES:,} bytes (allowed: <= {MAX_YAML_BYTES:,})")
    text = utf8(data, str(path))
    try:
        return parse_yaml(text)
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"{path}: {_problem(exc)}") from None


def load_experiment(path: str | Path) -> ExperimentConfig:
    """A YAML file holding one ExperimentConfig tree (missing fields take their defaults)."""
    path = Path(path)
    data = read_yaml(path)
    try:
        return from_dict(ExperimentConfig, {} if data is None else data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_set(assignment: str) -> tuple[str, Any]:
    """`--set data.url=s3://mine/train` -> ("data.url", "s3://mine/train"); the value reads as YAML (so
    `true`, `4`, `[1, 2]`), and a number written as 3e-3 (a string to YAML 1.1) as a number."""
    path, sep, text = assignment.partition("=")
    path = path.strip()
    if not sep or not path:
        raise ConfigError(
            f"--set {clip(assignment)}: expected DOTTED.PATH=VALUE (e.g. --set scaling.use_gpu=true)"
        )
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"--set {clip(path)}: value longer than {MAX_YAML_BYTES:,} characters")
    try:
        value = parse_yaml(text)
    except Refused as exc:
        raise ConfigError(f"--set {clip(path)}: {exc.problem}") from None
    except (yaml.YAMLError, ValueError):
        value = text  # not YAML: the text itself, validated as a string
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    return path, value


def load_sweep(
    path: str | Path, sets: Mapping[str, Any] | None = None, *, max_trials: int = MAX_TRIALS
) -> SweepSpec:
    """Reads, resolves and validates a sweep file, then the submit-time `sets` (dotted path -> value, applied
    after the file's overrides and validated like them); nothing is started. A sweep of more than
    `max_trials` trials is refused."""
    path = Path(path)
    try:
        data = read_yaml(path)
        raw = from_dict(SweepFile, {} if data is None else data)
        return _resolve(raw, path, dict(sets or {}), max_trials)
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(str(path)) else f"{path}: {message}") from None


def _resolve(raw: SweepFile, path: Path, sets: dict[str, Any], max_trials: int) -> SweepSpec:
    name = raw.name or path.stem
    if not _NAME.match(name):
        raise ConfigError(
            f"name: {short_repr(name)} is not allowed (lowercase letters, digits, '-' and '_', <= 63 chars)"
        )
    base = _base_experiment(raw, path)
    # `--set evaluate.*` fills the frozen-model section of a kind: evaluate file; the rest is the experiment.
    evaluate_sets = {p: v for p, v in sets.items() if p.startswith("evaluate.")}
    sets = {p: v for p, v in sets.items() if p not in evaluate_sets}
    raw = dataclasses.replace(raw, evaluate=_set_evaluate(raw.evaluate, evaluate_sets))
    for dotted in raw.overrides:
        check_path(dotted, "overrides")
    try:
        experiment = apply_trial_params(base, raw.overrides)
    except ConfigError as exc:
        raise ConfigError(f"overrides.{exc}") from None
    try:
        for dotted in sets:
            check_path(dotted, "--set")
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("--set.", "--set ", 1)) from None
    try:
        experiment = apply_trial_params(experiment, sets)
    except ConfigError as exc:
        raise ConfigError(f"--set {exc}") from None
    _check_kind(raw)
    _check_set(raw, experiment)
    # Counted before validate_search, which builds a config per grid value: a huge grid is refused at once.
    train = raw.kind == "train"
    check_trial_count(
        trial_count(
            raw.search, raw.tune.num_samples if train else 1, raw.tune.search_alg if train else "basic"
        ),
        max_trials,
    )
    validate_search(experiment, raw.search, raw.tune.search_alg)
    if raw.kind == "train":
        _check_trainable(raw, experiment)
    content = {
        "name": name,
        "kind": raw.kind,
        "experiment": experiment.to_dict(),
        "search": to_dict(raw.search),
        "tune": to_dict(raw.tune),
        "evaluate": to_dict(raw.evaluate) if raw.evaluate else None,
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:10]
    return SweepSpec(
        name=name,
        kind=raw.kind,
        experiment=experiment,
        search=dict(raw.search),
        tune=raw.tune,
        evaluate=raw.evaluate,
        digest=digest,
        sets={**sets, **evaluate_sets},
    )


def _set_evaluate(evaluate: EvaluateConfig | None, sets: dict[str, Any]) -> EvaluateConfig | None:
    """The file's `evaluate:` section with `--set evaluate.FIELD=VALUE` applied and re-validated."""
    if not sets:
        return evaluate
    first = next(iter(sets))
    if evaluate is None:
        raise ConfigError(
            f"--set {first}: only with kind: evaluate (a training sweep's evaluation settings are eval.*)"
        )
    tree = to_dict(evaluate)
    for dotted, value in sets.items():
        name = dotted.removeprefix("evaluate.")
        if name not in tree:
            allowed = ", ".join(f"evaluate.{key}" for key in tree)
            raise ConfigError(f"--set {dotted}: unknown field (allowed: {allowed})")
        tree[name] = value
    try:
        return from_dict(EvaluateConfig, tree, "evaluate")
    except ConfigError as exc:
        raise ConfigError(f"--set {exc}") from None


def unset_fields(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of `tree` (a config as plain values) still holding UNSET."""
    found = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found += unset_fields(value, f"{dotted}.")
        elif value == UNSET:
            found.append(dotted)
    return found


def _check_set(raw: SweepFile, experiment: ExperimentConfig) -> None:
    """Every UNSET value the sweep's kind reads is filled: a training sweep reads the whole experiment; an
    evaluate sweep reads its model, data and weights from `evaluate:` (its base: sampling and tracking)."""
    if raw.kind == "train":
        missing, owner, section = unset_fields(experiment.to_dict()), "the base", "overrides:"
    else:
        assert raw.evaluate is not None  # _check_kind
        missing, owner, section = unset_fields(to_dict(raw.evaluate), "evaluate."), "the file", "evaluate:"
    if missing:
        them = "them" if len(missing) > 1 else "it"
        wanted = " ".join(f"--set {dotted}=<{_wanted(dotted)}>" for dotted in missing)
        raise ConfigError(
            f"{', '.join(missing)}: not set ({owner} leaves {them} to you): give {them} in {section} or as "
            f"{wanted}"
        )


def _wanted(dotted: str) -> str:
    """What a field takes, from its `give` metadata (ExperimentConfig or EvaluateConfig)."""
    if dotted.startswith("evaluate."):
        name = dotted.removeprefix("evaluate.")
        found = next(f for f in dataclasses.fields(EvaluateConfig) if f.name == name)
    else:
        found = field_of(dotted)
    return str(found.metadata.get("give", "a value"))


def _base_experiment(raw: SweepFile, path: Path) -> ExperimentConfig:
    if (raw.base is None) == (raw.experiment is None):
        raise ConfigError(
            "base: give exactly one of base (a YAML path relative to the sweep file) or experiment"
        )
    if raw.base is not None:
        return load_experiment(path.parent / raw.base)
    return from_dict(ExperimentConfig, raw.experiment, "experiment")


def _check_kind(raw: SweepFile) -> None:
    """Training sweeps vary training knobs; inference-time knobs are swept on a frozen model."""
    if raw.kind == "train":
        if not raw.search:
            raise ConfigError(
                "search: empty search space (give at least one dotted path -> grid/choice/uniform/"
                "loguniform/randint)"
            )
        if raw.evaluate is not None:
            raise ConfigError("evaluate: only allowed with kind: evaluate")
        for dotted in raw.search:
            if dotted.startswith("sampling."):
                raise ConfigError(
                    f"search.{dotted}: inference-time knob, not retrained (sweep it in a kind: evaluate file)"
                )
        return
    if raw.evaluate is None:
        raise ConfigError("evaluate: required with kind: evaluate (model: models:/NAME@ALIAS)")
    if not raw.search:
        raise ConfigError(
            "search: empty search space (give sampling.steps / sampling.cfg / sampling.cfg_position)"
        )
    for dotted, dist in raw.search.items():
        if not dotted.startswith("sampling."):
            raise ConfigError(f"search.{dotted}: kind: evaluate only varies sampling.* (the model is frozen)")
        if dist.kind != "grid":
            raise ConfigError(f"search.{dotted}.{dist.kind}: kind: evaluate takes grid only")


def _searched(raw: SweepFile, experiment: ExperimentConfig, dotted: str) -> list[Any]:
    """The config's value at `dotted` and every value the search gives it (a grid's or a choice's)."""
    section, name = dotted.split(".", 1)
    dist = raw.search.get(dotted)
    return [getattr(getattr(experiment, section), name), *(extreme_values(dist) if dist is not None else ())]


def _check_trainable(raw: SweepFile, experiment: ExperimentConfig) -> None:
    for name in LossWeights.terms("perceptual"):  # they need a network in `perceptual:`
        values = _searched(raw, experiment, f"loss.{name}")
        if any(v > 0 for v in values) and not experiment.perceptual.given:
            raise ConfigError(
                f"loss.{name}: {max(values)} needs a perceptual network (set perceptual.network: "
                "random-conv, or perceptual.vgg16 + perceptual.lpips and/or perceptual.convnext_small; "
                "no weight file ships offline) (allowed without one: 0.0)"
            )
    starts = _searched(raw, experiment, "loss.adversarial_start_step")
    if max(_searched(raw, experiment, "loss.adversarial")) > 0 and max(starts) >= experiment.run.steps:
        raise ConfigError(
            f"loss.adversarial_start_step: {max(starts)} is not below run.steps {experiment.run.steps}, so "
            f"the adversarial term would never train (allowed: 0..{experiment.run.steps - 1})"
        )
    # A searched weight is nonzero in some trial: its term counts as reported.
    searched: dict[str, Any] = {
        n: 1.0 for n in LossWeights.terms("pixel", "perceptual", "latent") if f"loss.{n}" in raw.search
    }
    weights = dataclasses.replace(experiment.loss, **searched)
    terms = weights.reported_terms(perceptual=experiment.perceptual.given)
    # What every training report carries, the loss terms of nonzero weight and the evals: the Tune metric
    # must be one of them, or Tune stops at the first report.
    reported = (*metric_names.TRAIN_STEP, *metric_names.LOOP, *terms, *experiment.eval_metrics)
    if raw.tune.metric not in reported:
        raise ConfigError(
            f"tune.metric: {short_repr(raw.tune.metric)} is never reported (allowed: {', '.join(reported)})"
        )
    score = metric_names.score_of(raw.tune.metric)
    if score is not None and score.better is not None and raw.tune.mode != score.better:
        better = "lower" if score.better == "min" else "higher"
        raise ConfigError(
            f"tune.mode: {raw.tune.mode} would rank the worst trial of {raw.tune.metric} first: it is better "
            f"{better} (allowed: {score.better})"
        )
    run = experiment.run
    if raw.tune.metric in experiment.eval_metrics and run.eval_every > run.checkpoint_every:
        # Each checkpoint report carries the latest eval: one must have run by the first checkpoint.
        raise ConfigError(
            f"run.eval_every: {run.eval_every} exceeds run.checkpoint_every {run.checkpoint_every}, so the "
            f"first checkpoint would report no tune.metric {short_repr(raw.tune.metric)} (allowed: "
            f"run.eval_every <= run.checkpoint_every)"
        )
    if raw.tune.scheduler == "asha" and raw.tune.grace_period > experiment.run.steps:
        raise ConfigError(
            f"tune.grace_period: {raw.tune.grace_period} steps exceeds run.steps "
            f"{experiment.run.steps} (allowed: 1..{experiment.run.steps})"
        )


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
