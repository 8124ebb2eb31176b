"""Training: the framework-free loop (loop.py), Ray Train's per-worker function around it (worker.py), what
reaches the workers (worker_env.py), Ray's checkpoint filesystem (checkpoint_storage.py) and the sphere
diagnostics of each proxy eval (diagnostics.py)."""
