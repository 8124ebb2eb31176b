"""MLflow: trial and parent runs with their metric sinks (runs.py), registering models and moving the alias
(registry.py), saving and loading them (mlflow_model.py), and the reports on parent runs (reports.py, with
the Pareto arithmetic and figures of pareto.py)."""
