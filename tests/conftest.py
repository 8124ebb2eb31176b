"""Test-run-wide fixtures live in tests/fixtures/ and are registered here."""

pytest_plugins = [
    "tests.fixtures.image",
    "tests.fixtures.inception",
    "tests.fixtures.perceptual",
    "tests.fixtures.s3",
    "tests.fixtures.services",
]
