"""MLflow: trial and parent runs with their metric sinks (runs.py), the registry, which registers and loads
models (registry.py, mlflow_model.py), and the reports logged on parent runs (pareto.py)."""
