"""The realm the local identity provider serves, as a small declarative table, and its Keycloak JSON.

    realm = Realm("appliance", audience="kafka-appliance",
                  clients=(ServiceClient("orders", groups=("payments",)),))
    representation(realm, secrets={"orders": "..."})   # the dict Keycloak's --import-realm reads

Pure: no files, no clocks, no randomness. Secrets come in as an argument (the
state directory's owner generates and keeps them), and every service-account
user's id is derived from the realm and client names, so a workload's `sub`
is the same after a restart, after the provider's database is thrown away and
on every machine that runs the same table.

What a client_credentials access token from a client of this realm carries:

    iss     <base URL>/realms/<realm>
    sub     the client's service-account user id (`service_account_id`)
    azp     the client id
    aud     the realm's audience, from an audience mapper on each client
    groups  plain group names (no `/` path), from a group-membership mapper
    exp     iat + the client's token lifespan, or the realm's

Only the `basic` client scope is a default scope of these clients: no
`roles`, `profile` or `email` scope, so no `account` audience or
`realm_access` claims are added beside the ones above.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

DEFAULT_AUDIENCE = "kafka-appliance"
DEFAULT_TOKEN_LIFESPAN_S = 300
SHORT_TOKEN_LIFESPAN_S = 30

# Fixed namespace for service-account user ids: uuid5(namespace, "<realm>/<client id>").
_USER_ID_NAMESPACE = uuid.UUID("5b0c8f0e-7a55-4d59-9a7e-0c1d2b3a4e5f")

# Keycloak accepts more, but these names travel into policy files, claims and
# file names: keep them to what needs no quoting anywhere.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# An audience is often a URI (api://kafka, https://kafka.example.com).
_AUDIENCE = re.compile(r"[!-~]{1,255}")


class RealmError(ValueError):
    """A realm table that Keycloak would refuse or that would make ambiguous tokens; the message names the field."""


def _check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise RealmError(
            f"{kind} {value!r} is not a valid name: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


@dataclass(frozen=True, slots=True)
class ServiceClient:
    """A confidential client with a service account: a workload (or the appliance) that gets tokens by client_credentials.

    `token_lifespan_s` overrides the realm's access-token lifespan for this client only.
    """

    client_id: str
    groups: tuple[str, ...] = ()
    token_lifespan_s: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("client id", self.client_id)
        if isinstance(self.groups, str):
            raise RealmError(f"client {self.client_id!r}: groups must be a sequence of names, not the string {self.groups!r}")
        object.__setattr__(self, "groups", tuple(self.groups))
        for group in self.groups:
            _check_name(f"client {self.client_id!r}: group", group)
        if len(set(self.groups)) != len(self.groups):
            raise RealmError(f"client {self.client_id!r}: groups {list(self.groups)} name a group twice")
        if self.token_lifespan_s is not None:
            _check_lifespan(f"client {self.client_id!r}: token_lifespan_s", self.token_lifespan_s)


@dataclass(frozen=True, slots=True)
class Realm:
    """One realm: its name, the audience every token carries, its clients; groups are those the clients name."""

    name: str
    audience: str = DEFAULT_AUDIENCE
    clients: tuple[ServiceClient, ...] = ()
    token_lifespan_s: int = DEFAULT_TOKEN_LIFESPAN_S

    def __post_init__(self) -> None:
        _check_name("realm name", self.name)
        if self.name == "master":
            raise RealmError("realm name 'master' is Keycloak's administration realm; choose another")
        if not isinstance(self.audience, str) or not _AUDIENCE.fullmatch(self.audience):
            raise RealmError(
                f"realm {self.name!r}: audience {self.audience!r} must be 1-255 printable characters without spaces"
            )
        object.__setattr__(self, "clients", tuple(self.clients))
        seen: set[str] = set()
        for client in self.clients:
            if not isinstance(client, ServiceClient):
                raise RealmError(f"realm {self.name!r}: clients must be ServiceClient, not {type(client).__name__}")
            if client.client_id in seen:
                raise RealmError(f"realm {self.name!r}: client id {client.client_id!r} appears twice")
            seen.add(client.client_id)
        _check_lifespan(f"realm {self.name!r}: token_lifespan_s", self.token_lifespan_s)

    @property
    def groups(self) -> tuple[str, ...]:
        """Every group some client belongs to, in order of first mention."""
        return tuple(dict.fromkeys(g for c in self.clients for g in c.groups))

    def client(self, client_id: str) -> ServiceClient:
        for client in self.clients:
            if client.client_id == client_id:
                return client
        raise KeyError(f"realm {self.name!r} has no client {client_id!r} (it has: {', '.join(self.client_ids)})")

    @property
    def client_ids(self) -> tuple[str, ...]:
        return tuple(c.client_id for c in self.clients)

    def lifespan_of(self, client_id: str) -> int:
        """Seconds from iat to exp of an access token issued to `client_id`."""
        client = self.client(client_id)
        return client.token_lifespan_s if client.token_lifespan_s is not None else self.token_lifespan_s


def _check_lifespan(where: str, value: int) -> None:
    # Keycloak's minimum useful value is a few seconds; a day is far beyond "short-lived".
    if isinstance(value, bool) or not isinstance(value, int) or not 5 <= value <= 86400:
        raise RealmError(f"{where} is {value!r}; give whole seconds from 5 to 86400")


# The demo's workloads, named as in appliance/policy/embedded.yaml, plus the
# client the appliance itself uses towards brokers that take OAUTHBEARER.
DEMO_REALM = Realm(
    name="appliance",
    audience=DEFAULT_AUDIENCE,
    clients=(
        ServiceClient("orders", groups=("payments",), description="the demo's order-producing workload"),
        ServiceClient("ledger", groups=("payments",), description="the ledger writer"),
        ServiceClient("platform-reader", groups=("platform",), description="a platform operator's reader"),
        ServiceClient("short-lived", groups=("payments",), token_lifespan_s=SHORT_TOKEN_LIFESPAN_S,
                      description="short access tokens, for expiry tests"),
        ServiceClient("appliance-upstream", description="the appliance's own identity towards brokers"),
    ),
)


def service_account_id(realm_name: str, client_id: str) -> str:
    """The fixed user id of `client_id`'s service account in `realm_name`: the `sub` of its tokens."""
    return str(uuid.uuid5(_USER_ID_NAMESPACE, f"{realm_name}/{client_id}"))


