"""bench/gpu_check.py's device table: each CUDA device name gets its own part's dense bf16 peak."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "gpu_check", Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"
)
assert _SPEC is not None and _SPEC.loader is not None
gpu_check = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gpu_check)


@pytest.mark.parametrize(
    ("name", "peak"),
    [  # names as torch.cuda.get_device_name reports them
        ("NVIDIA H100 80GB HBM3", 989.0),  # SXM
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100-PCIE-40GB", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40", 181.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA A10G", 70.0),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_is_the_longest_whole_word_match(name: str, peak: float | None) -> None:
    assert gpu_check.peak_tflops_of(name) == peak
