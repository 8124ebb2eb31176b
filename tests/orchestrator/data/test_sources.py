from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from orchestrator.data.shards import DataError
from orchestrator.data.sources import decode_png, encode_png, image_folder, json_lines


def _save(path: Path, size: tuple[int, int], value: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(path)


def test_png_codec_round_trip_and_rejects_other_payloads() -> None:
    image = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    assert torch.equal(decode_png(encode_png(image), 3), image)
    gray = image[:1]
    assert torch.equal(decode_png(encode_png(gray), 1), gray)
    with pytest.raises(ValueError, match="not a decodable image"):
        decode_png(b"this is not a png", 1)
    with pytest.raises(ValueError, match="expected L"):
        decode_png(encode_png(image), 1)


def test_image_folder_with_class_subfolders(tmp_path: Path) -> None:
    _save(tmp_path / "cat" / "b.png", (40, 20), 10)
    _save(tmp_path / "cat" / "a.jpg", (20, 40), 20)
    _save(tmp_path / "dog" / "nested" / "c.png", (16, 16), 30, mode="L")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    source = image_folder(tmp_path, image_size=8)
    samples = list(source)
    assert source.class_names == ("cat", "dog") and len(source) == 3
    assert [s.meta["path"] for s in samples] == ["cat/a.jpg", "cat/b.png", "dog/nested/c.png"]
    assert [s.class_id for s in samples] == [0, 0, 1]
    assert all(s.image.shape == (3, 8, 8) and s.image.dtype == torch.uint8 for s in samples)
    assert int(samples[2].image.float().mean()) == 30  # grayscale converted to RGB


def test_flat_folder_is_unconditional(tmp_path: Path) -> None:
    for i in range(3):
        _save(tmp_path / f"{i}.png", (12, 12), i)
    source = image_folder(tmp_path, image_size=12, channels=1)
    assert source.class_names == () and [s.class_id for s in source] == [0, 0, 0]
    assert next(iter(source)).image.shape == (1, 12, 12)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "no such folder"),
        ("empty", "no images found"),
        ("mixed", "both class subfolders and loose"),
    ],
)
def test_bad_folders_give_one_clear_error(tmp_path: Path, layout: str, message: str) -> None:
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "mixed":
        _save(root / "cls" / "a.png", (8, 8), 1)
        _save(root / "loose.png", (8, 8), 1)
    with pytest.raises(DataError, match=message):
        image_folder(root, image_size=8)


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"broken\.png: cannot read image"):
        list(image_folder(tmp_path, image_size=8))


def test_decompression_bomb_names_the_file(tmp_path: Path) -> None:
    Image.new("1", (14000, 14000)).save(tmp_path / "big.png")  # 196M pixels in ~24 KB
    with pytest.raises(DataError) as info:
        list(image_folder(tmp_path, image_size=8))
    assert str(info.value) == (
        f"{tmp_path / 'big.png'}: image too large (196000000 pixels > PIL limit "
        f"{2 * Image.MAX_IMAGE_PIXELS}); skip it or resize it"
    )


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_warning_as_error_names_the_file(tmp_path: Path) -> None:
    Image.new("1", (10000, 10000)).save(tmp_path / "large.png")  # over PIL's warning limit, under its error
    with pytest.raises(DataError, match=r"large\.png: image too large \(100000000 pixels > PIL limit \d+\)"):
        list(image_folder(tmp_path, image_size=8))


