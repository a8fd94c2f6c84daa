"""Brokers given by DNS name in `brokers`: which addresses they resolve to, and which of those are new.

Steering matches addresses, so a broker named `kafka-1.example.com:9092` is
steered at every address its name resolves to. `serve` resolves each name at
start and every `broker_resolve_interval_s` (off the event loop, with the
host's resolver, as workloads resolve it); an address it resolves to that is
not steered yet joins the steered set and is audited (`broker-resolved`).
An address the name stops resolving to stays steered while `serve` runs:
clients that resolved it earlier may still connect there, and those connects
must not go around the appliance. Pure: the shell in service.py resolves.
"""

from __future__ import annotations

import ipaddress

from appliance.config import BrokerName

Endpoint = tuple[str, int]


class BrokerNames:
    def __init__(self, names: tuple[BrokerName, ...]) -> None:
        self.names = names
        self.addresses: dict[BrokerName, tuple[str, ...]] = {n: () for n in names}  # the latest resolution
        self.steered: set[Endpoint] = set()

    def resolved(self, name: BrokerName, addresses: list[str]) -> tuple[Endpoint, ...]:
        """Record what `name` resolves to now; returns its endpoints not steered yet (to steer now)."""
        canonical = []
        for host in addresses:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                continue
            if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
                continue  # steering cannot match a scoped address
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            canonical.append(str(address))
        canonical = list(dict.fromkeys(canonical))
        self.addresses[name] = tuple(canonical)
        new = tuple((host, name.port) for host in canonical if (host, name.port) not in self.steered)
        self.steered.update(new)
        return new

    def status(self) -> dict[str, list[str]]:
        return {str(n): list(a) for n, a in self.addresses.items()}
