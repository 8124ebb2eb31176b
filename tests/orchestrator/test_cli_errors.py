"""Every CLI (orchestrator.sweep, .data, .generate, .evaluate, .evaluation) answers a user error (a bad
flag, URL, store, credential or model URI) with one line on stderr and exit status 2, never a traceback:
a table of bad invocations per CLI, run in-process, and one per CLI through its real `python -m` entry
point."""

from __future__ import annotations

import argparse
import importlib.util
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.data.cli import main as data_main
from orchestrator.data.shards import read_manifest, write_manifest
from orchestrator.evaluation.__main__ import main as evaluation_main
from orchestrator.generate import main as generate_main
from orchestrator.sweep import main as sweep_main
from tests.fixtures.s3 import S3Endpoint

REPO = Path(__file__).resolve().parents[2]
NEEDS_NO_GCSFS = pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs installed")
BUILD = ["build", "--source", "builtin:digits", "--out"]
EVALUATE_REFERENCE = ["--model", "models:/m@a", "--inception", "w.pth", "--floor", "memory://train"]
ACCEPTED_MODELS = "(accepted: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH"


def error_line(code: int | str | None, err: str) -> str:
    """The one error line of a user error, after checking its shape: our `error: ...` alone, or
    argparse's usage (possibly wrapped) followed by `PROG: error: ...`."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    if lines[0].startswith("error: "):
        assert len(lines) == 1, err
    else:
        assert lines[0].startswith("usage: ") and ": error: " in lines[-1], err
        assert all(line.startswith(" ") for line in lines[1:-1]), err  # usage continuation only
    return lines[-1]


def call(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        code: int | str | None = main(argv)
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    return error_line(code, capsys.readouterr().err)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on: connections to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def fresh_s3() -> Iterator[None]:
    """s3fs caches a filesystem per set of arguments, not per environment: none from before or after."""
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()
    yield
    S3FileSystem.clear_instance_cache()


@pytest.fixture
def unreachable_s3(monkeypatch: pytest.MonkeyPatch, closed_port: int, fresh_s3: None) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries: ~10 s by default


@pytest.fixture
def s3_without_credentials(
    monkeypatch: pytest.MonkeyPatch, s3_endpoint: S3Endpoint, tmp_path: Path, fresh_s3: None
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup


@pytest.fixture
def s3_refusing_credentials(monkeypatch: pytest.MonkeyPatch, s3_endpoint: S3Endpoint, fresh_s3: None) -> None:
    """moto checks signatures from the first request on: the fixture's test keys exist in no account."""
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)


