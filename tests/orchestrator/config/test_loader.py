"""Sweep files load strictly: every malformed file fails with one stderr line naming the field, exit 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.config.loader import load_experiment, load_sweep, parse_set
from orchestrator.data.registry import BUILTIN_NAMES, NO_DATASET
from orchestrator.sweep import main as sweep_main
from sphere_core.config import ConfigError

REPO = Path(__file__).resolve().parents[3]
SWEEPS = REPO / "sweeps"
BASE = REPO / "sweeps" / "base" / "mnist.yaml"
GOOD_SEARCH = "search:\n  noise.alpha_max_deg: {grid: [75.0, 85.0]}\n"

# (sweep body after `base:`, text the one-line error must contain)
MALFORMED = {
    "unknown top-level key": (GOOD_SEARCH + "serach: {}\n", "serach: unknown key (allowed: name, kind, base"),
    "wrong type in tune": (GOOD_SEARCH + "tune: {num_samples: two}\n", "tune.num_samples: expected int"),
    "empty search space": ("search: {}\n", "search: empty search space"),
    "search path does not exist": (
        "search:\n  noise.alpha_max: {grid: [80.0]}\n",
        "search.noise.alpha_max: unknown field noise.alpha_max (allowed: alpha_max_deg",
    ),
    "override path does not exist": (
        GOOD_SEARCH + "overrides: {run.stepz: 3}\n",
        "overrides.run.stepz: unknown field run.stepz (allowed: steps",
    ),
    "override wrong type": (
        GOOD_SEARCH + "overrides: {run.steps: ten}\n",
        "overrides.run.steps: expected int",
    ),
    "override names a section": (GOOD_SEARCH + "overrides: {noise: 3}\n", "overrides.noise: is a section"),
    "unknown distribution": (
        "search:\n  noise.alpha_max_deg: {gird: [80.0]}\n",
        "search.noise.alpha_max_deg.gird: unknown key (allowed: grid, choice, uniform",
    ),
    "two distributions": (
        "search:\n  noise.alpha_max_deg: {grid: [80.0], choice: [75.0]}\n",
        "search.noise.alpha_max_deg: give exactly one of grid, choice",
    ),
    "empty grid": (
        "search:\n  noise.alpha_max_deg: {grid: []}\n",
        "search.noise.alpha_max_deg.grid: empty list",
    ),
    "value out of range": (
        "search:\n  noise.alpha_max_deg: {grid: [80.0, 95.0]}\n",
        "noise.alpha_max_deg: 95.0 must be in (0, 90)",
    ),
    "value of the wrong type": (
        "search:\n  run.steps: {choice: [10, many]}\n",
        "run.steps: expected int, got 'many'",
    ),
    "uniform on an int field": (
        "search:\n  run.steps: {uniform: [10, 20]}\n",
        "run.steps: expected int, got 10.0",
    ),
    "inverted range": (
        "search:\n  optim.lr: {loguniform: [0.01, 0.001]}\n",
        "search.optim.lr.loguniform: [0.01, 0.001] needs 0 < low < high",
    ),
    "bad literal": (
        GOOD_SEARCH + "tune: {mode: minimize}\n",
        "tune.mode: 'minimize' is not allowed (allowed: 'min'",
    ),
    "bad scheduler": (
        GOOD_SEARCH + "tune: {scheduler: hyperband}\n",
        "tune.scheduler: 'hyperband' is not allowed",
    ),
    "asha grace beyond the run": (
        GOOD_SEARCH + "tune: {scheduler: asha, grace_period: 100000}\n",
        "tune.grace_period: 100000 steps exceeds run.steps",
    ),
    "inference knob in a training sweep": (
        "search:\n  sampling.steps: {grid: [1, 4]}\n",
        "search.sampling.steps: inference-time knob",
    ),
    "literal value not allowed": (
        "search:\n  model.encoder_size: {grid: [nano, enormous]}\n",
        "model.encoder_size: 'enormous' is not allowed (allowed: 'nano'",
    ),
    "perceptual width out of range": (
        GOOD_SEARCH + "overrides: {perceptual.width: 0}\n",
        "perceptual.width: 0 (allowed: 1..1024)",
    ),
    "tune mode that ranks the worst trial first": (
        GOOD_SEARCH + "tune: {metric: fd_clf_1step, mode: max}\n",
        "tune.mode: max would rank the worst trial of fd_clf_1step first: it is better lower (allowed: min)",
    ),
    "tune metric never reported": (
        GOOD_SEARCH + "tune: {metric: los}\n",
        "tune.metric: 'los' is never reported (allowed: loss",
    ),
    "perceptual weight without a network": (
        "search:\n  loss.con_perc: {choice: [0.0, 0.5]}\n"
        "overrides: {perceptual.network: files, loss.recon_perc: 0.0, loss.con_perc: 0.0}\n",
        "loss.con_perc: 0.5 needs a perceptual network (set perceptual.network: random-conv",
    ),
    "adversarial term that would never start": (
        "search:\n  loss.adversarial: {grid: [0.0, 0.5]}\noverrides: {loss.adversarial_start_step: 2000}\n",
        "loss.adversarial_start_step: 2000 is not below run.steps 2000, so the adversarial term would never",
    ),
    "critic without layers": (
        "search:\n  discriminator.layers: {grid: [0, 3]}\n",
        "search.discriminator.layers.grid: value 0 is invalid: discriminator.layers: must be in [1, 6]",
    ),
    "random-conv beside weight files": (
        GOOD_SEARCH + "overrides: {perceptual.network: random-conv, perceptual.convnext_small: c.pth}\n",
        "perceptual.network: random-conv takes no weight files (allowed: files with",
    ),
    "eval reference shards without Inception": (
        GOOD_SEARCH + "overrides: {eval.dataset: none, eval.reference: 's3://b/val'}\n",
        "eval.inception: required with eval.reference when eval.dataset is none",
    ),
    "eval floor without reference": (
        GOOD_SEARCH + "overrides: {eval.floor: 's3://b/train'}\n",
        "eval.floor: only with eval.reference",
    ),
    "optuna with a grid": (
        GOOD_SEARCH + "tune: {search_alg: optuna}\n",
        "search.noise.alpha_max_deg.grid: optuna",
    ),
}


def write_sweep(tmp_path: Path, body: str, name: str = "case.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"base: {BASE}\n" + textwrap.dedent(body))
    return path


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_sweep_fails_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    body, expected = MALFORMED[case]
    path = write_sweep(tmp_path, body)
    assert sweep_main([str(path), "--dry-run"]) == 2  # the CLI's exit code; the entry point is tested below
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}: ")
    assert expected in lines[0]
    assert out == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("base: missing.yaml\n" + GOOD_SEARCH, "missing.yaml: cannot read"),
        ("experiment: {}\nbase: x.yaml\n" + GOOD_SEARCH, "base: give exactly one of base"),
        (GOOD_SEARCH + "search: [oops\n", "line"),
        (
            "experiment: {noise: {alpha_max_deg: 80.0, colour: red}}\n" + GOOD_SEARCH,
            "experiment.noise.colour: unknown key",
        ),
        ("kind: evaluate\nexperiment: {}\nsearch:\n  sampling.steps: {grid: [1]}\n", "evaluate: required"),
        (
            "kind: evaluate\nexperiment: {}\nevaluate: {model: runs:/abc}\n"
            "search:\n  sampling.steps: {grid: [1]}\n",
            "evaluate.model: 'runs:/abc' is not a frozen model (allowed: models:/NAME@ALIAS, "
            "models:/NAME/VERSION, runs:/RUN_ID/PATH)",
        ),
        *(
            ("kind: evaluate\nexperiment: {}\n" + block + "\nsearch:\n  " + search + "\n", expected)
            for block, search, expected in [
                (
                    "evaluate: {model: 'models:/m@a', dataset: cifar}",
                    "sampling.steps: {grid: [1]}",
                    "evaluate.dataset: 'cifar' is not allowed (allowed: "
                    + ", ".join(map(repr, (*BUILTIN_NAMES, NO_DATASET)))
                    + ")",
                ),
                (
                    "evaluate: {model: 'models:/m@a', num_images: 4}",
                    "sampling.steps: {grid: [1]}",
                    "must be >= 16",
                ),
                (
                    "evaluate: {model: 'models:/m@a', colour: 1}",
                    "sampling.steps: {grid: [1]}",
                    "evaluate.colour: unknown key (allowed: dataset, inception, reference, floor, model, "
                    "num_images, seed)",
                ),
                (
                    "evaluate: {model: 'models:/m@a', reference: 's3://b/val'}",
                    "sampling.steps: {grid: [1]}",
                    "evaluate.floor: required with evaluate.reference (allowed: an fsspec URL of training",
                ),
                (
                    "evaluate: {model: 'models:/m@a', dataset: none}",
                    "sampling.steps: {grid: [1]}",
                    "evaluate.dataset: none needs evaluate.reference",
                ),
                (
                    "evaluate: {model: 'models:/m@a', dataset: none, reference: 's3://b/val', floor: 's3://b/tr'}",
                    "sampling.steps: {grid: [1]}",
                    "evaluate.inception: required with evaluate.reference when evaluate.dataset is none",
                ),
                (
                    "evaluate: {model: 'models:/m@a'}",
                    "sampling.schedule: {grid: [fixed, cosine]}",
                    "search.sampling.schedule.grid: value 'cosine' is invalid: sampling.schedule: "
                    "'cosine' is not allowed (allowed: 'fixed', 'decay')",
                ),
                (
                    "evaluate: {model: 'models:/m@a'}",
                    "sampling.cfg_position: {grid: [pixel]}",
                    "(allowed: 'enc', 'dec', 'combo')",
                ),
                (
                    "evaluate: {model: 'models:/m@a'}",
                    "sampling.shared_noise: {grid: [true, maybe]}",
                    "sampling.shared_noise: expected bool, got 'maybe'",
                ),
                (
                    "evaluate: {model: 'models:/m@a'}",
                    "sampling.cfg: {uniform: [1.0, 2.0]}",
                    "takes grid only",
                ),
            ]
        ),
        (
            "kind: evaluate\nexperiment: {}\nevaluate: {model: 'models:/m@a'}\n"
            "search:\n  noise.alpha_max_deg: {grid: [1.0]}\n",
            "search.noise.alpha_max_deg: kind: evaluate only varies sampling.*",
        ),
        ("name: Bad Name\nexperiment: {}\n" + GOOD_SEARCH, "name: 'Bad Name' is not allowed"),
    ],
)
def test_file_level_errors_name_the_field(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)) and expected in message


def test_overrides_apply_and_digest_tracks_resolved_content(tmp_path: Path) -> None:
    a = load_sweep(
        write_sweep(
            tmp_path, GOOD_SEARCH + "overrides: {run.steps: 700, noise.mix_hard_cases: false}\n", "a.yaml"
        )
    )
    assert a.experiment.run.steps == 700 and a.experiment.noise.mix_hard_cases is False
    assert a.experiment.model == load_experiment(BASE).model
    assert a.name == "a" and a.experiment_name == f"a-{a.digest}"
    same = load_sweep(
        write_sweep(
            tmp_path, GOOD_SEARCH + "overrides: {noise.mix_hard_cases: false, run.steps: 700}\n", "a2.yaml"
        )
    )
    other = load_sweep(write_sweep(tmp_path, GOOD_SEARCH + "overrides: {run.steps: 800}\n", "a3.yaml"))
    assert same.name == "a2" and other.name == "a3"
    renamed_same = load_sweep(
        write_sweep(
            tmp_path,
            "name: a\n" + GOOD_SEARCH + "overrides: {noise.mix_hard_cases: false, run.steps: 700}\n",
            "a4.yaml",
        )
    )
    assert renamed_same.digest == a.digest  # key order in the file does not matter, content does
    assert other.digest != a.digest


def test_impossible_resources_fail_before_anything_starts(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, GOOD_SEARCH + "overrides: {scaling.cpus_per_worker: 64.0}\n")
    env_free = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }  # no RAY_ADDRESS, no MLflow: local check first
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env_free,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert (
        "scaling.cpus_per_worker: a trial needs 64.01 CPUs (1 workers x 64 + 0.01 trial driver)" in lines[0]
    )
    assert "this machine (local Ray)" in lines[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: a\n" + GOOD_SEARCH + "name: b\n", "line 4: duplicate key 'name' (first at line 1)"),
        (
            GOOD_SEARCH + "  noise.alpha_max_deg: {grid: [70.0]}\n",
            "line 3: duplicate key 'noise.alpha_max_deg' in search (first at line 2)",
        ),
        (
            "search:\n  noise.alpha_max_deg:\n    grid: [75.0]\n    grid: [80.0]\n",
            "line 4: duplicate key 'grid' in search.noise.alpha_max_deg (first at line 3)",
        ),
        (
            GOOD_SEARCH + "overrides:\n  run.steps: 3\n  run.steps: 4\n",
            "line 5: duplicate key 'run.steps' in overrides (first at line 4)",
        ),
    ],
)
def test_duplicate_key_fails_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(text + f"base: {BASE}\n")  # base last, so the line numbers are those of `text`
    assert sweep_main([str(path), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: {path}: {expected}"]


def test_duplicate_key_in_a_base_file_names_that_file(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("noise:\n  alpha_max_deg: 80.0\n  alpha_max_deg: 85.0\n")
    path = tmp_path / "sweep.yaml"
    path.write_text("base: base.yaml\n" + GOOD_SEARCH)
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert (
        str(info.value) == f"{path}: {base}: line 3: duplicate key 'alpha_max_deg' in noise (first at line 2)"
    )


def test_submit_time_sets_apply_after_the_files_overrides_and_are_validated_like_them() -> None:
    sets = dict(
        parse_set(a)
        for a in ("data.url=s3://mine/train", "scaling.use_gpu=true", "optim.lr=3e-3", "run.steps=700")
    )
    assert sets == {
        "data.url": "s3://mine/train",
        "scaling.use_gpu": True,
        "optim.lr": 0.003,
        "run.steps": 700,
    }
    plain, changed = load_sweep(SWEEPS / "noise.yaml"), load_sweep(SWEEPS / "noise.yaml", sets)
    assert changed.experiment.data.url == "s3://mine/train" and changed.experiment.scaling.use_gpu
    assert changed.experiment.optim.lr == 0.003 and changed.experiment.run.steps == 700
    assert changed.sets == sets and changed.digest != plain.digest  # another experiment, not a resume
    with pytest.raises(
        ConfigError, match=r"--set scaling\.use_gpux: unknown field scaling\.use_gpux \(allowed: "
    ):
        load_sweep(SWEEPS / "noise.yaml", {"scaling.use_gpux": True})
    with pytest.raises(ConfigError, match=r"--set scaling\.workers_per_trial: expected int, got 'two'"):
        load_sweep(SWEEPS / "noise.yaml", {"scaling.workers_per_trial": "two"})
    with pytest.raises(ConfigError, match=r"--set use_gpu: expected DOTTED\.PATH=VALUE"):
        parse_set("use_gpu")


# --- values a base leaves to the user (`???`) --------------------------------------------------------


def base_with_unset(tmp_path: Path) -> Path:
    """The MNIST base with its data URL and Inception weights left to the user, as the RGB bases are."""
    text = BASE.read_text().replace("url: s3://sphere/datasets/mnist/train", "url: ???")
    text = text.replace("  dataset: mnist ", "  dataset: none\n  inception: ???\n  reference: ???\n  #")
    path = tmp_path / "base.yaml"
    path.write_text(text)
    return path


def test_a_value_left_unset_is_named_with_what_to_give(tmp_path: Path) -> None:
    base = base_with_unset(tmp_path)
    assert load_experiment(base).data.url == "???"  # a base file alone loads: it is not a sweep yet
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: {base.name}\n{GOOD_SEARCH}tune: {{metric: fd_inception_1step}}\n")
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    message = str(info.value)
    assert message.startswith(
        f"{path}: data.url, eval.inception, eval.reference: not set (the base leaves them"
    )
    assert "--set data.url=<an fsspec URL of training shards" in message
    assert "--set eval.inception=<a path or fsspec URL of pytorch-fid's pt_inception-2015-12-05" in message
    assert "--set eval.reference=<an fsspec URL of held-out shards" in message
    sets = {"data.url": "s3://b/train", "eval.inception": "/w/inception.pth"}
    with pytest.raises(ConfigError, match=r": eval\.reference: not set \(the base leaves it to you\)"):
        load_sweep(path, sets)
    spec = load_sweep(path, {**sets, "eval.reference": "s3://b/val"})
    assert spec.experiment.data.url == "s3://b/train" and spec.experiment.eval.reference == "s3://b/val"
    path.write_text(path.read_text() + "overrides: {data.url: s3://b/train, eval.reference: s3://b/val}\n")
    assert load_sweep(path, {"eval.inception": "/w/inception.pth"}).experiment == spec.experiment


def test_submit_time_sets_fill_an_evaluate_section_and_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "steps.yaml"
    path.write_text(
        f"kind: evaluate\nbase: {base_with_unset(tmp_path)}\n"  # the base's ??? are not the evaluation's
        "evaluate: {model: 'models:/m@a', dataset: none, inception: '???', reference: '???', floor: '???'}\n"
        "search:\n  sampling.steps: {grid: [1, 4]}\n"
    )
    with pytest.raises(
        ConfigError,
        match=r"evaluate\.inception, evaluate\.reference, evaluate\.floor: not set \(the file leaves them to "
        r"you\): give them in evaluate: or as --set evaluate\.inception=<a path",
    ):
        load_sweep(path)
    sets = {
        "evaluate.inception": "/w/i.pth",
        "evaluate.reference": "s3://b/val",
        "evaluate.floor": "s3://b/t",
    }
    spec = load_sweep(path, sets)
    assert spec.evaluate is not None and spec.evaluate.reference == "s3://b/val" and spec.sets == sets
    assert load_sweep(path, {**sets, "evaluate.model": "models:/m@b"}).digest != spec.digest
    with pytest.raises(
        ConfigError,
        match=r"--set evaluate\.modle: unknown field \(allowed: evaluate\.dataset, .*evaluate\.model",
    ):
        load_sweep(path, {**sets, "evaluate.modle": "x"})
    with pytest.raises(ConfigError, match=r"--set evaluate\.num_images: expected int, got 'many'"):
        load_sweep(path, {**sets, "evaluate.num_images": "many"})
    with pytest.raises(ConfigError, match=r"--set evaluate\.model: 'latest' is not a frozen model"):
        load_sweep(path, {**sets, "evaluate.model": "latest"})
    with pytest.raises(ConfigError, match=r"--set evaluate\.model: only with kind: evaluate"):
        load_sweep(SWEEPS / "noise.yaml", {"evaluate.model": "models:/m@a"})
