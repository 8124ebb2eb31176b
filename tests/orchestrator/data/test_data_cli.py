"""`python -m orchestrator.data` end to end: build -> verify -> stream, on file:// and a real loopback S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from orchestrator.data.cli import main
from orchestrator.data.config import DataConfig
from orchestrator.data.pipeline import ShardStream
from orchestrator.data.readers import read_images
from orchestrator.data.shards import Manifest, read_manifest


@pytest.fixture(params=["file", "s3"])
def out_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/digits"
    return f"s3://{request.getfixturevalue('s3_bucket')}/datasets/digits"


def test_build_verify_stream_builtin_digits(out_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--source", "builtin:digits", "--out", out_url, "--shard-size", "200"]) == 0
    out, err = capsys.readouterr()
    assert f"wrote {out_url}/train: 1203 samples in 7 shards" in out
    assert f"wrote {out_url}/test: 594 samples in 3 shards" in out
    assert "1203/1203" in err  # the tqdm progress bar goes to stderr
    if out_url.startswith("s3://"):
        assert os.environ["AWS_SECRET_ACCESS_KEY"] not in out + err  # credentials are never printed

    assert main(["verify", f"{out_url}/train"]) == 0
    report = capsys.readouterr().out.splitlines()
    assert report[0].startswith(f"{out_url}/train: 7 shards, 1203 samples, 16px x 1ch, 10 classes")
    assert report[-1] == "verify: OK" and sum(line.startswith("  ok ") for line in report) == 7

    manifest = read_manifest(f"{out_url}/train")
    assert (manifest.num_classes, manifest.image_size, manifest.channels) == (10, 16, 1)
    cfg = DataConfig(url=f"{out_url}/train", batch_size=50, loader_workers=2, shuffle_buffer=100)
    streams = [ShardStream(cfg, rank=r, world_size=2) for r in range(2)]
    counts = [sum(1 for _ in s.epoch_batches()) for s in streams]
    assert counts[0] == counts[1] == streams[0].batches_per_epoch() > 0


def test_verify_exits_nonzero_naming_each_bad_shard(
    tmp_path: Path,
    make_dataset: Callable[..., Manifest],
    corrupt: Callable[[Manifest], tuple[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    truncated, poisoned = corrupt(make_dataset(str(tmp_path / "ds"), 40, 10))
    assert main(["verify", str(tmp_path / "ds")]) == 1
    out = capsys.readouterr().out
    assert f"BAD {truncated}:" in out and f"BAD {poisoned}:" in out
    assert out.splitlines()[-1] == f"verify: FAILED ({truncated}, {poisoned})"


def test_build_from_json_lines_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(3):
        Image.new("RGB", (20, 10), (i * 50, 0, 0)).save(tmp_path / f"{i}.png")
    rows = [
        json.dumps(
            {
                "class_id": i % 2,
                "class_name": f"c{i % 2}",
                "image_path": f"{i}.png",
                "is_absolute_path": False,
            }
        )
        for i in range(3)
    ]
    (tmp_path / "list.jsonl").write_text("\n".join(rows))
    out = f"memory://cli-jsonl-{tmp_path.name}/ds"
    argv = [
        "build",
        "--source",
        str(tmp_path / "list.jsonl"),
        "--out",
        out,
        "--image-size",
        "8",
        "--no-progress",
    ]
    assert main(argv) == 0
    manifest = read_manifest(out)
    assert (manifest.num_samples, manifest.class_names, manifest.channels) == (3, ("c0", "c1"), 3)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["build", "--source", "builtin:cifar10", "--out", "memory://x"], "unknown built-in dataset"),
        (
            ["build", "--source", "/nonexistent/folder", "--out", "memory://x"],
            "/nonexistent/folder: no such folder",
        ),
        (["verify", "memory://nothing-here"], "manifest.json: not found"),
    ],
)
def test_bad_input_is_one_error_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def _folder_with_bad_image(root: Path, bad: str) -> Path:
    """Six good 8x8 images, then (last in listing order) a decompression bomb or a truncated PNG."""
    root.mkdir()
    for i in range(6):
        Image.new("L", (8, 8), i).save(root / f"{i}.png")
    if bad == "bomb":
        Image.new("1", (14000, 14000)).save(root / "z.png")  # 196M pixels in ~24 KB
    else:
        Image.new("L", (64, 64), 7).save(root / "z.png")
        data = (root / "z.png").read_bytes()
        (root / "z.png").write_bytes(data[: len(data) // 2])
    return root


BAD_IMAGE = {
    "bomb": "z.png: image too large (196000000 pixels > PIL limit 178956970); skip it or resize it",
    "truncated": "z.png: cannot read image (",
}


@pytest.mark.parametrize("bad", sorted(BAD_IMAGE))
def test_bad_image_is_one_error_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    src = _folder_with_bad_image(tmp_path / "src", bad)
    argv = ["build", "--source", str(src), "--out", str(tmp_path / "out"), "--channels", "1"]
    # shards of two: three are written before the bad image is reached
    assert main([*argv, "--shard-size", "2", "--keep-order", "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {src}/{BAD_IMAGE[bad]}") and len(err.splitlines()) == 1
    assert list((tmp_path / "out").iterdir()) == []


def test_module_entry_point_reports_a_decompression_bomb_in_one_line(tmp_path: Path) -> None:
    src = _folder_with_bad_image(tmp_path / "src", "bomb")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.data",
            "build",
            "--source",
            str(src),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == f"error: {src}/{BAD_IMAGE['bomb']}"


def test_module_entry_point_lists_builtins() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.data", "list-builtins"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["builtin:digits", "builtin:mnist", "builtin:fashion-mnist"]
    assert "CC BY 4.0" in lines[0] and "LeCun & Cortes" in lines[1] and "MIT (Zalando)" in lines[2]


def test_folders_are_written_in_a_seeded_shuffled_order_unless_kept(tmp_path: Path) -> None:
    for label in ("a", "b"):
        (tmp_path / "src" / label).mkdir(parents=True)
        for i in range(8):
            Image.new("L", (8, 8), i).save(tmp_path / "src" / label / f"{i}.png")

    def build(out: str, *extra: str) -> list[str]:
        argv = ["build", "--source", str(tmp_path / "src"), "--out", out, "--channels", "1", "--no-progress"]
        assert main([*argv, *extra]) == 0
        _, _, labels, _ = read_images(out)
        return [str(label) for label in labels.tolist()]

    shuffled = build(f"file://{tmp_path}/shuffled")
    assert sorted(shuffled) == ["0"] * 8 + ["1"] * 8 and shuffled != sorted(shuffled)
    assert build(f"file://{tmp_path}/again") == shuffled  # the same shards on every machine
    assert (
        read_manifest(f"file://{tmp_path}/again").digest
        == read_manifest(f"file://{tmp_path}/shuffled").digest
    )
    assert build(f"file://{tmp_path}/kept", "--keep-order") == sorted(shuffled)
