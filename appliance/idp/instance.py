"""What a started server was started with (`instance.json`): pure value types and their JSON, checked on read.

`status` and `stop` read it without knowing the port or realm of the start, so
it carries them. It is read back as hostile input like any file: a record that
does not have the expected shape is refused with the field named, and the
caller treats the server as unknown rather than trusting a half-read pid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from appliance.idp.realm import Endpoints, Realm, service_account_id


class RecordError(ValueError):
    """instance.json does not have the shape this module writes; the message names the field."""


@dataclass(frozen=True, slots=True)
class ClientInfo:
    client_id: str
    groups: tuple[str, ...]
    sub: str
    token_lifespan_s: int


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    pid: int | None  # None once stopped; the rest stays for the operator
    port: int
    realm: str
    audience: str
    started_at: float
    keycloak_version: str
    endpoints: Endpoints
    clients: tuple[ClientInfo, ...]
    https_port: int | None = None  # the https listener beside the http one, if started with one

    @classmethod
    def of(cls, realm: Realm, *, pid: int, port: int, started_at: float, keycloak_version: str,
           endpoints: Endpoints, https_port: int | None = None) -> "InstanceRecord":
        clients = tuple(ClientInfo(c.client_id, c.groups, service_account_id(realm.name, c.client_id),
                                   realm.lifespan_of(c.client_id)) for c in realm.clients)
        return cls(pid, port, realm.name, realm.audience, started_at, keycloak_version, endpoints, clients,
                   https_port)

    def stopped(self) -> "InstanceRecord":
        return replace(self, pid=None)

    def to_json(self) -> str:
        return json.dumps({
            "pid": self.pid,
            "port": self.port,
            "https_port": self.https_port,
            "realm": self.realm,
            "audience": self.audience,
            "started_at": self.started_at,
            "keycloak_version": self.keycloak_version,
            "endpoints": {"issuer": self.endpoints.issuer, "discovery": self.endpoints.discovery,
                          "token": self.endpoints.token, "jwks": self.endpoints.jwks},
            "clients": [{"client_id": c.client_id, "groups": list(c.groups), "sub": c.sub,
                         "token_lifespan_s": c.token_lifespan_s} for c in self.clients],
        }, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "InstanceRecord":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise RecordError(f"not JSON ({e})") from None
        record = _typed(data, "the record", dict)
        pid = record.get("pid")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0):
            raise RecordError(f"pid {pid!r} is not a process id")
        endpoints = _typed(record.get("endpoints"), "endpoints", dict)
        clients = []
        for i, c in enumerate(_typed(record.get("clients"), "clients", list)):
            c = _typed(c, f"clients[{i}]", dict)
            clients.append(ClientInfo(
                _typed(c.get("client_id"), f"clients[{i}].client_id", str),
                tuple(_typed(g, f"clients[{i}].groups[]", str) for g in _typed(c.get("groups"), f"clients[{i}].groups", list)),
                _typed(c.get("sub"), f"clients[{i}].sub", str),
                _typed(c.get("token_lifespan_s"), f"clients[{i}].token_lifespan_s", int),
            ))
        port = _typed(record.get("port"), "port", int)
        if not 1 <= port <= 65535:
            raise RecordError(f"port {port} is not from 1 to 65535")
        https_port = record.get("https_port")  # absent in records written before https listeners
        if https_port is not None and not 1 <= _typed(https_port, "https_port", int) <= 65535:
            raise RecordError(f"https_port {https_port} is not from 1 to 65535")
        return cls(
            pid=pid,
            port=port,
            realm=_typed(record.get("realm"), "realm", str),
            audience=_typed(record.get("audience"), "audience", str),
            started_at=float(_typed(record.get("started_at"), "started_at", (int, float))),
            keycloak_version=_typed(record.get("keycloak_version"), "keycloak_version", str),
            endpoints=Endpoints(**{k: _typed(endpoints.get(k), f"endpoints.{k}", str)
                                   for k in ("issuer", "discovery", "token", "jwks")}),
            clients=tuple(clients),
            https_port=https_port,
        )


def _typed(value: Any, where: str, kind: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise RecordError(f"{where} is {value!r}, not {names}")
    return value
