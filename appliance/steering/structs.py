"""The structs shared with the kernel: ctypes mirrors of bpf/appliance.h and their Python values.

No bcc here: the proxy's pure layers can import `ConnRecord` and friends
without loading a compiler.

Each mirror has the same field order and types as its C struct. The loader
compiles the programs with `-DAPPLIANCE_SIZEOF_<NAME>=<ctypes size>` for every
mirror (see `size_flags`), and bpf/steering.c static-asserts each one, so a
change on one side only fails the compile instead of silently corrupting maps.

Addresses are stored as the bytes the wire carries (network order, IPv4 in the
first word); ports in host order; an IPv4-mapped IPv6 address is stored as
IPv4, matching what the kernel side does.

Also here: the prefixes of the kernel's `struct bpf_prog_info` and
`struct bpf_map_info` (uapi linux/bpf.h) that the loader reads to find
attached programs and pinned maps.
"""

from __future__ import annotations

import ctypes as ct
import enum
import ipaddress
import socket
from dataclasses import dataclass

COMM_LEN = 16


class CgroupKind(enum.IntEnum):
    """Values of the `cgroups` map (APPLIANCE_ENROLLED, APPLIANCE_EXEMPT)."""

    ENROLLED = 1
    EXEMPT = 2


class BrokerState(enum.IntEnum):
    """Values of the `brokers` map (APPLIANCE_BROKER_UP, _DOWN, _OUTSIDE)."""

    UP = 1
    DOWN = 2
    OUTSIDE = 3  # named by a steered broker outside discovery.allowed_networks: enrolled connects refused


class RefusalReason(enum.IntEnum):
    """struct appliance_refusal.reason (APPLIANCE_REFUSED_*)."""

    UNENROLLED = 1
    NO_PROXY = 2
    BROKER_DOWN = 3
    FOREIGN_NETNS = 4
    NO_RECORD = 5
    OUTSIDE = 6


# Slots of the `health` array (APPLIANCE_HEALTH_*), in order, by the names
# `appliance status` shows.
HEALTH_SLOTS = (
    "ringbuf_drops",         # refusal events lost: ring buffer full
    "storage_failures",      # socket storage not created: the connect was refused
    "handoff_failures",      # hand-off record not written to conn_by_peer
    "counter_failures",      # a per-cgroup counter entry not created
    "close_hook_failures",   # close notification not armed on a steered socket
    "retval_failures",       # ECONNREFUSED not set: the caller saw EPERM instead
    "no_listener_drops",     # SYNs to the proxy refused: no proxy socket (appliance down)
    "assign_failures",       # SYNs to the proxy refused: bpf_sk_assign failed
)


@dataclass(frozen=True, slots=True)
class ConnRecord:
    """Who made a steered connection, and the broker it asked for (struct appliance_conn)."""

    family: int
    broker_host: str
    broker_port: int
    cgroup_id: int
    enrolled_cgroup_id: int
    pid: int  # thread id
    tgid: int  # process id
    uid: int
    gid: int
    comm: str
    connected_ns: int = 0  # CLOCK_MONOTONIC at connect, as time.monotonic_ns()
    netns_cookie: int = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    """A connect to a steered broker refused in the kernel (struct appliance_refusal)."""

    cgroup_id: int
    pid: int
    tgid: int
    uid: int
    comm: str
    family: int
    dst_host: str
    dst_port: int
    reason: RefusalReason = RefusalReason.UNENROLLED


@dataclass(frozen=True, slots=True)
class CgroupCounters:
    steered: int
    refused: int


class Addr(ct.Structure):
    """struct appliance_addr"""

    _fields_ = [("addr", ct.c_uint32 * 4), ("port", ct.c_uint16), ("family", ct.c_uint16)]


class PeerKey(ct.Structure):
    """struct appliance_peer_key"""

    _fields_ = [("client", Addr), ("proxy", Addr), ("netns_cookie", ct.c_uint64)]


class Conn(ct.Structure):
    """struct appliance_conn"""

    _fields_ = [
        ("cgroup_id", ct.c_uint64),
        ("enrolled_cgroup_id", ct.c_uint64),
        ("connected_ns", ct.c_uint64),
        ("netns_cookie", ct.c_uint64),
        ("broker", Addr),
        ("pid", ct.c_uint32),
        ("tgid", ct.c_uint32),
        ("uid", ct.c_uint32),
        ("gid", ct.c_uint32),
        ("comm", ct.c_char * COMM_LEN),
        ("_pad", ct.c_uint32),
    ]


class Sock(ct.Structure):
    """struct appliance_sock (only the kernel reads it; mirrored for the size check)"""

    _fields_ = [("conn", Conn), ("peer", PeerKey), ("state", ct.c_uint32), ("_pad", ct.c_uint32)]


class RefusalEvent(ct.Structure):
    """struct appliance_refusal"""

    _fields_ = [
        ("cgroup_id", ct.c_uint64),
        ("dst", Addr),
        ("pid", ct.c_uint32),
        ("tgid", ct.c_uint32),
        ("uid", ct.c_uint32),
        ("comm", ct.c_char * COMM_LEN),
        ("reason", ct.c_uint32),
        ("_pad", ct.c_uint32),
    ]


