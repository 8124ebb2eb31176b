"""Hostile sweep files and `--set` values are refused in one line, fast and in bounded memory: an alias bomb,
a huge file, deep nesting, bytes that are not UTF-8, a value Python will not build, and a grid of more trials
than the cap (`--max-trials` raises it). Error lines never show more than a clipped piece of a value."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.config.loader import MAX_DEPTH, MAX_YAML_BYTES, load_sweep, parse_set
from orchestrator.sweep import main as sweep_main
from sphere_core.config import SHOWN_CHARS, ConfigError, short_repr

REPO = Path(__file__).resolve().parents[3]
BASE = REPO / "sweeps" / "base" / "mnist.yaml"
GOOD_SEARCH = "search:\n  noise.alpha_max_deg: {grid: [75.0, 85.0]}\n"
# billion laughs: 9 levels of 9 aliases each expand to 9^9 = 387,420,489 leaves
LAUGHS = (
    "[&a [x,x,x,x,x,x,x,x,x], "
    + ", ".join(f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
    + "]"
)


def one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert sweep_main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def sweep_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "hostile.yaml"
    path.write_text(f"base: {BASE}\n{body}")
    return path


# --- the alias bomb, in a fresh interpreter so its memory is its own -----------------------------------

PROBE = """
import json, resource, sys, time, tracemalloc
from orchestrator.config.loader import load_sweep, parse_set
from sphere_core.config import ConfigError
path, sets = sys.argv[1], json.loads(sys.argv[2])
before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the imports (torch) are most of it
tracemalloc.start()
start = time.perf_counter()
try:
    load_sweep(path, dict(parse_set(s) for s in sets))
    message = None
except ConfigError as exc:
    message = str(exc)
seconds = time.perf_counter() - start
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"message": message, "seconds": seconds, "peak": peak,
                  "grown_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb}))