# --- python -m orchestrator.data ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*BUILD, "memory://d", "--image-size", "-3"], "argument --image-size: must be >= 1, got -3"),
        ([*BUILD, "memory://d", "--image-size", "big"], "argument --image-size: 'big' is not an integer"),
        ([*BUILD, "memory://d", "--shard-size", "0"], "argument --shard-size: must be >= 1, got 0"),
        ([*BUILD, "memory://d", "--channels", "2"], "argument --channels: invalid choice"),
        (["build", "--source", "builtin:digits"], "the following arguments are required: --out"),
        (["rebuild"], "argument verb: invalid choice: 'rebuild'"),
        ([*BUILD, "xyz://b/d"], "error: --out xyz://b/d: unknown URL scheme 'xyz' (known: file"),
        pytest.param(
            [*BUILD, "gs://b/d"],
            "error: --out gs://b/d: gs:// URLs need gcsfs: pip install gcsfs",
            marks=NEEDS_NO_GCSFS,
        ),
        (["verify", "xyz://b/d"], "error: xyz://b/d: unknown URL scheme 'xyz'"),
        (["build", "--source", "builtin:cifar10", "--out", "memory://d"], "unknown built-in dataset"),
    ],
)
def test_data_cli_bad_invocation(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert message in call(data_main, argv, capsys)


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("unreachable_s3", "storage unreachable (EndpointConnectionError"),
        ("s3_without_credentials", "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        ("s3_refusing_credentials", "access refused ("),
    ],
)
@pytest.mark.parametrize("verb", ["build", "verify"])
def test_data_cli_storage_faults(
    store: str, message: str, verb: str, request: pytest.FixtureRequest, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    request.getfixturevalue(store)
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "0.png").write_bytes(_tiny_png())
    url = "s3://bucket/ds"
    argv = ["build", "--source", str(tmp_path / "src"), "--out", url, "--no-progress"]
    line = call(data_main, argv if verb == "build" else ["verify", url], capsys)
    assert line.startswith(f"error: {'--out ' if verb == 'build' else ''}{url}: {message}")


@pytest.mark.parametrize("escape", ["symlink", "list", "manifest"])
def test_data_cli_refuses_paths_out_of_the_dataset(
    escape: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "secret.png").write_bytes(_tiny_png())
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "link.png").symlink_to(tmp_path / "secret.png")
    (tmp_path / "src" / "list.jsonl").write_text('{"class_id": 0, "image_path": "../secret.png"}\n')
    out = f"memory://escape-{escape}/ds"
    if escape == "manifest":
        (tmp_path / "ok" / "a").mkdir(parents=True)
        (tmp_path / "ok" / "a" / "0.png").write_bytes(_tiny_png())
        assert data_main(["build", "--source", str(tmp_path / "ok"), "--out", out, "--no-progress"]) == 0
        capsys.readouterr()
        manifest = read_manifest(out)
        write_manifest(replace(manifest, shards=(replace(manifest.shards[0], name="../../x"),)))
        line = call(data_main, ["verify", out], capsys)
        assert line == (
            f"error: {out}/manifest.json: shard name '../../x' is not a plain file name (allowed: a name "
            "inside the dataset folder, without '/', '\\' or '..')"
        )
        return
    source = tmp_path / "src" / ("a" if escape == "symlink" else "list.jsonl")
    line = call(data_main, ["build", "--source", str(source.parent if escape == "symlink" else source),
                            "--out", out, "--no-progress"], capsys)  # fmt: skip
    assert line.startswith(f"error: {source / 'link.png' if escape == 'symlink' else f'{source}:1: image'}")
    assert "outside the" in line


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- python -m orchestrator.generate --------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num", "0"], "argument --num: must be >= 1, got 0"),
        (["--steps", "1", "0"], "argument --steps: must be >= 1, got 0"),
        (["--per-class", "0"], "argument --per-class: must be >= 1, got 0"),
        (["--labels", "-1"], "argument --labels: must be >= 0, got -1"),
        (["--cfg", "x"], "argument --cfg: invalid float value: 'x'"),
        (["--cfg", "0.5"], "error: --cfg: must be >= 1 (1 = no guidance)"),
        (["--cfg-position", "mid"], "argument --cfg-position: invalid choice: 'mid'"),
        (["--model", "s3://b/m"], f"error: --model s3://b/m: not a model URI {ACCEPTED_MODELS}"),
        (["--model", "models:/m"], f"error: --model models:/m: not a model URI {ACCEPTED_MODELS}"),
        (["--model", "/no/such/dir"], f"error: --model /no/such/dir: no such directory {ACCEPTED_MODELS}"),
        (
            ["--out", "/tmp"],
            "argument --out: '/tmp' is not an image file name (allowed: *.png, *.jpg, *.webp)",
        ),
        (["--out", "grid.tiff"], "argument --out: 'grid.tiff' is not an image file name"),
    ],
)
def test_generate_cli_bad_invocation(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model", "models:/m@a", "--out", str(tmp_path / "grid.png"), *flags]
    assert message in call(generate_main, argv, capsys)


def test_generate_cli_needs_a_checkpoint_in_a_local_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model", str(tmp_path), "--out", str(tmp_path / "grid.png")]
    assert f"error: --model {tmp_path}: no sphere_core checkpoint in it" in call(generate_main, argv, capsys)


def test_generate_cli_names_a_damaged_checkpoint_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sphere_core.checkpoint import save_checkpoint
    from tests.sphere_core.tiny import CONFIG, fresh_state

    checkpoint = save_checkpoint(tmp_path / "ckpt", fresh_state(), CONFIG)
    (checkpoint / "ema.pt").write_bytes((checkpoint / "ema.pt").read_bytes()[:1000])
    argv = ["--model", str(checkpoint), "--out", str(tmp_path / "grid.png")]
    assert re.fullmatch(
        rf"error: --model {checkpoint}: ema\.pt is damaged: 1,000 bytes, expected [\d,]+ \(step 0\)",
        call(generate_main, argv, capsys),
    )


@pytest.mark.parametrize("server", ["unset", "down"])
def test_registry_models_need_a_tracking_server_said_in_one_line(
    server: str, closed_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if server == "unset":
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port}")
    line = call(generate_main, ["--model", "models:/nope@x", "--out", "grid.png"], capsys)
    assert line.startswith("error: tracking.tracking_uri: ")
    assert ("MLFLOW_TRACKING_URI is not exported" if server == "unset" else "does not answer /health") in line


# --- python -m orchestrator.evaluation score ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["score", "--model", "models:/m@a", "--num", "8"], "argument --num: must be >= 16, got 8"),
        (["score", "--model", "models:/m@a", "--steps", "0"], "argument --steps: must be >= 1, got 0"),
        (
            ["score", "--model", "models:/m@a", "--dataset", "cifar"],
            "argument --dataset: invalid choice: 'cifar'",
        ),
        (["score", "--model", "models:/m@a", "--cfg", "0.5"], "error: --cfg: must be >= 1"),
        (["score", "--steps", "1"], "the following arguments are required: --model"),
        (["score", "--model", "s3://b/m"], f"error: --model s3://b/m: not a model URI {ACCEPTED_MODELS})"),
        (["score", "--model", "."], f"error: --model .: not a model URI {ACCEPTED_MODELS})"),
        (
            ["score", *EVALUATE_REFERENCE, "--reference", "xyz://b/val"],
            "error: --reference xyz://b/val: unknown URL scheme 'xyz'",
        ),
        pytest.param(
            ["score", *EVALUATE_REFERENCE, "--reference", "gs://b/val"],
            "error: --reference gs://b/val: gs:// URLs need gcsfs: pip install gcsfs",
            marks=NEEDS_NO_GCSFS,
        ),
    ],
)
def test_evaluate_cli_bad_invocation(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in call(evaluation_main, argv, capsys)


def test_evaluate_cli_unreachable_reference_fails_before_the_tracking_server(
    unreachable_s3: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    line = call(evaluation_main, ["score", *EVALUATE_REFERENCE, "--reference", "s3://b/val"], capsys)
    assert line.startswith("error: --reference s3://b/val: storage unreachable (EndpointConnectionError")


# --- python -m orchestrator.evaluation ------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["floor", "--dataset", "digits", "--n", "-5"], "argument --n: must be >= 16, got -5"),
        (["floor", "--dataset", "cifar"], "argument --dataset: invalid choice: 'cifar'"),
        (["floor", "--dataset", "digits", "--threads", "0"], "argument --threads: must be >= 1, got 0"),
        (["train-classifier"], "the following arguments are required: --dataset"),
        (
            ["floor", "--dataset", "digits", "--cache", "xyz://c"],
            "error: --cache xyz://c: unknown URL scheme",
        ),
    ],
)
def test_evaluation_cli_bad_invocation(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in call(evaluation_main, argv, capsys)


# --- python -m orchestrator.sweep ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope.yaml"], "error: nope.yaml: cannot read (No such file or directory)"),
        (["sweeps/noise.yaml", "--set", "bogus.x=1"], "--set bogus.x: unknown field bogus (allowed: name,"),
        (["sweeps/noise.yaml", "--set", "run.steps"], "--set"),
        (["sweeps/noise.yaml", "--set", "run.steps=-3"], "run.steps"),
        (["sweeps/noise.yaml", "--set", "data.url=xyz://b/d", "--dry-run"], "xyz://b/d"),
        (["sweeps/noise.yaml", "--dry", "--bogus"], "unrecognized arguments: --bogus"),
        (["sweeps/noise.yaml", "--max-trials", "0"], "argument --max-trials: must be >= 1, got 0"),
        (
            ["sweeps/noise.yaml", "--max-trials", "3"],
            "error: sweeps/noise.yaml: search: 4 trials exceed the cap of 3 (allowed: <= 3; a bigger sweep "
            "needs --max-trials N)",
        ),
        (
            ["sweeps/noise.yaml", "--set", "run.steps=[&a [1, 1], [*a, *a]]"],
            "error: --set run.steps: alias *a is not allowed (write the value out)",
        ),
        (["sweeps/noise.yaml", "--set", "run.steps=" + "[" * 40 + "]" * 40], "nested deeper than 32 levels"),
    ],
)
def test_sweep_cli_bad_invocation(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert message in call(sweep_main, argv, capsys)


# --- the real entry points --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        ("orchestrator.sweep", ["sweeps/noise.yaml", "--set", "bogus.x=1"], "unknown field bogus"),
        ("orchestrator.sweep", ["sweeps/noise.yaml", "--set", "run.steps=[&a [1], *a]"], "alias *a is not"),
        ("orchestrator.data", [*BUILD, "xyz://b/d"], "error: --out xyz://b/d: unknown URL scheme 'xyz'"),
        ("orchestrator.generate", ["--model", "s3://b/m", "--out", "g.png"], "error: --model s3://b/m: not"),
        (
            "orchestrator.evaluation",
            ["score", "--model", "s3://b/m"],
            "error: --model s3://b/m: not a model URI",
        ),
        ("orchestrator.evaluation", ["floor", "--dataset", "digits", "--n", "-5"], "argument --n: must be"),
    ],
)
def test_module_entry_point_prints_one_line(module: str, argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.stdout == ""
    assert message in error_line(result.returncode, result.stderr)


class Parsing(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


@pytest.mark.parametrize("main", [sweep_main, data_main, generate_main, evaluation_main])
def test_every_flag_has_help(main: Callable[[list[str]], int], monkeypatch: pytest.MonkeyPatch) -> None:
    def stop(parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise Parsing(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(Parsing) as parsing:
        main([])
    parsers, missing = [parsing.value.parser], []
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += action.choices.values()
            elif not action.help:
                missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


@pytest.mark.parametrize("module", ["sweep", "data", "generate", "evaluation"])
def test_bad_flags_answer_before_torch_is_imported(module: str) -> None:
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['x', '--bogus']\n"
        "try:\n"
        f"    runpy.run_module('orchestrator.{module}', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
