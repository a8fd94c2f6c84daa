"""Where an accepted connection was really going, and who made it: the kernel's record.

The cgroup/connect programs recorded the original broker address and the
caller; sock_ops filed that record under the connection exactly as the proxy's
accepted socket sees it (peer, local address, network namespace cookie). This
module takes it with those three and turns it into the proxy's terms. Only `appliance.steering` talks to the kernel.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Callable, Protocol

from appliance.identity.netns import cookie_of


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
    netns_cookie: int = 0  # the network namespace the workload connected from (the accepted socket's)

    @property
    def broker_address(self) -> str:
        return _address(self.broker_host, self.broker_port)

    @property
    def client_address(self) -> str:
        return _address(self.client_host, self.client_port)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


Lookup = Callable[[socket.socket], "OriginalDestination | None"]
# A record normally waits microseconds between the handshake and the accept;
# one this old is not handed to anyone (defence in depth: the kernel already
# removes a record when its client socket closes).
DEFAULT_MAX_AGE_S = 10.0


class _TakesConnections(Protocol):
    def take_connection(self, client: tuple[str, int], proxy: tuple[str, int], netns_cookie: int,
                        max_age_s: float | None = None): ...


def _unmapped(address: tuple) -> tuple[str, int]:
    """An IPv4 client accepted on a dual-stack socket shows as ::ffff:a.b.c.d: it is the IPv4 address."""
    host, port = address[0], address[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


def kernel_lookup(steering: _TakesConnections, *, max_age_s: float = DEFAULT_MAX_AGE_S) -> Lookup:
    """A lookup that consumes the kernel's record for an accepted socket (one use per connection).

    The record is keyed by the whole connection as the accepted socket sees
    it: peer, local address and network namespace, so it cannot be claimed
    by another socket that merely reuses the client's address and port.
    """

    def lookup(sock: socket.socket) -> OriginalDestination | None:
        try:
            client, proxy = _unmapped(sock.getpeername()), _unmapped(sock.getsockname())
            cookie = cookie_of(sock)
        except OSError:  # the client already reset the connection
            return None
        record = steering.take_connection(client, proxy, cookie, max_age_s)
        if record is None:
            return None
        return OriginalDestination(
            broker_host=record.broker_host, broker_port=record.broker_port, client_host=client[0],
            client_port=client[1], cgroup_id=record.cgroup_id, enrolled_cgroup_id=record.enrolled_cgroup_id,
            pid=record.pid, tgid=record.tgid, uid=record.uid, gid=record.gid, comm=record.comm, netns_cookie=cookie,
        )

    return lookup
