"""Where an accepted connection was really going, and who made it: the kernel's record.

The cgroup/connect programs recorded the original broker address and the
caller under the client's address and port; this module turns that record into
the proxy's terms. Only `appliance.steering` talks to the kernel.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Callable, Protocol


@dataclass(frozen=True, slots=True)
class OriginalDestination:
    broker_host: str
    broker_port: int
    client_host: str
    client_port: int
    cgroup_id: int
    enrolled_cgroup_id: int
    pid: int
    tgid: int
    uid: int
    gid: int
    comm: str

    @property
    def broker_address(self) -> str:
        return _address(self.broker_host, self.broker_port)

    @property
    def client_address(self) -> str:
        return _address(self.client_host, self.client_port)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


Lookup = Callable[[int, str, int], "OriginalDestination | None"]


class _TakesConnections(Protocol):
    def take_connection(self, family: int, peer_host: str, peer_port: int): ...


def kernel_lookup(steering: _TakesConnections) -> Lookup:
    """A lookup that consumes the kernel's record for an accepted peer (one use per connection)."""

    def lookup(family: int, host: str, port: int) -> OriginalDestination | None:
        # An IPv4 client accepted on a dual-stack socket shows as ::ffff:a.b.c.d.
        if family == socket.AF_INET6 and host.startswith("::ffff:") and "." in host:
            family, host = socket.AF_INET, host[7:]
        record = steering.take_connection(4 if family == socket.AF_INET else 6, host, port)
        if record is None:
            return None
        return OriginalDestination(
            broker_host=record.broker_host, broker_port=record.broker_port, client_host=host, client_port=port,
            cgroup_id=record.cgroup_id, enrolled_cgroup_id=record.enrolled_cgroup_id, pid=record.pid,
            tgid=record.tgid, uid=record.uid, gid=record.gid, comm=record.comm,
        )

    return lookup
