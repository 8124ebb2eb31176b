"""sphere_core is pure PyTorch + numpy + stdlib: importing all of it pulls in no orchestrator-side package,
and no module reads the environment."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import sphere_core

FORBIDDEN = (
    "ray",
    "mlflow",
    "fsspec",
    "s3fs",
    "webdataset",
    "yaml",
    "PIL",
    "orchestrator",
    "sklearn",
    "mlxtend",
)
PACKAGE_DIR = Path(sphere_core.__file__).parent

PROBE = """
import importlib, json, pkgutil, sys
import sphere_core
names = sorted(m.name for m in pkgutil.walk_packages(sphere_core.__path__, "sphere_core."))
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_importing_every_submodule_loads_no_forbidden_package() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"sphere_core.losses", "sphere_core.checkpoint", "sphere_core.perceptual"} <= set(
        report["modules"]
    )
    assert sorted(set(FORBIDDEN) & set(report["loaded"])) == []


def test_no_module_reads_the_environment() -> None:
    offenders = []
    for path in PACKAGE_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.Attribute):
                names = [node.attr]
            if set(names) & {"environ", "environb", "getenv"}:
                offenders.append(f"{path.relative_to(PACKAGE_DIR)}:{getattr(node, 'lineno', 0)}")
    assert offenders == []
