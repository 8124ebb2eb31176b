"""A throwaway MLflow store per module and a fresh run per test, for the tracking tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowClient]:
    root = tmp_path_factory.mktemp("mlflow")
    yield MlflowClient(f"sqlite:///{root}/mlflow.db")


@pytest.fixture
def run_id(client: MlflowClient, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    exp = client.create_experiment(request.node.name, artifact_location=str(tmp_path / "artifacts"))
    return client.create_run(exp).info.run_id
