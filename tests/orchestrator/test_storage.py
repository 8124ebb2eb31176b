"""Bounded retries of lost connections (orchestrator/storage.py); the shard reader riding out a real outage
is in tests/orchestrator/data/test_pipeline.py."""

from __future__ import annotations

from collections.abc import Iterator

import botocore.exceptions
import pytest

from orchestrator.storage import StorageUnavailable, is_transient, pyarrow_attempts, ray_storage, retrying


def _refused() -> Exception:
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError as cause:
        try:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://x") from cause
        except botocore.exceptions.EndpointConnectionError as exc:
            return exc


def test_connection_errors_are_transient_anywhere_in_the_chain_and_nothing_else_is() -> None:
    assert is_transient(_refused())
    try:
        raise RuntimeError("wrapped") from _refused()
    except RuntimeError as wrapped:
        assert is_transient(wrapped)
    assert not is_transient(FileNotFoundError("s3://b/k"))
    assert not is_transient(PermissionError("AccessDenied"))
    assert not is_transient(ValueError("bad tar"))


def test_retrying_recovers_within_its_budget_and_then_names_the_url() -> None:
    slept: list[float] = []
    outcomes: Iterator[Exception | None] = iter([_refused(), _refused(), None])

    def flaky() -> str:
        failure = next(outcomes)
        if failure is not None:
            raise failure
        return "ok"

    assert retrying(flaky, url="s3://b/k", budget_s=60, sleep=slept.append) == "ok"
    assert slept == [0.5, 1.0]  # exponential backoff

    def down() -> None:
        raise _refused()

    with pytest.raises(
        StorageUnavailable, match=r"^s3://b/k: storage unreachable for 0 s \(EndpointConnection"
    ):
        retrying(down, url="s3://b/k", budget_s=0.0, sleep=slept.append)
    with pytest.raises(FileNotFoundError):  # not transient: no retry at all
        retrying(
            lambda: (_ for _ in ()).throw(FileNotFoundError("k")), url="u", budget_s=60, sleep=slept.append
        )


def test_ray_storage_gives_s3_a_retrying_filesystem_without_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pickle

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "canary-key")
    path, filesystem = ray_storage("s3://bucket/ray-results", 120)
    assert path == "bucket/ray-results" and filesystem is not None
    assert b"canary" not in pickle.dumps(filesystem)  # it travels to every worker
    assert pyarrow_attempts(120) == 13 and pyarrow_attempts(0) == 3  # 0.025 x (2^13 - 1) = 205 s >= 120 s
    assert ray_storage("/shared/ray-results", 120) == ("/shared/ray-results", None)
