"""What reaches Ray's workers through runtime envs (orchestrator/train/worker_env.py): never credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import QUIET_ENV
from orchestrator.train.worker_env import (
    TRAIN_WORKER_MALLOC_CONF,
    keep_credentials_out_of_trial_runtime_envs,
    preloaded_allocator,
    worker_env,
)
from sphere_core.config import ConfigError


def test_worker_env_forwards_the_endpoint_never_a_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "canary")
    env = worker_env("http://127.0.0.1:5000")
    assert (
        env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
        and env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    )
    assert "canary" not in env.values() and QUIET_ENV.items() <= env.items()
    with pytest.raises(ConfigError, match=r"tracking\.uri: holds a password"):
        worker_env("http://me:canary@127.0.0.1:5000")


def test_tune_copies_no_credential_into_a_trial_actors_runtime_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.tune.execution import class_cache

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "canary")
    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", set(class_cache.ENV_VARS_TO_PROPAGATE))
    captured: dict[str, object] = {}
    monkeypatch.setattr(
        class_cache.ray, "remote", lambda **options: captured.update(options) or (lambda cls: cls)
    )
    class_cache._ActorClassCache().get(type("Before", (), {}))
    assert "canary" in str(captured["runtime_env"])  # Ray's own behaviour, which this guards against
    keep_credentials_out_of_trial_runtime_envs()
    class_cache._ActorClassCache().get(type("After", (), {}))
    assert "canary" not in str(captured["runtime_env"])


def test_train_workers_keep_freed_pages_where_jemalloc_is_preloaded(tmp_path: Path) -> None:
    assert worker_env("http://127.0.0.1:5000")["MALLOC_CONF"] == TRAIN_WORKER_MALLOC_CONF
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /opt/venv/lib/python3.11/site-packages/ray/core/libjemalloc.so")
    assert preloaded_allocator(maps) == "jemalloc"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert preloaded_allocator(maps) == "system"
    assert preloaded_allocator(tmp_path / "absent") == "unknown"
