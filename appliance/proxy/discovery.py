"""The rest of a cluster: broker endpoints named in the answers the proxy relays, steered before they are read.

A client that bootstraps from one steered broker learns every other broker
from its Metadata answer (and its coordinator from FindCoordinator, its
cluster from DescribeCluster), and connects to them by those addresses. The
kernel steers only addresses in its `brokers` map, so each endpoint an
answer names must be there before the workload reads the answer, or the
workload's next connect goes to that broker directly, unseen.

`Discovery` decides, for the endpoints one answer names, what the proxy does
before passing it on; it is pure (no sockets, no kernel, time comes in) and
one instance is shared by every session of a serve:

- an IP endpoint in the operator's `allowed_networks` that is not steered
  yet is to be steered (`Learned.steer`), and audited once
  (`broker-discovered`);
- an IP endpoint outside them is not steered; it is audited once
  (`discovery-refused`) and, with `refuse_outside`, marked in the kernel so
  that enrolled workloads' connects to it are refused (`Learned.outside`);
- a host name is resolved by the shell (`Learned.names`) and each address
  it resolves to is then decided the same way (`resolved`); the answer is
  held until then;
- an endpoint that is no endpoint (a port outside 1-65535, a host that is
  neither an IP literal nor a DNS name, longer than 253 bytes, a wildcard or
  multicast address), more distinct endpoints in one answer than
  `max_per_response`, or more endpoints in all than `max_brokers`: the
  answer is not delivered and the session closes with the reason
  (`Learned.fault`). Fail closed: a workload is never told of an address it
  would reach unsteered.

Only the three answers in `DISCOVERY_APIS` are decoded for this, and a
Produce v10+ answer only when it carries an error (KIP-951's `node_endpoints`
name new leaders then); an answer whose endpoints are all known costs one
dictionary lookup each. A Produce or Fetch that succeeds is not touched.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Iterable

from appliance.audit.records import Event
from appliance.config import BrokerAddress, DiscoveryConfig, IpNetwork
from appliance.kafka import codec

PRODUCE, METADATA, FIND_COORDINATOR, DESCRIBE_CLUSTER = 0, 3, 10, 60
DISCOVERY_APIS = frozenset({METADATA, FIND_COORDINATOR, DESCRIBE_CLUSTER})
# From v10 a Produce answer with NOT_LEADER_OR_FOLLOWER may name the new leaders' endpoints (KIP-951):
# read only when the answer carries an error. (Fetch names them from v16, beyond what the proxy offers.)
PRODUCE_NAMES_LEADERS = 10
MAX_HOST_BYTES = 253
# A host name as DNS spells it: labels of letters, digits and "-", at most 63 bytes each.
_DNS_NAME = re.compile(r"([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?")
# How long a host name's addresses are believed before the next answer naming it resolves it again.
NAME_TTL_S = 60.0

# Spellings of endpoints remembered as decided ("10.0.0.5" and "::ffff:10.0.0.5" are two); past this many
# the memory is dropped and endpoints are decided again, which costs a parse each.
_KNOWN_MAX = 4096

Endpoint = tuple[str, int]  # (IP literal in its canonical form, port)


@dataclass(frozen=True, slots=True)
class Learned:
    """What to do before the answer goes on. Empty (all known): nothing."""

    steer: tuple[Endpoint, ...] = ()  # to add to the kernel's steered set now
    outside: tuple[Endpoint, ...] = ()  # newly seen outside allowed_networks (audited; refused when configured)
    names: tuple[Endpoint, ...] = ()  # (host name, port) to resolve before the answer goes on
    fault: str | None = None  # the answer must not be delivered: the session closes with this reason

    def __bool__(self) -> bool:
        return bool(self.steer or self.outside or self.names or self.fault)


NOTHING = Learned()


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


def named_endpoints(frame: bytes, api_key: int, api_version: int, limit: int | None = None) -> list[tuple[str, int]]:
    """(host, port) of every broker the answer names, as the broker wrote them (FindCoordinator entries
    with an error name none). Raises codec.DecodeError for an answer that does not decode, and TooMany
    when a Metadata answer declares more than `limit` brokers."""
    if api_key == METADATA and limit is not None:
        count = metadata_broker_count(frame, api_version)
        if count > limit:
            raise TooMany(f"declares {count} brokers")
    entity = codec.decode_response(frame, api_key, api_version)
    if api_key == PRODUCE:
        return [(e.host, int(e.port)) for e in entity.node_endpoints]
    if api_key == FIND_COORDINATOR:
        if api_version < 4:
            return [(entity.host, int(entity.port))] if int(entity.error_code) == 0 else []
        return [(c.host, int(c.port)) for c in entity.coordinators if int(c.error_code) == 0]
    return [(b.host, int(b.port)) for b in entity.brokers]


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


def audit_events(learned: Learned, what: str, now: float, refusing: bool, *, session_id: str | None,
                 identity: str | None) -> list[tuple[str, Event]]:
    """(log level, event) for each broker newly steered (`broker-discovered`) or found outside the allowed
    networks (`discovery-refused`): each endpoint is audited once, by the session whose answer named it."""
    out = []
    for endpoint in learned.steer:
        message = f"broker {describe(endpoint)} named in a {what} joins the steered brokers"
        out.append(("info", Event(at=now, kind="broker-discovered", message=message, identity=identity,
                                  session_id=session_id,
                                  detail=json.dumps({"broker": describe(endpoint), "named_in": what}))))
    for endpoint in learned.outside:
        message = (f"broker {describe(endpoint)} named in a {what} is outside discovery.allowed_networks: not "
                   + ("steered; enrolled workloads' connects to it are refused" if refusing else "steered"))
        out.append(("warning", Event(at=now, kind="discovery-refused", message=message, identity=identity,
                                     session_id=session_id,
                                     detail=json.dumps({"broker": describe(endpoint), "named_in": what,
                                                        "refused_in_kernel": refusing}))))
    return out


class Discovery:
    """The steered cluster as the proxy learns it; see the module docstring. One per serve."""

    def __init__(self, config: DiscoveryConfig, configured: Iterable[BrokerAddress]) -> None:
        configured = tuple(configured)
        self.config = config
        self.networks: tuple[IpNetwork, ...] = config.allowed(configured)
        self.configured: frozenset[Endpoint] = frozenset((b.host, b.port) for b in configured)
        self.discovered: dict[Endpoint, float] = {}  # steered because an answer named them, and since when
        self.outside: dict[Endpoint, float] = {}  # named, outside the allowed networks
        # Every (host, port) as written on the wire that has been decided: the fast path for known ones.
        self._known: dict[tuple[str, int], str] = {}
        self._names: dict[Endpoint, float] = {}  # host names resolved, and when

    def add_configured(self, endpoint: Endpoint) -> None:
        """An address a broker given by DNS name now resolves to: steered as configured, and (with
        allowed_networks not set) its host is allowed like the configured brokers' own."""
        self.configured = self.configured | {endpoint}
        self.discovered.pop(endpoint, None)
        if self.config.allowed_networks is None:
            network = ipaddress.ip_network(endpoint[0])
            if network not in self.networks:
                self.networks += (network,)

    @property
    def steered(self) -> frozenset[Endpoint]:
        return self.configured | frozenset(self.discovered)

    def allows(self, host: str) -> bool:
        address = ipaddress.ip_address(host)
        return any(address in network for network in self.networks if network.version == address.version)

    def learn(self, named: list[tuple[str, int]], now: float, what: str) -> Learned:
        """What to do for the endpoints one answer (`what`, e.g. "Metadata v12 response") names."""
        known = self._known
        if all(known.get(e) == "ip" for e in named):  # the common case: every endpoint already decided
            return NOTHING
        distinct = set(named)
        if len(distinct) > self.config.max_per_response:
            return Learned(fault=f"{what} names {len(distinct)} broker endpoints, more than the "
                                 f"{self.config.max_per_response} the appliance takes from one answer "
                                 "(discovery.max_per_response); it was not delivered")
        # Everything is checked before anything is decided: an answer refused leaves nothing half-learned.
        fresh: dict[tuple[str, int], Endpoint] = {}
        names = []
        for raw in distinct:
            if known.get(raw) == "ip":
                continue
            kind, value = parse_endpoint(*raw)
            if kind == "invalid":
                return Learned(fault=f"{what} names a broker endpoint that is not one: {value}; it was not "
                                     "delivered")
            if kind == "name":
                at = self._names.get(value)
                if at is None or now - at >= NAME_TTL_S:
                    names.append(value)
            else:
                fresh[raw] = value
        fault = self._room_for(fresh.values())
        if fault is not None:
            return Learned(fault=f"{what}: {fault}; it was not delivered")
        steer, outside = self._decide(fresh.values(), now)
        if len(known) + len(fresh) > _KNOWN_MAX:  # spellings of addresses: bounded, decided afresh past it
            known.clear()
        known.update(dict.fromkeys(fresh, "ip"))
        return Learned(steer, outside, tuple(sorted(names)))

    def resolved(self, name: Endpoint, addresses: Iterable[str], now: float) -> Learned:
        """What to do for the addresses a host name named in an answer resolved to (none: a fault)."""
        endpoints = [value for kind, value in (parse_endpoint(host, name[1]) for host in dict.fromkeys(addresses))
                     if kind == "ip"]
        if not endpoints:
            return Learned(fault=f"broker {describe(name)} named in an answer does not resolve to an address; "
                                 "the answer was not delivered")
        fault = self._room_for(endpoints)
        if fault is not None:
            return Learned(fault=f"broker {describe(name)}: {fault}; the answer naming it was not delivered")
        self._names[name] = now
        return Learned(*self._decide(endpoints, now))

    def seed(self, endpoints: Iterable[Endpoint], now: float) -> Learned:
        """Endpoints a previous run discovered, decided again under the networks allowed now (a serve that
        restarts must not leave a broker its workloads already know unsteered until the next Metadata);
        past the cap the rest are learned again from answers, or refused then."""
        wanted = list(dict.fromkeys(value for kind, value in (parse_endpoint(h, p) for h, p in endpoints)
                                    if kind == "ip"))
        fresh = [e for e in wanted if e not in self.configured and e not in self.discovered and e not in self.outside]
        room = max(0, self.config.max_brokers - len(self.discovered) - len(self.outside))
        return Learned(*self._decide(fresh[:room], now))

    def forget(self, endpoint: Endpoint) -> None:
        """The kernel would not take an endpoint `learn` said to steer: decide it afresh next time."""
        self.discovered.pop(endpoint, None)
        self.outside.pop(endpoint, None)
        for raw in [r for r, kind in self._known.items() if kind == "ip" and raw[1] == endpoint[1]]:
            if parse_endpoint(*raw)[1] == endpoint:
                del self._known[raw]

    def _room_for(self, endpoints: Iterable[Endpoint]) -> str | None:
        new = {e for e in endpoints if e not in self.configured and e not in self.discovered and e not in self.outside}
        room = self.config.max_brokers - len(self.discovered) - len(self.outside)
        if len(new) > room:
            return (f"{len(new)} new broker endpoint(s), more than the {max(room, 0)} discovery.max_brokers "
                    f"({self.config.max_brokers}) leaves room for")
        return None

    def _decide(self, endpoints: Iterable[Endpoint], now: float) -> tuple[tuple[Endpoint, ...], tuple[Endpoint, ...]]:
        """Steer or refuse each endpoint not decided yet (the caller checked there is room)."""
        steer, outside = [], []
        for endpoint in dict.fromkeys(endpoints):
            if endpoint in self.configured or endpoint in self.discovered or endpoint in self.outside:
                continue
            if self.allows(endpoint[0]):
                self.discovered[endpoint] = now
                steer.append(endpoint)
            else:
                self.outside[endpoint] = now
                outside.append(endpoint)
        return tuple(steer), tuple(outside)
