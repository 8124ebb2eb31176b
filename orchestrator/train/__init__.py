"""Training: the framework-free loop (loop.py), Ray Train's per-worker function around it (worker.py), what
reaches the workers (worker_env.py) and Ray's checkpoint filesystem (checkpoint_storage.py). What the worker
evaluates at eval cadence is orchestrator/evaluation/proxy.py's."""
