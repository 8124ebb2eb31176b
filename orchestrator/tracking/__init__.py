"""MLflow: trial and parent runs (runs.py), the metric sinks training reports through (sinks.py), registering
models and moving the alias (registry.py), saving and loading them (mlflow_model.py), the reports on parent
runs (reports.py, with the Pareto arithmetic and figures of pareto.py) and sample grids (images.py)."""
