"""Pareto fronts: dominance, ties, min/max directions, missing values; the table marks the front."""

from __future__ import annotations

import math

from orchestrator.tracking.pareto import MARK, Objective, pareto_front, summarize

FD = Objective("fd", "min")
PASSES = Objective("passes", "min")
SPEED = Objective("images_per_s", "max")


def test_a_dominated_row_is_off_the_front() -> None:
    rows = [
        {"fd": 10.0, "passes": 1},
        {"fd": 5.0, "passes": 3},
        {"fd": 6.0, "passes": 3},
        {"fd": 4.0, "passes": 7},
    ]
    assert pareto_front(rows, [FD, PASSES]) == [0, 1, 3]  # row 2: same cost as row 1, worse FD


def test_exact_ties_are_all_kept_but_a_tie_on_one_axis_is_not_enough() -> None:
    rows = [{"fd": 5.0, "passes": 3}, {"fd": 5.0, "passes": 3}, {"fd": 5.0, "passes": 5}]
    assert pareto_front(rows, [FD, PASSES]) == [0, 1]


def test_max_objectives_prefer_higher_values() -> None:
    rows = [
        {"fd": 5.0, "images_per_s": 100.0},
        {"fd": 5.0, "images_per_s": 300.0},
        {"fd": 2.0, "images_per_s": 50.0},
    ]
    assert pareto_front(rows, [FD, SPEED]) == [1, 2]
    assert pareto_front(rows, [Objective("fd", "max"), SPEED]) == [1]


def test_rows_without_a_finite_value_are_never_on_the_front_and_dominate_nothing() -> None:
    rows = [{"fd": math.nan, "passes": 1}, {"fd": 3.0}, {"fd": 8.0, "passes": 2}, {"fd": None, "passes": 0}]
    assert pareto_front(rows, [FD, PASSES]) == [2]
    assert pareto_front([], [FD, PASSES]) == []


def test_summary_marks_the_front_per_cost_axis_and_sorts_by_quality() -> None:
    rows = [
        {"steps": 1, "fd": 9.0, "passes": 1, "images_per_s": 900.0},
        {"steps": 4, "fd": 3.0, "passes": 7, "images_per_s": 200.0},
        {"steps": 2, "fd": 9.5, "passes": 3, "images_per_s": 950.0},
    ]
    summary = summarize(rows, quality=FD, costs=[PASSES, SPEED], label_keys=["steps"], title="t")
    assert summary.fronts == {"passes": [0, 1], "images_per_s": [0, 1, 2]}
    header, *lines = summary.csv.strip().splitlines()
    assert header == "pareto: passes,pareto: images_per_s,steps,fd,passes,images_per_s"
    assert [line.split(",")[:3] for line in lines] == [[MARK, MARK, "4"], [MARK, MARK, "1"], ["", MARK, "2"]]
    assert f"| **{MARK}** | **{MARK}** | **4** |" in summary.markdown
    assert len(summary.figure.axes) == 2
