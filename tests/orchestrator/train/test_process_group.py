import shutil
import socket
import subprocess
import sys

import pytest

from orchestrator.train.process_group import interface_of

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="interfaces are looked up with Linux's ioctl")


@linux_only
def test_the_loopback_address_is_on_the_loopback_interface() -> None:
    assert interface_of("127.0.0.1") == "lo"


@linux_only
@pytest.mark.skipif(shutil.which("ip") is None, reason="needs `ip` (iproute2) to read the addresses apart")
def test_each_interfaces_ipv4_address_names_that_interface() -> None:
    shown = {name: ipv4_address_shown_by_ip(name) for _, name in socket.if_nameindex()}
    with_address = {name: address for name, address in shown.items() if address is not None}
    assert "lo" in with_address  # what `ip` shows was read: the comparison below can fail
    assert {name: interface_of(address) for name, address in with_address.items()} == {
        name: name for name in with_address
    }


def test_addresses_on_no_interface_and_ipv6_name_none() -> None:
    assert interface_of("198.51.100.77") is None  # TEST-NET-2: on no interface here
    assert interface_of("::1") is None  # the libraries' own defaults apply
    assert interface_of("not-an-address") is None


def ipv4_address_shown_by_ip(name: str) -> str | None:
    shown = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", name], capture_output=True, text=True)
    fields = shown.stdout.split()
    return fields[3].split("/")[0] if "inet" in fields else None
