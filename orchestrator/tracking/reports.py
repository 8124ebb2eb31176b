"""What a sweep's parent run shows: the trials' summary table (CSV and Markdown), the Pareto tables and plots
of quality against cost (inference settings, or training images seen), and the rows they are built from;
and the table `python -m orchestrator.evaluation score` prints.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.config import metric_names
from orchestrator.config.sweep_spec import SweepSpec
from orchestrator.tracking.pareto import Objective, ParetoSummary, steps_curve, summarize
from orchestrator.tracking.runs import trial_name

if TYPE_CHECKING:
    from mlflow import MlflowClient

TRAIN_COMPUTE = metric_names.TRAIN_IMAGES  # the training-compute axis


def result_rows(spec: SweepSpec, results: Sequence[Any]) -> list[dict[str, Any]]:
    """One plain row per Tune result: trial name, status, varied params, and the metric, step and path of
    its best evaluated checkpoint (its last report where it has none)."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        best = best_checkpoint_report(result, spec.tune.metric, spec.tune.mode) or metrics
        params = {path: result.config.get(path) for path in spec.search}
        name = trial_name(spec.experiment_name, metrics["trial_id"], params) if "trial_id" in metrics else ""
        rows.append(
            {
                "trial": name,
                "status": "error" if result.error else "ok",
                **params,
                spec.tune.metric: best.get(spec.tune.metric),
                metric_names.STEP: best.get(metric_names.STEP),
                "checkpoint_path": best.get("checkpoint_path"),
            }
        )
    return rows


def all_reports(result: Any) -> list[dict[str, Any]]:
    """Every report of a trial, oldest first (its last alone where Tune kept no history)."""
    history = result.metrics_dataframe
    return history.to_dict("records") if history is not None else [result.metrics or {}]


def evaluated_reports(result: Any) -> list[dict[str, Any]]:
    """A trial's reports whose metrics were measured at their own step, oldest first. A report that carries
    an earlier eval forward (eval_step < step) pairs that eval with a later model."""
    return [
        report
        for report in all_reports(result)
        if report.get(metric_names.EVAL_STEP, report.get(metric_names.STEP)) == report.get(metric_names.STEP)
    ]


def best_checkpoint_report(result: Any, metric: str, mode: str) -> dict[str, Any] | None:
    """The report whose checkpoint Train ranks best (orchestrator/tuning.py keeps it): the best finite
    CHECKPOINT_SCORE, the later on a tie; None where no checkpoint was scored. Its `metric` is that score."""
    scored = [
        report
        for report in all_reports(result)
        if _finite(report.get(metric_names.CHECKPOINT_SCORE))
        and isinstance(report.get("checkpoint_path"), str)
    ]
    if not scored:
        return None
    sign = 1.0 if mode == "min" else -1.0
    best = min(reversed(scored), key=lambda report: sign * float(report[metric_names.CHECKPOINT_SCORE]))
    return {**best, metric: best[metric_names.CHECKPOINT_SCORE]}


def best_row(
    rows: Sequence[Mapping[str, Any]], metric: str, mode: str, *, errored: bool = False
) -> Mapping[str, Any] | None:
    """The trial with the best finite last-reported `metric` and a checkpoint, or None. Only trials that
    ended without error, unless `errored`: whether the leader is one that failed is the caller's question."""
    scored = [
        r
        for r in rows
        if _finite(r.get(metric)) and r.get("checkpoint_path") and (errored or r["status"] == "ok")
    ]
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
    """One row per (trial, evaluation) with the training compute spent by then (evaluated_reports)."""
    rows = []
    for result, row in zip(results, result_rows(spec, results), strict=True):
        rows += [
            {"trial": row["trial"], **{p: row[p] for p in spec.search}, **report}
            for report in evaluated_reports(result)
            if _finite(report.get(TRAIN_COMPUTE))
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


def format_table(rows: Sequence[Mapping[str, Any]], fd_key: str) -> str:
    """setting, passes/image, images/s, fd, kid, precision, recall (e.g. *_clf), fd_pix and memorisation
    where scored, the floor at that n, fingerprint. fd_key: the FD metric's full name (e.g. proxy/fd_clf)."""
    fd_name, proxy = metric_names.parse_protocol(fd_key)
    scores = metric_names.sample_scores(metric_names.space_of(fd_name), conditional=True, pixels=True)
    logged = {m: metric_names.under_protocol(m, proxy=proxy) for m in scores}  # column -> the row's key
    table_metrics = [m for m, key in logged.items() if any(key in row for row in rows)]
    columns = ["setting", "passes", "images/s", *table_metrics, "fd floor", "fingerprint"]
    lines = [columns]
    for row in rows:
        floor = f"{row[metric_names.floor(fd_key)]:.4g}±{row.get(metric_names.floor_std(fd_key), 0.0):.2g}"
        values = [f"{row.get(logged[m], float('nan')):.4g}" for m in table_metrics]
        lines.append(
            [
                row["setting"],
                f"{row['network_passes']:g}",
                f"{row['images_per_s']:.0f}",
                *values,
                floor,
                row["fingerprint"],
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)
