"""Pareto summaries of a sweep: which settings give the best quality for their cost.

Pure: rows (one plain dict per setting or per trial report) in; the Pareto-optimal rows, a CSV and a
markdown table with those rows marked, and matplotlib figures (the front; an evaluate sweep's 1 -> T-step
FD curve) out. Logging them is the caller's job (registry.log_pareto). A row dominates another when it
is no worse on every objective and strictly better on at least one; rows that tie on every objective are
all kept; a row missing a finite value for an objective is never on the front.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from matplotlib.figure import Figure

from orchestrator.config import metric_names

MARK = "✓"  # the table's marker of a Pareto-optimal row


@dataclass(frozen=True)
class Objective:
    key: str  # the row key holding the value
    mode: Literal["min", "max"]
    label: str = ""  # axis label; the key when empty

    @property
    def title(self) -> str:
        return self.label or self.key


@dataclass(frozen=True)
class ParetoSummary:
    fronts: dict[str, list[int]]  # cost axis key -> indices (into the rows) of the Pareto-optimal rows
    csv: str
    markdown: str
    figure: Figure


def _value(row: Mapping[str, Any], objective: Objective) -> float | None:
    value = row.get(objective.key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value) if objective.mode == "min" else -float(value)  # compare as minimisation


def pareto_front(rows: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]) -> list[int]:
    """Indices of the rows no other row dominates, in row order."""
    points = [[_value(row, o) for o in objectives] for row in rows]
    scored = [(i, p) for i, p in enumerate(points) if all(v is not None for v in p)]

    def dominates(a: list[float | None], b: list[float | None]) -> bool:
        pairs = list(zip(a, b, strict=True))
        return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)  # type: ignore[operator]

    return [i for i, p in scored if not any(dominates(q, p) for j, q in scored if j != i)]


def summarize(
    rows: Sequence[Mapping[str, Any]],
    *,
    quality: Objective,
    costs: Sequence[Objective],
    label_keys: Sequence[str],
    title: str,
) -> ParetoSummary:
    """One Pareto front of `quality` against each cost axis; the table sorts rows by quality.

    label_keys name each point in the plot (e.g. the varied settings)."""
    fronts = {cost.key: pareto_front(rows, [quality, cost]) for cost in costs}
    flags = [
        {f"pareto: {cost.title}": MARK if i in fronts[cost.key] else "" for cost in costs}
        for i in range(len(rows))
    ]
    table = [{**flag, **row} for flag, row in zip(flags, rows, strict=True)]

    def rank(i: int) -> float:
        value = _value(rows[i], quality)
        return math.inf if value is None else value

    order = sorted(range(len(table)), key=rank)
    ordered = [table[i] for i in order]
    columns = list(dict.fromkeys(key for row in ordered for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(ordered)
    lines = [
        f"Pareto-optimal rows ({MARK}): no other row has a better or equal {quality.title} at a better "
        "or equal cost.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in ordered:
        cells = [_cell(row.get(c)) for c in columns]
        on_front = any(row[f"pareto: {cost.title}"] for cost in costs)
        lines.append("| " + " | ".join(f"**{c}**" if on_front and c else c for c in cells) + " |")
    figure = _plot(rows, fronts, quality, costs, label_keys, title)
    return ParetoSummary(
        fronts=fronts, csv=buffer.getvalue(), markdown="\n".join(lines) + "\n", figure=figure
    )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _plot(
    rows: Sequence[Mapping[str, Any]],
    fronts: Mapping[str, list[int]],
    quality: Objective,
    costs: Sequence[Objective],
    label_keys: Sequence[str],
    title: str,
) -> Figure:
    """One panel per cost axis: every row in grey, the front in red joined in cost order."""
    figure = Figure(figsize=(5.5 * len(costs), 4.5), layout="constrained")
    axes = figure.subplots(1, len(costs), squeeze=False)[0]
    for ax, cost in zip(axes, costs, strict=True):
        points = [
            (float(r[cost.key]), float(r[quality.key]))
            for r in rows
            if _value(r, cost) is not None and _value(r, quality) is not None
        ]
        if points:
            ax.scatter(*zip(*points, strict=True), color="0.6", s=18, label="all")
        front = sorted(fronts[cost.key], key=lambda i: float(rows[i][cost.key]))
        xs = [float(rows[i][cost.key]) for i in front]
        ys = [float(rows[i][quality.key]) for i in front]
        ax.plot(xs, ys, "o-", color="tab:red", label="Pareto-optimal")
        for i, x, y in zip(front, xs, ys, strict=True):
            text = " ".join(_cell(rows[i].get(k)) for k in label_keys)
            ax.annotate(text, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        better = "lower" if cost.mode == "min" else "higher"
        ax.set_xlabel(f"{cost.title} ({better} is cheaper)")
        ax.set_ylabel(f"{quality.title} ({'lower' if quality.mode == 'min' else 'higher'} is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(title)
    return figure


def steps_curve(rows: Sequence[Mapping[str, Any]], fd_key: str) -> Figure:
    """The 1 -> T-step FD curve: one line per (cfg, position, schedule, noise), each starting at the
    1-step sample it refines (`curve_start`: scored once, shared by several curves)."""
    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = figure.subplots()
    fd = {row["setting"]: float(row[fd_key]) for row in rows}
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if row["steps"] > 1:
            points = curves.setdefault(row["setting"].split("_", 1)[1], [])
            points.append((int(row["steps"]), fd[row["setting"]]))
            if row["curve_start"] in fd and (1, fd[row["curve_start"]]) not in points:
                points.append((1, fd[row["curve_start"]]))
    starts = {row["curve_start"] for row in rows if row["steps"] > 1}
    for row in rows:  # a 1-step setting that starts no curve is a point of its own
        if row["steps"] == 1 and row["setting"] not in starts:
            curves.setdefault(row["setting"].split("_", 1)[1], [(1, fd[row["setting"]])])
    for label, points in sorted(curves.items()):
        ax.plot(*zip(*sorted(points), strict=True), "o-", label=label)
    ax.axhline(rows[0][metric_names.floor(fd_key)], color="0.5", linestyle="--", label="real-vs-real floor")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("forward steps T")
    ax.set_ylabel(f"{fd_key} (lower is better)")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return figure
