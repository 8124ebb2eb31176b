"""The shared MLflow of infra/kuberay/mlflow.yaml, started as its Deployment starts it (its command, its auth
config, its environment), with the PostgreSQL and S3 URIs swapped for a local SQLite file and folder:
anonymous requests are refused, the admin creates the cluster's user, and that user logs a run."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.services import free_ports

REPO = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "admin-pw-" + os.urandom(6).hex()
USER, USER_PASSWORD = "sphere", "sphere-pw-" + os.urandom(6).hex()


def _documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((REPO / "infra/kuberay/mlflow.yaml").read_text())}


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError:  # not listening yet
        return 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    docs, state = _documents(), tmp_path_factory.mktemp("mlflow-auth")
    database = f"sqlite:///{state}/mlflow.db"
    ini = docs["ConfigMap"]["data"]["basic_auth.ini"].replace(
        "postgresql://mlflow@YOUR-POSTGRES-HOST:5432/mlflow", database
    )
    (state / "basic_auth.ini").write_text(ini)
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    (port,) = free_ports(1)
    local = {
        "--backend-store-uri": database,
        "--artifacts-destination": str(state / "artifacts"),
        "--host": "127.0.0.1",
        "--port": str(port),
        "--workers": "1",
    }
    command = [Path(sys.executable).parent / "mlflow"] + [
        f"{arg.split('=')[0]}={local[arg.split('=')[0]]}" if arg.split("=")[0] in local else arg
        for arg in container["command"][1:]
    ]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}  # not the pod IP
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(state / "basic_auth.ini")  # the ConfigMap's mount, here
    secret = {
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex(),
    }
    log = (state / "server.log").open("w")
    process = subprocess.Popen(
        [str(arg) for arg in command], cwd=state, env=os.environ | env | secret, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while _status(f"{url}/health") != 200:
            assert process.poll() is None, (state / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not answer /health within 90 s"
            time.sleep(0.5)
        yield url, state / "server.log"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_the_shared_server_refuses_anonymous_requests_and_serves_its_users(
    server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import mlflow.server

    url, log = server
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(search) == 401
    assert _status(search, ("admin", "wrong")) == 401
    assert _status(search, ("admin", ADMIN_PASSWORD)) == 200

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    mlflow.server.get_app_client("basic-auth", tracking_uri=url).create_user(USER, USER_PASSWORD)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USER_PASSWORD)
    client = mlflow.MlflowClient(tracking_uri=url)
    run = client.create_run(client.create_experiment("sphere-auth-check"))
    client.log_metric(run.info.run_id, "fd_clf_1step", 47.0, step=1)
    assert client.get_run(run.info.run_id).data.metrics == {"fd_clf_1step": 47.0}
    assert ADMIN_PASSWORD not in log.read_text() and USER_PASSWORD not in log.read_text()
