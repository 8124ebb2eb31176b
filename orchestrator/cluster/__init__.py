"""What the sweep driver checks and places on the Ray cluster: the preflight (does a trial fit what the
cluster can grow to, is storage shared), one sweep per experiment (sweep_lock.py), and cluster-wide actors
kept on the driver's node (driver_node.py)."""
