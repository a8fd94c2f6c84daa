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

Only the three answers in `DISCOVERY_APIS` are decoded for this (`named_brokers.py`), and a
Produce v10+ answer only when it carries an error (KIP-951's `node_endpoints`
name new leaders then); an answer whose endpoints are all known costs one
dictionary lookup each, and one store of when it was named. A Produce or
Fetch that succeeds is not touched.

Forgetting (`expire`, from the shell's periodic check, never per answer): a
discovered endpoint, steered or outside, leaves the set only on evidence that
the cluster has moved on, never because traffic was quiet. Un-steering an
address a workload still holds would let it (and unenrolled processes) reach
a live broker around the proxy, so all of these must hold:

- (a) for `forget_after_s`, no relayed answer named it (nor a host name that
  resolves to it), no session was opened to it and the kernel refused no
  connect to it (`used`): nothing on the host showed it still holds it;
- (b) a Metadata answer relayed at least `forget_after_s` after its last
  naming listed the brokers of its cluster and listener without it: the
  answer came from the same cluster (`cluster_id`) and named a broker that
  had been listed beside it (a Metadata answer names every live broker of
  the listener it was asked on, and an endpoint belongs to one listener, so
  an answer from another listener or another cluster is no evidence), and
  every answer in between left it out too;
- (c) no live proxied session is connected to it.

An endpoint never seen in a Metadata answer has no listing to judge it by and
is kept. One named again later is learned again as the first time.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Iterable, Mapping

from appliance.audit.records import Event
from appliance.config import BrokerAddress, DiscoveryConfig, IpNetwork
from appliance.proxy.named_brokers import (  # noqa: F401 - the answers' side, used through this module too
    DESCRIBE_CLUSTER, DISCOVERY_APIS, FIND_COORDINATOR, METADATA, PRODUCE, PRODUCE_NAMES_LEADERS, Endpoint, Named,
    TooMany, describe, metadata_broker_count, named_endpoints, parse_endpoint, read_named)

# How long a host name's addresses are believed before the next answer naming it resolves it again.
NAME_TTL_S = 60.0

# Spellings of endpoints remembered as decided ("10.0.0.5" and "::ffff:10.0.0.5" are two); past this many
# the memory is dropped and endpoints are decided again, which costs a parse each.
_KNOWN_MAX = 4096


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


@dataclass(frozen=True, slots=True)
class Listing:
    """One Metadata answer's brokers: every live broker of one cluster's listener, when it was relayed.
    Each endpoint keeps the last one that named it: the brokers beside it are its evidence (`expire`)."""

    at: float
    cluster_id: str | None
    brokers: frozenset[Endpoint]


@dataclass(frozen=True, slots=True)
class Forgotten:
    """A discovered endpoint `expire` took out of the set: the shell un-steers it (or stops refusing it)."""

    endpoint: Endpoint
    outside: bool  # it was refused in the kernel (outside allowed_networks), not steered
    last_named: float  # the last relayed answer naming it, connect to it, or the start that seeded it
    left_out_at: float  # a Metadata answer of its cluster and listener, relayed this late, that did not name it
    listed_with: Endpoint  # a broker that answer named, listed beside it before


def expiry_interval_s(config: DiscoveryConfig) -> float | None:
    """How often the shell asks `expire`: a tenth of forget_after_s, from 1 s to a minute; None: never."""
    if not config.forget_after_s:
        return None
    return min(60.0, max(1.0, config.forget_after_s / 10))


def forgotten_events(forgotten: Iterable[Forgotten], now: float, forget_after_s: float) -> list[tuple[str, Event]]:
    """(log level, event) for each endpoint forgotten (`broker-forgotten`), with the evidence."""
    out = []
    for f in forgotten:
        was = "refused" if f.outside else "steered"
        message = (f"broker {describe(f.endpoint)} is forgotten: no answer named it and nothing connected to it "
                   f"for {now - f.last_named:.0f} s (discovery.forget_after_s {forget_after_s:g}), a Metadata "
                   f"answer {f.left_out_at - f.last_named:.0f} s after that listed its cluster's brokers "
                   f"({describe(f.listed_with)} among them) without it, and no session uses it; enrolled "
                   f"connects to it are no longer {was}")
        out.append(("info", Event(at=now, kind="broker-forgotten", message=message, detail=json.dumps({
            "broker": describe(f.endpoint), "was": was, "last_named_at": f.last_named,
            "left_out_at": f.left_out_at, "listed_with": describe(f.listed_with),
            "forget_after_s": forget_after_s}))))
    return out


def parse_snapshot(saved: object) -> tuple[list[Endpoint], dict[Endpoint, tuple[str | None, list[Endpoint]]]]:
    """The endpoints and listings `Discovery.snapshot` wrote (a file of an earlier version has no listings).
    Raises ValueError for anything else."""
    try:
        endpoints = [(str(h), int(p)) for h, p in [*saved.get("steered", []), *saved.get("outside", [])]]
        tables = [(None if t["cluster_id"] is None else str(t["cluster_id"]), [(str(h), int(p)) for h, p in t["brokers"]])
                  for t in saved.get("listings", [])]
        listings = {(str(h), int(p)): tables[int(i)] for h, p, i in saved.get("listed_in", [])}
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:
        raise ValueError(f"not what discovery saves ({type(e).__name__}: {e})") from None
    return endpoints, listings


class Discovery:
    """The steered cluster as the proxy learns it; see the module docstring. One per serve."""

    def __init__(self, config: DiscoveryConfig, configured: Iterable[BrokerAddress]) -> None:
        configured = tuple(configured)
        self.config = config
        self.networks: tuple[IpNetwork, ...] = config.allowed(configured)
        self.configured: frozenset[Endpoint] = frozenset((b.host, b.port) for b in configured)
        self.discovered: dict[Endpoint, float] = {}  # steered because an answer named them, and since when
        self.outside: dict[Endpoint, float] = {}  # named, outside the allowed networks
        self.forgotten = 0  # endpoints expire took out, in all
        # Every (host, port) as written on the wire that has been decided, and its canonical endpoint: the
        # fast path for known ones.
        self._known: dict[tuple[str, int], Endpoint] = {}
        self._names: dict[Endpoint, tuple[float, tuple[Endpoint, ...]]] = {}  # host names resolved: when, to what
        # When each endpoint was last named by an answer that is no listing (or resolved, or seeded); the last
        # Metadata answer that named it; the last session or kernel-refused connect to it (`used`).
        self._named_at: dict[Endpoint, float] = {}
        self._listed: dict[Endpoint, Listing] = {}
        self._used_at: dict[Endpoint, float] = {}

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

    def learn(self, named: list[tuple[str, int]], now: float, what: str, *, listing: bool = False,
              cluster_id: str | None = None) -> Learned:
        """What to do for the endpoints one answer (`what`, e.g. "Metadata v12 response") names; `listing`:
        it is a Metadata answer (`Named`), which names every live broker of its cluster's listener."""
        known = self._known
        if listing:  # the common cases: every endpoint already decided; one lookup and one store each
            brokers = []
            for raw in named:
                endpoint = known.get(raw)
                if endpoint is None:
                    break
                brokers.append(endpoint)
            else:
                self._list(brokers, now, cluster_id)
                return NOTHING
        else:
            named_at = self._named_at
            for raw in named:
                endpoint = known.get(raw)
                if endpoint is None:
                    break
                named_at[endpoint] = now
            else:
                return NOTHING
        distinct = set(named)
        if len(distinct) > self.config.max_per_response:
            return Learned(fault=f"{what} names {len(distinct)} broker endpoints, more than the "
                                 f"{self.config.max_per_response} the appliance takes from one answer "
                                 "(discovery.max_per_response); it was not delivered")
        # Everything is checked before anything is decided: an answer refused leaves nothing half-learned.
        fresh: dict[tuple[str, int], Endpoint] = {}
        names, brokers = [], []
        for raw in distinct:
            endpoint = known.get(raw)
            if endpoint is not None:
                brokers.append(endpoint)
                continue
            kind, value = parse_endpoint(*raw)
            if kind == "invalid":
                return Learned(fault=f"{what} names a broker endpoint that is not one: {value}; it was not "
                                     "delivered")
            if kind == "name":
                resolved = self._names.get(value)
                if resolved is None or now - resolved[0] >= NAME_TTL_S:
                    names.append(value)  # its addresses are named when they are resolved
                else:
                    brokers.extend(resolved[1])
            else:
                fresh[raw] = value
        fault = self._room_for(fresh.values())
        if fault is not None:
            return Learned(fault=f"{what}: {fault}; it was not delivered")
        steer, outside = self._decide(fresh.values(), now)
        if len(known) + len(fresh) > _KNOWN_MAX:  # spellings of addresses: bounded, decided afresh past it
            known.clear()
        known.update(fresh)
        brokers.extend(fresh.values())
        if listing:
            self._list(brokers, now, cluster_id)
        else:
            self._named_at.update(dict.fromkeys(brokers, now))
        return Learned(steer, outside, tuple(sorted(names)))

    def _list(self, brokers: list[Endpoint], now: float, cluster_id: str | None) -> None:
        listing = Listing(now, cluster_id, frozenset(brokers))
        listed = self._listed
        for endpoint in brokers:
            listed[endpoint] = listing

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
        self._names[name] = (now, tuple(endpoints))
        learned = Learned(*self._decide(endpoints, now))
        self._named_at.update(dict.fromkeys(endpoints, now))
        return learned

    def resolved_to(self, name: Endpoint) -> tuple[Endpoint, ...]:
        """The endpoints (canonical IP literal, port) the host name `name` last resolved to, if it is known."""
        entry = self._names.get(name)
        return () if entry is None else entry[1]

    def used(self, host: str, port: int, now: float) -> None:
        """A session was opened to this endpoint, or the kernel refused a connect to it: something on the host
        still holds it, so it is not forgotten for forget_after_s from now. Not per request: once per session
        and per refusal event."""
        endpoint = self._canonical(host, port)
        if endpoint in self.discovered or endpoint in self.outside:
            self._used_at[endpoint] = now

    def seed(self, endpoints: Iterable[Endpoint], now: float,
             listings: Mapping[Endpoint, tuple[str | None, Iterable[Endpoint]]] | None = None) -> Learned:
        """Endpoints a previous run discovered, decided again under the networks allowed now (a serve that
        restarts must not leave a broker its workloads already know unsteered until the next Metadata);
        past the cap the rest are learned again from answers, or refused then. `listings`: for each, the
        cluster id and brokers of a Metadata answer that named it (`snapshot`), so that it can still be
        forgotten if no answer names it again; each counts as named now, so forgetting starts afresh."""
        wanted = list(dict.fromkeys(value for kind, value in (parse_endpoint(h, p) for h, p in endpoints)
                                    if kind == "ip"))
        fresh = [e for e in wanted if e not in self.configured and e not in self.discovered and e not in self.outside]
        room = max(0, self.config.max_brokers - len(self.discovered) - len(self.outside))
        learned = Learned(*self._decide(fresh[:room], now))
        for endpoint in (*learned.steer, *learned.outside):
            self._named_at[endpoint] = now
            saved = (listings or {}).get(endpoint)
            if saved is not None:
                cluster_id, brokers = saved
                self._listed[endpoint] = Listing(now, cluster_id, frozenset(brokers) | {endpoint})
        return learned

    def snapshot(self) -> dict:
        """What the next start seeds from (JSON-ready): the endpoints decided, and for each the brokers and
        cluster of the last Metadata answer that named it."""
        listings: dict[int, tuple[int, Listing]] = {}  # id -> (its index, the listing)
        listed_in = []
        for endpoint in sorted((*self.discovered, *self.outside)):
            listing = self._listed.get(endpoint)
            if listing is not None:
                index, _ = listings.setdefault(id(listing), (len(listings), listing))
                listed_in.append([*endpoint, index])
        return {"steered": sorted(self.discovered), "outside": sorted(self.outside),
                "listings": [{"cluster_id": listing.cluster_id, "brokers": sorted(listing.brokers)}
                             for _, listing in listings.values()],
                "listed_in": listed_in}

    def expire(self, now: float, in_use: Iterable[tuple[str, int]]) -> tuple[Forgotten, ...]:
        """Take out the discovered endpoints (steered or outside) the cluster has moved on from, by the rule
        of the module docstring; `in_use`: the broker endpoints of the live sessions. The shell un-steers
        what this returns. Walks the discovered set: call it from a timer, never per answer."""
        after = self.config.forget_after_s
        if not after:
            return ()
        busy = None
        out = []
        for endpoint in [*self.discovered, *self.outside]:
            listing = self._listed.get(endpoint)
            if listing is None:
                continue  # never in a Metadata answer: nothing says which brokers would leave it out
            last = max(listing.at, self._named_at.get(endpoint, listing.at), self._used_at.get(endpoint, listing.at))
            if now - last < after:
                continue
            evidence = None
            for other in listing.brokers:
                later = self._listed.get(other)
                if later is not None and later.at - last >= after and later.cluster_id == listing.cluster_id \
                        and (evidence is None or later.at > evidence[0]):
                    evidence = (later.at, other)
            if evidence is None:
                continue
            if busy is None:
                busy = {self._canonical(host, port) for host, port in set(in_use)}
            if endpoint in busy:
                continue
            out.append(Forgotten(endpoint, endpoint in self.outside, last, *evidence))
        for forgotten in out:
            self._drop(forgotten.endpoint)
        self.forgotten += len(out)
        return tuple(out)

    def forget(self, endpoint: Endpoint) -> None:
        """The kernel would not take an endpoint `learn` said to steer: decide it afresh next time."""
        self._drop(endpoint)

    def _drop(self, endpoint: Endpoint) -> None:
        self.discovered.pop(endpoint, None)
        self.outside.pop(endpoint, None)
        self._named_at.pop(endpoint, None)
        self._listed.pop(endpoint, None)
        self._used_at.pop(endpoint, None)
        for raw in [raw for raw, known in self._known.items() if known == endpoint]:
            del self._known[raw]
        for name in [name for name, (_, endpoints) in self._names.items() if endpoint in endpoints]:
            del self._names[name]  # resolved again when next named

    def _canonical(self, host: str, port: int) -> Endpoint | None:
        endpoint = self._known.get((host, port))
        if endpoint is None:
            kind, endpoint = parse_endpoint(host, port)
            if kind != "ip":
                return None
        return endpoint

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
