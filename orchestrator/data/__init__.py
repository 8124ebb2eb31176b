"""The data plane: build, verify and stream webdataset shards on any fsspec URL (s3://, file://, memory://).

Import the submodules directly (`orchestrator.data.pipeline.ShardStream`,
`orchestrator.data.shards.read_manifest`): this package's own import pulls in nothing heavy.
"""

# The built-in datasets of orchestrator.data.builtin, named here so that CLIs offer them as choices
# without importing torch (tests/orchestrator/data/test_builtin.py keeps the two in step).
BUILTIN_NAMES = ("digits", "mnist", "fashion-mnist")