"""


@pytest.mark.parametrize(
    ("where", "body", "sets", "expected"),
    [
        ("override value", f"{GOOD_SEARCH}overrides:\n  run.steps: {LAUGHS}\n", [], "line 5: alias *a"),
        ("name", f"{GOOD_SEARCH}name: {LAUGHS}\n", [], "line 4: alias *a"),
        ("--set", GOOD_SEARCH, [f"run.steps={LAUGHS}"], "--set run.steps: alias *a"),
    ],
)
def test_an_alias_bomb_is_refused_at_once_in_bounded_memory(
    tmp_path: Path, where: str, body: str, sets: list[str], expected: str
) -> None:
    path = sweep_file(tmp_path, body)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), json.dumps(sets)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    out = json.loads(result.stdout)
    assert expected in out["message"] and "is not allowed (write the value out)" in out["message"]
    assert out["seconds"] < 1.0
    assert out["peak"] < 5 * 2**20  # bytes allocated while loading (the bomb's expansion would be GBs)
    assert out["grown_kb"] < 20 * 2**10  # the process's peak resident memory grew by under 20 MiB


# --- size, nesting, encoding, values Python will not build ------------------------------------------


def test_a_file_over_the_size_limit_is_refused_before_it_is_parsed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("x: [" + "1," * (25 * 2**20) + "]\n")  # 50 MB
    start = time.perf_counter()
    line = one_line([str(path), "--dry-run"], capsys)
    assert time.perf_counter() - start < 1.0
    assert line == f"error: {path}: larger than {MAX_YAML_BYTES:,} bytes (allowed: <= {MAX_YAML_BYTES:,})"


def test_a_file_at_the_size_limit_still_loads(tmp_path: Path) -> None:
    padding = "#" * (MAX_YAML_BYTES - 200) + "\n"  # a long comment: size alone is not refused
    path = sweep_file(tmp_path, GOOD_SEARCH + padding)
    assert path.stat().st_size <= MAX_YAML_BYTES
    assert load_sweep(path).name == "hostile"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("name: caf\xe9\n".encode("latin-1"), "line 1: not UTF-8 (byte 0xe9 at offset 9); save it as UTF-8"),
        (b"# ok\nname: \xff\xfe\n", "line 2: not UTF-8 (byte 0xff at offset 11)"),
        (b"name: [unclosed\n", "line 2: expected ',' or ']', but got '<stream end>'"),
        (b"x: " + b"[" * 1000 + b"]" * 1000 + b"\n", f"line 1: nested deeper than {MAX_DEPTH} levels"),
        (b"overrides: {run.steps: " + b"9" * 5000 + b"}\n", "invalid value (Exceeds the limit (4300 digits)"),
    ],
    ids=["latin-1", "utf-16 bom", "invalid yaml", "deep nesting", "huge integer"],
)
def test_undecodable_files_fail_with_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert one_line([str(path), "--dry-run"], capsys).startswith(f"error: {path}: {expected}")


def test_a_base_file_is_held_to_the_same_limits(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_bytes(b"run: {steps: \xe9}\n")
    path = tmp_path / "sweep.yaml"
    path.write_text("base: base.yaml\n" + GOOD_SEARCH)
    with pytest.raises(ConfigError, match=rf"^{path}: {base}: line 1: not UTF-8"):
        load_sweep(path)


def test_set_values_are_held_to_the_limits() -> None:
    with pytest.raises(ConfigError) as info:
        parse_set("run.steps=" + "9" * (MAX_YAML_BYTES + 1))
    assert str(info.value) == "--set run.steps: value longer than 65,536 characters"
    with pytest.raises(ConfigError, match=f"^--set x: nested deeper than {MAX_DEPTH} levels"):
        parse_set("x=" + "[" * 100 + "]" * 100)
    assert parse_set("data.url=not: [yaml") == ("data.url", "not: [yaml")  # not YAML: the text itself


# --- error lines clip the values they show ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (GOOD_SEARCH + "overrides:\n  run.steps: [" + "1, " * 20_000 + "1]\n",
         "overrides.run.steps: expected int"),
        (GOOD_SEARCH + "tune: {mode: " + "m" * 50_000 + "}\n", "tune.mode: 'mmmm"),
        (GOOD_SEARCH + "name: " + "N" * 50_000 + "\n", "name: 'NNNN"),
        (GOOD_SEARCH + "overrides:\n  data.url: {" + ", ".join(f"k{i}: v" for i in range(5000)) + "}\n",
         "overrides.data.url: expected str"),
        (GOOD_SEARCH + "tune: {metric: " + "x" * 50_000 + "}\n", "tune.metric: 'xxxx"),
    ],
    ids=["long list", "long literal", "long name", "long mapping", "long metric"],
)  # fmt: skip
def test_error_lines_show_at_most_a_clipped_value(tmp_path: Path, body: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_sweep(sweep_file(tmp_path, body))
    message = str(info.value)
    assert field in message
    # the path, the field, what is allowed (the metric names, ~600 chars) and a clipped value; not 50 KB
    assert len(message) < len(str(tmp_path)) + 1000


def test_short_repr_is_bounded_and_keeps_short_values_whole() -> None:
    assert short_repr("hyperband") == "'hyperband'"
    assert short_repr([0.01, 0.001]) == "[0.01, 0.001]"
    nested: list[object] = ["x"] * 10
    for _ in range(30):  # 10^30 leaves as shared references: a plain repr would never finish
        nested = [nested] * 10
    assert len(short_repr(nested)) <= SHOWN_CHARS
    assert len(short_repr("y" * 10**6)) == SHOWN_CHARS


# --- the trial cap --------------------------------------------------------------------------------------


def grids(tmp_path: Path, sizes: tuple[int, ...], tune: str = "") -> Path:
    fields = ("run.seed", "optim.warmup_steps", "run.steps")
    body = "search:\n" + "".join(
        f"  {field}: {{grid: {list(range(100, 100 + n))}}}\n" for field, n in zip(fields, sizes, strict=False)
    )
    return sweep_file(tmp_path, body + tune)


def test_a_million_trial_grid_is_refused_before_any_cluster_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_cluster(*args: object) -> None:
        raise AssertionError("the sweep reached cluster work")

    monkeypatch.setattr("orchestrator.tuning.run_train_sweep", no_cluster)
    path = grids(tmp_path, (100, 100, 100))
    start = time.perf_counter()
    line = one_line([str(path)], capsys)
    assert time.perf_counter() - start < 1.0  # counted, never expanded or validated value by value
    assert line == (
        f"error: {path}: search: 1,000,000 trials exceed the cap of 10,000 (allowed: <= 10,000; a bigger "
        "sweep needs --max-trials N)"
    )


@pytest.mark.parametrize(
    ("sizes", "tune", "trials"),
    [((3, 4), "", 12), ((3, 4), "tune: {num_samples: 2}\n", 24), ((), "", 0)],
    ids=["grid", "grid x num_samples", "optuna num_samples"],
)
def test_max_trials_sets_the_cap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sizes: tuple[int, ...], tune: str, trials: int
) -> None:
    if not sizes:  # optuna: num_samples trials, all sampled
        tune, trials = "tune: {search_alg: optuna, num_samples: 30}\n", 30
        path = sweep_file(tmp_path, "search:\n  optim.lr: {loguniform: [0.0001, 0.01]}\n" + tune)
    else:
        path = grids(tmp_path, sizes, tune)
    line = one_line([str(path), "--dry-run", "--max-trials", str(trials - 1)], capsys)
    assert f"search: {trials:,} trials exceed the cap of {trials - 1:,}" in line
    assert sweep_main([str(path), "--dry-run", "--max-trials", str(trials)]) == 0
    assert f": {trials} trials\n" in capsys.readouterr().out