def service_account_username(client_id: str) -> str:
    """Keycloak's own naming; a different name makes it create a second service-account user."""
    return f"service-account-{client_id}".lower()


# -- URLs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where a realm's OIDC metadata, token endpoint and keys are, for a provider at `base_url`."""

    issuer: str
    discovery: str
    token: str
    jwks: str

    @classmethod
    def of(cls, base_url: str, realm_name: str) -> "Endpoints":
        issuer = f"{base_url.rstrip('/')}/realms/{realm_name}"
        return cls(
            issuer=issuer,
            discovery=f"{issuer}/.well-known/openid-configuration",
            token=f"{issuer}/protocol/openid-connect/token",
            jwks=f"{issuer}/protocol/openid-connect/certs",
        )


# -- the Keycloak representation ---------------------------------------------------------


def _client_representation(realm: Realm, client: ServiceClient, secret: str) -> dict[str, Any]:
    attributes = {"client_credentials.use_refresh_token": "false"}
    if client.token_lifespan_s is not None:
        attributes["access.token.lifespan"] = str(client.token_lifespan_s)
    return {
        "clientId": client.client_id,
        "name": client.client_id,
        "description": client.description,
        "enabled": True,
        "protocol": "openid-connect",
        "publicClient": False,
        "bearerOnly": False,
        "clientAuthenticatorType": "client-secret",
        "secret": secret,
        "serviceAccountsEnabled": True,
        # client_credentials only: no browser logins, no passwords.
        "standardFlowEnabled": False,
        "implicitFlowEnabled": False,
        "directAccessGrantsEnabled": False,
        "fullScopeAllowed": False,
        "attributes": attributes,
        "defaultClientScopes": ["basic"],
        "optionalClientScopes": [],
        "protocolMappers": [
            {
                "name": f"audience {realm.audience}",
                "protocol": "openid-connect",
                "protocolMapper": "oidc-audience-mapper",
                "consentRequired": False,
                "config": {
                    "included.custom.audience": realm.audience,
                    "access.token.claim": "true",
                    "id.token.claim": "false",
                    "introspection.token.claim": "true",
                },
            },
            {
                "name": "groups",
                "protocol": "openid-connect",
                "protocolMapper": "oidc-group-membership-mapper",
                "consentRequired": False,
                "config": {
                    "claim.name": "groups",
                    "full.path": "false",
                    "access.token.claim": "true",
                    "id.token.claim": "false",
                    "userinfo.token.claim": "false",
                    "introspection.token.claim": "true",
                },
            },
        ],
    }


def _user_representation(realm: Realm, client: ServiceClient) -> dict[str, Any]:
    return {
        "id": service_account_id(realm.name, client.client_id),
        "username": service_account_username(client.client_id),
        "enabled": True,
        "serviceAccountClientId": client.client_id,
        "groups": [f"/{g}" for g in client.groups],
    }


def _key_providers(signing_key: tuple[str, str]) -> dict[str, Any]:
    """The realm's key providers: the given RS256 key, and Keycloak's generated HMAC and AES keys.

    A realm file that names any key provider gets no generated ones, so the two
    Keycloak needs for its own internal tokens are named here too.
    """
    private_key, certificate = signing_key
    return {"org.keycloak.keys.KeyProvider": [
        {"name": "rsa-appliance", "providerId": "rsa", "subComponents": {},
         "config": {"privateKey": [private_key], "certificate": [certificate], "priority": ["100"],
                    "algorithm": ["RS256"], "keyUse": ["SIG"], "active": ["true"], "enabled": ["true"]}},
        {"name": "hmac-generated", "providerId": "hmac-generated", "subComponents": {},
         "config": {"priority": ["100"], "algorithm": ["HS512"]}},
        {"name": "aes-generated", "providerId": "aes-generated", "subComponents": {},
         "config": {"priority": ["100"]}},
    ]}


def representation(realm: Realm, secrets: Mapping[str, str],
                   signing_key: tuple[str, str] | None = None) -> dict[str, Any]:
    """The realm as Keycloak's import JSON.

    `secrets` maps every client id to its client secret. `signing_key` is the
    RS256 key as (PKCS#8 private key, X.509 certificate), each the base64 of its
    DER on one line; without it Keycloak generates a key at every import.
    """
    missing = [c for c in realm.client_ids if not secrets.get(c)]
    if missing:
        raise RealmError(f"realm {realm.name!r}: no client secret for {', '.join(missing)}")
    extra = {"components": _key_providers(signing_key)} if signing_key is not None else {}
    return {
        "realm": realm.name,
        "enabled": True,
        # Plain HTTP is allowed only from local and private addresses (Keycloak's default).
        "sslRequired": "external",
        "accessTokenLifespan": realm.token_lifespan_s,
        "registrationAllowed": False,
        "loginWithEmailAllowed": False,
        "groups": [{"name": g, "path": f"/{g}"} for g in realm.groups],
        "clients": [_client_representation(realm, c, secrets[c.client_id]) for c in realm.clients],
        "users": [_user_representation(realm, c) for c in realm.clients],
        **extra,
    }
