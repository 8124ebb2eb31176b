"""Pinned, offline image metrics: FD/KID/IS/precision-recall in a frozen classifier's (or Inception's)
features, each value returned with its protocol fingerprint and real-vs-real floor.

The names below load on first use, so `python -m orchestrator.evaluation` parses its flags before torch
and torchmetrics are imported."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.evaluation.features import FeatureExtractor, load_classifier, load_inception
    from orchestrator.evaluation.protocol import (
        MetricResult,
        Protocol,
        ProtocolMismatch,
        comparable,
        evaluate_reconstructions,
        evaluate_samples,
        protocol_for,
        require_comparable,
    )

__all__ = [
    "FeatureExtractor",
    "MetricResult",
    "Protocol",
    "ProtocolMismatch",
    "comparable",
    "evaluate_reconstructions",
    "evaluate_samples",
    "load_classifier",
    "load_inception",
    "protocol_for",
    "require_comparable",
]
_FROM_FEATURES = {"FeatureExtractor", "load_classifier", "load_inception"}  # the others: from protocol


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = "features" if name in _FROM_FEATURES else "protocol"
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
