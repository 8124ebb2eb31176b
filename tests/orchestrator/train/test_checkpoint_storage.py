"""Ray's checkpoint filesystem: retries that survive the trip to every node, and no credential in it."""

from __future__ import annotations

import pickle
import socket
import time

import pytest

from orchestrator.train.checkpoint_storage import pyarrow_attempts, ray_storage


def test_the_filesystem_travels_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "canary-key")
    path, filesystem = ray_storage("s3://bucket/ray-results", 120)
    assert path == "bucket/ray-results" and filesystem is not None
    assert b"canary" not in pickle.dumps(filesystem)  # it travels to every worker
    assert pyarrow_attempts(120) == 13 and pyarrow_attempts(0) == 3  # 0.025 x (2^13 - 1) = 205 s >= 120 s
    assert ray_storage("/shared/ray-results", 120) == ("/shared/ray-results", None)


def test_a_pickled_filesystem_still_retries_for_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow's own S3FileSystem forgets its retry strategy in a pickle: Ray's workers then gave up on a
    checkpoint write ~2 s into a store outage."""
    with socket.socket() as probe:  # a loopback port nobody listens on: every attempt is refused at once
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    _, filesystem = ray_storage("s3://bucket/ray-results", 6)
    travelled = pickle.loads(pickle.dumps(filesystem))
    started = time.monotonic()
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        travelled.open_output_stream("bucket/ray-results/x.json").write(b"{}")
    assert time.monotonic() - started >= 5.0  # the waits of pyarrow_attempts(6) add up to 6.4 s
