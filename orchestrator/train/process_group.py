"""The trial's torch.distributed process group, listening on the Ray node's address only.

Ray Train's own setup (`init_method="env://"`) makes rank 0 start torch's TCPStore, whose server binds every
interface (`*:<port>`, pytorch#173909) even on a cluster whose nodes are 127.0.0.1, and it does so for one
worker as well. Here rank 0 binds the store's socket to its Ray node address and hands it to the TCPStore;
Gloo's and NCCL's own listeners are pinned to the interface holding that address (unless the node's env
already names one); one worker starts no process group at all. The rest (LOCAL_RANK etc., shutdown) is Ray's.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import sys
from datetime import timedelta

import ray
import torch.distributed as dist
from ray.train._internal.base_worker_group import BaseWorkerGroup
from ray.train.backend import BackendConfig
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

SOCKET_IFNAME_ENV = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
_SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address

# Rank 0's listening socket and store server: they live as long as its worker process (the process group
# keeps the store; the socket is owned by the store once handed over, and kept here so it is never collected).
_store_server: tuple[socket.socket, dist.TCPStore] | None = None


class NodeBoundTorchConfig(TorchConfig):
    """TorchConfig whose process group listens on the node's address (its `init_method` is not used)."""

    @property
    def backend_cls(self) -> type[_TorchBackend]:
        return NodeBoundTorchBackend


class NodeBoundTorchBackend(_TorchBackend):
    def on_start(self, worker_group: BaseWorkerGroup, backend_config: BackendConfig) -> None:
        assert isinstance(backend_config, TorchConfig)
        worker_group.execute(_set_torch_distributed_env_vars)
        world_size = len(worker_group)
        if world_size == 1:
            return  # DDP and the collectives are never used by one worker: nothing needs to listen
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus > 0 else "gloo")
        address, port = worker_group.execute_single(0, start_store_server, world_size)
        joined = [
            worker_group.execute_single_async(
                rank,
                join_process_group,
                backend=backend,
                store_address=address,
                store_port=port,
                world_rank=rank,
                world_size=world_size,
                timeout_s=backend_config.timeout_s,
            )
            for rank in range(world_size)
        ]
        ray.get(joined)  # type: ignore[arg-type]  # Ray's stubs name two ObjectRef classes


def start_store_server(world_size: int) -> tuple[str, int]:
    """Rank 0: a TCPStore server on this node's Ray address and a free port; returns (address, port)."""
    global _store_server
    address = ray.util.get_node_ip_address()
    family = socket.getaddrinfo(address, 0, type=socket.SOCK_STREAM)[0][0]
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((address, 0))
    listener.listen()
    port = listener.getsockname()[1]
    store = dist.TCPStore(
        address, port, world_size, is_master=True, wait_for_workers=False, master_listen_fd=listener.fileno()
    )
    _store_server = (listener, store)
    return address, port


def join_process_group(
    backend: str, store_address: str, store_port: int, world_rank: int, world_size: int, timeout_s: int
) -> None:
    timeout = timedelta(seconds=timeout_s)
    if world_rank == 0:
        assert _store_server is not None, "start_store_server runs on rank 0 first"
        store = _store_server[1]
    else:
        store = dist.TCPStore(store_address, store_port, world_size, is_master=False, timeout=timeout)
    interface = interface_of(ray.util.get_node_ip_address())
    if interface is not None:
        for name in SOCKET_IFNAME_ENV:
            os.environ.setdefault(name, interface)
    dist.init_process_group(
        backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout
    )


def interface_of(address: str) -> str | None:
    """The network interface whose IPv4 address is `address` (None for IPv6 or no match: libraries'
    defaults then apply)."""
    if sys.platform != "linux":  # the ioctl below is Linux's
        return None
    try:
        packed = socket.inet_aton(address)
    except OSError:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue  # down or without an IPv4 address
            if reply[20:24] == packed:
                return name
    return None
