"""Pinned, offline image metrics: FD/KID/IS/precision-recall in a frozen classifier's (or Inception's)
features, each value returned with its protocol fingerprint and real-vs-real floor.

Import the submodules directly (`orchestrator.evaluation.protocol.Protocol`,
`orchestrator.evaluation.features.FeatureExtractor`): this package's own import pulls in nothing heavy, so
`python -m orchestrator.evaluation` parses its flags before torch and torchmetrics are imported.
"""
