"""MLflow runs of a sweep: the tracking server check, the parent and trial runs (found again by their tags
when a sweep is resubmitted or a trial resumes), and what they record besides metrics: the resolved config
as params, the dataset as an input, the git commit, the best trial.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping
from typing import Any

from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset, DatasetInput, InputTag, Param
from mlflow.exceptions import MlflowException

from orchestrator.config.loader import dump_yaml
from orchestrator.config.schema import ExperimentConfig
from orchestrator.config.sweep_spec import SweepSpec
from sphere_core.config import ConfigError, short_repr

PARENT_TAG = "sweep.digest"  # on the parent run: finds it again when a sweep is resubmitted
TRIAL_TAG = "sweep.trial"  # on a child run: the deterministic trial name
MLFLOW_PARAMS_PER_BATCH = 100  # the tracking server refuses bigger log_batch calls
DATASET_RACE_ATTEMPTS = 5


def resolve_tracking_uri(cfg: ExperimentConfig, timeout_s: float = 5.0) -> str:
    """tracking.tracking_uri or MLFLOW_TRACKING_URI, checked to answer /health over HTTP."""
    uri = cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError(
            "tracking.tracking_uri: unset and MLFLOW_TRACKING_URI is not exported (start the "
            "server with `make cluster-up`, then export MLFLOW_TRACKING_URI=http://127.0.0.1:5000)"
        )
    if not uri.startswith(("http://", "https://")):
        raise ConfigError(
            f"tracking.tracking_uri: {short_repr(uri)} is not a tracking server (allowed: "
            "http(s)://HOST:PORT; trials on many processes must not share a database file)"
        )
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            if response.status != 200:
                raise OSError(f"HTTP {response.status}")
    except (OSError, urllib.error.URLError) as exc:
        raise ConfigError(
            f"tracking.tracking_uri: {uri} does not answer /health ({exc}); is the MLflow "
            "server up (`make cluster-up`)?"
        ) from None
    return uri


def git_commit() -> str:
    """SPHERE_GIT_COMMIT when set (a `ray job` working dir has no .git), else `git rev-parse HEAD`."""
    if commit := os.environ.get("SPHERE_GIT_COMMIT"):
        return commit
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def config_hash(cfg: ExperimentConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


# --- runs -----------------------------------------------------------------------------------------


def experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def find_run(client: MlflowClient, exp_id: str, tags: Mapping[str, str]) -> str | None:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([exp_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def open_run(
    client: MlflowClient, exp_id: str, *, name: str, tags: Mapping[str, str], key: Mapping[str, str]
) -> tuple[str, bool]:
    """The run tagged `key` (reused, set RUNNING again) or a new one; returns (run_id, created)."""
    run_id = find_run(client, exp_id, key)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        return run_id, False
    run = client.create_run(exp_id, run_name=name, tags={**tags, **key})
    return run.info.run_id, True


def open_sweep_run(
    client: MlflowClient, spec: SweepSpec, tags: Mapping[str, str] | None = None, exp_id: str | None = None
) -> tuple[str, str]:
    """(experiment id, parent run id): the sweep's parent run, found again by its digest on a resubmission.
    exp_id: where it goes (an evaluate sweep joins its model's experiment); default tracking.experiment."""
    cfg = spec.experiment
    exp_id = exp_id or experiment_id(client, cfg.tracking.experiment)
    lineage = {"sweep.name": spec.name, "git.commit": git_commit(), "config.hash": config_hash(cfg)}
    parent_id, created = open_run(
        client,
        exp_id,
        name=spec.experiment_name,
        tags={**lineage, **(tags or {})},
        key={PARENT_TAG: spec.digest},
    )
    if created:  # the swept fields' base values never ran: the parent shows their search space instead
        searched = {f"search.{p}": d.describe() for p, d in spec.search.items()}
        sets = {f"set.{p}": v for p, v in spec.sets.items()}
        log_config(client, parent_id, cfg, extra=searched | sets, omit=spec.search)
    print(f"sweep {spec.experiment_name}: MLflow parent run {parent_id} in experiment {exp_id}")
    return exp_id, parent_id


def trial_name(experiment_name: str, trial_id: str, params: Mapping[str, Any]) -> str:
    """`<sweep>-<digest>-t<index>-<params digest>`: stable across restores of the same sweep."""
    index = int(trial_id.rsplit("_", 1)[-1])
    digest = hashlib.sha256(json.dumps(dict(params), sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{experiment_name}-t{index:03d}-{digest}"


def open_trial_run(
    client: MlflowClient,
    exp_id: str,
    *,
    parent_run_id: str,
    name: str,
    cfg: ExperimentConfig,
    dataset: Mapping[str, Any],
) -> str:
    """A trial's child run (reused on resume): its resolved config (`params` applied) as params and
    config.yaml, dataset input, lineage tags. A retried trial completes what its failed attempt left out
    (config and input are logged whenever the run lacks them)."""
    tags = {"mlflow.parentRunId": parent_run_id, "git.commit": git_commit(), "config.hash": config_hash(cfg)}
    run_id, created = open_run(client, exp_id, name=name, tags=tags, key={TRIAL_TAG: name})
    if created or not client.get_run(run_id).data.params:
        log_config(client, run_id, cfg)
    log_dataset(client, run_id, **dataset)
    return run_id


def flat_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as {dotted.field: value as text}, the names `--set` and sweep files use."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= flat_params(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def log_best_trial(
    client: MlflowClient, exp_id: str, parent_run_id: str, trial: str, metric: str, value: float
) -> None:
    """The sweep's answer on its parent run: the best trial's metric (`best.<metric>`, comparable across
    sweeps in the runs table) and, in the run's description, a link to that trial's run."""
    run_id = find_run(client, exp_id, {TRIAL_TAG: trial})
    client.log_metric(parent_run_id, f"best.{metric}", value)
    link = f"[{trial}](#/experiments/{exp_id}/runs/{run_id})" if run_id else trial  # relative: any UI host
    client.set_tag(parent_run_id, "best.trial", trial)
    client.set_tag(parent_run_id, "mlflow.note.content", f"Best trial by {metric}: {link} ({value:.6g})")


def log_config(
    client: MlflowClient,
    run_id: str,
    cfg: ExperimentConfig,
    extra: Mapping[str, Any] | None = None,
    omit: Collection[str] = (),
) -> None:
    """Every field of the resolved config as a param (once per run), so any two runs, of any sweeps,
    compare field by field in the MLflow UI; `extra` params beside them; the config as config.yaml."""
    fields = {k: v for k, v in flat_params(cfg.to_dict()).items() if k not in omit}
    params = sorted(({k: str(v) for k, v in (extra or {}).items()} | fields).items())
    for start in range(0, len(params), MLFLOW_PARAMS_PER_BATCH):
        batch = params[start : start + MLFLOW_PARAMS_PER_BATCH]
        client.log_batch(run_id, params=[Param(k, v) for k, v in batch])
    client.log_text(run_id, dump_yaml(cfg.to_dict()), "config.yaml")


def log_dataset(
    client: MlflowClient, run_id: str, *, url: str, name: str, digest: str, profile: Mapping[str, Any]
) -> None:
    """The training shards as the run's input, identified by the manifest digest (MLflow keeps 36 chars of
    a dataset digest: the full one goes in the profile). Idempotent: a run that has the input already is
    left alone. Runs that log one new dataset at the same moment race on the server's UNIQUE(experiment,
    name, digest) row and all but one get IntegrityError (measured: 6 of 40 runs left without their input
    in 10 rounds of 4 at once); the row exists by then, so the loser's retry links it."""
    short_digest = digest[:32]
    if has_dataset(client, run_id, short_digest):
        return
    source = resolve_dataset_source(url)
    fields = MetaDataset(source, name=name, digest=short_digest).to_dict()  # type: ignore[abstract]
    dataset = Dataset(**fields, profile=json.dumps({**profile, "digest": digest}))
    for attempt in range(DATASET_RACE_ATTEMPTS):
        try:
            client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])
            return
        except MlflowException as exc:
            if "UNIQUE constraint" not in exc.message or attempt == DATASET_RACE_ATTEMPTS - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


def has_dataset(client: MlflowClient, run_id: str, digest: str) -> bool:
    inputs = client.get_run(run_id).inputs
    return any(d.dataset.digest == digest for d in (inputs.dataset_inputs if inputs else []))
