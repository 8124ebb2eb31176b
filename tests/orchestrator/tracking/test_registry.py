"""Registration under an alias on a throwaway registry, and when the alias moves."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from orchestrator.config.schema import TrackingConfig
from orchestrator.evaluation.frozen import load_frozen
from orchestrator.tracking import registry
from orchestrator.tracking.mlflow_model import checkpoint_dir, load_registered
from orchestrator.tracking.registry import Score, promotion
from sphere_core.checkpoint import CorruptCheckpoint, save_checkpoint
from sphere_core.config import ConfigError
from tests.sphere_core.tiny import CONFIG, fresh_state


def sqlite_registry(tmp_path: Path) -> tuple[str, mlflow.MlflowClient, str]:
    """A real tracking + registry store in SQLite with local artifacts: (uri, client, a parent run id)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment("sweep", artifact_location=str(tmp_path / "artifacts"))
    return uri, client, client.create_run(exp).info.run_id


def tiny_checkpoint(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "ckpt", fresh_state(), CONFIG)


def test_registered_version_loads_as_a_pyfunc_sampler(tmp_path: Path) -> None:
    import pandas as pd

    uri, client, parent = sqlite_registry(tmp_path)
    checkpoint = tiny_checkpoint(tmp_path)
    registry.register_checkpoint(
        client,
        TrackingConfig(registered_model="sphere-pyfunc", alias="champion"),
        parent_run_id=parent,
        checkpoint_dir=checkpoint,
        key={"sweep.digest": "d"},
        tags={},
    )
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    sampler = mlflow.pyfunc.load_model("models:/sphere-pyfunc@champion")
    request = pd.DataFrame({"label": [0, 1, -1], "steps": 2, "cfg": 1.5, "seed": 7})
    images = sampler.predict(request)
    size = CONFIG.model.image_size
    assert images.shape == (3, CONFIG.model.channels, size, size) and 0 <= images.min() <= images.max() <= 1
    np.testing.assert_array_equal(images, sampler.predict(request))  # the seed fixes the samples
    with pytest.raises(ConfigError, match="steps: one value per request"):
        sampler.predict(pd.DataFrame({"label": [0, 1], "steps": [1, 2]}))


def test_register_checkpoint_sets_the_alias_and_resolves_from_the_registry(tmp_path: Path) -> None:
    uri, client, parent = sqlite_registry(tmp_path)
    checkpoint = tiny_checkpoint(tmp_path)
    settings = TrackingConfig(registered_model="sphere-test", alias="champion")
    key, lineage = {"sweep.digest": "d1"}, {"sweep.trial": "t1", "data.digest": "abc"}
    version = registry.register_checkpoint(
        client, settings, parent_run_id=parent, checkpoint_dir=checkpoint, key=key, tags=lineage
    )
    assert client.get_model_version_by_alias("sphere-test", "champion").version == version.version
    assert client.get_model_version("sphere-test", version.version).tags == {**key, **lineage}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    local = Path(
        mlflow.artifacts.download_artifacts("models:/sphere-test@champion", dst_path=str(tmp_path / "dl"))
    )
    assert (local / "MLmodel").exists()  # an MLflow pyfunc model, the checkpoint unchanged inside it
    assert sorted(p.name for p in checkpoint_dir(local).iterdir()) == sorted(
        p.name for p in checkpoint.iterdir()
    )
    again = registry.register_checkpoint(
        client, settings, parent_run_id=parent, checkpoint_dir=checkpoint, key=key, tags=lineage
    )
    assert again.version == version.version  # a resumed sweep re-points the alias, no duplicate version
    other = registry.register_checkpoint(
        client,
        settings,
        parent_run_id=parent,
        checkpoint_dir=checkpoint,
        key={"sweep.digest": "d2"},
        tags=lineage,
    )
    assert int(other.version) == int(version.version) + 1
    # Neither version carries a protocol fingerprint: registered beside, the alias is not moved blindly.
    assert client.get_model_version_by_alias("sphere-test", "champion").version == version.version
    stages = {v.current_stage for v in client.search_model_versions("name = 'sphere-test'")}
    assert stages == {"None"}  # aliases only, never stages


FD, OTHER = "a" * 64, "b" * 64


def test_promotion_refuses_mismatched_fingerprints() -> None:
    better_elsewhere = Score("fd_clf_1step", 10.0, "min", OTHER)
    promote, why = promotion(better_elsewhere, Score("fd_clf_1step", 50.0, "min", FD), has_incumbent=True)
    assert not promote and "protocols differ" in why and OTHER[:12] in why and FD[:12] in why
    different_metric = Score("fd_clf_4step", 10.0, "min", FD)
    assert not promotion(different_metric, Score("fd_clf_1step", 50.0, "min", FD), has_incumbent=True)[0]


