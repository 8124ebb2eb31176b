"""Best-trial choice, summary tables and the rows they come from (orchestrator/tracking/reports.py)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.tracking import reports

ROWS = [
    {"trial": "t0", "status": "ok", "noise.alpha_max_deg": 75.0, "loss": 0.30, "checkpoint_path": "/c/0"},
    {"trial": "t1", "status": "ok", "noise.alpha_max_deg": 85.0, "loss": 0.20, "checkpoint_path": "/c/1"},
    {"trial": "t2", "status": "error", "noise.alpha_max_deg": 80.0, "loss": None, "checkpoint_path": None},
    {
        "trial": "t3",
        "status": "ok",
        "noise.alpha_max_deg": 70.0,
        "loss": float("nan"),
        "checkpoint_path": "/c/3",
    },
    {"trial": "t4", "status": "ok", "noise.alpha_max_deg": 65.0, "loss": 0.10, "checkpoint_path": None},
]


def test_best_row_needs_a_finite_metric_and_a_checkpoint() -> None:
    lowest, highest = reports.best_row(ROWS, "loss", "min"), reports.best_row(ROWS, "loss", "max")
    assert lowest is not None and lowest["trial"] == "t1"  # t4 is lower but has no checkpoint
    assert highest is not None and highest["trial"] == "t0"
    assert reports.best_row(ROWS[2:3], "loss", "min") is None


def test_a_trial_that_errored_is_never_the_best_but_can_be_the_leader() -> None:
    failed_late = {"trial": "t5", "status": "error", "loss": 0.05, "checkpoint_path": "/c/5"}
    best = reports.best_row([*ROWS, failed_late], "loss", "min")
    leader = reports.best_row([*ROWS, failed_late], "loss", "min", errored=True)
    assert best is not None and best["trial"] == "t1"  # what may be registered
    assert leader is failed_late  # what the sweep must not hide: it exits non-zero


def test_summary_tables_sort_best_first_and_hide_storage_paths() -> None:
    table_csv, table_md = reports.summary_tables(ROWS, "loss", "min")
    lines = table_csv.strip().splitlines()
    assert lines[0] == "trial,status,noise.alpha_max_deg,loss"
    assert [line.split(",")[0] for line in lines[1:]] == ["t4", "t1", "t0", "t2", "t3"]
    md = table_md.splitlines()
    assert md[0] == "| trial | status | noise.alpha_max_deg | loss |" and md[2].startswith(
        "| t4 | ok | 65 | 0.1 |"
    )


def test_result_rows_name_trials_like_their_driver(tmp_path: Path) -> None:
    from orchestrator.config.loader import load_sweep
    from orchestrator.tracking.runs import trial_name

    spec = load_sweep(Path(__file__).resolve().parents[3] / "sweeps" / "smoke.yaml")
    ok = SimpleNamespace(
        metrics={"trial_id": "ab12c_00001", "fd_clf_1step": 812.5, "step": 20.0, "checkpoint_path": "b/c"},
        metrics_dataframe=None,
        config={"noise.alpha_max_deg": 85.0},
        error=None,
    )
    failed = SimpleNamespace(
        metrics=None, metrics_dataframe=None, config={"noise.alpha_max_deg": 75.0}, error=RuntimeError("boom")
    )
    rows = reports.result_rows(spec, [ok, failed])
    assert rows[0] == {
        "trial": trial_name(spec.experiment_name, "ab12c_00001", {"noise.alpha_max_deg": 85.0}),
        "status": "ok",
        "noise.alpha_max_deg": 85.0,
        "fd_clf_1step": 812.5,
        "step": 20.0,
        "checkpoint_path": "b/c",
    }
    assert rows[1]["status"] == "error" and rows[1]["trial"] == "" and rows[1]["fd_clf_1step"] is None
    assert rows[0]["trial"].startswith(f"{spec.experiment_name}-t001-")


def trial_history(scores: list[float], paths: list[str | None]) -> SimpleNamespace:
    import pandas as pd

    history = pd.DataFrame(  # as Tune keeps it: a key some reports lack is NaN in the others
        {
            "fd_clf_1step": [s if math.isfinite(s) else 30.0 for s in scores],
            "checkpoint_score": scores,
            "step": [10.0 * (i + 1) for i in range(len(scores))],
            "checkpoint_path": paths,
        }
    )
    last = {"trial_id": "ab12c_00000", **history.iloc[-1].to_dict()}
    return SimpleNamespace(metrics=last, metrics_dataframe=history, config={}, error=None)


@pytest.mark.parametrize(
    ("scores", "paths", "expected"),
    [
        # the last checkpoint is worse than an earlier one: the earlier is registered
        ([50.0, 30.0, 40.0], ["c/1", "c/2", "c/3"], (30.0, 20.0, "c/2")),
        # step 30 carried step 20's eval (30.0) forward: its checkpoint, never evaluated, scored NaN
        ([50.0, 35.0, math.nan], ["c/1", None, "c/3"], (50.0, 10.0, "c/1")),
        # a tie goes to the later checkpoint, as Train ranks them
        ([30.0, 30.0], ["c/1", "c/2"], (30.0, 20.0, "c/2")),
    ],
)
def test_a_trial_is_represented_by_its_best_scored_checkpoint(
    scores: list[float], paths: list[str | None], expected: tuple[float, float, str]
) -> None:
    from orchestrator.config.schema import ExperimentConfig
    from orchestrator.config.sweep_spec import SweepSpec, TuneConfig

    spec = SweepSpec(
        name="x",
        kind="train",
        experiment=ExperimentConfig(),
        evaluate=None,
        digest="d",
        search={},
        tune=TuneConfig(metric="fd_clf_1step", mode="min"),
    )
    (row,) = reports.result_rows(spec, [trial_history(scores, paths)])
    assert (row["fd_clf_1step"], row["step"], row["checkpoint_path"]) == expected


def test_a_trial_without_a_scored_checkpoint_keeps_its_last_report() -> None:
    assert reports.best_checkpoint_report(trial_history([math.nan], ["c/1"]), "fd_clf_1step", "min") is None
