"""Ray Train/Tune, MLflow and object storage around sphere_core.

MLflow starts its telemetry client when it is imported, so the settings that keep it quiet are set here, in
every process that imports this package (the CLIs, Tune's trial actors, Train's workers) before any of its
modules imports mlflow; a user's own value of each wins.
"""

import os

QUIET_ENV = {  # telemetry and download progress bars off
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
for _name, _value in QUIET_ENV.items():
    os.environ.setdefault(_name, _value)

# A Ray this process starts itself (no RAY_ADDRESS: `python -m orchestrator.sweep` with no cluster) would
# take the machine's routable address, its GCS, raylet and agents listening on every interface. Ray reads
# this switch when it is imported, hence here: with it, such a Ray stays on 127.0.0.1. A process that joins
# a cluster (RAY_ADDRESS, as every `ray job submit` entrypoint has) is left alone, as is a user's own value.
if "RAY_ADDRESS" not in os.environ:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
