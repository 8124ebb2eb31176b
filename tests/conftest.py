"""Test-run-wide fixtures live in tests/fixtures/ and are registered here."""

import orchestrator  # noqa: F401  (MLflow's telemetry off before any test module imports mlflow)

pytest_plugins = [
    "tests.fixtures.image",
    "tests.fixtures.inception",
    "tests.fixtures.perceptual",
    "tests.fixtures.s3",
    "tests.fixtures.services",
]
