"""The broker endpoints a relayed answer names, read from its bytes and each checked; pure.

Discovery (`discovery.py`) decides what to do with them. Only Metadata, FindCoordinator and DescribeCluster
answers, and a Produce v10+ answer that carries an error, are read; a Metadata answer's broker count is
checked against the limit before anything is decoded. An endpoint from the wire is hostile input:
`parse_endpoint` says whether it is an IP literal (in its canonical form), a DNS name, or no endpoint and why.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from appliance.kafka import codec

PRODUCE, METADATA, FIND_COORDINATOR, DESCRIBE_CLUSTER = 0, 3, 10, 60
DISCOVERY_APIS = frozenset({METADATA, FIND_COORDINATOR, DESCRIBE_CLUSTER})
# From v10 a Produce answer with NOT_LEADER_OR_FOLLOWER may name the new leaders' endpoints (KIP-951):
# read only when the answer carries an error. (Fetch names them from v16, beyond what the proxy offers.)
PRODUCE_NAMES_LEADERS = 10
MAX_HOST_BYTES = 253
# A host name as DNS spells it: labels of letters, digits and "-", at most 63 bytes each.
_DNS_NAME = re.compile(r"([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?")

Endpoint = tuple[str, int]  # (IP literal in its canonical form, port)


class TooMany(ValueError):
    """An answer declares more brokers than discovery takes from one; found before anything is decoded."""


def metadata_broker_count(frame: bytes, api_version: int) -> int:
    """The broker count a Metadata answer declares, read from the frame without decoding it (brokers is
    the first field after throttle_time): a hostile count is refused before kio builds an object each."""
    offset = codec.response_body_offset(frame, METADATA, api_version) + (4 if api_version >= 3 else 0)
    if api_version >= 9:  # compact array: unsigned varint of count + 1
        value, shift = 0, 0
        for i in range(5):
            if offset + i >= len(frame):
                raise codec.DecodeError(f"Metadata v{api_version} response ends inside its broker count")
            byte = frame[offset + i]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value - 1
            shift += 7
        raise codec.DecodeError(f"Metadata v{api_version} response has a broker count longer than 5 bytes")
    if offset + 4 > len(frame):
        raise codec.DecodeError(f"Metadata v{api_version} response ends inside its broker count")
    return int.from_bytes(frame[offset:offset + 4], "big", signed=True)


@dataclass(frozen=True, slots=True)
class Named:
    """The broker endpoints one answer names, as the broker wrote them. `listing`: a Metadata answer, which
    names every live broker of the listener it was asked on; `cluster_id`: its cluster (Metadata v2+)."""

    endpoints: list[tuple[str, int]]
    listing: bool = False
    cluster_id: str | None = None


def read_named(frame: bytes, api_key: int, api_version: int, limit: int | None = None) -> Named:
    """Every broker the answer names (FindCoordinator entries with an error name none). Raises
    codec.DecodeError for an answer that does not decode, and TooMany when a Metadata answer declares
    more than `limit` brokers."""
    if api_key == METADATA and limit is not None:
        count = metadata_broker_count(frame, api_version)
        if count > limit:
            raise TooMany(f"declares {count} brokers")
    entity = codec.decode_response(frame, api_key, api_version)
    # A hostile broker may send a null array where the schema has none (kio reads it as None): it names nothing.
    if api_key == PRODUCE:
        return Named([(e.host, int(e.port)) for e in entity.node_endpoints or ()])
    if api_key == FIND_COORDINATOR:
        if api_version < 4:
            return Named([(entity.host, int(entity.port))] if int(entity.error_code) == 0 else [])
        return Named([(c.host, int(c.port)) for c in entity.coordinators or () if int(c.error_code) == 0])
    endpoints = [(b.host, int(b.port)) for b in entity.brokers or ()]
    if api_key == METADATA:
        return Named(endpoints, listing=True, cluster_id=getattr(entity, "cluster_id", None))
    return Named(endpoints)


def named_endpoints(frame: bytes, api_key: int, api_version: int, limit: int | None = None) -> list[tuple[str, int]]:
    """(host, port) of every broker the answer names, as the broker wrote them (`read_named`)."""
    return read_named(frame, api_key, api_version, limit).endpoints


def parse_endpoint(host: object, port: object) -> tuple[str, Endpoint | None]:
    """("ip", endpoint) | ("name", (name, port)) | ("invalid", reason) for one endpoint from the wire."""
    if not isinstance(port, int) or not 0 < port < 65536:
        return "invalid", f"port {port!r} is not a port from 1 to 65535"
    if not isinstance(host, str) or not host:
        return "invalid", "an empty host"
    size = len(host.encode("utf-8", "surrogatepass"))
    if size > MAX_HOST_BYTES:
        return "invalid", f"a host of {size} bytes (a host name has at most {MAX_HOST_BYTES})"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not host.isascii() or not _DNS_NAME.fullmatch(host) or host.replace(".", "").isdigit():
            return "invalid", f"host {host[:64]!r} is neither an IP address nor a DNS name"
        return "name", (host.rstrip(".").lower(), port)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return "invalid", f"address {host[:64]!r} names an interface (a scope), which steering cannot match"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified or address.is_multicast:
        return "invalid", f"address {address} is not one a broker can be reached at"
    return "ip", (str(address), port)


def describe(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