class Counters(ct.Structure):
    """struct appliance_counters"""

    _fields_ = [("steered", ct.c_uint64), ("refused", ct.c_uint64)]


class Config(ct.Structure):
    """struct appliance_config"""

    _fields_ = [
        ("proxy_ip4", ct.c_uint32),
        ("proxy_ip6", ct.c_uint32 * 4),
        ("proxy_port", ct.c_uint16),
        ("refuse_unenrolled", ct.c_uint8),
        ("_pad", ct.c_uint8),
        ("netns_cookie", ct.c_uint64),
    ]


MIRRORS: dict[str, type[ct.Structure]] = {
    "ADDR": Addr,
    "PEER_KEY": PeerKey,
    "CONN": Conn,
    "SOCK": Sock,
    "REFUSAL": RefusalEvent,
    "COUNTERS": Counters,
    "CONFIG": Config,
}


def size_flags() -> list[str]:
    """The -D flags steering.c static-asserts its struct sizes against."""
    return [f"-DAPPLIANCE_SIZEOF_{name}={ct.sizeof(cls)}" for name, cls in MIRRORS.items()]


def parse_host(host: str) -> tuple[int, bytes]:
    """(family, packed address) of a literal IPv4/IPv6 address; IPv4-mapped becomes IPv4."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise ValueError(
            f"{host!r} is not an IP address literal (steering works on addresses; resolve host names first)"
        ) from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    return family, ip.packed


def make_addr(host: str, port: int) -> Addr:
    if not 0 < port < 65536:
        raise ValueError(f"port {port} of {host} is out of range (1-65535)")
    family, packed = parse_host(host)
    a = Addr()
    a.addr = (ct.c_uint32 * 4).from_buffer_copy(packed.ljust(16, b"\0"))
    a.port = port
    a.family = family
    return a


_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def peer_key(client: tuple[str, int], proxy: tuple[str, int], netns_cookie: int) -> PeerKey:
    """The `conn_by_peer` key of an accepted socket: its peer, its local address, its netns cookie."""
    return PeerKey(endpoint(*client), endpoint(*proxy), netns_cookie)


def endpoint(host: str, port: int) -> Addr:
    """One end of an accepted connection as an Addr; on the proxy's hot path, so no ipaddress.

    The host string decides the family, and an IPv4-mapped IPv6 address (a
    dual-stack listener's view of an IPv4 client) is the IPv4 address it is.
    """
    key = Addr(port=port, family=socket.AF_INET)
    if ":" not in host:
        ct.memmove(key.addr, socket.inet_pton(socket.AF_INET, host), 4)
        return key
    packed = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
    if packed[:12] == _V4_MAPPED:
        ct.memmove(key.addr, packed[12:], 4)
    else:
        key.family = socket.AF_INET6
        ct.memmove(key.addr, packed, 16)
    return key


def addr_host(a: Addr) -> str:
    raw = bytes(a.addr)
    if a.family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def packed_word(host: str) -> int:
    """An IPv4 address as the u32 whose memory holds its network-order bytes."""
    return ct.c_uint32.from_buffer_copy(socket.inet_pton(socket.AF_INET, host)).value


def packed_words6(host: str) -> ct.Array:
    return (ct.c_uint32 * 4).from_buffer_copy(socket.inet_pton(socket.AF_INET6, host))


def conn_record(c: Conn) -> ConnRecord:
    b = c.broker
    return ConnRecord(b.family, addr_host(b), b.port, c.cgroup_id, c.enrolled_cgroup_id, c.pid, c.tgid, c.uid, c.gid,
                      c.comm.decode(errors="replace"), c.connected_ns, c.netns_cookie)


def refusal(e: RefusalEvent) -> Refusal:
    try:
        reason = RefusalReason(e.reason)
    except ValueError:  # a newer kernel side than this mirror: still a refusal
        reason = RefusalReason.UNENROLLED
    return Refusal(e.cgroup_id, e.pid, e.tgid, e.uid, e.comm.decode(errors="replace"), e.dst.family,
                   addr_host(e.dst), e.dst.port, reason)


# --- kernel uapi (linux/bpf.h), prefixes that the loader reads -----------------


class ProgInfo(ct.Structure):
    """The start of struct bpf_prog_info (the kernel fills as much as it is given)."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("tag", ct.c_uint8 * 8),
        ("jited_prog_len", ct.c_uint32),
        ("xlated_prog_len", ct.c_uint32),
        ("jited_prog_insns", ct.c_uint64),
        ("xlated_prog_insns", ct.c_uint64),
        ("load_time", ct.c_uint64),
        ("created_by_uid", ct.c_uint32),
        ("nr_map_ids", ct.c_uint32),
        ("map_ids", ct.c_uint64),
        ("name", ct.c_char * 16),
    ]


class MapInfo(ct.Structure):
    """The start of struct bpf_map_info."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16),
    ]
