"""RAY_START_HOOK of the loopback cluster's worker (loopback.py): its Ray listens on 127.0.0.1 only.

Ray 2.60's `ray start --address` refuses to start a worker node under RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and
without it turns --node-ip-address=127.0.0.1 into the machine's routable address, on which (and on every
interface) the raylet, object manager and agents then listen. `ray start` calls this hook with its parameters
after that rewrite and before it starts anything; it puts the address given back. Ray's services bind
127.0.0.1 only when that is the node's IP. Mounted into the containers by the cluster config's file_mounts.
"""

from typing import Any


def keep_loopback_node_ip(ray_params: Any, head: bool) -> None:
    if head:
        return  # the head starts under RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which keeps 127.0.0.1 itself
    rewritten = ray_params.node_ip_address
    ray_params.node_ip_address = "127.0.0.1"
    if ray_params.node_name == rewritten:
        ray_params.node_name = ray_params.node_ip_address
