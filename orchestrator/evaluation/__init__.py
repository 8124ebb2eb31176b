"""Pinned, offline image metrics: FD/KID/IS/precision-recall in a frozen classifier's (or Inception's)
features, each value returned with its protocol fingerprint and real-vs-real floor."""

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