def test_truncated_image_names_the_file(tmp_path: Path) -> None:
    Image.fromarray(torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8).numpy()).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png: cannot read image \(OSError: "):
        list(image_folder(tmp_path, image_size=8))


def _write_list(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_json_lines_official_format(tmp_path: Path) -> None:
    _save(tmp_path / "imgs" / "x.png", (10, 10), 5)
    _save(tmp_path / "abs.png", (10, 10), 6)
    lst = _write_list(
        tmp_path / "train.jsonl",
        [
            {"class_id": 2, "class_name": "two", "image_path": "imgs/x.png", "is_absolute_path": False},
            "",
            {
                "class_id": 0,
                "class_name": "zero",
                "image_path": str(tmp_path / "abs.png"),
                "is_absolute_path": True,
            },
        ],
    )
    source = json_lines(lst, image_size=4)
    assert source.class_names == ("zero", "1", "two")
    assert [(s.class_id, s.meta["path"]) for s in source] == [
        (2, "imgs/x.png"),
        (0, str(tmp_path / "abs.png")),
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("{not json", r"train\.jsonl:2: not JSON"),
        ({"image_path": "x.png"}, r"train\.jsonl:2: expected an object with class_id and image_path"),
        ({"class_id": -1, "image_path": "x.png"}, "class_id must be an integer >= 0"),
        ({"class_id": "3", "image_path": "x.png"}, "class_id must be an integer >= 0"),
        ({"class_id": 0, "image_path": "missing.png"}, r"train\.jsonl:2: image .*missing\.png not found"),
        ({"class_id": 0, "class_name": "other", "image_path": "x.png"}, "named 'other', earlier 'zero'"),
    ],
)
def test_bad_json_line_gives_one_clear_error(tmp_path: Path, row: object, message: str) -> None:
    _save(tmp_path / "x.png", (8, 8), 1)
    good = {"class_id": 0, "class_name": "zero", "image_path": "x.png"}
    with pytest.raises(DataError, match=message):
        json_lines(_write_list(tmp_path / "train.jsonl", [good, row]), image_size=8)


# --- a source reads only inside its root --------------------------------------------------------------


@pytest.mark.parametrize(
    "layout", ["class folder", "folder in a class folder", "file in a class folder", "loose file"]
)
def test_symlinks_out_of_the_source_folder_are_refused_naming_them(tmp_path: Path, layout: str) -> None:
    outside, root = tmp_path / "elsewhere", tmp_path / "data"
    _save(outside / "secret.png", (8, 8), 1)
    _save(root / ("cat" if layout != "loose file" else "") / "ok.png", (8, 8), 2)
    link, target = {  # the symlink, and what it points to outside the source folder
        "class folder": (root / "dog", outside),
        "folder in a class folder": (root / "cat" / "more", outside),
        "file in a class folder": (root / "cat" / "link.png", outside / "secret.png"),
        "loose file": (root / "link.png", outside / "secret.png"),
    }[layout]
    link.symlink_to(target)
    with pytest.raises(DataError) as info:
        image_folder(root, image_size=8)
    assert str(info.value) == (
        f"{link}: a symlink that resolves outside the source folder {root}; copy the file in"
    )


def test_symlinks_inside_the_source_folder_are_followed(tmp_path: Path) -> None:
    _save(tmp_path / "cat" / "a.png", (8, 8), 1)
    (tmp_path / "cat" / "b.png").symlink_to(tmp_path / "cat" / "a.png")
    (tmp_path / "kitten").symlink_to(tmp_path / "cat")
    source = image_folder(tmp_path, image_size=8)
    assert source.class_names == ("cat", "kitten") and len(source) == 4


@pytest.mark.parametrize(
    ("image_path", "absolute"),
    [("../secret.png", False), ("imgs/../../secret.png", False), ("{outside}", False),
     ("imgs/link.png", False)],
    ids=["dot-dot", "nested dot-dot", "absolute not marked absolute", "symlink out"],
)  # fmt: skip
def test_list_paths_out_of_the_lists_folder_are_refused_naming_them(
    tmp_path: Path, image_path: str, absolute: bool
) -> None:
    root = tmp_path / "lists"
    _save(tmp_path / "secret.png", (8, 8), 1)
    _save(root / "imgs" / "ok.png", (8, 8), 2)
    (root / "imgs" / "link.png").symlink_to(tmp_path / "secret.png")
    image_path = image_path.format(outside=tmp_path / "secret.png")
    row = {"class_id": 0, "image_path": image_path, "is_absolute_path": absolute}
    lst = _write_list(root / "train.jsonl", [{"class_id": 0, "image_path": "imgs/ok.png"}, row])
    with pytest.raises(DataError) as info:
        json_lines(lst, image_size=8)
    assert str(info.value) == (
        f"{lst}:2: image {image_path!r} resolves outside the list's folder {root} (allowed: paths inside it, "
        "or an absolute path marked is_absolute_path: true)"
    )


def test_a_path_marked_absolute_must_be_absolute(tmp_path: Path) -> None:
    """Marked absolute, a path may point anywhere (the list's author says so); a relative one is a mistake."""
    _save(tmp_path / "imgs" / "ok.png", (8, 8), 2)
    row = {"class_id": 0, "image_path": "imgs/ok.png", "is_absolute_path": True}
    lst = _write_list(tmp_path / "train.jsonl", [row])
    with pytest.raises(DataError, match=r"has is_absolute_path: true but is relative \(allowed: an absolute"):
        json_lines(lst, image_size=8)


@pytest.mark.parametrize(
    ("size", "refused"), [((7, 8), True), ((8, 3), True), ((1, 1), True), ((8, 8), False)]
)
def test_images_under_8_px_a_side_are_refused_naming_the_file(
    tmp_path: Path, size: tuple[int, int], refused: bool
) -> None:
    _save(tmp_path / "img.png", size, 1)
    source = image_folder(tmp_path, image_size=16)
    if not refused:
        assert next(iter(source)).image.shape == (3, 16, 16)
        return
    with pytest.raises(DataError) as info:
        list(source)
    assert (
        str(info.value)
        == f"{tmp_path / 'img.png'}: image is {size[0]}x{size[1]} px (allowed: at least 8x8 px)"
    )


def test_a_list_that_is_not_utf8_is_one_line_naming_it(tmp_path: Path) -> None:
    lst = tmp_path / "train.jsonl"
    lst.write_bytes(b'{"class_id": 0, "image_path": "x.png"}\n{"class_id": 0, "image_path": "caf\xe9.png"}\n')
    with pytest.raises(DataError) as info:
        json_lines(lst, image_size=8)
    assert str(info.value) == f"{lst}: line 2: not UTF-8 (byte 0xe9 at offset 73); save it as UTF-8"