def test_promotion_without_fingerprints_keeps_the_alias_unless_there_is_no_holder() -> None:
    loss = Score("loss", 0.1, "min", None)
    assert promotion(loss, None, has_incumbent=False) == (True, "no version holds the alias yet")
    promote, why = promotion(loss, Score("loss", 0.5, "min", None), has_incumbent=True)
    assert not promote and "candidate has no protocol fingerprint" in why
    promote, why = promotion(Score("fd_clf_1step", 1.0, "min", FD), None, has_incumbent=True)
    assert not promote and "alias holder has no protocol fingerprint" in why


def test_promotion_under_one_protocol_follows_the_metric_direction() -> None:
    holder = Score("fd_clf_1step", 20.0, "min", FD)
    assert promotion(Score("fd_clf_1step", 19.0, "min", FD), holder, has_incumbent=True)[0]
    assert not promotion(Score("fd_clf_1step", 20.0, "min", FD), holder, has_incumbent=True)[0]  # a tie keeps
    assert promotion(Score("recall", 0.9, "max", FD), Score("recall", 0.8, "max", FD), has_incumbent=True)[0]


def test_registration_tags_the_score_and_moves_the_alias_only_under_one_protocol(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, client, parent = sqlite_registry(tmp_path)
    checkpoint = tiny_checkpoint(tmp_path)
    settings = TrackingConfig(registered_model="sphere-fp", alias="champion")

    def register(digest: str, score: Score) -> str:
        return registry.register_checkpoint(
            client,
            settings,
            parent_run_id=parent,
            checkpoint_dir=checkpoint,
            key={"sweep.digest": digest},
            tags={},
            score=score,
        ).version

    first = register("d1", Score("fd_clf_1step", 30.0, "min", FD))
    tags = client.get_model_version("sphere-fp", first).tags
    assert (
        tags["metric.fingerprint"] == FD
        and tags["metric.value"] == "30"
        and tags["metric.name"] == "fd_clf_1step"
    )
    register("d2", Score("fd_clf_1step", 5.0, "min", OTHER))  # better, but under another protocol
    assert client.get_model_version_by_alias("sphere-fp", "champion").version == first
    assert "stays on version" in capsys.readouterr().out
    better = register("d3", Score("fd_clf_1step", 20.0, "min", FD))
    assert client.get_model_version_by_alias("sphere-fp", "champion").version == better


def test_a_damaged_checkpoint_is_never_registered(tmp_path: Path) -> None:
    _, client, parent = sqlite_registry(tmp_path)
    checkpoint = tiny_checkpoint(tmp_path)
    (checkpoint / "model.pt").write_bytes((checkpoint / "model.pt").read_bytes()[:1000])
    settings = TrackingConfig(registered_model="sphere-damaged", alias="champion")
    with pytest.raises(CorruptCheckpoint, match=r"model\.pt is damaged: 1,000 bytes, expected"):
        registry.register_checkpoint(
            client, settings, parent_run_id=parent, checkpoint_dir=checkpoint, key={"d": "1"}, tags={}
        )
    assert client.search_model_versions("name = 'sphere-damaged'") == []
    assert client.list_artifacts(parent) == []  # refused before the upload


def test_an_upload_that_arrives_short_is_never_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client, parent = sqlite_registry(tmp_path)
    real_log_artifacts = client.log_artifacts

    def lossy_log_artifacts(run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        real_log_artifacts(run_id, local_dir, artifact_path)
        stored = next((tmp_path / "artifacts").rglob("ema.pt"))  # the store loses the tail of one file
        stored.write_bytes(stored.read_bytes()[:-10])

    monkeypatch.setattr(client, "log_artifacts", lossy_log_artifacts)
    settings = TrackingConfig(registered_model="sphere-short", alias="champion")
    with pytest.raises(CorruptCheckpoint, match=r"ema\.pt: [\d,]+ bytes after upload, expected"):
        registry.register_checkpoint(
            client,
            settings,
            parent_run_id=parent,
            checkpoint_dir=tiny_checkpoint(tmp_path),
            key={"d": "1"},
            tags={},
        )
    assert client.search_model_versions("name = 'sphere-short'") == []


def test_a_version_number_names_the_model_as_the_alias_does(tmp_path: Path) -> None:
    uri, client, parent = sqlite_registry(tmp_path)
    mlflow.set_tracking_uri(uri)  # as on the cluster: one server is tracking and registry
    mlflow.set_registry_uri(uri)
    version = registry.register_checkpoint(
        client,
        TrackingConfig(registered_model="sphere-v", alias="champion"),
        parent_run_id=parent,
        checkpoint_dir=tiny_checkpoint(tmp_path),
        key={"d": "1"},
        tags={"source.run_id": parent},
    )
    by_alias, by_version = (
        load_frozen(client, f"models:/sphere-v{suffix}", uri)
        for suffix in ("@champion", f"/{version.version}")
    )
    assert by_version.version == by_alias.version == version.version
    assert by_version.source_run_id == by_alias.source_run_id == parent
    with pytest.raises(ConfigError, match="models:/sphere-v/7 cannot be resolved"):
        load_registered("models:/sphere-v/7", uri)
