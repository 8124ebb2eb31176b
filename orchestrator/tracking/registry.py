"""The end of a sweep: a summary table on the parent run, and the best trial's checkpoint registered.

The registered version's source is a plain sphere_core checkpoint directory logged as artifacts of the
parent run (state_dicts + config.json + step.json: no pickled classes, no pyfunc), so
`models:/NAME@ALIAS` downloads to something `sphere_core.checkpoint` loads. Aliases, never stages.

Promotion: every version is registered, but the alias moves to it only when nobody holds the alias, or
when the holder's score was measured under the same metric and protocol fingerprint and the candidate
beats it. FD-like numbers under different protocols (extractor, reference, n, seeds, sampler) are not
comparable, so a mismatch keeps the alias where it is and says why instead of comparing blindly.

Over 300 lines because registering and promoting share the fingerprint rules; the summary table and
plots go with them until the tracking/ package split (issue 12) moves reports out.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.config import metric_names
from orchestrator.config.schema import TrackingConfig
from orchestrator.config.sweep_spec import SweepSpec
from orchestrator.tracking.mlflow_model import save_pyfunc
from orchestrator.tracking.pareto import Objective, ParetoSummary, steps_curve, summarize
from orchestrator.tracking.runs import TRIAL_TAG, find_run, trial_name

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHECKPOINT_ARTIFACT = "best_checkpoint"
TRAIN_COMPUTE = metric_names.TRAIN_IMAGES
FINGERPRINT_TAG = "fingerprint.{}"  # on a run: the protocol fingerprint of its metric named {}


def result_rows(spec: SweepSpec, results: Sequence[Any]) -> list[dict[str, Any]]:
    """One plain row per Tune result: trial name, status, varied params, last reported metrics."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        params = {path: result.config.get(path) for path in spec.search}
        name = trial_name(spec.experiment_name, metrics["trial_id"], params) if "trial_id" in metrics else ""
        rows.append(
            {
                "trial": name,
                "status": "error" if result.error else "ok",
                **params,
                spec.tune.metric: metrics.get(spec.tune.metric),
                metric_names.STEP: metrics.get(metric_names.STEP),
                "checkpoint_path": metrics.get("checkpoint_path"),
            }
        )
    return rows


def best_row(rows: Sequence[Mapping[str, Any]], metric: str, mode: str) -> Mapping[str, Any] | None:
    """The finished trial with the best finite `metric` and a checkpoint, or None."""
    scored = [r for r in rows if _finite(r.get(metric)) and r.get("checkpoint_path")]
    if not scored:
        return None
    pick = min if mode == "min" else max
    return pick(scored, key=lambda r: float(r[metric]))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def summary_tables(rows: Sequence[Mapping[str, Any]], metric: str, mode: str) -> tuple[str, str]:
    """(CSV, markdown) of every trial, best first; comparison does not need to load each child run."""
    worst = math.inf if mode == "min" else -math.inf
    ordered = sorted(
        rows, key=lambda r: float(r[metric]) if _finite(r.get(metric)) else worst, reverse=mode == "max"
    )
    columns = list(dict.fromkeys(key for row in ordered for key in row if key != "checkpoint_path"))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(ordered)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in ordered]
    return buffer.getvalue(), "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def log_summary(
    client: MlflowClient, parent_run_id: str, rows: Sequence[Mapping[str, Any]], metric: str, mode: str
) -> None:
    table_csv, table_md = summary_tables(rows, metric, mode)
    client.log_text(parent_run_id, table_csv, "summary.csv")
    client.log_text(parent_run_id, table_md, "summary.md")


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
    """Logs the directory on the parent run as an MLflow pyfunc model (orchestrator/tracking/mlflow_model.py),
    registers it as a new version and moves the alias to it
    when `promotion` allows (printing why not otherwise).

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
        with tempfile.TemporaryDirectory(prefix="sphere-pyfunc-") as tmp:
            save_pyfunc(checkpoint_dir, Path(tmp) / "model")
            client.log_artifacts(parent_run_id, str(Path(tmp) / "model"), CHECKPOINT_ARTIFACT)
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


def _alias_holder(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

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
    """The best trial's last checkpoint (fetched from Ray storage) registered with lineage tags, or None."""
    from ray.train import Checkpoint

    metric = spec.tune.metric
    best = best_row(rows, metric, spec.tune.mode)
    if best is None:
        return None
    result = next(r for r, row in zip(results, rows, strict=True) if row is best)
    checkpoint = Checkpoint(best["checkpoint_path"], filesystem=result.filesystem)  # the path lacks s3://
    source_run = find_run(client, exp_id, {TRIAL_TAG: best["trial"]}) or ""
    lineage = {
        "sweep.trial": best["trial"],
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


def log_pareto(client: MlflowClient, run_id: str, name: str, summary: ParetoSummary) -> None:
    """<name>.md / .csv (Pareto-optimal rows marked) and <name>.png on the run."""
    client.log_text(run_id, summary.markdown, f"{name}.md")
    client.log_text(run_id, summary.csv, f"{name}.csv")
    client.log_figure(run_id, summary.figure, f"{name}.png")


def log_evaluation_plots(
    client: MlflowClient,
    run_id: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    fd_key: str,
) -> None:
    """An evaluate sweep: FD against network passes per image and against measured images/s, and the
    1 -> T-step FD curve."""

    costs = [Objective("network_passes", "min", "network passes per image"), Objective("images_per_s", "max")]
    summary = summarize(
        rows, quality=Objective(fd_key, "min"), costs=costs, label_keys=["setting"], title="FD vs cost"
    )
    log_pareto(client, run_id, "pareto", summary)
    client.log_figure(run_id, steps_curve(rows, fd_key), "fd_vs_steps.png")


def training_rows(spec: SweepSpec, results: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per (trial, evaluation): the reports whose metrics were measured at their own step, with
    the training compute spent by then. A report that carries an earlier eval forward (eval_step < step)
    would pair that FD with a later, larger train_images, so it is left out."""
    rows = []
    for result, row in zip(results, result_rows(spec, results), strict=True):
        history = result.metrics_dataframe
        reports = history.to_dict("records") if history is not None else [result.metrics or {}]
        rows += [
            {"trial": row["trial"], **{p: row[p] for p in spec.search}, **report}
            for report in reports
            if _finite(report.get(TRAIN_COMPUTE))
            and report.get(metric_names.EVAL_STEP, report.get(metric_names.STEP))
            == report.get(metric_names.STEP)
        ]
    return rows


def log_training_pareto(
    client: MlflowClient, run_id: str, spec: SweepSpec, results: Sequence[Any]
) -> list[str]:
    """A training sweep: the 1-step and T-step FD against images seen, when the trials report them.
    Returns the quality keys plotted (none until the training loop reports FD and train_images)."""
    rows = training_rows(spec, results)
    cost = Objective(TRAIN_COMPUTE, "min", "training images seen")
    plotted = []
    fd = metric_names.fd(spec.experiment.eval.tag)
    for key in dict.fromkeys(metric_names.of_samples(fd, t) for t in (1, spec.experiment.sampling.steps)):
        if any(_finite(r.get(key)) for r in rows):
            summary = summarize(
                rows,
                quality=Objective(key, "min"),
                costs=[cost],
                label_keys=["trial"],
                title=f"{key} vs compute",
            )
            log_pareto(client, run_id, f"pareto_{key}", summary)
            plotted.append(key)
    return plotted
