"""The best trial's checkpoint registered, and the alias moved to it only when that is a fair comparison.

The registered version's source is a plain sphere_core checkpoint directory logged as artifacts of the
parent run (state_dicts + config.json + step.json: no pickled classes, no pyfunc), so
`models:/NAME@ALIAS` downloads to something `sphere_core.checkpoint` loads. Aliases, never stages.

Promotion: every version is registered, but the alias moves to it only when nobody holds the alias, or
when the holder's score was measured under the same metric and protocol fingerprint and the candidate
beats it. FD-like numbers under different protocols (extractor, reference, n, seeds, sampler) are not
comparable, so a mismatch keeps the alias where it is and says why instead of comparing blindly.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.exceptions import MlflowException
from ray.train import Checkpoint

from orchestrator.config import metric_names
from orchestrator.config.schema import TrackingConfig
from orchestrator.config.sweep_spec import SweepSpec
from orchestrator.tracking.mlflow_model import save_pyfunc
from orchestrator.tracking.reports import best_row
from orchestrator.tracking.runs import TRIAL_TAG, find_run
from sphere_core.checkpoint import CorruptCheckpoint, verify_checkpoint

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import FileInfo
    from mlflow.entities.model_registry import ModelVersion

CHECKPOINT_ARTIFACT = "best_checkpoint"
FINGERPRINT_TAG = "fingerprint.{}"  # on a run: the protocol fingerprint of its metric named {}


@dataclass(frozen=True)
class Score:
    """What a version is ranked by: a metric value and the protocol fingerprint it was measured under."""

    metric: str
    value: float
    mode: str  # min | max
    fingerprint: str | None  # None: not a protocol metric (e.g. the training loss), never compared

    def tags(self) -> dict[str, str]:
        return {"metric.name": self.metric, "metric.value": f"{self.value:.6g}", "metric.mode": self.mode} | (
            {"metric.fingerprint": self.fingerprint} if self.fingerprint else {}
        )

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Score | None:
        if "metric.name" not in tags or "metric.value" not in tags:
            return None
        fingerprint = tags.get("metric.fingerprint")
        return cls(
            tags["metric.name"], float(tags["metric.value"]), tags.get("metric.mode", "min"), fingerprint
        )


def promotion(candidate: Score | None, incumbent: Score | None, has_incumbent: bool) -> tuple[bool, str]:
    """(move the alias?, why). Compares scores only under one metric and one protocol fingerprint."""
    if not has_incumbent:
        return True, "no version holds the alias yet"
    if candidate is None or incumbent is None or not candidate.fingerprint or not incumbent.fingerprint:
        who = "candidate" if candidate is None or not candidate.fingerprint else "alias holder"
        return False, f"the {who} has no protocol fingerprint: its metric is not compared blindly"
    if (candidate.metric, candidate.fingerprint) != (incumbent.metric, incumbent.fingerprint):
        return False, (
            f"protocols differ ({candidate.metric} fingerprint {candidate.fingerprint[:12]} vs "
            f"{incumbent.metric} {incumbent.fingerprint[:12]}): re-evaluate both under one protocol"
        )
    better = (
        candidate.value < incumbent.value if candidate.mode == "min" else candidate.value > incumbent.value
    )
    verdict = "beats" if better else "does not beat"
    return (
        better,
        f"{candidate.metric} {candidate.value:.6g} {verdict} the alias holder's {incumbent.value:.6g}",
    )


def register_checkpoint(
    client: MlflowClient,
    tracking: TrackingConfig,
    *,
    parent_run_id: str,
    checkpoint_dir: Path,
    key: Mapping[str, str],
    tags: Mapping[str, str],
    score: Score | None = None,
) -> ModelVersion:
    """Checks the checkpoint's files against their checksums, logs the directory on the parent run as an
    MLflow pyfunc model (orchestrator/tracking/mlflow_model.py), checks the upload's sizes, registers it as
    a new version and moves the alias to it when `promotion` allows (printing why not otherwise). A damaged
    checkpoint or upload raises CorruptCheckpoint before any version exists.

    A sweep resumed after it had registered finds its version by the `key` tags and does not register twice.
    """
    name = tracking.registered_model
    existing: list[ModelVersion] = []
    if client.search_registered_models(filter_string=f"name = '{name}'"):
        query = " and ".join([f"name = '{name}'", *(f"tags.`{k}` = '{v}'" for k, v in key.items())])
        existing = client.search_model_versions(query)
    else:
        client.create_registered_model(name)
    if existing:
        version = existing[0]
    else:
        verify_checkpoint(checkpoint_dir)
        with tempfile.TemporaryDirectory(prefix="sphere-pyfunc-") as tmp:
            save_pyfunc(checkpoint_dir, Path(tmp) / "model")
            client.log_artifacts(parent_run_id, str(Path(tmp) / "model"), CHECKPOINT_ARTIFACT)
            verify_upload(client, parent_run_id, Path(tmp) / "model", CHECKPOINT_ARTIFACT)
        version = client.create_model_version(
            name,
            f"runs:/{parent_run_id}/{CHECKPOINT_ARTIFACT}",
            run_id=parent_run_id,
            tags={**key, **tags, **(score.tags() if score else {})},
        )
    holder = _alias_holder(client, name, tracking.alias)
    if holder is not None and holder.version == version.version:
        return version
    promote, why = promotion(score, Score.from_tags(holder.tags) if holder else None, holder is not None)
    if promote:
        client.set_registered_model_alias(name, tracking.alias, version.version)
    else:
        print(
            f"models:/{name}@{tracking.alias} stays on version {holder.version if holder else '-'}, "
            f"version {version.version} registered beside it: {why}"
        )
    return version


def verify_upload(client: MlflowClient, run_id: str, local: Path, artifact_path: str) -> None:
    """Every file under `local` listed under the run's `artifact_path` with the same size, else
    CorruptCheckpoint naming the first that is not: a version is registered only over a whole upload."""
    stored = {info.path: info.file_size for info in _walk_artifacts(client, run_id, artifact_path)}
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        name = f"{artifact_path}/{file.relative_to(local).as_posix()}"
        if stored.get(name) != file.stat().st_size:
            found = "missing" if name not in stored else f"{stored[name]:,} bytes"
            raise CorruptCheckpoint(
                f"runs:/{run_id}/{name}: {found} after upload, expected {file.stat().st_size:,} bytes"
            )


def _walk_artifacts(client: MlflowClient, run_id: str, path: str) -> list[FileInfo]:
    found = []
    for info in client.list_artifacts(run_id, path):
        found += _walk_artifacts(client, run_id, info.path) if info.is_dir else [info]
    return found


def _alias_holder(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no such alias yet
        return None


def register_best(
    client: MlflowClient,
    spec: SweepSpec,
    *,
    exp_id: str,
    parent_run_id: str,
    rows: Sequence[Mapping[str, Any]],
    results: Sequence[Any],
    data_digest: str,
) -> ModelVersion | None:
    """The best trial's best checkpoint (fetched from Ray storage) registered with lineage tags, or None."""
    metric = spec.tune.metric
    best = best_row(rows, metric, spec.tune.mode)
    if best is None:
        return None
    result = next(r for r, row in zip(results, rows, strict=True) if row is best)
    checkpoint = Checkpoint(best["checkpoint_path"], filesystem=result.filesystem)  # the path lacks s3://
    source_run = find_run(client, exp_id, {TRIAL_TAG: best["trial"]}) or ""
    lineage = {
        "sweep.trial": best["trial"],
        "sweep.checkpoint_step": f"{best[metric_names.STEP]:.0f}",
        "source.run_id": source_run,
        "data.digest": data_digest,
        metric: f"{best[metric]:.6g}",
    }
    fingerprint = (
        client.get_run(source_run).data.tags.get(FINGERPRINT_TAG.format(metric)) if source_run else None
    )
    with tempfile.TemporaryDirectory() as tmp:
        return register_checkpoint(
            client,
            spec.experiment.tracking,
            parent_run_id=parent_run_id,
            checkpoint_dir=Path(checkpoint.to_directory(tmp)),
            key={"sweep.digest": spec.digest},
            tags=lineage,
            score=Score(metric, float(best[metric]), spec.tune.mode, fingerprint),
        )


# --- Pareto summaries on the parent run -----------------------------------------------------------
