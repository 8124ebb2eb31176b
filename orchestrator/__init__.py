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
