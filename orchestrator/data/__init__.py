"""The data plane: build, verify and stream webdataset shards on any fsspec URL (s3://, file://, memory://).

Import the submodules directly (`orchestrator.data.pipeline.ShardStream`,
`orchestrator.data.shards.read_manifest`): this package's own import pulls in nothing heavy.
"""
