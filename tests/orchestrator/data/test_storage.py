"""Bounded retries of lost connections (orchestrator/data/storage.py); the shard reader riding out a real
outage is in tests/orchestrator/data/test_pipeline.py."""

from __future__ import annotations

from collections.abc import Iterator

import botocore.exceptions
import pytest

from orchestrator.data.storage import StorageUnavailable, is_transient, retrying


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
