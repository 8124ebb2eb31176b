"""Checkpoints: plain files, bit-exact round trip, atomic replace, and an identical resumed trajectory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sphere_core import checkpoint
from sphere_core.checkpoint import CorruptCheckpoint, load_checkpoint, load_model, restore, save_checkpoint
from sphere_core.train_step import TrainState
from tests.sphere_core.tiny import CONFIG, fresh_state, step


def trained_state(steps: int) -> TrainState:
    state = fresh_state()
    for i in range(steps):
        step(state, seed=i)
    return state


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_directory_holds_plain_state_dicts_and_json(tmp_path: Path) -> None:
    state = trained_state(1)
    path = save_checkpoint(tmp_path / "ckpt", state, CONFIG, extra={"shard": 3, "offset": 17})
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "ema.pt",
        "model.pt",
        "optim.pt",
        "step.json",
    ]
    recorded = json.loads((path / "step.json").read_text())
    assert recorded == {
        "format": 2,
        "step": 1,
        "extra": {"shard": 3, "offset": 17},
        "files": {name: checkpoint.file_digest(path / name) for name in recorded["files"]},
    }
    assert sorted(recorded["files"]) == ["config.json", "ema.pt", "model.pt", "optim.pt"]
    assert json.loads((path / "config.json").read_text()) == CONFIG.to_dict()
    for name in ("model.pt", "ema.pt", "optim.pt"):
        torch.load(path / name, weights_only=True)  # no pickled classes


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    state = trained_state(2)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "ckpt", state, CONFIG, extra={"cursor": 5}))
    assert loaded.config == CONFIG and loaded.step == 2 and loaded.extra == {"cursor": 5}
    assert_same_tensors(loaded.model, state.model.state_dict())
    assert_same_tensors(loaded.ema, state.ema.state_dict())
    saved_optim = state.optimizer.state_dict()
    assert loaded.optimizer_state["param_groups"] == saved_optim["param_groups"]
    for index, moments in saved_optim["state"].items():
        assert_same_tensors(loaded.optimizer_state["state"][index], moments)


def test_resume_continues_identically(tmp_path: Path) -> None:
    straight = trained_state(2)

    first = trained_state(1)
    save_checkpoint(tmp_path / "ckpt", first, CONFIG)
    resumed = fresh_state(seed=123)  # different init: everything must come from the checkpoint
    restore(resumed, load_checkpoint(tmp_path / "ckpt"))
    step(resumed, seed=1)

    assert resumed.step == straight.step == 2
    assert_same_tensors(resumed.model.state_dict(), straight.model.state_dict())
    assert_same_tensors(resumed.ema.state_dict(), straight.ema.state_dict())


def test_replacing_a_checkpoint_leaves_no_temporary_directories(tmp_path: Path) -> None:
    state = trained_state(1)
    save_checkpoint(tmp_path / "ckpt", state, CONFIG)
    step(state, seed=1)
    save_checkpoint(tmp_path / "ckpt", state, CONFIG)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert load_checkpoint(tmp_path / "ckpt").step == 2


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = trained_state(1)
    save_checkpoint(tmp_path / "ckpt", state, CONFIG)
    real_save = torch.save

    def failing_save(obj: object, path: Path) -> None:
        if Path(path).name == "optim.pt":
            raise OSError("disk full")
        real_save(obj, path)

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    step(state, seed=1)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ckpt", state, CONFIG)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert load_checkpoint(tmp_path / "ckpt").step == 1


def test_load_model_for_inference_uses_ema_by_default(tmp_path: Path) -> None:
    state = trained_state(2)
    path = save_checkpoint(tmp_path / "ckpt", state, CONFIG)
    ema_model, raw_model = load_model(path), load_model(path, use_ema=False)
    assert not ema_model.training and ema_model.cfg == CONFIG.model
    assert_same_tensors(ema_model.state_dict(), state.ema.state_dict())
    assert_same_tensors(raw_model.state_dict(), state.model.state_dict())


def test_unknown_format_is_rejected(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ckpt", trained_state(0), CONFIG)
    (path / "step.json").write_text(json.dumps({"format": 99, "step": 0, "extra": {}}))
    with pytest.raises(CorruptCheckpoint, match="format 99"):
        load_checkpoint(path)


def cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda p: cut(p / "ema.pt", 1000),
            r"ema\.pt is damaged: 1,000 bytes, expected [\d,]+ \(step 2\)$",
        ),
        (lambda p: (p / "ema.pt").unlink(), r"ema\.pt is missing \(step 2\)$"),
        (lambda p: cut(p / "step.json", 20), r"step\.json unreadable \(JSONDecodeError\)$"),
        (
            lambda p: (p / "config.json").write_text((p / "config.json").read_text().replace("1", "2", 1)),
            r"config\.json is damaged: its sha256 differs from the one recorded",
        ),
    ],
    ids=["truncated", "missing", "manifest", "same-size-edit"],
)
def test_a_damaged_checkpoint_is_named_in_one_line_before_torch_reads_it(
    tmp_path: Path, damage: Callable[[Path], None], message: str
) -> None:
    path = save_checkpoint(tmp_path / "ckpt", trained_state(2), CONFIG)
    damage(path)
    for load in (load_checkpoint, load_model):
        with pytest.raises(CorruptCheckpoint, match=message) as caught:
            load(path)
        assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_inference_checks_only_the_weights_it_reads(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ckpt", trained_state(1), CONFIG)
    cut(path / "optim.pt", 10)
    load_model(path)  # the EMA weights and config are intact
    with pytest.raises(CorruptCheckpoint, match=r"optim\.pt is damaged"):
        load_checkpoint(path)
    cut(path / "model.pt", 10)
    with pytest.raises(CorruptCheckpoint, match=r"model\.pt is damaged"):
        load_model(path, use_ema=False)


def test_a_format_1_checkpoint_loads_unchecked(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ckpt", trained_state(1), CONFIG)
    step_json = json.loads((path / "step.json").read_text())
    (path / "step.json").write_text(json.dumps({"format": 1, "step": 1, "extra": step_json["extra"]}))
    assert load_checkpoint(path).step == 1
