"""Cluster-wide actors stay on the sweep driver's node (the head node under `ray job submit`), the one node
whose loss ends the sweep anyway: an actor on a worker node dies with it and keeps an autoscaled node from
scaling down."""

from __future__ import annotations

from typing import Any

import ray
from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
    get_or_create_autoscaling_coordinator,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def on_this_node() -> Any:
    """A hard affinity to the calling process's node."""
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def keep_train_coordinator_on_this_node() -> None:
    """Creates Ray Train's detached AutoscalingCoordinator here, before any trial can. Ray (2.60) creates it
    on the node of the first TrainController that asks, pinned there for good (ray-project/ray#62260, not
    merged): if that worker node dies, the actor can never be placed again, every later resource request
    fails and the GCS spins on the restarts (measured: the multi-node test's surviving trials stalled for
    10 min after a node loss). A coordinator that already exists is left where it is."""
    get_or_create_autoscaling_coordinator()  # named: registered with the GCS before this returns
